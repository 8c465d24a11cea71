"""A study: many seeds of one configuration, run in batches, checkpointed, resumed, and written
to ``results.json`` after every batch.

This is the run loop the experiments' command line calls, usable without it::

    from spacenet_jax import SpaceNetConfig, load_dataset
    from spacenet_jax.running.study import run_study

    results = run_study(SpaceNetConfig(), load_dataset("mnist", "../shared/datasets"),
                        seeds=range(10), benchmark="split_mnist", out_dir="runs/mnist",
                        checkpoint_dir="ckpt/mnist", resume=True)
    print(results["summary"]["final_avg_acc"])

* ``plan_study``: before any work, what is already done: the runs ``results.json`` holds for
  this configuration (another configuration's are refused) and, per unfinished seed, the
  latest checkpoint to continue from.
* ``run_seeds``: the seeds not done, ``seed_batch`` at a time as one vmapped program
  (``runner.run_task_sequences``; a batch of one is ``runner.run_task_sequence``), each
  task's state saved (``storage.checkpoint.TaskCheckpointer``), ``results.json`` rewritten
  after every batch. A crash loses at most the task in progress.
* ``run_study``: both.
* ``summarize_runs`` / ``results_file``: the summary over seeds and the file's content.

Nothing here exits the process or reads flags: errors are exceptions (``StudyError`` for a
failure during a batch, ``ResultsFileError`` and ``CheckpointError`` for what is refused
before any work).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.continual import DivergenceError
from spacenet_jax.core.state import SpaceNetState
from spacenet_jax.running import metrics
from spacenet_jax.running.interrupts import deferred_interrupts
from spacenet_jax.running.runner import (
    EpochEndCallback,
    SeedTaskEndCallback,
    run_task_sequences,
)
from spacenet_jax.storage.checkpoint import (
    CheckpointError,
    TaskCheckpointer,
    restore_task,
    saved_tasks,
    seed_dir,
)
from spacenet_jax.storage.data import ImageDataset
from spacenet_jax.storage.results_io import (
    check_seeds_not_done,
    merge_runs,
    read_finished_runs,
    write_json_atomic,
)
from spacenet_jax.storage.results_schema import Results, RunRecord, Summary, results_payload

#: Test-only: ``SPACENET_TEST_KILL_AFTER_TASK=N`` makes the process SIGKILL itself right after
#: the checkpoint after task N is committed, to test resuming after a hard crash.
KILL_AFTER_TASK_ENV = "SPACENET_TEST_KILL_AFTER_TASK"

#: ``seed -> (state, record)`` to continue from (``storage.checkpoint.restore_task``).
ResumePoints = dict[int, tuple[SpaceNetState, RunRecord]]


class StudyError(RuntimeError):
    """A batch of seeds failed during a task (an impossible configuration met, divergence, a
    checkpoint that could not be written). The message names the method and the seeds, and
    where the seeds finished before it are kept; ``__cause__`` is the original error."""


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """What ``plan_study`` found before any work.

    Attributes:
      finished: the runs ``results.json`` already holds for this configuration (kept).
      resume_from: per unfinished seed with checkpoints, the ``(state, record)`` of its latest.
    """

    finished: list[RunRecord]
    resume_from: ResumePoints

    def tasks_done(self, seeds: Iterable[int]) -> dict[int, int]:
        """Per seed of ``seeds`` still to run, how many tasks (stages) it has finished."""
        done = {r["seed"] for r in self.finished}
        return {s: len(self.resume_from[s][1]["acc_matrix"]) if s in self.resume_from else 0
                for s in seeds if s not in done}


def summarize_runs(runs: list[RunRecord]) -> Summary:
    """Mean, sd and standard error over seeds of the headline metrics."""
    keys = ("final_avg_acc", "final_task_il_avg_acc", "final_overall_acc", "avg_forgetting",
            "backward_transfer")
    summary: dict[str, Any] = {
        # None where the metric does not apply (forgetting of joint training) or a run lacks
        # it (task-IL accuracy in a record of an older version).
        k: None if any(r.get(k) is None for r in runs)
        else metrics.summarize([r[k] for r in runs])
        for k in keys
    }
    T = len(runs[0]["final_task_acc"])
    summary["final_task_acc_mean"] = [
        metrics.summarize([r["final_task_acc"][j] for r in runs])["mean"] for j in range(T)
    ]
    if all(r.get("validation") is not None for r in runs):
        summary["validation"] = {
            k: metrics.summarize([r["validation"][k] for r in runs])
            for k in ("final_avg_acc", "final_task_il_avg_acc")
        }
    summary["seeds"] = [r["seed"] for r in runs]
    summary["seconds_per_run"] = metrics.summarize([r["seconds"]["total"] for r in runs])
    return summary  # type: ignore[return-value]


def results_file(runs: list[RunRecord], benchmark: str, method: str) -> Results:
    """The content of a ``results.json`` (``storage.results_schema``): ``runs``, their summary
    (``summarize_runs``, naming the benchmark and method) and the schema version."""
    summary = summarize_runs(runs)
    summary.update(benchmark=benchmark, method=method)
    return results_payload(runs, summary)


def default_seed_batch(config: SpaceNetConfig, num_seeds: int) -> int:
    """All seeds as one vmapped program, except a CNN on the CPU: one seed at a time there
    (a few CPU cores gain nothing from batching seeds, and a batch holds every seed's
    activations at once)."""
    import jax

    return 1 if config.is_cnn and jax.default_backend() == "cpu" else max(num_seeds, 1)


def seed_batches(seeds: list[int], resume_from: ResumePoints, seed_batch: int) -> list[list[int]]:
    """Split ``seeds`` into the batches that run together: seeds resuming from the same task
    share a batch (fresh seeds first), at most ``seed_batch`` seeds each."""
    groups: dict[int, list[int]] = {}
    for seed in seeds:
        start = len(resume_from[seed][1]["acc_matrix"]) if seed in resume_from else 0
        groups.setdefault(start, []).append(seed)
    return [
        group[i : i + seed_batch]
        for _, group in sorted(groups.items())
        for i in range(0, len(group), seed_batch)
    ]


def plan_resume(
    checkpoint_dir: str | os.PathLike | None,
    config: SpaceNetConfig,
    seeds: list[int],
    *,
    benchmark: str,
    resume: bool,
) -> ResumePoints:
    """Restore, before any work, the latest checkpoint of every seed in ``seeds`` that has one.

    Without ``resume``, a seed folder that already holds checkpoints is refused (a fresh run
    would mix with them). With ``resume``, a seed without checkpoints starts fresh and says so
    on stderr (as it does when it resumes). Raises ``CheckpointError`` for another
    configuration or seed, or a corrupt checkpoint.
    """
    if checkpoint_dir is None:
        return {}
    plans: ResumePoints = {}
    for seed in seeds:
        folder = seed_dir(checkpoint_dir, seed)
        steps = saved_tasks(folder)
        tag = f"[{benchmark} {config.method} seed {seed}]"
        if not steps:
            if resume:
                print(f"{tag} --resume: no checkpoint in {folder}, starting from scratch",
                      file=sys.stderr)
            continue
        if not resume:
            raise CheckpointError(
                f"{folder} already holds checkpoints (after tasks {steps}); add --resume to "
                f"continue from task {steps[-1]}, or delete it or use another --checkpoint-dir"
            )
        state, record = restore_task(folder, config, seed, benchmark=benchmark)
        plans[seed] = (state, record)
        unit = "stages" if config.joint else "tasks"
        print(f"{tag} resuming from {folder / str(steps[-1])} ({len(record['acc_matrix'])}/"
              f"{config.num_stages} {unit} done)", file=sys.stderr)
    return plans


def plan_study(
    config: SpaceNetConfig,
    seeds: list[int],
    *,
    benchmark: str,
    results_path: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> StudyPlan:
    """Before any work: the runs ``results_path`` already holds (``read_finished_runs``;
    without ``resume`` a seed it holds is refused) and the checkpoint each other seed continues
    from (``plan_resume``).

    Raises:
      ResultsFileError: ``results_path`` is unreadable, of another configuration, or holds a
        seed of ``seeds`` while ``resume`` is false.
      CheckpointError: see ``plan_resume``.
    """
    path = None if results_path is None else Path(results_path)
    finished = read_finished_runs(path, config, benchmark)
    check_seeds_not_done(path, finished, seeds, resume)
    done = {r["seed"] for r in finished}
    resume_from = plan_resume(checkpoint_dir, config, [s for s in seeds if s not in done],
                              benchmark=benchmark, resume=resume)
    return StudyPlan(finished, resume_from)


def _save_each_task(
    checkpointers: dict[int, TaskCheckpointer], on_task_end: SeedTaskEndCallback | None
) -> SeedTaskEndCallback | None:
    """``on_task_end(seed, task, state, record)``: the caller's callback (e.g. the training
    log), then the task's checkpoint (a crash in between redoes the task on resume). Ctrl-C and
    SIGTERM wait until both are done. None when there is nothing to do."""
    if not checkpointers and on_task_end is None:
        return None
    kill_after = os.environ.get(KILL_AFTER_TASK_ENV)

    def after_task(seed: int, task: int, state: SpaceNetState, record: RunRecord) -> None:
        with deferred_interrupts():  # Ctrl-C / SIGTERM wait until the step is on disk
            if on_task_end is not None:
                on_task_end(seed, task, state, record)
            if checkpointers:
                step = checkpointers[seed].save(state, record)  # returns once it is on disk
                if kill_after and step == int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)

    return after_task


def run_seeds(
    config: SpaceNetConfig,
    dataset: ImageDataset,
    seeds: Iterable[int],
    *,
    benchmark: str,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    finished: list[RunRecord] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    resume_from: ResumePoints | None = None,
    seed_batch: int | None = None,
    run_provenance: dict[str, Any] | None = None,
    on_epoch_end: EpochEndCallback | None = None,
    on_task_end: SeedTaskEndCallback | None = None,
) -> Results:
    """Run every seed (skipping those in ``finished``), rewriting ``out`` after each batch.

    Seeds run ``seed_batch`` at a time (default ``default_seed_batch``) as one vmapped program
    sharded over every device (``run_task_sequences``); a batch of one runs
    ``run_task_sequence``. With ``checkpoint_dir``, every task's state and record of every seed
    is saved (``TaskCheckpointer``) in ``checkpoint_dir/seed_<seed>``; ``resume_from`` maps a
    seed to the ``(state, record)`` it continues from (``plan_resume``).

    Args:
      out: the ``results.json`` to write (None: nothing is written).
      finished: runs already done (``plan_study``), kept in the file and not run again.
      dataset_name: stored in the checkpoints' metadata.
      run_provenance: stored in every new run under ``"provenance"``
        (``storage.results_io.provenance``).
      on_epoch_end: ``(seed, task, epoch, loss, train_accuracy)`` after every epoch.
      on_task_end: ``(seed, task, state, record)`` after every task, before its checkpoint.

    Returns:
      The content of ``results.json``: the runs of ``finished`` (which may include seeds not in
      ``seeds``) and the new ones, ordered by seed, with their summary.

    Raises:
      StudyError: a batch failed during a task (from ``ConfigError``, ``DivergenceError`` or
        ``CheckpointError``); the seeds finished before it are in ``out``.
    """
    seeds = list(seeds)
    if not seeds and not finished:
        raise ValueError("no seeds to run")
    resume_from = resume_from or {}
    records = {r["seed"]: r for r in finished or []}
    todo = [s for s in seeds if s not in records]
    if progress:
        for seed in seeds:
            if seed in records:
                print(f"[{benchmark} {config.method} seed {seed}] already in {out}, skipped",
                      file=sys.stderr)
    batch_size = seed_batch or default_seed_batch(config, len(todo))
    path = None if out is None else Path(out)
    payload = results_file(merge_runs(finished, {}), benchmark, config.method) if finished \
        else None
    for batch in seed_batches(todo, resume_from, batch_size):
        checkpointers = {
            seed: TaskCheckpointer(checkpoint_dir, config, seed, benchmark=benchmark,
                                   dataset=dataset_name)
            for seed in batch if checkpoint_dir is not None
        }
        try:
            results = run_task_sequences(
                config, dataset, batch, benchmark=benchmark, progress=progress,
                on_task_end=_save_each_task(checkpointers, on_task_end),
                resume_from={s: resume_from[s] for s in batch if s in resume_from},
                on_epoch_end=on_epoch_end,
            )
        except (ConfigError, DivergenceError, CheckpointError) as err:  # during a task
            kept = f"; the {len(records)} finished seed(s) are in {path}" if records and path \
                else ""
            raise StudyError(f"{config.method}, seeds {batch}: {err}{kept}") from err
        finally:
            for checkpointer in checkpointers.values():
                checkpointer.close()
        for seed, (_, record) in zip(batch, results, strict=True):
            if run_provenance is not None:
                record["provenance"] = run_provenance
            records[seed] = record
        payload = results_file(merge_runs(finished or [], records), benchmark, config.method)
        if path is not None:
            path = _write_results(path, payload, benchmark)
    assert payload is not None  # some seed ran, or all were finished
    return payload


def run_study(
    config: SpaceNetConfig,
    dataset: ImageDataset,
    seeds: Iterable[int],
    *,
    benchmark: str,
    out_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    plan: StudyPlan | None = None,
    **options: Any,
) -> Results:
    """``plan_study`` then ``run_seeds``: every seed of ``seeds``, ``out_dir/results.json``
    rewritten after every batch, with ``resume`` keeping the seeds it holds and continuing the
    others from their latest checkpoint in ``checkpoint_dir``.

    Args:
      plan: a ``plan_study`` made earlier (e.g. before loading the data), instead of a new one.
      options: the other keyword arguments of ``run_seeds`` (``progress``, ``seed_batch``,
        ``dataset_name``, ``run_provenance``, ``on_epoch_end``, ``on_task_end``).

    Raises:
      ResultsFileError, CheckpointError: refused before any work (``plan_study``).
      StudyError: a batch failed (``run_seeds``).
    """
    seeds = list(seeds)
    out = None if out_dir is None else Path(out_dir) / "results.json"
    if plan is None:
        plan = plan_study(config, seeds, benchmark=benchmark, results_path=out,
                          checkpoint_dir=checkpoint_dir, resume=resume)
    return run_seeds(config, dataset, seeds, benchmark=benchmark, out=out,
                     finished=plan.finished, checkpoint_dir=checkpoint_dir,
                     resume_from=plan.resume_from, **options)


def _write_results(out: Path, payload: Results, benchmark: str) -> Path:
    """Write results.json (whole, even if Ctrl-C arrives meanwhile); if ``out`` cannot be
    written, keep the results in a file of the temporary folder instead, say where, and return
    that path (later batches are written there too)."""
    with deferred_interrupts():
        try:
            write_json_atomic(out, payload)
            return out
        except OSError as err:
            fallback = Path(tempfile.gettempdir()) / f"spacenet-{benchmark}-{os.getpid()}.json"
            write_json_atomic(fallback, payload)
            print(f"error: could not write {out} ({err}); the results are kept in {fallback}",
                  file=sys.stderr)
            return fallback

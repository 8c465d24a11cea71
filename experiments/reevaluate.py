"""Evaluate a finished run's task checkpoints under another inference rule, without training.

    python -m experiments.reevaluate CHECKPOINT_DIR --inference per_task [--data-dir D] --out OUT

``config.inference`` changes how a network is evaluated, never how it is trained, so the
checkpoints saved after every task (``--checkpoint-dir``) hold everything needed: for each seed
folder ``CHECKPOINT_DIR/seed_<s>``, the state after task t is evaluated on the test set as a run
with ``--inference`` would have evaluated it, the biases each task ended with coming from its
own checkpoint. ``OUT/results.json`` then holds exactly the records that run would have written
(training time copied from the checkpoints; ``reevaluated_from`` says where they come from),
and ``OUT/final_task_accuracy.png`` its figure. An ``OUT/results.json`` holding a seed that
is not scored here is refused (it would be replaced); score into a new folder and join the two
with ``python -m experiments.combine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments.common import command_line_process, print_table, refuse, version_line
from spacenet_jax.core.config import INFERENCE, TASK_SCORES, ConfigError, SpaceNetConfig
from spacenet_jax.core.state import SpaceNetState, free_neuron_counts
from spacenet_jax.core.task_scores import empty_statistics, fit_task_statistics
from spacenet_jax.running.evaluation import class_and_task_il_accuracies, predict_in_chunks
from spacenet_jax.running.metrics import percent
from spacenet_jax.running.runner import make_record, validation_summary
from spacenet_jax.running.study import results_file
from spacenet_jax.storage.checkpoint import (
    CheckpointError,
    config_from_dict,
    read_metadata,
    restore_task,
    saved_tasks,
    seed_of_dir,
)
from spacenet_jax.storage.data import (
    DatasetError,
    ImageDataset,
    hold_out_validation,
    load_dataset,
    task_indices,
)
from spacenet_jax.storage.results_io import (
    ResultsFileError,
    check_output_folder,
    provenance,
    write_json_atomic,
)
from spacenet_jax.storage.results_schema import ResultsFormatError, load_results


def with_task_biases(
    state: SpaceNetState, config: SpaceNetConfig, ended: list[SpaceNetState]
) -> SpaceNetState:
    """``state`` (of a run without ``task_biases``) as a ``config`` run would hold it: row t of
    every ``task_biases`` array is the biases of ``ended[t]``, the state after task t."""
    if config.inference != "per_task":
        return state.replace(task_biases=())
    rows = []
    for layer, b in enumerate(state.biases):
        kept = np.zeros((config.num_tasks, b.shape[0]), np.float32)
        for t, after in enumerate(ended):
            kept[t] = np.asarray(after.biases[layer])
        rows.append(jax.numpy.asarray(kept))
    return state.replace(task_biases=tuple(rows))


def reevaluate_seed(
    folder: Path, inference: str, dataset: ImageDataset, task_scores: str = "logits",
    logit_weight: float = 0.0, progress: bool = False,
) -> dict[str, Any]:
    """The record of one seed's run had it been evaluated with ``inference`` and
    ``task_scores`` (whose statistics are gathered from each task's own training examples, in
    the state its checkpoint holds, as the run would have gathered them), the raw logit added
    with ``logit_weight``. With ``progress``, a line on stderr after each task: its accuracy
    per task learned, on the validation split if the run held one out (settings are chosen
    on it), else on the test set."""
    meta = read_metadata(folder)
    saved_config = config_from_dict(meta["config"])
    config = dataclasses.replace(saved_config, inference=inference, task_scores=task_scores,
                                 logit_weight=logit_weight)
    seed, steps = meta["seed"], saved_tasks(folder)
    if steps != list(range(1, steps[-1] + 1)):
        raise CheckpointError(f"{folder} lacks some task checkpoints (it has {steps}); "
                              f"every task's checkpoint is needed")
    dataset = hold_out_validation(dataset, config.validation_per_class, config.validation_seed)
    train_index = task_indices(dataset.train_labels, config.task_classes)
    splits = [(dataset.test_images, np.asarray(dataset.test_labels))]
    if dataset.validation_images is not None:
        splits.append((dataset.validation_images, np.asarray(dataset.validation_labels)))
    ended: list[SpaceNetState] = []
    statistics = empty_statistics(config)
    rows: list[list[list]] = [[] for _ in splits]  # per split, its class-IL rows
    task_il_rows: list[list[list]] = [[] for _ in splits]
    pooled, free = [], []
    for step in steps:
        started = time.perf_counter()
        state, record = restore_task(folder, saved_config, seed, step)
        ended.append(state)
        state = with_task_biases(state, config, ended).replace(task_statistics=statistics)
        state = fit_task_statistics(state, config, dataset.train_images, dataset.train_labels,
                                    train_index[step - 1], len(train_index[step - 1]), step - 1)
        statistics = state.task_statistics
        for i, (images, labels) in enumerate(splits):
            predictions = predict_in_chunks(state, config, images, with_tasks=True)
            (row, overall), (task_il_row, _) = class_and_task_il_accuracies(
                predictions, labels, task_indices(labels, config.task_classes), int(state.task)
            )
            rows[i].append(row)
            task_il_rows[i].append(task_il_row)
            if i == 0:
                pooled.append(overall)
        free.append(free_neuron_counts(state))
        if progress:
            shown = " ".join(percent(a) for a in rows[-1][-1] if a is not None)
            print(f"[reevaluate {meta['benchmark']} seed {seed}] task {step}/{steps[-1]} in "
                  f"{time.perf_counter() - started:.1f}s: "
                  f"{'validation' if len(splits) > 1 else 'test'} accuracy (%) per task {shown}",
                  file=sys.stderr, flush=True)
    seconds = record["seconds"]
    new = make_record(meta["benchmark"], seed, config, rows[0], pooled, state, free,
                      seconds["per_task"], seconds["total"], task_il_rows[0])
    if len(splits) > 1:
        new["validation"] = validation_summary(rows[1], task_il_rows[1], int(state.task))
    new["reevaluated_from"] = str(folder)
    return new


def seed_folders(checkpoint_dir: Path) -> tuple[list[Path], list[tuple[Path, int, int]]]:
    """The ``seed_<s>`` folders of ``checkpoint_dir`` with a checkpoint of every task, by seed,
    and those of unfinished runs as ``(folder, tasks checkpointed, tasks in all)`` (a seed
    still training beside the others is skipped, not an error; its record could not be
    summarised with the finished ones)."""
    learned = {d: len(saved_tasks(d)) for d in checkpoint_dir.glob("seed_*")}
    finished, unfinished = [], []
    for folder in sorted((d for d, n in learned.items() if n),
                         key=seed_of_dir):
        total = config_from_dict(read_metadata(folder)["config"]).num_tasks
        if learned[folder] < total:
            unfinished.append((folder, learned[folder], total))
        else:
            finished.append(folder)
    return finished, unfinished


def check_no_seed_is_lost(results_path: Path, folders: list[Path]) -> None:
    """Refuse, before any work, an ``--out`` whose ``results.json`` holds a seed that this call
    does not score: the file is replaced by the seeds scored here, so that seed's record would
    be lost. Scoring the same seeds again into the same folder (after a crash) is allowed."""
    if not results_path.exists():
        return
    try:
        held = {run["seed"] for run in load_results(results_path)["runs"]}
    except ResultsFormatError as err:
        refuse(f"--out already holds {results_path}, which is not a readable results.json "
               f"({err}); choose another --out")
    scored = {seed_of_dir(folder) for folder in folders}
    if lost := sorted(held - scored):
        refuse(f"--out already holds {results_path} with seed(s) "
               f"{', '.join(map(str, lost))}, which this call does not score (no checkpoints of "
               f"theirs here); writing there would lose them. Choose another --out and join "
               f"the two with python -m experiments.combine")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint_dir", type=Path, help="the run's --checkpoint-dir")
    p.add_argument("--inference", choices=list(INFERENCE), required=True,
                   help="; ".join(f"{k}: {v}" for k, v in INFERENCE.items()))
    p.add_argument("--task-scores", choices=list(TASK_SCORES), default="logits",
                   help="with --inference per_task, the scale of each task's scores: "
                   + "; ".join(f"{k}: {v}" for k, v in TASK_SCORES.items()))
    p.add_argument("--logit-weight", type=float, default=0.0,
                   help="with --task-scores other than logits: the raw logit added to each "
                   "class's score with this weight")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True,
                   help="write OUT/results.json (after each seed) and a PNG")
    p.add_argument("--quiet", action="store_true", help="no progress line per task")
    p.add_argument("--version", action="version", version=version_line())
    args = p.parse_args(argv)
    try:
        folders, unfinished = seed_folders(args.checkpoint_dir)
    except CheckpointError as err:
        refuse(str(err))
    for folder, learned, total in unfinished:
        print(f"{folder.name}: skipped, {learned} of its {total} tasks are checkpointed (a run "
              f"still in progress? finish it with the training command's --resume)")
    if not folders:
        refuse(f"no seed_<s> folder in {args.checkpoint_dir} holds the checkpoints of every "
               f"task" + (" (only unfinished runs, above)" if unfinished else ""))
    check_no_seed_is_lost(args.out / "results.json", folders)
    try:
        check_output_folder(args.out)
        dataset = load_dataset(read_metadata(folders[0])["dataset"], args.data_dir,
                               verbose=False)
        prov = provenance(argv)
        runs: list[dict[str, Any]] = []
        for folder in folders:
            run = reevaluate_seed(folder, args.inference, dataset, args.task_scores,
                                  args.logit_weight, progress=not args.quiet)
            run["provenance"] = prov
            runs.append(run)
            # After each seed, so that a crash keeps the seeds already evaluated.
            payload = results_file(runs, runs[0]["benchmark"], runs[0]["method"])
            write_json_atomic(args.out / "results.json", payload)
    except (CheckpointError, ConfigError, DatasetError, ResultsFileError) as err:
        refuse(str(err))
    print_table(runs, payload["summary"])
    from spacenet_jax.analysis.plots import plot_final_task_accuracy

    png = plot_final_task_accuracy(
        runs, args.out / "final_task_accuracy.png",
        title=f"{runs[0]['benchmark']} ({runs[0]['method']}, {args.inference} inference): "
        f"accuracy on each task after the last",
    )
    print(f"results written to {args.out / 'results.json'} and {png}")
    return json.loads(json.dumps(payload))


if __name__ == "__main__":
    with command_line_process():
        main()

"""Orbax checkpoints of a task sequence at every task boundary: save, resume, inspect.

One seed's run lives in one folder (``<checkpoint-dir>/seed_<seed>/``, see ``seed_dir``) holding
one orbax step per finished task, numbered by the tasks learned so far (``state.task``: 1, 2,
...; the single stage of ``joint`` is step ``num_tasks``). A step holds two items:

* ``state``: the whole ``SpaceNetState`` pytree as host (numpy) arrays, no device or sharding
  information, so it restores on any backend (CPU, GPU, TPU);
* ``meta``: JSON with the format version, benchmark and dataset names, the seed, the
  configuration (``config.to_dict()``), the run record so far (what ``run_task_sequence``
  passes to ``on_task_end``), and a SHA-256 of every state leaf.

Everything else a run needs to continue bit for bit is either in the state (the PRNG key
``state.rng`` drives initialisation, allocation, drop/grow and the data order) or a pure function
of the seed (rehearsal's replay subsets).

Saves are synchronous and atomic: orbax writes a step into a temporary folder and renames it
when complete, and ``TaskCheckpointer.save`` returns only after that, so a crash at any moment
leaves every earlier step valid; a half-written temporary folder is ignored (and removed by the
next save). Restoring checks the configuration, the seed and every leaf's checksum, and refuses
with a ``CheckpointError`` that says what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from spacenet_jax.config import SpaceNetConfig, with_default_fields
from spacenet_jax.state import SpaceNetState, init_state

#: Version of the ``meta`` item's layout.
FORMAT_VERSION = 1
#: Dataset (for ``spacenet_jax.data.load_dataset``) of each benchmark.
BENCHMARK_DATASETS: dict[str, str] = {
    "split_mnist": "mnist",
    "split_fashion_mnist": "fashion_mnist",
    "split_cifar10": "cifar10",
    "cifar10_100": "cifar10_100",
}
_SEED_DIR = re.compile(r"^seed_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, of another configuration or seed, missing."""


def seed_dir(checkpoint_dir: str | Path, seed: int) -> Path:
    """The folder of one seed's checkpoints: ``checkpoint_dir/seed_<seed>``."""
    return Path(checkpoint_dir) / f"seed_{seed}"


def _ocp():
    # orbax is imported lazily: it is slow to import and only checkpointing needs it.
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.WARNING)
    return ocp


def _manager(directory: Path, *, create: bool):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        create=create,
        enable_async_checkpointing=False,  # save returns once the step is committed
        cleanup_tmp_directories=True,  # a save interrupted earlier leaves a tmp folder
    )
    return ocp.CheckpointManager(directory.resolve(), options=options)


def _stored_tree(state: SpaceNetState) -> dict[str, Any]:
    """The state as the checkpoint stores it: its fields by name, leaving out empty ones (e.g.
    ``task_biases`` of the paper's inference), so that adding an optional field does not
    change the checkpoints of runs that leave it empty."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return {k: v for k, v in fields.items() if not (isinstance(v, tuple) and not v)}


def _from_stored_tree(tree: dict[str, Any], template: SpaceNetState) -> SpaceNetState:
    """Inverse of ``_stored_tree``: the empty fields come from ``template``."""
    return template.replace(**tree)


def _config_dict(config: SpaceNetConfig) -> dict[str, Any]:
    """``config.to_dict()`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def _leaf_checksums(state: SpaceNetState) -> list[str]:
    return [
        hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest()
        for leaf in jax.tree.leaves(state)
    ]


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


def config_from_dict(saved: dict[str, Any]) -> SpaceNetConfig:
    """Rebuild a ``SpaceNetConfig`` from ``config.to_dict()`` read back from JSON."""
    return SpaceNetConfig(**{k: _to_tuples(v) for k, v in saved.items()})


class TaskCheckpointer:
    """Saves one seed's state and record after each task, into ``seed_dir(directory, seed)``.

    Use it as ``run_task_sequence``'s ``on_task_end`` (it is callable with ``(task, state,
    record)``), or call ``save(state, record)``. Close it when done (or use ``with``).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        config: SpaceNetConfig,
        seed: int,
        *,
        benchmark: str,
        dataset: str | None = None,
    ) -> None:
        self.directory = seed_dir(checkpoint_dir, seed)
        self.config = config
        self.seed = seed
        self.benchmark = benchmark
        self.dataset = dataset if dataset is not None else BENCHMARK_DATASETS.get(benchmark)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager = _manager(self.directory, create=True)

    def save(self, state: SpaceNetState, record: dict[str, Any]) -> int:
        """Save after a task; returns the step (tasks learned) once it is committed to disk."""
        ocp = _ocp()
        host = jax.device_get(state)
        step = int(host.task)
        meta = {
            "format": FORMAT_VERSION,
            "benchmark": self.benchmark,
            "dataset": self.dataset,
            "seed": self.seed,
            "tasks_learned": step,
            "config": _config_dict(self.config),
            "record": json.loads(json.dumps(record)),
            "leaf_sha256": _leaf_checksums(host),
        }
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_stored_tree(host)), meta=ocp.args.JsonSave(meta)
                ),
            )
            self._manager.wait_until_finished()
        except OSError as err:  # disk full, permissions, a vanished folder
            previous = [s for s in saved_tasks(self.directory) if s < step]
            kept = (
                f"the checkpoint after task {previous[-1]} is intact"
                if previous else "no earlier checkpoint exists"
            )
            raise CheckpointError(
                f"could not save the checkpoint after task {step} in {self.directory}: {err}. "
                f"Nothing half-written is ever restored and {kept}; free disk space or fix the "
                f"folder's permissions, then rerun the same command with --resume"
            ) from err
        return step

    def __call__(self, task: int, state: SpaceNetState, record: dict[str, Any]) -> None:
        self.save(state, record)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> TaskCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def saved_tasks(directory: str | Path) -> list[int]:
    """Committed steps (tasks learned) in one seed's folder, ascending; ``[]`` if none.

    Temporary folders of interrupted saves are not steps and are ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    manager = _manager(directory, create=False)
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


def latest_task(directory: str | Path) -> int | None:
    """The latest committed step (tasks learned) in one seed's folder, or ``None``."""
    steps = saved_tasks(directory)
    return steps[-1] if steps else None


def _corrupt(directory: Path, step: int, err: BaseException | str) -> CheckpointError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointError(
        f"checkpoint {directory / str(step)} (after task {step}) is corrupt or truncated "
        f"({detail}); delete that folder to continue from the task before it, or use "
        f"another --checkpoint-dir"
    )


def _pick_step(directory: Path, task: int | None) -> int:
    steps = saved_tasks(directory)
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory}")
    if task is None:
        return steps[-1]
    if task not in steps:
        raise CheckpointError(
            f"{directory} has no checkpoint after task {task}; it has tasks {steps}"
        )
    return task


def read_metadata(directory: str | Path, task: int | None = None) -> dict[str, Any]:
    """The ``meta`` item (config, seed, benchmark, dataset, record) of a step (default: latest)."""
    ocp = _ocp()
    directory = Path(directory)
    step = _pick_step(directory, task)
    manager = _manager(directory, create=False)
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as err:  # orbax raises many types for missing or damaged files
        raise _corrupt(directory, step, err) from err
    finally:
        manager.close()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise _corrupt(directory, step, f"unknown metadata format {meta!r:.80}")
    return meta


def check_compatible(
    meta: dict[str, Any],
    config: SpaceNetConfig,
    seed: int,
    *,
    benchmark: str | None = None,
    where: str | Path = "the checkpoint",
) -> None:
    """Refuse metadata of another configuration, seed or benchmark, naming what differs."""
    saved = with_default_fields(meta.get("config", {}))
    wanted = _config_dict(config)
    diffs = [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r}, this run {wanted.get(k, '<absent>')!r}"
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"{where} was made with another configuration ({'; '.join(diffs)}); run with the "
            f"same flags, or use another --checkpoint-dir"
        )
    if meta.get("seed") != seed:
        raise CheckpointError(
            f"{where} holds seed {meta.get('seed')}, not seed {seed} (config/seed mismatch); "
            f"checkpoints of seed s belong in <checkpoint-dir>/seed_s"
        )
    if benchmark is not None and meta.get("benchmark") != benchmark:
        raise CheckpointError(
            f"{where} is a {meta.get('benchmark')} checkpoint, not {benchmark}; use another "
            f"--checkpoint-dir"
        )


def restore_task(
    directory: str | Path,
    config: SpaceNetConfig,
    seed: int,
    task: int | None = None,
    *,
    benchmark: str | None = None,
) -> tuple[SpaceNetState, dict[str, Any]]:
    """Restore the state and record after ``task`` tasks (default: the latest saved).

    ``directory`` is one seed's folder (``seed_dir``). The state is rebuilt onto JAX's default
    device against the shapes and dtypes of ``init_state(config, seed)``.

    Raises:
      CheckpointError: no such checkpoint; another configuration, seed or benchmark; corrupt or
        truncated files (a leaf's checksum, a missing file, unreadable metadata).
    """
    ocp = _ocp()
    directory = Path(directory)
    step = _pick_step(directory, task)
    meta = read_metadata(directory, step)
    check_compatible(meta, config, seed, benchmark=benchmark, where=directory / str(step))
    target = jax.tree.map(
        lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(lambda: init_state(config, seed))
    )
    manager = _manager(directory, create=False)
    try:
        stored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_stored_tree(target)))
        ).state
        host = _from_stored_tree(dict(stored), target)
    except Exception as err:
        raise _corrupt(directory, step, err) from err
    finally:
        manager.close()
    if jax.tree.structure(host) != jax.tree.structure(target):
        raise _corrupt(directory, step, "the state's tree structure differs")
    for got, want in zip(jax.tree.leaves(host), jax.tree.leaves(target), strict=True):
        if np.shape(got) != want.shape or np.asarray(got).dtype != want.dtype:
            raise _corrupt(directory, step, "a state leaf has the wrong shape or dtype")
    host = jax.tree.map(np.asarray, host)
    if _leaf_checksums(host) != meta.get("leaf_sha256"):
        raise _corrupt(directory, step, "a state leaf does not match its SHA-256")
    if int(host.task) != step or meta.get("record", {}).get("tasks_learned") != step:
        raise _corrupt(directory, step, "the step number disagrees with the state's task")
    return jax.device_put(host), meta["record"]


def find_seed_dir(path: str | Path) -> Path:
    """``path`` itself if it holds steps, else its only ``seed_<s>`` sub-folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    if saved_tasks(path):
        return path
    seeds = sorted(p for p in path.iterdir() if p.is_dir() and _SEED_DIR.match(p.name))
    if len(seeds) == 1:
        return seeds[0]
    if not seeds:
        raise CheckpointError(f"no checkpoint in {path} (neither steps nor seed_<s> folders)")
    names = ", ".join(p.name for p in seeds)
    raise CheckpointError(f"{path} holds several seeds ({names}); name one of them")

"""Orbax checkpoints of a task sequence at every task boundary: save, resume, inspect.

One seed's run lives in one folder (``<checkpoint-dir>/seed_<seed>/``, see ``seed_dir``) holding
one orbax step per finished task, numbered by the tasks learned so far (``state.task``: 1, 2,
...; the single stage of ``joint`` is step ``num_tasks``). A step holds two items:

* ``state``: the whole ``SpaceNetState`` pytree as host (numpy) arrays, no device or sharding
  information, so it restores on any backend (CPU, GPU, TPU);
* ``meta``: JSON with the format version, benchmark and dataset names, the seed, the
  configuration (``config.to_dict()``), the run record so far (what ``run_task_sequence``
  passes to ``on_task_end``), a SHA-256 of every state leaf (``leaf_sha256``) and a SHA-256 of
  the rest of the meta itself (``meta_sha256``, see ``meta_checksum``).

Everything else a run needs to continue bit for bit is either in the state (the PRNG key
``state.rng`` drives initialisation, allocation, drop/grow and the data order) or a pure function
of the seed (rehearsal's replay subsets).

Saves are synchronous and atomic: orbax writes a step into a temporary folder and renames it
when complete, and ``TaskCheckpointer.save`` returns only after that, so a crash at any moment
leaves every earlier step valid; a half-written temporary folder is ignored (and removed by the
next save). A step is never overwritten: saving one that exists (or one before the latest) is
refused. A failed save (disk full, no permission) raises a ``CheckpointError`` saying how to fix
it, and ``check_checkpoint_dir`` refuses an unusable location before any work. Restoring checks
the meta's checksum, the configuration, the seed and every leaf's checksum, and refuses with a
``CheckpointError`` that says what is wrong and how to fix it.

The folder is not locked here: the experiments' command line locks each seed's folder for the
run (``spacenet_jax.storage.folder_lock``), so that two runs never write into one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from spacenet_jax.core.config import (
    SpaceNetConfig,
    as_saved,
    describe_differences,
    with_default_fields,
)
from spacenet_jax.core.state import SpaceNetState, init_state

#: Version of the ``meta`` item's layout.
FORMAT_VERSION = 1
#: Version of the saved state's tree: 2 since the optimiser state holds the learning rate and
#: momentum (``core.state.make_optimizer``); a meta without ``state_format`` is version 1.
STATE_FORMAT = 2
_SEED_DIR = re.compile(r"^seed_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, of another configuration or seed, missing."""


def seed_dir(checkpoint_dir: str | Path, seed: int) -> Path:
    """The folder of one seed's checkpoints: ``checkpoint_dir/seed_<seed>``."""
    return Path(checkpoint_dir) / f"seed_{seed}"


def seed_of_dir(folder: str | Path) -> int:
    """The seed a ``seed_<seed>`` folder holds (the inverse of ``seed_dir``)."""
    return int(Path(folder).name.removeprefix("seed_"))


def _ocp():
    # orbax is imported lazily: it is slow to import and only checkpointing needs it.
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    absl.setLevel(logging.WARNING)
    if not any(isinstance(f, _StorageFailureFilter) for f in absl.filters):
        absl.addFilter(_StorageFailureFilter())
    return ocp


class _StorageFailureFilter(logging.Filter):
    """Drops the traceback an orbax thread logs for a failed write (disk full, no permission;
    a full disk gave hundreds of lines). Such a failure also reaches ``save``, which reports it
    once with the fix. A filter, not a level switched around ``save``: orbax's threads may log
    after ``save`` has raised. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname:
            return True
        err = record.exc_info[1] if record.exc_info else None
        if err is None and record.args:
            err = next((a for a in record.args if isinstance(a, BaseException)), None)
        return err is None or storage_errno(err) is None


#: errno values of a full disk / of a folder this process may not write.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NO_WRITE = frozenset({errno.EACCES, errno.EPERM})
#: tensorstore (behind orbax) reports a failed write as
#: ``ValueError("<STATUS>: ... [os_error_code='28'] ...")``.
_TS_ERRNO = re.compile(r"os_error_code='?(\d+)")
_TS_STATUS = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "PERMISSION_DENIED": errno.EACCES}


def storage_errno(err: BaseException) -> int | None:
    """The errno of a failed write: an ``OSError``'s, or the one tensorstore's ``ValueError``
    carries (``RESOURCE_EXHAUSTED``: ENOSPC, ``PERMISSION_DENIED``: EACCES); ``0`` for an
    ``OSError`` without one; ``None`` when ``err`` is not a storage failure (a bug)."""
    if isinstance(err, OSError):
        return err.errno or 0
    if isinstance(err, ValueError):
        text = str(err)
        if found := _TS_ERRNO.search(text):
            return int(found.group(1))
        for status, code in _TS_STATUS.items():
            if status in text:
                return code
    return None


def storage_fix(code: int, folder: Path) -> str:
    """What to do about a write that failed with errno ``code`` in ``folder`` (the nearest
    folder that exists)."""
    folder = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if code in _NO_SPACE:
        return (f"free disk space on the disk of {folder} (or use a --checkpoint-dir on another "
                f"disk)")
    if code in _NO_WRITE:
        return f"make {folder} writable for this user (or use another --checkpoint-dir)"
    if code == errno.EROFS:
        return f"{folder} is on a read-only filesystem: use a --checkpoint-dir on a writable one"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return "a part of that path is a file, not a folder: use another --checkpoint-dir"
    return "free disk space or fix the folder's permissions"


def _manager(directory: Path, *, create: bool):
    """An orbax manager of one seed's folder: a writer (``create``) or a reader."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        create=create,
        enable_async_checkpointing=False,  # save returns once the step is committed
        # A save interrupted earlier leaves a tmp folder: the writer removes it (in a
        # background thread). A reader must not: it would delete a running save's folder.
        cleanup_tmp_directories=create,
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


def meta_checksum(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of ``meta`` without its own
    ``meta_sha256``: covers the task record, configuration, seed, benchmark and leaf hashes."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


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

    Raises:
      CheckpointError: the folder cannot be created or written (with the fix).
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
        self.dataset = dataset
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._manager = _manager(self.directory, create=True)
        except (OSError, ValueError) as err:
            code = storage_errno(err)
            if code is None:
                raise
            raise CheckpointError(
                f"cannot create the checkpoint folder {self.directory}: {err}; "
                f"{storage_fix(code, self.directory)}"
            ) from err

    def save(self, state: SpaceNetState, record: dict[str, Any]) -> int:
        """Save after a task; returns the step (tasks learned) once it is committed to disk.

        Raises:
          CheckpointError: the step (or a later one) is already saved there: a checkpoint is
            never overwritten; or the write failed (disk full, no permission), naming the
            intact earlier checkpoint and the fix.
        """
        ocp = _ocp()
        host = jax.device_get(state)
        step = int(host.task)
        self._refuse_existing(step)
        meta = {
            "format": FORMAT_VERSION,
            "state_format": STATE_FORMAT,
            "benchmark": self.benchmark,
            "dataset": self.dataset,
            "seed": self.seed,
            "tasks_learned": step,
            "config": as_saved(self.config),
            "record": json.loads(json.dumps(record)),
            "leaf_sha256": _leaf_checksums(host),
        }
        meta["meta_sha256"] = meta_checksum(meta)
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_stored_tree(host)),
                    meta=ocp.args.JsonSave(meta),
                ),
            )
            self._manager.wait_until_finished()
        except (OSError, ValueError) as err:  # disk full, permissions, a vanished folder
            self._refuse_existing(step)  # another process saved this step meanwhile
            code = storage_errno(err)
            if code is None:
                raise
            raise CheckpointError(
                f"could not save the checkpoint after task {step} in {self.directory}: "
                f"{_first_line(err)}. Nothing half-written is ever restored and "
                f"{self._kept(step)}; {storage_fix(code, self.directory)}, then rerun the same "
                f"command with --resume (to another --checkpoint-dir, copy {self.directory} "
                f"there first)"
            ) from err
        if not saved:  # orbax declines without an error (e.g. a step not after the latest)
            self._refuse_existing(step)
            raise CheckpointError(
                f"orbax did not save the checkpoint after task {step} in {self.directory} "
                f"(it holds tasks {self._steps()}): nothing was written. Use "
                f"another --checkpoint-dir, or continue from its latest checkpoint with --resume"
            )
        return step

    def _steps(self) -> list[int]:
        """The committed steps on disk now (not orbax's cached list); ``[]`` if unreadable
        (a write there then fails and says why)."""
        try:
            self._manager.reload()
            return sorted(int(s) for s in self._manager.all_steps())
        except (OSError, ValueError):
            return []

    def _refuse_existing(self, step: int) -> None:
        """Refuse to save ``step`` where it, or a later step, is already saved."""
        steps = self._steps()
        if not steps or steps[-1] < step:
            return
        which = (f"the checkpoint after task {step}" if step in steps
                 else f"a checkpoint after a later task than {step}")
        raise CheckpointError(
            f"{self.directory} already holds {which} (it has tasks {steps}); a checkpoint is "
            f"never overwritten. To continue from the latest one rerun the same command with "
            f"--resume; to start afresh use another --checkpoint-dir (or delete "
            f"{self.directory})"
        )

    def _kept(self, step: int) -> str:
        previous = [s for s in self._steps() if s < step]
        if previous:
            return f"the checkpoint after task {previous[-1]} is intact"
        return "no earlier checkpoint exists"

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


def check_checkpoint_dir(checkpoint_dir: str | Path, seeds: Iterable[int] = ()) -> None:
    """Refuse, before any work, a ``--checkpoint-dir`` that cannot hold checkpoints.

    Creates ``checkpoint_dir`` if needed, then writes, syncs and removes a small probe file in
    it and in each existing ``seed_<s>`` folder of ``seeds``: a path that is a file, a folder
    that cannot be created or written (read-only, another owner) and a full disk are reported
    at the start rather than after the first task.

    Raises:
      CheckpointError: naming the folder, the system's error and the fix.
    """
    root = Path(checkpoint_dir)
    for folder in [root, *(seed_dir(root, s) for s in seeds)]:
        if folder == root or folder.exists() or folder.is_symlink():
            _probe_writable(folder)


def _probe_writable(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a folder: checkpoints cannot be written there; move it "
            f"away or use another --checkpoint-dir"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the checkpoint folder {folder}: {err}; "
            f"{storage_fix(err.errno or 0, folder)}"
        ) from err
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".spacenet-write-probe-")
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoints in {folder}: {err}; {storage_fix(err.errno or 0, folder)}"
        ) from err


def latest_task(directory: str | Path) -> int | None:
    """The latest committed step (tasks learned) in one seed's folder, or ``None``."""
    steps = saved_tasks(directory)
    return steps[-1] if steps else None


def _first_line(err: BaseException | str) -> str:
    """The first line of an error without tensorstore's kilobytes of spec, or its type."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = text.splitlines()[0].split(" [tensorstore_spec=")[0]
    return line if len(line) <= 400 else line[:400] + " ..."


def _corrupt(directory: Path, step: int, err: BaseException | str) -> CheckpointError:
    detail = _first_line(err)
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
    """The ``meta`` item (config, seed, benchmark, dataset, record) of a step (default: latest),
    checked against its ``meta_sha256``.

    A meta written before checksums existed (no ``meta_sha256``) is accepted with a
    ``UserWarning`` that its record is unverified, so that older checkpoints stay readable.

    Raises:
      CheckpointError: no such step; the meta is unreadable, of an unknown format, or does not
        match its checksum ("corrupt or truncated").
    """
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
    if "meta_sha256" not in meta:
        warnings.warn(
            f"checkpoint {directory / str(step)} was written before checkpoints had a checksum "
            f"of their metadata: its task record and configuration are not verified",
            UserWarning, stacklevel=2,
        )
    elif meta["meta_sha256"] != meta_checksum(meta):
        raise _corrupt(directory, step, "the metadata (task record, configuration, seed) does "
                       "not match its SHA-256")
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
    wanted = as_saved(config)
    diffs = describe_differences(saved, wanted, "checkpoint")
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
    if meta.get("state_format", 1) != STATE_FORMAT:
        raise CheckpointError(
            f"checkpoint {directory / str(step)} holds a state of format "
            f"{meta.get('state_format', 1)}, written by an earlier spacenet-jax whose optimiser "
            f"state did not carry the learning rate and momentum; this version reads format "
            f"{STATE_FORMAT}. Its record (results.json) stays valid; to continue the seed, "
            f"run it again in another --checkpoint-dir"
        )
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

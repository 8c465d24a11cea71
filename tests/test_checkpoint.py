"""Orbax task checkpoints: round trip, bit-identical resume, atomicity, refusals, inspection."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY, synthetic_dataset

from experiments.common import main as experiment_main
from spacenet_jax.analysis.inspect import checkpoint_report, format_report
from spacenet_jax.analysis.inspect import main as inspect_main
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.running.study import KILL_AFTER_TASK_ENV
from spacenet_jax.storage.checkpoint import (
    CheckpointError,
    TaskCheckpointer,
    check_checkpoint_dir,
    latest_task,
    meta_checksum,
    read_metadata,
    restore_task,
    saved_tasks,
    seed_dir,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
#: Momentum, so that the optimiser state holds arrays too; two epochs to stay quick.
CONFIG = dataclasses.replace(TINY, momentum=0.9, epochs=2)
BENCH = "synthetic"
# orbax's internal event loop reports a closed loop after a restore it could not finish.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _Crash(Exception):
    pass


def _without_seconds(record: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(record)).items()
            if k not in ("seconds", "provenance")}


def _assert_same_state(a, b) -> None:
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for path, x, y in zip(
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(a)[0]],
        jax.tree.leaves(a), jax.tree.leaves(b), strict=True,
    ):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(x, y), path


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def uninterrupted(data):
    return run_task_sequence(CONFIG, data, seed=2, benchmark=BENCH, progress=False)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, data):
    """A whole checkpointed run (seed 2): its folder, final state and record."""
    root = tmp_path_factory.mktemp("ck")
    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck:
        state, record = run_task_sequence(
            CONFIG, data, seed=2, benchmark=BENCH, progress=False, on_task_end=ck
        )
    return root, state, record


def _copy_seed(saved_run, tmp_path, steps=None) -> Path:
    """A private copy of the saved run's seed folder (optionally only some steps)."""
    root = tmp_path / "ck"
    shutil.copytree(seed_dir(saved_run[0], 2), seed_dir(root, 2))
    for step in saved_tasks(seed_dir(root, 2)):
        if steps is not None and step not in steps:
            shutil.rmtree(seed_dir(root, 2) / str(step))
    return root


def test_round_trip_restores_every_leaf_and_dtype(saved_run, uninterrupted):
    root, state, record = saved_run
    folder = seed_dir(root, 2)
    assert saved_tasks(folder) == [1, 2, 3] and latest_task(folder) == 3
    restored, saved_record = restore_task(folder, CONFIG, 2)
    _assert_same_state(state, restored)
    assert restored.connection_owner[0].dtype == np.int16
    assert restored.rng.dtype == np.uint32 and restored.selected[0].dtype == bool
    assert isinstance(restored.weights[0], jax.Array)  # onto the default device
    assert _without_seconds(saved_record) == _without_seconds(record)
    # Checkpointing does not change the run.
    _assert_same_state(uninterrupted[0], state)
    # Any task boundary can be restored.
    early, early_record = restore_task(folder, CONFIG, 2, task=1)
    assert int(early.task) == 1 and len(early_record["acc_matrix"]) == 1
    meta = read_metadata(folder)
    assert meta["seed"] == 2 and meta["benchmark"] == BENCH and meta["tasks_learned"] == 3


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, data, uninterrupted):
    def crash_after_second(task, state, record):
        ck.save(state, record)
        if task == 1:
            raise _Crash

    with TaskCheckpointer(tmp_path, CONFIG, 2, benchmark=BENCH) as ck, pytest.raises(_Crash):
        run_task_sequence(CONFIG, data, seed=2, benchmark=BENCH, progress=False,
                          on_task_end=crash_after_second)
    folder = seed_dir(tmp_path, 2)
    assert latest_task(folder) == 2
    resume = restore_task(folder, CONFIG, 2)
    with TaskCheckpointer(tmp_path, CONFIG, 2, benchmark=BENCH) as ck:
        state, record = run_task_sequence(CONFIG, data, seed=2, benchmark=BENCH,
                                          progress=False, on_task_end=ck, resume_from=resume)
    assert saved_tasks(folder) == [1, 2, 3]
    assert _without_seconds(record) == _without_seconds(uninterrupted[1])
    _assert_same_state(state, uninterrupted[0])
    assert len(record["seconds"]["per_task"]) == 3


def test_interrupted_save_leaves_previous_checkpoint(saved_run, tmp_path, data, monkeypatch):
    import orbax.checkpoint as ocp

    root = _copy_seed(saved_run, tmp_path, steps={1})
    folder = seed_dir(root, 2)
    state1, record1 = restore_task(folder, CONFIG, 2)

    # A save that fails half way (after the state item, while writing the metadata).
    def fail(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    state2 = run_task_sequence(CONFIG, data, seed=2, benchmark=BENCH, progress=False,
                               resume_from=(state1, record1))  # all tasks, nothing saved
    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck:
        monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", fail)
        with pytest.raises(CheckpointError, match=r"could not save the checkpoint after "
                           r"task 3 .*disk full \(simulated\).*the checkpoint after task 1 is "
                           r"intact; free disk space"):
            ck.save(state2[0], state2[1])
        monkeypatch.undo()
    # Whether orbax had created its temporary folder when the write failed depends on thread
    # timing, so plant the half-written step a crash mid-write leaves: a tmp-named copy of a
    # step with a file cut short.
    if not any(".orbax-checkpoint-tmp" in p.name for p in folder.iterdir()):
        half = folder / "3.orbax-checkpoint-tmp-1010101"
        shutil.copytree(folder / "1", half)
        biggest = max((p for p in half.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    assert latest_task(folder) == 1
    state, record = restore_task(folder, CONFIG, 2)
    assert int(state.task) == 1 and record == record1
    _assert_same_state(state, state1)
    # A later save cleans the half-written step up and commits normally.
    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck:
        ck.save(state2[0], state2[1])
    assert saved_tasks(folder) == [1, 3]
    assert not any(".orbax-checkpoint-tmp" in p.name for p in folder.iterdir())


def test_refuses_another_configuration(saved_run):
    other = dataclasses.replace(CONFIG, learning_rate=0.07)
    with pytest.raises(CheckpointError) as err:
        restore_task(seed_dir(saved_run[0], 2), other, 2)
    message = str(err.value)
    assert "learning_rate" in message and "0.05" in message and "0.07" in message
    assert "epochs" not in message  # only the fields that differ


def test_refuses_another_seed(saved_run, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(seed_dir(saved_run[0], 2), seed_dir(root, 5))
    with pytest.raises(CheckpointError, match="holds seed 2, not seed 5"):
        restore_task(seed_dir(root, 5), CONFIG, 5)


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip", "checksum"])
def test_refuses_corrupt_checkpoint(saved_run, tmp_path, damage):
    root = _copy_seed(saved_run, tmp_path)
    folder = seed_dir(root, 2)
    state_dir = folder / "3" / "state"
    # orbax's OCDBT layout: the tree's root node in state/d/, the array data in
    # state/ocdbt.process_0/d/ (a file may also hold unreferenced bytes, so damage them all).
    data_files = sorted((state_dir / "ocdbt.process_0" / "d").iterdir())
    if damage == "truncate":
        for f in data_files:
            f.write_bytes(f.read_bytes()[:10])
    elif damage == "delete":
        for f in (state_dir / "d").iterdir():
            f.unlink()
    elif damage == "flip":  # same sizes, different bytes inside the arrays' data
        for f in data_files:
            raw = bytearray(f.read_bytes())
            raw[min(100, len(raw) - 1)] ^= 0xFF
            f.write_bytes(bytes(raw))
    else:  # silent damage that only the checksums can tell: a recorded leaf hash is off
        meta_file = folder / "3" / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta["leaf_sha256"][0] = "0" * 64
        meta["meta_sha256"] = meta_checksum(meta)  # consistent: only the leaf check can tell
        meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        restore_task(folder, CONFIG, 2)
    message = str(err.value)
    assert str(folder / "3") in message and "corrupt or truncated" in message
    assert "delete that folder" in message and "--checkpoint-dir" in message
    if damage == "checksum":
        assert "a state leaf does not match its SHA-256" in message
    # The earlier steps are intact.
    assert int(restore_task(folder, CONFIG, 2, task=2)[0].task) == 2


def test_refuses_unreadable_metadata(saved_run, tmp_path):
    root = _copy_seed(saved_run, tmp_path)
    folder = seed_dir(root, 2)
    (folder / "3" / "meta" / "metadata").write_text('{"format": 1, "conf')
    with pytest.raises(CheckpointError, match=r"/3 \(after task 3\) is corrupt"):
        restore_task(folder, CONFIG, 2)


# ---- the experiments' command line, in-process on synthetic data ----------------------------

def _cli(argv: list[str], data) -> dict:
    return experiment_main(BENCH, "synthetic", "test", CONFIG, argv=["--quiet", *argv],
                           load=lambda data_dir, quiet: data)


def test_cli_refuses_checkpoints_of_another_configuration(saved_run, tmp_path, data, capsys):
    root = _copy_seed(saved_run, tmp_path, steps={1})
    with pytest.raises(SystemExit) as exit_:
        _cli(["--seed", "2", "--checkpoint-dir", str(root), "--resume", "--lr", "0.07"], data)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "learning_rate" in err and "0.07" in err
    assert saved_tasks(seed_dir(root, 2)) == [1]  # nothing was done


def test_cli_refuses_existing_checkpoints_without_resume(saved_run, tmp_path, data, capsys):
    root = _copy_seed(saved_run, tmp_path, steps={1})
    with pytest.raises(SystemExit):
        _cli(["--seed", "2", "--checkpoint-dir", str(root)], data)
    assert "add --resume" in capsys.readouterr().err


def test_cli_resume_continues_and_without_checkpoint_starts_fresh(
    saved_run, tmp_path, data, uninterrupted, capsys
):
    root = _copy_seed(saved_run, tmp_path, steps={1})
    payload = _cli(["--seeds", "2,3", "--checkpoint-dir", str(root), "--resume"], data)
    err = capsys.readouterr().err
    assert "seed 2] resuming from" in err and "(1/3 tasks done)" in err
    assert f"no checkpoint in {seed_dir(root, 3)}, starting from scratch" in err
    run2, run3 = payload["runs"]
    assert _without_seconds(run2) == _without_seconds(uninterrupted[1])
    assert saved_tasks(seed_dir(root, 2)) == [1, 2, 3]
    assert saved_tasks(seed_dir(root, 3)) == [1, 2, 3]
    fresh = run_task_sequence(CONFIG, data, seed=3, benchmark=BENCH, progress=False)[1]
    assert _without_seconds(run3) == _without_seconds(fresh)


# ---- inspection --------------------------------------------------------------------------------

def test_inspect_report_on_tiny_checkpoint(saved_run, capsys):
    root, _, record = saved_run
    report, state, config = checkpoint_report(root, task=2)  # a folder holding one seed
    assert config == CONFIG and int(state.task) == 2 and report["tasks_learned"] == 2
    assert report["saved_tasks"] == [1, 2, 3] and report["seed"] == 2
    assert report["connections_per_task"] == [list(CONFIG.connections_per_task)] * 2
    assert report["free_neurons"] == [
        n - 2 * s for n, s in zip(CONFIG.layer_sizes[1:-1], CONFIG.specific_neurons,
                                  strict=True)
    ]
    assert report["reserved_neurons"] == [list(CONFIG.specific_neurons)] * 2
    assert report["acc_matrix"] == record["acc_matrix"][:2]
    text = format_report(report)
    assert "tasks        2 of 3 learned" in text and "task 2: [60, 30, 8]" in text
    assert "layer 1 (24): free 16, reserved 8 (per task [4, 4])" in text
    assert inspect_main([str(seed_dir(root, 2)), "--no-eval"]) == 0
    assert "tasks        3 of 3 learned" in capsys.readouterr().out


# ---- real MNIST through the command line, killed and resumed ---------------------------------

needs_mnist = pytest.mark.skipif(
    not (SHARED_DATASETS / "mnist").is_dir(), reason="../shared/datasets absent"
)


def _run(args: list[str], cache: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != KILL_AFTER_TASK_ENV}
    env = {**base, "SPACENET_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@needs_mnist
def test_split_mnist_killed_after_task_2_resumes_to_the_same_results(tmp_path, shared_cache):
    cache = shared_cache
    common = ["-m", "experiments.split_mnist", "--seed", "1", "--epochs", "1", "--quiet",
              "--data-dir", str(SHARED_DATASETS)]
    whole = _run([*common, "--out", str(tmp_path / "whole")], cache)
    assert whole.returncode == 0, whole.stderr[-3000:]

    ck, out = tmp_path / "ck", tmp_path / "resumed"
    killed = _run([*common, "--out", str(out), "--checkpoint-dir", str(ck)], cache,
                  **{KILL_AFTER_TASK_ENV: "2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert saved_tasks(seed_dir(ck, 1)) == [1, 2] and not (out / "results.json").exists()

    resumed = _run([*common, "--out", str(out), "--checkpoint-dir", str(ck), "--resume"], cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "(2/5 tasks done)" in resumed.stderr
    assert saved_tasks(seed_dir(ck, 1)) == [1, 2, 3, 4, 5]
    a = json.loads((tmp_path / "whole" / "results.json").read_text())["runs"]
    b = json.loads((out / "results.json").read_text())["runs"]
    assert [_without_seconds(r) for r in a] == [_without_seconds(r) for r in b]

    shown = _run(["-m", "spacenet_jax.analysis.inspect", str(ck), "--task", "2",
                  "--data-dir", str(SHARED_DATASETS)], cache)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "tasks        2 of 5 learned" in shown.stdout
    assert "task 2: [10000, 1640, 80]" in shown.stdout
    assert "layer 1 (400): free 320, reserved 80" in shown.stdout
    row = b[0]["acc_matrix"][1][:2]
    assert f"test accuracy (%) per task learned: {100 * row[0]:.2f} {100 * row[1]:.2f}" in (
        shown.stdout)


@pytest.mark.parametrize(
    ("code", "text"),
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")],
)
def test_cli_failed_save_stops_clearly_and_resume_finishes(
    saved_run, tmp_path, data, uninterrupted, monkeypatch, capsys, code, text
):
    import orbax.checkpoint as ocp

    calls = {"n": 0}
    save = ocp.handlers.JsonCheckpointHandler.async_save

    def full_on_second_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(code, text)
        return save(self, *args, **kwargs)

    root = tmp_path / "ck"
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", full_on_second_save)
    with pytest.raises(SystemExit) as stopped:
        _cli(["--seed", "2", "--checkpoint-dir", str(root)], data)
    monkeypatch.undo()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "could not save the checkpoint after task 2" in err
    assert text in err and "the checkpoint after task 1 is intact" in err
    assert latest_task(seed_dir(root, 2)) == 1
    payload = _cli(["--seed", "2", "--checkpoint-dir", str(root), "--resume"], data)
    assert _without_seconds(payload["runs"][0]) == _without_seconds(uninterrupted[1])
    assert saved_tasks(seed_dir(root, 2)) == [1, 2, 3]


# ---- nothing overwritten, nothing silent (issue 14) -------------------------------------------

def _meta_file(root: Path, step: int) -> Path:
    return seed_dir(root, 2) / str(step) / "meta" / "metadata"


def test_save_refuses_a_step_that_exists_and_writes_nothing(saved_run, tmp_path):
    root = _copy_seed(saved_run, tmp_path, steps={1, 2})
    state1, record1 = restore_task(seed_dir(root, 2), CONFIG, 2, task=1)
    before = {s: _meta_file(root, s).read_bytes() for s in (1, 2)}
    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck:
        with pytest.raises(CheckpointError, match=r"already holds the checkpoint after task 1 "
                           r"\(it has tasks \[1, 2\]\); a checkpoint is never overwritten.*"
                           r"--resume.*another --checkpoint-dir"):
            ck.save(state1, record1)
        shutil.rmtree(seed_dir(root, 2) / "1")  # a step before the latest: orbax returns False
        with pytest.raises(CheckpointError, match=r"already holds a checkpoint after a later "
                           r"task than 1 \(it has tasks \[2\]\)"):
            ck.save(state1, record1)
    assert saved_tasks(seed_dir(root, 2)) == [2]
    assert _meta_file(root, 2).read_bytes() == before[2]


def test_save_raises_when_orbax_declines(saved_run, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    root = _copy_seed(saved_run, tmp_path, steps={1})
    state3 = restore_task(seed_dir(saved_run[0], 2), CONFIG, 2)
    monkeypatch.setattr(ocp.CheckpointManager, "save", lambda self, *a, **k: False)
    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck, pytest.raises(
        CheckpointError, match=r"orbax did not save the checkpoint after task 3 .*nothing was "
        r"written"
    ):
        ck.save(*state3)


def _flip_digit(text: str, after: str) -> str:
    """``text`` with the first digit after ``after`` changed (0 <-> 1, else minus one)."""
    i = text.index(after) + len(after)
    while not text[i].isdigit() or text[i - 1] == "e":
        i += 1
    new = {"0": "1", "1": "0"}.get(text[i], str(int(text[i]) - 1))
    return text[:i] + new + text[i + 1:]


@pytest.mark.parametrize("field", ['"acc_matrix": [[', '"learning_rate": ', '"seed": '])
def test_refuses_edited_metadata(saved_run, tmp_path, field):
    root = _copy_seed(saved_run, tmp_path)
    meta_file = _meta_file(root, 3)
    text = meta_file.read_text()
    assert field in text, text[:200]
    meta_file.write_text(_flip_digit(text, field))
    for read in (lambda: read_metadata(seed_dir(root, 2)),
                 lambda: restore_task(seed_dir(root, 2), CONFIG, 2)):
        with pytest.raises(CheckpointError) as err:
            read()
        message = str(err.value)
        assert f"{seed_dir(root, 2) / '3'} (after task 3) is corrupt or truncated" in message
        assert "metadata (task record, configuration, seed) does not match its SHA-256" in message
    assert int(restore_task(seed_dir(root, 2), CONFIG, 2, task=2)[0].task) == 2


def test_cli_resume_refuses_an_edited_task_record(saved_run, tmp_path, data, capsys):
    root = _copy_seed(saved_run, tmp_path, steps={1, 2})
    meta_file = _meta_file(root, 2)
    meta_file.write_text(_flip_digit(meta_file.read_text(), '"acc_matrix": [['))
    with pytest.raises(SystemExit) as stopped:
        _cli(["--seed", "2", "--checkpoint-dir", str(root), "--resume"], data)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "(after task 2) is corrupt or truncated" in err and "delete that folder" in err
    assert saved_tasks(seed_dir(root, 2)) == [1, 2]  # nothing was done


def test_metadata_without_checksum_is_read_with_a_warning(saved_run, tmp_path):
    """Checkpoints written before ``meta_sha256`` existed stay readable."""
    root = _copy_seed(saved_run, tmp_path)
    meta_file = _meta_file(root, 3)
    meta = json.loads(meta_file.read_text())
    del meta["meta_sha256"]
    meta_file.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="written before checkpoints had a checksum"):
        state, record = restore_task(seed_dir(root, 2), CONFIG, 2)
    assert int(state.task) == 3 and record == meta["record"]


_RESOURCE_EXHAUSTED = (
    'RESOURCE_EXHAUSTED: Error opening "zarr" driver: Error writing "task/.zarray" in OCDBT '
    "database: Failed to write 166 bytes to file 17: No space left on device "
    "[os_error_code='28'] [tensorstore_spec='{...}']"
)


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "free disk space on the disk of"),
        (ValueError(_RESOURCE_EXHAUSTED), "free disk space on the disk of"),
        (ValueError("PERMISSION_DENIED: Error writing local file"), "writable for this user"),
        (OSError(errno.EACCES, "Permission denied"), "writable for this user"),
        (OSError(errno.EROFS, "Read-only file system"), "is on a read-only filesystem: use a "
         "--checkpoint-dir on a writable one"),
    ],
    ids=["ENOSPC", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "EACCES", "EROFS"],
)
def test_failed_write_raises_checkpoint_error_with_the_fix(
    saved_run, tmp_path, monkeypatch, error, fix
):
    import orbax.checkpoint as ocp

    root = _copy_seed(saved_run, tmp_path, steps={1})
    state3 = restore_task(seed_dir(saved_run[0], 2), CONFIG, 2)

    def fail(self, *args, **kwargs):
        raise error

    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck:
        monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "async_save", fail)
        with pytest.raises(CheckpointError) as err:
            ck.save(*state3)
    message = str(err.value)
    assert message.startswith(f"could not save the checkpoint after task 3 in {seed_dir(root, 2)}")
    assert "the checkpoint after task 1 is intact" in message and fix in message
    assert message.endswith(f"then rerun the same command with --resume (to another "
                            f"--checkpoint-dir, copy {seed_dir(root, 2)} there first)")
    assert "tensorstore_spec" not in message  # the first line of the error, not kilobytes
    assert saved_tasks(seed_dir(root, 2)) == [1]


def test_a_bug_in_save_is_not_reported_as_a_full_disk(saved_run, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    root = _copy_seed(saved_run, tmp_path, steps={1})
    state3 = restore_task(seed_dir(saved_run[0], 2), CONFIG, 2)

    def bug(self, *args, **kwargs):
        raise ValueError("tree structure mismatch")

    with TaskCheckpointer(root, CONFIG, 2, benchmark=BENCH) as ck:
        monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "async_save", bug)
        with pytest.raises(ValueError, match="tree structure mismatch"):
            ck.save(*state3)


def test_unusable_checkpoint_location_is_refused_up_front(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"a_file is a file, not a folder.*another "
                       r"--checkpoint-dir"):
        check_checkpoint_dir(a_file)
    with pytest.raises(CheckpointError, match=r"cannot create the checkpoint folder .*a_file/"
                       r"seed_2.*is a file, not a folder: use another --checkpoint-dir"):
        TaskCheckpointer(a_file, CONFIG, 2, benchmark=BENCH)
    (tmp_path / "ck" / "seed_4").mkdir(parents=True)
    (tmp_path / "ck" / "seed_5").write_text("")
    check_checkpoint_dir(tmp_path / "ck", [3, 4])  # writable; a missing seed folder is fine
    with pytest.raises(CheckpointError, match=r"seed_5 is a file, not a folder"):
        check_checkpoint_dir(tmp_path / "ck", [4, 5])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["seed_4", "seed_5"]

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints in .*ck: \[Errno 28\] "
                       r"No space left on device; free disk space on the disk of"):
        check_checkpoint_dir(tmp_path / "ck")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["seed_4", "seed_5"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder of mode 0o500")
def test_read_only_checkpoint_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(CheckpointError, match=r"cannot write checkpoints in .*ro: .*"
                           r"Permission denied.*make .*ro writable for this user"):
            check_checkpoint_dir(folder)
        with pytest.raises(CheckpointError, match=r"cannot create the checkpoint folder"):
            TaskCheckpointer(folder, CONFIG, 2, benchmark=BENCH)
    finally:
        folder.chmod(0o700)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (for a real full disk and a real read-only folder), if this user may mount
    one (root on a Linux machine that allows it), else skip."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int) -> None:
    """Fill the filesystem of ``mount`` up to ``leave`` bytes."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(64 * 1024))
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(4096))
        os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    finally:
        os.close(fd)


# orbax leaves a coroutine unawaited when the read-only folder refuses its first write.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_real_full_and_read_only_disk(saved_run, small_tmpfs, caplog):
    state1, record1 = restore_task(seed_dir(saved_run[0], 2), CONFIG, 2, task=1)
    state2, record2 = restore_task(seed_dir(saved_run[0], 2), CONFIG, 2, task=2)
    with TaskCheckpointer(small_tmpfs, CONFIG, 2, benchmark=BENCH) as ck:
        ck.save(state1, record1)
        _fill(small_tmpfs, leave=20 * 1024)  # room for a folder or two, not for a step
        # Futures that an earlier test's failed orbax reads left behind log "Future exception
        # was never retrieved" when they are collected: collect them before capturing, so
        # only this save's records are judged (the collection otherwise falls in at random).
        gc.collect()
        with caplog.at_level(logging.INFO), pytest.raises(CheckpointError) as err:
            ck.save(state2, record2)
    # orbax's threads logged a traceback per failed write (hundreds of lines): one error now.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = str(err.value)
    assert "could not save the checkpoint after task 2" in message
    assert "the checkpoint after task 1 is intact; free disk space" in message
    assert restore_task(seed_dir(small_tmpfs, 2), CONFIG, 2)[1] == record1
    _fill(small_tmpfs, leave=0)
    with pytest.raises(CheckpointError, match="No space left on device; free disk space"):
        check_checkpoint_dir(small_tmpfs)

    (small_tmpfs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints in .*Read-only file "
                       r"system.*is on a read-only filesystem"):
        check_checkpoint_dir(small_tmpfs, [2])
    with pytest.raises(CheckpointError, match=r"cannot create the checkpoint folder .*seed_3: "
                       r".*Read-only file system.*; .*tmpfs is on a read-only filesystem"):
        TaskCheckpointer(small_tmpfs, CONFIG, 3, benchmark=BENCH)
    with TaskCheckpointer(small_tmpfs, CONFIG, 2, benchmark=BENCH) as ck, pytest.raises(
        CheckpointError, match=r"could not save the checkpoint after task 2 .*Read-only file "
        r"system.*is on a read-only filesystem"
    ):
        ck.save(state2, record2)


def test_cli_refuses_an_unusable_checkpoint_dir_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")

    def load(data_dir, quiet):
        raise AssertionError("the data was loaded")

    with pytest.raises(SystemExit) as stopped:
        experiment_main(BENCH, "synthetic", "test", CONFIG, load=load,
                        argv=["--quiet", "--checkpoint-dir", str(a_file)])
    assert stopped.value.code == 2
    assert f"error: {a_file} is a file, not a folder" in capsys.readouterr().err


def test_a_checkpoint_of_the_earlier_state_format_is_refused_as_such(saved_run, tmp_path):
    """Written before the optimiser state held the learning rate and momentum (a meta without
    ``state_format``, its checksum intact): refused as an earlier format, not as corrupt."""
    root = _copy_seed(saved_run, tmp_path)
    meta_file = _meta_file(root, 3)
    meta = json.loads(meta_file.read_text())
    del meta["state_format"]
    meta["meta_sha256"] = meta_checksum(meta)
    meta_file.write_text(json.dumps(meta))
    assert read_metadata(seed_dir(root, 2))["record"] == meta["record"]  # the record stays
    with pytest.raises(CheckpointError, match="state of format 1, written by an earlier") as err:
        restore_task(seed_dir(root, 2), CONFIG, 2)
    assert "corrupt" not in str(err.value)


def _orbax_thread_record(err: BaseException, level: int = logging.ERROR) -> logging.LogRecord:
    """A record as orbax's ``_SignalingThread`` logs it (``logging.exception`` in its thread)."""
    return logging.LogRecord(
        "absl", level, "/x/orbax/checkpoint/_src/futures/future.py", 387,
        "[process=%d][thread=%s][operation_id=%s] _SignalingThread.run() raised an exception: %s",
        (0, "np_type_handler", 29, err), (type(err), err, None))


def test_orbax_thread_tracebacks_of_storage_failures_are_dropped_even_after_save():
    """The filter stays on the absl logger (CI saw a thread log after ``save`` had raised and
    a level switched around ``save`` was back); it drops storage failures only."""
    from spacenet_jax.storage.checkpoint import _ocp

    _ocp()
    absl = logging.getLogger("absl")
    full = ValueError("RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']")
    assert not absl.filter(_orbax_thread_record(full))
    assert not absl.filter(_orbax_thread_record(OSError(errno.EACCES, "Permission denied")))
    assert absl.filter(_orbax_thread_record(TypeError("a bug in a handler")))
    assert absl.filter(_orbax_thread_record(full, level=logging.WARNING))
    other = _orbax_thread_record(full)
    other.pathname = "/x/some_other_library.py"
    assert absl.filter(other)
    _ocp()  # a second call does not add a second filter
    assert sum(type(f).__name__ == "_StorageFailureFilter" for f in absl.filters) == 1

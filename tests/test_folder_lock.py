"""One run per folder (issue 14): a second run on the same --out or checkpoint folder exits
at once with status 2 naming the folder and the holder; a killed run's lock never blocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spacenet_jax.storage.checkpoint import saved_tasks, seed_dir
from spacenet_jax.storage.folder_lock import (
    LOCK_NAME,
    OWNER_NAME,
    FolderInUseError,
    FolderLockError,
    lock_folder,
    read_owner,
    releases_locks,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "SPACENET_COMPILATION_CACHE_DIR": str(cache),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "out"
    with lock_folder(folder, what="results", other="another --out") as held:
        assert held.held and (folder / LOCK_NAME).exists()
        owner = read_owner(folder)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(FolderInUseError) as err:
            lock_folder(folder, what="results", other="another --out")
        message = str(err.value)
        assert message.startswith(f"{folder} is in use by another run (pid {os.getpid()} on "
                                  f"host {socket.gethostname()}, started ")
        assert message.endswith("would overwrite each other's results. Wait until it ends, or "
                                "use another --out")
    assert not held.held and not (folder / OWNER_NAME).exists()
    lock_folder(folder).release()  # free again


def test_unwritable_folder_cannot_be_locked(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FolderLockError, match=r"cannot lock .*a_file/out: .*make it \(or its "
                       r"parent\) a writable folder, or use another --out"):
        lock_folder(tmp_path / "a_file" / "out", other="another --out")


def test_releases_locks_frees_every_lock_of_the_call(tmp_path):
    @releases_locks
    def command(fail: bool) -> None:
        lock_folder(tmp_path / "a")
        lock_folder(tmp_path / "b")
        if fail:
            raise SystemExit(2)

    with pytest.raises(SystemExit):
        command(True)
    command(False)
    for name in ("a", "b"):
        lock_folder(tmp_path / name).release()  # not held any more


def test_lock_of_a_killed_run_does_not_block(tmp_path):
    folder = tmp_path / "ck"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from spacenet_jax.storage.folder_lock import "
         "lock_folder; lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(120)",
         str(folder)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid} on host"):
            lock_folder(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert read_owner(folder)["pid"] == holder.pid  # its record is left behind...
    with lock_folder(folder):  # ...but the lock is not
        assert read_owner(folder)["pid"] == os.getpid()


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def test_two_runs_on_one_folder_the_second_exits_2_at_once(tmp_path):
    cache = tmp_path / "compiled"
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = [sys.executable, str(TESTS / "synthetic_cli.py"), "--seed", "3", "--epochs", "1"]
    first = subprocess.Popen([*args, "--out", str(out), "--checkpoint-dir", str(ck)], cwd=ROOT,
                             env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        for line in first.stderr:  # a progress line: it is training, holding its folders
            if line.startswith("[synthetic"):
                break
        first.send_signal(signal.SIGSTOP)  # keep it there while the others try
        seconds = []
        for other_out, other_ck, busy in [
            (out, tmp_path / "ck2", out),  # same --out
            (tmp_path / "out2", ck, seed_dir(ck, 3)),  # same checkpoint folder
        ]:
            start = time.perf_counter()
            second = subprocess.run(
                [*args, "--quiet", "--out", str(other_out), "--checkpoint-dir", str(other_ck)],
                cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=300,
            )
            seconds.append(time.perf_counter() - start)
            assert second.returncode == 2, second.stderr[-3000:]
            assert second.stderr.startswith(
                f"error: {busy} is in use by another run (pid {first.pid} on host "
                f"{socket.gethostname()}, started "
            ), second.stderr[-3000:]
            assert "Wait until it ends, or use another --" in second.stderr
            assert "Traceback" not in second.stderr
        assert not (tmp_path / "out2" / "results.json").exists()
        assert not seed_dir(tmp_path / "ck2", 3).exists() or not saved_tasks(
            seed_dir(tmp_path / "ck2", 3))
    finally:
        first.send_signal(signal.SIGCONT)
        first.stderr.read()
        first.wait(timeout=300)
    assert first.returncode == 0
    assert [r["seed"] for r in _runs(out)] == [3] and saved_tasks(seed_dir(ck, 3)) == [1, 2, 3]
    assert not (out / OWNER_NAME).exists() and not (seed_dir(ck, 3) / OWNER_NAME).exists()
    print(f"refused in {seconds[0]:.1f}s and {seconds[1]:.1f}s (a Python and JAX start each)")

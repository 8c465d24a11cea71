"""Ctrl-C and SIGTERM: the write in progress finishes, one line says what is kept and how to
continue, and ``--resume`` then ends exactly as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spacenet_jax.running.interrupts import deferred_interrupts, interrupts_as_keyboard_interrupt

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_a_signal_during_a_deferred_block_waits_for_its_end():
    done = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), interrupts_as_keyboard_interrupt():
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append("write finished")
        done.append("not reached")
    assert done == ["write finished"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SPACENET_COMPILATION_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    return subprocess.Popen([sys.executable, str(TESTS / "synthetic_cli.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _runs(out: Path) -> list[dict]:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "batch", "provenance")}
            for r in runs]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_says_what_is_kept_and_resumes(tmp_path, sig):
    cache = tmp_path / "compiled"
    args = ["--seeds", "0-1", "--seed-batch", "1", "--epochs", "60"]
    whole = _start([*args, "--quiet", "--out", str(tmp_path / "whole")], cache)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]

    out, ck = tmp_path / "out", tmp_path / "ck"
    run = _start([*args, "--out", str(out), "--checkpoint-dir", str(ck)], cache)
    for line in run.stderr:  # interrupt in the middle of seed 0's second task
        if "seed 0] task 2/3 epoch 20/" in line:
            break
    run.send_signal(sig)
    rest = run.stderr.read()
    assert run.wait(timeout=60) == 130
    last = [line for line in rest.splitlines() if line.strip()][-1]
    assert "Traceback" not in rest
    name = signal.Signals(sig).name
    assert last.startswith(f"interrupted ({name}); kept: seed 0 after task 1 in ")
    assert "Continue with: " in last and last.endswith("--resume")

    resumed = _start([*args, "--quiet", "--out", str(out), "--checkpoint-dir", str(ck),
                      "--resume"], cache)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert "Traceback" not in resumed.stderr.read()
    assert _runs(out) == _runs(tmp_path / "whole")


def test_interrupt_without_outputs_says_nothing_was_saved(tmp_path):
    run = _start(["--epochs", "400"], tmp_path / "compiled")
    for line in run.stderr:
        if "task 1/3 epoch 5/" in line:
            break
    run.send_signal(signal.SIGINT)
    rest = run.stderr.read()
    assert run.wait(timeout=60) == 130
    assert "interrupted (SIGINT): nothing was saved; run with --out" in rest
    assert "Traceback" not in rest

"""Kill a checkpointed run at random moments (SIGKILL: during a step, a rewiring, a save...),
resume it, and get exactly the results of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spacenet_jax.storage.checkpoint import saved_tasks, seed_dir

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ARGS = ["--seeds", "0-1", "--epochs", "4", "--quiet"]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "SPACENET_COMPILATION_CACHE_DIR": str(cache),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TESTS / "synthetic_cli.py"), *args], cwd=ROOT,
                            env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _runs(out: Path) -> list[dict]:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "batch", "provenance")}
            for r in runs]


@pytest.mark.slow
def test_killed_at_random_moments_resumes_to_identical_results(tmp_path):
    cache = tmp_path / "compiled"
    whole = _start([*ARGS, "--out", str(tmp_path / "whole")], cache)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    expected = _runs(tmp_path / "whole")

    # Progress lines (one per epoch, one per task) time the kills: after a random line, wait a
    # random fraction of a second and SIGKILL, landing in a training step, a rewiring, an
    # evaluation or a checkpoint save.
    rng = np.random.default_rng(20261125)
    progress = [a for a in ARGS if a != "--quiet"]
    for attempt in range(4):
        out, ck = tmp_path / f"out{attempt}", tmp_path / f"ck{attempt}"
        args = [*progress, "--out", str(out), "--checkpoint-dir", str(ck)]
        run = _start(args, cache)
        after_line, pause = int(rng.integers(1, 15)), float(rng.uniform(0.0, 0.3))
        seen = 0
        for line in run.stderr:
            seen += line.startswith("[synthetic")
            if seen == after_line:
                break
        time.sleep(pause)
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        saved = [saved_tasks(seed_dir(ck, s)) if seed_dir(ck, s).exists() else [] for s in (0, 1)]
        print(f"attempt {attempt}: killed {pause:.2f}s after progress line {after_line}, "
              f"checkpoints per seed {saved}")
        resumed = _start([*args, "--resume", "--quiet"], cache)
        assert resumed.wait(timeout=300) == 0, (after_line, saved, resumed.stderr.read()[-3000:])
        assert _runs(out) == expected, f"killed after line {after_line}, checkpoints {saved}"
        assert [saved_tasks(seed_dir(ck, s)) for s in (0, 1)] == [[1, 2, 3]] * 2


@pytest.mark.slow
def test_same_seed_is_bit_identical_across_processes(tmp_path):
    """Two separate processes, same seed: identical records and bit-identical states after
    every task (the checkpoints' per-leaf sha256), on the CPU."""
    from spacenet_jax.storage.checkpoint import read_metadata

    digests = []
    for name in ("a", "b"):
        run = _start(["--seed", "3", "--quiet", "--out", str(tmp_path / name),
                      "--checkpoint-dir", str(tmp_path / f"ck_{name}")], tmp_path / name / "cc")
        assert run.wait(timeout=300) == 0, run.stderr.read()[-3000:]
        folder = seed_dir(tmp_path / f"ck_{name}", 3)
        digests.append([read_metadata(folder, t)["leaf_sha256"] for t in saved_tasks(folder)])
    assert _runs(tmp_path / "a") == _runs(tmp_path / "b")
    assert len(digests[0]) == 3 and digests[0] == digests[1]

"""Whole task sequences: tiny synthetic data in-process, real MNIST through the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, synthetic_dataset

from spacenet_jax.running.runner import run_task_sequence

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


def test_synthetic_sequence_record():
    config = dataclasses.replace(TINY, connections_per_task=(100, 36, 10), learning_rate=0.1,
                                 epochs=4)
    data = synthetic_dataset()
    _, record = run_task_sequence(config, data, seed=0, benchmark="synthetic", progress=False)
    T = TINY.num_tasks
    acc = record["acc_matrix"]
    assert len(acc) == T and all(len(row) == T for row in acc)
    for i, row in enumerate(acc):
        for j, value in enumerate(row):
            if j > i:
                assert value is None
            else:
                assert 0.0 <= value <= 1.0
    assert record["final_task_acc"] == acc[-1]
    assert record["final_avg_acc"] == pytest.approx(np.mean(acc[-1]))
    # Task-incremental (argmax within the true task's classes): the same None pattern, and
    # never below class-incremental, entry by entry.
    task_il = record["task_il_acc_matrix"]
    assert [[v is None for v in row] for row in task_il] == [[v is None for v in row]
                                                             for row in acc]
    for row, il_row in zip(acc, task_il, strict=True):
        for value, il in zip(row, il_row, strict=True):
            assert value is None or value <= il <= 1.0
    assert record["final_task_il_acc"] == task_il[-1]
    assert record["final_task_il_avg_acc"] == pytest.approx(np.mean(task_il[-1]))
    assert record["final_task_il_avg_acc"] >= record["final_avg_acc"]
    # Each task is learned when trained, and the whole sequence is remembered well above chance
    # (1/6 over 6 classes, no task identity).
    assert np.mean([acc[i][i] for i in range(T)]) > 0.8
    assert record["final_overall_acc"] > 0.5
    assert record["connections_per_task"] == [list(config.connections_per_task)] * T
    assert record["free_neurons"] == [
        [n - (t + 1) * s for n, s in zip(TINY.layer_sizes[1:-1], TINY.specific_neurons,
                                          strict=True)]
        for t in range(T)
    ]
    assert len(record["seconds"]["per_task"]) == T and record["seconds"]["total"] > 0
    json.dumps(record)  # plain JSON


needs_mnist = pytest.mark.skipif(
    not (SHARED_DATASETS / "mnist").is_dir(), reason="../shared/datasets absent"
)


@pytest.fixture(scope="module")
def mnist_cache(shared_cache) -> Path:
    """The session's dataset cache for this module's subprocesses (MNIST prepared once)."""
    return shared_cache


def _run(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPACENET_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def _run_cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    return _run(["-m", "experiments.split_mnist", *args], cache)


@pytest.mark.slow
@needs_mnist
def test_split_mnist_cli_on_real_mnist_short_schedule(tmp_path, mnist_cache):
    out = tmp_path / "run"
    result = _run_cli(
        ["--seed", "1", "--epochs", "2", "--data-dir", str(SHARED_DATASETS), "--out", str(out)],
        mnist_cache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final average accuracy" in result.stdout
    assert "task 5/5" in result.stderr  # per-task progress
    payload = json.loads((out / "results.json").read_text())
    (run,) = payload["runs"]
    assert run["benchmark"] == "split_mnist" and run["seed"] == 1
    assert run["config"]["epochs"] == 2
    assert len(run["acc_matrix"]) == 5
    assert run["connections_per_task"] == [[10000, 1640, 80]] * 5
    assert run["free_neurons"][-1] == [200, 200]
    # Class-incremental, no task identity: forgetting-prone baselines score about 0.2 here.
    assert run["final_avg_acc"] > 0.45, run["final_task_acc"]
    assert payload["summary"]["final_avg_acc"]["n"] == 1


@pytest.mark.slow
@needs_mnist
def test_readme_python_example_runs(mnist_cache):
    """The README's Python example, as written, trains two tasks on real MNIST."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "learn_task" in code
    result = _run(["-c", code], mnist_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    per_task = last.split("]")[0].strip("[").split(",")
    assert len(per_task) == 2 and all(float(a) > 0.5 for a in per_task), last


def test_split_mnist_cli_refuses_missing_data(tmp_path):
    result = _run_cli(["--data-dir", str(tmp_path / "nowhere"), "--quiet"], tmp_path / "cache")
    assert result.returncode == 2
    assert "--data-dir" in result.stderr and "mnist" in result.stderr


def test_split_mnist_cli_refuses_impossible_config(tmp_path):
    result = _run_cli(["--specific-neurons", "90,40", "--quiet"], tmp_path / "cache")
    assert result.returncode == 2
    assert "specific_neurons=90" in result.stderr

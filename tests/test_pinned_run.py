"""A short real run pinned: split MNIST seed 0 at the paper's settings gives exactly the
accuracy matrices it gave when this test was written, so a change meant to leave behaviour
alone (a refactor) cannot change a result unnoticed.

The pin is exact (every task's count of correct test images) on the stack it was recorded on
(JAX 0.10.2 on x86_64, the CPU); floating-point sums may differ on other JAX versions or CPUs,
and there each accuracy must only agree within 3 points (a rounding difference can flip a
top-k tie and change a few decisions, not the result)."""

from __future__ import annotations

import platform
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.storage.data import load_dataset, task_indices

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PINNED_STACK = ("0.10.2", "x86_64", "cpu")

# Correct test images per task after each task (row i: after task i + 1), and per task.
CLASS_IL_HITS = [
    [2112],
    [1979, 1903],
    [1652, 1598, 1629],
    [1611, 1391, 1642, 1527],
    [1416, 978, 1588, 1472, 824],
]
TASK_IL_HITS = [
    [2112],
    [2112, 1974],
    [2112, 1972, 1833],
    [2112, 1974, 1831, 1970],
    [2111, 1975, 1831, 1971, 1906],
]


@pytest.mark.skipif(not (DATA_DIR / "mnist").is_dir(), reason="../shared/datasets absent")
def test_split_mnist_seed_0_gives_the_pinned_accuracy_matrices():
    data = load_dataset("mnist", str(DATA_DIR), verbose=False)
    sizes = [len(ix) for ix in task_indices(data.test_labels, SPLIT_MNIST.task_classes)]
    _, record = run_task_sequence(SPLIT_MNIST, data, 0, benchmark="split_mnist", progress=False)
    assert record["connections_used"] == [50000, 8200, 400]
    for matrix, pinned in (("acc_matrix", CLASS_IL_HITS), ("task_il_acc_matrix", TASK_IL_HITS)):
        rows = record[matrix]
        hits = [[round(rows[i][j] * sizes[j]) for j in range(i + 1)] for i in range(len(rows))]
        stack = (jax.__version__, platform.machine(), jax.default_backend())
        if stack == PINNED_STACK:
            assert hits == pinned, f"{matrix} changed: {hits}"
        else:
            for i, row in enumerate(pinned):
                got = np.asarray(rows[i][: i + 1])
                np.testing.assert_allclose(got, np.asarray(row) / sizes[: i + 1], atol=0.03)

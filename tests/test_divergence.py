"""A NaN or infinite loss stops the run at once, says where, and keeps the last good checkpoint."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import TINY

from experiments.common import main as experiment_main
from spacenet_jax import DivergenceError
from spacenet_jax.checkpoint import saved_tasks, seed_dir
from spacenet_jax.data import ImageDataset
from spacenet_jax.runner import run_task_sequence, run_task_sequences

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

#: Inputs are normalised with a tiny sd: an image at the mean is 0, any other overflows float32.
CONFIG = dataclasses.replace(TINY, input_mean=128 / 255, input_std=1e-30, epochs=2)


def diverging_at_task_1() -> ImageDataset:
    """Task 0's images sit exactly at the mean (finite loss); task 1's are 255 (infinite)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 40).astype(np.int32)
    images = np.full((len(labels), 36), 128, np.uint8)
    images[np.isin(labels, [2, 3])] = 255
    order = rng.permutation(len(labels))
    return ImageDataset("diverging", images[order], labels[order], images[order],
                        labels[order], 6)


def test_single_run_stops_at_the_first_bad_task_epoch_and_step():
    with pytest.raises(DivergenceError, match=r"^task 1, epoch 0, step \d+: the training loss is "
                                              r"NaN or infinite; lower the learning rate"):
        run_task_sequence(CONFIG, diverging_at_task_1(), 0, progress=False)


def test_batched_run_names_the_seed():
    with pytest.raises(DivergenceError, match=r"^seed 4, task 1, epoch 0, step \d+: "):
        run_task_sequences(CONFIG, diverging_at_task_1(), [4, 5], progress=False)


@pytest.mark.parametrize("seeds", [["--seed", "0"], ["--seeds", "0-1"]])
def test_cli_exits_with_the_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys, seeds):
    data = diverging_at_task_1()
    with pytest.raises(SystemExit) as stopped:
        experiment_main("diverging", "diverging", "test", CONFIG,
                        argv=["--quiet", *seeds, "--checkpoint-dir", str(tmp_path)],
                        load=lambda data_dir, quiet: data)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"task 1, epoch 0, step \d+: the training loss is NaN or infinite", err)
    assert saved_tasks(seed_dir(tmp_path, 0)) == [1]  # the checkpoint after task 0 survives

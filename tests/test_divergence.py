"""A NaN or infinite loss stops the run at once, says where, and keeps the last good checkpoint."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import TINY

from experiments.common import main as experiment_main
from spacenet_jax import DivergenceError
from spacenet_jax.running.runner import run_task_sequence, run_task_sequences
from spacenet_jax.storage.checkpoint import saved_tasks, seed_dir
from spacenet_jax.storage.data import ImageDataset

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
    with pytest.raises(DivergenceError, match=r"^task 2, epoch 1, step \d+: the training loss is "
                                              r"NaN or infinite; lower the learning rate"):
        run_task_sequence(CONFIG, diverging_at_task_1(), 0, progress=False)


def test_batched_run_names_the_seed():
    with pytest.raises(DivergenceError, match=r"^seed 4, task 2, epoch 1, step \d+: "):
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
    assert re.search(r"task 2, epoch 1, step \d+: the training loss is NaN or infinite", err)
    assert saved_tasks(seed_dir(tmp_path, 0)) == [1]  # the checkpoint after task 1 survives


def test_padding_with_a_label_outside_the_output_layer_is_not_a_divergence():
    """A 4-class network on 6-class data: a task's last batch is padded with example 0, whose
    label (5) has no output unit; its loss is NaN but has weight 0 and must not count."""
    from conftest import synthetic_dataset

    data = synthetic_dataset()
    first = int(np.flatnonzero(data.train_labels == 5)[0])
    order = np.r_[first, np.delete(np.arange(len(data.train_labels)), first)]
    data = dataclasses.replace(data, train_images=data.train_images[order],
                               train_labels=data.train_labels[order])
    config = dataclasses.replace(TINY, layer_sizes=(36, 24, 20, 4),
                                 task_classes=((0, 1), (2, 3)), connections_per_task=(60, 30, 8))
    assert data.train_labels[0] == 5 and (2 * 70) % config.batch_size  # a padded last batch
    _, record = run_task_sequence(config, data, 0, progress=False)
    assert record["tasks_learned"] == 2

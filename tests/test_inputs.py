"""Images of the wrong dtype, scale or width, and labels outside the output layer, are refused
before any training or evaluation, by the runners, ``learn_task`` and the evaluation functions
(issue 14, item 5)."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, synthetic_dataset

from spacenet_jax import InputError, init_state, learn_task, make_task_data
from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.inputs import check_images, check_labels, input_width
from spacenet_jax.running.evaluation import evaluate_tasks, evaluate_tasks_both, predict_in_chunks
from spacenet_jax.running.runner import check_dataset, run_task_sequence, run_task_sequences
from spacenet_jax.storage.data import ImageDataset, task_indices

FLOAT_FIX = "(x * 255).round().astype(np.uint8)"


def _with(data: ImageDataset, **arrays: np.ndarray) -> ImageDataset:
    return dataclasses.replace(data, **arrays)


def _bad_datasets() -> dict[str, tuple[ImageDataset, str]]:
    """name -> (a dataset the TINY network cannot take, a regex its error must match)."""
    data = synthetic_dataset()
    return {
        "float16_in_0_1": (
            _with(data, train_images=(data.train_images / 255).astype(np.float16)),
            r"training images are float16 of shape \(420, 36\).*uint8.*"
            + re.escape(FLOAT_FIX),
        ),
        "int8": (
            _with(data, test_images=data.test_images.view(np.int8)),
            r"test images are int8 .*x\.view\(np\.uint8\)",
        ),
        "wrong_width": (
            _with(data, train_images=np.zeros((420, 35), np.uint8)),
            r"35 values each.*takes 36 \(layer_sizes\[0\]=36\)",
        ),
        "not_flattened": (
            _with(data, train_images=data.train_images.reshape(-1, 6, 6)),
            r"shape \(420, 6, 6\).*\(N, 36\).*x\.reshape\(len\(x\), -1\)",
        ),
        "float_labels": (
            _with(data, train_labels=data.train_labels.astype(np.float32)),
            r"training labels are float32.*y\.astype\(np\.int32\)",
        ),
        "one_label_too_few": (
            _with(data, test_labels=data.test_labels[:-1]),
            r"hold 179 labels but there are 180 images",
        ),
    }


BAD = _bad_datasets()


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("runner", ["one_seed", "seed_batch"])
def test_runners_refuse_what_the_network_cannot_take(case, runner):
    data, pattern = BAD[case]
    with pytest.raises(InputError, match=pattern) as info:
        if runner == "one_seed":
            run_task_sequence(TINY, data, seed=0, progress=False)
        else:
            run_task_sequences(TINY, data, [0, 1], progress=False)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    assert "synthetic" in str(info.value)  # names the dataset


def test_the_float_message_is_whole():
    data, _ = BAD["float16_in_0_1"]
    with pytest.raises(InputError) as info:
        check_dataset(TINY, data)
    assert str(info.value) == (
        "synthetic training images are float16 of shape (420, 36), but the network takes uint8 "
        "pixels 0-255 (it divides by 255 and normalises with input_mean / input_std itself); "
        "convert float images in [0, 1] with (x * 255).round().astype(np.uint8), or float "
        "images in [0, 255] with x.round().astype(np.uint8)"
    )


def test_a_good_dataset_passes():
    check_dataset(TINY, synthetic_dataset())
    cnn = synthetic_dataset(dim=8 * 8 * 3)
    check_dataset(TINY_CNN, cnn)
    assert input_width(TINY) == 36 and input_width(TINY_CNN) == 192
    with pytest.raises(InputError, match=r"36 values each.*takes 192 \(image_shape=\(8, 8, 3\)"):
        check_dataset(TINY_CNN, synthetic_dataset())


def test_examples_of_classes_no_task_names_may_lie_outside_the_output_layer():
    """A dataset may hold more classes than the network's tasks (e.g. all of MNIST for a
    network learning digits 0-3): those examples are never used, so they are not refused."""
    data = synthetic_dataset()
    extra = _with(data, test_labels=np.where(data.test_labels == 5, 9, data.test_labels))
    two_tasks = dataclasses.replace(TINY, layer_sizes=(36, 24, 20, 4),
                                    task_classes=((0, 1), (2, 3)))
    check_dataset(two_tasks, extra)
    with pytest.raises(InputError, match=r"test labels run from 0 to 9.*6 classes"):
        check_labels(extra.test_labels, TINY, "test labels")


def test_learn_task_refuses_float_images_before_any_work():
    data = synthetic_dataset()
    tasks = task_indices(data.train_labels, TINY.task_classes)
    floats = make_task_data(data.train_images / 255.0, data.train_labels, tasks, 16)
    state = init_state(TINY, 0)
    with pytest.raises(InputError, match=r"task 1's training images are float32.*"
                       + re.escape(FLOAT_FIX)):
        learn_task(state, TINY, floats[0])
    assert int(state.task) == 0
    big = make_task_data(data.train_images, data.train_labels + 5, tasks, 16)
    with pytest.raises(InputError, match=r"task 1's training labels run from 5 to 6"):
        learn_task(state, TINY, big[0])


def test_evaluation_refuses_bad_images_and_labels():
    data = synthetic_dataset()
    state = init_state(TINY, 0)
    index = task_indices(data.test_labels, TINY.task_classes)
    halves = (data.test_images / 255).astype(np.float16)
    for evaluate in (evaluate_tasks, evaluate_tasks_both):
        with pytest.raises(InputError, match=re.escape(FLOAT_FIX)):
            evaluate(state, TINY, halves, data.test_labels, index)
        with pytest.raises(InputError, match="run from 4 to 9"):
            evaluate(state, TINY, data.test_images, data.test_labels + 4, index)
    with pytest.raises(InputError, match=r"int8 .*x\.view\(np\.uint8\)"):
        predict_in_chunks(state, TINY, data.test_images.view(np.int8))
    with pytest.raises(InputError, match=r"40 values each.*takes 36"):
        predict_in_chunks(state, TINY, jnp.zeros((5, 40), jnp.uint8))  # JAX arrays too
    # Good inputs still evaluate, from numpy or the device.
    per_task, _ = evaluate_tasks(state, TINY, jnp.asarray(data.test_images), data.test_labels,
                                 index)
    assert per_task == [None] * TINY.num_tasks


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((3, 36), bool), r"x\.astype\(np\.uint8\) \* 255"),
        (np.zeros((3, 36), np.int64), r"int64.*x\.astype\(np\.uint8\) \(check 0 <= x <= 255"),
        (np.zeros((0, 36), np.uint8), "empty"),
        ([[0] * 36], "must be an array"),
        (np.zeros((3, 2, 3), np.uint8), "give one flattened image of 36 values per row"),
    ],
)
def test_check_images_other_cases(images, match):
    with pytest.raises(InputError, match=match):
        check_images(images, TINY)


def test_check_labels_other_cases():
    with pytest.raises(InputError, match=r"shape \(4, 6\).*argmax"):
        check_labels(np.eye(6, dtype=np.int32)[:4], TINY)
    with pytest.raises(InputError, match="run from -1 to 2"):
        check_labels(np.array([0, -1, 2]), TINY)
    check_labels(np.array([], np.int32), TINY)
    check_labels(np.array([0, 5], np.uint8), TINY, count=2)

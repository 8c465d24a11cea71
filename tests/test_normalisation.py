"""Input normalisation: the paper's dataset mean and sd, and per-pixel standardisation fitted
once when the first task starts (``spacenet_jax.core.normalisation``)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, data_for, run_keeping_states, synthetic_dataset

from experiments.common import main as experiment_main
from experiments.sweep import parse_grid, parse_value
from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.network import predict
from spacenet_jax.core.normalisation import (
    PIXEL_STD_FLOOR,
    dataset_statistics,
    pixel_statistics,
    preprocess,
    with_dataset_normalisation,
)
from spacenet_jax.core.state import init_state
from spacenet_jax.running.runner import run_task_sequence, run_task_sequences
from spacenet_jax.storage.checkpoint import (
    CheckpointError,
    TaskCheckpointer,
    restore_task,
    seed_dir,
)
from spacenet_jax.storage.data import hold_out_validation

PER_PIXEL = dataclasses.replace(TINY, input_normalisation="per_pixel")
BENCH = "synthetic"
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


def _images(n: int = 50, dim: int = 36, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, dim)).astype(np.uint8)
    images[:, 0] = 7  # a constant pixel: sd 0, floored
    images[:, 1] = np.where(np.arange(n) == 3, 255, 0)  # one bright example: a tiny sd
    return images


def test_pixel_statistics_are_each_values_mean_and_floored_sd():
    images = _images()
    mean, std = pixel_statistics(jnp.asarray(images))
    x = images.astype(np.float64) / 255.0
    assert mean.shape == std.shape == (36,) and mean.dtype == std.dtype == jnp.float32
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, np.maximum(x.std(0), PIXEL_STD_FLOOR), rtol=1e-5, atol=1e-7)
    assert float(std[0]) == pytest.approx(PIXEL_STD_FLOOR)  # constant pixel
    assert float(std[1]) == pytest.approx(x[:, 1].std(), rel=1e-5)  # 0.14: above the floor
    assert float(pixel_statistics(jnp.asarray(images), floor=0.5)[1].min()) == pytest.approx(0.5)


def test_dataset_rule_is_the_papers_formula_and_leaves_the_state_as_it_was():
    images = _images()
    expected = (images.astype(np.float32) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(preprocess(jnp.asarray(images), TINY), expected, atol=1e-6)
    assert init_state(TINY, 0).input_statistics == ()


def test_per_pixel_inputs_use_the_states_statistics_in_flat_hwc_order():
    images = _images(dim=8 * 8 * 3)
    mean, std = pixel_statistics(jnp.asarray(images))
    config = dataclasses.replace(TINY_CNN, input_normalisation="per_pixel")
    x = preprocess(jnp.asarray(images), config, (mean, std))
    flat = (images.astype(np.float32) / 255.0 - np.asarray(mean)) / np.asarray(std)
    assert x.shape == (50, 8, 8, 3)
    np.testing.assert_allclose(x, flat.reshape(50, 8, 8, 3), atol=1e-5)
    # input_mean / input_std play no part in it
    other = dataclasses.replace(config, input_mean=(0.1, 0.2, 0.3), input_std=3.0)
    np.testing.assert_array_equal(preprocess(jnp.asarray(images), other, (mean, std)), x)
    # standardised over the images they were fitted on: mean 0, sd 1 where the sd is not floored
    centred = np.asarray(x).reshape(50, -1)
    np.testing.assert_allclose(centred.mean(0), 0.0, atol=1e-5)
    unfloored = np.asarray(std) > PIXEL_STD_FLOOR
    np.testing.assert_allclose(centred.std(0)[unfloored], 1.0, rtol=1e-4)


def test_the_datasets_numbers_as_arrays_give_the_same_inputs():
    config = dataclasses.replace(TINY_CNN, input_mean=(0.1, 0.5, 0.9), input_std=(0.2, 0.3, 0.4))
    mean, std = dataset_statistics(config)
    assert mean.shape == std.shape == (8 * 8 * 3,)
    np.testing.assert_array_equal(np.asarray(mean).reshape(8, 8, 3)[3, 5],
                                  np.float32([0.1, 0.5, 0.9]))
    np.testing.assert_array_equal(np.asarray(std).reshape(8, 8, 3)[7, 0],
                                  np.float32([0.2, 0.3, 0.4]))
    images = jnp.asarray(_images(dim=8 * 8 * 3))
    np.testing.assert_allclose(preprocess(images, config, (mean, std)),
                               preprocess(images, config), atol=1e-6)
    state = with_dataset_normalisation(init_state(config, 0), config)
    np.testing.assert_array_equal(state.input_statistics[0], mean)
    with pytest.raises(ConfigError, match="vary them with input_normalisation='dataset'"):
        with_dataset_normalisation(init_state(config, 0),
                                   dataclasses.replace(config, input_normalisation="per_pixel"))


def test_unknown_rule_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="input_normalisation must be one of dataset, per_pixel"):
        dataclasses.replace(TINY, input_normalisation="per_image")


@pytest.mark.parametrize("config", [PER_PIXEL,
                                    dataclasses.replace(TINY_CNN,
                                                        input_normalisation="per_pixel")],
                         ids=["mlp", "cnn"])
def test_fitted_when_the_first_task_starts_then_fixed(config):
    data = data_for(config)
    state, record, states = run_keeping_states(config, data)
    mean, std = pixel_statistics(jnp.asarray(data.train_images))
    for after_task in states:  # fitted to the whole training set, then never changed
        np.testing.assert_array_equal(after_task.input_statistics[0], mean)
        np.testing.assert_array_equal(after_task.input_statistics[1], std)
    # evaluation normalises as training did: the recorded accuracy is the state's prediction's
    labels = np.asarray(predict(state, config, jnp.asarray(data.test_images)))
    per_task = [np.mean(labels[np.isin(data.test_labels, c)] == data.test_labels[
        np.isin(data.test_labels, c)]) for c in config.task_classes]
    np.testing.assert_allclose(per_task, record["final_task_acc"], atol=1e-6)
    assert record["config"]["input_normalisation"] == "per_pixel"


def test_fitted_without_the_held_out_validation_images(data):
    config = dataclasses.replace(PER_PIXEL, validation_per_class=10)
    state, _ = run_task_sequence(config, data, 0, benchmark=BENCH, progress=False)
    trained_on = hold_out_validation(data, 10, 0).train_images
    np.testing.assert_array_equal(state.input_statistics[0],
                                  pixel_statistics(jnp.asarray(trained_on))[0])
    assert not np.array_equal(state.input_statistics[0],
                              pixel_statistics(jnp.asarray(data.train_images))[0])


def test_per_pixel_changes_training_and_seeds_batched_equal_single_runs(data):
    plain, _ = run_task_sequence(TINY, data, 1, benchmark=BENCH, progress=False)
    alone, alone_record = run_task_sequence(PER_PIXEL, data, 1, benchmark=BENCH, progress=False)
    assert not np.array_equal(plain.weights[0], alone.weights[0])
    batched = run_task_sequences(PER_PIXEL, data, [3, 1], benchmark=BENCH, progress=False)
    state, record = batched[1]
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(alone), strict=True):
        np.testing.assert_array_equal(a, b)
    assert record["acc_matrix"] == alone_record["acc_matrix"]


def test_checkpoints_keep_the_statistics_and_resume_exactly(tmp_path, data):
    config = dataclasses.replace(PER_PIXEL, epochs=2)
    with TaskCheckpointer(tmp_path, config, 4, benchmark=BENCH) as ck:
        full, full_record = run_task_sequence(config, data, 4, benchmark=BENCH, progress=False,
                                              on_task_end=ck)
    state, record = restore_task(seed_dir(tmp_path, 4), config, 4, 1)
    np.testing.assert_array_equal(state.input_statistics[1], full.input_statistics[1])
    resumed, resumed_record = run_task_sequence(config, data, 4, benchmark=BENCH,
                                                progress=False, resume_from=(state, record))
    for a, b in zip(jax.tree.leaves(jax.device_get(resumed)), jax.tree.leaves(full),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed_record["acc_matrix"] == full_record["acc_matrix"]
    # a per-pixel checkpoint is another configuration for a dataset-rule run
    with pytest.raises(CheckpointError, match="input_normalisation"):
        restore_task(seed_dir(tmp_path, 4),
                     dataclasses.replace(config, input_normalisation="dataset"), 4, 1)


def test_command_line_flag_and_sweep_axis(tmp_path, data):
    out = tmp_path / "run"
    payload = experiment_main(BENCH, "synthetic", "test", TINY, load=lambda d, q: data, argv=[
        "--quiet", "--seed", "0", "--epochs", "1", "--input-normalisation", "per_pixel",
        "--out", str(out)])
    assert payload["runs"][0]["config"]["input_normalisation"] == "per_pixel"
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"][0]["config"]["input_normalisation"] == "per_pixel"
    assert parse_value("input_normalisation", "per_pixel", TINY) == "per_pixel"
    assert parse_grid(["input_normalisation=dataset,per_pixel", "learning_rate=0.1"], TINY) == [
        {"input_normalisation": "dataset", "learning_rate": 0.1},
        {"input_normalisation": "per_pixel", "learning_rate": 0.1},
    ]

"""The CNN diagnosis (head competition, unit drift, reachable units) and the live output columns."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, assert_invariants, host, synthetic_dataset

from spacenet_jax.analysis import diagnostics
from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.network import forward, preprocess
from spacenet_jax.core.output_layer import inference_weights
from spacenet_jax.running.runner import run_task_sequence


def test_head_competition_on_a_hand_made_example():
    # 3 tasks of 2 classes; 4 test images of task 0 and 2 of task 1, 2 tasks learned.
    config = TINY
    logits = np.array([
        [5.0, 1.0, 9.0, 0.0, 50.0, 50.0],  # task 0, label 0: task-IL right, class 2 wins
        [5.0, 1.0, 0.0, 0.0, 50.0, 50.0],  # label 0: right both ways (task 2 not learned)
        [1.0, 5.0, 0.0, 9.0, 0.0, 0.0],    # label 0: wrong both ways
        [1.0, 3.0, 2.0, 0.0, 0.0, 0.0],    # label 1: right both ways
        [0.0, 8.0, 4.0, 3.0, 0.0, 0.0],    # task 1, label 2: task-IL right, class 1 wins
        [0.0, 0.0, 1.0, 3.0, 0.0, 0.0],    # label 3: right both ways
    ])
    labels = np.array([0, 0, 0, 1, 2, 3])
    index = [np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([], int)]
    rows = diagnostics.head_competition(logits, labels, index, config, learned=2)
    assert rows[0]["class_il"] == 0.5 and rows[0]["task_il"] == 0.75
    assert rows[0]["lost_to_other_tasks"] == 0.25
    assert rows[0]["own_logit"] == pytest.approx((5 + 5 + 5 + 3) / 4)
    assert rows[0]["other_logit"] == pytest.approx((9 + 0 + 9 + 2) / 4)
    assert rows[1]["class_il"] == 0.5 and rows[1]["task_il"] == 1.0
    assert rows[1]["lost_to_other_tasks"] == 0.5
    assert rows[1]["other_logit"] == pytest.approx((8 + 0) / 2)
    one = diagnostics.head_competition(logits, labels, index, config, learned=1)
    assert len(one) == 1 and np.isnan(one[0]["other_logit"])
    assert one[0]["class_il"] == one[0]["task_il"] == 0.75  # one task: the same argmax


def test_unit_drift():
    before = np.array([[1.0, 2.0], [3.0, 4.0]])
    after = before + np.array([[0.0, 1.0], [0.0, 1.0]])
    assert diagnostics.unit_drift(before, after, np.array([True, False])) == 0.0
    assert diagnostics.unit_drift(before, after, np.array([False, True])) == pytest.approx(
        np.sqrt(2) / np.sqrt(20))
    assert np.isnan(diagnostics.unit_drift(before, after, np.array([False, False])))


@pytest.mark.parametrize("config", [TINY, TINY_CNN], ids=["mlp", "cnn"])
def test_unit_activations_and_reach(config):
    dim = int(np.prod(config.image_shape)) if config.is_cnn else config.layer_sizes[0]
    data = synthetic_dataset(dim=dim)
    state, _ = run_task_sequence(config, data, 0, progress=False)
    units, logits = diagnostics.unit_activations(state, config, data.test_images, chunk=7)
    assert [u.shape for u in units] == [
        (len(data.test_images), n) for n in config.layer_sizes[1:-1]]
    ref = forward(inference_weights(state), state.biases,
                  preprocess(data.test_images, config), config)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    reach = diagnostics.reachable_units(state, config, 0)
    owners = [np.asarray(o) for o in jax.device_get(state.connection_owner)]
    for h, r in enumerate(reach):
        assert r["reached"] == int(np.sum(np.any(owners[h] == 0, axis=0)))
        assert r["reserved"] == config.specific_neurons[h]
        assert 0 <= r["reserved_reached"] <= r["reserved"]


def test_live_output_columns_keep_earlier_columns_in_the_network():
    stored = TINY
    live = dataclasses.replace(TINY, output_columns="live")
    assert stored.stores_output_columns and not live.stores_output_columns
    data = synthetic_dataset()
    from spacenet_jax import learn_task, make_task_data
    from spacenet_jax.core.state import init_state
    from spacenet_jax.storage.data import task_indices

    tasks = make_task_data(data.train_images, data.train_labels,
                           task_indices(data.train_labels, live.task_classes), live.batch_size)
    a = learn_task(init_state(stored, 0), stored, tasks[0])
    b = learn_task(init_state(live, 0), live, tasks[0])
    # the same first task; only where its output columns live differs
    np.testing.assert_array_equal(inference_weights(a)[-1], inference_weights(b)[-1])
    assert float(np.abs(np.asarray(b.saved_output_weights)).max()) == 0.0
    assert float(np.abs(np.asarray(a.weights[-1])).max()) == 0.0
    b2 = learn_task(b, live, tasks[1])
    assert_invariants(host(b), host(b2), live)  # task 0's columns frozen, bit-identical
    columns = live.class_masks()[0]
    np.testing.assert_array_equal(np.asarray(b2.weights[-1])[:, columns],
                                  np.asarray(b.weights[-1])[:, columns])
    with pytest.raises(ConfigError, match="output_columns"):
        dataclasses.replace(TINY, output_columns="elsewhere")


def test_configs_saved_before_a_field_existed_still_match():
    import json

    from spacenet_jax.core.config import with_default_fields
    from spacenet_jax.storage.checkpoint import check_compatible

    saved = json.loads(json.dumps(TINY.to_dict()))
    del saved["output_columns"]  # written by a version without the field
    assert with_default_fields(saved) == json.loads(json.dumps(TINY.to_dict()))
    check_compatible({"config": saved, "seed": 0}, TINY, 0)  # no error
    live = dataclasses.replace(TINY, output_columns="live")
    from spacenet_jax.storage.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="output_columns"):
        check_compatible({"config": saved, "seed": 0}, live, 0)


def test_reserved_output_columns_read_only_the_tasks_reserved_units():
    config = dataclasses.replace(TINY, output_columns="reserved")
    assert config.stores_output_columns
    data = synthetic_dataset()
    from spacenet_jax import learn_task, make_task_data
    from spacenet_jax.core.state import init_state
    from spacenet_jax.storage.data import task_indices

    tasks = make_task_data(data.train_images, data.train_labels,
                           task_indices(data.train_labels, config.task_classes),
                           config.batch_size)
    state = init_state(config, 0)
    for t in range(2):
        state = learn_task(state, config, tasks[t])
        saved = np.asarray(state.saved_output_weights)[:, config.class_masks()[t]]
        reserved = np.asarray(state.neuron_owner[-1]) == t
        assert np.abs(saved[~reserved]).max() == 0.0  # nothing from unreserved units
        assert np.abs(saved[reserved]).max() > 0.0
        owner = np.asarray(state.connection_owner[-1])
        assert not np.any((owner == t) & ~reserved[:, None])

"""The sparse training step (``core.subnetwork``): the same training as the masked step, leaf by
leaf, computed on the current task's blocks; the block layer's gradient; the choice of path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, assert_invariants, host, synthetic_dataset

from spacenet_jax.core import subnetwork
from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.continual import begin_task, learn_task, make_task_data
from spacenet_jax.core.layers import block_dense
from spacenet_jax.core.state import init_state
from spacenet_jax.core.training import train_epoch, trainable_masks
from spacenet_jax.storage.data import task_indices


def _tasks(config, data):
    return make_task_data(data.train_images, data.train_labels,
                          task_indices(data.train_labels, config.task_classes), config.batch_size)


def _states_after_each_task(config, seed: int = 0):
    data = synthetic_dataset()
    state = init_state(config, seed)
    states = []
    for task in _tasks(config, data):
        before = state
        state = learn_task(state, config, task)
        assert_invariants(before, state, config)
        states.append(host(state))
    return states


def _assert_same_training(masked, sparse, path: str = "") -> None:
    """Decisions (owners, selections, reservations, task) equal exactly; floats to rounding."""
    for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(masked),
                           jax.tree.leaves(sparse), strict=True):
        name = path + jax.tree_util.keystr(key)
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(b, a, err_msg=name)


VARIANTS = {
    "spacenet": {},
    "rehearsal (live output columns)": {"method": "rehearsal"},
    "momentum, reserved output columns, per-task inference": {
        "momentum": 0.9, "output_columns": "reserved", "inference": "per_task"},
    "static, every free neuron of layer 1 selected": {
        "method": "static", "selected_neurons": (24, 7), "connections_per_task": (90, 30, 8)},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_subnetwork_step_trains_exactly_as_the_masked_step(variant):
    """Every leaf of the state after every task, both paths: owners, selections, reservations
    and the rng equal; weights, biases, Omega, moments and statistics to float rounding."""
    config = dataclasses.replace(TINY, **VARIANTS[variant])
    masked = _states_after_each_task(dataclasses.replace(config, training_step="masked"))
    sparse = _states_after_each_task(dataclasses.replace(config, training_step="subnetwork"))
    for task, (a, b) in enumerate(zip(masked, sparse, strict=True)):
        _assert_same_training(a, b, f"after task {task + 1}: ")


def test_an_epoch_on_blocks_leaves_everything_outside_them_bit_identical():
    config = dataclasses.replace(TINY, training_step="subnetwork", momentum=0.5)
    data = synthetic_dataset()
    tasks = _tasks(config, data)
    state = learn_task(init_state(config, 0), config, tasks[0])
    state, _ = begin_task(state, config)
    t = tasks[1]
    after, _ = train_epoch(state, config, t.images, t.labels, t.indices,
                           jnp.asarray(t.num_examples))
    indices = subnetwork.unit_indices(state, config)
    for layer in range(config.num_layers):
        inside = np.zeros(config.mask_shape(layer), bool)
        rows = np.arange(inside.shape[0]) if indices[layer] is None else np.asarray(
            indices[layer])
        cols = np.arange(inside.shape[1]) if indices[layer + 1] is None else np.asarray(
            indices[layer + 1])
        inside[np.ix_(rows, cols)] = True
        assert inside.sum() < inside.size or layer == config.num_layers - 1
        for name in ("weights", "importance"):
            old = np.asarray(getattr(state, name)[layer])
            new = np.asarray(getattr(after, name)[layer])
            assert np.array_equal(new[~inside], old[~inside]), (name, layer)
        # the task's connections trained; nothing else inside the block moved
        current = np.asarray(state.connection_owner[layer]) == int(state.task)
        old_w, new_w = np.asarray(state.weights[layer]), np.asarray(after.weights[layer])
        assert np.array_equal(new_w[~current], old_w[~current])
        assert not np.array_equal(new_w[current], old_w[current])


def test_the_blocks_join_the_selected_units():
    config = dataclasses.replace(TINY, training_step="subnetwork")
    state, _ = begin_task(init_state(config, 3), config)
    blocks, (weights, _), _, importance = subnetwork.gather_task_blocks(
        state, config, *trainable_masks(state))
    assert [w.shape for w in weights] == [(36, 8), (8, 7), (7, 6)]
    assert [o.shape for o in importance] == [(36, 8), (8, 7), (7, 6)]
    for hidden in range(config.num_hidden):
        np.testing.assert_array_equal(
            np.asarray(blocks.cols[hidden]), np.flatnonzero(np.asarray(state.selected[hidden + 1])))
    # the live output layer holds only this task's columns: the last hidden layer is computed
    # on its selected units alone
    assert blocks.computed_out[1] is not None and blocks.computed_out[0] is None
    assert blocks.rest[1].shape == (24, 7) and blocks.rest[2].shape == (7, 6)
    # the rest is zero on the block, the block holds the weights
    np.testing.assert_array_equal(
        np.asarray(subnetwork.gather_block(blocks.rest[0], None, blocks.cols[0])), 0.0)
    np.testing.assert_array_equal(
        np.asarray(weights[0]),
        np.asarray(state.weights[0])[:, np.asarray(blocks.cols[0])])


@pytest.mark.parametrize("rows,cols", [(None, None), ("some", None), (None, "some"),
                                       ("some", "some")])
def test_block_dense_value_and_gradient_equal_the_whole_matrix(rows, cols):
    key = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(key[0], (5, 9))
    full = jax.random.normal(key[1], (9, 7))
    r = None if rows is None else jnp.asarray([1, 4, 8])
    c = None if cols is None else jnp.asarray([0, 2, 3, 6])
    block = subnetwork.gather_block(full, r, c)
    rest = subnetwork.scatter_block(full, r, c, jnp.zeros_like(block))
    upstream = jax.random.normal(key[2], (5, 7))

    def via_block(block, x):
        return jnp.sum(block_dense(x, rest, block, r, c) * upstream)

    def via_matrix(full, x):
        return jnp.sum((x @ full) * upstream)

    np.testing.assert_allclose(block_dense(x, rest, block, r, c), x @ full, rtol=1e-5,
                               atol=1e-5)
    g_block, g_x = jax.grad(via_block, argnums=(0, 1))(block, x)
    g_full, g_x_full = jax.grad(via_matrix, argnums=(0, 1))(full, x)
    np.testing.assert_allclose(g_block, subnetwork.gather_block(g_full, r, c), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(g_x, g_x_full, rtol=1e-5, atol=1e-5)


def test_gather_and_scatter_block_are_inverse():
    x = jnp.arange(48.0).reshape(6, 8)
    rows, cols = jnp.asarray([0, 3, 5]), jnp.asarray([1, 2, 7])
    block = subnetwork.gather_block(x, rows, cols)
    np.testing.assert_array_equal(block, np.asarray(x)[np.ix_([0, 3, 5], [1, 2, 7])])
    np.testing.assert_array_equal(subnetwork.scatter_block(x * 0, rows, cols, block)[
        np.ix_([0, 3, 5], [1, 2, 7])], block)
    np.testing.assert_array_equal(subnetwork.scatter_block(x, rows, cols, block), x)


def test_training_step_choice():
    cpu = jax.default_backend() == "cpu"
    assert subnetwork.uses_subnetwork_step(TINY) == cpu
    assert not subnetwork.uses_subnetwork_step(dataclasses.replace(TINY, training_step="masked"))
    assert subnetwork.uses_subnetwork_step(dataclasses.replace(TINY, training_step="subnetwork"))
    assert not subnetwork.uses_subnetwork_step(dataclasses.replace(TINY, method="finetune"))
    assert not subnetwork.uses_subnetwork_step(TINY_CNN)
    with pytest.raises(ConfigError, match=r"training_step=.subnetwork.*finetune.*masked"):
        dataclasses.replace(TINY, method="finetune", training_step="subnetwork")
    with pytest.raises(ConfigError, match="on a CNN"):
        dataclasses.replace(TINY_CNN, training_step="subnetwork")
    with pytest.raises(ConfigError, match="training_step must be one of auto, masked"):
        dataclasses.replace(TINY, training_step="sparse")


def test_first_layer_products_are_the_rest_of_the_first_layer_and_train_alike():
    config = dataclasses.replace(TINY, training_step="subnetwork")
    data = synthetic_dataset()
    tasks = _tasks(config, data)
    state = learn_task(init_state(config, 0), config, tasks[0])
    state, _ = begin_task(state, config)
    t = tasks[1]
    products = subnetwork.first_layer_products(state, config, t.images, t.indices)
    # x @ W_0 with the task's selected columns zeroed, row by row of the task's indices
    x = (np.asarray(t.images)[np.asarray(t.indices)] / 255.0 - 0.5) / 0.25
    rest = np.array(state.weights[0])
    rest[:, np.asarray(state.selected[1])] = 0.0
    np.testing.assert_allclose(products, x @ rest, rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(products)).max() > 0  # task 1's frozen connections count
    n = jnp.asarray(t.num_examples)
    kept, m_kept = train_epoch(state, config, t.images, t.labels, t.indices, n, products)
    computed, m_computed = train_epoch(state, config, t.images, t.labels, t.indices, n)
    _assert_same_training(host(computed), host(kept))
    np.testing.assert_allclose(m_kept.loss, m_computed.loss, rtol=1e-5)
    masked = dataclasses.replace(config, training_step="masked")
    with pytest.raises(ValueError, match="first_layer_products are for the blocks' path"):
        train_epoch(state, masked, t.images, t.labels, t.indices, n, products)

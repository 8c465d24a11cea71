"""Convolutional SpaceNet: kernel-level masks, drop and grow, reservation of feature maps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CNN, synthetic_dataset

from experiments.cnn import WIDTHS, cnn_config, parse_width
from experiments.split_cifar10 import SPLIT_CIFAR10
from spacenet_jax import begin_task, end_task, init_state, make_task_data, rewire, train_epoch
from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.network import forward, preprocess
from spacenet_jax.core.state import FREE
from spacenet_jax.core.training import per_connection, train_step
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.storage.data import task_indices


def _images():
    return synthetic_dataset(dim=8 * 8 * 3)


def test_shapes_of_weights_and_kernel_masks():
    c = TINY_CNN
    assert [c.weight_shape(layer) for layer in range(4)] == [
        (3, 3, 3, 12), (3, 3, 12, 12), (48, 16), (16, 6)
    ]
    # 8x8 -SAME-> 8x8 -pool-> 4x4 -VALID-> 2x2 with 12 maps: 48 flattened features.
    assert c.conv_output_shape == (2, 2, 12)
    assert [c.mask_shape(layer) for layer in range(4)] == [(3, 12), (12, 12), (48, 16), (16, 6)]
    assert c.input_units(2).tolist() == [i % 12 for i in range(48)]
    assert c.input_units(0) is None and c.input_units(3) is None
    state = init_state(c, 0)
    assert [w.shape for w in state.weights] == [c.weight_shape(i) for i in range(4)]
    assert [o.shape for o in state.connection_owner] == [c.mask_shape(i) for i in range(4)]
    assert [o.shape for o in state.importance] == [c.mask_shape(i) for i in range(4)]
    assert [o.shape for o in state.neuron_owner] == [(12,), (12,), (16,)]


def test_the_paper_cnn():
    c = SPLIT_CIFAR10
    assert c.layer_sizes == (3, 32, 32, 64, 64, 512, 10)
    assert c.conv_output_shape == (6, 6, 64)
    assert c.weight_shape(4) == (2304, 512)
    # 12% of each layer's kernels / weights per task; at the output, of a task's own block.
    positions = [96, 1024, 2048, 4096, 2304 * 512, 512 * 2]
    assert c.connections_per_task == tuple(round(0.12 * p) for p in positions)
    assert c.specific_neurons == (2, 2, 5, 6, 30)
    assert c.selected_neurons == (32, 32, 64, 64, 512)  # all free maps / neurons
    assert (c.learning_rate, c.epochs, c.batch_size) == (0.1, 20, 128)
    wide = cnn_config(c.task_classes, 10, maps=WIDTHS["wide"])
    assert wide.layer_sizes[1:5] == (64, 64, 128, 128)
    assert parse_width("48,48,96,96") == (48, 48, 96, 96)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_shape": (8, 8, 1)}, "channels"),
        ({"conv_padding": ("SAME",)}, "conv_padding"),
        ({"pool_after": (5,)}, "pool_after"),
        ({"image_shape": (2, 2, 3)}, "shrink"),
        ({"input_mean": (0.5, 0.5)}, "one per channel"),
        ({"connections_per_task": (30, 12, 60, 12)}, "kernels"),
        ({"conv_layers": 4}, "conv_layers=4"),
    ],
)
def test_impossible_cnn_configs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY_CNN, **changes)


def test_forward_is_a_cnn_and_masks_whole_kernels():
    c = TINY_CNN
    state, _ = begin_task(init_state(c, 0), c)
    x = preprocess(jnp.asarray(_images().train_images[:5]), c)
    assert x.shape == (5, 8, 8, 3)
    logits = forward(state.weights, state.biases, x, c)
    assert logits.shape == (5, 6)
    # A kernel is entirely in or out: zero where no task owns it, the initial draw where owned.
    for layer in range(c.conv_layers):
        w, owner = np.asarray(state.weights[layer]), np.asarray(state.connection_owner[layer])
        assert np.all(w[:, :, owner == FREE] == 0)
        np.testing.assert_array_equal(
            w[:, :, owner == 0], np.asarray(state.init_weights[layer])[:, :, owner == 0]
        )
        assert np.sum(owner == 0) == c.connections_per_task[layer]


def test_kernel_importance_is_the_sum_of_its_elements_importance():
    x = jnp.arange(2 * 2 * 3 * 4, dtype=jnp.float32).reshape(2, 2, 3, 4)
    omega = jnp.zeros((3, 4))
    np.testing.assert_allclose(per_connection(x, omega), x.sum(axis=(0, 1)))
    dense = jnp.ones((5, 6))
    assert per_connection(dense, dense).shape == (5, 6)

    c = TINY_CNN
    state, _ = begin_task(init_state(c, 1), c)
    data = _images()
    after, _ = train_step(
        state, c, jnp.asarray(data.train_images[:16]), jnp.asarray(data.train_labels[:16] % 2)
    )
    for layer in range(c.num_layers):
        omega = np.asarray(after.importance[layer])
        current = np.asarray(after.connection_owner[layer]) == 0
        assert omega.shape == c.mask_shape(layer)
        assert np.all(omega[~current] == 0) and np.any(omega[current] > 0)
        if layer < c.conv_layers:  # exactly the kernel sums of |g * delta_w|
            grads = jax.grad(
                lambda p: _loss(p, c, data.train_images[:16], data.train_labels[:16] % 2)
            )((state.weights, state.biases))[0][layer]
            delta = np.asarray(after.weights[layer]) - np.asarray(state.weights[layer])
            expected = np.sum(np.abs(np.asarray(grads) * current * delta), axis=(0, 1))
            np.testing.assert_allclose(omega, expected, rtol=1e-5, atol=1e-9)


def _loss(params, config, images, labels):
    import optax

    logits = forward(*params, preprocess(jnp.asarray(images), config), config)
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean()


def _run(config: SpaceNetConfig, seed: int = 0):
    """Learn every task, checking the kernel-level invariants after each epoch and rewiring."""
    data = _images()
    tasks = make_task_data(
        data.train_images, data.train_labels,
        task_indices(data.train_labels, config.task_classes), config.batch_size,
    )
    state = init_state(config, seed)
    history = [state]
    for task in tasks:
        before_task = state
        state, _ = begin_task(state, config)
        t = int(state.task)
        for layer in range(config.num_layers - 1):  # every free map is selected
            free = np.asarray(before_task.neuron_owner[layer]) == FREE
            if config.selects_all(layer):
                np.testing.assert_array_equal(np.asarray(state.selected[layer + 1]), free)
        n = jnp.asarray(task.num_examples, jnp.int32)
        for epoch in range(config.epochs):
            state, _ = train_epoch(state, config, task.images, task.labels, task.indices, n)
            _check_kernels(before_task, state, config, t)
            if epoch < config.epochs - 1:
                rewired, shortfall = rewire(state, config)
                assert not np.any(np.asarray(shortfall))
                _check_kernels(before_task, rewired, config, t)
                # Drop + grow keep every layer's count of the task's kernels / connections.
                for layer in range(config.num_layers):
                    owner = np.asarray(rewired.connection_owner[layer])
                    assert np.sum(owner == t) == config.connections_per_task[layer]
                state = rewired
        state = end_task(state, config)
        history.append(state)
    return history


def _check_kernels(before, after, config, task):
    for layer in range(config.num_layers):
        ob = np.asarray(before.connection_owner[layer])
        oa = np.asarray(after.connection_owner[layer])
        earlier = (ob >= 0) & (ob < task)
        np.testing.assert_array_equal(oa[earlier], ob[earlier])  # masks never overlap
        wb, wa = np.asarray(before.weights[layer]), np.asarray(after.weights[layer])
        if config.is_conv(layer):
            # Earlier tasks' kernels are bit-identical; an unowned kernel is entirely zero.
            assert np.array_equal(wa[:, :, earlier], wb[:, :, earlier])
            assert np.all(wa[:, :, oa == FREE] == 0)
        elif layer < config.num_layers - 1:
            assert np.array_equal(wa[earlier], wb[earlier])
            assert np.all(wa[oa == FREE] == 0)
        # No kernel of this task goes into (or, through the flattened features, out of) a map
        # that an earlier task reserved.
        current = oa == task
        if layer < config.num_layers - 1:
            reserved_out = np.asarray(before.neuron_owner[layer]) != FREE
            assert not np.any(current[:, reserved_out]), f"layer {layer}: into a reserved map"
        if layer > 0:
            reserved_in = np.asarray(before.neuron_owner[layer - 1]) != FREE
            units = config.input_units(layer)
            rows = reserved_in if units is None else reserved_in[units]
            assert not np.any(current[rows, :]), f"layer {layer}: out of a reserved map"


def test_kernel_level_invariants_over_a_whole_sequence():
    history = _run(TINY_CNN)
    final = history[-1]
    c = TINY_CNN
    for h in range(c.num_hidden):
        owners = np.asarray(final.neuron_owner[h])
        assert [int(np.sum(owners == t)) for t in range(3)] == [c.specific_neurons[h]] * 3
    for layer in range(c.num_layers):
        owner = np.asarray(final.connection_owner[layer])
        assert [int(np.sum(owner == t)) for t in range(3)] == [c.connections_per_task[layer]] * 3


def test_static_cnn_never_moves_a_kernel():
    history = _run(dataclasses.replace(TINY_CNN, method="static"))
    assert len(history) == 4


@pytest.mark.parametrize("method", ["spacenet", "rehearsal", "finetune", "joint"])
def test_cnn_end_to_end_on_tiny_synthetic_images(method):
    config = dataclasses.replace(TINY_CNN, method=method, epochs=4)
    state, record = run_task_sequence(config, _images(), seed=0, progress=False)
    assert int(state.task) == config.num_tasks
    assert len(record["final_task_acc"]) == config.num_tasks
    assert 0 <= record["final_avg_acc"] <= 1
    if method == "joint":
        assert record["final_avg_acc"] > 0.6  # learnable: chance is 1/6
    if config.sparse:
        assert record["connections_per_task"] == [list(config.connections_per_task)] * 3


def test_stepwise_epoch_matches_the_scanned_epoch():
    """The CPU path for CNNs (a host loop of jitted steps) computes what the scan computes."""
    from spacenet_jax.core.training import train_epoch_stepwise

    c = TINY_CNN
    data = _images()
    (task, *_) = make_task_data(
        data.train_images, data.train_labels, task_indices(data.train_labels, c.task_classes),
        c.batch_size,
    )
    state, _ = begin_task(init_state(c, 3), c)
    n = jnp.asarray(task.num_examples, jnp.int32)
    a, ma = train_epoch(state, c, task.images, task.labels, task.indices, n)
    b, mb = train_epoch_stepwise(state, c, task.images, task.labels, task.indices, n)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(ma.loss), float(mb.loss), rtol=1e-5)
    np.testing.assert_allclose(float(ma.accuracy), float(mb.accuracy))

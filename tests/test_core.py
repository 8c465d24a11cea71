"""Each jitted pure function of the core, and the invariants after every operation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, assert_invariants, host, synthetic_dataset

from spacenet_jax import (
    FREE,
    allocate_connections,
    begin_task,
    drop_connections,
    end_task,
    grow_connections,
    init_state,
    learn_task,
    make_task_data,
    neuron_importance,
    predict,
    reserve_neurons,
    rewire,
    store_output_weights,
    train_epoch,
    train_epoch_and_rewire,
    train_step,
)
from spacenet_jax.core.state import SpaceNetState
from spacenet_jax.storage.data import task_indices


def tasks_for(config, data):
    return make_task_data(
        data.train_images,
        data.train_labels,
        task_indices(data.train_labels, config.task_classes),
        config.batch_size,
    )


def trained_state(config=TINY, data=None, tasks: int = 1, seed: int = 0) -> SpaceNetState:
    data = data or synthetic_dataset()
    state = init_state(config, seed)
    for task in tasks_for(config, data)[:tasks]:
        state = learn_task(state, config, task)
    return state


def owned(state, layer, task):
    return np.asarray(state.connection_owner[layer]) == task


# ---------------------------------------------------------------- allocation (Algorithm 2)


def test_allocation_counts_selection_and_initial_values():
    config = TINY
    state = trained_state(tasks=1)
    before = state
    after, report = allocate_connections(state, config)
    after = host(after)
    assert int(np.sum(report["connection_shortfall"])) == 0
    assert int(np.sum(report["neuron_shortfall"])) == 0
    # Selected: all inputs, sel_l free neurons per hidden layer, the task's classes at the output.
    assert np.asarray(after.selected[0]).all()
    for h, sel in enumerate(config.selected_neurons):
        chosen = np.asarray(after.selected[h + 1])
        assert chosen.sum() == sel
        assert (np.asarray(before.neuron_owner[h])[chosen] == FREE).all()
    np.testing.assert_array_equal(np.asarray(after.selected[-1]), config.class_masks()[1])
    for layer, count in enumerate(config.connections_per_task):
        new = owned(after, layer, 1)
        assert new.sum() == count
        # Newly allocated positions were free before and take the dense initial draw.
        assert (np.asarray(before.connection_owner[layer])[new] == FREE).all()
        np.testing.assert_array_equal(
            np.asarray(after.weights[layer])[new], np.asarray(after.init_weights[layer])[new]
        )
    assert_invariants(before, after, config)


def test_allocation_is_random_but_reproducible():
    state = init_state(TINY, 0)
    a, _ = allocate_connections(state, TINY)
    b, _ = allocate_connections(state, TINY)
    c, _ = allocate_connections(state.replace(rng=jax.random.PRNGKey(99)), TINY)
    np.testing.assert_array_equal(a.connection_owner[0], b.connection_owner[0])
    assert not np.array_equal(a.connection_owner[0], c.connection_owner[0])


def test_allocation_reports_too_few_positions():
    # 2 classes x 3 selected neurons = 6 output positions, but the task asks for 6 and then a
    # second task shares nothing... force a shortfall by pre-owning the candidates.
    state = init_state(TINY, 0)
    owner = state.connection_owner[0].at[:, :].set(5)  # every position owned by "task 5"
    state = state.replace(connection_owner=(owner, *state.connection_owner[1:]))
    _, report = allocate_connections(state, TINY)
    assert int(report["connection_shortfall"][0]) == TINY.connections_per_task[0]


# ---------------------------------------------------------------- train step (Eq. 1-3)


def test_train_step_masks_updates_and_accumulates_importance():
    config = TINY
    data = synthetic_dataset()
    state = trained_state(tasks=1, data=data)
    state, _ = begin_task(state, config)
    index = task_indices(data.train_labels, config.task_classes)[1][: config.batch_size]
    x, y = jnp.asarray(data.train_images[index]), jnp.asarray(data.train_labels[index])
    after, metrics = train_step(state, config, x, y)
    assert np.isfinite(float(metrics.loss_sum))
    assert_invariants(state, after, config)
    for layer in range(config.num_layers):
        current = owned(state, layer, 1)
        dw = np.asarray(after.weights[layer]) - np.asarray(state.weights[layer])
        assert np.all(dw[~current] == 0.0), "a weight outside the task's mask changed"
        assert np.any(dw[current] != 0.0), "the task's weights did not learn"
        omega = np.asarray(after.importance[layer])
        assert np.all(omega[~current] == 0.0)
        # Plain SGD: delta_w = -lr * g, so |g * delta_w| = delta_w^2 / lr.
        np.testing.assert_allclose(omega[current], dw[current] ** 2 / config.learning_rate,
                                   rtol=1e-4, atol=1e-6 * float(omega.max()))
    # Biases: reserved hidden neurons and other tasks' classes are frozen.
    for h in range(config.num_hidden):
        reserved = np.asarray(state.neuron_owner[h]) != FREE
        assert reserved.sum() == config.specific_neurons[h]
        db = np.asarray(after.biases[h]) - np.asarray(state.biases[h])
        assert np.all(db[reserved] == 0.0)
    db = np.asarray(after.biases[-1]) - np.asarray(state.biases[-1])
    assert np.all(db[~config.class_masks()[1]] == 0.0)


def test_train_step_with_momentum_keeps_frozen_weights_bit_identical():
    config = dataclasses.replace(TINY, momentum=0.9)
    data = synthetic_dataset()
    state = trained_state(config, data, tasks=1)
    tasks = tasks_for(config, data)
    state, _ = begin_task(state, config)
    before = state
    for _ in range(2):
        state, _ = train_epoch(state, config, tasks[1].images, tasks[1].labels,
                               tasks[1].indices, jnp.asarray(tasks[1].num_examples))
        assert_invariants(before, state, config)
        state, shortfall = rewire(state, config)
        assert int(np.sum(shortfall)) == 0
        assert_invariants(before, state, config)


def test_padding_examples_do_not_contribute():
    config = TINY
    data = synthetic_dataset()
    state, _ = begin_task(init_state(config, 0), config)
    index = task_indices(data.train_labels, config.task_classes)[0][: config.batch_size]
    x, y = jnp.asarray(data.train_images[index]), jnp.asarray(data.train_labels[index])
    w = jnp.asarray(np.r_[np.ones(10), np.zeros(config.batch_size - 10)], jnp.float32)
    garbage = x.at[10:].set(255)
    a, _ = train_step(state, config, x, y, w)
    b, _ = train_step(state, config, garbage, y, w)
    c, _ = train_step(state, config, x[:10], y[:10])
    for la, lb, lc in zip(a.weights, b.weights, c.weights, strict=True):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_allclose(la, lc, rtol=1e-6, atol=1e-7)


def test_epoch_covers_every_example_once():
    config = TINY
    data = synthetic_dataset()
    tasks = tasks_for(config, data)
    state, _ = begin_task(init_state(config, 0), config)
    t = tasks[0]
    _, metrics = train_epoch(state, config, t.images, t.labels, t.indices,
                             jnp.asarray(t.num_examples))
    assert 0.0 <= float(metrics.accuracy) <= 1.0 and np.isfinite(float(metrics.loss))
    assert t.indices.shape[0] % config.batch_size == 0
    assert t.indices.shape[0] >= t.num_examples


# ---------------------------------------------------------------- drop and grow (Algorithm 3)


def _numpy_top(scores: np.ndarray, k: int, largest: bool) -> set[int]:
    flat = scores.reshape(-1)
    order = np.argsort(-flat if largest else flat, kind="stable")
    return set(order[:k].tolist())


def test_drop_removes_lowest_importance_connections():
    rng = np.random.default_rng(0)
    owner = np.full((10, 8), FREE, np.int16)
    owner[rng.random((10, 8)) < 0.4] = 1
    owner[0, :] = 0  # an earlier task's row
    importance = rng.random((10, 8)).astype(np.float32)
    weights = rng.normal(size=(10, 8)).astype(np.float32) * (owner != FREE)
    k = 5
    new_owner, new_w, dropped = jax.jit(drop_connections, static_argnames="k")(
        jnp.asarray(owner), jnp.asarray(weights), jnp.asarray(importance), jnp.asarray(1), k=k
    )
    dropped = np.asarray(dropped)
    assert dropped.sum() == k
    expected = _numpy_top(np.where(owner == 1, importance, np.inf), k, largest=False)
    assert set(np.flatnonzero(dropped).tolist()) == expected
    assert (np.asarray(new_owner)[dropped] == FREE).all()
    assert (np.asarray(new_w)[dropped] == 0).all()
    np.testing.assert_array_equal(np.asarray(new_owner)[0], owner[0])


def test_grow_takes_top_outer_product_among_free_selected_positions():
    rng = np.random.default_rng(1)
    fan_in, fan_out, k = 12, 9, 6
    owner = np.full((fan_in, fan_out), FREE, np.int16)
    owner[rng.random((fan_in, fan_out)) < 0.3] = 0
    in_sel = rng.random(fan_in) < 0.7
    out_sel = rng.random(fan_out) < 0.7
    excluded = rng.random((fan_in, fan_out)) < 0.1
    a_in, a_out = rng.random(fan_in), rng.random(fan_out)
    weights = rng.normal(size=(fan_in, fan_out)).astype(np.float32) * (owner != FREE)
    new_owner, new_w, grown, short = jax.jit(grow_connections, static_argnames="k")(
        jnp.asarray(owner), jnp.asarray(weights), jnp.asarray(a_in, jnp.float32),
        jnp.asarray(a_out, jnp.float32), jnp.asarray(in_sel), jnp.asarray(out_sel),
        jnp.asarray(excluded), jnp.asarray(1), k=k,
    )
    grown = np.asarray(grown)
    assert int(short) == 0 and grown.sum() == k
    candidates = in_sel[:, None] & out_sel[None, :] & (owner == FREE) & ~excluded
    scores = np.where(candidates, np.outer(a_in, a_out), -np.inf)
    assert set(np.flatnonzero(grown).tolist()) == _numpy_top(scores, k, largest=True)
    assert (np.asarray(new_w)[grown] == 0).all(), "grown weights must start at zero"
    assert (np.asarray(new_owner)[grown] == 1).all()
    np.testing.assert_array_equal(np.asarray(new_owner)[owner == 0], 0)


def _one_epoch_into_task_2(config):
    """A state after task 1, then task 2 begun and trained for one epoch (not rewired)."""
    data = synthetic_dataset()
    state = trained_state(tasks=1, data=data)
    t = tasks_for(config, data)[1]
    state, _ = begin_task(state, config)
    state, _ = train_epoch(state, config, t.images, t.labels, t.indices,
                           jnp.asarray(t.num_examples))
    return state


def test_rewire_keeps_counts_and_starts_grown_weights_at_zero():
    config = TINY
    state = _one_epoch_into_task_2(config)
    after, shortfall = rewire(state, config)
    assert int(np.sum(shortfall)) == 0
    assert_invariants(state, after, config)
    for layer, count in enumerate(config.connections_per_task):
        before_mask, after_mask = owned(state, layer, 1), owned(after, layer, 1)
        assert after_mask.sum() == count, "drop + grow must keep the per-task count"
        grown = after_mask & ~before_mask
        dropped = before_mask & ~after_mask
        k = config.rewire_counts[layer]
        assert grown.sum() == dropped.sum() <= k
        if layer in config.rewired_layers:
            assert grown.sum() == k
        else:
            assert grown.sum() == 0
        assert np.all(np.asarray(after.weights[layer])[grown] == 0.0)
        assert np.all(np.asarray(after.weights[layer])[dropped] == 0.0)


# ---------------------------------------------------------------- reservation (Algorithm 4)


def test_reservation_takes_most_important_selected_neurons():
    config = TINY
    state = _one_epoch_into_task_2(config)
    after = reserve_neurons(state, config)
    assert_invariants(state, after, config)
    a = neuron_importance(state.importance)
    for h, spec in enumerate(config.specific_neurons):
        newly = (np.asarray(after.neuron_owner[h]) == 1)
        assert newly.sum() == spec
        selected = np.asarray(state.selected[h + 1])
        assert selected[newly].all()
        imp = np.asarray(a[h + 1])
        # Every reserved neuron is at least as important as every selected one left free.
        left = selected & ~newly
        assert imp[newly].min() >= imp[left].max()
        # Reserved neurons of task 0 are untouched and disjoint from task 1's.
        assert not (newly & (np.asarray(state.neuron_owner[h]) == 0)).any()


# ---------------------------------------------------------------- task end and prediction


def test_end_of_task_stores_output_columns_and_prediction_restores_them():
    config = TINY
    state = _one_epoch_into_task_2(config)
    live = np.asarray(state.weights[-1])
    stored = store_output_weights(state, config)
    cols = config.class_masks()[1]
    np.testing.assert_array_equal(np.asarray(stored.saved_output_weights)[:, cols], live[:, cols])
    assert np.all(np.asarray(stored.weights[-1]) == 0.0)
    # Task 0's columns were stored at its end and are still there.
    assert np.any(np.asarray(stored.saved_output_weights)[:, config.class_masks()[0]] != 0)
    ended = end_task(state, config)
    assert int(ended.task) == 2
    # Prediction with stored columns equals prediction with the live network put back.
    x = jnp.asarray(synthetic_dataset().test_images)
    assert np.array_equal(np.asarray(predict(ended, config, x)),
                          np.asarray(predict(state.replace(task=jnp.asarray(2)), config, x)))


def test_prediction_is_restricted_to_seen_classes():
    config = TINY
    data = synthetic_dataset()
    state = trained_state(tasks=1, data=data)
    pred = np.asarray(predict(state, config, jnp.asarray(data.test_images)))
    assert set(np.unique(pred)) <= {0, 1}


# ---------------------------------------------------------------- whole sequence


def test_learn_tasks_invariants_after_each_task_and_capacity_accounting():
    config = TINY
    data = synthetic_dataset()
    state = init_state(config, 3)
    for t, task in enumerate(tasks_for(config, data)):
        before = state
        state = learn_task(state, config, task)
        assert_invariants(before, state, config)
        assert int(state.task) == t + 1
        for layer, count in enumerate(config.connections_per_task):
            for earlier in range(t + 1):
                assert owned(state, layer, earlier).sum() == count
        for h, spec in enumerate(config.specific_neurons):
            owners = np.asarray(state.neuron_owner[h])
            for earlier in range(t + 1):
                assert (owners == earlier).sum() == spec
            assert (owners == FREE).sum() == config.layer_sizes[h + 1] - (t + 1) * spec


def test_no_recompilation_across_tasks():
    config = dataclasses.replace(TINY, epochs=2)
    data = synthetic_dataset()
    functions = (begin_task, end_task, train_epoch_and_rewire, predict)
    for f in functions:
        f.clear_cache()
    state = init_state(config, 0)
    x = jnp.asarray(data.test_images)
    for task in tasks_for(config, data):
        state = learn_task(state, config, task)
        predict(state, config, x)
    for f in functions:
        assert f._cache_size() == 1, f"{f.__name__} compiled {f._cache_size()} times"


def test_static_sparse_ablation_never_rewires():
    config = dataclasses.replace(TINY, method="static")
    assert config.rewired_layers == () and set(config.rewire_counts) == {0}
    data = synthetic_dataset()
    state = init_state(config, 0)
    tasks = tasks_for(config, data)
    state, _ = begin_task(state, config)
    allocated = [np.asarray(o) for o in state.connection_owner]
    for _ in range(2):
        state, _ = train_epoch(state, config, tasks[0].images, tasks[0].labels,
                               tasks[0].indices, jnp.asarray(tasks[0].num_examples))
    for a, b in zip(allocated, state.connection_owner, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("seed", [0, 1])
def test_same_seed_same_result(seed):
    a = trained_state(tasks=2, seed=seed)
    b = trained_state(tasks=2, seed=seed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_capacity_shortfall_found_during_a_task_is_a_clear_error():
    from spacenet_jax import CapacityError

    # Feasible for one task on paper, but the second task's selected neurons overlap the first
    # one's, whose 50 connections leave too few free positions between them.
    config = dataclasses.replace(
        TINY, layer_sizes=(36, 9, 8, 6), selected_neurons=(8, 7), specific_neurons=(0, 0),
        connections_per_task=(60, 50, 8), method="static", epochs=1,
    )
    data = synthetic_dataset()
    tasks = tasks_for(config, data)
    state = learn_task(init_state(config, 0), config, tasks[0])
    with pytest.raises(CapacityError, match=r"task 2, weight matrix 2: only \d+ free positions"):
        learn_task(state, config, tasks[1])

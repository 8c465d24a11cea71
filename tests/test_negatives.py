"""Turned images as negatives (``SpaceNetConfig.negatives``): the penalty on hand-made logits,
the turns, the train step's gradient against a loss written out by hand, the invariants of a
whole run with the option, and the configurations it refuses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY, TINY_CNN, data_for

from spacenet_jax import ConfigError, begin_task, init_state
from spacenet_jax.core import negatives, training
from spacenet_jax.core.network import forward, preprocess

WITH_NEGATIVES = dataclasses.replace(TINY_CNN, negatives="rotations", negatives_weight=2.0,
                                     inference="per_task")


def test_margin_penalty_on_hand_made_logits():
    own = jnp.array([True, True, False])
    upright = jnp.array([[2.0, 0.0, 9.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0]])
    turned = jnp.array([[0.0, 0.0, -9.0], [1.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    weights = jnp.array([1.0, 1.0, 0.0])  # the third example is padding
    # example 0: 1 + log 2 - log(e^2 + 1) < 0, no penalty (the other class's 9 does not count);
    # example 1: 1 + (1 + log 2) - log 2 = 2, penalty 4
    value = negatives.margin_penalty(upright, turned, own, weights)
    np.testing.assert_allclose(value, (0.0 + 4.0) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(negatives.own_logsumexp(upright, own)[1], np.log(2.0), rtol=1e-6)


def test_quarter_turn_turns_by_one_two_or_three_quarters():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3))
    seen = set()
    for seed in range(40):
        turned = negatives.quarter_turn(x, jax.random.PRNGKey(seed))
        matches = [k for k in range(4) if np.array_equal(turned, jnp.rot90(x, k, axes=(1, 2)))]
        assert len(matches) == 1 and matches[0] != 0
        seen.add(matches[0])
    assert seen == {1, 2, 3}


def _reference_gradient(state, config, images, labels, key):
    """The step's gradient from the loss written out: cross-entropy plus the weighted hinge on
    the current task's classes, the batch turned as ``quarter_turn`` turns it with ``key``."""
    x = preprocess(images, config)
    k = int(jax.random.randint(key, (), 0, 3)) + 1
    own = np.asarray(config.class_masks()[int(state.task)])

    def loss(params):
        logits = forward(*params, x, config)
        turned = forward(*params, jnp.rot90(x, k, axes=(1, 2)), config)
        lse = lambda z: jax.nn.logsumexp(z[:, own], axis=-1)  # noqa: E731
        hinge = jax.nn.relu(1.0 + lse(turned) - lse(logits)) ** 2
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.mean(ce) + config.negatives_weight * jnp.mean(hinge)

    return jax.grad(loss)(state.params)


def test_train_step_gradient_equals_the_loss_written_out():
    config = WITH_NEGATIVES
    state, _ = begin_task(init_state(config, 0), config)
    data = data_for(config)
    images = jnp.asarray(data.train_images[:16])
    labels = jnp.asarray(data.train_labels[:16] % 2, jnp.int32)
    _, key = jax.random.split(state.rng)  # the step's draw
    ref = _reference_gradient(state, config, images, labels, key)
    # the step's update is -lr * masked gradient (plain SGD): recover its gradient
    new, _ = training.train_step(state, config, images, labels)
    masks = training.trainable_masks(state)
    lr = config.learning_rate
    for old, upd, g, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params),
                              jax.tree.leaves(ref), jax.tree.leaves(masks), strict=True):
        expected = jnp.where(m, old - lr * g, old)
        np.testing.assert_allclose(upd, expected, rtol=1e-5, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ref))
    assert not np.array_equal(np.asarray(new.rng), np.asarray(state.rng))  # the key advances
    # without the option the penalty is absent: the step differs
    plain = dataclasses.replace(config, negatives="none")
    other, _ = training.train_step(state, plain, images, labels)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other.params),
                                                        jax.tree.leaves(new.params), strict=True))


def test_a_run_with_negatives_keeps_every_kernel_level_invariant():
    """Every epoch and every drop and grow of a whole sequence with the option: earlier tasks'
    kernels bit-identical, masks disjoint, no kernel into or out of a reserved map, counts kept
    (``test_conv._run`` checks them as it goes)."""
    from test_conv import _run

    history = _run(WITH_NEGATIVES)
    assert len(history) == WITH_NEGATIVES.num_tasks + 1
    assert all(np.isfinite(np.asarray(w)).all() for w in history[-1].weights)


@pytest.mark.parametrize(("changes", "message"), [
    ({"negatives": "mirror"}, "negatives must be one of"),
    ({"negatives_weight": 0.0}, "negatives_weight must be > 0"),
    ({"image_shape": (8, 4, 6), "layer_sizes": (6, 12, 12, 16, 6)}, "square images"),
    ({"method": "finetune"}, "stores finished tasks"),
])
def test_impossible_negatives_are_refused(changes, message):
    fields = {**dataclasses.asdict(WITH_NEGATIVES), "inference": "shared", **changes}
    with pytest.raises(ConfigError, match=message):
        type(WITH_NEGATIVES)(**fields)


def test_an_mlp_is_refused():
    with pytest.raises(ConfigError, match="an MLP"):
        dataclasses.replace(TINY, negatives="rotations")

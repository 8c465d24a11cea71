"""Task training (paper Eq. 1-3): masked SGD on the current task's connections, with importance.

Only the current task's connections are trained (Eq. 1: earlier tasks' parameters are frozen):
the gradient and the optimiser's update are both masked, so earlier tasks' weights stay
bit-identical whatever the optimiser. Biases of neurons reserved by earlier tasks are frozen; at
the output, only the current task's classes have trainable biases. The loss is the cross-entropy
over the shared single-headed output layer (all classes).

Every step adds ``|g * delta_w|`` to the importance Omega of each connection (Eq. 2-3), where
``delta_w`` is the change the step made.

``train_epoch`` runs a whole epoch as one compiled ``lax.scan`` over batches drawn on the device
from the full uint8 training set, so there is no per-batch Python.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import struct

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.network import forward, preprocess
from spacenet_jax.core.state import FREE, SpaceNetState, make_optimizer

Array = jax.Array
Params = tuple[tuple[Array, ...], tuple[Array, ...]]


@struct.dataclass
class StepMetrics:
    """Sums over a batch (so that epochs average exactly over examples)."""

    loss_sum: Array
    correct: Array
    count: Array


def trainable_masks(state: SpaceNetState) -> Params:
    """bool masks shaped like ``(weights, biases)``: what the current task may change.

    Weights: the current task's connections. Hidden biases: neurons no earlier task reserved.
    Output biases: the current task's classes.
    """
    weight_masks = state.current_masks()
    hidden = tuple(owner == FREE for owner in state.neuron_owner)
    return weight_masks, (*hidden, state.selected[-1])


def per_connection(x: Array, omega: Array) -> Array:
    """Sum a weight-shaped array over each connection's elements, to ``omega``'s shape.

    Dense layers: unchanged. Conv layers: ``(k, k, in, out)`` -> ``(in, out)``, so a kernel's
    importance is the sum of its elements' importance (Section 5.3).
    """
    return jnp.sum(x, axis=tuple(range(x.ndim - omega.ndim)))


def _masked(tree, masks):
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, masks)


def _loss(
    params: Params, config: SpaceNetConfig, x: Array, labels: Array, example_weights: Array
):
    logits = forward(*params, x, config)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    # Padding (weight 0) repeats some example whose label may lie outside the output layer,
    # where the loss is NaN: select it away rather than multiply NaN by 0.
    losses = jnp.where(example_weights > 0, losses, 0.0)
    total = jnp.sum(losses * example_weights)
    return total / jnp.maximum(jnp.sum(example_weights), 1.0), (total, logits)


def _train_step(
    state: SpaceNetState,
    config: SpaceNetConfig,
    masks: Params,
    images: Array,
    labels: Array,
    example_weights: Array,
) -> tuple[SpaceNetState, StepMetrics]:
    tx = make_optimizer(config)
    params = state.params
    x = preprocess(images, config)
    grads, (loss_sum, logits) = jax.grad(_loss, has_aux=True)(
        params, config, x, labels, example_weights
    )
    grads = _masked(grads, masks)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    updates = _masked(updates, masks)
    weights, biases = optax.apply_updates(params, updates)
    importance = tuple(
        omega + per_connection(jnp.abs(g * (new - old)), omega)
        for omega, g, new, old in zip(
            state.importance, grads[0], weights, state.weights, strict=True
        )
    )
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * example_weights)
    metrics = StepMetrics(loss_sum, correct, jnp.sum(example_weights))
    state = state.replace(
        weights=weights, biases=biases, importance=importance, opt_state=opt_state
    )
    return state, metrics


@partial(jax.jit, static_argnames="config")
def train_step(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    labels: Array,
    example_weights: Array | None = None,
) -> tuple[SpaceNetState, StepMetrics]:
    """One SGD step of the current task on a batch.

    Args:
      state: the SpaceNet state (task ``state.task`` allocated).
      config: static configuration.
      images: uint8 ``(B, D)``.
      labels: int ``(B,)``.
      example_weights: float ``(B,)``, 1 for real examples and 0 for padding (default all 1);
        the loss is the weighted mean.

    Returns:
      The new state (weights, biases, importance, optimiser state) and the batch's metrics.
    """
    if example_weights is None:
        example_weights = jnp.ones(labels.shape, jnp.float32)
    return _train_step(state, config, trainable_masks(state), images, labels, example_weights)


@struct.dataclass
class EpochMetrics:
    """Mean training loss and accuracy over the epoch's examples, and ``nonfinite_step``: the
    first step (0-based, int32) whose loss was NaN or infinite, or -1 if none was."""

    loss: Array
    accuracy: Array
    nonfinite_step: Array


def _epoch_plan(
    state: SpaceNetState, config: SpaceNetConfig, task_indices: Array, num_examples: Array
) -> tuple[SpaceNetState, Array, Array]:
    """Shuffle the task's examples into ``(S, batch)`` index and weight arrays (key advanced)."""
    batch = config.batch_size
    length = task_indices.shape[0]
    if length % batch:
        raise ValueError(f"task_indices length {length} is not a multiple of batch {batch}")
    steps = length // batch
    rng, key = jax.random.split(state.rng)
    valid = jnp.arange(length) < num_examples
    order = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (length,)), 2.0))
    batch_indices = task_indices[order].reshape(steps, batch)
    batch_weights = valid.astype(jnp.float32).reshape(steps, batch)  # valid ones sort first
    return state.replace(rng=rng), batch_indices, batch_weights


def _epoch_metrics(metrics: StepMetrics) -> EpochMetrics:
    count = jnp.maximum(jnp.sum(metrics.count), 1.0)
    bad = ~jnp.isfinite(metrics.loss_sum)
    return EpochMetrics(
        loss=jnp.sum(metrics.loss_sum) / count,
        accuracy=jnp.sum(metrics.correct) / count,
        nonfinite_step=jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32),
    )


@partial(jax.jit, static_argnames="config")
def train_epoch(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    labels: Array,
    task_indices: Array,
    num_examples: Array,
) -> tuple[SpaceNetState, EpochMetrics]:
    """One epoch of the current task, shuffled, as a single ``lax.scan`` over batches.

    Args:
      state: the SpaceNet state.
      config: static configuration (``batch_size``).
      images: uint8 ``(N, D)``, the whole training set (on the device).
      labels: int32 ``(N,)``.
      task_indices: int32 ``(S * batch_size,)``: the first ``num_examples`` entries index the
        task's examples, the rest is padding. Its length fixes the number of scanned steps S, so
        pad every task of a sequence to the same length and nothing recompiles between tasks.
      num_examples: int32 scalar, the task's number of examples.

    The examples are shuffled on the device every epoch; the last batch may be partial (its
    padding has weight 0, as with a data loader that keeps the last batch), and steps past the
    task's last batch are skipped.
    """
    state, batch_indices, batch_weights = _epoch_plan(state, config, task_indices, num_examples)
    masks = trainable_masks(state)

    def body(state: SpaceNetState, xs: tuple[Array, Array]):
        return _batch_step(state, config, masks, images, labels, *xs)

    state, metrics = jax.lax.scan(body, state, (batch_indices, batch_weights))
    return state, _epoch_metrics(metrics)


def _batch_step(
    state: SpaceNetState,
    config: SpaceNetConfig,
    masks: Params,
    images: Array,
    labels: Array,
    index: Array,
    weights: Array,
) -> tuple[SpaceNetState, StepMetrics]:
    """The epoch's loop body, in the scan and the host loop alike: ``_train_step`` on the batch
    ``images[index]`` ``(batch,)`` with ``weights`` ``(batch,)``, or nothing (zero metrics) for
    a step past the task's last batch (all weights 0)."""

    def step(state: SpaceNetState):
        return _train_step(state, config, masks, images[index], labels[index], weights)

    def skip(state: SpaceNetState):
        zero = jnp.zeros((), jnp.float32)
        return state, StepMetrics(zero, zero, zero)

    return jax.lax.cond(weights[0] > 0, step, skip, state)


_jit_epoch_plan = jax.jit(_epoch_plan, static_argnames="config")
_jit_batch_step = jax.jit(_batch_step, static_argnames="config")


def train_epoch_stepwise(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    labels: Array,
    task_indices: Array,
    num_examples: Array | int,
) -> tuple[SpaceNetState, EpochMetrics]:
    """``train_epoch`` with a host loop over jitted steps instead of one ``lax.scan``.

    Same arguments, shuffling (``_epoch_plan``), loop body (``_batch_step``) and metrics, hence
    the same result up to floating-point reassociation, for stepping through an epoch from
    Python. Only the task's real steps run. ``learn_task`` uses the scan on every backend:
    with YNNPACK convolutions off (``spacenet_jax.core.compiler``) XLA:CPU runs the paper's CNN
    inside ``lax.scan`` faster than as separate jitted steps (``python -m benchmarks.cnn``).
    """
    state, batch_indices, batch_weights = _jit_epoch_plan(
        state, config, task_indices, jnp.asarray(num_examples, jnp.int32)
    )
    masks = trainable_masks(state)
    steps = -(-int(num_examples) // config.batch_size)
    metrics = []
    for step in range(steps):
        state, m = _jit_batch_step(
            state, config, masks, images, labels, batch_indices[step], batch_weights[step]
        )
        metrics.append(m)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *metrics)
    return state, _epoch_metrics(stacked)

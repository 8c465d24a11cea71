"""Task training (paper Eq. 1-3): masked SGD on the current task's connections, with importance.

Only the current task's connections are trained (Eq. 1: earlier tasks' parameters are frozen):
the gradient and the optimiser's update are both masked, so earlier tasks' weights stay
bit-identical whatever the optimiser. Biases of neurons reserved by earlier tasks are frozen; at
the output, only the current task's classes have trainable biases. The loss is the cross-entropy
over the shared single-headed output layer (all classes).

Every step adds ``|g * delta_w|`` to the importance Omega of each connection (Eq. 2-3), where
``delta_w`` is the change the step made.

``train_epoch`` runs a whole epoch as one compiled ``lax.scan`` over batches drawn on the device
from the full uint8 training set, so there is no per-batch Python. Its steps take one of two
paths (``config.training_step``), which train alike up to float rounding (tested leaf by leaf):
the masked step on whole weight matrices (``train_step``), or, by default on the CPU, the same
step on the current task's blocks between its selected units (``core.subnetwork``: the sparse
backward pass, about half the dense floor's time on split MNIST).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import struct

from spacenet_jax.core import negatives, subnetwork
from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.network import forward
from spacenet_jax.core.normalisation import preprocess
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


def _weighted_loss(logits: Array, labels: Array, example_weights: Array):
    """``(mean loss, (loss sum, logits))`` of ``logits`` ``(B, C)``, weighted per example."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    # Padding (weight 0) repeats some example whose label may lie outside the output layer,
    # where the loss is NaN: select it away rather than multiply NaN by 0.
    losses = jnp.where(example_weights > 0, losses, 0.0)
    total = jnp.sum(losses * example_weights)
    return total / jnp.maximum(jnp.sum(example_weights), 1.0), (total, logits)


def _loss(
    params: Params, config: SpaceNetConfig, x: Array, labels: Array, example_weights: Array,
    turned: Array | None = None, own_classes: Array | None = None,
):
    """The weighted cross-entropy of the batch ``x``; with ``turned`` (the batch turned,
    ``config.negatives="rotations"``) plus ``negatives_weight`` times the margin penalty on the
    current task's classes ``own_classes`` (``core.negatives``). The aux loss sum is the
    cross-entropy's alone."""
    logits = forward(*params, x, config)
    loss, aux = _weighted_loss(logits, labels, example_weights)
    if turned is not None:
        penalty = negatives.margin_penalty(logits, forward(*params, turned, config), own_classes,
                                           example_weights)
        loss = loss + config.negatives_weight * penalty
    return loss, aux


def _masked_sgd(
    config: SpaceNetConfig,
    params: Params,
    grads: Params,
    masks: Params,
    opt_state: optax.OptState,
    importance: tuple[Array, ...],
) -> tuple[Params, optax.OptState, tuple[Array, ...]]:
    """The update of one step, on whole weight matrices or on the task's blocks alike.

    The gradient and the optimiser's update are masked to ``masks`` (Eq. 1: nothing else
    moves), and Omega gains ``|g * delta_w|`` per connection (Eq. 2-3). Returns the new
    parameters, optimiser state and Omega.
    """
    grads = _masked(grads, masks)
    updates, opt_state = make_optimizer(config).update(grads, opt_state, params)
    updates = _masked(updates, masks)
    weights, biases = optax.apply_updates(params, updates)
    importance = tuple(
        omega + per_connection(jnp.abs(g * (new - old)), omega)
        for omega, g, new, old in zip(importance, grads[0], weights, params[0], strict=True)
    )
    return (weights, biases), opt_state, importance


def _step_metrics(loss_sum: Array, logits: Array, labels: Array, example_weights: Array):
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * example_weights)
    return StepMetrics(loss_sum, correct, jnp.sum(example_weights))


def _train_step(
    state: SpaceNetState,
    config: SpaceNetConfig,
    masks: Params,
    images: Array,
    labels: Array,
    example_weights: Array,
) -> tuple[SpaceNetState, StepMetrics]:
    x = preprocess(images, config, state.input_statistics)
    turned = own_classes = None
    if config.negatives == "rotations":
        rng, key = jax.random.split(state.rng)
        state = state.replace(rng=rng)
        turned, own_classes = negatives.quarter_turn(x, key), masks[1][-1]
    grads, (loss_sum, logits) = jax.grad(_loss, has_aux=True)(
        state.params, config, x, labels, example_weights, turned, own_classes
    )
    (weights, biases), opt_state, importance = _masked_sgd(
        config, state.params, grads, masks, state.opt_state, state.importance
    )
    state = state.replace(
        weights=weights, biases=biases, importance=importance, opt_state=opt_state
    )
    return state, _step_metrics(loss_sum, logits, labels, example_weights)


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
    state, order, batch_weights = _epoch_order(state, config, task_indices, num_examples)
    return state, task_indices[order], batch_weights


def _epoch_order(
    state: SpaceNetState, config: SpaceNetConfig, task_indices: Array, num_examples: Array
) -> tuple[SpaceNetState, Array, Array]:
    """``_epoch_plan`` with positions in ``task_indices`` ``(S, batch)`` instead of example
    indices."""
    batch = config.batch_size
    length = task_indices.shape[0]
    if length % batch:
        raise ValueError(f"task_indices length {length} is not a multiple of batch {batch}")
    steps = length // batch
    rng, key = jax.random.split(state.rng)
    valid = jnp.arange(length) < num_examples
    order = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (length,)), 2.0))
    batch_weights = valid.astype(jnp.float32).reshape(steps, batch)  # valid ones sort first
    return state.replace(rng=rng), order.reshape(steps, batch), batch_weights


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
    first_layer_products: Array | None = None,
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
      first_layer_products: on the blocks' path, ``subnetwork.first_layer_products`` of this
        task (computed after ``begin_task``), to read instead of computing ``x @ rest_0`` at
        every step; None computes it.

    The examples are shuffled on the device every epoch; the last batch may be partial (its
    padding has weight 0, as with a data loader that keeps the last batch), and steps past the
    task's last batch are skipped.
    """
    state, positions, batch_weights = _epoch_order(state, config, task_indices, num_examples)
    masks = trainable_masks(state)
    xs = (task_indices[positions], batch_weights)
    if subnetwork.uses_subnetwork_step(config):
        return _train_epoch_on_blocks(state, config, masks, images, labels, (*xs, positions),
                                      first_layer_products)
    if first_layer_products is not None:
        raise ValueError("first_layer_products are for the blocks' path (training_step "
                         "'subnetwork'); this configuration trains the masked step")

    def body(state: SpaceNetState, xs: tuple[Array, Array]):
        return _batch_step(state, config, masks, images, labels, *xs)

    state, metrics = jax.lax.scan(body, state, xs)
    return state, _epoch_metrics(metrics)


def _skip_past_last_batch(step, carry, weights: Array):
    """``step(carry)`` if the batch holds real examples (its first weight is positive: they
    sort first), else ``(carry, zero metrics)``: steps past the task's last batch are skipped."""

    def skip(carry):
        zero = jnp.zeros((), jnp.float32)
        return carry, StepMetrics(zero, zero, zero)

    return jax.lax.cond(weights[0] > 0, step, skip, carry)


def _train_epoch_on_blocks(
    state: SpaceNetState,
    config: SpaceNetConfig,
    masks: Params,
    images: Array,
    labels: Array,
    xs: tuple[Array, Array, Array],
    first_layer_products: Array | None,
) -> tuple[SpaceNetState, EpochMetrics]:
    """``train_epoch``'s scan on the current task's gathered blocks (``core.subnetwork``):
    the same steps as the masked path, computing only the task's blocks. ``xs``: per step the
    batch's example indices, weights and positions in the task's indices."""
    blocks, params, opt_state, importance = subnetwork.gather_task_blocks(state, config, *masks)

    def loss(params: Params, x: Array, labels: Array, example_weights: Array, first_product):
        logits = subnetwork.block_forward(blocks, params, x, first_product)
        return _weighted_loss(logits, labels, example_weights)

    def body(carry, xs: tuple[Array, Array, Array]):
        index, weights, positions = xs

        def step(carry):
            params, opt_state, importance = carry
            batch_labels = labels[index]
            first_product = (None if first_layer_products is None
                             else first_layer_products[positions])
            grads, (loss_sum, logits) = jax.grad(loss, has_aux=True)(
                params, preprocess(images[index], config, state.input_statistics), batch_labels,
                weights, first_product
            )
            carry = _masked_sgd(config, params, grads, blocks.masks, opt_state, importance)
            return carry, _step_metrics(loss_sum, logits, batch_labels, weights)

        return _skip_past_last_batch(step, carry, weights)

    (params, opt_state, importance), metrics = jax.lax.scan(
        body, (params, opt_state, importance), xs
    )
    state = subnetwork.scatter_task_blocks(state, config, blocks, params, opt_state, importance)
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

    return _skip_past_last_batch(step, state, weights)


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

"""The forward pass (MLP or CNN) and single-headed prediction with every stored output column
restored; ``predict_with_tasks`` adds the task-incremental prediction (argmax within each task)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

from spacenet_jax.core import task_scores
from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.layers import add_bias, conv2d, max_pool_2x2
from spacenet_jax.core.normalisation import preprocess
from spacenet_jax.core.output_layer import inference_weights
from spacenet_jax.core.state import SpaceNetState

Array = jax.Array


def forward(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x: Array,
    config: SpaceNetConfig | None = None,
) -> Array:
    """Logits ``(B, num_classes)`` of the ReLU network.

    MLP (``config`` None or without conv layers): ``x`` is ``(B, D)`` and each layer is
    ``x @ W_l + b_l``. CNN: ``x`` is ``(B, H, W, C)``; the first ``config.conv_layers`` layers
    are convolutions (with the configured padding, 2x2 max-pools after ``pool_after``), then
    the features are flattened (HWC order) into the dense layers.

    The weights are zero wherever no task owns a connection (a whole kernel for conv layers), so
    the masked sparse network needs no explicit mask in the forward pass.
    """
    return forward_with_features(weights, biases, x, config)[1]


def forward_with_features(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x: Array,
    config: SpaceNetConfig | None = None,
) -> tuple[Array, Array]:
    """``(features, logits)``: the output layer's input ``(B, fan_in_L)`` (the last hidden
    layer's ReLU activations, pooled and flattened for a CNN without dense layers) and
    ``forward``'s logits."""
    hidden, features, logits = layer_outputs(weights, biases, x, config)
    del hidden
    return features, logits


def flatten_features(h: Array) -> Array:
    """Conv activations ``(B, H, W, C)`` -> ``(B, H * W * C)`` in HWC order: flattened feature
    ``i`` belongs to feature map ``i % C`` (``SpaceNetConfig.input_units`` says the same)."""
    return h.reshape(h.shape[0], -1)


def layer_outputs(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x: Array,
    config: SpaceNetConfig | None = None,
) -> tuple[list[Array], Array, Array]:
    """The network's pass, layer by layer: ``(hidden, features, logits)``.

    ``hidden``: per hidden unit layer, its ReLU activations (conv: ``(B, H, W, maps)`` before any
    pooling; dense: ``(B, units)``); ``features``: the output layer's input; ``logits``:
    ``(B, num_classes)``. ``forward`` and every analysis of activations go through here.
    """
    conv_layers = config.conv_layers if config is not None else 0
    h = x
    hidden: list[Array] = []
    features = x
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if layer < conv_layers:
            h = add_bias(conv2d(h, w, config.conv_padding[layer]), b)
        else:
            if h.ndim > 2:
                h = flatten_features(h)
            features = h
            h = h @ w + b
        if layer < len(weights) - 1:
            h = jax.nn.relu(h)
            hidden.append(h)
        if layer < conv_layers and layer in config.pool_after:
            h = max_pool_2x2(h)
    return hidden, features, h


def seen_class_mask(state: SpaceNetState, config: SpaceNetConfig) -> Array:
    """bool ``(num_classes,)``: classes of every task learned so far (tasks ``< state.task``).

    Before the first task ends this is all False; callers then use all classes.
    """
    masks = jnp.asarray(config.class_masks())
    learned = jnp.arange(config.num_tasks) < state.task
    return jnp.any(masks & learned[:, None], axis=0)


def task_subnetwork_weights(
    state: SpaceNetState, task: int | Array
) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """The weights and biases of the sub-network task ``task`` was learned in.

    The connections owned by tasks ``<= task`` (every stored output column restored), and the
    biases kept when ``task`` ended (``state.task_biases[l][task]``; the live biases while it
    is still being learned). Later tasks' connections are zero and their bias updates undone,
    so for a finished task this is bit for bit the network it ended with.
    """
    weights = tuple(
        jnp.where(owner <= task, w, 0.0)  # FREE (-1) positions are zero anyway
        for owner, w in zip(state.connection_owner, inference_weights(state), strict=True)
    )
    ended = task < state.task
    biases = tuple(
        jnp.where(ended, kept[task], b) for kept, b in zip(state.task_biases, state.biases,
                                                            strict=True)
    )
    return weights, biases


def task_subnetwork_logits(state: SpaceNetState, config: SpaceNetConfig, x: Array) -> Array:
    """Logits ``(B, num_classes)`` of preprocessed inputs, each task's classes scored by the
    sub-network it was learned in (``config.inference == "per_task"``), on the scale
    ``config.task_scores`` names (``spacenet_jax.core.task_scores``; raw logits by default).

    One forward pass per task (``config.num_tasks`` in all, a static count); the columns of
    task t's classes come from ``task_subnetwork_weights(state, t)``. No task identity is
    used: the class-incremental argmax then runs over all these logits as usual.
    """
    class_masks = jnp.asarray(config.class_masks())  # (T, C)
    logits = None
    for task in range(config.num_tasks):
        weights, biases = task_subnetwork_weights(state, task)
        features, out = _scored_outputs(weights, biases, x, config)
        out = task_scores.class_scores(
            config, state.task_statistics, task, task < state.task, features, out
        )
        logits = out if logits is None else jnp.where(class_masks[task], out, logits)
    return logits


def _scored_outputs(
    weights: Sequence[Array], biases: Sequence[Array], x: Array, config: SpaceNetConfig
) -> tuple[Array, Array]:
    """``(features the task score reads, logits)`` (``task_scores.score_features``)."""
    hidden, features, logits = layer_outputs(weights, biases, x, config)
    return task_scores.score_features(config, hidden, features), logits


def task_subnetwork_outputs(
    state: SpaceNetState, config: SpaceNetConfig, images: Array, task: int | Array
) -> tuple[Array, Array]:
    """``(features, logits)`` of uint8 ``images`` ``(B, D)`` in task ``task``'s sub-network
    (``task_subnetwork_weights``): the features ``config.task_scores`` reads (the last hidden
    layer's activations, or every hidden layer's for ``"mahalanobis_all"``) and its raw
    logits."""
    weights, biases = task_subnetwork_weights(state, task)
    return _scored_outputs(weights, biases,
                           preprocess(images, config, state.input_statistics), config)


def _logits(state: SpaceNetState, config: SpaceNetConfig, images: Array) -> Array:
    """Logits ``(B, num_classes)`` of uint8 images ``(B, D)``, every stored output column
    restored, by the network ``config.inference`` names."""
    x = preprocess(images, config, state.input_statistics)
    if config.inference == "per_task":
        return task_subnetwork_logits(state, config, x)
    return forward(inference_weights(state), state.biases, x, config)


def _masked_argmax(logits: Array, mask: Array) -> Array:
    """Argmax over the last axis of ``logits`` among the classes where ``mask`` is True
    (``mask`` broadcasts against ``logits``)."""
    return jnp.argmax(jnp.where(mask, logits, -jnp.inf), axis=-1)


def _default_class_mask(state: SpaceNetState, config: SpaceNetConfig) -> Array:
    """bool ``(num_classes,)``: every class learned so far, or all before any task has ended."""
    seen = seen_class_mask(state, config)
    return jnp.where(jnp.any(seen), seen, True)


@partial(jax.jit, static_argnames="config")
def predict(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    class_mask: Array | None = None,
) -> Array:
    """Single-headed class predictions ``(B,)`` for uint8 images ``(B, D)``.

    No task identity is used: the argmax runs over ``class_mask`` (default: every class learned
    so far, or all classes before any task has ended), with all stored output columns restored.
    """
    if class_mask is None:
        class_mask = _default_class_mask(state, config)
    return _masked_argmax(_logits(state, config, images), class_mask)


@partial(jax.jit, static_argnames="config")
def predict_with_tasks(state: SpaceNetState, config: SpaceNetConfig, images: Array) -> Array:
    """Class-incremental and task-incremental predictions from one forward pass.

    Returns int ``(B, T + 1)`` for uint8 images ``(B, D)`` and ``T = config.num_tasks``:
    column 0 is ``predict``'s class-incremental prediction (argmax over every class learned so
    far, or all before any task has ended; no task identity); column ``1 + t`` is the argmax
    over task t's own classes only (``config.class_masks()[t]``), i.e. the prediction when the
    example is known to belong to task t. All stored output columns are restored.
    """
    logits = _logits(state, config, images)  # (B, C)
    class_il = _masked_argmax(logits, _default_class_mask(state, config))  # (B,)
    task_masks = jnp.asarray(config.class_masks())  # (T, C)
    per_task = _masked_argmax(logits[:, None, :], task_masks[None])  # (B, T)
    return jnp.concatenate([class_il[:, None], per_task], axis=1).astype(jnp.int32)

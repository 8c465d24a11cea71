"""The MLP forward pass and single-headed prediction with every stored output column restored."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

from spacenet_jax.config import SpaceNetConfig
from spacenet_jax.output_layer import inference_weights
from spacenet_jax.state import SpaceNetState

Array = jax.Array


def preprocess(images: Array, config: SpaceNetConfig) -> Array:
    """uint8 pixels ``(B, D)`` -> float32 ``(pixels / 255 - mean) / std``."""
    x = images.astype(jnp.float32) / 255.0
    return (x - config.input_mean) / config.input_std


def forward(weights: Sequence[Array], biases: Sequence[Array], x: Array) -> Array:
    """Logits ``(B, num_classes)`` of the ReLU MLP ``x @ W_l + b_l`` for float inputs ``(B, D)``.

    The weights are dense arrays that are zero wherever no task owns a connection, so the masked
    sparse network needs no explicit mask in the forward pass.
    """
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = h @ w + b
        if layer < len(weights) - 1:
            h = jax.nn.relu(h)
    return h


def seen_class_mask(state: SpaceNetState, config: SpaceNetConfig) -> Array:
    """bool ``(num_classes,)``: classes of every task learned so far (tasks ``< state.task``).

    Before the first task ends this is all False; callers then use all classes.
    """
    masks = jnp.asarray(config.class_masks())
    learned = jnp.arange(config.num_tasks) < state.task
    return jnp.any(masks & learned[:, None], axis=0)


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
        seen = seen_class_mask(state, config)
        class_mask = jnp.where(jnp.any(seen), seen, True)
    logits = forward(inference_weights(state), state.biases, preprocess(images, config))
    return jnp.argmax(jnp.where(class_mask, logits, -jnp.inf), axis=-1)

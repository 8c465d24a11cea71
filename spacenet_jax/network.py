"""The forward pass (MLP or CNN) and single-headed prediction with every stored output column
restored."""

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
    """uint8 pixels ``(B, D)`` -> float32 ``(pixels / 255 - mean) / std``.

    For a CNN the flat HWC pixels become ``(B, height, width, channels)`` images, normalised per
    channel when ``input_mean`` / ``input_std`` are tuples.
    """
    x = images.astype(jnp.float32) / 255.0
    if config.is_cnn:
        x = x.reshape(x.shape[0], *config.image_shape)
    mean = jnp.asarray(config.input_mean, jnp.float32)
    std = jnp.asarray(config.input_std, jnp.float32)
    return (x - mean) / std


def _conv(x: Array, w: Array, b: Array, padding: str) -> Array:
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + b


def _max_pool(x: Array) -> Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


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
    conv_layers = config.conv_layers if config is not None else 0
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if layer < conv_layers:
            h = _conv(h, w, b, config.conv_padding[layer])
        else:
            if h.ndim > 2:
                h = h.reshape(h.shape[0], -1)
            h = h @ w + b
        if layer < len(weights) - 1:
            h = jax.nn.relu(h)
        if layer < conv_layers and layer in config.pool_after:
            h = _max_pool(h)
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
    logits = forward(
        inference_weights(state), state.biases, preprocess(images, config), config
    )
    return jnp.argmax(jnp.where(class_mask, logits, -jnp.inf), axis=-1)

"""Input normalisation: uint8 pixels to the network's float inputs.

Two rules (``SpaceNetConfig.input_normalisation``, ``INPUT_NORMALISATIONS``):

- ``"dataset"`` (the paper): ``(pixels / 255 - input_mean) / input_std`` with the dataset's
  one mean and sd (per channel for a CNN), static numbers of the configuration.
- ``"per_pixel"``: every input value (pixel, or pixel and channel) centred on its own mean and
  divided by its own sd over the training images, ``max(sd, PIXEL_STD_FLOOR)``. The two
  ``(D,)`` arrays are data, so they live in the state (``SpaceNetState.input_statistics``),
  fitted once, when the first task starts (``fit_input_statistics``), from the training images
  it is given: ``make_task_data`` gives every task the whole training set (after a validation
  hold-out), the same images the dataset's mean and sd are taken from. They stay fixed
  afterwards, so earlier tasks' sub-networks see their inputs as they learned them.

The dataset's mean and sd can also be traced values: ``with_dataset_normalisation`` puts
them into the state as ``(D,)`` arrays, the same inputs, so that runs differing only in them
share one compiled program (``run_task_sequences(..., settings=[{"input_mean": ...}])``, a
sweep).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.inputs import input_width

if TYPE_CHECKING:  # the state module imports this one
    from spacenet_jax.core.state import SpaceNetState

Array = jax.Array

__all__ = [
    "PIXEL_STD_FLOOR",
    "TRACED_INPUT_NORMALISATION",
    "dataset_statistics",
    "empty_input_statistics",
    "fit_input_statistics",
    "pixel_statistics",
    "preprocess",
    "with_dataset_normalisation",
]

#: The configuration's normalisation numbers that a batch of runs may vary without recompiling
#: (``with_dataset_normalisation``).
TRACED_INPUT_NORMALISATION = ("input_mean", "input_std")

#: Smallest per-pixel sd (pixel values in [0, 1]) of ``"per_pixel"``: input values that barely
#: vary over the training set (MNIST's border, about 0 everywhere) are not blown up.
PIXEL_STD_FLOOR = 0.05


def empty_input_statistics(config: SpaceNetConfig) -> tuple[Array, ...]:
    """``SpaceNetState.input_statistics`` before fitting: ``()`` for ``"dataset"`` (nothing in
    the state or its checkpoints), else ``(mean, sd)``, float32 ``(D,)`` zeros and ones."""
    if config.input_normalisation != "per_pixel":
        return ()
    width = input_width(config)
    return jnp.zeros((width,), jnp.float32), jnp.ones((width,), jnp.float32)


@partial(jax.jit, static_argnames="floor")
def pixel_statistics(images: Array, floor: float = PIXEL_STD_FLOOR) -> tuple[Array, Array]:
    """Mean and sd of every input value of uint8 ``images`` ``(N, D)``, in [0, 1] units:
    float32 ``(D,)`` each, the sd at least ``floor``.

    Two passes in float32 (the mean, then the mean squared deviation), once per run; XLA holds a
    float copy of the images while it runs (``4 * N * D`` bytes: 188 MB for MNIST's training
    set).
    """
    count = images.shape[0]
    mean = jnp.sum(images, axis=0, dtype=jnp.float32) / (255.0 * count)
    var = jnp.sum(jnp.square(images.astype(jnp.float32) / 255.0 - mean), axis=0) / count
    return mean, jnp.maximum(jnp.sqrt(var), floor)


def fit_input_statistics(state: SpaceNetState, config: SpaceNetConfig,
                         images: Array) -> SpaceNetState:
    """``state`` with ``input_statistics`` fitted to uint8 training ``images`` ``(N, D)``
    (``"per_pixel"``); the state itself for ``"dataset"``. ``learn_task`` calls it when the
    first task starts (``multiseed.fit_input_statistics_seeds`` for a batch of seeds)."""
    if config.input_normalisation != "per_pixel":
        return state
    return state.replace(input_statistics=pixel_statistics(images))


def dataset_statistics(config: SpaceNetConfig) -> tuple[Array, Array]:
    """``config.input_mean`` and ``input_std`` as float32 ``(D,)`` arrays: one value repeated,
    or a CNN's per-channel values tiled in the flat HWC order (channel fastest)."""
    width = input_width(config)

    def tiled(value: float | tuple[float, ...]) -> Array:
        return jnp.asarray(np.resize(np.asarray(value, np.float32).reshape(-1), width))

    return tiled(config.input_mean), tiled(config.input_std)


def with_dataset_normalisation(state: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """``state`` normalising its inputs with ``config``'s ``input_mean`` / ``input_std`` held
    as traced ``(D,)`` arrays in ``input_statistics`` (``dataset_statistics``) instead of
    static numbers: the same inputs, and states that differ only in these numbers run as one
    vmapped program. For the ``"dataset"`` rule only.

    Raises:
      ConfigError: ``config.input_normalisation`` is not ``"dataset"`` (``"per_pixel"`` fits its
        own statistics and does not read ``input_mean`` / ``input_std``).
    """
    if config.input_normalisation != "dataset":
        raise ConfigError(
            f"input_mean and input_std are not used with input_normalisation="
            f"{config.input_normalisation!r}: vary them with input_normalisation='dataset'"
        )
    return state.replace(input_statistics=dataset_statistics(config))


def preprocess(images: Array, config: SpaceNetConfig,
               input_statistics: tuple[Array, ...] = ()) -> Array:
    """uint8 pixels ``(B, D)`` -> float32 network inputs.

    ``input_statistics`` empty (``"dataset"``): ``(pixels / 255 - mean) / std`` with the
    configuration's numbers, per channel when ``input_mean`` / ``input_std`` are tuples.
    ``(mean, sd)`` of shape ``(D,)`` (``SpaceNetState.input_statistics``: fitted for
    ``"per_pixel"``, or the dataset's numbers as traced values): each input value by its own.
    For a CNN the flat HWC values then become ``(B, height, width, channels)`` images.
    """
    x = images.astype(jnp.float32) / 255.0
    if input_statistics:
        mean, std = input_statistics
        x = (x - mean) / std
    if config.is_cnn:
        x = x.reshape(x.shape[0], *config.image_shape)
    if input_statistics:
        return x
    mean = jnp.asarray(config.input_mean, jnp.float32)
    std = jnp.asarray(config.input_std, jnp.float32)
    return (x - mean) / std

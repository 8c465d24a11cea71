"""Cheap checks that images and labels fit the network, before any of them reach jitted code.

The network takes uint8 pixels, one flattened image per row, ``(N, D)``, and divides them by 255
itself: float images in [0, 1] or signed ``int8`` pixels would train and evaluate *silently*
badly, and an image of the wrong width would fail deep inside JAX. These checks look at the
shape and dtype only (and at the labels' minimum and maximum), never at every value, and raise
``InputError`` saying what was given, what is expected and how to convert it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spacenet_jax.core.config import ConfigError, SpaceNetConfig

__all__ = ["InputError", "check_images", "check_labels", "input_width", "uint8_conversion_hint"]


class InputError(ConfigError):
    """Images or labels that do not fit the network (a ``ValueError``, like ``ConfigError``)."""


def input_width(config: SpaceNetConfig) -> int:
    """Values per flattened image the network takes: ``prod(image_shape)`` for a CNN (HWC),
    ``layer_sizes[0]`` for an MLP."""
    return int(np.prod(config.image_shape)) if config.is_cnn else config.layer_sizes[0]


def _describe_input(config: SpaceNetConfig) -> str:
    if config.is_cnn:
        return f"image_shape={tuple(config.image_shape)} flattened (HWC)"
    return f"layer_sizes[0]={config.layer_sizes[0]}"


def uint8_conversion_hint(dtype: np.dtype) -> str:
    """How to turn images of ``dtype`` into uint8 pixels 0-255."""
    if np.issubdtype(dtype, np.floating):
        return (
            "convert float images in [0, 1] with (x * 255).round().astype(np.uint8), or float "
            "images in [0, 255] with x.round().astype(np.uint8)"
        )
    if dtype == np.int8:
        return (
            "int8 pixels wrap above 127: if these are 0-255 pixels stored as int8, reinterpret "
            "them with x.view(np.uint8); if they are centred on 0 (-128..127), use "
            "(x.astype(np.int16) + 128).astype(np.uint8)"
        )
    if dtype == np.bool_:
        return "convert binary images with x.astype(np.uint8) * 255"
    if np.issubdtype(dtype, np.integer):
        return "convert integer pixels 0-255 with x.astype(np.uint8) (check 0 <= x <= 255 first)"
    return "convert them to uint8 pixels 0-255"


def _shape_and_dtype(x: Any, what: str, expected: str, fix: str) -> tuple[tuple[int, ...],
                                                                         np.dtype]:
    """``x``'s shape and dtype, or an ``InputError`` if it is not an array at all."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise InputError(
            f"{what} must be an array (numpy or JAX) of {expected}, got {type(x).__name__}; "
            f"convert them with {fix}"
        )
    return tuple(getattr(x, "shape", ())), np.dtype(dtype)


def check_images(images: Any, config: SpaceNetConfig, what: str = "images") -> None:
    """Refuse images the network cannot take: anything but uint8 ``(N, D)`` with ``N >= 1`` and
    ``D == input_width(config)``.

    Works on numpy and JAX arrays alike and reads nothing but ``shape`` and ``dtype``.

    Raises:
        InputError: naming ``what``, the shape and dtype given, those expected, and the fix.
    """
    shape, dtype = _shape_and_dtype(images, what, "uint8 pixels, shape (N, D)",
                                    "np.asarray(x, np.uint8)")
    width = input_width(config)
    if dtype != np.uint8:
        raise InputError(
            f"{what} are {dtype} of shape {shape}, but the network takes uint8 pixels 0-255 "
            f"(it divides by 255 and normalises with input_mean / input_std itself); "
            f"{uint8_conversion_hint(dtype)}"
        )
    if len(shape) != 2:
        hint = (
            "flatten them with x.reshape(len(x), -1) (row-major: height, width, channels)"
            if len(shape) > 2 and int(np.prod(shape[1:])) == width
            else f"give one flattened image of {width} values per row"
        )
        raise InputError(
            f"{what} have shape {shape}, but the network takes flattened images, shape "
            f"(N, {width}) ({_describe_input(config)}); {hint}"
        )
    if shape[1] != width:
        raise InputError(
            f"{what} have {shape[1]} values each (shape {shape}), but the network takes {width} "
            f"({_describe_input(config)}); use a configuration whose input matches the images "
            f"(or resize the images to it)"
        )
    if shape[0] == 0:
        raise InputError(f"{what} are empty (shape {shape}): give at least one image")


def check_labels(
    labels: Any, config: SpaceNetConfig, what: str = "labels", count: int | None = None,
    used: Any = None,
) -> None:
    """Refuse labels the network cannot score: anything but a 1-D integer array (of ``count``
    entries, when given) whose values lie in ``0..layer_sizes[-1] - 1``. With ``used`` (indices
    of the examples the call uses, e.g. a task's), only those labels must lie in that range:
    a dataset may hold classes that no task of the network names.

    Reads the shape and dtype, and the minimum and maximum (one reduction each).

    Raises:
        InputError: naming ``what``, what was given, what is expected, and the fix.
    """
    shape, dtype = _shape_and_dtype(labels, what, "integer class indices",
                                    "np.asarray(y, np.int32)")
    if not np.issubdtype(dtype, np.integer):
        raise InputError(
            f"{what} are {dtype}, but class labels must be integers 0..{config.num_classes - 1}; "
            f"convert whole-number labels with y.astype(np.int32), or one-hot labels with "
            f"y.argmax(axis=1).astype(np.int32)"
        )
    if len(shape) != 1:
        raise InputError(
            f"{what} have shape {shape}, but the labels must be 1-D, one class index per "
            f"image; use y.reshape(-1) (or y.argmax(axis=1) for one-hot labels)"
        )
    if count is not None and shape[0] != count:
        raise InputError(
            f"{what} hold {shape[0]} labels but there are {count} images: give one label per "
            f"image"
        )
    if used is not None:
        labels = np.asarray(labels)[np.asarray(used)]
    if labels.shape[0] == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= config.num_classes:
        raise InputError(
            f"{what} run from {low} to {high}, but the output layer has {config.num_classes} "
            f"classes (0..{config.num_classes - 1}, layer_sizes[-1]); map the labels to "
            f"0..{config.num_classes - 1} or drop the examples of other classes"
        )

"""The CNN's layers: the 3x3 convolution and a 2x2 max-pool whose gradient is elementwise.

``conv2d`` is ``lax.conv_general_dilated`` (NHWC images, HWIO kernels, stride 1), differentiated
by XLA. On the CPU its speed depends on the XLA flag set by ``spacenet_jax.compiler``; a custom
VJP whose backward pass was two forward convolutions (the kernel gradient over a batch-minor
transpose of the input, the input gradient with flipped kernels) was measured and was no faster
than XLA's own gradient once that flag is set, so there is none.

``max_pool_2x2`` is a reshape and a max, where ``lax.reduce_window``'s gradient
(``select_and_scatter``) takes about ten times longer on a CPU (50 ms against 5 ms for the
paper's first pool at batch 128). A window of tied maxima passes the gradient to each of them
(divided equally), where ``select_and_scatter`` picks one; after a ReLU, ties happen at zero,
where the gradient is zero either way, so both give the same gradients (tested against
``jax.grad`` of the ``reduce_window`` network).
"""

from __future__ import annotations

import jax

Array = jax.Array

#: Layouts of ``conv2d``: NHWC images and HWIO kernels.
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: Array, w: Array, padding: str) -> Array:
    """Stride-1 convolution of NHWC images ``x`` ``(B, H, W, C_in)`` with HWIO kernels ``w``
    ``(k, k, C_in, C_out)``, ``padding`` ``"SAME"`` or ``"VALID"``: ``(B, H_out, W_out,
    C_out)``."""
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=padding, dimension_numbers=DIMENSION_NUMBERS
    )


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool of stride 2 over ``(B, H, W, C)`` -> ``(B, H // 2, W // 2, C)`` (an odd
    last row or column is dropped, as in a VALID pool), as a reshape and a max."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

"""The layers, written so that their gradients cost only what training needs: a 3x3
convolution whose gradient XLA:CPU runs as library convolutions everywhere, a 2x2 max-pool whose
gradient is elementwise, and a dense layer split into a frozen rest and a trainable block.

``conv2d`` is ``lax.conv_general_dilated`` (NHWC images, HWIO kernels, stride 1) with a
``jax.custom_vjp`` on the CPU. Differentiated by XLA, the kernel gradient is a convolution with
non-canonical dimension labels (``f01b_i01o->01bf``). In a top-level program XLA:CPU rewrites it
into a canonical one and calls Eigen, but inside a loop body (the epoch's ``lax.scan``) it
leaves it as is and emits a naive loop nest for it: one epoch of the paper's CNN then takes
minutes instead of seconds. Here the backward pass is written as two canonical forward
convolutions, which XLA:CPU hands to Eigen wherever they are:

* the kernel gradient ``dw[i, j, c, o] = sum_{b,h,w} x_pad[b, h+i, w+j, c] g[b, h, w, o]``: a
  VALID convolution of the input transposed to ``(C_in, H, W, B)`` (maps as the batch, the
  batch as the contracted features) with the output gradient as an ``(H_out, W_out, B, C_out)``
  kernel (``conv_kernel_gradient``; the input's transpose kept out of the fusion of the bias
  and ReLU that produce it, ``unfused_transpose``);
* the input gradient: the output gradient, padded by ``k - 1 - p``, convolved with the
  spatially flipped kernels, in and out maps swapped (``conv_input_gradient``).

Both are exact up to float rounding (tested against ``jax.grad`` of the plain convolution for
SAME and VALID padding). GPU and TPU keep XLA's own gradient (cuDNN's, the TPU's), the fast path
there (``use_custom_conv_gradient``).

``max_pool_2x2`` is a reshape and a max, where ``lax.reduce_window``'s gradient
(``select_and_scatter``) takes about ten times longer on a CPU (50 ms against 5 ms for the
paper's first pool at batch 128). Its custom gradient sends each window's gradient to the
first of its maxima, the one ``select_and_scatter`` picks, with four elementwise comparisons
(no reduction to count ties, no division): the same gradients, ties included (tested).

``add_bias`` is ``x + b`` whose bias gradient, on the CPU, is a product with a vector of ones
rather than a reduction (which XLA:CPU splits into a slower tree of ``reduce-window``s).

``block_dense`` is ``x @ W`` with ``W`` given as a constant ``rest`` and a trainable ``block`` at
some rows and columns (zero in ``rest``): ``x @ rest + place(x[:, rows] @ block)``. Its gradient
(by plain automatic differentiation, the gather's transpose placing it) is the block's alone,
``x[:, rows]^T @ g[:, cols]``, at the block's size instead of the whole matrix's; the rest gets
none. ``spacenet_jax.core.subnetwork`` trains a task's connections with it (the sparse backward
pass). On the conv layers the same split does not pay: the paper's CNN selects every free map.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial

import jax
import jax.numpy as jnp

Array = jax.Array

#: Layouts of ``conv2d``: NHWC images and HWIO kernels.
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, w: Array, padding: str | list[tuple[int, int]]) -> Array:
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=padding, dimension_numbers=DIMENSION_NUMBERS
    )


def _same_padding(kernel_size: int) -> int:
    if kernel_size % 2 != 1:
        raise ValueError(f"SAME padding needs an odd kernel size, got {kernel_size}")
    return (kernel_size - 1) // 2


def unfused_transpose(x: Array, permutation: tuple[int, ...]) -> Array:
    """``jnp.transpose(x, permutation)``, computed apart from the operations that produce ``x``.

    XLA:CPU fuses elementwise producers (a conv layer's bias and ReLU) into a transpose, and
    the fused loop walks the output in order, reading the input at large strides: turning the
    paper's conv2 input ``(128, 32, 32, 32)`` into ``(32, 32, 32, 128)`` took about 20 ms of
    each train step that way, against about 5 ms as a transpose of a buffer. A conditional is a
    fusion boundary that XLA:CPU keeps (an optimization barrier is not: the CPU pipeline
    removes it before fusion), so the transpose runs in a ``lax.cond`` whose two branches are
    the same transpose: the value is the transpose whatever the predicate, which XLA cannot
    fold. Under ``jax.vmap`` it stays one conditional over the batched array (a custom
    batching rule; vmap's own rule would make the batched predicate a select of both
    branches, one transpose more). Differentiable like a transpose (forward and reverse mode).
    """
    return _unfused_transpose(tuple(permutation))(x)


@cache
def _unfused_transpose(permutation: tuple[int, ...]) -> Callable[[Array], Array]:
    """``unfused_transpose`` for one permutation, with its batching rule."""

    def transpose(a: Array) -> Array:
        return jnp.transpose(a, permutation)

    @jax.custom_batching.custom_vmap
    def apart(a: Array) -> Array:
        first = a.reshape(-1)[0]
        return jax.lax.cond(first == first, transpose, transpose, a)

    @apart.def_vmap
    def _batched(axis_size: int, in_batched: list[bool], a: Array) -> tuple[Array, bool]:
        del axis_size
        if not in_batched[0]:
            return apart(a), False
        # The batch axis comes first here: keep it first, move the others as asked.
        return unfused_transpose(a, (0, *(p + 1 for p in permutation))), True

    # A custom_vmap function has no derivative of its own; a transpose's is the transpose of
    # the tangent (plain: fusion does not matter there), so that it stays differentiable.
    @jax.custom_jvp
    def differentiable(a: Array) -> Array:
        return apart(a)

    @differentiable.defjvp
    def _jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
        return differentiable(primals[0]), transpose(tangents[0])

    return differentiable


def conv_kernel_gradient(x: Array, g: Array, kernel_size: int, padding: str) -> Array:
    """dL/dw ``(k, k, C_in, C_out)`` of a stride-1 convolution, as one forward convolution.

    Args:
      x: the layer's input ``(B, H, W, C_in)``.
      g: the gradient of its output ``(B, H_out, W_out, C_out)``.
      kernel_size: k.
      padding: ``"SAME"`` or ``"VALID"``.
    """
    if padding == "SAME":
        p = _same_padding(kernel_size)
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    lhs = unfused_transpose(x, (3, 1, 2, 0))  # (C_in, H, W, B)
    rhs = jnp.transpose(g, (1, 2, 0, 3))  # (H_out, W_out, B, C_out)
    return jnp.transpose(_conv(lhs, rhs, "VALID"), (1, 2, 0, 3))


def conv_input_gradient(g: Array, w: Array, padding: str) -> Array:
    """dL/dx ``(B, H, W, C_in)`` of a stride-1 convolution with kernels ``w`` ``(k, k, C_in,
    C_out)``, from the output gradient ``g`` ``(B, H_out, W_out, C_out)``."""
    k = w.shape[0]
    p = _same_padding(k) if padding == "SAME" else 0
    q = k - 1 - p
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    return _conv(g, flipped, [(q, q), (q, q)])


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_custom(x: Array, w: Array, padding: str) -> Array:
    return _conv(x, w, padding)


def _conv2d_fwd(x: Array, w: Array, padding: str) -> tuple[Array, tuple[Array, Array]]:
    return _conv(x, w, padding), (x, w)


def _conv2d_bwd(padding: str, residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, w = residuals
    return conv_input_gradient(g, w, padding), conv_kernel_gradient(x, g, w.shape[0], padding)


_conv2d_custom.defvjp(_conv2d_fwd, _conv2d_bwd)


def use_custom_conv_gradient() -> bool:
    """Whether ``conv2d`` uses the custom gradient: on the CPU (read while tracing)."""
    return jax.default_backend() == "cpu"


def conv2d(x: Array, w: Array, padding: str, custom_gradient: bool | None = None) -> Array:
    """Stride-1 convolution of NHWC images ``x`` ``(B, H, W, C_in)`` with HWIO kernels ``w``
    ``(k, k, C_in, C_out)``, ``padding`` ``"SAME"`` or ``"VALID"``: ``(B, H_out, W_out,
    C_out)``.

    The value is ``lax.conv_general_dilated``'s; the gradient is the custom one above with
    ``custom_gradient`` (default: ``use_custom_conv_gradient()``), else XLA's.
    """
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    if custom_gradient is None:
        custom_gradient = use_custom_conv_gradient()
    return _conv2d_custom(x, w, padding) if custom_gradient else _conv(x, w, padding)


def block_dense(
    x: Array, rest: Array, block: Array, rows: Array | None, cols: Array | None,
    rest_product: Array | None = None,
) -> Array:
    """``x @ W`` ``(B, fan_out)`` for ``x`` ``(B, fan_in)``, where ``W`` is ``rest``
    ``(fan_in, fan_out)`` with ``block`` ``(len(rows), len(cols))`` written at ``[rows][:,
    cols]`` (``rest`` must be zero there); ``rows`` / ``cols`` are int32 indices, ``None`` for
    all of them. The gradient with respect to ``block`` costs ``B * len(rows) * len(cols)``
    multiply-adds, that of ``x`` one product with ``rest`` and one with ``block``.
    ``rest_product``: ``x @ rest`` if already known (then ``rest`` is not used)."""
    inputs = x if rows is None else jnp.take(x, rows, axis=1)
    out = x @ rest if rest_product is None else rest_product
    placed = inputs @ block
    return out + placed if cols is None else out.at[:, cols].add(placed)


def _pool_windows(x: Array) -> Array:
    """``(B, H, W, C)`` -> ``(B, H // 2, 2, W // 2, 2, C)`` (an odd last row or column dropped)."""
    b, h, w, c = x.shape
    return x[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool of stride 2 over ``(B, H, W, C)`` -> ``(B, H // 2, W // 2, C)`` (an odd
    last row or column is dropped, as in a VALID pool), as a reshape and a max.

    Its gradient goes to the first maximum of each window in row-major order, the element
    ``select_and_scatter`` (``lax.reduce_window``'s gradient) picks, so the two are equal even
    where a window holds tied maxima; it is computed from four elementwise comparisons, with no
    reduction and no scatter.
    """
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_fwd(x: Array) -> tuple[Array, tuple[Array, Array]]:
    y = _pool_windows(x).max(axis=(2, 4))
    return y, (x, y)


def _max_pool_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array]:
    x, y = residuals
    b, h, w, c = x.shape
    hit = _pool_windows(x) == y[:, :, None, :, None, :]
    first, taken = [], jnp.zeros_like(g, dtype=bool)
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # row-major order within the window
        here = hit[:, :, i, :, j] & ~taken
        first.append(jnp.where(here, g, jnp.zeros_like(g)))
        taken = taken | here
    rows = [jnp.stack(first[:2], axis=3), jnp.stack(first[2:], axis=3)]  # (B, H/2, W/2, 2, C)
    dx = jnp.stack(rows, axis=2).reshape(b, h - h % 2, w - w % 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


@jax.custom_vjp
def _add_bias_custom(x: Array, b: Array) -> Array:
    return x + b


def _add_bias_fwd(x: Array, b: Array) -> tuple[Array, None]:
    return x + b, None


def _add_bias_bwd(_: None, g: Array) -> tuple[Array, Array]:
    rows = g.reshape(-1, g.shape[-1])
    return g, jnp.ones((rows.shape[0],), g.dtype) @ rows


_add_bias_custom.defvjp(_add_bias_fwd, _add_bias_bwd)


def add_bias(x: Array, b: Array, custom_gradient: bool | None = None) -> Array:
    """``x + b`` for ``x`` ``(..., C)`` and a bias ``b`` ``(C,)``.

    The bias gradient sums the output gradient over every axis but the last. With
    ``custom_gradient`` (default: ``use_custom_conv_gradient()``, on the CPU) that sum is a
    product with a vector of ones, which XLA:CPU runs as one pass; the reduction it replaces is
    split by XLA:CPU into a tree of ``reduce-window``s, about 12 ms of the paper's CNN's train
    step at batch 128 on this project's 2-core machines against about 5 ms. Equal up to float
    rounding (the order of the sum).
    """
    if custom_gradient is None:
        custom_gradient = use_custom_conv_gradient()
    return _add_bias_custom(x, b) if custom_gradient else x + b

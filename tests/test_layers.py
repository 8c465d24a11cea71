"""The CNN's layers: the custom convolution gradient against jax.grad, the reshape max-pool
against reduce_window, and the XLA flag."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_CNN

from spacenet_jax import begin_task, init_state
from spacenet_jax.core.compiler import CPU_FLAG, with_cpu_flag
from spacenet_jax.core.continual import make_task_data
from spacenet_jax.core.layers import add_bias, conv2d, max_pool_2x2, unfused_transpose
from spacenet_jax.core.network import forward, preprocess
from spacenet_jax.core.training import train_epoch


def _reduce_window_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 13, 13, 4), (1, 30, 30, 2), (2, 7, 6, 1)])
def test_max_pool_equals_reduce_window(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    np.testing.assert_array_equal(max_pool_2x2(x), _reduce_window_pool(x))


def test_max_pool_gradient_equals_select_and_scatter_without_ties():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 13, 13, 4))  # odd size: last row dropped
    g = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 6, 4))
    ours = jax.vjp(max_pool_2x2, x)[1](g)[0]
    ref = jax.vjp(_reduce_window_pool, x)[1](g)[0]
    np.testing.assert_array_equal(ours, ref)
    assert float(jnp.abs(ours[:, 12, :, :]).max()) == 0.0  # the dropped row gets no gradient


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 2)])
def test_max_pool_gradient_equals_select_and_scatter_with_ties(shape):
    """Ties within a window (after a ReLU, every zero ties): the gradient goes to the first
    maximum in row-major order, as select_and_scatter sends it; each window passes on its
    output gradient exactly once."""
    key = jax.random.PRNGKey(11)
    x = jnp.round(jax.random.normal(key, shape))  # few distinct values: many ties
    x = jnp.concatenate([jax.nn.relu(x[:1]), x[1:]])  # and a batch of ReLU zeros
    assert float(jnp.mean(x == 0)) > 0.3
    g = jax.random.normal(jax.random.PRNGKey(12), max_pool_2x2(x).shape)
    ours = jax.vjp(max_pool_2x2, x)[1](g)[0]
    ref = jax.vjp(_reduce_window_pool, x)[1](g)[0]
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), g.sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    jitted = jax.jit(jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * g)))(x)
    np.testing.assert_array_equal(jitted, ref)


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (7, 6)])
def test_add_bias_gradient_equals_jax_grad(shape):
    x = jax.random.normal(jax.random.PRNGKey(13), shape)
    b = jax.random.normal(jax.random.PRNGKey(14), shape[-1:])
    g = jax.random.normal(jax.random.PRNGKey(15), shape)
    for custom in (True, False):
        value, pullback = jax.vjp(lambda x, b, c=custom: add_bias(x, b, c), x, b)
        np.testing.assert_array_equal(value, x + b)
        dx, db = pullback(g)
        np.testing.assert_array_equal(dx, g)
        np.testing.assert_allclose(db, g.reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_is_the_lax_convolution(padding):
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 9, 3))
    w = jax.random.normal(jax.random.PRNGKey(4), (3, 3, 3, 5))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO",
                                                                                "NHWC"))
    np.testing.assert_array_equal(conv2d(x, w, padding), ref)
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, w, "FULL")


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("shape", [(4, 9, 9, 3, 5), (2, 8, 7, 6, 4), (3, 6, 6, 1, 2)])
def test_custom_conv_gradient_equals_jax_grad(padding, shape):
    b, h, w_, c_in, c_out = shape
    x = jax.random.normal(jax.random.PRNGKey(5), (b, h, w_, c_in))
    w = jax.random.normal(jax.random.PRNGKey(6), (3, 3, c_in, c_out))
    mask = jax.random.bernoulli(jax.random.PRNGKey(7), 0.4, (1, 1, c_in, c_out))  # kernels
    w = jnp.where(mask, w, 0.0)
    out = conv2d(x, w, padding, custom_gradient=False)
    g = jax.random.normal(jax.random.PRNGKey(8), out.shape)

    def vjp(custom):
        return jax.vjp(lambda x, w: conv2d(x, w, padding, custom_gradient=custom), x, w)

    value, pullback = vjp(True)
    np.testing.assert_array_equal(value, out)
    dx, dw = pullback(g)
    ref_dx, ref_dw = vjp(False)[1](g)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)
    # also under jit and through jax.grad of a scalar loss
    loss = lambda custom: lambda x, w: jnp.sum(jnp.tanh(conv2d(x, w, padding, custom)))  # noqa: E731
    ours = jax.jit(jax.grad(loss(True), argnums=(0, 1)))(x, w)
    ref = jax.grad(loss(False), argnums=(0, 1))(x, w)
    for a, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


@functools.cache
def _paper_epoch_hlo() -> str:
    """The compiled epoch of the paper's CNN (64 random images), as HLO text: compiled, not run."""
    from experiments.split_cifar10 import SPLIT_CIFAR10 as config

    state, _ = begin_task(init_state(config, 0), config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32 * 32 * 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 64).astype(np.int32)
    task = make_task_data(images, labels, [np.arange(64)], config.batch_size)[0]
    hlo = train_epoch.lower(state, config, task.images, task.labels, task.indices,
                            jnp.asarray(64)).compile().as_text()
    return hlo


def test_scanned_epoch_has_only_canonical_convolutions():
    """Inside the epoch's lax.scan XLA:CPU leaves non-canonical convolutions (XLA's own kernel
    gradient) as naive loop nests, minutes per epoch: every convolution of the compiled epoch
    must be a canonical NHWC x HWIO one (the custom gradient's). Checked on the paper's CNN
    (compiled, not run)."""
    hlo = _paper_epoch_hlo()
    labels_used = re.findall(r"convolution\(.*?dim_labels=([^,]+)", hlo)
    assert len(labels_used) == 11  # 4 forward, 4 kernel and 3 input gradients
    if jax.default_backend() == "cpu":
        assert set(labels_used) == {"b01f_01io->b01f"}, labels_used


def test_scanned_epoch_transposes_conv_inputs_apart_from_their_relu():
    """XLA:CPU fuses a conv layer's bias and ReLU into the transpose of its output that the next
    layer's kernel gradient reads, and the fused loop is about four times slower than the
    transpose of a buffer. ``unfused_transpose`` keeps them apart: no fused computation of the
    compiled epoch may hold both a ``(B, H, W, C) -> (C, H, W, B)`` transpose and a maximum."""
    if jax.default_backend() != "cpu":
        pytest.skip("the custom convolution gradient is the CPU's")
    hlo = _paper_epoch_hlo()
    computations = re.split(r"\n(?=%\S+ \()", hlo)
    transposing = [c for c in computations
                   if re.search(r"transpose\(.*dimensions=\{3,1,2,0\}", c)]
    assert transposing, "the kernel gradients' input transposes are gone from the program"
    fused_with_relu = [c.split(" ", 1)[0] for c in transposing if "maximum(" in c]
    assert fused_with_relu == []


@pytest.mark.parametrize("first", [1.5, np.nan])
def test_unfused_transpose_is_the_transpose(first):
    """Whatever the predicate the conditional reads (the first element, NaN included), jitted
    and vmapped."""
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    x.flat[0] = first
    perm = (3, 1, 2, 0)
    np.testing.assert_array_equal(jax.jit(unfused_transpose, static_argnums=1)(x, perm),
                                  np.transpose(x, perm))
    batched = jax.vmap(lambda a: unfused_transpose(a, (2, 0, 1)))(x)
    np.testing.assert_array_equal(batched, np.transpose(x, (0, 3, 1, 2)))


def test_unfused_transpose_under_vmap_stays_one_conditional():
    """vmap (any batch axis, nested, and over a closed-over unbatched array) keeps one cond of
    one transpose per branch, not a select of two, and the value is the transpose."""
    x = np.random.default_rng(1).normal(size=(3, 4, 5, 6)).astype(np.float32)
    perm = (2, 0, 1)
    inner = jax.vmap(lambda a: unfused_transpose(a, perm), in_axes=1)
    np.testing.assert_array_equal(inner(x), np.transpose(x, (1, 3, 0, 2)))
    nested = jax.vmap(jax.vmap(lambda a: unfused_transpose(a, (1, 0))))
    np.testing.assert_array_equal(nested(x), np.transpose(x, (0, 1, 3, 2)))
    closed = jax.vmap(lambda b: unfused_transpose(x[0], perm) + b)(np.ones(2, np.float32))
    np.testing.assert_array_equal(closed[1], np.transpose(x[0], perm) + 1)
    for fn, arg in ((inner, x), (nested, x)):
        jaxpr = str(jax.make_jaxpr(fn)(arg))
        assert jaxpr.count("cond[") == 1, jaxpr
        assert "select_n" not in jaxpr, jaxpr


def test_unfused_transpose_differentiates_like_a_transpose():
    """Reverse and forward mode, vmapped too: the conv gradient's backward pass stays
    differentiable (gradients of gradients)."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 5)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(5, 3, 4)), jnp.float32)

    def loss(fn, a):
        return jnp.sum(jnp.sin(fn(a)) * w)

    ours = functools.partial(unfused_transpose, permutation=(2, 0, 1))
    plain = functools.partial(jnp.transpose, axes=(2, 0, 1))
    np.testing.assert_allclose(jax.grad(functools.partial(loss, ours))(x),
                               jax.grad(functools.partial(loss, plain))(x),
                               rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(ours, (x,), (w.transpose(1, 2, 0),))[1],
                               plain(w.transpose(1, 2, 0)))
    per_row = jax.vmap(jax.grad(lambda a: jnp.sum(unfused_transpose(a, (1, 0)) ** 3)))
    np.testing.assert_allclose(per_row(x), 3 * x ** 2, rtol=1e-6)


def _reference_forward(weights, biases, x, config):
    """The network with reduce_window pooling (what the layers replace)."""
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if layer < config.conv_layers:
            h = jax.lax.conv_general_dilated(
                h, w, (1, 1), config.conv_padding[layer],
                dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
        else:
            h = h.reshape(h.shape[0], -1) @ w + b
        if layer < len(weights) - 1:
            h = jax.nn.relu(h)
        if layer < config.conv_layers and layer in config.pool_after:
            h = _reduce_window_pool(h)
    return h


def test_network_gradient_equals_the_reference_network():
    """Conv (SAME and VALID) and dense layers, masked (sparse) weights: the gradients of the
    network's loss equal jax.grad of the reduce_window network up to float rounding."""
    config = TINY_CNN
    assert set(config.conv_padding) == {"SAME", "VALID"}
    state, _ = begin_task(init_state(config, 0), config)
    assert any(float(jnp.mean(w == 0)) > 0.3 for w in state.weights)  # masked: mostly zero
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (16, 8 * 8 * 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, config.num_classes, 16), jnp.int32)
    x = preprocess(images, config)

    def loss(params, fwd):
        logits = fwd(*params, x, config)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    ours = jax.grad(loss)(state.params, forward)
    ref = jax.grad(loss)(state.params, _reference_forward)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(ours))


def test_xla_flag_is_added_only_where_known():
    assert with_cpu_flag("", "0.10.2") == CPU_FLAG
    assert with_cpu_flag("--foo=1", "0.10.2") == f"--foo=1 {CPU_FLAG}"
    assert with_cpu_flag("", "0.4.30") == ""  # older jaxlib: unknown flags abort XLA
    assert with_cpu_flag("", "0.11.0") == ""  # not checked yet
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert with_cpu_flag(mine, "0.10.2") == mine  # the user's own setting wins


def test_the_flag_is_in_force_in_this_process():
    import jaxlib

    from spacenet_jax.core.compiler import flag_supported

    if flag_supported(jaxlib.__version__):
        import os

        assert CPU_FLAG in os.environ.get("XLA_FLAGS", "").split()

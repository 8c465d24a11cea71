"""The current task's sub-network at static shapes: what the sparse training step computes.

While task t trains, only its own connections change (Eq. 1), and they all lie in the block of
each weight matrix between the task's selected units of consecutive layers (Algorithm 2 allocates
them there and Algorithm 3 grows them there): ``(784, 80)``, ``(80, 80)`` and ``(80, 10)`` of
the paper's ``(784, 400)``, ``(400, 400)`` and ``(400, 10)``. The selected counts are static, so
the blocks are gathered to static shapes once per epoch (``gather_task_blocks``), trained by the
epoch's scan, and put back when it ends (``scatter_task_blocks``).

Each weight matrix is split into its block, which is trained, and the rest, a constant of the
epoch that holds earlier tasks' frozen connections (into free neurons as well: they still count
in the forward pass, which stays exact). A layer is ``h @ rest + place(h[:, rows] @ block)``
(``layers.block_dense``), so that automatic differentiation computes the weight gradient only on
the block, ``h[:, rows]^T @ g[:, cols]``, and no gradient of the rest at all.

Activations are computed only where they reach the loss. When the live output layer holds only
the current task's columns (every method that stores output columns: ``spacenet``, ``static``),
its weights leave only the task's selected units of the last hidden layer, so that layer is
computed on those units alone (``(B, 80)`` instead of ``(B, 400)``), and the error sent back to
the layer below comes from them alone. Free units of the last hidden layer that the task did not
select get a zero bias gradient on either path.

The first layer's rest is constant for the whole task (drop and grow act inside the block), so
``x @ rest`` of the task's examples is computed once when the task begins
(``first_layer_products``), not at every step of every epoch: on split MNIST that product is
three fifths of a step's arithmetic.

The updates, the optimiser's moments and Omega (Eq. 2-3) are those of the masked step
(``training.train_step``) at every position, up to float rounding (the sums are grouped
differently): moments and Omega are zero outside the blocks on both paths, since they are reset
when a task begins and the gradient is masked to the task's connections.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import struct

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.layers import block_dense
from spacenet_jax.core.normalisation import preprocess
from spacenet_jax.core.state import SpaceNetState, make_optimizer

Array = jax.Array
Params = tuple[tuple[Array, ...], tuple[Array, ...]]


def uses_subnetwork_step(config: SpaceNetConfig) -> bool:
    """Whether the epoch trains on the gathered blocks (``config.training_step``).

    ``"auto"`` chooses them on the CPU, where a task's work shrinks with its blocks (about
    half the dense floor's time for split MNIST, ``python -m benchmarks.split_mnist``), and keeps
    the masked step on GPUs and TPUs, whose dense matrix products are not the bottleneck and where
    the gathers have not been measured. Read while tracing.
    """
    if config.training_step == "auto":
        return config.has_task_blocks and jax.default_backend() == "cpu"
    return config.training_step == "subnetwork"


def unit_indices(state: SpaceNetState, config: SpaceNetConfig) -> tuple[Array | None, ...]:
    """Per unit layer 0..L, the current task's selected units: int32 ``(sel_h,)`` in increasing
    order for a hidden layer that selects ``sel_h`` of its neurons, ``None`` where every unit
    takes part (the inputs, the output classes, a layer that selects every free neuron)."""
    indices: list[Array | None] = [None]
    for hidden, selected in enumerate(state.selected[1:-1]):
        if config.selects_all(hidden):
            indices.append(None)
        else:
            indices.append(jnp.nonzero(selected, size=config.selected_neurons[hidden])[0])
    indices.append(None)
    return tuple(indices)


def computed_units(
    config: SpaceNetConfig, indices: tuple[Array | None, ...]
) -> tuple[Array | None, ...]:
    """Per unit layer, where activations are computed: ``None`` (every unit), or the selected
    units of the last hidden layer when the live output layer holds only the current task's
    connections (``config.stores_output_columns``), which leave those units alone."""
    computed = [None] * len(indices)
    if config.stores_output_columns:
        computed[-2] = indices[-2]
    return tuple(computed)


def _take(x: Array, index: Array | None, axis: int) -> Array:
    return x if index is None else jnp.take(x, index, axis=axis)


def gather_block(x: Array, rows: Array | None, cols: Array | None) -> Array:
    """``x[rows][:, cols]`` of a ``(fan_in, fan_out)`` array (``None``: every row / column)."""
    return _take(_take(x, rows, 0), cols, 1)


def scatter_block(x: Array, rows: Array | None, cols: Array | None, block: Array) -> Array:
    """``x`` with ``block`` written at ``[rows][:, cols]`` (the inverse of ``gather_block``)."""
    if rows is None and cols is None:
        return block
    if rows is None:
        return x.at[:, cols].set(block)
    if cols is None:
        return x.at[rows].set(block)
    return x.at[rows[:, None], cols[None, :]].set(block)


@struct.dataclass
class TaskBlocks:
    """What an epoch on the blocks holds constant, per weight matrix ``l``.

    Attributes:
      rows, cols: the block's units (``unit_indices`` of unit layers l and l + 1).
      computed_in, computed_out: where the layer's input and output activations are computed
        (``computed_units``).
      local_rows, local_cols: the block's rows and columns within the computed activations
        (``None``: all of them).
      rest: ``(computed_in, computed_out)`` of the weights, zero on the block.
      masks: bool, the block's trainable positions (the task's connections), and per layer the
        bool ``(fan_out,)`` trainable biases.
    """

    rows: tuple[Array | None, ...]
    cols: tuple[Array | None, ...]
    computed_in: tuple[Array | None, ...]
    computed_out: tuple[Array | None, ...]
    local_rows: tuple[Array | None, ...]
    local_cols: tuple[Array | None, ...]
    rest: tuple[Array, ...]
    masks: tuple[tuple[Array, ...], tuple[Array, ...]]


def _local(index: Array | None, computed: Array | None) -> Array | None:
    """The block's units within the computed ones: all of them when only the selected units are
    computed, else their own indices."""
    return None if computed is not None else index


def _weight_leaf_layers(state: SpaceNetState, config: SpaceNetConfig):
    """The optimiser state with each weight-shaped leaf replaced by its layer (int), every
    other leaf (bias moments, the step count, hyper-parameters) by -1."""
    layers = (tuple(range(config.num_layers)), tuple(-1 for _ in state.biases))
    return optax.tree_utils.tree_map_params(
        make_optimizer(config), lambda _, layer: layer, state.opt_state, layers,
        transform_non_params=lambda _: -1,
    )


_Indices = tuple[Array | None, ...]


def _layout(state: SpaceNetState, config: SpaceNetConfig) -> tuple[_Indices, ...]:
    """Per weight matrix: ``(rows, cols, computed_in, computed_out, local_rows, local_cols)``,
    as ``TaskBlocks`` holds them."""
    indices = unit_indices(state, config)
    computed = computed_units(config, indices)
    layers = range(config.num_layers)
    rows = tuple(indices[layer] for layer in layers)
    cols = tuple(indices[layer + 1] for layer in layers)
    computed_in = tuple(computed[layer] for layer in layers)
    computed_out = tuple(computed[layer + 1] for layer in layers)
    local_rows = tuple(_local(r, c) for r, c in zip(rows, computed_in, strict=True))
    local_cols = tuple(_local(c, o) for c, o in zip(cols, computed_out, strict=True))
    return rows, cols, computed_in, computed_out, local_rows, local_cols


def _layer_rest(weights: Array, layout: tuple[_Indices, ...], layer: int) -> Array:
    """Weight matrix ``layer`` at its computed units, zero on the block."""
    rows, cols, computed_in, computed_out, local_rows, local_cols = (
        part[layer] for part in layout
    )
    rest = gather_block(weights, computed_in, computed_out)
    block = jnp.zeros(gather_block(weights, rows, cols).shape, rest.dtype)
    return scatter_block(rest, local_rows, local_cols, block)


def gather_task_blocks(
    state: SpaceNetState, config: SpaceNetConfig, weight_masks: tuple[Array, ...],
    bias_masks: tuple[Array, ...],
) -> tuple[TaskBlocks, Params, optax.OptState, tuple[Array, ...]]:
    """The current task's blocks, for an epoch on them.

    Args:
      state: the state (task ``state.task`` allocated, neurons selected).
      config: static configuration (``config.has_task_blocks``).
      weight_masks, bias_masks: ``training.trainable_masks(state)``.

    Returns:
      ``(blocks, params, opt_state, importance)``: the epoch's constants, the trainable
      parameters ``((block_l, ...), biases)`` with blocks ``(len(rows_l), len(cols_l))``, the
      optimiser state over them, and Omega on the blocks.
    """
    layout = _layout(state, config)
    rows, cols, computed_in, computed_out, local_rows, local_cols = layout
    params = tuple(gather_block(w, r, c) for w, r, c in zip(state.weights, rows, cols,
                                                            strict=True))
    rest = tuple(_layer_rest(w, layout, layer) for layer, w in enumerate(state.weights))
    masks = tuple(gather_block(m, r, c) for m, r, c in zip(weight_masks, rows, cols,
                                                           strict=True))
    leaf_layers = _weight_leaf_layers(state, config)
    opt_state = jax.tree.map(
        lambda layer, x: gather_block(x, rows[layer], cols[layer]) if layer >= 0 else x,
        leaf_layers, state.opt_state,
    )
    importance = tuple(gather_block(o, r, c) for o, r, c in zip(state.importance, rows, cols,
                                                                strict=True))
    blocks = TaskBlocks(rows, cols, computed_in, computed_out, local_rows, local_cols, rest,
                        (masks, tuple(bias_masks)))
    return blocks, (params, state.biases), opt_state, importance


def scatter_task_blocks(
    state: SpaceNetState,
    config: SpaceNetConfig,
    blocks: TaskBlocks,
    params: Params,
    opt_state: optax.OptState,
    importance: tuple[Array, ...],
) -> SpaceNetState:
    """``state`` with the trained blocks, their optimiser moments and Omega written back
    (everything outside the blocks is as it was)."""
    block_weights, biases = params
    weights = tuple(
        scatter_block(w, r, c, b)
        for w, r, c, b in zip(state.weights, blocks.rows, blocks.cols, block_weights,
                              strict=True)
    )
    leaf_layers = _weight_leaf_layers(state, config)
    opt_state = jax.tree.map(
        lambda layer, full, block: (
            scatter_block(full, blocks.rows[layer], blocks.cols[layer], block)
            if layer >= 0 else block
        ),
        leaf_layers, state.opt_state, opt_state,
    )
    importance = tuple(
        scatter_block(o, r, c, b)
        for o, r, c, b in zip(state.importance, blocks.rows, blocks.cols, importance,
                              strict=True)
    )
    return state.replace(weights=weights, biases=biases, opt_state=opt_state,
                         importance=importance)


#: The most bytes (per seed) that a task's ``first_layer_products`` may take; above it the product
#: is computed at every step instead.
MAX_FIRST_LAYER_PRODUCT_BYTES = 2**28


def caches_first_layer_products(config: SpaceNetConfig, num_positions: int) -> bool:
    """Whether a task of ``num_positions`` (padded) example positions keeps its first layer's
    rest products: on the blocks' path, when they take at most
    ``MAX_FIRST_LAYER_PRODUCT_BYTES``."""
    if not uses_subnetwork_step(config):
        return False
    units = config.layer_sizes[1]
    if config.num_layers == 2 and config.stores_output_columns:
        units = config.selected_neurons[0]  # the only hidden layer is the last one
    return num_positions * units * 4 <= MAX_FIRST_LAYER_PRODUCT_BYTES


@partial(jax.jit, static_argnames="config")
def first_layer_products(
    state: SpaceNetState, config: SpaceNetConfig, images: Array, task_indices: Array
) -> Array:
    """``x @ rest_0`` for each of the task's examples: float32 ``(len(task_indices), units)``,
    row ``i`` for ``images[task_indices[i]]`` (preprocessed), ``rest_0`` the first weight
    matrix outside the task's block at its computed units (``TaskBlocks.rest[0]``).

    Call after ``begin_task``: the rest does not change until the task ends. Computed a batch
    of ``config.batch_size`` rows at a time (``task_indices`` is padded to whole batches).
    """
    rest = _layer_rest(state.weights[0], _layout(state, config), 0)
    batches = task_indices.reshape(-1, config.batch_size)
    products = jax.lax.map(
        lambda index: preprocess(images[index], config, state.input_statistics) @ rest, batches
    )
    return products.reshape(task_indices.shape[0], -1)


def block_forward(
    blocks: TaskBlocks, params: Params, x: Array, first_product: Array | None = None
) -> Array:
    """Logits ``(B, num_classes)`` of preprocessed inputs ``x`` ``(B, D)``: the network's
    forward pass (``network.forward``) with every weight matrix as its rest plus its block,
    activations computed only where ``blocks.computed_out`` says. ``first_product``: the
    batch's rows of ``first_layer_products``, if kept (else ``x @ rest_0`` is computed)."""
    block_weights, biases = params
    h = x
    last = len(block_weights) - 1
    for layer, (block, bias) in enumerate(zip(block_weights, biases, strict=True)):
        h = block_dense(h, blocks.rest[layer], block, blocks.local_rows[layer],
                        blocks.local_cols[layer], first_product if layer == 0 else None)
        h = h + _take(bias, blocks.computed_out[layer], 0)
        if layer < last:
            h = jax.nn.relu(h)
    return h

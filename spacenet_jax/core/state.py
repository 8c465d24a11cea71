"""The SpaceNet state: one immutable pytree holding everything that changes during learning.

Layer ``l`` (0-based, ``L = len(layer_sizes) - 1`` weight matrices) maps units ``l`` to units
``l + 1``; a dense layer's weight matrix has shape ``(fan_in, fan_out) = (layer_sizes[l],
layer_sizes[l+1])`` and the forward pass is ``x @ W + b``. A conv layer's weights are HWIO kernels
``(k, k, in_maps, out_maps)`` while its connection arrays (owner, Omega) are per kernel,
``(in_maps, out_maps)``: a kernel is entirely in or out of a mask, and every mask broadcasts
against its weights. "Unit layers" are numbered 0 (input) .. L (output); the
hidden unit layers are 1 .. L-1.

Shapes and dtypes never change from task to task, so none of the jitted functions that take a
state recompiles when a new task starts.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.normalisation import empty_input_statistics
from spacenet_jax.core.task_scores import empty_statistics

Array = jax.Array

#: Marker in ``connection_owner`` and ``neuron_owner``: the position / neuron belongs to no task.
FREE = -1
#: Integer type of the ownership arrays (task ids up to 32767).
OWNER_DTYPE = jnp.int16


@struct.dataclass
class SpaceNetState:
    """All mutable quantities of SpaceNet, as a pytree of arrays.

    Attributes (per weight matrix ``l``, shapes ``(fan_in, fan_out)`` unless said otherwise):
      weights: live weights (conv: HWIO); exactly zero at every position no task owns. The
        output layer holds only the current task's connections: finished tasks' output weights
        live in
        ``saved_output_weights`` (the paper's ``W_L^saved``).
      biases: ``(fan_out,)`` per layer.
      init_weights: the dense initial (Glorot-uniform) draw; a connection allocated to a task takes
        its value from here, a grown one starts at zero.
      connection_owner: int16 ``config.mask_shape(l)`` (conv: per kernel), the task that owns
        each position, or ``FREE``. The current task's
        mask is ``connection_owner == task``, earlier tasks' is ``0 <= owner < task``; masks of
        different tasks cannot overlap by construction.
      importance: float32, Omega (Eq. 3): accumulated ``|g * delta_w|`` of the current task's
        connections over the task's steps; reset when a task starts.
      neuron_owner: per hidden unit layer, int16 ``(n_units,)``: ``FREE`` or the task that
        reserved the neuron (Algorithm 4).
      selected: per unit layer 0..L, bool ``(n_units,)``: the current task's selected units (all
        inputs; ``sel_l`` free hidden neurons; the task's classes at the output).
      saved_output_weights: ``(fan_in_L, num_classes)``: output columns of finished tasks.
      task_biases: with ``config.inference == "per_task"``, per layer float32
        ``(num_tasks, fan_out)``: row t holds the biases as they were when task t ended (zeros
        before); otherwise ``()``, so states and checkpoints of the paper's inference do not
        change.
      input_statistics: with ``config.input_normalisation == "per_pixel"``, ``(mean, sd)``,
        float32 ``(D,)`` each: every input value's mean and sd over the training images,
        fitted when the first task starts (``core.normalisation``); otherwise ``()``.
      task_statistics: with ``config.task_scores`` other than ``"logits"``, the statistics of
        each finished task's own training images that put the tasks' scores on one scale
        (``spacenet_jax.core.task_scores.empty_statistics`` lists them); otherwise ``()``.
      task: int32 scalar, index of the task being learned (or next to learn).
      opt_state: the optax state of the current task's optimiser.
      rng: uint32 ``(2,)`` PRNG key, advanced by every random operation.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    init_weights: tuple[Array, ...]
    connection_owner: tuple[Array, ...]
    importance: tuple[Array, ...]
    neuron_owner: tuple[Array, ...]
    selected: tuple[Array, ...]
    saved_output_weights: Array
    task_biases: tuple[Array, ...]
    input_statistics: tuple[Array, ...]
    task_statistics: tuple[Array, ...]
    task: Array
    opt_state: optax.OptState
    rng: Array

    @property
    def params(self) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        """The trainable parameters ``(weights, biases)``."""
        return self.weights, self.biases

    def current_masks(self) -> tuple[Array, ...]:
        """bool ``(fan_in, fan_out)`` per layer: the current task's connections."""
        return tuple(owner == self.task for owner in self.connection_owner)


#: The optimiser's hyper-parameters that are traced values of the state (``opt_state``), not
#: part of the static configuration: states that differ only in these run as one vmapped
#: program without recompiling (a sweep, ``running.sweep``).
TRACED_HYPERPARAMETERS = ("learning_rate", "momentum")


def make_optimizer(config: SpaceNetConfig) -> optax.GradientTransformation:
    """Plain SGD with momentum (``config.momentum``, 0 by default: the paper's plain SGD, the
    same updates bit for bit), its learning rate and momentum held in the optimiser state
    (``optax.inject_hyperparams``) and read from there at every step; ``config``'s values are
    only their initial values (``with_hyperparameters`` sets others)."""
    return optax.inject_hyperparams(optax.sgd)(
        learning_rate=config.learning_rate, momentum=config.momentum
    )


def hyperparameters(state: SpaceNetState) -> dict[str, Array]:
    """The traced hyper-parameters (``TRACED_HYPERPARAMETERS``) the state trains with:
    float32 scalars (``(S,)`` for a batch of seeds)."""
    return dict(state.opt_state.hyperparams)


def with_hyperparameters(state: SpaceNetState, **values: float | Array) -> SpaceNetState:
    """``state`` training with other hyper-parameters (names of ``TRACED_HYPERPARAMETERS``);
    kept from task to task (``begin_task`` resets the optimiser's moments, not these)."""
    unknown = sorted(set(values) - set(TRACED_HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"{unknown} are not traced hyper-parameters; choose among "
                         f"{list(TRACED_HYPERPARAMETERS)}")
    current = state.opt_state.hyperparams
    merged = {**current, **{k: jnp.asarray(v, current[k].dtype) for k, v in values.items()}}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=merged))


@partial(jax.jit, static_argnames="config")
def init_state(config: SpaceNetConfig, seed: int | Array) -> SpaceNetState:
    """``seed``: an int (or int array, e.g. under vmap) or a PRNG key of shape (2,).

    A network with no connections, all neurons free, and a fresh dense initial draw.

    Weights are drawn Glorot (Xavier) uniform per layer (kept in ``init_weights``), biases zero.
    One compiled program (not some thirty separate operations, each its own program to load
    at start-up).
    """
    is_key = hasattr(seed, "shape") and tuple(seed.shape) == (2,)
    key = seed if is_key else jax.random.PRNGKey(seed)
    key, *layer_keys = jax.random.split(key, config.num_layers + 1)
    # Conv kernels are HWIO: glorot's fan-in / fan-out include the receptive field.
    glorot = jax.nn.initializers.glorot_uniform()
    shapes = [config.weight_shape(i) for i in range(config.num_layers)]
    masks = [config.mask_shape(i) for i in range(config.num_layers)]
    init_weights = tuple(glorot(k, s, jnp.float32) for k, s in zip(layer_keys, shapes, strict=True))
    weights = tuple(jnp.zeros(s, jnp.float32) for s in shapes)
    biases = tuple(jnp.zeros((s[-1],), jnp.float32) for s in shapes)
    return SpaceNetState(
        weights=weights,
        biases=biases,
        init_weights=init_weights,
        connection_owner=tuple(jnp.full(s, FREE, OWNER_DTYPE) for s in masks),
        importance=tuple(jnp.zeros(s, jnp.float32) for s in masks),
        neuron_owner=tuple(
            jnp.full((n,), FREE, OWNER_DTYPE) for n in config.layer_sizes[1:-1]
        ),
        selected=tuple(jnp.zeros((n,), bool) for n in config.layer_sizes),
        saved_output_weights=jnp.zeros(shapes[-1], jnp.float32),
        task_biases=tuple(
            jnp.zeros((config.num_tasks, s[-1]), jnp.float32) for s in shapes
        ) if config.inference == "per_task" else (),
        input_statistics=empty_input_statistics(config),
        task_statistics=empty_statistics(config),
        task=jnp.zeros((), jnp.int32),
        opt_state=make_optimizer(config).init((weights, biases)),
        rng=key,
    )


# ---- counts of owners (host side, for records, reports and figures) ---------------------------


def _owner_arrays(owners: tuple[Array, ...]) -> list[np.ndarray]:
    return [np.asarray(o) for o in jax.device_get(owners)]


def connection_counts(state: SpaceNetState, num_tasks: int) -> list[list[int]]:
    """``[task][layer]``: how many connections each of tasks ``0..num_tasks-1`` owns in each
    weight matrix (kernels for conv layers)."""
    owners = _owner_arrays(state.connection_owner)
    return [[int(np.sum(o == t)) for o in owners] for t in range(num_tasks)]


def connections_used(state: SpaceNetState) -> list[int]:
    """Per weight matrix, the positions owned by any task."""
    return [int(np.sum(o != FREE)) for o in _owner_arrays(state.connection_owner)]


def free_neuron_counts(state: SpaceNetState) -> list[int]:
    """Per hidden layer, the neurons (feature maps) no task has reserved."""
    return [int(np.sum(o == FREE)) for o in _owner_arrays(state.neuron_owner)]


def reserved_neuron_counts(state: SpaceNetState, num_tasks: int) -> list[list[int]]:
    """``[task][hidden layer]``: the neurons each of tasks ``0..num_tasks-1`` reserved."""
    owners = _owner_arrays(state.neuron_owner)
    return [[int(np.sum(o == t)) for o in owners] for t in range(num_tasks)]

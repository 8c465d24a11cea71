"""Many seeds as one program: the seed is a vmapped axis of the state, sharded over devices.

A batch of ``S`` seeds is one ``SpaceNetState`` whose every leaf has a leading axis of size ``S``
(``stack_states``). ``begin_tasks``, ``train_epochs_and_rewire``, ``end_tasks`` and
``predict_seeds`` are the single-seed functions under ``jax.vmap``, jitted. Nothing in them
mixes seeds, so a seed's results do not depend on the batch it runs in (tested against single
runs), and with the seed axis sharded over devices (``seed_mesh`` / ``shard_seeds``) each device
runs its own seeds with no communication at all: 8 TPU cores run 8 seeds at once.

The training set is shared by every seed (replicated, never copied per seed); what differs per
seed is the state and, with a bounded replay memory, the example indices of a stage.

Across several hosts (a TPU pod slice, several GPU machines), call
``jax.distributed.initialize()`` first in every process: ``jax.devices()`` then lists every
host's devices and ``seed_mesh`` spans them all (see the README's performance section).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.continual import (
    EpochCallback,
    TaskData,
    begin_task,
    check_allocation,
    end_task,
    run_epochs,
    train_epoch_and_rewire,
)
from spacenet_jax.core.network import predict, predict_with_tasks
from spacenet_jax.core.normalisation import fit_input_statistics
from spacenet_jax.core.state import SpaceNetState
from spacenet_jax.core.subnetwork import caches_first_layer_products, first_layer_products
from spacenet_jax.core.task_scores import fit_task_statistics

Array = jax.Array
Tree = TypeVar("Tree")

#: Name of the mesh axis the seeds are sharded over.
SEED_AXIS = "seed"


def stack_states(states: Sequence[SpaceNetState]) -> SpaceNetState:
    """``S`` single-seed states -> one state whose leaves have a leading seed axis ``(S, ...)``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def unstack_states(states: SpaceNetState, count: int | None = None) -> list[SpaceNetState]:
    """The first ``count`` (default: all) single-seed states of a batched state."""
    count = int(states.task.shape[0]) if count is None else count
    return [jax.tree.map(lambda leaf, i=i: leaf[i], states) for i in range(count)]


def seed_devices(num_seeds: int, devices: Sequence[jax.Device] | None = None) -> list:
    """The fewest of ``devices`` (default: all, every host's) that run ``num_seeds`` seeds in
    the fewest rounds: 10 seeds on 8 devices use 5 devices, two seeds each, and no padding."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices to run the seeds on")
    rounds = -(-num_seeds // len(devices))
    return devices[: -(-num_seeds // rounds)]


def seed_mesh(devices: Sequence[jax.Device]) -> Mesh | None:
    """A one-axis mesh (``SEED_AXIS``) over ``devices``; None for a single device, where the
    seeds are plainly vmapped (``shard_seeds`` then commits everything to that device)."""
    if len(devices) == 1:
        return None
    return Mesh(np.asarray(devices, dtype=object), (SEED_AXIS,))


def shard_seeds(tree: Tree, mesh: Mesh | None, device: jax.Device | None = None) -> Tree:
    """Place every leaf's leading (seed) axis across the mesh (its length must divide evenly);
    without a mesh, put the whole tree on ``device`` (default: JAX's default device)."""
    if mesh is None:
        return jax.device_put(tree, device)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(SEED_AXIS)))


def replicate(tree: Tree, mesh: Mesh | None, device: jax.Device | None = None) -> Tree:
    """Place a full copy of every leaf on each device of the mesh (the shared data); without a
    mesh, on ``device``."""
    if mesh is None:
        return jax.device_put(tree, device)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def to_host(tree: Tree) -> Tree:
    """Numpy copies of every leaf, whole even when the seed axis spans several hosts (then
    gathered from every process with ``process_allgather``, which every process must call)."""
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def pad_seeds(values: Sequence, multiple: int) -> list:
    """Repeat the last entry until the length is a multiple of ``multiple`` (padding seeds,
    whose results are computed and thrown away, so that every device gets as many)."""
    values = list(values)
    return values + [values[-1]] * (-len(values) % multiple)


def over_seeds(fn: Callable, batched: Sequence[bool], mesh: Mesh | None) -> Callable:
    """``fn`` of one seed -> ``fn`` of a seed batch.

    ``batched[i]`` says whether positional argument ``i`` has a leading seed axis (states,
    per-seed indices) or is shared by every seed (the data, scalars). Without a mesh this is
    ``jax.vmap``. With one, the vmapped function runs under ``jax.shard_map``: every device
    applies it to its own block of seeds, so the compiled program has no communication at all
    (left to the automatic partitioner, XLA gathers the whole batch to every device around
    ``top_k``, which it cannot split).
    """
    vmapped = jax.vmap(fn, in_axes=tuple(0 if b else None for b in batched))
    if mesh is None:
        return vmapped
    specs = tuple(PartitionSpec(SEED_AXIS) if b else PartitionSpec() for b in batched)
    # check_vma=False: the per-seed code uses no collectives, so there is nothing to type-check
    # (and its lax.cond / lax.scan branches would need casts to "varying" otherwise).
    return jax.shard_map(
        vmapped, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(SEED_AXIS), check_vma=False
    )


@partial(jax.jit, static_argnames=("config", "mesh"))
def fit_input_statistics_seeds(
    states: SpaceNetState, config: SpaceNetConfig, images: Array, mesh: Mesh | None = None
) -> SpaceNetState:
    """``fit_input_statistics`` for every seed (the images are shared, so are the statistics)."""
    return over_seeds(lambda s, x: fit_input_statistics(s, config, x), [True, False],
                      mesh)(states, images)


@partial(jax.jit, static_argnames=("config", "mesh"))
def begin_tasks(
    states: SpaceNetState, config: SpaceNetConfig, mesh: Mesh | None = None
) -> tuple[SpaceNetState, dict[str, Array]]:
    """``begin_task`` for every seed: states and reports gain a leading seed axis.

    ``mesh``: the seed mesh the states are sharded over (``seed_mesh``), or None.
    """
    return over_seeds(lambda s: begin_task(s, config), [True], mesh)(states)


@partial(jax.jit, static_argnames=("config", "mesh"))
def end_tasks(
    states: SpaceNetState, config: SpaceNetConfig, mesh: Mesh | None = None
) -> SpaceNetState:
    """``end_task`` for every seed."""
    return over_seeds(lambda s: end_task(s, config), [True], mesh)(states)


@partial(jax.jit, static_argnames=("config", "mesh"), donate_argnames="states")
def train_epochs_and_rewire(
    states: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    labels: Array,
    task_indices: Array,
    num_examples: Array,
    rewire_after: Array,
    mesh: Mesh | None = None,
    first_layer_products: Array | None = None,
):
    """``train_epoch_and_rewire`` for every seed, as one program.

    Args:
      states: batched state ``(S, ...)``.
      images, labels: the shared training set, ``(N, D)`` and ``(N,)``.
      task_indices: int32 ``(S, steps * batch_size)``: each seed's stage, padded alike.
      num_examples: int32 scalar, the stage's number of examples (the same for every seed).
      rewire_after: bool scalar (the same for every seed, so ``lax.cond`` stays a branch).
      mesh: the seed mesh, or None.
      first_layer_products: ``first_layer_products_seeds`` of this stage, or None.

    Returns:
      ``(states, metrics, shortfall)`` with a leading seed axis on each.
    """

    def one_seed(state, images, labels, indices, num_examples, rewire_after, *products):
        return train_epoch_and_rewire(
            state, config, images, labels, indices, num_examples, rewire_after, *products
        )

    products = () if first_layer_products is None else (first_layer_products,)
    batched = [True, False, False, True, False, False] + [True] * len(products)
    return over_seeds(one_seed, batched, mesh)(
        states, images, labels, task_indices, num_examples, rewire_after, *products
    )


@partial(jax.jit, static_argnames=("config", "mesh"))
def first_layer_products_seeds(
    states: SpaceNetState, config: SpaceNetConfig, images: Array, task_indices: Array,
    mesh: Mesh | None = None,
) -> Array:
    """``subnetwork.first_layer_products`` for every seed: ``(S, len, units)``."""
    return over_seeds(
        lambda s, x, ix: first_layer_products(s, config, x, ix), [True, False, True], mesh
    )(states, images, task_indices)


@partial(jax.jit, static_argnames=("config", "mesh", "with_tasks"))
def predict_seeds(
    states: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    mesh: Mesh | None = None,
    with_tasks: bool = False,
) -> Array:
    """``predict`` for every seed: int ``(S, B)`` class predictions of images ``(B, D)``.

    With ``with_tasks``, ``predict_with_tasks`` instead: int ``(S, B, T + 1)`` (column 0 the
    class-incremental prediction, column ``1 + t`` the argmax over task t's classes).
    """
    fn = predict_with_tasks if with_tasks else predict
    return over_seeds(lambda s, x: fn(s, config, x), [True, False], mesh)(states, images)


def learn_tasks(
    states: SpaceNetState,
    config: SpaceNetConfig,
    data: TaskData,
    seeds: list[int],
    on_epoch: EpochCallback | None = None,
    mesh: Mesh | None = None,
) -> SpaceNetState:
    """``learn_task`` for a batch of seeds that are all at the same task.

    Args:
      states: batched state ``(S, ...)``, every seed before the same task.
      config: static configuration.
      data: the stage's data, ``data.indices`` int32 ``(S, steps * batch_size)``.
      seeds: the ``S`` seeds (padding included), to name a seed in capacity errors.
      on_epoch: ``on_epoch(task, epoch, metrics)`` after each epoch, metrics ``(S,)`` each.
      mesh: the seed mesh the states and indices are sharded over, or None.

    Raises:
      CapacityError: some seed ran out of neurons, connections or regrowth positions.
      DivergenceError: some seed's loss became NaN or infinite.
    """
    task = int(to_host(states.task)[0])
    if task == 0 and config.input_normalisation == "per_pixel":  # fitted once, then fixed
        states = fit_input_statistics_seeds(states, config, data.images, mesh)
    states, report = begin_tasks(states, config, mesh)
    check_allocation(to_host(report), task, seeds)
    num_examples = np.int32(data.num_examples)
    products = (
        first_layer_products_seeds(states, config, data.images, data.indices, mesh)
        if caches_first_layer_products(config, data.indices.shape[-1]) else None
    )

    def one_epoch(states: SpaceNetState, rewire_after: Array):
        return train_epochs_and_rewire(
            states, config, data.images, data.labels, data.indices, num_examples,
            rewire_after, mesh, products,
        )

    states = run_epochs(states, config, one_epoch, task, on_epoch, seeds, to_host)
    states = end_tasks(states, config, mesh)
    return fit_task_statistics(states, config, data.images, data.labels, data.indices,
                               data.num_examples, task, batched=True)

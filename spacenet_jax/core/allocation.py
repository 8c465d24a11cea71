"""Connection allocation (paper Algorithm 2): a new task's selected neurons and sparse connections.

For task ``t``, each hidden layer picks ``sel_l`` neurons uniformly at random among its free
(unreserved) neurons; every input pixel is selectable; at the output, the task's classes are
selected. Then each weight matrix gets ``connections_per_task[l]`` connections drawn uniformly at
random among the positions that join selected units of consecutive layers and that no task owns.
An allocated connection takes its value from the dense initial draw (``init_weights``).

The dense baselines (``finetune``, ``joint``) go through the same path with
``claim_all_connections``: every position and every unit belongs to the current task.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.state import FREE, SpaceNetState
from spacenet_jax.core.topk import top_k_mask

Array = jax.Array


def random_subset(key: Array, candidates: Array, k: int) -> tuple[Array, Array]:
    """Draw ``k`` (static) positions uniformly without replacement among ``candidates``.

    Args:
      key: PRNG key.
      candidates: bool array of any shape.
      k: how many to pick.

    Returns:
      ``(chosen, shortfall)``: bool array of ``candidates``' shape with exactly ``k`` True
      entries, and an int32 scalar: how many of them were not candidates (0 unless there were
      fewer than ``k`` candidates; callers report it as an error).
    """
    scores = jnp.where(candidates, jax.random.uniform(key, candidates.shape), -1.0)
    chosen = top_k_mask(scores, k)
    shortfall = jnp.sum(chosen & ~candidates, dtype=jnp.int32)
    return chosen, shortfall


def select_neurons(key: Array, free: Array, k: int) -> tuple[Array, Array]:
    """``k`` neurons drawn uniformly at random among the free ones (bool ``(n,)`` in and out).

    ``k`` equal to the layer's width selects every free neuron (the paper's CNN setting).
    """
    if k >= free.shape[0]:
        return free, jnp.zeros((), jnp.int32)
    return random_subset(key, free, k)


def layer_inputs(values: Array, config: SpaceNetConfig, layer: int) -> Array:
    """A per-unit array of unit layer ``layer``, one entry per input row of weight layer ``layer``.

    The same array except for the first dense layer of a CNN, whose inputs are the flattened
    features: each feature takes its feature map's entry (selection, importance).
    """
    index = config.input_units(layer)
    return values if index is None else values[jnp.asarray(index)]


@partial(jax.jit, static_argnames="config")
def allocate_connections(
    state: SpaceNetState, config: SpaceNetConfig
) -> tuple[SpaceNetState, dict[str, Array]]:
    """Algorithm 2 for task ``state.task``: select neurons, allocate the task's connections.

    Returns the new state (``selected``, ``connection_owner`` and ``weights`` updated, ``rng``
    advanced) and a report of int32 arrays for the host to check: ``neuron_shortfall`` (per
    hidden layer) and ``connection_shortfall`` (per layer), non-zero only when the layer had too
    few free neurons or free positions, and ``candidate_positions`` (per layer).
    """
    rng, *keys = jax.random.split(state.rng, 2 * config.num_layers + 1)
    task = state.task
    task_classes = jnp.asarray(config.class_masks())[task]

    selected = [jnp.ones((config.layer_sizes[0],), bool)]
    neuron_shortfall = []
    for h, owner in enumerate(state.neuron_owner):
        chosen, short = select_neurons(keys[h], owner == FREE, config.selected_neurons[h])
        selected.append(chosen)
        neuron_shortfall.append(short)
    selected.append(task_classes)

    weights, owners, shortfall, candidates_count = [], [], [], []
    for layer in range(config.num_layers):
        owner = state.connection_owner[layer]
        selected_in = layer_inputs(selected[layer], config, layer)
        candidates = selected_in[:, None] & selected[layer + 1][None, :] & (owner == FREE)
        new, short = random_subset(
            keys[config.num_layers + layer], candidates, config.connections_per_task[layer]
        )
        owners.append(jnp.where(new, task.astype(owner.dtype), owner))
        weights.append(jnp.where(new, state.init_weights[layer], state.weights[layer]))
        shortfall.append(short)
        candidates_count.append(jnp.sum(candidates, dtype=jnp.int32))

    state = state.replace(
        weights=tuple(weights),
        connection_owner=tuple(owners),
        selected=tuple(selected),
        rng=rng,
    )
    report = {
        "neuron_shortfall": jnp.stack(neuron_shortfall)
        if neuron_shortfall
        else jnp.zeros((0,), jnp.int32),
        "connection_shortfall": jnp.stack(shortfall),
        "candidate_positions": jnp.stack(candidates_count),
    }
    return state, report


@partial(jax.jit, static_argnames="config")
def claim_all_connections(
    state: SpaceNetState, config: SpaceNetConfig
) -> tuple[SpaceNetState, dict[str, Array]]:
    """The dense baselines' "allocation": the current task owns every position and unit.

    Positions no task owned yet (the first task) take their value from ``init_weights``, so the
    first task starts from the dense Glorot draw and later tasks continue from the trained
    weights, with nothing frozen. Returns the same ``(state, report)`` as
    ``allocate_connections``, with zero shortfalls.
    """
    task = state.task
    weights = tuple(
        jnp.where(owner == FREE, w0, w)
        for owner, w0, w in zip(
            state.connection_owner, state.init_weights, state.weights, strict=True
        )
    )
    owners = tuple(jnp.full_like(o, task.astype(o.dtype)) for o in state.connection_owner)
    selected = tuple(jnp.ones_like(s) for s in state.selected)
    state = state.replace(weights=weights, connection_owner=owners, selected=selected)
    report = {
        "neuron_shortfall": jnp.zeros((config.num_hidden,), jnp.int32),
        "connection_shortfall": jnp.zeros((config.num_layers,), jnp.int32),
        "candidate_positions": jnp.asarray([w.size for w in weights], jnp.int32),
    }
    return state, report

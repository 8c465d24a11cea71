"""Adaptive sparse training (paper Algorithm 3): drop and grow a task's connections.

After every epoch but the last, each hidden weight matrix of the current task:

* **drop**: removes the ``k_l = round(r * count_l)`` connections of lowest importance Omega;
* **grow**: adds ``k_l`` zero-initialised connections at the highest entries of the outer product
  ``G_l = a_{l-1} a_l^T`` of neuron importances (Eq. 4-5), among positions that join the task's
  selected neurons and that no task owns. As in the authors' implementation, a position dropped
  in this rewiring is not a candidate for regrowth in the same rewiring.

The task's connection count is unchanged, ``k_l`` is static (from the config), and everything is
masks and ``top_k``, so the whole rewiring is one jitted function.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from spacenet_jax.core.allocation import layer_inputs
from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.importance import neuron_importance
from spacenet_jax.core.state import FREE, SpaceNetState, make_optimizer
from spacenet_jax.core.topk import top_k_mask

Array = jax.Array


def drop_connections(
    owner: Array, weights: Array, importance: Array, task: Array, k: int
) -> tuple[Array, Array, Array]:
    """Remove the ``k`` current-task connections of lowest importance (Algorithm 3, line 7).

    Args:
      owner: int ``(fan_in, fan_out)`` connection owners of one layer.
      weights: ``(fan_in, fan_out)``.
      importance: Omega ``(fan_in, fan_out)``.
      task: the current task id.
      k: static number of connections to drop (at most the task's count in this layer).

    Returns:
      ``(owner, weights, dropped)``: dropped positions are FREE and zero. For a conv layer
      ``owner`` and ``importance`` are per kernel ``(in_maps, out_maps)`` and ``weights`` are
      ``(k, k, in_maps, out_maps)``: whole kernels are dropped.
    """
    current = owner == task
    dropped = top_k_mask(-jnp.where(current, importance, jnp.inf), k) & current
    owner = jnp.where(dropped, jnp.asarray(FREE, owner.dtype), owner)
    return owner, jnp.where(dropped, 0.0, weights), dropped


def grow_scores(
    in_importance: Array, out_importance: Array, candidates: Array
) -> Array:
    """Eq. 5: ``G = a_in a_out^T`` ``(fan_in, fan_out)``, -inf where growth is not allowed."""
    scores = in_importance[:, None] * out_importance[None, :]
    return jnp.where(candidates, scores, -jnp.inf)


def grow_connections(
    owner: Array,
    weights: Array,
    in_importance: Array,
    out_importance: Array,
    in_selected: Array,
    out_selected: Array,
    excluded: Array,
    task: Array,
    k: int,
) -> tuple[Array, Array, Array, Array]:
    """Add ``k`` zero-initialised connections at the top-k of Eq. 5 (Algorithm 3, lines 8-12).

    Args:
      owner, weights: ``(fan_in, fan_out)`` of one layer.
      in_importance, out_importance: neuron importances ``(fan_in,)`` and ``(fan_out,)``.
      in_selected, out_selected: bool, the task's selected units on each side.
      excluded: bool ``(fan_in, fan_out)``, positions that must not grow (just dropped).
      task: the current task id.
      k: static number of connections to grow.

    Returns:
      ``(owner, weights, grown, shortfall)``; ``shortfall`` (int32) counts grown positions that
      were not valid candidates: non-zero only if fewer than ``k`` free positions existed.
    """
    candidates = in_selected[:, None] & out_selected[None, :] & (owner == FREE) & ~excluded
    grown = top_k_mask(grow_scores(in_importance, out_importance, candidates), k)
    shortfall = jnp.sum(grown & ~candidates, dtype=jnp.int32)
    grown = grown & candidates
    owner = jnp.where(grown, task.astype(owner.dtype), owner)
    return owner, jnp.where(grown, 0.0, weights), grown, shortfall


@partial(jax.jit, static_argnames="config")
def rewire(state: SpaceNetState, config: SpaceNetConfig) -> tuple[SpaceNetState, Array]:
    """Drop then grow in every rewired layer; returns the state and the per-layer shortfall.

    Optimiser moments (with momentum) of positions that left or joined the task are zeroed, so a
    grown connection starts from zero weight and zero velocity.
    """
    a = neuron_importance(state.importance)
    owners, weights = list(state.connection_owner), list(state.weights)
    shortfall = [jnp.zeros((), jnp.int32)] * config.num_layers
    for layer in config.rewired_layers:
        k = config.rewire_counts[layer]
        if k == 0:
            continue
        owner, w, dropped = drop_connections(
            owners[layer], weights[layer], state.importance[layer], state.task, k
        )
        owner, w, _, short = grow_connections(
            owner,
            w,
            layer_inputs(a[layer], config, layer),
            a[layer + 1],
            layer_inputs(state.selected[layer], config, layer),
            state.selected[layer + 1],
            dropped,
            state.task,
            k,
        )
        owners[layer], weights[layer], shortfall[layer] = owner, w, short
    state = state.replace(weights=tuple(weights), connection_owner=tuple(owners))
    masks = (state.current_masks(), tuple(jnp.ones(b.shape, bool) for b in state.biases))
    opt_state = optax.tree_utils.tree_map_params(
        make_optimizer(config),
        lambda moment, mask: jnp.where(mask, moment, jnp.zeros_like(moment)),
        state.opt_state,
        masks,
        transform_non_params=lambda x: x,
    )
    return state.replace(opt_state=opt_state), jnp.stack(shortfall)

"""The shared single-headed output layer: store a finished task's columns, restore them all.

While task t trains, the live output layer holds only task t's connections; every other class's
logit is just its (frozen) bias. When the task ends its output columns are moved aside to
``saved_output_weights`` (the paper's ``W_L^saved``, Algorithm 1 lines 14-15). At prediction time
all stored columns go back into the output layer.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.state import FREE, SpaceNetState

Array = jax.Array


@partial(jax.jit, static_argnames="config")
def store_output_weights(state: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """Move the current task's output columns ``(fan_in_L, its classes)`` to the saved store."""
    columns = jnp.asarray(config.class_masks())[state.task][None, :]
    live = state.weights[-1]
    saved = jnp.where(columns, live, state.saved_output_weights)
    return state.replace(
        weights=(*state.weights[:-1], jnp.zeros_like(live)), saved_output_weights=saved
    )


@partial(jax.jit, static_argnames="config")
def keep_reserved_output_inputs(state: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """Keep only the current task's output connections that leave its reserved last-hidden
    units (``output_columns="reserved"``): the others are freed and zeroed, so a finished
    task's logits no longer read units that later tasks keep training. Call after
    ``reserve_neurons`` and before ``store_output_weights``."""
    last = config.num_layers - 1
    owner = state.connection_owner[last]
    reserved = (state.neuron_owner[-1] == state.task)[:, None]
    drop = (owner == state.task) & ~reserved
    weights = jnp.where(drop, 0.0, state.weights[last])
    owner = jnp.where(drop, jnp.asarray(FREE, owner.dtype), owner)
    return state.replace(
        weights=(*state.weights[:-1], weights),
        connection_owner=(*state.connection_owner[:-1], owner),
    )


def inference_weights(state: SpaceNetState) -> tuple[Array, ...]:
    """The deployed weights: live ones with all stored output columns put back.

    The live output columns (the task in training, if any) and the stored ones are disjoint, so
    their sum restores both.
    """
    return (*state.weights[:-1], state.weights[-1] + state.saved_output_weights)

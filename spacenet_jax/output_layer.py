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

from spacenet_jax.config import SpaceNetConfig
from spacenet_jax.state import SpaceNetState

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


def inference_weights(state: SpaceNetState) -> tuple[Array, ...]:
    """The deployed weights: live ones with all stored output columns put back.

    The live output columns (the task in training, if any) and the stored ones are disjoint, so
    their sum restores both.
    """
    return (*state.weights[:-1], state.weights[-1] + state.saved_output_weights)

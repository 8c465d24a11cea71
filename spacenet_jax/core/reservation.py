"""Neuron reservation (paper Algorithm 4).

After a task is trained, the ``spec_l`` most important of its selected neurons in each hidden
layer (importance from Eq. 4) become specific to it: they leave the free list, no later task
selects them, so no later connection goes into (or out of) them and their biases are frozen. The
other selected neurons stay free and can be shared with later tasks.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.importance import neuron_importance
from spacenet_jax.core.state import FREE, SpaceNetState
from spacenet_jax.core.topk import top_k_mask

Array = jax.Array


@partial(jax.jit, static_argnames="config")
def reserve_neurons(state: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """Mark the top-``spec_l`` selected free neurons of each hidden layer as owned by the task.

    ``neuron_owner[h]`` (int16 ``(n,)``) gets ``state.task`` at those neurons. Only free,
    selected neurons are candidates (their count is checked by the config to be at least spec).
    """
    a = neuron_importance(state.importance)
    owners = []
    for h, owner in enumerate(state.neuron_owner):
        spec = config.specific_neurons[h]
        candidates = state.selected[h + 1] & (owner == FREE)
        if spec == 0:
            owners.append(owner)
            continue
        scores = jnp.where(candidates, a[h + 1], -jnp.inf)
        reserved = top_k_mask(scores, spec) & candidates
        owners.append(jnp.where(reserved, state.task.astype(owner.dtype), owner))
    return state.replace(neuron_owner=tuple(owners))

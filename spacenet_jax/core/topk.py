"""The one place where scores become a fixed-size selection: the top ``k`` as a boolean mask.

Allocation (random connections), rewiring (drop the least important, grow the best-scored) and
reservation (the most important neurons) all pick a static number of entries, so that every
step jits with static shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def top_k_mask(scores: Array, k: int) -> Array:
    """bool array of ``scores``' shape, True at the ``k`` largest entries (over all axes).

    Ties are broken as ``jax.lax.top_k`` breaks them (the lower flat index first). ``k`` is
    static; entries scored ``-inf`` are chosen only when fewer than ``k`` others exist, so
    callers mask the result with their candidates where that matters.
    """
    _, index = jax.lax.top_k(scores.reshape(-1), k)
    return jnp.zeros(scores.size, bool).at[index].set(True).reshape(scores.shape)

"""Neuron importance (paper Eq. 4) from the connection importance Omega (Eq. 3).

The importance of a hidden neuron is the sum of the importance of its incoming connections; the
importance of an input unit, which has none, is the sum over its outgoing connections. Omega is
accumulated by the train step (``|g * delta_w|`` per step, Eq. 2-3) and reset at each new task.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def neuron_importance(importance: Sequence[Array]) -> tuple[Array, ...]:
    """Eq. 4 for unit layers 0 .. L-1 (inputs and hidden layers).

    Args:
      importance: Omega per weight matrix, ``(fan_in, fan_out)``.

    Returns:
      ``a_0`` ``(layer_sizes[0],)``: outgoing sums of the inputs; ``a_l`` ``(layer_sizes[l],)``
      for l = 1 .. L-1: incoming sums of hidden layer l.
    """
    inputs = jnp.sum(importance[0], axis=1)
    hidden = tuple(jnp.sum(omega, axis=0) for omega in importance[:-1])
    return (inputs, *hidden)

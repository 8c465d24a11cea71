"""Negatives without other tasks' data: a task's head learns to score its own images above
turned copies of them (``SpaceNetConfig.negatives``; beyond the paper).

Under per-task inference (``inference="per_task"``) each task's classes are scored by the
sub-network it was learned in, and the class-incremental prediction goes to the task whose
classes score highest. A head trained with the cross-entropy on its own two classes alone
scores high on any image, its own or not (the diagnosis in the README). Turned images are the
classic self-made outliers for one-class detection (Golan and El-Yaniv 2018; Hendrycks et al.
2019; CSI, Tack et al. 2020): they share the task's pixel statistics but not its upright
shapes. With ``negatives="rotations"`` every train step also runs its batch turned by a random
quarter turn (1, 2 or 3, one draw per step) and adds

    negatives_weight * mean_i max(0, MARGIN + lse(turned_i) - lse(upright_i))^2

to the loss, where ``lse`` is the logsumexp of the current task's own class logits (an energy
margin, as in outlier exposure, Liu et al. 2020). No image of another task is used, and none is
stored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

#: The margin by which a task's own upright images must out-score the turned ones (in logsumexp
#: units).
MARGIN = 1.0


def quarter_turn(x: Array, key: Array) -> Array:
    """``x`` ``(B, H, H, C)`` turned by 1, 2 or 3 quarter turns in the image plane, drawn with
    ``key`` (one draw for the whole batch)."""
    turns = [lambda a, k=k: jnp.rot90(a, k, axes=(1, 2)) for k in (1, 2, 3)]
    return jax.lax.switch(jax.random.randint(key, (), 0, 3), turns, x)


def own_logsumexp(logits: Array, own_classes: Array) -> Array:
    """``(B,)``: logsumexp of ``logits`` ``(B, C)`` over the classes where ``own_classes``
    ``(C,)`` is True."""
    return jax.nn.logsumexp(jnp.where(own_classes, logits, -jnp.inf), axis=-1)


def margin_penalty(
    upright_logits: Array, turned_logits: Array, own_classes: Array, example_weights: Array
) -> Array:
    """The weighted mean over the batch of ``max(0, MARGIN + lse(turned) - lse(upright))^2``.

    Args:
      upright_logits: ``(B, C)`` logits of the batch.
      turned_logits: ``(B, C)`` logits of the same images turned.
      own_classes: bool ``(C,)``, the current task's classes.
      example_weights: ``(B,)``, 0 for padding.
    """
    gap = MARGIN + own_logsumexp(turned_logits, own_classes) - own_logsumexp(
        upright_logits, own_classes)
    hinge = jnp.where(example_weights > 0, jax.nn.relu(gap) ** 2, 0.0)
    return jnp.sum(hinge * example_weights) / jnp.maximum(jnp.sum(example_weights), 1.0)

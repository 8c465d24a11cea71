"""Evaluation without task identity: per-task test accuracy of the single-headed network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.config import SpaceNetConfig
from spacenet_jax.network import predict
from spacenet_jax.state import SpaceNetState


def predict_in_chunks(
    state: SpaceNetState, config: SpaceNetConfig, images: np.ndarray | jax.Array,
    chunk: int = 2000, predict_fn: Callable[..., jax.Array] | None = None,
) -> np.ndarray:
    """``predict`` over ``images`` ``(N, D)`` in fixed-size chunks (one compilation; the last
    chunk is padded), so a CNN's activations for a whole test set never sit in memory at once.

    ``predict_fn(state, images)`` (default ``predict`` with ``config``) may return a leading
    seed axis, ``(S, chunk)``, as ``multiseed.predict_seeds`` does: the result is then
    ``(S, N)``.
    """
    if predict_fn is None:
        predict_fn = partial(predict, config=config)
    n = images.shape[0]
    chunk = min(chunk, n)
    out = []
    for start in range(0, n, chunk):
        part = images[start : start + chunk]
        if part.shape[0] < chunk:
            xp = np if isinstance(part, np.ndarray) else jnp
            pad = xp.zeros((chunk - part.shape[0], *part.shape[1:]), part.dtype)
            part = xp.concatenate([part, pad])
        out.append(np.asarray(predict_fn(state, images=part)))
    return np.concatenate(out, axis=-1)[..., :n]


def task_accuracies(
    predictions: np.ndarray,
    labels: np.ndarray,
    task_example_indices: Sequence[np.ndarray],
    learned: int,
) -> tuple[list[float | None], float]:
    """Per-task accuracy of ``predictions`` ``(N,)`` and the accuracy of the learned tasks'
    examples pooled; tasks ``>= learned`` get ``None``."""
    per_task: list[float | None] = []
    hits = total = 0
    for t, index in enumerate(task_example_indices):
        if t >= learned:
            per_task.append(None)
            continue
        correct = int(np.sum(predictions[index] == labels[index]))
        per_task.append(correct / len(index))
        hits += correct
        total += len(index)
    return per_task, (hits / total if total else float("nan"))


def evaluate_tasks(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: np.ndarray | jax.Array,
    labels: np.ndarray,
    task_example_indices: Sequence[np.ndarray],
) -> tuple[list[float | None], float]:
    """Accuracy on each learned task's test examples, and over all of them together.

    The prediction is the argmax over every class learned so far (no task identity), with all
    stored output columns restored. Tasks not learned yet get ``None``.

    Args:
      state: after ``state.task`` tasks.
      images: uint8 ``(N, D)`` test images; labels: ``(N,)``.
      task_example_indices: per task, the indices of its test examples.

    Returns:
      ``(per_task, overall)``: per-task accuracies and the accuracy over the learned tasks'
      examples pooled.
    """
    predictions = predict_in_chunks(state, config, images)
    return task_accuracies(
        predictions, np.asarray(labels), task_example_indices, int(state.task)
    )

"""Evaluation of the single-headed network: per-task test accuracy without task identity
(class-incremental), and with it (task-incremental: the argmax within the example's own task)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.inputs import check_images, check_labels
from spacenet_jax.core.network import predict, predict_with_tasks
from spacenet_jax.core.state import SpaceNetState


def predict_in_chunks(
    state: SpaceNetState, config: SpaceNetConfig, images: np.ndarray | jax.Array,
    chunk: int = 2000, predict_fn: Callable[..., jax.Array] | None = None,
    with_tasks: bool = False, count: int | None = None,
) -> np.ndarray:
    """``predict`` over ``images`` ``(N, D)`` in fixed-size chunks (one compilation; the last
    chunk is padded), so a CNN's activations for a whole test set never sit in memory at once.

    ``predict_fn(state, images)`` (default ``predict`` with ``config``) may return a leading
    seed axis, ``(S, chunk)``, as ``multiseed.predict_seeds`` does: the result is then
    ``(S, N)``. With ``with_tasks`` (default ``predict_fn``: ``predict_with_tasks``) each
    example has a trailing axis of ``T + 1`` columns: ``(chunk, T + 1)`` or
    ``(S, chunk, T + 1)`` per chunk, ``(N, T + 1)`` or ``(S, N, T + 1)`` in all.

    ``count`` predicts only the first ``count`` examples (default all), in chunks of the same
    size as for all of them (one compilation whatever the count).

    Raises ``InputError`` (before any work) unless ``images`` are uint8 ``(N, D)`` with ``D``
    the network's input width.
    """
    check_images(images, config)
    if predict_fn is None:
        predict_fn = partial(predict_with_tasks if with_tasks else predict, config=config)
    axis = -2 if with_tasks else -1  # the example axis
    chunk = min(chunk, images.shape[0])
    n = images.shape[0] if count is None else count
    if n == 0:
        raise ValueError("nothing to predict: count is 0")
    out = []
    for start in range(0, n, chunk):
        part = images[start : start + chunk]
        if part.shape[0] < chunk:
            xp = np if isinstance(part, np.ndarray) else jnp
            pad = xp.zeros((chunk - part.shape[0], *part.shape[1:]), part.dtype)
            part = xp.concatenate([part, pad])
        out.append(np.asarray(predict_fn(state, images=part)))
    whole = np.concatenate(out, axis=axis)
    return whole[..., :n, :] if with_tasks else whole[..., :n]


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

    Raises:
      InputError: images or labels that do not fit the network (``check_images``,
        ``check_labels``), before any work.
    """
    check_images(images, config)
    check_labels(labels, config, count=images.shape[0],
                 used=np.concatenate([np.asarray(i, np.int64) for i in task_example_indices]))
    predictions = predict_in_chunks(state, config, images)
    return task_accuracies(
        predictions, np.asarray(labels), task_example_indices, int(state.task)
    )


def task_il_predictions(
    per_task_predictions: np.ndarray, task_example_indices: Sequence[np.ndarray]
) -> np.ndarray:
    """Task-incremental predictions ``(N,)`` from ``per_task_predictions`` ``(N, T)`` (column
    t: the argmax over task t's classes): each example of task j takes column j. Examples of
    no task keep column 0 (they are never scored)."""
    out = np.array(per_task_predictions[:, 0], copy=True)
    for t, index in enumerate(task_example_indices):
        out[index] = per_task_predictions[index, t]
    return out


def class_and_task_il_accuracies(
    predictions: np.ndarray,
    labels: np.ndarray,
    task_example_indices: Sequence[np.ndarray],
    learned: int,
) -> tuple[tuple[list[float | None], float], tuple[list[float | None], float]]:
    """Class- and task-incremental accuracies from ``predict_with_tasks``'s columns.

    Args:
      predictions: int ``(N, T + 1)``: column 0 the class-incremental prediction, column
        ``1 + t`` the argmax over task t's classes.
      labels: ``(N,)``; task_example_indices: per task, the indices of its examples.
      learned: tasks learned so far (later tasks get ``None``).

    Returns:
      ``(class_il, task_il)``, each ``(per_task, pooled)`` as ``task_accuracies`` returns;
      task-IL judges task j's examples by the column for task j. Task-IL is never below
      class-IL: restricting the argmax to the true task's classes can only help.
    """
    class_il = task_accuracies(predictions[:, 0], labels, task_example_indices, learned)
    task_il = task_accuracies(
        task_il_predictions(predictions[:, 1:], task_example_indices),
        labels, task_example_indices, learned,
    )
    return class_il, task_il


def evaluate_tasks_both(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: np.ndarray | jax.Array,
    labels: np.ndarray,
    task_example_indices: Sequence[np.ndarray],
) -> tuple[tuple[list[float | None], float], tuple[list[float | None], float]]:
    """``evaluate_tasks`` and its task-incremental counterpart from one forward pass.

    Returns:
      ``(class_il, task_il)``, each ``(per_task, overall)``: ``class_il`` is what
      ``evaluate_tasks`` returns; ``task_il`` judges each example of task j by the argmax over
      task j's classes only (the task identity is given at test time).

    Raises:
      InputError: as ``evaluate_tasks``.
    """
    check_images(images, config)
    check_labels(labels, config, count=images.shape[0],
                 used=np.concatenate([np.asarray(i, np.int64) for i in task_example_indices]))
    predictions = predict_in_chunks(state, config, images, with_tasks=True)
    return class_and_task_il_accuracies(
        predictions, np.asarray(labels), task_example_indices, int(state.task)
    )

"""Why a task is or is not learned: the numbers behind ``python -m experiments.diagnose``.

Pure functions of states (e.g. restored after each task with
``spacenet_jax.storage.checkpoint.restore_task``) and test data, returning numpy arrays and
plain dicts:

* ``unit_activations``: every hidden unit's activation per example (a conv feature map's mean
  over its positions), and the logits of the deployed network;
* ``head_competition``: for each learned task, its accuracy class-incrementally (argmax over all
  classes seen) and task-incrementally (argmax over its own classes), and how its own classes'
  logits compare with the restored output columns of the other tasks on its test images;
* ``unit_drift``: how much the activations of a task's units moved between two states, on that
  task's test images (the reserved units of a task, through the units they share with later
  tasks);
* ``reachable_units``: how many of a task's selected units receive at least one of its own
  connections (a feature map no kernel of the task reaches carries only earlier tasks' input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.network import layer_outputs
from spacenet_jax.core.normalisation import preprocess
from spacenet_jax.core.output_layer import inference_weights
from spacenet_jax.core.state import FREE, SpaceNetState

__all__ = ["head_competition", "reachable_units", "unit_activations", "unit_drift"]


def _unit_activations_batch(
    state: SpaceNetState, config: SpaceNetConfig, images: jax.Array
) -> tuple[list[jax.Array], jax.Array]:
    hidden, _, logits = layer_outputs(
        inference_weights(state), state.biases,
        preprocess(images, config, state.input_statistics), config,
    )
    return [jnp.mean(h, axis=(1, 2)) if h.ndim == 4 else h for h in hidden], logits


_jit_unit_activations = jax.jit(_unit_activations_batch, static_argnames="config")


def unit_activations(
    state: SpaceNetState, config: SpaceNetConfig, images: np.ndarray, chunk: int = 1000
) -> tuple[list[np.ndarray], np.ndarray]:
    """Hidden unit activations and logits of the deployed network for uint8 images ``(N, D)``.

    Returns:
      ``(units, logits)``: per hidden layer a float32 ``(N, units)`` array (a conv layer's
      feature map: the mean of its ReLU output over positions, before pooling), and float32
      ``(N, num_classes)`` logits with every stored output column restored.
    """
    parts: list[tuple[list[np.ndarray], np.ndarray]] = []
    for start in range(0, len(images), chunk):
        units, logits = _jit_unit_activations(
            state, config, jnp.asarray(images[start : start + chunk])
        )
        parts.append(([np.asarray(u) for u in units], np.asarray(logits)))
    units = [np.concatenate([p[0][h] for p in parts]) for h in range(config.num_hidden)]
    return units, np.concatenate([p[1] for p in parts])


def head_competition(
    logits: np.ndarray,
    labels: np.ndarray,
    task_example_indices: Sequence[np.ndarray],
    config: SpaceNetConfig,
    learned: int,
) -> list[dict[str, float]]:
    """Per learned task: class-IL and task-IL accuracy and the logits competing for its images.

    Args:
      logits: ``(N, num_classes)`` of the deployed network; labels ``(N,)``.
      task_example_indices: per task, the indices of its test examples.
      learned: tasks learned so far (their classes are the ones predicted).

    Returns:
      One dict per learned task: ``class_il`` / ``task_il`` accuracy, ``own_logit`` (mean over
      its images of the largest logit of its own classes), ``other_logit`` (the largest logit
      of the other learned tasks' classes; NaN with one task), ``lost_to_other_tasks`` (the
      fraction of its images right task-incrementally but taken by another task's class).
    """
    masks = config.class_masks()
    seen = masks[:learned].any(axis=0)
    out = []
    for t in range(learned):
        index = np.asarray(task_example_indices[t])
        z, y = logits[index], np.asarray(labels)[index]
        own, others = masks[t], seen & ~masks[t]
        class_il = np.argmax(np.where(seen, z, -np.inf), axis=1) == y
        task_il = np.argmax(np.where(own, z, -np.inf), axis=1) == y
        other = np.max(np.where(others, z, -np.inf), axis=1) if others.any() else None
        out.append({
            "class_il": float(np.mean(class_il)),
            "task_il": float(np.mean(task_il)),
            "own_logit": float(np.mean(np.max(np.where(own, z, -np.inf), axis=1))),
            "other_logit": float(np.mean(other)) if other is not None else float("nan"),
            "lost_to_other_tasks": float(np.mean(task_il & ~class_il)),
        })
    return out


def unit_drift(before: np.ndarray, after: np.ndarray, units: np.ndarray) -> float:
    """Relative change ``||after - before|| / ||before||`` of the activations ``(N, n)`` of the
    selected ``units`` (bool ``(n,)``), over the same examples; NaN if none is selected."""
    if not np.any(units):
        return float("nan")
    b, a = before[:, units], after[:, units]
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def reachable_units(state: SpaceNetState, config: SpaceNetConfig, task: int) -> list[dict]:
    """Per hidden layer: the units task ``task`` could use (selected by it, or reserved by it:
    ``state`` may be after the task, when ``selected`` belongs to the next one) and how many
    of them receive at least one of the task's own connections.

    Returns one dict per hidden layer with ``reserved`` (units the task reserved),
    ``reached`` (units with an incoming connection of the task) and ``reserved_reached``.
    """
    host = jax.tree.map(np.asarray, jax.device_get(state))
    out = []
    for h in range(config.num_hidden):
        owner = host.connection_owner[h]  # (fan_in rows, units of layer h + 1)
        reached = np.any(owner == task, axis=0)
        reserved = host.neuron_owner[h] == task
        out.append({
            "units": int(owner.shape[1]),
            "reached": int(np.sum(reached)),
            "reserved": int(np.sum(reserved)),
            "reserved_reached": int(np.sum(reserved & reached)),
            "free": int(np.sum(host.neuron_owner[h] == FREE)),
        })
    return out


def summary_over_tasks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means over tasks of a list of ``head_competition`` rows."""
    keys = ("class_il", "task_il", "lost_to_other_tasks")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}

"""Which training examples each stage of a method sees (rehearsal's replay, joint's pooling).

A *stage* is one call of ``learn_task``. For SpaceNet, Static-SparseNN and fine-tuning, stage t
trains on task t's examples only. SpaceNet-Rehearsal's stage t trains on task t's examples plus a
replay memory of every earlier task: all of its training examples (``replay_per_task = 0``, the
paper's setting) or a fixed random subset of ``replay_per_task`` of them, drawn once when the task
ends and replayed unchanged in every later stage. Joint training has a single stage over the
pooled examples of all tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spacenet_jax.core.config import SpaceNetConfig


def replay_memory(
    task_examples: np.ndarray, replay_per_task: int, rng: np.random.Generator
) -> np.ndarray:
    """The examples of a finished task kept for replay: all, or ``replay_per_task`` at random.

    Args:
      task_examples: int ``(n,)`` indices of the task's training examples.
      replay_per_task: how many to keep (0 or ``>= n``: all of them).
      rng: numpy generator that draws the subset.

    Returns:
      int ``(min(n, replay_per_task) or n,)`` indices, in their original order.
    """
    if replay_per_task == 0 or replay_per_task >= len(task_examples):
        return np.asarray(task_examples)
    keep = rng.choice(len(task_examples), size=replay_per_task, replace=False)
    return np.asarray(task_examples)[np.sort(keep)]


def training_stages(
    config: SpaceNetConfig, task_examples: Sequence[np.ndarray], seed: int
) -> list[np.ndarray]:
    """The example indices of each training stage of ``config.method``.

    Args:
      config: the configuration (its ``method`` and ``replay_per_task``).
      task_examples: per task, the int indices of its training examples.
      seed: draws the replay subsets (``replay_per_task > 0``).

    Returns:
      ``config.num_stages`` int arrays of example indices.
    """
    if len(task_examples) != config.num_tasks:
        raise ValueError(
            f"{len(task_examples)} tasks of examples for a config of {config.num_tasks} tasks"
        )
    if config.joint:
        return [np.concatenate([np.asarray(ix) for ix in task_examples])]
    if not config.replay:
        return [np.asarray(ix) for ix in task_examples]
    rng = np.random.default_rng([seed, 0x5EB1A7])
    stages, memory = [], []
    for examples in task_examples:
        stages.append(np.concatenate([*memory, np.asarray(examples)]))
        memory.append(replay_memory(examples, config.replay_per_task, rng))
    return stages

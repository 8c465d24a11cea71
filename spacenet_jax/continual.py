"""SpaceNet over a task sequence (paper Algorithm 1): begin, train, rewire and end each task.

The baselines run through the same functions, switched by ``config.method`` (static, so each
method compiles its own specialised code): ``static`` never rewires; ``rehearsal`` keeps every
finished task's output columns live (frozen, but in the network, so that replayed examples see
their classes' logits); the dense ``finetune`` and ``joint`` claim every connection for the
current task and reserve nothing; ``joint`` learns all tasks in one stage.

``begin_task`` and ``end_task`` are jitted pure functions of the state; ``learn_task`` is the
host-side loop over epochs (one compiled ``train_epoch`` + ``rewire`` per epoch), which is the
only place that talks to the host, once per epoch, for progress and capacity checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.allocation import allocate_connections, claim_all_connections
from spacenet_jax.config import ConfigError, SpaceNetConfig
from spacenet_jax.output_layer import store_output_weights
from spacenet_jax.reservation import reserve_neurons
from spacenet_jax.rewiring import rewire
from spacenet_jax.state import SpaceNetState, make_optimizer
from spacenet_jax.training import EpochMetrics, train_epoch, train_epoch_stepwise

Array = jax.Array


class CapacityError(ConfigError):
    """A task found too few free neurons or free positions (detected on the device)."""


@partial(jax.jit, static_argnames="config")
def begin_task(
    state: SpaceNetState, config: SpaceNetConfig
) -> tuple[SpaceNetState, dict[str, Array]]:
    """Start task ``state.task``: reset Omega and the optimiser, allocate (Algorithm 2).

    Returns the state and the allocation report (shortfalls, see ``allocate_connections``).
    """
    state = state.replace(
        importance=jax.tree.map(jnp.zeros_like, state.importance),
        opt_state=make_optimizer(config).init(state.params),
    )
    if not config.sparse:
        return claim_all_connections(state, config)
    return allocate_connections(state, config)


@partial(jax.jit, static_argnames="config")
def end_task(state: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """Finish task ``state.task``: reserve neurons (Algorithm 4), store its output columns
    (Algorithm 1, lines 14-15), and move on to the next task.

    ``rehearsal`` keeps the output columns live instead of storing them; the dense baselines
    reserve and store nothing; ``joint`` has learned every task after its single stage.
    """
    if config.sparse:
        state = reserve_neurons(state, config)
    if config.sparse and not config.replay:
        state = store_output_weights(state, config)
    next_task = jnp.asarray(config.num_tasks, jnp.int32) if config.joint else state.task + 1
    return state.replace(task=next_task)


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One task's training data, in the fixed-shape form ``train_epoch`` expects.

    Attributes:
      images: uint8 ``(N, D)``, the whole training set (shared by all tasks, on the device).
      labels: int32 ``(N,)``.
      indices: int32 ``(S * batch_size,)``: this task's example indices, then padding.
      num_examples: the task's number of examples.
    """

    images: Array
    labels: Array
    indices: Array
    num_examples: int


def make_task_data(
    images: np.ndarray | Array,
    labels: np.ndarray | Array,
    task_example_indices: list[np.ndarray],
    batch_size: int,
) -> list[TaskData]:
    """Put the training set on the device once and pad every task to the same step count.

    All tasks share one padded length (the largest task rounded up to a whole batch), so the
    compiled epoch is reused by every task.
    """
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, jnp.int32)
    longest = max(len(ix) for ix in task_example_indices)
    length = -(-longest // batch_size) * batch_size
    tasks = []
    for ix in task_example_indices:
        padded = np.zeros(length, np.int32)
        padded[: len(ix)] = ix
        tasks.append(TaskData(images, labels, jnp.asarray(padded), len(ix)))
    return tasks


def _check_allocation(report: dict[str, Array], task: int) -> None:
    report = jax.device_get(report)
    for h, short in enumerate(np.atleast_1d(report["neuron_shortfall"])):
        if short:
            raise CapacityError(
                f"task {task}, hidden layer {h + 1}: {short} too few free neurons to select "
                f"from; lower selected_neurons or specific_neurons"
            )
    for layer, short in enumerate(report["connection_shortfall"]):
        if short:
            raise CapacityError(
                f"task {task}, layer {layer}: only {report['candidate_positions'][layer]} free "
                f"positions between the selected neurons, {short} short of the connections "
                f"asked for; lower connections_per_task[{layer}] or select more neurons"
            )


EpochCallback = Callable[[int, int, EpochMetrics], None]


def epoch_function(config: SpaceNetConfig):
    """``train_epoch`` (one ``lax.scan``), or ``train_epoch_stepwise`` for a CNN on the CPU,
    where XLA runs convolutions inside a loop body many times slower."""
    if config.is_cnn and jax.default_backend() == "cpu":
        return train_epoch_stepwise
    return train_epoch


def learn_task(
    state: SpaceNetState,
    config: SpaceNetConfig,
    data: TaskData,
    on_epoch: EpochCallback | None = None,
) -> SpaceNetState:
    """Algorithm 1, lines 11-15, for task ``state.task``.

    Args:
      state: the state before the task.
      config: static configuration.
      data: the task's training data.
      on_epoch: called as ``on_epoch(task, epoch, metrics)`` after each epoch (host side).

    Returns:
      The state after the task (its neurons reserved, output columns stored, ``task`` + 1).

    Raises:
      CapacityError: the task could not get its neurons, connections or regrowth positions.
    """
    task = int(state.task)
    if task >= config.num_tasks:
        raise ConfigError(
            f"all {config.num_tasks} tasks of the config are learned; nothing left to learn"
        )
    state, report = begin_task(state, config)
    _check_allocation(report, task)
    num_examples = jnp.asarray(data.num_examples, jnp.int32)
    run_epoch = epoch_function(config)
    for epoch in range(config.epochs):
        state, metrics = run_epoch(
            state, config, data.images, data.labels, data.indices, num_examples
        )
        if epoch < config.epochs - 1 and config.rewired_layers:
            state, shortfall = rewire(state, config)
            short = np.asarray(shortfall)
            if short.any():
                layer = int(np.argmax(short))
                raise CapacityError(
                    f"task {task}, epoch {epoch}, layer {layer}: {short[layer]} too few free "
                    f"positions between the selected neurons to regrow the dropped connections; "
                    f"lower rewire_ratio or connections_per_task[{layer}]"
                )
        if on_epoch is not None:
            on_epoch(task, epoch, jax.device_get(metrics))
    return end_task(state, config)

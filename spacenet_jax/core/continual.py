"""SpaceNet over a task sequence (paper Algorithm 1): begin, train, rewire and end each task.

The baselines run through the same functions, switched by ``config.method`` (static, so each
method compiles its own specialised code): ``static`` never rewires; ``rehearsal`` keeps every
finished task's output columns live (frozen, but in the network, so that replayed examples see
their classes' logits); the dense ``finetune`` and ``joint`` claim every connection for the
current task and reserve nothing; ``joint`` learns all tasks in one stage.

``begin_task``, ``end_task`` and ``train_epoch_and_rewire`` (an epoch's ``lax.scan`` over batches,
then drop and grow, as one compiled program) are jitted pure functions of the state;
``learn_task`` is the host-side loop over epochs. It reads nothing back from the device during a
task unless asked for per-epoch progress, and then only the epoch's metrics and rewiring
shortfall (a few numbers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.core.allocation import allocate_connections, claim_all_connections
from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.inputs import check_images, check_labels
from spacenet_jax.core.normalisation import fit_input_statistics
from spacenet_jax.core.output_layer import keep_reserved_output_inputs, store_output_weights
from spacenet_jax.core.reservation import reserve_neurons
from spacenet_jax.core.rewiring import rewire
from spacenet_jax.core.state import SpaceNetState, make_optimizer
from spacenet_jax.core.subnetwork import caches_first_layer_products, first_layer_products
from spacenet_jax.core.task_scores import fit_task_statistics
from spacenet_jax.core.training import EpochMetrics, train_epoch

Array = jax.Array


class CapacityError(ConfigError):
    """A task found too few free neurons or free positions (detected on the device)."""


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite: the task is abandoned before it ends, so the
    checkpoint after the previous task stays the latest one."""


@partial(jax.jit, static_argnames="config")
def begin_task(
    state: SpaceNetState, config: SpaceNetConfig
) -> tuple[SpaceNetState, dict[str, Array]]:
    """Start task ``state.task``: reset Omega and the optimiser, allocate (Algorithm 2).

    Returns the state and the allocation report (shortfalls, see ``allocate_connections``).
    """
    state = state.replace(
        importance=jax.tree.map(jnp.zeros_like, state.importance),
        # fresh moments, the same (possibly traced, per seed) learning rate and momentum
        opt_state=make_optimizer(config).init(state.params)._replace(
            hyperparams=state.opt_state.hyperparams
        ),
    )
    if not config.sparse:
        return claim_all_connections(state, config)
    return allocate_connections(state, config)


@partial(jax.jit, static_argnames="config")
def end_task(state: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """Finish task ``state.task``: reserve neurons (Algorithm 4), keep its biases for
    per-task inference, store its output columns (Algorithm 1, lines 14-15), and move on to the
    next task.

    ``rehearsal`` keeps the output columns live instead of storing them; the dense baselines
    reserve and store nothing; ``joint`` has learned every task after its single stage.
    """
    if config.sparse:
        state = reserve_neurons(state, config)
    if config.inference == "per_task":
        state = state.replace(task_biases=tuple(
            kept.at[state.task].set(b) for kept, b in zip(state.task_biases, state.biases,
                                                          strict=True)
        ))
    if config.stores_output_columns:
        if config.output_columns == "reserved":
            state = keep_reserved_output_inputs(state, config)
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


def pad_stage_indices(
    task_example_indices: list[np.ndarray], batch_size: int
) -> tuple[np.ndarray, list[int]]:
    """Pad every task's example indices to one length: the longest task rounded up to a
    whole batch, so the compiled epoch is reused by every task.

    Returns:
      int32 ``(T, length)`` padded indices and the ``T`` real counts.
    """
    longest = max(len(ix) for ix in task_example_indices)
    length = -(-longest // batch_size) * batch_size
    padded = np.zeros((len(task_example_indices), length), np.int32)
    for t, ix in enumerate(task_example_indices):
        padded[t, : len(ix)] = ix
    return padded, [len(ix) for ix in task_example_indices]


def on_device(x: np.ndarray | Array, dtype: Any = None) -> Array:
    """``x`` on the default device, as ``dtype`` if given.

    A host array is transferred with ``jax.device_put``: ``jnp.asarray`` would run (and, in
    a fresh process, trace, lower and load) a small compiled program per shape and dtype,
    which costs start-up time. A device array is returned as it is (cast if needed).
    """
    if isinstance(x, jax.Array):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype))


def make_task_data(
    images: np.ndarray | Array,
    labels: np.ndarray | Array,
    task_example_indices: list[np.ndarray],
    batch_size: int,
) -> list[TaskData]:
    """Put the training set on the device once and pad every task to the same step count."""
    images = on_device(images)
    labels = on_device(labels, np.int32)
    padded, counts = pad_stage_indices(task_example_indices, batch_size)
    return [
        TaskData(images, labels, on_device(ix), n)
        for ix, n in zip(padded, counts, strict=True)
    ]


def _per_seed(values: Any, seeds: list[int] | None) -> tuple[Any, list[str]]:
    """Host copies with a leading seed axis (added when ``seeds`` is None), and row labels."""
    values = jax.tree.map(np.asarray, jax.device_get(values))
    if seeds is None:
        return jax.tree.map(lambda x: x[None], values), [""]
    return values, [f"seed {s}, " for s in seeds]


def check_allocation(
    report: dict[str, Array], task: int, seeds: list[int] | None = None
) -> None:
    """Raise ``CapacityError`` if ``begin_task``'s report has a shortfall.

    With ``seeds``, every entry of ``report`` has a leading seed axis (a vmapped run).
    """
    report, where = _per_seed(report, seeds)
    for row, tag in enumerate(where):
        for h, short in enumerate(report["neuron_shortfall"][row]):
            if short:
                raise CapacityError(
                    f"{tag}task {task + 1}, hidden layer {h + 1}: {short} too few free neurons to "
                    f"select from; lower selected_neurons or specific_neurons"
                )
        for layer, short in enumerate(report["connection_shortfall"][row]):
            if short:
                raise CapacityError(
                    f"{tag}task {task + 1}, weight matrix {layer + 1}: only "
                    f"{report['candidate_positions'][row][layer]} free positions between the "
                    f"selected neurons, {short} short of the connections asked for; lower "
                    f"connections_per_task[{layer}] or select more neurons"
                )


def check_rewiring(
    shortfall: Array, task: int, epoch: int, seeds: list[int] | None = None
) -> None:
    """Raise ``CapacityError`` if an epoch's rewiring could not regrow what it dropped.

    ``shortfall``: int ``(num_layers,)``, or ``(seeds, num_layers)`` with ``seeds`` given.
    """
    shortfall, where = _per_seed(shortfall, seeds)
    for short, tag in zip(shortfall, where, strict=True):
        if short.any():
            layer = int(np.argmax(short))
            raise CapacityError(
                f"{tag}task {task + 1}, epoch {epoch + 1}, weight matrix {layer + 1}: "
                f"{short[layer]} too few free "
                f"positions between the selected neurons to regrow the dropped connections; "
                f"lower rewire_ratio or connections_per_task[{layer}]"
            )


def check_finite(
    metrics: EpochMetrics, task: int, epoch: int, config: SpaceNetConfig,
    seeds: list[int] | None = None,
) -> None:
    """Raise ``DivergenceError`` if an epoch's loss became NaN or infinite (per seed with
    ``seeds``), naming the task, the epoch and the first bad step."""
    steps, where = _per_seed(metrics.nonfinite_step, seeds)
    for step, tag in zip(steps, where, strict=True):
        if step >= 0:
            raise DivergenceError(
                f"{tag}task {task + 1}, epoch {epoch + 1}, step {step + 1}: the training loss "
                f"is NaN or "
                f"infinite; lower the learning rate (now {config.learning_rate}) or the "
                f"momentum (now {config.momentum}). The task was abandoned: the checkpoint "
                f"after the previous task, if any, is the last good one"
            )


EpochCallback = Callable[[int, int, EpochMetrics], None]


def rewire_if(
    state: SpaceNetState, config: SpaceNetConfig, rewire_now: Array
) -> tuple[SpaceNetState, Array]:
    """``rewire`` when the bool scalar ``rewire_now`` is true (``lax.cond``), else nothing.

    Returns the state and the per-layer regrowth shortfall, int32 ``(num_layers,)``. Methods
    that never rewire compile no rewiring at all.
    """
    nothing = jnp.zeros((config.num_layers,), jnp.int32)
    if not config.rewired_layers:
        return state, nothing
    return jax.lax.cond(
        rewire_now, lambda s: rewire(s, config), lambda s: (s, nothing), state
    )


@partial(jax.jit, static_argnames="config", donate_argnames="state")
def train_epoch_and_rewire(
    state: SpaceNetState,
    config: SpaceNetConfig,
    images: Array,
    labels: Array,
    task_indices: Array,
    num_examples: Array,
    rewire_after: Array,
    first_layer_products: Array | None = None,
) -> tuple[SpaceNetState, EpochMetrics, Array]:
    """One epoch of Algorithm 1 (lines 11-13) as a single compiled program.

    ``train_epoch`` (a ``lax.scan`` over the epoch's batches), then, if the bool scalar
    ``rewire_after`` is true (every epoch but the last), drop and grow (Algorithm 3).

    Args: those of ``train_epoch``, and ``rewire_after``.

    Returns:
      ``(state, metrics, shortfall)``: ``shortfall`` int32 ``(num_layers,)`` counts connections
      that could not be regrown (non-zero means the configuration is out of capacity).
    """
    state, metrics = train_epoch(state, config, images, labels, task_indices, num_examples,
                                 first_layer_products)
    state, shortfall = rewire_if(state, config, rewire_after)
    return state, metrics, shortfall


def run_epochs(
    state: Any,
    config: SpaceNetConfig,
    one_epoch: Callable[[Any, Array], tuple[Any, EpochMetrics, Array]],
    task: int,
    on_epoch: EpochCallback | None = None,
    seeds: list[int] | None = None,
    to_host: Callable[[Any], Any] = jax.device_get,
) -> Any:
    """The epochs of a task: ``one_epoch(state, rewire_after)`` ``config.epochs`` times, with
    every epoch's divergence and rewiring checks.

    Without ``on_epoch`` nothing is read back from the device before the last epoch is
    dispatched (the checks then run once, at the end); with it, each epoch's few numbers are
    read for the progress report. ``seeds`` (a batched state) names the seeds in errors, and
    ``to_host`` copies the results to the host (``multiseed.to_host`` across hosts).
    """
    pending = []
    for epoch in range(config.epochs):
        state, metrics, shortfall = one_epoch(state, np.bool_(epoch < config.epochs - 1))
        pending.append((epoch, metrics, shortfall))
        if on_epoch is None and epoch < config.epochs - 1:
            continue
        # Only the arrays go to the host: gathered across processes, a Python epoch number
        # would come back as one copy per process.
        hosted = to_host([(metrics, shortfall) for _, metrics, shortfall in pending])
        for (done, _, _), (metrics, shortfall) in zip(pending, hosted, strict=True):
            check_finite(metrics, task, done, config, seeds)
            check_rewiring(shortfall, task, done, seeds)
            if on_epoch is not None:
                on_epoch(task, done, metrics)
        pending = []
    return state


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
      InputError: images that are not uint8 ``(N, D)`` with the network's input width, or
        labels outside the output layer (checked before any work: shapes, dtypes, min/max).
      CapacityError: the task could not get its neurons, connections or regrowth positions.
      DivergenceError: the loss became NaN or infinite.
    """
    task = int(state.task)
    if task >= config.num_tasks:
        raise ConfigError(
            f"all {config.num_tasks} tasks of the config are learned; nothing left to learn"
        )
    check_images(data.images, config, f"task {task + 1}'s training images")
    check_labels(data.labels, config, f"task {task + 1}'s training labels",
                 data.images.shape[0], used=np.asarray(data.indices)[: data.num_examples])
    if task == 0:
        state = fit_input_statistics(state, config, data.images)
    state, report = begin_task(state, config)
    check_allocation(report, task)
    num_examples = np.int32(data.num_examples)
    products = (
        first_layer_products(state, config, data.images, data.indices)
        if caches_first_layer_products(config, data.indices.shape[-1]) else None
    )

    def one_epoch(state: SpaceNetState, rewire_after: Array):
        return train_epoch_and_rewire(
            state, config, data.images, data.labels, data.indices, num_examples, rewire_after,
            products,
        )

    state = run_epochs(state, config, one_epoch, task, on_epoch)
    state = end_task(state, config)
    return fit_task_statistics(state, config, data.images, data.labels, data.indices,
                               data.num_examples, task)

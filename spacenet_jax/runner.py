"""Run a whole task sequence for one seed and record what a continual-learning study reports.

The record is plain JSON: the accuracy matrix, final per-task / average / overall accuracy,
forgetting and backward transfer, connections per task and layer, free neurons per hidden layer
after each task, and wall-clock seconds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from spacenet_jax import metrics
from spacenet_jax.config import ConfigError, SpaceNetConfig
from spacenet_jax.continual import learn_task, make_task_data
from spacenet_jax.data import ImageDataset, task_indices
from spacenet_jax.evaluation import evaluate_tasks
from spacenet_jax.stages import training_stages
from spacenet_jax.state import FREE, SpaceNetState, init_state

TaskEndCallback = Callable[[int, SpaceNetState, dict[str, Any]], None]


def connection_counts(state: SpaceNetState, num_tasks: int) -> list[list[int]]:
    """``[task][layer]``: how many connections each task owns in each weight matrix."""
    counts = []
    owners = [np.asarray(o) for o in jax.device_get(state.connection_owner)]
    for t in range(num_tasks):
        counts.append([int(np.sum(o == t)) for o in owners])
    return counts


def free_neuron_counts(state: SpaceNetState) -> list[int]:
    """Free (unreserved) neurons per hidden layer."""
    return [int(np.sum(np.asarray(o) == FREE)) for o in jax.device_get(state.neuron_owner)]


def check_dataset(config: SpaceNetConfig, dataset: ImageDataset) -> None:
    """Refuse a dataset whose images or classes do not fit the network, before any training."""
    width = int(np.prod(config.image_shape)) if config.is_cnn else config.layer_sizes[0]
    pixels = dataset.train_images.shape[1]
    if pixels != width:
        shape = getattr(dataset, "image_shape", None)
        raise ConfigError(
            f"{dataset.name} images have {pixels} values each (shape {shape}) but the network "
            f"takes {width} (image_shape={config.image_shape or None}, layer_sizes[0]="
            f"{config.layer_sizes[0]}); use the experiment made for this dataset"
        )
    wanted = {c for classes in config.task_classes for c in classes}
    present = set(np.unique(dataset.train_labels).tolist())
    missing = sorted(wanted - present)
    if missing:
        raise ConfigError(
            f"the tasks name classes {missing} that {dataset.name}'s training set does not have"
        )


def run_task_sequence(
    config: SpaceNetConfig,
    dataset: ImageDataset,
    seed: int,
    *,
    benchmark: str = "split_mnist",
    progress: bool = True,
    on_task_end: TaskEndCallback | None = None,
    resume_from: tuple[SpaceNetState, dict[str, Any]] | None = None,
) -> tuple[SpaceNetState, dict[str, Any]]:
    """Learn ``config.task_classes`` one task after the other on ``dataset``.

    After each task the network is evaluated on the test sets of all tasks learned so far
    (single-headed, over every class seen), which fills one row of the accuracy matrix. The
    method (``config.method``) decides what each stage trains on (``training_stages``); ``joint``
    has a single stage, after which all tasks are evaluated (a one-row matrix).

    Args:
      config: the SpaceNet configuration (its ``task_classes`` define the tasks).
      dataset: train and test images (uint8, flattened) and labels.
      seed: PRNG seed (network initialisation, allocation, shuffling).
      benchmark: name stored in the record.
      progress: show a progress bar per epoch (on stderr).
      on_task_end: called as ``on_task_end(task, state, partial_record)`` after each task.
      resume_from: ``(state, record)`` after some tasks of this same run (config, seed,
        benchmark), e.g. from ``spacenet_jax.checkpoint.restore_task``: the sequence continues
        from there and ends exactly as an uninterrupted run would (the data order and every
        random draw come from the seed and ``state.rng``); only ``seconds`` differ, its total
        adding this call's time to the record's.

    Returns:
      The final state and the run record (see ``results.json`` in the README).
    """
    check_dataset(config, dataset)
    start = time.perf_counter()
    stages = config.num_stages
    unit = "stage" if config.joint else "task"  # joint learns every task in one stage
    train_tasks = make_task_data(
        dataset.train_images,
        dataset.train_labels,
        training_stages(config, task_indices(dataset.train_labels, config.task_classes), seed),
        config.batch_size,
    )
    test_index = task_indices(dataset.test_labels, config.task_classes)
    test_images = jax.device_put(dataset.test_images)
    state = init_state(config, seed)

    acc_matrix: list[list[float | None]] = []
    overall: list[float] = []
    free_neurons: list[list[int]] = []
    task_seconds: list[float] = []
    first = 0
    if resume_from is not None:
        state, done = resume_from
        state = jax.device_put(state)
        _check_resume(config, seed, benchmark, state, done)
        acc_matrix = [list(row) for row in done["acc_matrix"]]
        overall = [done["final_overall_acc"]]  # only the latest one enters the record
        free_neurons = [list(row) for row in done["free_neurons"]]
        task_seconds = list(done["seconds"]["per_task"])
        start -= done["seconds"]["total"]
        first = len(acc_matrix)
    # A live bar on a terminal; one plain line per epoch in logs (CI, nohup, files).
    interactive = progress and sys.stderr.isatty()
    tag = f"{benchmark} {config.method} seed {seed}"
    bar = tqdm(
        total=stages * config.epochs, initial=first * config.epochs, desc=tag,
        disable=not interactive,
        leave=False, dynamic_ncols=True, file=sys.stderr,
    )

    def on_epoch(task: int, epoch: int, m: Any) -> None:
        line = (
            f"{unit} {task + 1}/{stages} epoch {epoch + 1}/{config.epochs} "
            f"loss {float(m.loss):.4f} train acc {float(m.accuracy):.4f}"
        )
        if interactive:
            bar.set_postfix_str(line)
            bar.update(1)
        elif progress:
            print(f"[{tag}] {line}", file=sys.stderr, flush=True)

    record: dict[str, Any] = {}
    if first:
        record = _record(
            benchmark, seed, config, acc_matrix, overall, state, free_neurons,
            task_seconds, time.perf_counter() - start,
        )
    for t in range(first, stages):
        task_start = time.perf_counter()
        state = learn_task(state, config, train_tasks[t], on_epoch=on_epoch)
        row, pooled = evaluate_tasks(
            state, config, test_images, dataset.test_labels, test_index
        )
        acc_matrix.append(row)
        overall.append(pooled)
        free_neurons.append(free_neuron_counts(state))
        task_seconds.append(time.perf_counter() - task_start)
        if progress:
            seen = [a for a in row if a is not None]
            shown = " ".join(f"{a:.3f}" for a in seen)
            bar.write(
                f"[{tag}] {unit} {t + 1}/{stages} done in "
                f"{task_seconds[-1]:.1f}s: test accuracy per task {shown} | "
                f"mean {np.mean(seen):.4f}",
                file=sys.stderr,
            )
        record = _record(
            benchmark, seed, config, acc_matrix, overall, state, free_neurons,
            task_seconds, time.perf_counter() - start,
        )
        if on_task_end is not None:
            on_task_end(t, state, record)
    bar.close()
    return state, record


def _check_resume(
    config: SpaceNetConfig, seed: int, benchmark: str, state: SpaceNetState, done: dict[str, Any]
) -> None:
    """Refuse a partial record that is not an earlier point of this very run."""
    same_config = json.loads(json.dumps(done.get("config"))) == json.loads(
        json.dumps(config.to_dict())
    )
    if not same_config or done.get("seed") != seed or done.get("benchmark") != benchmark:
        raise ConfigError(
            f"cannot resume {benchmark} seed {seed} from a record of {done.get('benchmark')} "
            f"seed {done.get('seed')}"
            + ("" if same_config else " made with another configuration")
        )
    rows = len(done["acc_matrix"])
    if not 0 < rows <= config.num_stages or int(state.task) != done["tasks_learned"]:
        raise ConfigError(
            f"cannot resume: the record has {rows} rows and {done['tasks_learned']} tasks "
            f"learned, the state {int(state.task)} tasks (of {config.num_stages} stages)"
        )


def _record(
    benchmark: str,
    seed: int,
    config: SpaceNetConfig,
    acc_rows: list[list[float | None]],
    overall: list[float],
    state: SpaceNetState,
    free_neurons: list[list[int]],
    task_seconds: list[float],
    total_seconds: float,
) -> dict[str, Any]:
    learned = int(state.task)
    final = [float(a) for a in acc_rows[-1][:learned]]
    record: dict[str, Any] = {
        "benchmark": benchmark,
        "method": config.method,
        "seed": seed,
        "config": config.to_dict(),
        "tasks_learned": learned,
        "acc_matrix": [list(row) for row in acc_rows],
        "final_task_acc": final,
        "final_avg_acc": float(np.mean(final)),
        "final_overall_acc": overall[-1],
        # Joint training has no sequence, hence nothing to forget: these are None.
        "forgetting": None,
        "avg_forgetting": None,
        "backward_transfer": None,
        "connections_per_task": connection_counts(state, learned) if config.sparse else None,
        "connections_used": [int(np.sum(np.asarray(o) != FREE)) for o in state.connection_owner],
        "free_neurons": free_neurons,
        "seconds": {"total": total_seconds, "per_task": task_seconds},
    }
    if not config.joint:
        square = [row[:learned] for row in acc_rows]
        record.update(
            forgetting=metrics.forgetting(square),
            avg_forgetting=metrics.average_forgetting(square),
            backward_transfer=metrics.backward_transfer(square),
        )
    return record

"""Run a whole task sequence for one seed and record what a continual-learning study reports.

The record is plain JSON: the accuracy matrix (class-incremental, and task-incremental beside
it), final per-task / average / overall accuracy, forgetting and backward transfer, connections
per task and layer, free neurons per hidden layer after each task, and wall-clock seconds.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from spacenet_jax.core.config import ConfigError, SpaceNetConfig, matches_saved
from spacenet_jax.core.continual import TaskData, learn_task, make_task_data, pad_stage_indices
from spacenet_jax.core.inputs import check_images, check_labels
from spacenet_jax.core.normalisation import TRACED_INPUT_NORMALISATION, with_dataset_normalisation
from spacenet_jax.core.stages import training_stages
from spacenet_jax.core.state import (
    TRACED_HYPERPARAMETERS,
    SpaceNetState,
    connection_counts,
    connections_used,
    free_neuron_counts,
    init_state,
    with_hyperparameters,
)
from spacenet_jax.running import metrics
from spacenet_jax.running.evaluation import class_and_task_il_accuracies, predict_in_chunks
from spacenet_jax.storage.data import ImageDataset, hold_out_validation, task_indices

#: What the members of one batch may vary without recompiling (``run_task_sequences``'
#: ``settings``): the optimiser's traced hyper-parameters and the dataset's mean and sd.
TRACED_SETTINGS = (*TRACED_HYPERPARAMETERS, *TRACED_INPUT_NORMALISATION)

TaskEndCallback = Callable[[int, SpaceNetState, dict[str, Any]], None]
#: ``(seed, task, state, partial_record)``, called for every seed of a batch after each task.
SeedTaskEndCallback = Callable[[int, int, SpaceNetState, dict[str, Any]], None]
#: ``(seed, task, epoch, loss, train_accuracy)``, called for every seed after each epoch.
EpochEndCallback = Callable[[int, int, int, float, float], None]


def check_dataset(config: SpaceNetConfig, dataset: ImageDataset) -> None:
    """Refuse a dataset whose images or classes do not fit the network, before any training.

    Images must be uint8 ``(N, D)`` with ``D`` the network's input (``input_width``), labels
    integers within the output layer, one per image, and every class of the tasks must have
    training examples. Only shapes, dtypes and the labels' range and classes are looked at.

    Raises:
      ConfigError (``InputError`` for the images and labels): what is wrong and how to fix it.
    """
    wanted = {c for classes in config.task_classes for c in classes}
    for split, words in (("train", "training"), ("test", "test")):
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        check_images(images, config, f"{dataset.name} {words} images")
        # Examples of classes no task names are never used, so they may lie outside the
        # output layer (the tasks' classes cannot: the configuration checks them).
        check_labels(labels, config, f"{dataset.name} {words} labels", count=images.shape[0],
                     used=np.flatnonzero(np.isin(np.asarray(labels), sorted(wanted))))
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
    on_epoch_end: EpochEndCallback | None = None,
) -> tuple[SpaceNetState, dict[str, Any]]:
    """Learn ``config.task_classes`` one task after the other on ``dataset``, for one seed.

    After each task the network is evaluated on the test sets of all tasks learned so far
    (single-headed, over every class seen), which fills one row of the accuracy matrix; one
    row of the task-incremental matrix comes from the same forward pass (each task's examples
    judged by the argmax over that task's classes only). The
    method (``config.method``) decides what each stage trains on (``training_stages``); ``joint``
    has a single stage, after which all tasks are evaluated (a one-row matrix).

    Args:
      config: the SpaceNet configuration (its ``task_classes`` define the tasks).
      dataset: train and test images (uint8, flattened) and labels.
      seed: PRNG seed (network initialisation, allocation, shuffling).
      benchmark: name stored in the record.
      progress: show a progress bar per epoch (on stderr).
      on_task_end: called as ``on_task_end(task, state, partial_record)`` after each task.
      on_epoch_end: called as ``on_epoch_end(seed, task, epoch, loss, train_accuracy)`` after
        every epoch (``task`` and ``epoch`` 0-based, like ``on_task_end``'s ``task``), e.g. to
        log the training curves.
      resume_from: ``(state, record)`` after some tasks of this same run (config, seed,
        benchmark), e.g. from ``storage.checkpoint.restore_task``: the sequence continues
        from there and ends exactly as an uninterrupted run would (the data order and every
        random draw come from the seed and ``state.rng``); only ``seconds`` differ, its total
        adding this call's time to the record's.

    Returns:
      The final state and the run record (see ``results.json`` in the README).
    """
    check_dataset(config, dataset)
    dataset = hold_out_validation(dataset, config.validation_per_class, config.validation_seed)
    if resume_from is not None:
        _check_resume(config, seed, benchmark, *resume_from)
    callback = None if on_task_end is None else lambda _seed, t, st, r: on_task_end(t, st, r)
    states, records = _run_sequence(
        config, dataset, _OneSeed(config, dataset, seed, resume_from),
        None if resume_from is None else [resume_from[1]],
        benchmark=benchmark, progress=progress, on_task_end=callback, on_epoch_end=on_epoch_end,
    )
    return states[0], records[0]


def run_task_sequences(
    config: SpaceNetConfig,
    dataset: ImageDataset,
    seeds: list[int],
    *,
    benchmark: str = "split_mnist",
    progress: bool = True,
    on_task_end: SeedTaskEndCallback | None = None,
    resume_from: dict[int, tuple[SpaceNetState, dict[str, Any]]] | None = None,
    on_epoch_end: EpochEndCallback | None = None,
    devices: list[jax.Device] | None = None,
    settings: Sequence[Mapping[str, float]] | None = None,
) -> list[tuple[SpaceNetState, dict[str, Any]]]:
    """``run_task_sequence`` for several seeds at once: one vmapped program per epoch.

    The seed is a batched axis of the state (``spacenet_jax.running.multiseed``), sharded over
    ``devices`` (default: every device, of every host after ``jax.distributed.initialize``; as
    few as give the fewest rounds, see ``seed_devices``). Each seed's state and record are
    those of ``run_task_sequence`` with that seed (the tests check it), except for ``seconds``,
    which are the batch's, and ``batch``, which names the seeds that ran together. A single
    seed runs the single-seed program on the default device.

    Args:
      seeds: distinct seeds.
      on_task_end: called as ``on_task_end(seed, task, state, partial_record)`` for every seed
        after each task.
      resume_from: per seed, ``(state, record)`` to continue from; seeds given here must all be
        at the same task, and every other seed starts fresh, so either every seed or none of
        them is in it (``study.seed_batches`` groups the seeds by where they resume).
      settings: per entry of ``seeds``, traced settings (``TRACED_SETTINGS``: the learning
        rate and momentum, held in the optimiser state, and, for the ``"dataset"``
        normalisation, ``input_mean`` / ``input_std``, held in ``state.input_statistics``;
        e.g. ``{"learning_rate": 0.02}``) that member
        trains with instead of ``config``'s, in the same compiled program (a sweep); its record's
        ``config`` names them, and it equals the run of that configuration. A seed may then
        repeat with other settings. Not with ``resume_from``.
      Other arguments: as for ``run_task_sequence``.

    Returns:
      ``(state, record)`` per seed, in the order of ``seeds``.
    """
    check_dataset(config, dataset)
    dataset = hold_out_validation(dataset, config.validation_per_class, config.validation_seed)
    if settings is not None and len(settings) != len(seeds):
        raise ValueError(f"{len(settings)} settings for {len(seeds)} seeds: give one per seed")
    members = [(s, tuple(sorted(st.items()))) for s, st in
               zip(seeds, settings or [{}] * len(seeds), strict=True)]
    if len(set(members)) != len(members) or not seeds:
        raise ValueError(f"seeds must be distinct (per setting) and at least one: {seeds}")
    if settings is not None and resume_from:
        raise ValueError("settings cannot be combined with resume_from")
    resume_from = resume_from or {}
    if resume_from and set(resume_from) != set(seeds):
        raise ValueError("resume_from must cover every seed or none (group seeds by task)")
    for seed, (state, record) in resume_from.items():
        _check_resume(config, seed, benchmark, state, record)
    if len({int(state.task) for state, _ in resume_from.values()}) > 1:
        raise ValueError("the resumed seeds are at different tasks; run each group alone")
    if len(seeds) == 1 and settings is None:  # nothing to batch: the single-seed program
        seeds_ = _OneSeed(config, dataset, seeds[0], resume_from.get(seeds[0]))
    else:
        seeds_ = _VmappedSeeds(config, dataset, seeds, resume_from, devices, settings)
    states, records = _run_sequence(
        config, dataset, seeds_, [resume_from[s][1] for s in seeds] if resume_from else None,
        benchmark=benchmark, progress=progress, on_task_end=on_task_end,
        on_epoch_end=on_epoch_end,
    )
    return list(zip(states, records, strict=True))


class _OneSeed:
    """One seed's state, learning and predicting with the single-seed programs
    (``continual.learn_task``). What ``_run_sequence`` drives (as ``_VmappedSeeds``)."""

    devices = 1

    def __init__(self, config: SpaceNetConfig, dataset: ImageDataset, seed: int,
                 resume_from: tuple[SpaceNetState, dict[str, Any]] | None) -> None:
        self.config, self.seeds, self.configs = config, [seed], [config]
        stages = training_stages(config, task_indices(dataset.train_labels, config.task_classes),
                                 seed)
        self.tasks = make_task_data(
            dataset.train_images, dataset.train_labels, stages, config.batch_size
        )
        self.state = (init_state(config, seed) if resume_from is None
                      else jax.device_put(resume_from[0]))

    def put(self, images: np.ndarray) -> jax.Array:
        """Images as ``predict`` takes them (on the device once, reused after every task)."""
        return jax.device_put(images)

    def learn(self, stage: int, on_epoch: Callable | None) -> None:
        self.state = learn_task(self.state, self.config, self.tasks[stage], on_epoch)

    def predict(self, images: jax.Array, count: int) -> np.ndarray:
        """int ``(1, count, T + 1)``: ``predict_with_tasks``'s columns for the first ``count``
        images."""
        return predict_in_chunks(self.state, self.config, images, with_tasks=True,
                                 count=count)[None]

    def states(self) -> list[SpaceNetState]:
        return [self.state]


class _VmappedSeeds:
    """A batch of seeds as one state with a leading seed axis, sharded over ``devices``
    (``multiseed``), padded to a multiple of the device count."""

    def __init__(self, config: SpaceNetConfig, dataset: ImageDataset, seeds: list[int],
                 resume_from: dict[int, tuple[SpaceNetState, dict[str, Any]]],
                 devices: list[jax.Device] | None,
                 settings: Sequence[Mapping[str, float]] | None = None) -> None:
        from spacenet_jax.running import multiseed

        self.config, self.seeds, self.multiseed = config, seeds, multiseed
        self.configs = member_configs(config, seeds, settings)
        devices = multiseed.seed_devices(len(seeds), devices)
        self.devices = len(devices)
        self.mesh = multiseed.seed_mesh(devices)  # None for one device: plain vmap
        shard = partial(multiseed.shard_seeds, mesh=self.mesh, device=devices[0])
        self.replicate = partial(multiseed.replicate, mesh=self.mesh, device=devices[0])
        self.padded = multiseed.pad_seeds(seeds, len(devices))
        task_examples = task_indices(dataset.train_labels, config.task_classes)
        # Per seed, (stages, length) example indices; every seed's stage t has the same count.
        stage_indices = [
            pad_stage_indices(training_stages(config, task_examples, seed), config.batch_size)
            for seed in self.padded
        ]
        images, labels = self.replicate(
            (np.asarray(dataset.train_images), np.asarray(dataset.train_labels, np.int32))
        )
        self.tasks = [
            TaskData(
                images, labels,
                shard(np.stack([ix[t] for ix, _ in stage_indices])),
                stage_indices[0][1][t],
            )
            for t in range(config.num_stages)
        ]
        if resume_from:
            singles = [jax.device_put(resume_from[seed][0]) for seed in self.padded]
        else:
            singles = [init_state(config, seed) for seed in self.padded]
        if settings is not None:
            padded = multiseed.pad_seeds(settings, len(devices))
            singles = [with_hyperparameters(st, **{k: v for k, v in setting.items()
                                                   if k in TRACED_HYPERPARAMETERS})
                       for st, setting in zip(singles, padded, strict=True)]
            if any(k in TRACED_INPUT_NORMALISATION for setting in settings for k in setting):
                singles = [with_dataset_normalisation(st, cfg) for st, cfg in zip(
                    singles, multiseed.pad_seeds(self.configs, len(devices)), strict=True)]
        self.state = shard(multiseed.stack_states(singles))

    def put(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images)  # replicated chunk by chunk in ``predict``

    def learn(self, stage: int, on_epoch: Callable | None) -> None:
        self.state = self.multiseed.learn_tasks(
            self.state, self.config, self.tasks[stage], self.padded, on_epoch, self.mesh
        )

    def predict(self, images: np.ndarray, count: int) -> np.ndarray:
        """int ``(S, count, T + 1)`` for the first ``count`` images and the real seeds (padding
        seeds dropped)."""
        def predict(states: SpaceNetState, images: np.ndarray) -> np.ndarray:
            return self.multiseed.to_host(self.multiseed.predict_seeds(
                states, self.config, self.replicate(images), self.mesh, True
            ))

        return predict_in_chunks(
            self.state, self.config, images, predict_fn=predict, with_tasks=True, count=count
        )[: len(self.seeds)]

    def states(self) -> list[SpaceNetState]:
        states = self.state
        if jax.process_count() > 1:  # gather every seed to every host, then slice on the host
            states = self.multiseed.to_host(states)
        return self.multiseed.unstack_states(states, len(self.seeds))


class _ImagesByTask:
    """Evaluation images (test or validation) grouped task by task, on the device once, so
    that after each task only the learned tasks' examples are predicted: later tasks'
    accuracies are not recorded (``None`` in the accuracy matrices), and predicting them would
    be two fifths of split MNIST's evaluation."""

    def __init__(self, seeds_: _OneSeed | _VmappedSeeds, images: np.ndarray,
                 task_example_indices: list[np.ndarray]) -> None:
        self.order = np.concatenate(task_example_indices).astype(np.int64)
        self.ends = np.cumsum([len(ix) for ix in task_example_indices])
        self.size = len(images)
        self.images = seeds_.put(np.asarray(images)[self.order])

    def predict(self, seeds_: _OneSeed | _VmappedSeeds, learned: int) -> np.ndarray:
        """int ``(S, N, T + 1)`` in the images' own order: ``predict_with_tasks``'s columns for
        the examples of tasks ``< learned``, -1 for the others."""
        count = int(self.ends[learned - 1])
        columns = 1 + len(self.ends)
        if count == 0:  # the learned tasks have no examples here
            return np.full((len(seeds_.seeds), self.size, columns), -1, np.int32)
        part = np.asarray(seeds_.predict(self.images, count))
        whole = np.full((part.shape[0], self.size, columns), -1, part.dtype)
        whole[:, self.order[:count]] = part
        return whole


def _run_sequence(
    config: SpaceNetConfig,
    dataset: ImageDataset,
    seeds_: _OneSeed | _VmappedSeeds,
    done: list[dict[str, Any]] | None,
    *,
    benchmark: str,
    progress: bool,
    on_task_end: SeedTaskEndCallback | None,
    on_epoch_end: EpochEndCallback | None,
) -> tuple[list[SpaceNetState], list[dict[str, Any]]]:
    """The task loop shared by one seed and a batch of seeds: ``seeds_`` learns each stage,
    then predicts the test (and validation) images, which fill a row of every seed's
    accuracy matrices. ``done``: per seed, the record to continue from."""
    seeds = seeds_.seeds
    start = time.perf_counter()
    stages = config.num_stages
    unit = "stage" if config.joint else "task"  # joint learns every task in one stage
    test_index = task_indices(dataset.test_labels, config.task_classes)
    test_images = _ImagesByTask(seeds_, dataset.test_images, test_index)
    test_labels = np.asarray(dataset.test_labels)
    validation = None  # (images, labels, per-task indices) of the held-out examples
    if dataset.validation_images is not None:
        validation_index = task_indices(dataset.validation_labels, config.task_classes)
        validation = (
            _ImagesByTask(seeds_, dataset.validation_images, validation_index),
            np.asarray(dataset.validation_labels),
            validation_index,
        )

    logs = [_SeedLog() for _ in seeds]
    first = 0
    if done is not None:
        for log, record in zip(logs, done, strict=True):
            log.resume(record)
        start -= done[0]["seconds"]["total"]
        first = len(done[0]["acc_matrix"])
    # A live bar on a terminal; one plain line per epoch in logs (CI, nohup, files).
    interactive = progress and sys.stderr.isatty()
    tag = f"{benchmark} {config.method} {_seed_label(seeds)}"
    if seeds_.devices > 1:
        tag += f" on {seeds_.devices} devices"
    bar = tqdm(
        total=stages * config.epochs, initial=first * config.epochs, desc=tag,
        disable=not interactive,
        leave=False, dynamic_ncols=True, file=sys.stderr,
    )

    def on_epoch(task: int, epoch: int, m: Any) -> None:
        if on_epoch_end is not None:
            n = len(seeds)  # a sharded batch may carry padding seeds after the real ones
            losses, accs = np.atleast_1d(m.loss)[:n], np.atleast_1d(m.accuracy)[:n]
            for seed, seed_loss, seed_acc in zip(seeds, losses, accs, strict=True):
                on_epoch_end(int(seed), int(task), int(epoch), float(seed_loss),
                             float(seed_acc))
        loss, acc = np.mean(m.loss), np.mean(m.accuracy)
        over = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
        line = (
            f"{unit} {task + 1}/{stages} epoch {epoch + 1}/{config.epochs} "
            f"loss {loss:.4f} train acc {metrics.percent(acc)} %{over}"
        )
        if interactive:
            bar.set_postfix_str(line)
            bar.update(1)
        elif progress:
            print(f"[{tag}] {line}", file=sys.stderr, flush=True)

    records: list[dict[str, Any]] = [{} for _ in seeds]
    singles: list[SpaceNetState] = []
    if first:
        singles = seeds_.states()
        records = [
            log.record(benchmark, seed, cfg, st, time.perf_counter() - start, seeds)
            for log, seed, cfg, st in zip(logs, seeds, seeds_.configs, singles, strict=True)
        ]
    for t in range(first, stages):
        task_start = time.perf_counter()
        seeds_.learn(t, on_epoch)
        singles = seeds_.states()
        learned = int(singles[0].task)  # the same for every seed of a batch
        predictions = test_images.predict(seeds_, learned)
        seconds = time.perf_counter() - task_start
        for log, st, pred in zip(logs, singles, predictions, strict=True):
            (row, pooled), (task_il_row, _) = class_and_task_il_accuracies(
                pred, test_labels, test_index, int(st.task)
            )
            log.add(row, pooled, task_il_row, free_neuron_counts(st), seconds)
        if validation is not None:
            images, labels, index = validation
            for log, st, pred in zip(logs, singles, images.predict(seeds_, learned),
                                     strict=True):
                (row, _), (task_il_row, _) = class_and_task_il_accuracies(
                    pred, labels, index, int(st.task)
                )
                log.add_validation(row, task_il_row)
        if progress:
            # With a validation split, settings are chosen on it: show it, not the test set
            # (whose figures stay in the records).
            split = "validation" if validation is not None else "test"
            last = [(log.validation["acc_matrix"][-1], log.validation["task_il_acc_matrix"][-1])
                    if validation is not None else (log.acc_matrix[-1], log.task_il_acc_matrix[-1])
                    for log in logs]
            rows = [[a for a in row if a is not None] for row, _ in last]
            mean = np.mean([np.mean(r) for r in rows])
            task_il = np.mean([np.mean([a for a in row if a is not None]) for _, row in last])
            shown = " ".join(metrics.percent(a) for a in np.mean(rows, axis=0))
            over = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
            bar.write(
                f"[{tag}] {unit} {t + 1}/{stages} done in {seconds:.1f}s: {split} accuracy (%) "
                f"per task {shown} | mean {metrics.percent(mean)} | task-IL mean "
                f"{metrics.percent(task_il)}{over}",
                file=sys.stderr,
            )
        total = time.perf_counter() - start
        records = [
            log.record(benchmark, seed, cfg, st, total, seeds)
            for log, seed, cfg, st in zip(logs, seeds, seeds_.configs, singles, strict=True)
        ]
        if on_task_end is not None:
            for seed, st, record in zip(seeds, singles, records, strict=True):
                on_task_end(seed, t, st, record)
    bar.close()
    return singles, records


def member_configs(
    config: SpaceNetConfig, seeds: Sequence[int], settings: Sequence[Mapping[str, float]] | None
) -> list[SpaceNetConfig]:
    """The configuration of each member of a batch: ``config`` with that member's traced
    settings (``settings``, one per seed; names of ``TRACED_SETTINGS``), each checked
    (``ConfigError``)."""
    if settings is None:
        return [config] * len(seeds)
    configs = []
    for setting in settings:
        unknown = sorted(set(setting) - set(TRACED_SETTINGS))
        if unknown:
            raise ConfigError(f"{unknown} change the compiled program and cannot vary within "
                              f"a batch; only {list(TRACED_SETTINGS)} can")
        configs.append(dataclasses.replace(config, **setting))  # checked (ConfigError)
    return configs


def _seed_label(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ",".join(map(str, seeds))


class _SeedLog:
    """What one seed's record accumulates task after task."""

    def __init__(self) -> None:
        self.acc_matrix: list[list[float | None]] = []
        self.task_il_acc_matrix: list[list[float | None]] = []
        self.overall: list[float] = []
        self.free_neurons: list[list[int]] = []
        self.task_seconds: list[float] = []
        self.validation: dict[str, list[list[float | None]]] | None = None

    def resume(self, record: dict[str, Any]) -> None:
        """Continue from ``record``. A record written before the task-incremental matrix
        existed (no ``task_il_acc_matrix``) gets rows of ``None`` for the tasks it holds."""
        self.acc_matrix = [list(row) for row in record["acc_matrix"]]
        self.task_il_acc_matrix = _task_il_rows(record)
        self.overall = [record["final_overall_acc"]]  # only the latest one enters the record
        self.free_neurons = [list(row) for row in record["free_neurons"]]
        self.task_seconds = list(record["seconds"]["per_task"])
        if record.get("validation") is not None:
            self.validation = {
                key: [list(row) for row in record["validation"][key]]
                for key in ("acc_matrix", "task_il_acc_matrix")
            }

    def add_validation(self, row: list[float | None], task_il_row: list[float | None]) -> None:
        """One row of the validation set's class- and task-incremental matrices."""
        if self.validation is None:
            self.validation = {"acc_matrix": [], "task_il_acc_matrix": []}
        self.validation["acc_matrix"].append(row)
        self.validation["task_il_acc_matrix"].append(task_il_row)

    def add(
        self, row: list[float | None], pooled: float, task_il_row: list[float | None],
        free: list[int], seconds: float,
    ) -> None:
        self.acc_matrix.append(row)
        self.task_il_acc_matrix.append(task_il_row)
        self.overall.append(pooled)
        self.free_neurons.append(free)
        self.task_seconds.append(seconds)

    def record(
        self, benchmark: str, seed: int, config: SpaceNetConfig, state: SpaceNetState,
        total_seconds: float, batch: list[int],
    ) -> dict[str, Any]:
        record = make_record(
            benchmark, seed, config, self.acc_matrix, self.overall, state, self.free_neurons,
            self.task_seconds, total_seconds, self.task_il_acc_matrix,
        )
        record["batch"] = list(batch)
        if self.validation is not None:
            record["validation"] = validation_summary(
                self.validation["acc_matrix"], self.validation["task_il_acc_matrix"],
                int(state.task),
            )
        return record


def validation_summary(
    acc_rows: list[list[float | None]], task_il_rows: list[list[float | None]], learned: int
) -> dict[str, Any]:
    """``record["validation"]``: the validation set's accuracy matrices (class- and
    task-incremental, one row per task learned, as the test set's) and their final averages."""
    final = [float(a) for a in acc_rows[-1][:learned]]
    final_task_il = [float(a) for a in task_il_rows[-1][:learned]]
    return {
        "acc_matrix": [list(row) for row in acc_rows],
        "task_il_acc_matrix": [list(row) for row in task_il_rows],
        "final_task_acc": final,
        "final_avg_acc": float(np.mean(final)),
        "final_task_il_avg_acc": float(np.mean(final_task_il)),
    }


def _task_il_rows(record: dict[str, Any]) -> list[list[float | None]]:
    """The record's ``task_il_acc_matrix``, or, for a record of an older version without it,
    one row of ``None`` per row of ``acc_matrix`` (same shape, nothing measured)."""
    rows = record.get("task_il_acc_matrix")
    if rows is None:
        return [[None] * len(row) for row in record["acc_matrix"]]
    return [list(row) for row in rows]


def _check_resume(
    config: SpaceNetConfig, seed: int, benchmark: str, state: SpaceNetState, done: dict[str, Any]
) -> None:
    """Refuse a partial record that is not an earlier point of this very run."""
    same_config = matches_saved(config, done.get("config"))
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


def make_record(
    benchmark: str,
    seed: int,
    config: SpaceNetConfig,
    acc_rows: list[list[float | None]],
    overall: list[float],
    state: SpaceNetState,
    free_neurons: list[list[int]],
    task_seconds: list[float],
    total_seconds: float,
    task_il_rows: list[list[float | None]],
) -> dict[str, Any]:
    """One seed's record (an entry of ``results.json``'s ``runs``) from its accuracy rows
    (class- and task-incremental, one row per task learned), the pooled accuracy after each
    task, the final state, the free neurons after each task and the timings."""
    learned = int(state.task)
    final = [float(a) for a in acc_rows[-1][:learned]]
    # None only where the last row came from an older record without task-IL accuracies.
    final_task_il = [None if a is None else float(a) for a in task_il_rows[-1][:learned]]
    task_il_avg = None if None in final_task_il else float(np.mean(final_task_il))
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
        "task_il_acc_matrix": [list(row) for row in task_il_rows],
        "final_task_il_acc": final_task_il,
        "final_task_il_avg_acc": task_il_avg,
        # Joint training has no sequence, hence nothing to forget: these are None.
        "forgetting": None,
        "avg_forgetting": None,
        "backward_transfer": None,
        "connections_per_task": connection_counts(state, learned) if config.sparse else None,
        "connections_used": connections_used(state),
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

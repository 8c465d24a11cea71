"""Inspect a task checkpoint: configuration, connections, neurons, and test accuracy.

    python -m spacenet_jax.analysis.inspect CHECKPOINT_DIR/seed_3
    python -m spacenet_jax.analysis.inspect CHECKPOINT_DIR --task 2 --data-dir ../shared/datasets

DIR is one seed's folder (``seed_<s>``) or a checkpoint folder holding a single seed. Prints
the configuration, the tasks learned, each task's connections per layer, free and reserved
neurons per hidden layer, and (unless ``--no-eval``) the accuracy on the test data of every task
learned so far, from the dataset named in the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.state import (
    SpaceNetState,
    connection_counts,
    connections_used,
    free_neuron_counts,
    reserved_neuron_counts,
)
from spacenet_jax.running.evaluation import evaluate_tasks
from spacenet_jax.running.metrics import percent
from spacenet_jax.storage.checkpoint import (
    CheckpointError,
    config_from_dict,
    find_seed_dir,
    read_metadata,
    restore_task,
    saved_tasks,
)
from spacenet_jax.storage.data import DatasetError, ImageDataset, load_dataset, task_indices


def checkpoint_report(
    directory: str | Path, task: int | None = None
) -> tuple[dict[str, Any], SpaceNetState, SpaceNetConfig]:
    """Restore a checkpoint with the configuration stored in it, and summarise it.

    Returns ``(report, state, config)``; the report holds ``directory``, ``task`` (the step),
    ``saved_tasks``, ``benchmark``, ``dataset``, ``seed``, ``method``, ``config`` (dict),
    ``tasks_learned``, ``connections_per_task`` ([task][layer], ``None`` for dense methods),
    ``connections_used`` (per layer), ``free_neurons`` and ``reserved_neurons`` (per hidden
    layer; reserved is ``[task][hidden layer]``), and ``acc_matrix`` (the record's).
    """
    directory = find_seed_dir(directory)
    meta = read_metadata(directory, task)
    config = config_from_dict(meta["config"])
    seed = int(meta["seed"])
    step = int(meta["tasks_learned"])
    state, record = restore_task(directory, config, seed, step)
    host = jax.device_get(state)
    learned = int(host.task)
    report = {
        "directory": str(directory),
        "task": step,
        "saved_tasks": saved_tasks(directory),
        "benchmark": meta.get("benchmark"),
        "dataset": meta.get("dataset"),
        "seed": seed,
        "method": config.method,
        "config": meta["config"],
        "tasks_learned": learned,
        "num_tasks": config.num_tasks,
        "connections_per_task": connection_counts(host, learned) if config.sparse else None,
        "connections_used": connections_used(host),
        "free_neurons": free_neuron_counts(host),
        "reserved_neurons": reserved_neuron_counts(host, learned),
        "hidden_sizes": list(config.layer_sizes[1:-1]),
        "acc_matrix": record["acc_matrix"],
    }
    return report, state, config


def format_report(report: dict[str, Any]) -> str:
    """The report as text, one fact per line."""
    lines = [
        f"checkpoint   {report['directory']}/{report['task']} "
        f"(saved: tasks {report['saved_tasks']})",
        f"benchmark    {report['benchmark']} on {report['dataset']}, method {report['method']}, "
        f"seed {report['seed']}",
        f"tasks        {report['tasks_learned']} of {report['num_tasks']} learned",
        "config",
    ]
    lines += [f"  {k} = {v}" for k, v in report["config"].items()]
    lines.append("connections per task and layer")
    if report["connections_per_task"] is None:
        lines.append("  (dense method: the current stage owns every connection)")
    else:
        for t, row in enumerate(report["connections_per_task"]):
            lines.append(f"  task {t + 1}: {row}")
    lines.append(f"  in use: {report['connections_used']}")
    lines.append("neurons per hidden layer")
    for h, size in enumerate(report["hidden_sizes"]):
        reserved = [row[h] for row in report["reserved_neurons"]]
        lines.append(
            f"  layer {h + 1} ({size}): free {report['free_neurons'][h]}, reserved "
            f"{sum(reserved)} (per task {reserved})"
        )
    return "\n".join(lines)


def load_checkpoint_dataset(name: str, data_dir: str | None) -> ImageDataset:
    """The dataset named in a checkpoint (any name ``load_dataset`` accepts)."""
    return load_dataset(name, data_dir, verbose=False)


def evaluate_checkpoint(
    state: SpaceNetState, config: SpaceNetConfig, dataset: ImageDataset
) -> tuple[list[float | None], float]:
    """Accuracy on the test data of each task learned so far, and pooled over them."""
    index = task_indices(dataset.test_labels, config.task_classes)
    return evaluate_tasks(state, config, dataset.test_images, dataset.test_labels, index)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="a seed_<s> folder, or a folder with one seed")
    p.add_argument("--task", type=int, default=None,
                   help="the checkpoint after this many tasks (default: the latest)")
    p.add_argument("--data-dir", default=None,
                   help="datasets folder, as for the experiments (default: $SPACENET_DATA_DIR)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation")
    args = p.parse_args(argv)
    try:
        report, state, config = checkpoint_report(args.directory, args.task)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.no_eval:
        return 0
    if not report["dataset"]:
        print("error: the checkpoint names no dataset; use --no-eval", file=sys.stderr)
        return 2
    try:
        dataset = load_checkpoint_dataset(report["dataset"], args.data_dir)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_task, overall = evaluate_checkpoint(state, config, dataset)
    shown = " ".join(percent(a, 2) for a in per_task if a is not None)
    seen = [a for a in per_task if a is not None]
    print(f"test accuracy (%) per task learned: {shown}")
    print(f"mean {percent(float(np.mean(seen)), 2)} %, pooled {percent(overall, 2)} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

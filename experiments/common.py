"""Shared command line of the experiments: flags, the seed loop, the final table, results.json."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spacenet_jax import metrics
from spacenet_jax.config import ConfigError, SpaceNetConfig, parse_int_list
from spacenet_jax.data import DatasetError, load_dataset

METHODS = {
    "spacenet": "SpaceNet: adaptive sparse training (drop and grow) + neuron reservation",
    "static": "Static-SparseNN: the same allocation and reservation, no drop and grow",
}


def parse_seeds(text: str) -> list[int]:
    """'3' -> [3]; '0-4' -> [0, 1, 2, 3, 4]; '0,3,7' -> [0, 3, 7]; '0-2,5' -> [0, 1, 2, 5]."""
    seeds: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad seed list {text!r}: use a number (3), a range (0-9) or a list (0,3,7)"
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"bad seed list {text!r}: seeds must be >= 0")
    return seeds


def build_parser(description: str, defaults: SpaceNetConfig) -> argparse.ArgumentParser:
    """Every hyper-parameter is a flag defaulting to the paper's value."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="random seed of a single run")
    g.add_argument(
        "--seeds", type=parse_seeds, default=None,
        help="several seeds, e.g. 0-9 or 0,3,7 (overrides --seed)",
    )
    g.add_argument("--method", choices=sorted(METHODS), default="spacenet",
                   help="; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    g.add_argument(
        "--data-dir", default=None,
        help="folder holding one sub-folder per dataset with the canonical files (offline use, "
        "e.g. ../shared/datasets); default: $SPACENET_DATA_DIR, else tfds downloads",
    )
    g.add_argument("--out", type=Path, default=None, help="write OUT/results.json")
    g.add_argument("--quiet", action="store_true", help="no progress bars")

    h = p.add_argument_group("hyper-parameters (defaults: the paper's)")
    h.add_argument("--hidden", type=parse_int_list, default=defaults.layer_sizes[1:-1],
                   help="hidden layer sizes, comma separated")
    h.add_argument("--connections", type=parse_int_list, default=defaults.connections_per_task,
                   help="connections per task in each weight matrix, comma separated")
    h.add_argument("--selected-neurons", type=parse_int_list, default=defaults.selected_neurons,
                   help="selected neurons per task in each hidden layer")
    h.add_argument("--specific-neurons", type=parse_int_list, default=defaults.specific_neurons,
                   help="neurons reserved per task in each hidden layer")
    h.add_argument("--rewire-ratio", type=float, default=defaults.rewire_ratio,
                   help="fraction r of connections dropped and regrown after each epoch")
    h.add_argument("--lr", type=float, default=defaults.learning_rate, help="SGD learning rate")
    h.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    h.add_argument("--batch-size", type=int, default=defaults.batch_size)
    h.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per task")
    return p


def config_from_args(args: argparse.Namespace, defaults: SpaceNetConfig) -> SpaceNetConfig:
    return dataclasses.replace(
        defaults,
        layer_sizes=(defaults.layer_sizes[0], *args.hidden, defaults.layer_sizes[-1]),
        connections_per_task=args.connections,
        selected_neurons=args.selected_neurons,
        specific_neurons=args.specific_neurons,
        rewire_ratio=args.rewire_ratio,
        rewire=args.method != "static",
        learning_rate=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        epochs=args.epochs,
    )


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd and standard error over seeds of the headline metrics."""
    keys = ("final_avg_acc", "final_overall_acc", "avg_forgetting", "backward_transfer")
    summary: dict[str, Any] = {k: metrics.summarize([r[k] for r in runs]) for k in keys}
    T = len(runs[0]["final_task_acc"])
    summary["final_task_acc_mean"] = [
        metrics.summarize([r["final_task_acc"][j] for r in runs])["mean"] for j in range(T)
    ]
    summary["seeds"] = [r["seed"] for r in runs]
    summary["seconds_per_run"] = metrics.summarize([r["seconds"]["total"] for r in runs])
    return summary


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any], file=sys.stdout) -> None:
    T = len(runs[0]["final_task_acc"])
    head = " ".join(f"task{j + 1:>2}" for j in range(T))
    print(f"\n{'seed':>5} {head}   average  overall  forget   seconds", file=file)
    for r in runs:
        cells = " ".join(f"{a:6.3f}" for a in r["final_task_acc"])
        print(
            f"{r['seed']:>5} {cells}   {r['final_avg_acc']:.4f}   {r['final_overall_acc']:.4f}"
            f"   {r['avg_forgetting']:.3f}   {r['seconds']['total']:7.1f}",
            file=file,
        )
    avg = summary["final_avg_acc"]
    print(
        f"\nfinal average accuracy over {avg['n']} seed(s): {avg['mean']:.4f} "
        f"+- {avg['std']:.4f} (sd), +- {avg['sem']:.4f} (sem)",
        file=file,
    )


def main(benchmark: str, dataset_name: str, description: str, defaults: SpaceNetConfig,
         argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags, run every seed, print the table and write ``results.json``."""
    from spacenet_jax.runner import run_task_sequence

    parser = build_parser(description, defaults)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, defaults)
    except ConfigError as err:
        parser.error(f"impossible configuration: {err}")
    seeds = args.seeds if args.seeds is not None else [args.seed]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        dataset = load_dataset(dataset_name, args.data_dir, verbose=not args.quiet)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    runs: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    start = time.perf_counter()
    for seed in seeds:
        try:
            _, record = run_task_sequence(
                config, dataset, seed, benchmark=benchmark, progress=not args.quiet
            )
        except ConfigError as err:  # CapacityError: found on the device during a task
            done = f"; the {len(runs)} finished seed(s) are in results.json" if runs else ""
            print(f"error (seed {seed}): {err}{done}", file=sys.stderr)
            raise SystemExit(2) from None
        record["method"] = args.method
        runs.append(record)
        payload = {"runs": runs, "summary": summarize_runs(runs)}
        payload["summary"].update(benchmark=benchmark, method=args.method)
        if args.out is not None:
            write_json_atomic(args.out / "results.json", payload)
    print_table(runs, payload["summary"])
    print(f"wall-clock: {time.perf_counter() - start:.1f}s for {len(seeds)} seed(s)")
    if args.out is not None:
        print(f"results written to {args.out / 'results.json'}")
    return payload

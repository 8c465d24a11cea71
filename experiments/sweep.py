"""A hyper-parameter sweep on the validation split: a grid or a random search (the paper's
method), settings x seeds as one vmapped program per shape.

    python -m experiments.sweep --benchmark split_mnist --data-dir ../shared/datasets \\
        --grid learning_rate=0.005,0.01,0.02 --grid momentum=0,0.5 --seeds 0-4 --out runs/sweep
    python -m experiments.sweep --random 12 --space learning_rate=log:0.002:0.05 \\
        --space momentum=uniform:0:0.9 --space specific_neurons=choice:20/20,30/30,40/40 \\
        --seeds 0-4 --out runs/random --resume

The learning rate, the momentum and the dataset's input mean and sd are traced values of the
state (``running.runner.TRACED_SETTINGS``): every setting that differs only in them runs in
the same compiled program, vmapped over settings x seeds. Parameters that change a shape or
the schedule (``specific_neurons``, ``selected_neurons``, ``connections_per_task``,
``rewire_ratio``, ``epochs``, ``batch_size``), and the normalisation rule
(``input_normalisation=dataset,per_pixel``), split the sweep into groups, one program each.
A tuple value is written with ``/`` between its numbers (``specific_neurons=20/20``).

Training examples are held out (``--validation`` per class, 500 by default, fixed by
``--validation-seed``) and the settings are ranked by the final average accuracy on them;
the test accuracies are in each setting's ``results.json`` but are not what the sweep ranks
or prints. Writes ``OUT/settings/<setting>/results.json`` per setting (the format of every
experiment, rewritten after each batch: a crash loses at most the batch in progress, and
``--resume`` runs only what is missing), ``OUT/sweep.json`` (every setting's validation
summary, ranked) and ``OUT/sweep.png`` (validation accuracy against each swept parameter,
mean +- sd over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import command_line_process, load_or_exit, parse_seeds, refuse, version_line
from experiments.split_fashion_mnist import SPLIT_FASHION_MNIST
from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.core.config import ConfigError, SpaceNetConfig, parse_int_list
from spacenet_jax.running import metrics
from spacenet_jax.running.runner import TRACED_SETTINGS
from spacenet_jax.storage.results_io import (
    ResultsFileError,
    check_output_folder,
    check_seeds_not_done,
    merge_runs,
    provenance,
    read_finished_runs,
    write_json_atomic,
)

#: Benchmark -> (dataset name for ``load_dataset``, the paper's configuration).
BENCHMARKS: dict[str, tuple[str, SpaceNetConfig]] = {
    "split_mnist": ("mnist", SPLIT_MNIST),
    "split_fashion_mnist": ("fashion_mnist", SPLIT_FASHION_MNIST),
}

#: What a sweep may vary: the traced hyper-parameters, and those that need a program each.
SHAPE_PARAMETERS = ("epochs", "batch_size", "rewire_ratio", "specific_neurons",
                    "selected_neurons", "connections_per_task", "input_normalisation")
SWEEPABLE = (*TRACED_SETTINGS, *SHAPE_PARAMETERS)

Setting = dict[str, Any]


class SweepError(ValueError):
    """A grid or search space that cannot be run: says what is wrong and how to write it."""


def parse_value(name: str, text: str, base: SpaceNetConfig) -> Any:
    """One value of ``name`` as ``base`` holds it: a float, an int, a name (e.g.
    ``input_normalisation=per_pixel``), or a tuple of ints written ``20/20``."""
    if name not in SWEEPABLE:
        raise SweepError(f"cannot sweep {name!r}; choose among {', '.join(SWEEPABLE)}")
    default = getattr(base, name)
    try:
        if isinstance(default, str):
            return text
        if isinstance(default, tuple):
            return parse_int_list(text.replace("/", ","))
        if isinstance(default, int):
            return int(text)
        return float(text)
    except ValueError:
        kind = "numbers joined by /" if isinstance(default, tuple) else type(default).__name__
        raise SweepError(f"{name}={text!r}: expected {kind}") from None


def parse_grid(entries: Sequence[str], base: SpaceNetConfig) -> list[Setting]:
    """``["learning_rate=0.01,0.02", "momentum=0,0.9"]`` -> every combination, in order."""
    axes: dict[str, list[Any]] = {}
    for entry in entries:
        name, sep, values = entry.partition("=")
        if not sep or not values:
            raise SweepError(f"--grid {entry!r}: write NAME=V1,V2,... (e.g. "
                             f"learning_rate=0.01,0.02)")
        if name in axes:
            raise SweepError(f"--grid names {name!r} twice; give all its values in one --grid")
        axes[name] = [parse_value(name, v, base) for v in values.split(",") if v]
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def draw_random(entries: Sequence[str], count: int, base: SpaceNetConfig,
                search_seed: int, rejected: list[tuple[Setting, str]] | None = None,
                ) -> list[Setting]:
    """``count`` settings drawn from ``--space`` entries: ``NAME=log:LO:HI`` (log-uniform),
    ``NAME=uniform:LO:HI``, ``NAME=choice:A,B,...``; ints are rounded, floats kept to 4
    significant digits, all from ``numpy.random.default_rng(search_seed)``. A draw the
    network cannot take (``ConfigError``, e.g. more output connections than positions) is
    drawn again, and appended with the reason to ``rejected`` if given."""
    rng = np.random.default_rng(search_seed)
    spaces = []
    for entry in entries:
        name, _, spec = entry.partition("=")
        kind, _, rest = spec.partition(":")
        if kind == "choice" and rest:
            spaces.append((name, kind, [parse_value(name, v, base) for v in rest.split(",")]))
        elif kind in ("log", "uniform") and rest.count(":") == 1:
            lo, hi = (float(v) for v in rest.split(":"))
            if not lo < hi or (kind == "log" and lo <= 0):
                raise SweepError(f"--space {entry!r}: need LO < HI (and LO > 0 for log)")
            if name not in SWEEPABLE or isinstance(getattr(base, name), (tuple, str)):
                raise SweepError(f"--space {entry!r}: log and uniform draw numbers; "
                                 f"NAME among {', '.join(SWEEPABLE)} (tuples, names: choice)")
            spaces.append((name, kind, (lo, hi)))
        else:
            raise SweepError(f"--space {entry!r}: write NAME=log:LO:HI, NAME=uniform:LO:HI or "
                             f"NAME=choice:A,B,...")
    settings: list[Setting] = []
    for _ in range(100 * count):  # draws the network cannot take are drawn again
        if len(settings) == count:
            break
        setting: Setting = {}
        for name, kind, space in spaces:
            if kind == "choice":
                value = space[int(rng.integers(len(space)))]
            else:
                lo, hi = space
                x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "log" \
                    else rng.uniform(lo, hi)
                value = round(x) if isinstance(getattr(base, name), int) \
                    else float(f"{x:.4g}")
            setting[name] = value
        try:
            dataclasses.replace(base, **setting)
        except ConfigError as err:
            if rejected is not None:
                rejected.append((setting, str(err)))
            continue
        settings.append(setting)
    if len(settings) < count:
        raise SweepError(f"only {len(settings)} of {count} draws from {list(entries)} are "
                         f"configurations the network can take; widen or fix the space")
    return settings


def setting_name(setting: Setting) -> str:
    """A folder name that says the setting: ``learning_rate=0.02,momentum=0.9``."""
    def text(v: Any) -> str:
        if isinstance(v, tuple):
            return "-".join(map(str, v))
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ",".join(f"{k}={text(v)}" for k, v in sorted(setting.items())) or "base"


def split_setting(setting: Setting) -> tuple[Setting, Setting]:
    """``(shape part, traced part)`` of a setting: the first picks the program."""
    shape = {k: v for k, v in setting.items() if k not in TRACED_SETTINGS}
    return shape, {k: v for k, v in setting.items() if k in TRACED_SETTINGS}


def _summary(runs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    values = [r["validation"][key] for r in runs if r.get("validation")]
    return metrics.summarize(values) if values else None


def sweep_table(settings: list[Setting],
                runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per setting: its values, where its results are, its seeds done and its validation
    summaries; ranked by mean validation final average accuracy (best first)."""
    rows = []
    for setting in settings:
        name = setting_name(setting)
        done = runs.get(name, [])
        rows.append({
            "setting": {k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()},
            "name": name,
            "results": f"settings/{name}/results.json",
            "seeds": [r["seed"] for r in done],
            "validation_final_avg_acc": _summary(done, "final_avg_acc"),
            "validation_final_task_il_avg_acc": _summary(done, "final_task_il_avg_acc"),
        })
    return sorted(rows, key=lambda r: -(r["validation_final_avg_acc"] or {"mean": -1})["mean"])


def print_sweep(rows: list[dict[str, Any]], file: Any = None) -> None:
    """The ranked table of ``sweep_table``'s rows (validation accuracies, %)."""
    file = file or sys.stdout
    pct = metrics.percent
    width = max(len(r["name"]) for r in rows)
    print(f"\nvalidation accuracy (%) after the last task, mean +- sd over seeds\n"
          f"{'rank':>4}  {'setting':<{width}}  average          task-IL  seeds", file=file)
    for rank, r in enumerate(rows, 1):
        v, t = r["validation_final_avg_acc"], r["validation_final_task_il_avg_acc"]
        avg = f"{pct(v['mean'], 2):>6} +- {pct(v['std'], 2):>5}" if v else f"{'-':>15}"
        il = f"{pct(t['mean'], 2):>7}" if t else f"{'-':>7}"
        print(f"{rank:>4}  {r['name']:<{width}}  {avg}  {il}  {len(r['seeds'])}", file=file)


def run_sweep(
    base: SpaceNetConfig,
    dataset: Any,
    settings: list[Setting],
    seeds: list[int],
    *,
    benchmark: str,
    out: Path,
    resume: bool = False,
    batch: int | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Run every (setting, seed) not yet in ``out``: one program per shape group, ``batch``
    members at a time (default: the whole group), each setting's ``results.json`` and
    ``out/sweep.json`` rewritten after every batch. Returns ``sweep.json``'s content.

    Raises ``ResultsFileError`` (a setting's file holds another configuration, or seeds done
    while ``resume`` is false) and ``ConfigError`` (a setting the network cannot take) before
    any training.
    """
    from spacenet_jax.running.interrupts import deferred_interrupts
    from spacenet_jax.running.runner import run_task_sequences
    from spacenet_jax.running.study import results_file

    names = [setting_name(s) for s in settings]
    if len(set(names)) != len(names):
        raise SweepError(f"the same setting appears twice: {names}")
    runs: dict[str, list[dict[str, Any]]] = {}
    todo: dict[tuple, list[tuple[Setting, int]]] = {}  # shape part -> members
    for setting, name in zip(settings, names, strict=True):
        config = dataclasses.replace(base, **setting)  # ConfigError: impossible setting
        path = out / "settings" / name / "results.json"
        finished = read_finished_runs(path, config, benchmark)
        check_seeds_not_done(path, finished, seeds, resume)
        runs[name] = finished
        shape, _ = split_setting(setting)
        done = {r["seed"] for r in finished}
        missing = [(setting, s) for s in seeds if s not in done]
        if missing:  # with --resume, a setting may be done already (its group may be empty)
            todo.setdefault(tuple(sorted(shape.items())), []).extend(missing)
    prov = provenance(argv)
    start = time.perf_counter()

    def write() -> dict[str, Any]:
        rows = sweep_table(settings, runs)
        payload = {"benchmark": benchmark, "seeds": seeds,
                   "parameters": sorted({k for s in settings for k in s}),
                   "validation_per_class": base.validation_per_class,
                   "validation_seed": base.validation_seed,
                   "settings": rows, "best": rows[0] if rows[0]["seeds"] else None,
                   "seconds": time.perf_counter() - start}
        with deferred_interrupts():
            write_json_atomic(out / "sweep.json", payload)
        return payload

    payload = write()
    for key, members in todo.items():
        group = dataclasses.replace(base, **dict(key))
        size = batch or len(members)
        for i in range(0, len(members), size):
            chunk = members[i : i + size]
            traced = [split_setting(s)[1] for s, _ in chunk]
            if progress:
                print(f"[sweep] {dict(key) or 'base shapes'}: members {i + 1}-{i + len(chunk)} "
                      f"of {len(members)} as one program", file=sys.stderr, flush=True)
            results = run_task_sequences(group, dataset, [s for _, s in chunk],
                                         benchmark=benchmark, progress=progress, settings=traced)
            new: dict[str, dict[int, dict[str, Any]]] = {}
            for (setting, seed), (_, record) in zip(chunk, results, strict=True):
                record["provenance"] = prov
                new.setdefault(setting_name(setting), {})[seed] = record
            for name, records in new.items():
                runs[name] = merge_runs(runs[name], records)
                path = out / "settings" / name / "results.json"
                with deferred_interrupts():
                    write_json_atomic(path, results_file(runs[name], benchmark, base.method))
            payload = write()
    return payload


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=list(BENCHMARKS), default="split_mnist")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help=f"a grid axis (repeat for more); NAME among {', '.join(SWEEPABLE)}")
    p.add_argument("--random", type=int, default=None, metavar="N",
                   help="random search: N settings drawn from the --space entries")
    p.add_argument("--space", action="append", default=[], metavar="NAME=KIND:...",
                   help="with --random: NAME=log:LO:HI, NAME=uniform:LO:HI or NAME=choice:A,B")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help="e.g. 0-9 or 0,3,5")
    p.add_argument("--validation", type=int, default=500,
                   help="training examples per class held out to rank the settings")
    p.add_argument("--validation-seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None,
                   help="members (setting x seed) per compiled batch (default: a whole group)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="keep what OUT holds, run the rest")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--version", action="version", version=version_line())
    return p


def main(argv: list[str] | None = None, dataset: Any | None = None) -> dict[str, Any]:
    """The command line; ``dataset`` replaces loading the benchmark's (tests)."""
    from spacenet_jax.running.compile_cache import enable_compilation_cache

    parser = build_parser()
    args = parser.parse_args(argv)
    dataset_name, paper = BENCHMARKS[args.benchmark]
    if args.validation < 1:
        parser.error("--validation must be at least 1: settings are chosen on held-out "
                     "training examples, never on the test set")
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be at least 1, not {args.batch}")
    base = dataclasses.replace(paper, validation_per_class=args.validation,
                               validation_seed=args.validation_seed)
    try:
        if args.random is not None:
            if args.grid or not args.space or args.random < 1:
                raise SweepError("--random N takes --space entries (and no --grid), N >= 1")
            rejected: list[tuple[Setting, str]] = []
            settings = draw_random(args.space, args.random, base, args.search_seed, rejected)
            if rejected:
                example, why = rejected[0]
                print(f"[sweep] {len(rejected)} draw(s) the network cannot take were drawn "
                      f"again, e.g. {example}: {why}", file=sys.stderr)
        elif args.grid:
            settings = parse_grid(args.grid, base)
        else:
            raise SweepError("give --grid NAME=V1,V2,... or --random N with --space entries")
    except SweepError as err:
        parser.error(str(err))
    enable_compilation_cache()
    try:
        check_output_folder(args.out)
        for setting in settings:
            dataclasses.replace(base, **setting)  # an impossible setting, before any work
    except (ResultsFileError, ConfigError) as err:
        refuse(str(err))
    data = dataset if dataset is not None else load_or_exit(dataset_name, args.data_dir,
                                                            args.quiet)
    try:
        payload = run_sweep(base, data, settings, args.seeds, benchmark=args.benchmark,
                            out=args.out, resume=args.resume, batch=args.batch,
                            progress=not args.quiet, argv=argv)
    except (ResultsFileError, ConfigError, SweepError) as err:
        refuse(str(err))
    print_sweep(payload["settings"])
    from spacenet_jax.analysis.plots import plot_sweep

    png = plot_sweep(payload, args.out / "sweep.png",
                     title=f"{args.benchmark}: validation accuracy of each setting")
    print(f"written: {args.out / 'sweep.json'}, {png} and {len(settings)} results.json under "
          f"{args.out / 'settings'}")
    return payload


if __name__ == "__main__":
    with command_line_process():
        main()

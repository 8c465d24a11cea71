"""Benchmark: split MNIST, whole process and training loop, against the dense-MLP floor.

    python -m benchmarks.split_mnist --data-dir ../shared/datasets
    python -m benchmarks.split_mnist --data-dir ../shared/datasets --repeats 5 --seeds 10

Prints a table and writes JSON (default ``runs/benchmarks/split_mnist.json``):

* whole process, one seed: ``python -m experiments.split_mnist --seed 0 --quiet`` as a fresh
  subprocess (start-up, cached data, compilation, training, evaluation), median wall time over
  ``--repeats`` runs with JAX's persistent compilation cache filled by a first (cold) run, its
  CPU seconds and peak resident memory; also the cold run and a run with the cache off;
* whole process, ``--seeds N`` seeds in one command: as one vmapped program (the default) and
  one seed after another (``--seed-batch 1``), with the ratio of each to one seed (both with
  their programs in the compilation cache, as for the one-seed median);
* where one seed's whole process spends its time: the same command with ``--out`` (so that it
  also writes its results file and figure) under ``cProfile``, with the cumulative seconds of
  its phases (imports, data, initial state, training, evaluation, figure, results file), and
  ``import experiments.split_mnist`` alone;
* in this process, one seed's training loop (``learn_task`` for every task: allocation,
  epochs, drop and grow, reservation; no evaluation) on each path of ``training_step``: the
  sparse step on the task's blocks (``subnetwork``, the default on a CPU) and the masked step
  on whole matrices (``masked``): compile time (first run minus the warm median), time per
  task, training steps per second;
* the floor, measured in the same process: a plain dense MLP of the same shape trained with the
  same loop (one ``lax.scan`` per epoch over the same on-device batches) for the same number of
  steps, and the ratio of each path to it;
* in this process, ``--seeds N`` seeds' training loop as one vmapped program
  (``multiseed.learn_tasks``, warm), against N times one seed's: on a GPU or TPU the batch
  costs far less than N single runs, on a CPU about the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.continual import TaskData, learn_task, make_task_data
from spacenet_jax.core.network import forward, preprocess
from spacenet_jax.core.state import init_state
from spacenet_jax.running import multiseed
from spacenet_jax.storage.data import load_dataset, task_indices
from spacenet_jax.storage.results_io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]

#: Runs a module as ``__main__`` and prints its own resource usage as the last stdout line.
#: Peak memory is the process's own ``VmHWM``: ``ru_maxrss`` is not, because a child started
#: with ``vfork`` (as ``subprocess`` does) inherits at ``exec`` the high-water mark of the
#: parent's memory, here the benchmark's own (with the dataset and JAX loaded).
_CHILD = """
import atexit, json, resource, runpy, sys
def _peak_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def _report():
    u = resource.getrusage(resource.RUSAGE_SELF)
    print("BENCH " + json.dumps({"maxrss_kib": _peak_kib(), "cpu_s": u.ru_utime + u.ru_stime}))
atexit.register(_report)
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _run_child(code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``python -c code *args`` and return the JSON of its last stdout line (after
    ``BENCH ``); exit with its stderr if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
        text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1].removeprefix("BENCH "))


def whole_process(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall time, CPU seconds and peak memory (MiB) of ``python -m <args>`` in a fresh process."""
    start = time.perf_counter()
    usage = _run_child(_CHILD, args, env)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "cpu_s": usage["cpu_s"], "peak_mib": usage["maxrss_kib"] / 1024}


#: Runs a module as ``__main__`` under cProfile and prints, as the last stdout line, the
#: cumulative seconds of the functions named in argv[1] (JSON: label -> [file suffix, name]).
_PROFILED_CHILD = """
import cProfile, json, pstats, runpy, sys, time
phases = json.loads(sys.argv[1])
sys.argv = [sys.argv[2], *sys.argv[3:]]
profile = cProfile.Profile()
start = time.perf_counter()
try:
    profile.runcall(runpy.run_module, sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
wall = time.perf_counter() - start
stats = pstats.Stats(profile).stats
found = {label: 0.0 for label in phases}
for (path, _, name), (_, _, _, cumulative, _) in stats.items():
    for label, (suffix, function) in phases.items():
        if name == function and path.replace("\\\\", "/").endswith(suffix):
            found[label] = max(found[label], cumulative)
print("BENCH " + json.dumps({"wall_s": wall, "phases": found}))
"""

#: The phases of a whole run, as (file, function) whose cumulative time is the phase's.
PHASES = {
    "import experiments.common (jax, flax, optax, the package)": ["experiments/common.py",
                                                                 "<module>"],
    "load the dataset (cached arrays)": ["spacenet_jax/storage/data.py", "load_dataset"],
    "initial state": ["spacenet_jax/core/state.py", "init_state"],
    "training (learn_task, 5 tasks)": ["spacenet_jax/core/continual.py", "learn_task"],
    "evaluation after each task": ["spacenet_jax/running/runner.py", "predict"],
    "figure (matplotlib)": ["spacenet_jax/analysis/plots.py", "plot_final_task_accuracy"],
    "results file": ["spacenet_jax/storage/results_io.py", "write_json_atomic"],
}


def profiled_process(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``python -m <args>`` in a fresh process under cProfile: its wall time (inflated by the
    profiler) and the cumulative seconds of each of ``PHASES``."""
    return _run_child(_PROFILED_CHILD, [json.dumps(PHASES), *args], env)


def import_seconds(module: str, env: dict[str, str], repeats: int) -> float:
    """Median seconds of ``import <module>`` in a fresh process."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def flops_per_step(config: SpaceNetConfig) -> float:
    """Dense-masked MLP: forward 2*B*sum(fan_in*fan_out), backward twice that."""
    weights = sum(a * b for a, b in zip(config.layer_sizes[:-1], config.layer_sizes[1:],
                                        strict=True))
    return 6.0 * config.batch_size * weights


@partial(jax.jit, static_argnames="config")
def _dense_epoch(params, opt_state, config: SpaceNetConfig, images, labels, batch_indices):
    """The floor: plain SGD on a dense MLP of the same shape, one ``lax.scan`` per epoch."""
    tx = optax.sgd(config.learning_rate)

    def loss(p, x, y):
        logits = forward(*p, preprocess(x, config), config)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, index):
        p, s = carry
        g = jax.grad(loss)(p, images[index], labels[index])
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batch_indices)
    return params, opt_state


def dense_floor(config: SpaceNetConfig, images, labels, steps: int, repeats: int) -> float:
    """Seconds for ``steps`` dense steps with the same loop (median over ``repeats``)."""
    key = jax.random.PRNGKey(0)
    init = jax.nn.initializers.glorot_uniform()
    shapes = [config.weight_shape(i) for i in range(config.num_layers)]
    params = (
        tuple(init(k, s) for k, s in zip(jax.random.split(key, len(shapes)), shapes,
                                         strict=True)),
        tuple(jnp.zeros(s[-1]) for s in shapes),
    )
    opt_state = optax.sgd(config.learning_rate).init(params)
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    per_epoch = images.shape[0] // config.batch_size // 5  # a task's worth of batches
    epochs = -(-steps // per_epoch)
    index = jax.random.randint(key, (per_epoch, config.batch_size), 0, images.shape[0])
    jax.block_until_ready(_dense_epoch(params, opt_state, config, images, labels, index))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        p, s = params, opt_state
        for _ in range(epochs):
            p, s = _dense_epoch(p, s, config, images, labels, index)
        jax.block_until_ready(p)
        times.append((time.perf_counter() - start) * steps / (epochs * per_epoch))
    return statistics.median(times)


def training_loop(config: SpaceNetConfig, tasks: list, repeats: int) -> dict[str, Any]:
    """One seed's whole training (allocate, train, rewire, reserve; no evaluation) in this
    process: the first run compiles, later runs are timed (median)."""

    def train() -> list[float]:
        state = init_state(config, 0)
        per_task = []
        for task in tasks:
            start = time.perf_counter()
            state = learn_task(state, config, task)
            jax.block_until_ready(state)
            per_task.append(time.perf_counter() - start)
        return per_task

    first = train()
    warm = [train() for _ in range(repeats)]
    totals = [sum(w) for w in warm]
    median = statistics.median(totals)
    steps = sum(-(-t.num_examples // config.batch_size) for t in tasks) * config.epochs
    return {
        "steps": steps,
        "first_run_s": sum(first),
        "warm_run_s": median,
        "compile_s": sum(first) - median,
        "per_task_s": warm[totals.index(median)] if median in totals else warm[0],
        "steps_per_s": steps / median,
        "gflops": flops_per_step(config) * steps / median / 1e9,
    }


def seeds_training_loop(config: SpaceNetConfig, tasks: list, seeds: int, repeats: int):
    """``seeds`` seeds' whole training as one vmapped program (on the default device), in this
    process: first run (compiles) and the warm median."""
    indices = [
        TaskData(t.images, t.labels, jnp.stack([t.indices] * seeds), t.num_examples)
        for t in tasks
    ]
    names = list(range(seeds))

    def train() -> float:
        states = multiseed.stack_states([init_state(config, s) for s in names])
        jax.block_until_ready(states)
        start = time.perf_counter()
        for task in indices:
            states = multiseed.learn_tasks(states, config, task, names)
        jax.block_until_ready(states)
        return time.perf_counter() - start

    first = train()
    warm = statistics.median(train() for _ in range(repeats))
    return {"seeds": seeds, "first_run_s": first, "warm_run_s": warm}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="e.g. ../shared/datasets")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--seeds", type=int, default=10, help="seeds of the many-seed measurement")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/split_mnist.json"))
    args = p.parse_args(argv)

    config = SPLIT_MNIST
    dataset = load_dataset("mnist", args.data_dir, verbose=False)  # fills the cache first
    data_flag = ["--data-dir", args.data_dir] if args.data_dir else []
    one_seed = ["experiments.split_mnist", "--seed", "0", "--quiet", *data_flag]
    with tempfile.TemporaryDirectory() as compiled:
        # A fresh persistent compilation cache: the first run compiles everything (cold), the
        # repeats read the compiled programs back (warm), as a user's second run does.
        env = {**os.environ, "SPACENET_COMPILATION_CACHE_DIR": compiled}
        cold = whole_process(one_seed, env)
        one = [whole_process(one_seed, env) for _ in range(args.repeats)]
        many_seeds = ["experiments.split_mnist", "--seeds", f"0-{args.seeds - 1}", "--quiet",
                      *data_flag]
        many_cold = whole_process(many_seeds, env)  # compiles the batched programs
        many = whole_process(many_seeds, env)
        one_by_one = whole_process([*many_seeds, "--seed-batch", "1"], env)
        profiled = profiled_process([*one_seed, "--out", str(Path(compiled) / "profiled")], env)
        imports = import_seconds("experiments.split_mnist", env, args.repeats)
        no_cache = whole_process(one_seed, {**os.environ, "SPACENET_COMPILATION_CACHE_DIR": "off"})
    tasks = make_task_data(dataset.train_images, dataset.train_labels,
                           task_indices(dataset.train_labels, config.task_classes),
                           config.batch_size)
    # Each path compiles, then is timed (median of --repeats), then the dense floor.
    paths = {step: dataclasses.replace(config, training_step=step)
             for step in ("subnetwork", "masked")}
    loops = {step: training_loop(cfg, tasks, args.repeats) for step, cfg in paths.items()}
    loop = loops["subnetwork"]
    floor = dense_floor(config, tasks[0].images, tasks[0].labels, loop["steps"], args.repeats)
    batched = seeds_training_loop(config, tasks, args.seeds, args.repeats)
    batched["ratio_to_one_seed"] = batched["warm_run_s"] / loop["warm_run_s"]

    result = {
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "one_seed_process": {
            "wall_s_median": statistics.median(r["wall_s"] for r in one),
            "runs": one,
            "cold_compilation_cache": cold,
            "compilation_cache_off": no_cache,
        },
        "many_seeds_process": {"seeds": args.seeds, **many,
                               "ratio_to_one_seed": many["wall_s"] / statistics.median(
                                   r["wall_s"] for r in one),
                               "cold_compilation_cache": many_cold},
        "many_seeds_one_by_one_process": {
            "seeds": args.seeds, **one_by_one,
            "ratio_to_one_seed": one_by_one["wall_s"] / statistics.median(
                r["wall_s"] for r in one)},
        "one_seed_process_profile": {**profiled, "import_experiments_s": imports},
        "many_seeds_training_loop": batched,
        "training_loop": loop,
        "training_loop_masked": loops["masked"],
        "dense_floor": {"steps": loop["steps"], "seconds": floor,
                        "gflops": flops_per_step(config) * loop["steps"] / floor / 1e9},
        "ratio_spacenet_to_dense": loop["warm_run_s"] / floor,
        "ratio_masked_to_dense": loops["masked"]["warm_run_s"] / floor,
    }
    write_json_atomic(args.out, result)
    o = result["one_seed_process"]
    rows = [
        ("one seed, whole process (median wall)", f"{o['wall_s_median']:.2f} s"),
        ("  CPU seconds / peak memory", f"{one[0]['cpu_s']:.1f} s / {one[0]['peak_mib']:.0f} MiB"),
        ("  first run, empty compilation cache", f"{cold['wall_s']:.2f} s, "
         f"{cold['peak_mib']:.0f} MiB"),
        ("  compilation cache off", f"{no_cache['wall_s']:.2f} s, {no_cache['peak_mib']:.0f} MiB"),
        (f"{args.seeds} seeds, whole process, one vmapped program",
         f"{many['wall_s']:.2f} s ({result['many_seeds_process']['ratio_to_one_seed']:.2f}x "
         f"one seed), {many['peak_mib']:.0f} MiB"),
        (f"{args.seeds} seeds, whole process, one by one",
         f"{one_by_one['wall_s']:.2f} s "
         f"({result['many_seeds_one_by_one_process']['ratio_to_one_seed']:.2f}x one seed), "
         f"{one_by_one['peak_mib']:.0f} MiB"),
        ("one seed with --out under cProfile (inflated), of which:",
         f"{profiled['wall_s']:.2f} s"),
        *((f"  {label}", f"{sec:.2f} s") for label, sec in profiled["phases"].items()),
        ("import experiments.split_mnist alone (median)", f"{imports:.2f} s"),
        ("compile (first training minus warm)", f"{loop['compile_s']:.2f} s"),
        ("training loop, one seed, sparse step (warm)", f"{loop['warm_run_s']:.2f} s "
         f"({', '.join(f'{t:.2f}' for t in loop['per_task_s'])} per task)"),
        ("  steps / s", f"{loop['steps_per_s']:.0f} ({loop['steps']} steps)"),
        ("training loop, one seed, masked step (warm)",
         f"{loops['masked']['warm_run_s']:.2f} s"),
        ("dense floor, same steps and loop", f"{floor:.2f} s "
         f"({result['dense_floor']['gflops']:.0f} GFLOP/s)"),
        ("sparse step / dense", f"{result['ratio_spacenet_to_dense']:.2f}x"),
        ("masked step / dense", f"{result['ratio_masked_to_dense']:.2f}x"),
        (f"training loop, {args.seeds} seeds vmapped (warm)",
         f"{batched['warm_run_s']:.2f} s ({batched['ratio_to_one_seed']:.2f}x one seed)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"split MNIST benchmark on {result['device']} ({result['cpu_count']} CPUs), "
          f"JAX {result['jax']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()

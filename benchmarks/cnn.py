"""Benchmark: the paper's CNN train step (Section 5.3) on this machine, against the GEMM floor.

    python -m benchmarks.cnn --data-dir ../shared/datasets
    python -m benchmarks.cnn --data-dir ../shared/datasets --torch-python /path/to/venv/bin/python

Prints a table and writes JSON (default ``runs/benchmarks/cnn.json``). Every figure is the
median over ``--repeats`` timed calls after two warm-up calls, in this process:

* ``forward``: the logits of a batch of 128 (uint8 pixels in, as in training);
* ``gradient``: ``jax.grad`` of the loss with respect to every weight and bias;
* ``spacenet step``: the SpaceNet train step as training runs it (``training.train_step``:
  gradient, masked update, Omega, metrics) on the state of split CIFAR-10's first task;
* the same step with XLA's own convolution gradient (``custom_gradient`` off) and, in a child
  process started with ``SPACENET_XLA_DEFAULTS=1``, with XLA:CPU's default flags (YNNPACK
  convolutions, see ``spacenet_jax.core.compiler``), to show what each choice is worth;
* ``epoch``: one epoch of split CIFAR-10's first task (10000 images, 79 steps) as ``learn_task``
  runs it on this backend (a host loop of jitted steps, or one ``lax.scan``), and the other
  form beside it, per step;
* the FLOPs of a step (forward ``2 * B * MACs``, backward twice that, without the first layer's
  input gradient), the rate each figure achieves, and the GEMM floor of the machine: a
  2048 x 2048 x 2048 float32 matrix product's rate, and the step's FLOPs at that rate;
* with ``--torch-python``, the PyTorch CPU SGD step of the same dense network
  (``../shared/notes/torch_cnn_step.py``, run in that interpreter, e.g. a separate virtual
  environment with torch) in the same run, and the ratio of the SpaceNet step to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.split_cifar10 import SPLIT_CIFAR10
from spacenet_jax.core import layers, training
from spacenet_jax.core.compiler import CPU_FLAG
from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.continual import begin_task, make_task_data
from spacenet_jax.core.network import forward, preprocess
from spacenet_jax.core.state import init_state
from spacenet_jax.storage.data import load_dataset, task_indices
from spacenet_jax.storage.results_io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
TORCH_SCRIPT = ROOT.parent / "shared" / "notes" / "torch_cnn_step.py"


def step_flops(config: SpaceNetConfig) -> float:
    """FLOPs of one dense train step of the CNN: ``2 * B * MACs`` forward, twice that backward,
    less the first layer's input gradient (the images need none)."""
    h, w = config.image_shape[:2]
    macs, first = 0, 0
    for layer in range(config.num_layers):
        if config.is_conv(layer):
            k = config.kernel_size
            if config.conv_padding[layer] == "VALID":
                h, w = h - k + 1, w - k + 1
            layer_macs = h * w * k * k * config.layer_sizes[layer] * config.layer_sizes[layer + 1]
            if layer in config.pool_after:
                h, w = h // 2, w // 2
        else:
            rows, cols = config.mask_shape(layer)
            layer_macs = rows * cols
        macs += layer_macs
        first = first or layer_macs
    return 2.0 * config.batch_size * (3 * macs - first)


def forward_flops(config: SpaceNetConfig) -> float:
    """FLOPs of the forward pass of a batch: ``2 * B * MACs``."""
    first = _first_layer_macs(config)
    return (step_flops(config) + 2.0 * config.batch_size * first) / 3.0


def _first_layer_macs(config: SpaceNetConfig) -> int:
    h, w = config.image_shape[:2]
    k = config.kernel_size
    if config.conv_padding[0] == "VALID":
        h, w = h - k + 1, w - k + 1
    return h * w * k * k * config.layer_sizes[0] * config.layer_sizes[1]


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall milliseconds of ``fn()`` (blocked until ready) after two warm-up calls."""
    for _ in range(2):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def gemm_floor(repeats: int, n: int = 2048) -> dict[str, float]:
    """The machine's float32 GEMM rate: an ``n x n x n`` product through XLA."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    ms = median_ms(lambda: matmul(a, a), repeats)
    return {"n": n, "ms": ms, "gflops": 2.0 * n**3 / ms / 1e6}


def _loss(params, config: SpaceNetConfig, images, labels):
    logits = forward(*params, preprocess(images, config), config)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def step_timings(
    config: SpaceNetConfig, state, images, labels, repeats: int, step_only: bool = False
) -> dict[str, float]:
    """Forward, gradient and SpaceNet step, and the step with XLA's convolution gradient."""
    weights = jnp.ones(labels.shape, jnp.float32)
    masks = training.trainable_masks(state)

    def spacenet_step(custom_gradient: bool):
        use = layers.use_custom_conv_gradient
        layers.use_custom_conv_gradient = lambda: custom_gradient  # read while tracing
        try:
            step = jax.jit(partial(training._train_step, config=config))
            jax.block_until_ready(step(state, masks=masks, images=images, labels=labels,
                                       example_weights=weights))
        finally:
            layers.use_custom_conv_gradient = use
        return lambda: step(state, masks=masks, images=images, labels=labels,
                            example_weights=weights)

    ours = spacenet_step(layers.use_custom_conv_gradient())
    if step_only:
        return {"spacenet_step_ms": median_ms(ours, repeats)}
    fwd = jax.jit(lambda p, x: forward(*p, preprocess(x, config), config))
    grad = jax.jit(jax.grad(partial(_loss, config=config)))
    xla_gradient = spacenet_step(False)
    return {
        "forward_ms": median_ms(lambda: fwd(state.params, images), repeats),
        "gradient_ms": median_ms(
            lambda: grad(state.params, images=images, labels=labels), repeats
        ),
        "spacenet_step_ms": median_ms(ours, repeats),
        "spacenet_step_xla_conv_gradient_ms": median_ms(xla_gradient, repeats),
    }


def default_flags_step(args: argparse.Namespace) -> float | None:
    """The SpaceNet step (ms) in a child process with XLA:CPU's default flags."""
    env = {**os.environ, "SPACENET_XLA_DEFAULTS": "1"}
    # drop the flag this process added (inherited flags would keep YNNPACK off in the child)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f != CPU_FLAG)
    command = [sys.executable, "-m", "benchmarks.cnn", "--step-only", "--width", args.width,
               "--repeats", str(args.repeats)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        print(f"(the default-flags step failed: {result.stderr.strip()[-300:]})")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["spacenet_step_ms"]


def epoch_timings(config: SpaceNetConfig, dataset, repeats: int) -> dict[str, Any]:
    """One epoch of split CIFAR-10's first task as ``learn_task`` runs it (one ``lax.scan``,
    ``continual.train_epoch_and_rewire``) and as a host loop of the same jitted loop body
    (``training.train_epoch_stepwise``); no rewiring is due after this epoch in either."""
    from spacenet_jax.core.continual import train_epoch_and_rewire

    examples = task_indices(dataset.train_labels, config.task_classes)
    task = make_task_data(dataset.train_images, dataset.train_labels, examples,
                          config.batch_size)[0]
    steps = -(-task.num_examples // config.batch_size)
    state, _ = begin_task(init_state(config, 0), config)
    no_rewire = jnp.asarray(False)
    num = jnp.asarray(task.num_examples, jnp.int32)
    forms = {
        "stepwise": lambda s: training.train_epoch_stepwise(
            s, config, task.images, task.labels, task.indices, num)[0],
        "scan": lambda s: train_epoch_and_rewire(
            s, config, task.images, task.labels, task.indices, num, no_rewire)[0],
    }
    out: dict[str, Any] = {"steps": steps, "examples": task.num_examples}
    for name, fn in forms.items():
        def run(fn=fn):
            return fn(jax.tree.map(jnp.copy, state))  # a copy: the scan donates its state
        times = [median_ms(run, 1) for _ in range(max(1, repeats // 3))]
        ms = statistics.median(times)
        out[f"{name}_epoch_s"] = ms / 1000.0
        out[f"{name}_ms_per_step"] = ms / steps
    out["used_by_learn_task"] = "scan"
    return out


def torch_step(python: str, repeats: int) -> float | None:
    """The PyTorch reference step (ms), run in another interpreter, or None if it fails."""
    if not TORCH_SCRIPT.exists():
        print(f"(no {TORCH_SCRIPT}: PyTorch reference skipped)")
        return None
    result = subprocess.run([python, str(TORCH_SCRIPT), str(repeats)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        print(f"(PyTorch reference failed: {result.stderr.strip()[-300:]})")
        return None
    return float(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="e.g. ../shared/datasets")
    p.add_argument("--repeats", type=int, default=9, help="timed calls per figure (median)")
    p.add_argument("--torch-python", default=None,
                   help="a Python with torch installed, to time the PyTorch reference step")
    p.add_argument("--width", default="paper", choices=("paper", "wide"),
                   help="the paper's CNN (32-32-64-64) or its wide variant (64-64-128-128)")
    p.add_argument("--no-epoch", action="store_true", help="skip the epoch measurement")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/cnn.json"))
    p.add_argument("--step-only", action="store_true",
                   help="only time the SpaceNet step and print it as JSON (for the child run)")
    args = p.parse_args(argv)

    config = SPLIT_CIFAR10
    if args.width == "wide":
        from experiments.cnn import WIDTHS, cnn_config
        config = cnn_config(config.task_classes, config.num_classes, maps=WIDTHS["wide"])
    dataset = load_dataset("cifar10", args.data_dir, verbose=False)
    rng = np.random.default_rng(0)
    pick = rng.choice(dataset.train_images.shape[0], config.batch_size, replace=False)
    images = jnp.asarray(dataset.train_images[pick])
    labels = jnp.asarray(dataset.train_labels[pick] % 2, jnp.int32)
    state, _ = begin_task(init_state(config, 0), config)

    if args.step_only:
        print(json.dumps(step_timings(config, state, images, labels, args.repeats, True)))
        return {}
    flops = step_flops(config)
    floor = gemm_floor(args.repeats)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "custom_conv_gradient": layers.use_custom_conv_gradient(),
        "config": {"layer_sizes": config.layer_sizes, "batch_size": config.batch_size},
        "step_gflop": flops / 1e9,
        "forward_gflop": forward_flops(config) / 1e9,
        "gemm_floor": floor,
        "step_at_gemm_rate_ms": flops / floor["gflops"] / 1e6,
    }
    result.update(step_timings(config, state, images, labels, args.repeats))
    result["spacenet_step_xla_default_flags_ms"] = default_flags_step(args)
    if not args.no_epoch:
        result["epoch"] = epoch_timings(config, dataset, args.repeats)
    if args.torch_python:
        result["torch_step_ms"] = torch_step(args.torch_python, args.repeats)
        if result["torch_step_ms"]:
            result["spacenet_over_torch"] = result["spacenet_step_ms"] / result["torch_step_ms"]
            if "epoch" in result:  # the step as training runs it, inside the compiled epoch
                used = result["epoch"]["used_by_learn_task"]
                result["training_step_over_torch"] = (
                    result["epoch"][f"{used}_ms_per_step"] / result["torch_step_ms"])
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return result


def print_table(r: dict[str, Any]) -> None:
    gf = r["step_gflop"]

    def rate(ms: float, flop: float = gf) -> str:
        return f"{ms:8.1f} ms  {flop / ms * 1e3:6.1f} GFLOP/s"

    rows = [
        ("forward (batch 128)", rate(r["forward_ms"], r["forward_gflop"])),
        ("gradient", rate(r["gradient_ms"])),
        ("SpaceNet train step", rate(r["spacenet_step_ms"])),
        ("  same, XLA:CPU default flags", rate(r["spacenet_step_xla_default_flags_ms"])
         if r.get("spacenet_step_xla_default_flags_ms") else "failed"),
        ("  same, XLA's conv gradient", rate(r["spacenet_step_xla_conv_gradient_ms"])),
        ("GEMM floor (2048^3)", f"{r['gemm_floor']['ms']:8.1f} ms  "
         f"{r['gemm_floor']['gflops']:6.1f} GFLOP/s"),
        ("step FLOPs at the GEMM rate", f"{r['step_at_gemm_rate_ms']:8.1f} ms  "
         f"({gf:.2f} GFLOP a step)"),
    ]
    if "epoch" in r:
        e = r["epoch"]
        for name in ("stepwise", "scan"):
            used = " (learn_task)" if e["used_by_learn_task"] == name else ""
            rows.append((f"epoch, {name}{used}", f"{e[name + '_epoch_s']:8.2f} s   "
                         f"{e[name + '_ms_per_step']:6.1f} ms/step, {e['steps']} steps"))
    if r.get("torch_step_ms"):
        rows.append(("PyTorch CPU step (reference)", f"{r['torch_step_ms']:8.1f} ms"))
        rows.append(("SpaceNet step / PyTorch step", f"{r['spacenet_over_torch']:8.2f}x"))
        if "training_step_over_torch" in r:
            rows.append(("  the epoch's step / PyTorch step",
                         f"{r['training_step_over_torch']:8.2f}x"))
    width = max(len(name) for name, _ in rows)
    print(f"CNN benchmark, {r['backend']} ({r['device']}), jax {r['jax']}, {r['date']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()

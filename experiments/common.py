"""Shared command line of the experiments: flags, the seed loop, the final table, results.json."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from spacenet_jax.core.config import (
    INFERENCE,
    INPUT_NORMALISATIONS,
    METHODS,
    NEGATIVES,
    OUTPUT_COLUMNS,
    TASK_SCORES,
    TRAINING_STEPS,
    ConfigError,
    SpaceNetConfig,
    parse_int_list,
)
from spacenet_jax.running import metrics
from spacenet_jax.running.interrupts import (
    INTERRUPTED_STATUS,
    interrupts_as_keyboard_interrupt,
    resume_command,
)
from spacenet_jax.running.study import StudyError, plan_study, run_seeds
from spacenet_jax.storage.checkpoint import (
    CheckpointError,
    check_checkpoint_dir,
    saved_tasks,
    seed_dir,
)
from spacenet_jax.storage.data import DatasetError, ImageDataset, hold_out_validation, load_dataset
from spacenet_jax.storage.folder_lock import FolderLockError, lock_folder, releases_locks
from spacenet_jax.storage.results_io import (
    ResultsFileError,
    check_output_folder,
    provenance,
    write_json_atomic,
)
from spacenet_jax.storage.results_schema import load_results
from spacenet_jax.storage.training_log import TrainingLog

#: Dataset (a ``spacenet_jax.storage.data.load_dataset`` name) of each benchmark, for
#: checkpoints that do not name theirs.
BENCHMARK_DATASETS: dict[str, str] = {
    "split_mnist": "mnist",
    "split_fashion_mnist": "fashion_mnist",
    "split_cifar10": "cifar10",
    "cifar10_100": "cifar10_100",
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


def version_line() -> str:
    """``--version``'s answer: this package's version and the JAX stack it runs on."""
    import flax
    import jax
    import optax

    import spacenet_jax

    return (f"spacenet-jax {spacenet_jax.__version__} (jax {jax.__version__}, flax "
            f"{flax.__version__}, optax {optax.__version__})")


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
    g.add_argument("--method", choices=list(METHODS), default=defaults.method,
                   help="; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    g.add_argument(
        "--data-dir", default=None,
        help="folder holding one sub-folder per dataset with the canonical files (offline use, "
        "e.g. ../shared/datasets); must exist; the cache is rebuilt if its files changed. "
        "Default: $SPACENET_DATA_DIR, else the cache, else a tfds download (checked first: "
        "offline, the command stops within seconds)",
    )
    g.add_argument("--out", type=Path, default=None,
                   help="write OUT/results.json (merged with the runs it already holds), "
                   "OUT/epochs.jsonl (training curves) and OUT/final_task_accuracy.png")
    g.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="also write the training curves and test accuracies as TensorBoard "
                   "event files in DIR/seed_<seed> (needs tensorboardX)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--version", action="version", version=version_line())
    g.add_argument(
        "--dry-run", action="store_true",
        help="print the capacity plan (neurons and connections per layer per task, capacity "
        "used at the end; with --out also OUT/capacity_plan.json) and stop before loading data",
    )
    g.add_argument(
        "--seed-batch", type=int, default=None,
        help="seeds trained together as one vmapped program, sharded over every device "
        "(default: all of them; a CNN on the CPU: 1, one seed after another)",
    )
    g.add_argument(
        "--checkpoint-dir", type=Path, default=None,
        help="save an orbax checkpoint of the whole state after every task, in "
        "CHECKPOINT_DIR/seed_<seed>/<tasks learned>; with --resume, an unfinished seed "
        "continues from its latest one",
    )

    d = p.add_argument_group(
        "several hosts (a TPU pod slice, GPU machines): start the same command on every host"
    )
    d.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first: the seeds are sharded over "
                   "every host's devices; process 0 prints and writes the results")
    d.add_argument("--coordinator-address", default=None,
                   help="HOST:PORT of process 0 (default: detected on TPU pods, SLURM, Open MPI)")
    d.add_argument("--num-processes", type=int, default=None, help="number of processes")
    d.add_argument("--process-id", type=int, default=None, help="this process's index")

    h = p.add_argument_group("hyper-parameters (defaults: the paper's)")
    if defaults.is_cnn:  # the CNN experiments add --width / --dense and derive the counts
        h.add_argument("--connections", type=parse_int_list, default=None,
                       help="connections (kernels for conv layers) per task in each layer, "
                       "comma separated (default: from --weights-per-task)")
        h.add_argument("--selected-neurons", type=parse_int_list, default=None,
                       help="selected feature maps / neurons per task in each hidden layer "
                       "(default: all free ones, as in the paper)")
    else:
        h.add_argument("--hidden", type=parse_int_list, default=defaults.layer_sizes[1:-1],
                       help="hidden layer sizes, comma separated")
        h.add_argument("--connections", type=parse_int_list,
                       default=defaults.connections_per_task,
                       help="connections per task in each weight matrix, comma separated")
        h.add_argument("--selected-neurons", type=parse_int_list,
                       default=defaults.selected_neurons,
                       help="selected neurons per task in each hidden layer")
    h.add_argument("--specific-neurons", type=parse_int_list, default=defaults.specific_neurons,
                   help="neurons reserved per task in each hidden layer")
    h.add_argument("--rewire-ratio", type=float, default=defaults.rewire_ratio,
                   help="fraction r of connections dropped and regrown after each epoch")
    h.add_argument("--replay-per-task", type=int, default=defaults.replay_per_task,
                   help="rehearsal: training examples kept per earlier task (0: all of them)")
    h.add_argument("--output-columns", choices=list(OUTPUT_COLUMNS),
                   default=defaults.output_columns,
                   help="finished tasks' output columns while later tasks train: "
                   + "; ".join(f"{k}: {v}" for k, v in OUTPUT_COLUMNS.items()))
    h.add_argument("--inference", choices=list(INFERENCE), default=defaults.inference,
                   help="which network scores each task's classes (no task identity either "
                   "way): " + "; ".join(f"{k}: {v}" for k, v in INFERENCE.items()))
    h.add_argument("--task-scores", choices=list(TASK_SCORES), default=defaults.task_scores,
                   help="with --inference per_task, the scale on which each task's sub-network "
                   "scores its classes: " + "; ".join(f"{k}: {v}" for k, v in TASK_SCORES.items()))
    h.add_argument("--logit-weight", type=float, default=defaults.logit_weight,
                   help="with --task-scores other than logits: the raw logit added to each "
                   "class's score with this weight (0: the rule alone)")
    h.add_argument("--negatives", choices=list(NEGATIVES), default=defaults.negatives,
                   help="what each task's head learns to score below its own images, without "
                   "other tasks' data (beyond the paper; for --inference per_task): "
                   + "; ".join(f"{k}: {v}" for k, v in NEGATIVES.items()))
    h.add_argument("--negatives-weight", type=float, default=defaults.negatives_weight,
                   help="weight of the --negatives term in the loss")
    h.add_argument("--validation", type=int, default=defaults.validation_per_class,
                   metavar="N", help="hold out N training examples per class as a validation "
                   "set, evaluated beside the test set after every task (choose settings on it, "
                   "not on the test set); 0: none")
    h.add_argument("--validation-seed", type=int, default=defaults.validation_seed,
                   help="seed of the validation draw (independent of --seed)")
    h.add_argument("--input-normalisation", choices=list(INPUT_NORMALISATIONS),
                   default=defaults.input_normalisation,
                   help="how pixels become the network's inputs: "
                   + "; ".join(f"{k}: {v}" for k, v in INPUT_NORMALISATIONS.items()))
    h.add_argument("--lr", type=float, default=defaults.learning_rate, help="SGD learning rate")
    h.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    h.add_argument("--batch-size", type=int, default=defaults.batch_size)
    h.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per task")
    h.add_argument("--training-step", choices=list(TRAINING_STEPS),
                   default=defaults.training_step,
                   help="how an epoch computes the task's steps (the same training up to float "
                   "rounding): " + "; ".join(f"{k}: {v}" for k, v in TRAINING_STEPS.items()))
    return p


def config_from_args(args: argparse.Namespace, defaults: SpaceNetConfig) -> SpaceNetConfig:
    return dataclasses.replace(
        defaults,
        layer_sizes=(defaults.layer_sizes[0], *args.hidden, defaults.layer_sizes[-1]),
        connections_per_task=args.connections,
        selected_neurons=args.selected_neurons,
        specific_neurons=args.specific_neurons,
        rewire_ratio=args.rewire_ratio,
        method=args.method,
        replay_per_task=args.replay_per_task,
        output_columns=args.output_columns,
        inference=args.inference,
        learning_rate=args.lr,
        momentum=args.momentum,
        training_step=args.training_step,
        batch_size=args.batch_size,
        epochs=args.epochs,
    )


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any], file: Any = None) -> None:
    """The final table: per seed, each task's accuracy after the last task, the average (the
    paper's metric), the task-incremental average, the accuracy over all test images and the
    average forgetting, all in %, as everything people read (the JSON files hold fractions)."""
    file = file or sys.stdout  # at call time (a redirected or captured stdout)
    pct = metrics.percent
    T = len(runs[0]["final_task_acc"])
    head = " ".join(f"task{j + 1:>2}" for j in range(T))
    print(f"\naccuracy (%) after the last task\n{'seed':>5} {head}  average  task-IL  overall"
          f"  forget  seconds", file=file)
    for r in runs:
        cells = " ".join(f"{pct(a):>6}" for a in r["final_task_acc"])
        print(
            f"{r['seed']:>5} {cells}  {pct(r['final_avg_acc']):>7}  "
            f"{pct(r.get('final_task_il_avg_acc')):>7}  {pct(r['final_overall_acc']):>7}  "
            f"{pct(r['avg_forgetting']):>6}  {r['seconds']['total']:7.1f}",
            file=file,
        )
    avg = summary["final_avg_acc"]
    print(
        f"\nfinal average accuracy over {avg['n']} seed(s): {pct(avg['mean'], 2)} % "
        f"+- {pct(avg['std'], 2)} (sd), +- {pct(avg['sem'], 2)} (sem)",
        file=file,
    )
    validation = summary.get("validation")
    if validation is not None:
        val, val_il = validation["final_avg_acc"], validation["final_task_il_avg_acc"]
        print(
            f"validation set: final average {pct(val['mean'], 2)} % +- {pct(val['std'], 2)} "
            f"(sd), task-incremental {pct(val_il['mean'], 2)} %",
            file=file,
        )
    task_il = summary.get("final_task_il_avg_acc")
    if task_il is not None:
        print(
            f"task-incremental (argmax within each task's classes): {pct(task_il['mean'], 2)} % "
            f"+- {pct(task_il['std'], 2)} (sd)",
            file=file,
        )


def load_or_exit(dataset_name: str, data_dir: str | None, quiet: bool) -> ImageDataset:
    """Load a dataset, or print what is wrong with it and exit with status 2."""
    try:
        return load_dataset(dataset_name, data_dir, verbose=not quiet)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def claim_run_folders(out_dir: Path | None, checkpoint_dir: Path | None, seeds: list[int]) -> None:
    """Before any work: refuse a ``--checkpoint-dir`` that cannot hold checkpoints, and lock
    ``--out`` and every seed's checkpoint folder for this run (until ``main`` returns), or
    exit with status 2 naming the folder and, when another run holds it, that run's pid and
    host. Runs of other seeds may share a ``--checkpoint-dir``; no two runs share an ``--out``.
    """
    try:
        if checkpoint_dir is not None:
            check_checkpoint_dir(checkpoint_dir, seeds)
            for seed in seeds:
                lock_folder(seed_dir(checkpoint_dir, seed), what="checkpoints",
                            other="another --checkpoint-dir")
        if out_dir is not None:
            lock_folder(out_dir, what="results", other="another --out")
    except (CheckpointError, FolderLockError) as err:
        refuse(str(err))


def refuse(message: str) -> NoReturn:
    """Print ``error: message`` and exit with status 2 (what the command line does with
    everything refused before any work)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def start_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """``jax.distributed.initialize`` (before any computation), with CPU collectives enabled
    so that results can be gathered between CPU processes too."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _interrupted_message(signal_name: str, out: Path | None, checkpoint_dir: Path | None,
                         seeds: list[int], argv: list[str] | None) -> str:
    """One line after Ctrl-C or SIGTERM: what is kept, and the command that continues."""
    kept = []
    if out is not None and out.exists():
        with contextlib.suppress(OSError, ValueError):
            done = [r["seed"] for r in load_results(out)["runs"]]
            kept.append(f"results of seed(s) {', '.join(map(str, done))} in {out}")
    if checkpoint_dir is not None:
        for seed in seeds:
            folder = seed_dir(checkpoint_dir, seed)
            steps = saved_tasks(folder)
            if steps:
                kept.append(f"seed {seed} after task {steps[-1]} in {folder}")
    if out is None and checkpoint_dir is None:
        return (f"interrupted ({signal_name}): nothing was saved; run with --out (and "
                f"--checkpoint-dir to keep every finished task) to keep progress")
    what = "; ".join(kept) if kept else "nothing finished yet"
    own = argv is None or list(argv) == sys.argv[1:]  # else main() was called from Python
    command = resume_command(None if own else ["<command>", *argv])
    lost = "" if checkpoint_dir is not None else " (without --checkpoint-dir the seed in " \
        "progress starts again)"
    return f"interrupted ({signal_name}); kept: {what}. Continue with: {command}{lost}"


@contextlib.contextmanager
def command_line_process() -> Iterator[None]:
    """Wrap a command's ``main`` in its ``__main__`` block: garbage collection for a process
    that runs one command and exits.

    On entry every object alive (the imported modules' functions, classes and constants) moves
    to the collector's permanent generation (``gc.freeze``), so the collections during the run
    no longer traverse them; after a successful run everything alive is frozen again, so the
    interpreter's exit does not traverse, one by one, the objects that tracing and compiling
    left behind: the operating system frees the memory at once. Measured on a one-seed split
    MNIST process on the 2-core CPU: the collections during the run about 0.09 s shorter,
    the exit about 0.25 s shorter. Frozen objects are never collected, so this is for a
    command-line process only, never around a call inside a test run or a notebook.
    """
    gc.freeze()
    yield
    gc.freeze()


def is_main_process() -> bool:
    """True in a single-process run and in process 0 of a distributed one."""
    import jax

    return jax.process_index() == 0


@releases_locks  # the folders claim_run_folders locks are freed when main returns or raises
def main(
    benchmark: str,
    dataset_name: str,
    description: str,
    defaults: SpaceNetConfig,
    argv: list[str] | None = None,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    make_config: Callable[[argparse.Namespace, SpaceNetConfig], SpaceNetConfig] | None = None,
    load: Callable[[str | None, bool], ImageDataset] | None = None,
    presets: Mapping[str, SpaceNetConfig] | None = None,
) -> dict[str, Any]:
    """Parse flags, run every seed, print the table and write ``results.json`` and a PNG.

    Args:
      benchmark: name in the records; dataset_name: for ``load_dataset``.
      description: ``--help``'s first line; defaults: the paper's configuration.
      argv: the arguments (default ``sys.argv[1:]``).
      add_arguments: adds an experiment's own flags to the parser.
      make_config: ``(args, defaults) -> config`` (default ``config_from_args``).
      load: ``(data_dir, quiet) -> dataset`` (default: ``load_dataset(dataset_name)``).
      presets: named configurations (``--preset NAME``) whose values become the flags'
        defaults instead of ``defaults`` (e.g. ``tuned``: chosen on a validation split).
    """
    from spacenet_jax.running.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    preset_help = None
    if presets:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--preset", choices=list(presets), default=None)
        chosen = pre.parse_known_args(argv)[0].preset
        if chosen is not None:
            defaults = presets[chosen]
        preset_help = ("start from a named configuration (every other flag still overrides "
                       "it): " + ", ".join(presets) + "; default: the paper's")
    parser = build_parser(description, defaults)
    if presets:
        parser.add_argument("--preset", choices=list(presets), default=None, help=preset_help)
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds already in OUT/results.json and run the others; "
                        "with --checkpoint-dir, continue unfinished seeds from their latest "
                        "checkpoint (seeds without one start from scratch)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = dataclasses.replace(
            (make_config or config_from_args)(args, defaults),
            validation_per_class=args.validation, validation_seed=args.validation_seed,
            task_scores=args.task_scores, logit_weight=args.logit_weight,
            negatives=args.negatives,
            negatives_weight=args.negatives_weight,
            input_normalisation=args.input_normalisation,
        )
    except ConfigError as err:
        parser.error(f"impossible configuration: {err}")
    seeds = args.seeds if args.seeds is not None else [args.seed]
    if args.dry_run:
        from spacenet_jax.running.capacity import capacity_plan, format_plan

        plan = capacity_plan(config)
        print(format_plan(plan))
        if args.out is not None:
            try:
                check_output_folder(args.out)
            except ResultsFileError as err:
                refuse(str(err))
            write_json_atomic(args.out / "capacity_plan.json", plan)
            print(f"written: {args.out / 'capacity_plan.json'}")
        return {"plan": plan}
    if args.distributed:
        if args.checkpoint_dir is not None:
            parser.error("--checkpoint-dir is not supported with --distributed yet: results.json "
                         "is still rewritten after every batch of seeds")
        start_distributed(args.coordinator_address, args.num_processes, args.process_id)
    if not is_main_process():  # the other processes compute and stay quiet
        args.quiet, args.out = True, None
    if args.seed_batch is not None and args.seed_batch < 1:
        parser.error(f"--seed-batch must be at least 1, not {args.seed_batch}")
    if args.resume and args.out is None and args.checkpoint_dir is None:
        parser.error("--resume needs --out (the folder whose results.json to continue) or "
                     "--checkpoint-dir")
    out = args.out / "results.json" if args.out is not None else None
    try:  # everything refused before any work: exit 2 with what is wrong and how to fix it
        if args.out is not None:  # a file, or a folder we cannot write in
            check_output_folder(args.out)
        if args.tensorboard is not None:
            check_output_folder(args.tensorboard, "--tensorboard")
        claim_run_folders(args.out, args.checkpoint_dir, seeds)  # one run per folder
        plan = plan_study(config, seeds, benchmark=benchmark, results_path=out,
                          checkpoint_dir=args.checkpoint_dir, resume=args.resume)
        dataset = (load_or_exit(dataset_name, args.data_dir, args.quiet) if load is None
                   else load(args.data_dir, args.quiet))
        # an impossible --validation now, not when the first seed starts
        hold_out_validation(dataset, config.validation_per_class, config.validation_seed)
        training_log = TrainingLog(args.out, plan.tasks_done(seeds), config.epochs,
                                   args.tensorboard) \
            if is_main_process() and (args.out or args.tensorboard) else None
    except (ResultsFileError, CheckpointError, FolderLockError, DatasetError, ImportError) as err:
        refuse(str(err))

    start = time.perf_counter()
    try:
        with interrupts_as_keyboard_interrupt():
            payload = run_seeds(
                config, dataset, seeds, benchmark=benchmark, out=out, progress=not args.quiet,
                finished=plan.finished, checkpoint_dir=args.checkpoint_dir,
                dataset_name=dataset_name, resume_from=plan.resume_from,
                seed_batch=args.seed_batch, run_provenance=provenance(argv),
                on_epoch_end=training_log.epoch_end if training_log is not None else None,
                on_task_end=training_log.task_end if training_log is not None else None,
            )
    except StudyError as err:
        print(f"error ({err})", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as err:
        print(_interrupted_message(str(err) or "SIGINT", out, args.checkpoint_dir, seeds, argv),
              file=sys.stderr)
        raise SystemExit(INTERRUPTED_STATUS) from None
    finally:
        if training_log is not None:
            training_log.close()
    if not is_main_process():
        return payload
    print_table(payload["runs"], payload["summary"])
    print(f"wall-clock: {time.perf_counter() - start:.1f}s for {len(seeds)} seed(s)")
    if out is not None:
        from spacenet_jax.analysis.plots import plot_final_task_accuracy

        try:
            png = plot_final_task_accuracy(
                payload["runs"], args.out / "final_task_accuracy.png",
                title=f"{benchmark} ({config.method}): accuracy on each task after the last",
            )
            print(f"results written to {out} and {png}")
        except OSError as err:
            print(f"error: could not write the figure in {args.out} ({err})", file=sys.stderr)
    return payload

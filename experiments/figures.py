"""Draw the paper's figures of a finished run and write its Markdown report.

    python -m experiments.figures RUN_DIR [--checkpoint-dir DIR] [--compare OTHER_RUN_DIR]
        [--compare-checkpoint-dir DIR] [--seed S] [--format png|pdf] [--data-dir DIR]

RUN_DIR is an experiment's ``--out`` folder (it holds ``results.json``). Checkpoints are read
from ``--checkpoint-dir`` (default ``RUN_DIR/checkpoints``), the one seed ``--seed`` (default:
the first seed of the run). Writes into ``RUN_DIR/figures/``, each figure with its data as JSON
beside it (same stem):

* ``accuracy_matrix``          -- accuracy on each task after each task (mean over seeds);
* ``final_task_accuracy``      -- Figure 3: accuracy on each task after the last (mean, spread);
* ``capacity``                 -- free / shared / reserved neurons and connections after each task;
* ``fig4_activations``         -- Figure 4: hidden activations of task 1's test images after task 1;
* ``fig5_connections``         -- Figure 5: task 2's connections before and after its training;
* ``fig6_input_connections``   -- Figure 6: connections leaving each input pixel for three tasks,
  with the ``--compare`` run (e.g. Static-SparseNN) beside;

then ``RUN_DIR/report.md`` (configuration, accuracy table, metrics, the figures, versions) and
prints every path written. Without checkpoints it draws what ``results.json`` allows (accuracy
matrix, Figure 3, capacity without the free / shared split) and says which figures it skipped
and why; Figures 4-6 need an MLP (a CNN run skips them). Figure 4 also needs the test images:
the dataset named in the checkpoint, from ``--data-dir`` (default ``$SPACENET_DATA_DIR``).

Exit status 2 when ``results.json`` is missing or unreadable, or ``--seed`` is not in the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Figure name -> (heading in the report, one-line description).
FIGURES: dict[str, tuple[str, str]] = {
    "accuracy_matrix": (
        "Accuracy matrix",
        "Test accuracy on each task (columns) after training each task (rows), mean over seeds.",
    ),
    "final_task_accuracy": (
        "Accuracy on each task after the last task (paper Figure 3)",
        "Bars: mean over seeds, error bars: sample sd, dots: each seed; dashed: the average.",
    ),
    "capacity": (
        "Capacity used after each task",
        "Reserved, shared and free neurons per hidden layer, and connections in use.",
    ),
    "fig4_activations": (
        "Hidden activations after task 1 (paper Figure 4)",
        "Activations of 50 test images of each class of task 1 after task 1: sparse.",
    ),
    "fig5_connections": (
        "A task's connections before and after adaptive training (paper Figure 5)",
        "Allocated at random (a), then gathered on fewer neurons by drop and grow (b, c).",
    ),
    "fig6_input_connections": (
        "Connections leaving each input pixel (paper Figure 6)",
        "Per task, the first-layer connections of each pixel, as an image.",
    ),
}

#: How the figures and the report name each method.
METHOD_LABELS: dict[str, str] = {
    "spacenet": "SpaceNet",
    "static": "Static-SparseNN",
    "rehearsal": "SpaceNet-Rehearsal",
    "finetune": "Fine-tuning",
    "joint": "Joint training",
}


class FiguresError(RuntimeError):
    """Nothing can be drawn: no readable results.json, or a seed the run does not have."""


def _progress(message: str) -> None:
    print(f"[figures] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class FigureOutput:
    """What ``make_figures`` wrote.

    Attributes:
      figures: figure name (a key of ``FIGURES``) -> the figure file, in drawing order.
      skipped: figure name -> why it was not drawn.
      notes: other remarks (e.g. a comparison run that could not be used).
      report: ``RUN_DIR/report.md``.
    """

    figures: dict[str, Path]
    skipped: dict[str, str]
    notes: list[str]
    report: Path

    @property
    def paths(self) -> list[Path]:
        """Every file written: the figures, their JSON data, and the report."""
        out = []
        for path in self.figures.values():
            out += [path, path.with_suffix(".json")]
        return [*out, self.report]


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/results.json`` (``load_results``), holding at least one run; raises
    ``FiguresError``."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FiguresError(
            f"{path} not found: RUN_DIR must be an experiment's --out folder (e.g. python -m "
            f"experiments.split_mnist --out RUN_DIR --checkpoint-dir RUN_DIR/checkpoints)"
        )
    from spacenet_jax.results_schema import ResultsFormatError, load_results

    try:
        payload = load_results(path)
    except (OSError, ResultsFormatError) as err:
        raise FiguresError(str(err)) from None
    if not payload["runs"]:
        raise FiguresError(f"{path} holds no runs")
    return payload


def _run_of_seed(runs: list[dict[str, Any]], seed: int | None, where: Path) -> dict[str, Any]:
    if seed is None:
        return runs[0]
    for run in runs:
        if run.get("seed") == seed:
            return run
    have = ", ".join(str(r.get("seed")) for r in runs)
    raise FiguresError(f"{where} has no run of seed {seed} (seeds: {have})")


class _Checkpoints:
    """One seed's checkpoints, restored on demand and kept (host arrays)."""

    def __init__(
        self, directory: Path, config: Any, seed: int, benchmark: str | None,
        progress: Callable[[str], None] = _progress,
    ) -> None:
        from spacenet_jax.checkpoint import saved_tasks, seed_dir

        self.progress = progress
        self.folder = seed_dir(directory, seed)
        self.config, self.seed, self.benchmark = config, seed, benchmark
        self.steps = saved_tasks(self.folder)
        if not self.steps and saved_tasks(directory):  # given one seed's folder itself
            self.folder, self.steps = Path(directory), saved_tasks(directory)
        self._states: dict[int, Any] = {}

    def state(self, step: int) -> Any:
        """The state after ``step`` tasks (``step == 0``: the initial state of the seed)."""
        from spacenet_jax.checkpoint import restore_task
        from spacenet_jax.state import init_state

        if step not in self._states:
            if step == 0:
                self._states[0] = init_state(self.config, self.seed)
            else:
                self.progress(f"restoring {self.folder / str(step)}")
                self._states[step], _ = restore_task(
                    self.folder, self.config, self.seed, step, benchmark=self.benchmark
                )
        return self._states[step]

    def dataset_name(self) -> str | None:
        from spacenet_jax.checkpoint import read_metadata

        return read_metadata(self.folder).get("dataset") if self.steps else None


def _default_pixel_tasks(num_tasks: int) -> list[int]:
    """First, middle and last task (0-based), as the paper's three columns."""
    return sorted({0, num_tasks // 2, num_tasks - 1})


def make_figures(
    run_dir: str | Path,
    *,
    checkpoint_dir: str | Path | None = None,
    compare: str | Path | None = None,
    compare_checkpoint_dir: str | Path | None = None,
    seed: int | None = None,
    format: str = "png",
    data_dir: str | None = None,
    dataset: Any | None = None,
    dpi: int = 100,
    connection_task: int = 2,
    connection_layer: int = 1,
    pixel_tasks: Sequence[int] | None = None,
    image_shape: Sequence[int] | None = None,
    command: str | None = None,
    progress: Callable[[str], None] = _progress,
) -> FigureOutput:
    """Draw every figure a run allows into ``RUN_DIR/figures`` and write ``RUN_DIR/report.md``.

    Args:
      run_dir: the experiment's ``--out`` folder, holding ``results.json``.
      checkpoint_dir: its ``--checkpoint-dir`` (default ``run_dir/checkpoints``).
      compare, compare_checkpoint_dir: another run (e.g. ``--method static``) and its
        checkpoints (default ``compare/checkpoints``), drawn beside in Figure 6.
      seed: the seed whose checkpoints are drawn (default: the run's first).
      format: ``"png"`` or ``"pdf"``.
      data_dir: datasets folder for Figure 4's test images; ``dataset``: an ``ImageDataset``
        to use instead of loading the one named in the checkpoint.
      dpi: resolution of the figures.
      connection_task, connection_layer: Figure 5's task (1-based) and weight layer.
      pixel_tasks: Figure 6's tasks (1-based; default first, middle, last).
      image_shape: ``(height, width)`` of the input for Figure 6 (default: square).
      command: the command line quoted in the report.
      progress: called with one line per step.

    Raises:
      FiguresError: no readable ``results.json``, or no run of ``seed``.
    """
    from experiments.common import BENCHMARK_DATASETS
    from spacenet_jax import analysis, plots
    from spacenet_jax.checkpoint import CheckpointError, config_from_dict
    from spacenet_jax.config import ConfigError

    run_dir = Path(run_dir)
    payload = read_results(run_dir)
    runs = payload["runs"]
    record = _run_of_seed(runs, seed, run_dir / "results.json")
    seed = int(record["seed"])
    config = config_from_dict(record["config"])
    benchmark = record.get("benchmark")
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    notes: list[str] = []

    def draw(name: str, fn: Callable[[Path], Path]) -> None:
        target = out_dir / f"{name}.{format}"
        progress(f"drawing {name}")
        try:
            figures[name] = fn(target)
        except (ConfigError, CheckpointError, ValueError, KeyError) as err:
            skipped[name] = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            progress(f"skipped {name}: {skipped[name]}")

    def skip(name: str, reason: str) -> None:
        skipped[name] = reason
        progress(f"skipped {name}: {reason}")

    progress(f"{run_dir / 'results.json'}: {record.get('method')} on {benchmark}, "
             f"{len(runs)} run(s); figures of seed {seed}")
    draw("accuracy_matrix", lambda p: plots.plot_accuracy_matrix(runs, p, dpi=dpi))
    draw("final_task_accuracy", lambda p: plots.plot_final_task_accuracy(
        runs, p, format=format, save_data=True,
        title=f"{benchmark} ({record.get('method')}): accuracy on each task after the last",
        caption="Test accuracy on each task after learning the whole sequence, without task "
                "identity" + (f"; mean and sd over {len(runs)} seeds." if len(runs) > 1 else "."),
    ))

    ck_root = Path(checkpoint_dir) if checkpoint_dir is not None else run_dir / "checkpoints"
    ck = _Checkpoints(ck_root, config, seed, benchmark, progress)
    no_ck = (
        None if ck.steps else
        f"no checkpoint of seed {seed} in {ck.folder} (run the experiment with "
        f"--checkpoint-dir, or pass --checkpoint-dir)"
    )
    if no_ck:
        progress(no_ck)
    else:
        progress(f"checkpoints of seed {seed}: after tasks {ck.steps} in {ck.folder}")

    def capacity_figure(path: Path) -> Path:
        if ck.steps:
            cap = analysis.capacity_over_tasks([ck.state(s) for s in ck.steps], config)
        else:
            cap = analysis.capacity_from_record(record, config)
        return plots.plot_capacity(
            cap, path, dpi=dpi,
            title=f"Capacity used after each task ({METHOD_LABELS.get(config.method, '')}, "
                  f"seed {seed})",
        )

    draw("capacity", capacity_figure)

    mlp_only = (
        f"this run is a CNN ({config.conv_layers} conv layers): Figures 4-6 are drawn for MLPs"
        if config.is_cnn else None
    )

    # Figure 4: activations of task 1's test images after task 1.
    if mlp_only or no_ck:
        skip("fig4_activations", mlp_only or no_ck)
    elif 1 not in ck.steps:
        skip("fig4_activations", f"no checkpoint after task 1 in {ck.folder} (has {ck.steps})")
    else:
        data = dataset
        if data is None:
            from spacenet_jax.data import DatasetError
            from spacenet_jax.inspect import load_checkpoint_dataset

            try:
                name = ck.dataset_name() or BENCHMARK_DATASETS.get(benchmark or "")
                if not name:
                    raise DatasetError("the checkpoint names no dataset")
                progress(f"loading the {name} test images")
                data = load_checkpoint_dataset(name, data_dir)
            except (DatasetError, CheckpointError) as err:
                skip("fig4_activations",
                     f"cannot load the test images ({str(err).splitlines()[0]}); pass --data-dir")
        if data is not None:
            def fig4(path: Path) -> Path:
                acts, labels = analysis.task_activations(
                    ck.state(1), config, data.test_images, data.test_labels, task=0
                )
                return plots.plot_activations(
                    acts, labels, path, dpi=dpi,
                    title=f"Hidden activations of task 1's test images after task 1 "
                          f"({METHOD_LABELS.get(config.method, config.method)}, seed {seed})",
                )

            draw("fig4_activations", fig4)

    # Figure 5: a task's connections as allocated and after its training.
    task5 = min(connection_task, config.num_tasks) - 1
    layer5 = min(connection_layer, config.num_layers - 1)
    if mlp_only or no_ck:
        skip("fig5_connections", mlp_only or no_ck)
    elif not config.sparse:
        skip("fig5_connections", f"method {config.method!r} is dense: each task owns every "
                                 f"connection")
    elif task5 + 1 not in ck.steps or (task5 > 0 and task5 not in ck.steps):
        skip("fig5_connections", f"needs the checkpoints after tasks {task5} and {task5 + 1} "
                                 f"(task 0: the initial state); {ck.folder} has {ck.steps}")
    else:
        def fig5(path: Path) -> Path:
            progress(f"re-running the allocation of task {task5 + 1} (begin_task)")
            allocated = analysis.initial_allocation(ck.state(task5), config)
            conn = analysis.task_connections(allocated, ck.state(task5 + 1), config, layer5)
            return plots.plot_connections(conn, path, dpi=dpi)

        draw("fig5_connections", fig5)

    # Figure 6: connections per input pixel, beside the comparison run.
    if mlp_only or no_ck:
        skip("fig6_input_connections", mlp_only or no_ck)
    elif not config.sparse:
        skip("fig6_input_connections", f"method {config.method!r} is dense: every pixel has "
                                       f"every connection")
    else:
        last = ck.steps[-1]
        wanted = (
            [t - 1 for t in pixel_tasks] if pixel_tasks else _default_pixel_tasks(config.num_tasks)
        )
        tasks6 = [t for t in wanted if 0 <= t < last]
        label = METHOD_LABELS.get(config.method, config.method)

        def fig6(path: Path) -> Path:
            maps = {label: analysis.input_connection_counts(
                ck.state(last), config, tasks6, image_shape)}
            if compare is not None:
                other = _compare_maps(compare, compare_checkpoint_dir, seed, tasks6,
                                      image_shape, notes, progress)
                if other is not None:
                    maps[other[0] if other[0] != label else f"{label} (compare)"] = other[1]
            return plots.plot_input_connections(
                maps, tasks6, path, task_classes=config.task_classes, dpi=dpi,
                title=f"Connections of each task leaving each input pixel (seed {seed}, "
                      f"after {last} tasks)",
            )

        if not tasks6:
            skip("fig6_input_connections", f"none of tasks {[t + 1 for t in wanted]} is learned "
                                           f"in the last checkpoint (after {last} tasks)")
        else:
            draw("fig6_input_connections", fig6)

    report = run_dir / "report.md"
    progress(f"writing {report}")
    report.write_text(render_report(
        payload, run_dir, figures, skipped, notes, seed=seed, compare=compare,
        command=command, checkpoints=None if no_ck else ck.folder,
    ))
    return FigureOutput(figures, skipped, notes, report)


def _compare_maps(
    compare: str | Path,
    checkpoint_dir: str | Path | None,
    seed: int,
    tasks: list[int],
    image_shape: Sequence[int] | None,
    notes: list[str],
    progress: Callable[[str], None],
) -> tuple[str, Any] | None:
    """Figure 6's maps of the comparison run (same seed if it has it), or None with a note."""
    from spacenet_jax import analysis
    from spacenet_jax.checkpoint import CheckpointError, config_from_dict
    from spacenet_jax.config import ConfigError

    compare = Path(compare)
    try:
        runs = read_results(compare)["runs"]
        seeds = [r.get("seed") for r in runs]
        record = _run_of_seed(runs, seed if seed in seeds else None, compare)
        config = config_from_dict(record["config"])
        root = Path(checkpoint_dir) if checkpoint_dir is not None else compare / "checkpoints"
        ck = _Checkpoints(root, config, int(record["seed"]), record.get("benchmark"), progress)
        if not ck.steps:
            raise FiguresError(f"no checkpoint of seed {record['seed']} in {ck.folder}")
        if record["seed"] != seed:
            notes.append(f"the comparison run has no seed {seed}; Figure 6 shows its seed "
                         f"{record['seed']}")
        progress(f"comparison run {compare}: {config.method}, seed {record['seed']}")
        counts = analysis.input_connection_counts(
            ck.state(ck.steps[-1]), config, tasks, image_shape
        )
        return METHOD_LABELS.get(config.method, config.method), counts
    except (FiguresError, CheckpointError, ConfigError, ValueError, KeyError) as err:
        note = f"comparison run {compare} not drawn in Figure 6: {str(err).splitlines()[0]}"
        notes.append(note)
        progress(note)
        return None


# ---- the report ----------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    """Versions of the stack and the device that drew the figures."""
    import jax

    out = {}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    device = jax.devices()[0]
    out["device"] = f"{device} ({device.platform}, {getattr(device, 'device_kind', '?')})"
    out["python"] = sys.version.split()[0]
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _mean_sd(values: Sequence[float | None], scale: float = 100.0) -> str:
    import numpy as np

    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    mean = scale * float(np.mean(vals))
    if len(vals) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {scale * float(np.std(vals, ddof=1)):.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _task_il_section(runs: Sequence[Mapping[str, Any]], n_tasks: int) -> list[str]:
    """Report lines: the task-incremental accuracy matrix, mean over the seeds that have one
    (none in a ``results.json`` of an older version: then no lines)."""
    import numpy as np

    matrices = [r["task_il_acc_matrix"] for r in runs if r.get("task_il_acc_matrix")]
    if not matrices:
        return []
    joint = runs[0].get("method") == "joint"  # one stage: a single row
    rows = []
    for i in range(len(matrices[0])):
        cells = []
        for j in range(n_tasks):
            values = [m[i][j] for m in matrices if i < len(m) and m[i][j] is not None]
            cells.append(_pct(float(np.mean(values)) if values else None))
        label = "after joint training" if joint else f"after task {i + 1}"
        rows.append([label, *cells])
    return [
        "", f"Task-incremental accuracy (%), mean over {len(matrices)} seed(s): each task's "
        "test images judged by the argmax over that task's own classes (task identity given), "
        "after each task (rows). Where it is far above the single-headed accuracy, the task's "
        "features survive and it is the shared output head that confuses tasks.", "",
        *_table(["", *[f"task {j + 1}" for j in range(n_tasks)]], rows),
    ]


def render_report(
    payload: Mapping[str, Any],
    run_dir: Path,
    figures: Mapping[str, Path],
    skipped: Mapping[str, str],
    notes: Sequence[str],
    *,
    seed: int,
    compare: str | Path | None = None,
    command: str | None = None,
    checkpoints: Path | None = None,
) -> str:
    """The Markdown report of a run: configuration, accuracy, metrics, figures, versions."""
    runs = payload["runs"]
    first = runs[0]
    method, benchmark = first.get("method"), first.get("benchmark")
    label = METHOD_LABELS.get(method, method)
    n_tasks = len(first["final_task_acc"])
    seeds = [r.get("seed") for r in runs]
    lines = [
        f"# Run report: {label} on {benchmark}",
        "",
        f"Method `{method}`, benchmark `{benchmark}`, {len(runs)} seed(s): "
        f"{', '.join(str(s) for s in seeds)}. Figures from checkpoints drawn for seed {seed}"
        + (f" (`{checkpoints}`)." if checkpoints else " (no checkpoints found)."),
        "",
        f"Drawn on {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} by:",
        "",
        "```",
        command or f"python -m experiments.figures {run_dir}",
        "```",
        "",
        "## Configuration",
        "",
    ]
    config = first["config"]
    lines += _table(["setting", "value"], [["method", f"`{method}`"],
                                           ["benchmark", f"`{benchmark}`"]]
                    + [[k, f"`{json.dumps(v)}`"] for k, v in config.items() if k != "method"])
    lines += ["", "## Accuracy", "",
              "Test accuracy (%) on each task after the last task, single-headed (no task "
              "identity).", ""]
    header = ["seed", *[f"task {j + 1}" for j in range(n_tasks)], "average", "overall",
              "forgetting", "BWT"]
    rows = []
    for r in runs:
        rows.append([r.get("seed"), *[_pct(a) for a in r["final_task_acc"]],
                     _pct(r.get("final_avg_acc")), _pct(r.get("final_overall_acc")),
                     _pct(r.get("avg_forgetting")), _pct(r.get("backward_transfer"))])
    rows.append([
        "**mean ± sd**",
        *[_mean_sd([r["final_task_acc"][j] for r in runs]) for j in range(n_tasks)],
        *[_mean_sd([r.get(k) for r in runs]) for k in
          ("final_avg_acc", "final_overall_acc", "avg_forgetting", "backward_transfer")],
    ])
    lines += _table(header, rows)
    lines += _task_il_section(runs, n_tasks)
    lines += ["", "## Metrics", "",
              f"- **Average accuracy** (mean of the final per-task accuracies, the paper's "
              f"metric): {_mean_sd([r.get('final_avg_acc') for r in runs])} % over "
              f"{len(runs)} seed(s)",
              f"- **Task-incremental average accuracy** (task identity given: the argmax over "
              f"each task's own classes): "
              f"{_mean_sd([r.get('final_task_il_avg_acc') for r in runs])} %",
              f"- **Overall accuracy** (all learned tasks' test images pooled): "
              f"{_mean_sd([r.get('final_overall_acc') for r in runs])} %",
              f"- **Average forgetting** (best accuracy on a task minus its final one, mean over "
              f"all but the last task): {_mean_sd([r.get('avg_forgetting') for r in runs])} "
              f"points",
              f"- **Backward transfer** (BWT, final minus just-learned accuracy; negative is "
              f"forgetting): {_mean_sd([r.get('backward_transfer') for r in runs])} points"]
    if compare is not None:
        try:
            other = read_results(compare)["runs"]
            other_label = METHOD_LABELS.get(other[0].get("method"), other[0].get("method"))
            lines.append(
                f"- Comparison run `{compare}` ({other_label}, {len(other)} seed(s)): average "
                f"accuracy {_mean_sd([r.get('final_avg_acc') for r in other])} %"
            )
        except FiguresError as err:
            lines.append(f"- Comparison run `{compare}`: {err}")
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        heading, description = FIGURES.get(name, (name, ""))
        rel = path.relative_to(run_dir).as_posix()
        lines += [f"### {heading}", ""]
        if path.suffix.lower() == ".png":
            lines.append(f"![{heading}]({rel})")
        else:
            lines.append(f"[{path.name}]({rel})")
        lines += ["", f"{description} Data: [{path.with_suffix('.json').name}]"
                      f"({path.with_suffix('.json').relative_to(run_dir).as_posix()}).", ""]
    if skipped:
        lines += ["### Skipped figures", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
        lines.append("")
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Environment", "", "Versions and device used to draw this report (the run's "
              "own timings are in `results.json`).", ""]
    lines += _table(["component", "version"], [[k, f"`{v}`"] for k, v in _versions().items()])
    return "\n".join(lines) + "\n"


# ---- command line --------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="an experiment's --out folder (with results.json)")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="the run's checkpoints (default: RUN_DIR/checkpoints)")
    p.add_argument("--compare", type=Path, default=None,
                   help="another run's --out folder (e.g. --method static), beside in Figure 6")
    p.add_argument("--compare-checkpoint-dir", type=Path, default=None,
                   help="its checkpoints (default: COMPARE/checkpoints)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed whose checkpoints are drawn (default: the run's first)")
    p.add_argument("--format", choices=["png", "pdf"], default="png", help="figure file format")
    p.add_argument("--data-dir", default=None,
                   help="datasets folder for Figure 4's test images (default: "
                   "$SPACENET_DATA_DIR)")
    p.add_argument("--dpi", type=int, default=100, help="figure resolution")
    p.add_argument("--connection-task", type=int, default=2,
                   help="Figure 5: the task (1-based) whose connections are drawn")
    p.add_argument("--connection-layer", type=int, default=1,
                   help="Figure 5: the weight layer (0: input -> hidden 1)")
    p.add_argument("--pixel-tasks", type=_int_list, default=None,
                   help="Figure 6: tasks (1-based, e.g. 1,3,5; default first, middle, last)")
    p.add_argument("--image-shape", type=_int_list, default=None,
                   help="Figure 6: HEIGHT,WIDTH of the input (default: a square)")
    args = p.parse_args(argv)
    command = "python -m experiments.figures " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    try:
        out = make_figures(
            args.run_dir, checkpoint_dir=args.checkpoint_dir, compare=args.compare,
            compare_checkpoint_dir=args.compare_checkpoint_dir, seed=args.seed,
            format=args.format, data_dir=args.data_dir, dpi=args.dpi,
            connection_task=args.connection_task, connection_layer=args.connection_layer,
            pixel_tasks=args.pixel_tasks, image_shape=args.image_shape, command=command,
        )
    except FiguresError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, reason in out.skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    for path in out.paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

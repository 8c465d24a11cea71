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
    from spacenet_jax.storage.results_schema import ResultsFormatError, load_results

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
        from spacenet_jax.storage.checkpoint import saved_tasks, seed_dir

        self.progress = progress
        self.folder = seed_dir(directory, seed)
        self.config, self.seed, self.benchmark = config, seed, benchmark
        self.steps = saved_tasks(self.folder)
        if not self.steps and saved_tasks(directory):  # given one seed's folder itself
            self.folder, self.steps = Path(directory), saved_tasks(directory)
        self._states: dict[int, Any] = {}

    def state(self, step: int) -> Any:
        """The state after ``step`` tasks (``step == 0``: the initial state of the seed)."""
        from spacenet_jax.core.state import init_state
        from spacenet_jax.storage.checkpoint import restore_task

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
        from spacenet_jax.storage.checkpoint import read_metadata

        return read_metadata(self.folder).get("dataset") if self.steps else None


def _default_pixel_tasks(num_tasks: int) -> list[int]:
    """First, middle and last task (0-based), as the paper's three columns."""
    return sorted({0, num_tasks // 2, num_tasks - 1})


@dataclasses.dataclass
class FigureContext:
    """What the figures of one run are drawn from: its records, the drawn seed's checkpoints
    (restored on demand) and the options of ``make_figures``."""

    run_dir: Path
    payload: dict[str, Any]
    record: dict[str, Any]  # the drawn seed's run
    config: Any  # its SpaceNetConfig
    checkpoints: _Checkpoints
    format: str
    dpi: int
    data_dir: str | None
    dataset: Any | None  # ImageDataset, loaded on demand for Figure 4
    connection_task: int
    connection_layer: int
    pixel_tasks: Sequence[int] | None
    image_shape: Sequence[int] | None
    compare: Path | None
    compare_checkpoint_dir: Path | None
    progress: Callable[[str], None]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.payload["runs"]

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def benchmark(self) -> str | None:
        return self.record.get("benchmark")

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.config.method, self.config.method)

    def no_checkpoints(self) -> str | None:
        """Why the seed's checkpoints cannot be used, or None."""
        if self.checkpoints.steps:
            return None
        return (f"no checkpoint of seed {self.seed} in {self.checkpoints.folder} (run the "
                f"experiment with --checkpoint-dir, or pass --checkpoint-dir)")

    def test_images(self) -> Any:
        """The run's dataset: ``dataset``, or the one its checkpoint names, loaded once."""
        if self.dataset is None:
            from experiments.common import BENCHMARK_DATASETS
            from spacenet_jax.analysis.inspect import load_checkpoint_dataset
            from spacenet_jax.storage.data import DatasetError

            name = self.checkpoints.dataset_name() or BENCHMARK_DATASETS.get(self.benchmark or "")
            if not name:
                raise DatasetError("the checkpoint names no dataset")
            self.progress(f"loading the {name} test images")
            self.dataset = load_checkpoint_dataset(name, self.data_dir)
        return self.dataset


# ---- the figures: each a spec (what it needs, how it draws) ---------------------------------


def _needs_mlp_checkpoints(ctx: FigureContext) -> str | None:
    if ctx.config.is_cnn:
        return (f"this run is a CNN ({ctx.config.conv_layers} conv layers): Figures 4-6 are "
                f"drawn for MLPs")
    return ctx.no_checkpoints()


def _needs_sparse(what: str) -> Callable[[FigureContext], str | None]:
    def check(ctx: FigureContext) -> str | None:
        reason = _needs_mlp_checkpoints(ctx)
        if reason is None and not ctx.config.sparse:
            reason = f"method {ctx.config.method!r} is dense: {what}"
        return reason

    return check


def _draw_accuracy_matrix(ctx: FigureContext, path: Path) -> Path:
    from spacenet_jax.analysis import plots

    return plots.plot_accuracy_matrix(ctx.runs, path, dpi=ctx.dpi)


def _draw_final_task_accuracy(ctx: FigureContext, path: Path) -> Path:
    from spacenet_jax.analysis import plots

    n = len(ctx.runs)
    return plots.plot_final_task_accuracy(
        ctx.runs, path, format=ctx.format, save_data=True,
        title=f"{ctx.benchmark} ({ctx.record.get('method')}): accuracy on each task after the "
              f"last",
        caption="Test accuracy on each task after learning the whole sequence, without task "
                "identity" + (f"; mean and sd over {n} seeds." if n > 1 else "."),
    )


def _draw_capacity(ctx: FigureContext, path: Path) -> Path:
    from spacenet_jax.analysis import figure_data as analysis
    from spacenet_jax.analysis import plots

    ck = ctx.checkpoints
    if ck.steps:
        cap = analysis.capacity_over_tasks([ck.state(s) for s in ck.steps], ctx.config)
    else:  # without the free / shared split
        cap = analysis.capacity_from_record(ctx.record, ctx.config)
    return plots.plot_capacity(
        cap, path, dpi=ctx.dpi,
        title=f"Capacity used after each task ({METHOD_LABELS.get(ctx.config.method, '')}, "
              f"seed {ctx.seed})",
    )


def _fig4_unavailable(ctx: FigureContext) -> str | None:
    reason = _needs_mlp_checkpoints(ctx)
    if reason is None and 1 not in ctx.checkpoints.steps:
        reason = (f"no checkpoint after task 1 in {ctx.checkpoints.folder} "
                  f"(has {ctx.checkpoints.steps})")
    if reason is None:
        from spacenet_jax.storage.checkpoint import CheckpointError
        from spacenet_jax.storage.data import DatasetError

        try:
            ctx.test_images()
        except (DatasetError, CheckpointError) as err:
            reason = f"cannot load the test images ({str(err).splitlines()[0]}); pass --data-dir"
    return reason


def _draw_activations(ctx: FigureContext, path: Path) -> Path:
    """Figure 4: activations of task 1's test images after task 1."""
    from spacenet_jax.analysis import figure_data as analysis
    from spacenet_jax.analysis import plots

    data = ctx.test_images()
    acts, labels = analysis.task_activations(
        ctx.checkpoints.state(1), ctx.config, data.test_images, data.test_labels, task=0
    )
    return plots.plot_activations(
        acts, labels, path, dpi=ctx.dpi,
        title=f"Hidden activations of task 1's test images after task 1 ({ctx.label}, "
              f"seed {ctx.seed})",
    )


def _fig5_task_layer(ctx: FigureContext) -> tuple[int, int]:
    """Figure 5's task (0-based) and weight layer, clipped to the network."""
    return (min(ctx.connection_task, ctx.config.num_tasks) - 1,
            min(ctx.connection_layer, ctx.config.num_layers - 1))


def _fig5_unavailable(ctx: FigureContext) -> str | None:
    reason = _needs_sparse("each task owns every connection")(ctx)
    task, _ = _fig5_task_layer(ctx)
    steps = ctx.checkpoints.steps
    if reason is None and (task + 1 not in steps or (task > 0 and task not in steps)):
        reason = (f"needs the checkpoints after tasks {task} and {task + 1} (task 0: the "
                  f"initial state); {ctx.checkpoints.folder} has {steps}")
    return reason


def _draw_connections(ctx: FigureContext, path: Path) -> Path:
    """Figure 5: a task's connections as allocated and after its training."""
    from spacenet_jax.analysis import figure_data as analysis
    from spacenet_jax.analysis import plots

    task, layer = _fig5_task_layer(ctx)
    ck = ctx.checkpoints
    ctx.progress(f"re-running the allocation of task {task + 1} (begin_task)")
    allocated = analysis.initial_allocation(ck.state(task), ctx.config)
    conn = analysis.task_connections(allocated, ck.state(task + 1), ctx.config, layer)
    return plots.plot_connections(conn, path, dpi=ctx.dpi)


def _fig6_tasks(ctx: FigureContext) -> tuple[list[int], list[int]]:
    """Figure 6's wanted tasks and those learned in the last checkpoint (0-based)."""
    wanted = ([t - 1 for t in ctx.pixel_tasks] if ctx.pixel_tasks
              else _default_pixel_tasks(ctx.config.num_tasks))
    last = ctx.checkpoints.steps[-1] if ctx.checkpoints.steps else 0
    return wanted, [t for t in wanted if 0 <= t < last]


def _fig6_unavailable(ctx: FigureContext) -> str | None:
    reason = _needs_sparse("every pixel has every connection")(ctx)
    wanted, tasks = _fig6_tasks(ctx)
    if reason is None and not tasks:
        reason = (f"none of tasks {[t + 1 for t in wanted]} is learned in the last checkpoint "
                  f"(after {ctx.checkpoints.steps[-1]} tasks)")
    return reason


def _draw_input_connections(ctx: FigureContext, path: Path) -> Path:
    """Figure 6: connections per input pixel, beside the comparison run."""
    from spacenet_jax.analysis import figure_data as analysis
    from spacenet_jax.analysis import plots

    _, tasks = _fig6_tasks(ctx)
    last = ctx.checkpoints.steps[-1]
    maps = {ctx.label: analysis.input_connection_counts(
        ctx.checkpoints.state(last), ctx.config, tasks, ctx.image_shape)}
    if ctx.compare is not None:
        other = _compare_maps(ctx.compare, ctx.compare_checkpoint_dir, ctx.seed, tasks,
                              ctx.image_shape, ctx.notes, ctx.progress)
        if other is not None:
            maps[other[0] if other[0] != ctx.label else f"{ctx.label} (compare)"] = other[1]
    return plots.plot_input_connections(
        maps, tasks, path, task_classes=ctx.config.task_classes, dpi=ctx.dpi,
        title=f"Connections of each task leaving each input pixel (seed {ctx.seed}, "
              f"after {last} tasks)",
    )


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One figure: its file stem, its heading and description in the report, why it cannot be
    drawn for a run (None: it can), and how it draws (``draw(ctx, path) -> written path``)."""

    name: str
    heading: str
    description: str
    draw: Callable[[FigureContext, Path], Path]
    unavailable: Callable[[FigureContext], str | None] = lambda ctx: None


#: Every figure, in drawing order.
FIGURE_SPECS: tuple[FigureSpec, ...] = (
    FigureSpec(
        "accuracy_matrix", "Accuracy matrix",
        "Test accuracy on each task (columns) after training each task (rows), mean over seeds.",
        _draw_accuracy_matrix,
    ),
    FigureSpec(
        "final_task_accuracy", "Accuracy on each task after the last task (paper Figure 3)",
        "Bars: mean over seeds, error bars: sample sd, dots: each seed; dashed: the average.",
        _draw_final_task_accuracy,
    ),
    FigureSpec(
        "capacity", "Capacity used after each task",
        "Reserved, shared and free neurons per hidden layer, and connections in use.",
        _draw_capacity,
    ),
    FigureSpec(
        "fig4_activations", "Hidden activations after task 1 (paper Figure 4)",
        "Activations of 50 test images of each class of task 1 after task 1: sparse.",
        _draw_activations, _fig4_unavailable,
    ),
    FigureSpec(
        "fig5_connections",
        "A task's connections before and after adaptive training (paper Figure 5)",
        "Allocated at random (a), then gathered on fewer neurons by drop and grow (b, c).",
        _draw_connections, _fig5_unavailable,
    ),
    FigureSpec(
        "fig6_input_connections", "Connections leaving each input pixel (paper Figure 6)",
        "Per task, the first-layer connections of each pixel, as an image.",
        _draw_input_connections, _fig6_unavailable,
    ),
)

#: Figure name -> (heading in the report, one-line description).
FIGURES: dict[str, tuple[str, str]] = {f.name: (f.heading, f.description) for f in FIGURE_SPECS}


def _draw_figure(spec: FigureSpec, ctx: FigureContext, out_dir: Path) -> tuple[Path | None, str]:
    """Draw ``spec`` into ``out_dir``: ``(path, "")``, or ``(None, why it was skipped)``."""
    from spacenet_jax.core.config import ConfigError
    from spacenet_jax.storage.checkpoint import CheckpointError

    reason = spec.unavailable(ctx)
    if reason is None:
        ctx.progress(f"drawing {spec.name}")
        try:
            return spec.draw(ctx, out_dir / f"{spec.name}.{ctx.format}"), ""
        except (ConfigError, CheckpointError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    ctx.progress(f"skipped {spec.name}: {reason}")
    return None, reason


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
    figures: Sequence[FigureSpec] = FIGURE_SPECS,
) -> FigureOutput:
    """Draw every figure of ``figures`` a run allows into ``RUN_DIR/figures`` and write
    ``RUN_DIR/report.md``.

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
      figures: the specs to draw (default ``FIGURE_SPECS``; add your own ``FigureSpec``).

    Raises:
      FiguresError: no readable ``results.json``, or no run of ``seed``.
    """
    from spacenet_jax.storage.checkpoint import config_from_dict

    run_dir = Path(run_dir)
    payload = read_results(run_dir)
    record = _run_of_seed(payload["runs"], seed, run_dir / "results.json")
    config = config_from_dict(record["config"])
    ck_root = Path(checkpoint_dir) if checkpoint_dir is not None else run_dir / "checkpoints"
    ctx = FigureContext(
        run_dir, payload, record, config,
        _Checkpoints(ck_root, config, int(record["seed"]), record.get("benchmark"), progress),
        format, dpi, data_dir, dataset, connection_task, connection_layer, pixel_tasks,
        image_shape, None if compare is None else Path(compare),
        None if compare_checkpoint_dir is None else Path(compare_checkpoint_dir), progress,
    )
    progress(f"{run_dir / 'results.json'}: {record.get('method')} on {ctx.benchmark}, "
             f"{len(ctx.runs)} run(s); figures of seed {ctx.seed}")
    no_ck = ctx.no_checkpoints()
    progress(no_ck or f"checkpoints of seed {ctx.seed}: after tasks {ctx.checkpoints.steps} "
                      f"in {ctx.checkpoints.folder}")
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for spec in figures:
        path, reason = _draw_figure(spec, ctx, out_dir)
        if path is not None:
            drawn[spec.name] = path
        else:
            skipped[spec.name] = reason
    report = run_dir / "report.md"
    progress(f"writing {report}")
    report.write_text(render_report(
        payload, run_dir, drawn, skipped, ctx.notes, seed=ctx.seed, compare=compare,
        command=command, checkpoints=None if no_ck else ctx.checkpoints.folder,
        headings={f.name: (f.heading, f.description) for f in figures},
    ))
    return FigureOutput(drawn, skipped, ctx.notes, report)


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
    from spacenet_jax.analysis import figure_data as analysis
    from spacenet_jax.core.config import ConfigError
    from spacenet_jax.storage.checkpoint import CheckpointError, config_from_dict

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
    headings: Mapping[str, tuple[str, str]] = FIGURES,
) -> str:
    """The Markdown report of a run: configuration, accuracy, metrics, figures, versions.
    ``headings``: figure name -> (heading, description), default ``FIGURES``."""
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
        heading, description = headings.get(name, (name, ""))
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

"""Figures of the paper and of a run report, drawn from run records and analysis data.

* Figure 3 -- ``plot_final_task_accuracy``: accuracy on each task after the last task (bars, mean
  and spread over seeds); ``plot_methods_final_task_accuracy``: the same for several methods side
  by side, with their averages, as the paper draws it;
* ``plot_accuracy_matrix``: the accuracy matrix (after training task i, on task j) as a heatmap;
* Figure 4 -- ``plot_activations``: hidden-layer activations of test images;
* Figure 5 -- ``plot_connections``: a task's connections between two layers, before and after
  its adaptive sparse training;
* Figure 6 -- ``plot_input_connections``: connections leaving each input pixel, per task (and
  per method, SpaceNet beside Static-SparseNN);
* ``plot_capacity``: free, shared and reserved neurons and connections in use after each task.

The data come from ``results.json`` records or from ``figure_data``. Every function
writes one PNG (or PDF, ``format="pdf"``) with a title, axis labels and a caption line under the
figure, and the data behind it as JSON beside it (same stem, ``.json``; Figure 3 only with
``save_data=True``).

Drawing goes through matplotlib's object API (:class:`matplotlib.figure.Figure` on an Agg canvas):
no pyplot, no global figure state, no display needed, so it is safe in tests, threads and on
headless machines.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FORMATS",
    "plot_accuracy_matrix",
    "plot_activations",
    "plot_capacity",
    "plot_connections",
    "plot_final_task_accuracy",
    "plot_input_connections",
    "plot_methods_final_task_accuracy",
]

#: File formats the drawing functions write.
FORMATS = ("png", "pdf")


def _final_task_matrix(runs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The (runs, tasks) matrix of final per-task accuracies, checked; raises ValueError."""
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence):
        raise ValueError(f"runs must be a list of run records (dicts), got {type(runs).__name__}")
    if len(runs) == 0:
        raise ValueError("runs is empty: pass at least one run record with 'final_task_acc'")
    rows: list[list[float]] = []
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping) or "final_task_acc" not in run:
            raise ValueError(f"run {i} is not a run record with a 'final_task_acc' list")
        acc = run["final_task_acc"]
        if isinstance(acc, (str, bytes)) or not isinstance(acc, Sequence) or len(acc) == 0:
            raise ValueError(
                f"run {i} (seed {run.get('seed')}): 'final_task_acc' must be a non-empty list "
                f"of accuracies, got {acc!r}"
            )
        try:
            row = [float(a) for a in acc]
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"run {i} (seed {run.get('seed')}): 'final_task_acc' holds a non-number: {acc!r}"
            ) from err
        bad = [a for a in row if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
        if bad:
            raise ValueError(
                f"run {i} (seed {run.get('seed')}): accuracies must be fractions in [0, 1], "
                f"found {bad[0]!r} (percentages? divide by 100)"
            )
        rows.append(row)
    counts = [len(r) for r in rows]
    if len(set(counts)) > 1:
        detail = ", ".join(
            f"seed {run.get('seed', i)}: {n}"
            for i, (run, n) in enumerate(zip(runs, counts, strict=True))
        )
        raise ValueError(
            f"runs have different numbers of tasks ({detail}); plot runs of one benchmark together"
        )
    for key in ("method", "benchmark"):
        values = sorted({str(run[key]) for run in runs if key in run})
        if len(values) > 1:
            raise ValueError(f"runs mix {key}s ({', '.join(values)}); plot one {key} per figure")
    return np.asarray(rows, dtype=float)


def _default_title(runs: Sequence[Mapping[str, Any]]) -> str:
    first = runs[0]
    what = " on ".join(str(first[k]) for k in ("method", "benchmark") if k in first)
    seeds = f"{len(runs)} seeds" if len(runs) > 1 else f"seed {first.get('seed', '?')}"
    head = f"{what}: " if what else ""
    return f"{head}accuracy on each task after the last task ({seeds})"


def plot_final_task_accuracy(
    runs: list[dict],
    path: str | os.PathLike,
    title: str | None = None,
    *,
    format: str | None = None,
    save_data: bool = False,
    caption: str | None = None,
) -> pathlib.Path:
    """Draw the paper's Figure 3: the accuracy on each task after the last task, as bars.

    With one run, one bar per task with its value printed on it. With several runs (several
    seeds), each bar is the mean over the runs, its error bar the sample standard deviation
    (ddof=1, as in :func:`running.metrics.summarize`), and each run's own value is drawn as
    a small dot. A dashed horizontal line marks the mean final average accuracy (the mean over
    runs of the mean over tasks). Accuracies are shown in percent, 0-100.

    Args:
        runs: run records as in ``results.json``: each has ``"final_task_acc"`` (fractions in
            [0, 1], one per task; every run the same number of tasks) and usually ``"seed"``,
            ``"method"`` and ``"benchmark"`` (used for the default title and messages).
        path: where to write the PNG; missing parent folders are created.
        title: the figure title; default: method, benchmark and seeds from the runs.
        format: ``"png"`` or ``"pdf"`` (default: from ``path``'s suffix, else PNG).
        save_data: also write the per-seed and mean accuracies as JSON beside the figure
            (``path`` with the suffix ``.json``).
        caption: a line of text under the legend (default: none).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: no runs, a run without a non-empty ``final_task_acc``, an accuracy outside
            [0, 1], runs with different numbers of tasks, or runs of different methods or
            benchmarks.
    """
    acc = _final_task_matrix(runs) * 100.0  # (runs, tasks), percent
    n_runs, n_tasks = acc.shape
    path = pathlib.Path(path)
    fmt = _output_format(path, format)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.5, 1.1 * n_tasks + 2.0), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    try:
        ax = fig.add_subplot()
        x = np.arange(n_tasks)
        mean = acc.mean(axis=0)
        std = acc.std(axis=0, ddof=1) if n_runs > 1 else np.zeros(n_tasks)
        bars = ax.bar(
            x,
            mean,
            width=0.65,
            color="#4C72B0",
            edgecolor="#2A3F63",
            yerr=std if n_runs > 1 else None,
            capsize=4 if n_runs > 1 else 0,
            error_kw={"elinewidth": 1.2, "ecolor": "#222222"},
            label=f"mean ± sd over {n_runs} seeds" if n_runs > 1 else "accuracy",
            zorder=2,
        )
        if n_runs > 1:
            # Spread the seeds a little sideways so equal values stay visible.
            offsets = np.linspace(-0.18, 0.18, n_runs)
            ax.scatter(
                (x[None, :] + offsets[:, None]).ravel(),
                acc.ravel(),
                s=10,
                color="#DD8452",
                edgecolor="black",
                linewidth=0.4,
                label="individual seeds",
                zorder=4,
            )
        # Each value above its bar, its error bar and its seeds' dots; a white box keeps it
        # legible where the dashed average line crosses it.
        tops = np.maximum(mean + std, acc.max(axis=0))
        for bar, m, top in zip(bars, mean, tops, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                min(top, 100.0) + 1.2,
                f"{m:.1f}",
                ha="center",
                va="bottom",
                fontsize=8,
                zorder=5,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none"},
            )
        avg = float(acc.mean(axis=1).mean())
        line_label = (
            f"mean final average accuracy ({avg:.1f}%)"
            if n_runs > 1
            else f"final average accuracy ({avg:.1f}%)"
        )
        ax.axhline(avg, color="#C44E52", linestyle="--", linewidth=1.2, label=line_label, zorder=3)

        ax.set_xticks(x, [f"Task {t + 1}" for t in range(n_tasks)])
        ax.set_xlim(-0.6, n_tasks - 0.4)
        ax.set_ylim(0, 108)  # room above 100 for the printed values
        ax.set_yticks(np.arange(0, 101, 20))
        ax.set_ylabel("Accuracy (%)")
        ax.set_title(title if title is not None else _default_title(runs), fontsize=10)
        ax.grid(axis="y", alpha=0.3, zorder=0)
        ax.set_axisbelow(True)
        legend = ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            ncol=3,
            frameon=False,
            fontsize=8,
        )
        if caption:
            width = fig.get_size_inches()[0]
            ax.annotate(
                "\n".join(textwrap.wrap(caption, int(width * 72 / (CAPTION_FONTSIZE * 0.55)))),
                xy=(0.5, 0), xycoords=legend, xytext=(0, -4), textcoords="offset points",
                ha="center", va="top", fontsize=CAPTION_FONTSIZE, color="#333333",
                style="italic",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=fmt, bbox_inches="tight")
    finally:
        fig.clear()  # not registered with pyplot: dropping it frees it, nothing to close there
    if save_data:
        _write_data(path, {
            "figure": "final_task_accuracy (paper Figure 3)",
            "unit": "fraction",
            "seeds": [run.get("seed") for run in runs],
            "final_task_acc": (acc / 100.0).tolist(),
            "mean": (acc.mean(axis=0) / 100.0).tolist(),
            "std": (acc.std(axis=0, ddof=1) / 100.0).tolist() if n_runs > 1 else None,
            "final_avg_acc_mean": float(acc.mean(axis=1).mean() / 100.0),
        })
    return path


def plot_methods_final_task_accuracy(
    methods: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
) -> pathlib.Path:
    """The paper's Figure 3 across methods: each task's accuracy after the last task, and the
    average, one bar per method in each group.

    Each bar is the mean over a method's runs (seeds), its error bar the sample standard
    deviation (ddof=1), its runs drawn as dots; the last group, "Average", is each method's
    final average accuracy (the mean over tasks, then over seeds). The data go to
    ``path.with_suffix('.json')``.

    Args:
      methods: label -> run records (``final_task_acc`` fractions, one per task), in the order
        the bars are drawn. A label may name any run folder (a method, or one method under
        different options); each label's runs must be of one method and benchmark.
      path: the figure file (missing parent folders are created).
      title, caption: defaults name the benchmark and the seeds.
      format: ``"png"`` or ``"pdf"`` (default: from the suffix, else PNG).
      dpi: resolution; the figure grows with the number of tasks and methods.

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Raises:
      ValueError: no methods, a label whose runs cannot be drawn together (see
        :func:`plot_final_task_accuracy`), or labels of different benchmarks or task counts.
    """
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods must map at least one label to its run records")
    acc: dict[str, np.ndarray] = {}
    for label, runs in methods.items():
        try:
            acc[label] = _final_task_matrix(runs) * 100.0  # (runs, tasks), percent
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
    counts = {label: a.shape[1] for label, a in acc.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{label}: {n}" for label, n in counts.items())
        raise ValueError(f"the methods have different numbers of tasks ({detail}); compare runs "
                         f"of one benchmark")
    benchmarks = {str(run["benchmark"]) for runs in methods.values() for run in runs
                  if "benchmark" in run}
    if len(benchmarks) > 1:
        raise ValueError(f"the runs are of different benchmarks ({', '.join(sorted(benchmarks))});"
                         f" compare runs of one benchmark")
    labels = list(acc)
    n_tasks = next(iter(counts.values()))
    n_methods = len(labels)
    groups = [f"Task {t + 1}" for t in range(n_tasks)] + ["Average"]
    # (methods, runs, groups): each run's per-task accuracies and its own average.
    per_run = {label: np.concatenate([a, a.mean(axis=1, keepdims=True)], axis=1)
               for label, a in acc.items()}
    mean = np.stack([per_run[label].mean(axis=0) for label in labels])
    std = np.stack([per_run[label].std(axis=0, ddof=1) if len(per_run[label]) > 1
                    else np.zeros(n_tasks + 1) for label in labels])

    fig = _new_figure((max(6.0, (n_tasks + 1) * (0.35 * n_methods + 0.5) + 1.5), 4.6), dpi)
    ax = fig.add_subplot()
    width = 0.8 / n_methods
    x = np.arange(n_tasks + 1)
    colors = [f"C{i % 10}" for i in range(n_methods)]
    for i, label in enumerate(labels):
        pos = x - 0.4 + width * (i + 0.5)
        runs = per_run[label]
        seeds = len(runs)
        ax.bar(pos, mean[i], width=width * 0.92, color=colors[i], alpha=0.85, zorder=2,
               yerr=std[i] if seeds > 1 else None, capsize=2,
               error_kw={"elinewidth": 0.9, "ecolor": "#222222"},
               label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
        if seeds > 1:
            ax.scatter(np.broadcast_to(pos, runs.shape).ravel(), runs.ravel(), s=7,
                       color="white", edgecolor="black", linewidth=0.4, zorder=4)
        ax.text(pos[-1], min(mean[i, -1] + std[i, -1], 100.0) + 1.0, f"{mean[i, -1]:.1f}",
                ha="center", va="bottom", fontsize=7, zorder=5)
    ax.axvline(n_tasks - 0.5, color="#888888", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, groups)
    ax.set_xlim(-0.6, n_tasks + 0.6)
    ax.set_ylim(0, 100 + 6 * math.ceil(n_methods / 3) + 4)  # the legend sits above 100
    ax.set_yticks(np.arange(0, 101, 20))
    ax.set_ylabel("Accuracy after the last task (%)")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", fontsize=7, frameon=False, ncol=min(n_methods, 3))
    benchmark = next(iter(benchmarks), "")
    ax.set_title(title or f"{benchmark}: accuracy on each task after the last task", fontsize=10)
    caption = caption or (
        "Bars: mean over seeds, error bars: sample sd, dots: seeds; 'Average' is the final "
        "average accuracy (the paper's metric), its mean printed above the bar."
    )
    data = {
        "figure": "methods_final_task_accuracy (paper Figure 3)",
        "unit": "fraction",
        "benchmark": benchmark or None,
        "groups": groups,
        "methods": labels,
        "seeds": {label: [run.get("seed") for run in methods[label]] for label in labels},
        "mean": mean / 100.0,
        "std": std / 100.0,
        "per_seed": {label: per_run[label] / 100.0 for label in labels},
    }
    return _save(fig, path, format, caption, data)


# ---- shared helpers of the figures below ---------------------------------------------------

#: Font size of the caption line under every figure.
CAPTION_FONTSIZE = 8


def _output_format(path: pathlib.Path, format: str | None) -> str:
    """``format`` if given, else ``path``'s suffix if it is one of ``FORMATS``, else PNG."""
    if format is None:
        suffix = path.suffix.lower().lstrip(".")
        return suffix if suffix in FORMATS else "png"
    fmt = format.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return fmt


def _jsonable(value: Any) -> Any:
    """numpy arrays and scalars as lists and Python numbers; NaN as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    return value


def _write_data(path: pathlib.Path, data: Mapping[str, Any]) -> pathlib.Path:
    """Write the data behind a figure as JSON beside it: ``path`` with the suffix ``.json``."""
    out = path.with_suffix(".json")
    # One top-level key per line, each value compact: large arrays stay small on disk.
    items = [
        f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
        for k, v in _jsonable(data).items()
    ]
    out.write_text("{\n" + ",\n".join(items) + "\n}\n")
    return out


def _new_figure(figsize: tuple[float, float], dpi: int):
    """A constrained-layout Figure on an Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(
    fig: Any,
    path: str | os.PathLike,
    format: str | None,
    caption: str,
    data: Mapping[str, Any],
) -> pathlib.Path:
    """Put ``caption`` in a strip under the axes, save the figure and its data, free it.

    The figure keeps exactly its ``figsize * dpi`` pixels (no tight bounding box).
    """
    path = pathlib.Path(path)
    fmt = _output_format(path, format)
    try:
        width, height = fig.get_size_inches()
        chars = max(20, int(width * 72 / (CAPTION_FONTSIZE * 0.55)))
        lines = textwrap.wrap(caption, chars) or [""]
        strip = (len(lines) * CAPTION_FONTSIZE * 1.3 + 8) / 72 / height
        fig.get_layout_engine().set(rect=(0, strip, 1, 1 - strip))
        fig.text(
            0.5, strip / 2, "\n".join(lines), ha="center", va="center",
            fontsize=CAPTION_FONTSIZE, color="#333333", style="italic",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=fmt)
    finally:
        fig.clear()
    _write_data(path, data)
    return path


def _task_name(config_classes: Sequence[Sequence[int]] | None, task: int) -> str:
    """'Task 2 (2 or 3)' when the classes are known, else 'Task 2'."""
    if config_classes is None or task >= len(config_classes):
        return f"Task {task + 1}"
    return f"Task {task + 1} ({' or '.join(str(c) for c in config_classes[task])})"


def _acc_matrices(runs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(seeds, rows, tasks)`` accuracy matrices in percent, NaN where not evaluated yet."""
    _final_task_matrix(runs)  # the same checks as Figure 3 (one benchmark, method, task count)
    mats = []
    for run in runs:
        if "acc_matrix" not in run:
            raise ValueError(f"run of seed {run.get('seed')} has no 'acc_matrix'")
        mats.append(
            [[np.nan if v is None else 100.0 * float(v) for v in row] for row in run["acc_matrix"]]
        )
    shapes = {np.shape(m) for m in mats}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"the runs' accuracy matrices differ in shape: {sorted(shapes)}")
    return np.asarray(mats, float)


# ---- accuracy matrix -----------------------------------------------------------------------


def plot_accuracy_matrix(
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> pathlib.Path:
    """The accuracy matrix, mean over seeds, as an annotated heatmap.

    Cell ``(i, j)`` is the test accuracy on task ``j`` after training task ``i`` (in percent;
    with several seeds, mean and sample standard deviation). Tasks not learned yet are blank. A
    ``joint`` run has a single row (after its one stage).

    Args:
      runs: run records with ``acc_matrix`` (``[rows][tasks]``, fractions or None) and
        ``final_task_acc``, of one method and benchmark.
      path: the figure file; the data go to ``path.with_suffix('.json')``.
      title, caption: default ones name the method, benchmark and seeds.
      format: ``"png"`` or ``"pdf"`` (default: from the suffix, else PNG).
      dpi, figsize: the figure is exactly ``figsize * dpi`` pixels (default size grows with the
        number of tasks).

    Returns:
      ``path``. Raises ``ValueError`` for runs that cannot be drawn together.
    """
    acc = _acc_matrices(runs)  # (S, R, T) percent
    n_seeds, n_rows, n_tasks = acc.shape
    with warnings.catch_warnings():  # all-NaN cells (tasks not learned yet) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(acc, axis=0)
        std = np.nanstd(acc, axis=0, ddof=1) if n_seeds > 1 else np.zeros_like(mean)
    first = runs[0]
    joint = n_rows == 1 and n_tasks > 1
    what = " / ".join(str(first[k]) for k in ("method", "benchmark") if k in first)
    seeds = [run.get("seed") for run in runs]
    fig = _new_figure(figsize or (1.0 * n_tasks + 2.8, 0.75 * n_rows + 2.6), dpi)
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(mean)
    image = ax.imshow(masked, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_facecolor("#f2f2f2")
    for i in range(n_rows):
        for j in range(n_tasks):
            if not np.isfinite(mean[i, j]):
                continue
            text = f"{mean[i, j]:.1f}" + (f"\n±{std[i, j]:.1f}" if n_seeds > 1 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if mean[i, j] > 60 else "white")
    ax.set_xticks(range(n_tasks), [f"{j + 1}" for j in range(n_tasks)])
    ax.set_yticks(range(n_rows), ["all (joint)"] if joint else [f"{i + 1}" for i in range(n_rows)])
    ax.set_xlabel("Evaluated on task")
    ax.set_ylabel("After training stage" if joint else "After training task")
    ax.set_title(title or f"Accuracy matrix, {what}", fontsize=10)
    fig.colorbar(image, ax=ax, label="Test accuracy (%)", shrink=0.9)
    spread = f"mean ± sd over {n_seeds} seeds {seeds}" if n_seeds > 1 else f"seed {seeds[0]}"
    caption = caption or (
        f"Test accuracy (%) on task j (columns) after training task i (rows), {spread}; "
        f"blank: not learned yet. The last row is what Figure 3 shows."
    )
    data = {
        "figure": "accuracy_matrix",
        "unit": "fraction",
        "method": first.get("method"),
        "benchmark": first.get("benchmark"),
        "seeds": seeds,
        "mean": mean / 100.0,
        "std": std / 100.0 if n_seeds > 1 else None,
        "per_seed": acc / 100.0,
    }
    return _save(fig, path, format, caption, data)


# ---- Figure 4: activations -----------------------------------------------------------------


def plot_activations(
    activations: Sequence[np.ndarray],
    labels: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> pathlib.Path:
    """Figure 4: heatmaps of hidden-layer activations, one panel per hidden layer.

    Args:
      activations: per hidden layer, ``(n_images, n_units)`` activations (from
        ``analysis.task_activations``).
      labels: ``(n_images,)`` class of each image; images of one class are consecutive.
      path, title, caption, format, dpi, figsize: as for ``plot_accuracy_matrix``.

    Each panel's title gives the fraction of activations above zero (the paper's point: the
    representations are sparse).
    """
    labels = np.asarray(labels)
    if not activations:
        raise ValueError("no hidden layer activations to draw")
    for h, a in enumerate(activations):
        if np.ndim(a) != 2 or np.shape(a)[0] != len(labels):
            raise ValueError(
                f"activations of hidden layer {h + 1} have shape {np.shape(a)}; expected "
                f"({len(labels)}, units), one row per label"
            )
    n = len(activations)
    fig = _new_figure(figsize or (4.6 * n + 0.6, 4.6), dpi)
    axes = fig.subplots(1, n, squeeze=False)[0]
    # Where each class's block starts and its middle, for the y axis.
    classes, starts = np.unique(labels, return_index=True)
    order = np.argsort(starts)
    classes, starts = classes[order], starts[order]
    ends = np.append(starts[1:], len(labels))
    active = []
    for h, (ax, a) in enumerate(zip(axes, activations, strict=True)):
        a = np.asarray(a, float)
        frac = float((a > 0).mean()) if a.size else 0.0
        active.append(frac)
        image = ax.imshow(a, cmap="magma", aspect="auto", interpolation="nearest", vmin=0)
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="cyan", linewidth=0.8)
        ax.set_yticks((starts + ends - 1) / 2, [f"class {c}" for c in classes])
        ax.set_xlabel(f"Neuron of hidden layer {h + 1}")
        if h == 0:
            ax.set_ylabel("Test image")
        ax.set_title(f"({'abcdefgh'[h % 8]}) Hidden layer {h + 1}: {100 * frac:.1f}% active",
                     fontsize=9)
        fig.colorbar(image, ax=ax, label="Activation (ReLU)", shrink=0.9)
    counts = ", ".join(f"{int(e - s)} of class {c}" for c, s, e in zip(classes, starts, ends,
                                                                       strict=True))
    if title is not None:
        fig.suptitle(title, fontsize=10)
    caption = caption or (
        f"Hidden-layer activations of test images ({counts}), one row per image, one column "
        f"per neuron; few neurons respond to an input: the representations are sparse."
    )
    data = {
        "figure": "activations (paper Figure 4)",
        "labels": labels,
        "fraction_active": active,
        "activations": [np.round(np.asarray(a, float), 4) for a in activations],
    }
    return _save(fig, path, format, caption, data)


# ---- Figure 5: connections before / after --------------------------------------------------


def _pairs(mask: np.ndarray) -> list[list[int]]:
    return [[int(r), int(c)] for r, c in zip(*np.nonzero(mask), strict=True)]


def plot_connections(
    connections: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    crop: bool = True,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> pathlib.Path:
    """Figure 5: a task's connections between two layers before (a) and after (b) training.

    Args:
      connections: ``analysis.task_connections``'s dict (``before`` / ``after`` bool
        ``(fan_in, fan_out)`` masks, ``rows`` / ``cols`` the task's selected units, ``task``,
        ``layer``).
      crop: draw only the task's selected input and output units (where all its connections
        lie), as the paper does; else the whole matrix.
      path, title, caption, format, dpi, figsize: as for ``plot_accuracy_matrix``.

    A third panel (c) gives each output unit's number of the task's incoming connections,
    sorted, before and after: after adaptive training they concentrate on fewer neurons.
    """
    from spacenet_jax.analysis.figure_data import mask_counts

    before = np.asarray(connections["before"], bool)
    after = np.asarray(connections["after"], bool)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"before / after masks differ in shape: {before.shape}, {after.shape}")
    task, layer = int(connections["task"]), int(connections["layer"])
    rows = np.asarray(connections.get("rows", np.arange(before.shape[0])))
    cols = np.asarray(connections.get("cols", np.arange(before.shape[1])))
    if not crop:
        rows, cols = np.arange(before.shape[0]), np.arange(before.shape[1])
    src = "input" if layer == 0 else f"hidden {layer}"
    dst = f"hidden {layer + 1}"
    if "num_layers" in connections and layer == int(connections["num_layers"]) - 1:
        dst = "output"
    fig = _new_figure(figsize or (12.0, 4.6), dpi)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.1]})
    shown = "selected " if crop else ""
    for ax, mask, tag in ((axes[0], before, "(a) allocated"),
                          (axes[1], after, "(b) after adaptive training")):
        block = mask[np.ix_(rows, cols)]
        ax.imshow(block, cmap="Greys", aspect="auto", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(
            f"{tag}: {int(mask.sum())} connections\non {int(mask.any(axis=1).sum())}/{len(rows)}"
            f" {src} and {int(mask.any(axis=0).sum())}/{len(cols)} {dst} units", fontsize=9,
        )
        ax.set_xlabel(f"{shown}{dst} neuron (index among {len(cols)})")
        ax.set_ylabel(f"{shown}{src} neuron (index among {len(rows)})")
    deg_before = np.sort(before[:, cols].sum(axis=0))[::-1]
    deg_after = np.sort(after[:, cols].sum(axis=0))[::-1]
    axes[2].plot(deg_before, label="(a) allocated", color="#4C72B0")
    axes[2].plot(deg_after, label="(b) after training", color="#C44E52")
    axes[2].set_xlabel(f"{dst} neuron, sorted by its connections")
    axes[2].set_ylabel("Incoming connections of the task")
    axes[2].set_title("(c) connections per neuron", fontsize=9)
    axes[2].legend(fontsize=8, frameon=False)
    axes[2].grid(alpha=0.3)
    fig.suptitle(title or f"Task {task + 1}: connections of weight layer {layer} ({src} → {dst})",
                 fontsize=10)
    caption = caption or (
        f"Black: a connection of task {task + 1} between its {shown}{src} (rows) and {dst} "
        f"(columns) neurons, as allocated at random (a) and after drop-and-grow training (b); "
        f"the trained connections gather on fewer neurons, leaving room for later tasks."
    )
    data = {
        "figure": "connections before / after training (paper Figure 5)",
        "task": task,
        "layer": layer,
        "rows": rows,
        "cols": cols,
        **mask_counts(before, after),
        "before": _pairs(before),
        "after": _pairs(after),
    }
    return _save(fig, path, format, caption, data)


# ---- Figure 6: connections per input pixel -------------------------------------------------


def plot_input_connections(
    maps: Mapping[str, np.ndarray],
    tasks: Sequence[int],
    path: str | os.PathLike,
    *,
    task_classes: Sequence[Sequence[int]] | None = None,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> pathlib.Path:
    """Figure 6: how many of a task's connections leave each input pixel, per task and method.

    Args:
      maps: per method label (e.g. ``"SpaceNet"``, ``"Static-SparseNN"``), an int
        ``(len(tasks), height, width)`` array from ``analysis.input_connection_counts``; one
        row of panels per method.
      tasks: the 0-based tasks of the columns.
      task_classes: the config's classes per task, for the panel titles.
      path, title, caption, format, dpi, figsize: as for ``plot_accuracy_matrix``.

    Every panel shares one colour scale.
    """
    if not maps:
        raise ValueError("no connection maps to draw")
    tasks = [int(t) for t in tasks]
    arrays = {k: np.asarray(v) for k, v in maps.items()}
    for name, a in arrays.items():
        if a.ndim != 3 or a.shape[0] != len(tasks):
            raise ValueError(
                f"{name}: expected ({len(tasks)}, height, width) counts, got shape {a.shape}"
            )
    n_rows, n_cols = len(arrays), len(tasks)
    vmax = max(1, max(int(a.max()) for a in arrays.values() if a.size))
    fig = _new_figure(figsize or (2.7 * n_cols + 1.2, 2.7 * n_rows + 0.9), dpi)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    image = None
    for r, (name, a) in enumerate(arrays.items()):
        for c, t in enumerate(tasks):
            ax = axes[r, c]
            image = ax.imshow(a[c], cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{name}: {_task_name(task_classes, t)}\n{int(a[c].sum())} connections",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == n_rows - 1:
                ax.set_xlabel("pixel column")
            if c == 0:
                ax.set_ylabel("pixel row")
    fig.colorbar(image, ax=axes, label="Connections leaving the pixel", shrink=0.85)
    fig.suptitle(title or "Connections of each task leaving each input pixel", fontsize=10)
    names = " vs ".join(arrays)
    caption = caption or (
        f"Number of each task's first-layer connections leaving every input pixel, as an image "
        f"({names}). SpaceNet's drop and grow gather them on the pixels that shape the task's "
        f"digits; a static allocation stays spread at random."
    )
    data = {
        "figure": "connections per input pixel (paper Figure 6)",
        "tasks": tasks,
        "image_shape": list(next(iter(arrays.values())).shape[1:]),
        "totals": {k: [int(x.sum()) for x in a] for k, a in arrays.items()},
        "maps": arrays,
    }
    return _save(fig, path, format, caption, data)


# ---- capacity ------------------------------------------------------------------------------


def plot_capacity(
    capacity: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> pathlib.Path:
    """The network's capacity over the task sequence.

    Left: per hidden layer, stacked bars after each task of reserved, shared and free neurons
    (reserved and unreserved only, when ``capacity`` comes from a record: free and shared need
    the checkpoints). Right: connections in use (% of positions) per weight layer and for the
    whole network.

    Args:
      capacity: ``analysis.capacity_over_tasks`` or ``analysis.capacity_from_record``.
      path, title, caption, format, dpi, figsize: as for ``plot_accuracy_matrix``.
    """
    steps = [int(t) for t in capacity["tasks_learned"]]
    sizes = [int(n) for n in capacity["hidden_sizes"]]
    n_steps, n_hidden = len(steps), len(sizes)
    if n_steps == 0:
        raise ValueError("capacity has no task")
    fig = _new_figure(figsize or (11.0, 4.4), dpi)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    reserved = np.asarray(capacity["reserved"], float).reshape(n_steps, n_hidden)
    split = capacity.get("free") is not None and capacity.get("shared") is not None
    if split:
        stacks = [
            ("reserved", reserved, "#C44E52"),
            ("shared", np.asarray(capacity["shared"], float).reshape(n_steps, n_hidden),
             "#DD8452"),
            ("free", np.asarray(capacity["free"], float).reshape(n_steps, n_hidden), "#55A868"),
        ]
    else:
        stacks = [
            ("reserved", reserved, "#C44E52"),
            ("unreserved (free or shared)",
             np.asarray(capacity["unreserved"], float).reshape(n_steps, n_hidden), "#8C8C8C"),
        ]
    width = 0.8 / max(n_hidden, 1)
    x = np.arange(n_steps)
    for h in range(n_hidden):
        offset = (h - (n_hidden - 1) / 2) * width
        bottom = np.zeros(n_steps)
        for name, values, color in stacks:
            pct = 100.0 * values[:, h] / sizes[h]
            left.bar(x + offset, pct, width * 0.92, bottom=bottom, color=color,
                     edgecolor="white", linewidth=0.5, label=name if h == 0 else None)
            bottom += pct
        for xi in x:
            left.text(xi + offset, 101, f"L{h + 1}", ha="center", va="bottom", fontsize=6)
    left.set_xticks(x, [str(s) for s in steps])
    left.set_ylim(0, 124)  # room above the bars for the layer names and the legend
    left.set_yticks(np.arange(0, 101, 20))
    left.set_xlabel("Tasks learned")
    left.set_ylabel("Neurons of the hidden layer (%)")
    left.set_title("Hidden neurons (bars: layer L1, L2, ...)", fontsize=9)
    left.legend(fontsize=7, loc="upper center", ncol=len(stacks), frameon=False)
    used = np.asarray(capacity["connections_used"], float)
    positions = np.asarray(capacity["positions"], float)
    for layer in range(used.shape[1]):
        right.plot(steps, 100.0 * used[:, layer] / positions[layer], marker="o", markersize=3,
                   label=f"layer {layer}")
    network = 100.0 * np.asarray(capacity["network_used"], float) / capacity["network_positions"]
    right.plot(steps, network, marker="s", color="black", linewidth=2, label="whole network")
    right.set_xticks(steps)
    right.set_ylim(0, max(5.0, float(np.max(100.0 * used / positions)) * 1.1))
    right.set_xlabel("Tasks learned")
    right.set_ylabel("Connections in use (% of positions)")
    right.set_title("Connections (kernels for conv layers)", fontsize=9)
    right.legend(fontsize=7, frameon=False)
    right.grid(alpha=0.3)
    fig.suptitle(title or "Capacity used after each task", fontsize=10)
    detail = (
        "reserved: specific to a task; shared: unreserved but carrying some task's connections; "
        "free: neither" if split else
        "from results.json only: free and shared neurons need the checkpoints"
    )
    caption = caption or (
        f"Share of each hidden layer's neurons ({detail}) and of the connection positions in use "
        f"after each task; final network: {network[-1]:.1f}% of the connections."
    )
    return _save(fig, path, format, caption, {"figure": "capacity", **capacity})


# ---- a hyper-parameter sweep ---------------------------------------------------------------


def plot_sweep(
    sweep: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    caption: str | None = None,
    format: str | None = None,
    dpi: int = 100,
) -> pathlib.Path:
    """Validation accuracy of every setting of a sweep against each swept parameter.

    Args:
      sweep: ``experiments.sweep``'s ``sweep.json`` content: ``parameters`` (names) and
        ``settings`` (each with ``setting``, a name -> value dict, and
        ``validation_final_avg_acc``, ``{"mean", "std", ...}`` fractions or None).
      path, title, caption, format, dpi: as for ``plot_accuracy_matrix``.

    One panel per parameter: each setting is a dot at its value with its sd over seeds as an
    error bar (in %); the best setting is drawn in red. A log axis for the learning rate and for
    a parameter whose values span more than a factor of 100; tuple and name values are text
    categories.
    """
    rows = [r for r in sweep["settings"] if r.get("validation_final_avg_acc")]
    names = list(sweep["parameters"])
    if not rows or not names:
        raise ValueError("the sweep has no finished setting to draw")
    fig = _new_figure((4.0 * len(names) + 0.6, 3.8), dpi)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    best = max(rows, key=lambda r: r["validation_final_avg_acc"]["mean"])
    for ax, name in zip(axes, names, strict=True):
        values = [r["setting"].get(name) for r in rows]
        categorical = any(isinstance(v, (list, tuple, str)) for v in values)
        labels = sorted({str(v) for v in values})
        for r, v in zip(rows, values, strict=True):
            acc = r["validation_final_avg_acc"]
            x = labels.index(str(v)) if categorical else v
            ax.errorbar(x, 100 * acc["mean"], yerr=100 * (acc["std"] or 0.0), fmt="o",
                        color="#c0392b" if r is best else "#2c6fbb", capsize=3, markersize=5)
        numeric = [v for v in values if isinstance(v, (int, float))]
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        elif numeric and min(numeric) > 0 and (name == "learning_rate"
                                               or max(numeric) > 100 * min(numeric)):
            from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(LogFormatterSciNotation())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(name)
        ax.set_ylabel("Validation average accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Validation accuracy of each setting", fontsize=10)
    n = len(sweep.get("seeds", []))
    caption = caption or (
        f"Each dot is one setting: mean validation accuracy after the last task over its seeds "
        f"({n} asked), error bar the sd; red: the best ({best['name']})."
    )
    return _save(fig, path, format, caption, {"figure": "sweep", **dict(sweep)})

"""Figures of the paper drawn from run records (the ``runs`` of a ``results.json``).

Drawing goes through matplotlib's object API (:class:`matplotlib.figure.Figure` on an Agg canvas):
no pyplot, no global figure state, no display needed, so it is safe in tests, threads and on
headless machines.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["plot_final_task_accuracy"]


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
    runs: list[dict], path: str | os.PathLike, title: str | None = None
) -> pathlib.Path:
    """Draw the paper's Figure 3: the accuracy on each task after the last task, as bars.

    With one run, one bar per task with its value printed on it. With several runs (several
    seeds), each bar is the mean over the runs, its error bar the sample standard deviation
    (ddof=1, as in :func:`spacenet_jax.metrics.summarize`), and each run's own value is drawn as
    a small dot. A dashed horizontal line marks the mean final average accuracy (the mean over
    runs of the mean over tasks). Accuracies are shown in percent, 0-100.

    Args:
        runs: run records as in ``results.json``: each has ``"final_task_acc"`` (fractions in
            [0, 1], one per task; every run the same number of tasks) and usually ``"seed"``,
            ``"method"`` and ``"benchmark"`` (used for the default title and messages).
        path: where to write the PNG; missing parent folders are created.
        title: the figure title; default: method, benchmark and seeds from the runs.

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
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            ncol=3,
            frameon=False,
            fontsize=8,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        fig.clear()  # not registered with pyplot: dropping it frees it, nothing to close there
    return path

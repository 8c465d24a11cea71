"""Compare finished runs side by side: the paper's Figure 3 across methods, and their table.

    python -m experiments.compare SpaceNet=runs/a Static-SparseNN=runs/b runs/c --out fig.png

Each argument is a run's ``--out`` folder (or its ``results.json``), optionally preceded by
``LABEL=`` (default label: the runs' method). Nothing is trained or evaluated: it reads the
records, checks that they are of one benchmark with one task count, and writes

* ``OUT`` (PNG or PDF): each task's accuracy after the last task and the final average, one
  bar per label, mean +- sd over its seeds with the seeds as dots
  (:func:`spacenet_jax.analysis.plots.plot_methods_final_task_accuracy`), its data as JSON
  beside it (``OUT`` with the suffix ``.json``);
* ``OUT`` with the suffix ``.md``: a Markdown table, per label: the seeds, each task's
  accuracy just after it was learned and after the last task (means over seeds), the final
  average (mean +- sd, and each seed), the task-incremental average and the training time per
  seed. The same table is printed.

Exit status 2, with a line that says what to change, for a missing or unreadable input, a
label given twice, or runs that cannot be compared.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from experiments.combine import results_path
from experiments.common import refuse, version_line
from spacenet_jax.storage.results_io import ResultsFileError
from spacenet_jax.storage.results_schema import ResultsFormatError, load_results


def parse_source(text: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` or ``PATH`` -> (label or None, path). A ``=`` inside an existing path is
    part of the path (run folders are often named ``lr=0.1``)."""
    if "=" in text and not Path(text).exists():
        label, _, path = text.partition("=")
        if label.strip():
            return label.strip(), Path(path)
    return None, Path(text)


def _diagonal(run: dict[str, Any]) -> list[float]:
    """Each task's accuracy just after it was learned (NaN for ``joint``'s single stage)."""
    matrix = run.get("acc_matrix") or []
    tasks = len(run["final_task_acc"])
    if len(matrix) != tasks:
        return [float("nan")] * tasks
    return [float("nan") if matrix[t][t] is None else float(matrix[t][t]) for t in range(tasks)]


def summarize_method(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds (fractions) of what the table shows."""
    final = np.asarray([r["final_task_acc"] for r in runs], float)
    just_after = np.asarray([_diagonal(r) for r in runs], float)
    task_il = [r.get("final_task_il_avg_acc") for r in runs]
    seconds = [(r.get("seconds") or {}).get("total") for r in runs]
    average = final.mean(axis=1)
    return {
        "seeds": [r["seed"] for r in runs],
        "just_after": just_after.mean(axis=0).tolist(),
        "after_last": final.mean(axis=0).tolist(),
        "average": average.tolist(),
        "average_mean": float(average.mean()),
        "average_std": float(average.std(ddof=1)) if len(runs) > 1 else 0.0,
        "task_il": None if None in task_il else float(np.mean(task_il)),
        "seconds_per_seed": None if None in seconds else float(np.mean(seconds)),
    }


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per label: the columns :func:`summarize_method` computes, in percent."""
    def cells(values: list[float]) -> str:
        return ", ".join("—" if np.isnan(v) else f"{100 * v:.1f}" for v in values)

    lines = [
        "| method | seeds | just after learning each task | each task after the last | "
        "average (each seed) | task-IL | seconds per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in summaries.items():
        spread = f" +- {100 * s['average_std']:.1f}" if len(s["seeds"]) > 1 else ""
        per_seed = ", ".join(f"{100 * a:.1f}" for a in s["average"])
        task_il = "—" if s["task_il"] is None else f"{100 * s['task_il']:.1f}"
        secs = "—" if s["seconds_per_seed"] is None else f"{s['seconds_per_seed']:.0f}"
        lines.append(
            f"| {label} | {', '.join(str(x) for x in s['seeds'])} | {cells(s['just_after'])} | "
            f"{cells(s['after_last'])} | **{100 * s['average_mean']:.1f}{spread}** ({per_seed}) "
            f"| {task_il} | {secs} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="[LABEL=]RUN",
                   help="a run's --out folder or results.json, optionally labelled")
    p.add_argument("--out", type=Path, required=True,
                   help="the figure (.png or .pdf); its data (.json) and table (.md) go beside")
    p.add_argument("--title", help="the figure's title (default: the benchmark)")
    p.add_argument("--version", action="version", version=version_line())
    args = p.parse_args(argv)
    if args.out.suffix.lower() not in (".png", ".pdf"):
        refuse(f"--out {args.out}: name the figure file, ending in .png or .pdf")
    methods: dict[str, list[dict[str, Any]]] = {}
    try:
        for text in args.runs:
            label, where = parse_source(text)
            path = results_path(where)
            if not path.exists():
                raise ResultsFileError(f"{path} does not exist; give a run's --out folder or "
                                       f"its results.json (LABEL=FOLDER to name it)")
            runs = load_results(path)["runs"]
            if not runs:
                raise ResultsFileError(f"{path} holds no finished run")
            label = label or str(runs[0]["method"])
            if label in methods:
                raise ResultsFileError(f"the label {label!r} is given twice; name the runs apart "
                                       f"with LABEL=FOLDER")
            methods[label] = sorted(runs, key=lambda r: r["seed"])
    except (ResultsFormatError, ResultsFileError) as err:
        refuse(str(err))
    from spacenet_jax.analysis.plots import plot_methods_final_task_accuracy

    try:
        png = plot_methods_final_task_accuracy(methods, args.out, title=args.title)
    except ValueError as err:
        refuse(str(err))
    summaries = {label: summarize_method(runs) for label, runs in methods.items()}
    table = markdown_table(summaries)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"written: {png}, {png.with_suffix('.json')} and {png.with_suffix('.md')}")
    return summaries


if __name__ == "__main__":
    main()

"""Join the seeds of several runs of one configuration into one ``results.json``.

    python -m experiments.combine RUN_DIR [RUN_DIR ...] --out OUT

Long runs are split over seeds, sessions and machines (a CNN seed at the paper's schedule takes
most of an hour on a CPU), each with its own ``--out``. This reads every ``RUN_DIR/results.json``
(a ``results.json`` path works too), checks that they are runs of the same benchmark and
configuration and that no seed is in two of them, and writes ``OUT/results.json``: every run,
ordered by seed, with the summary over all of them (mean +- sd, per-task means, validation),
exactly as one run of all the seeds would have written it; the summary's ``combined_from``
lists the inputs.
It prints the usual table and draws ``OUT/final_task_accuracy.png`` (the paper's Figure 3).

Nothing is trained or evaluated, so it runs in a second and needs no data. Exit status 2, with
a line that says what to change, when an input is missing or unreadable, when the inputs differ
in benchmark or configuration (each difference named with its flag), when a seed is in two
inputs, or when ``OUT/results.json`` exists and is not one of the inputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from experiments.common import print_table, refuse, version_line
from spacenet_jax.core.config import describe_differences, with_default_fields
from spacenet_jax.running.study import results_file
from spacenet_jax.storage.results_io import (
    ResultsFileError,
    check_output_folder,
    write_json_atomic,
)
from spacenet_jax.storage.results_schema import ResultsFormatError, load_results


def results_path(where: Path) -> Path:
    """``where`` itself if it is a file, else ``where/results.json``."""
    return where if where.is_file() else where / "results.json"


def combine_runs(sources: dict[Path, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every run of ``sources`` (results file -> its runs), ordered by seed.

    Raises ``ResultsFileError`` if two runs differ in benchmark or configuration, or a seed is
    in two files (which of them to keep is the user's choice, not this function's).
    """
    first_path, first_runs = next(iter(sources.items()))
    if not first_runs:
        raise ResultsFileError(f"{first_path} holds no run")
    reference = first_runs[0]
    want = with_default_fields(reference["config"])
    seen: dict[int, Path] = {}
    runs = []
    for path, file_runs in sources.items():
        for run in file_runs:
            what = []
            if run["benchmark"] != reference["benchmark"]:
                what.append(f"benchmark {run['benchmark']!r} there, {reference['benchmark']!r} "
                            f"in {first_path}")
            what += describe_differences(with_default_fields(run["config"]), want,
                                         path.parent.name or str(path),
                                         first_path.parent.name or str(first_path))
            if what:
                raise ResultsFileError(
                    f"{path} (seed {run['seed']}) is a run of another configuration than "
                    f"{first_path} ({'; '.join(what)}); only runs of one configuration can be "
                    f"combined"
                )
            if run["seed"] in seen:
                raise ResultsFileError(
                    f"seed {run['seed']} is in both {seen[run['seed']]} and {path}; leave one "
                    f"of them out (or combine the others and add the one you keep)"
                )
            seen[run["seed"]] = path
            runs.append(run)
    return sorted(runs, key=lambda r: r["seed"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+",
                   help="run folders (each holding results.json) or results.json files")
    p.add_argument("--out", type=Path, required=True,
                   help="write OUT/results.json and OUT/final_task_accuracy.png")
    p.add_argument("--version", action="version", version=version_line())
    args = p.parse_args(argv)
    paths = [results_path(r) for r in args.runs]
    target = (args.out / "results.json").resolve()
    if target.exists() and target not in {q.resolve() for q in paths}:
        refuse(f"{target} already exists and is not one of the inputs; choose another --out, "
               f"or name it among the runs to add the others to it")
    sources: dict[Path, list[dict[str, Any]]] = {}
    try:
        for path in paths:
            if not path.exists():
                raise ResultsFileError(f"{path} does not exist; give a run's --out folder or "
                                       f"its results.json")
            if path.resolve() in {q.resolve() for q in sources}:
                raise ResultsFileError(f"{path} is given twice")
            sources[path] = load_results(path)["runs"]
        runs = combine_runs(sources)
        check_output_folder(args.out)
    except (ResultsFormatError, ResultsFileError) as err:
        refuse(str(err))
    payload = results_file(runs, runs[0]["benchmark"], runs[0]["method"])
    payload["summary"]["combined_from"] = [str(q) for q in paths]
    write_json_atomic(target, payload)
    print_table(runs, payload["summary"])
    from spacenet_jax.analysis.plots import plot_final_task_accuracy

    png = plot_final_task_accuracy(
        runs, args.out / "final_task_accuracy.png",
        title=f"{runs[0]['benchmark']} ({runs[0]['method']}, seeds "
        f"{', '.join(str(r['seed']) for r in runs)}): accuracy on each task after the last",
    )
    print(f"results of {len(runs)} seed(s) from {len(paths)} file(s) written to {target} "
          f"and {png}")
    return json.loads(json.dumps(payload))


if __name__ == "__main__":
    main()

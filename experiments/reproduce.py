"""Reproduce the paper's Table 2 (split MNIST) or Table 3 (split Fashion-MNIST).

Runs every row this project implements (SpaceNet, Static-SparseNN, SpaceNet-Rehearsal, and the
dense fine-tuning / joint bounds) over the seeds, then writes a Markdown table and JSON: the
measured mean +- sd beside the paper's figure and the difference. Rows the project does not
implement are the paper's figures, marked as quoted.

    python -m experiments.reproduce --table 2 --data-dir ../shared/datasets
    python -m experiments.reproduce --table 3 --seeds 0-4 --out runs/table3 --resume

Each method's runs go to ``OUT/<method>/results.json`` (rewritten after every batch of seeds,
the same shape as the single experiments write), so ``--resume`` after a crash reruns only
what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from experiments.common import command_line_process, load_or_exit, parse_seeds, refuse
from experiments.paper_tables import TABLES, PaperTable
from experiments.split_fashion_mnist import SPLIT_FASHION_MNIST
from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.core.config import METHODS, SpaceNetConfig
from spacenet_jax.running.study import StudyError, run_seeds
from spacenet_jax.storage.results_io import ResultsFileError, read_finished_runs, write_json_atomic

DEFAULT_CONFIGS = {2: SPLIT_MNIST, 3: SPLIT_FASHION_MNIST}


def implemented_methods(table: PaperTable) -> list[str]:
    return [row.method for row in table.rows if row.method is not None]


def _pct(summary: dict[str, Any] | None) -> tuple[float, float] | None:
    if summary is None:
        return None
    return 100 * summary["mean"], 100 * summary["std"]


def table_rows(table: PaperTable, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON row per paper row: quoted, measured, or (bounds) measured with no paper figure.

    Args:
      table: the paper's table.
      results: method -> the ``results.json`` payload of its runs (missing: not run).
    """
    rows = []
    for row in table.rows:
        paper = None if row.mean is None else {"mean": row.mean, "std": row.std}
        entry: dict[str, Any] = {
            "strategy": row.strategy,
            "name": row.name,
            "method": row.method,
            "paper": paper,
            "source": "quoted",
        }
        if row.method is not None and row.method in results:
            summary = results[row.method]["summary"]
            mean, std = _pct(summary["final_avg_acc"])
            forgetting = _pct(summary["avg_forgetting"])
            bwt = _pct(summary["backward_transfer"])
            entry.update(
                source="measured",
                measured={"mean": mean, "std": std, "sem": 100 * summary["final_avg_acc"]["sem"],
                          "n": summary["final_avg_acc"]["n"], "seeds": summary["seeds"]},
                difference=None if paper is None else mean - paper["mean"],
                avg_forgetting=None if forgetting is None else forgetting[0],
                backward_transfer=None if bwt is None else bwt[0],
                seconds_per_run=summary["seconds_per_run"]["mean"],
            )
            if row.method in table.authors_code:
                a_mean, a_std, a_seeds = table.authors_code[row.method]
                entry["authors_code"] = {"mean": a_mean, "std": a_std, "seeds": a_seeds}
        rows.append(entry)
    return rows


def check_claims(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The paper's comparisons, checked on the measured means (None if a row was not run)."""
    measured = {r["method"]: r["measured"] for r in rows if r["source"] == "measured"}
    checks: dict[str, bool | None] = {}
    if {"static", "spacenet", "rehearsal"} <= measured.keys():
        checks["static < spacenet < rehearsal"] = (
            measured["static"]["mean"] < measured["spacenet"]["mean"]
            < measured["rehearsal"]["mean"]
        )
    for r in rows:
        if r["source"] == "measured" and "authors_code" in r:
            ref, ours = r["authors_code"], r["measured"]
            checks[f"{r['method']} within 2 sd of the authors' code"] = (
                abs(ours["mean"] - ref["mean"]) <= 2 * ref["std"]
            )
    return checks


def _fmt(value: dict[str, Any] | None) -> str:
    return "—" if value is None else f"{value['mean']:.2f} ± {value['std']:.2f}"


def _signed(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def markdown_table(table: PaperTable, rows: list[dict[str, Any]], config: SpaceNetConfig,
                   seeds: list[int], command: str) -> str:
    """The table as Markdown, with a header saying how it was made."""
    lines = [
        f"# Table {table.number}: {table.benchmark.replace('_', ' ')}, average accuracy (%)",
        "",
        f"Made by `{command}`; {len(seeds)} seed(s) ({seeds[0]}..{seeds[-1]}), "
        f"{config.epochs} epochs per task, batch {config.batch_size}, "
        f"learning rate {config.learning_rate}.",
        "Measured: mean ± sd over the seeds of the mean final per-task test accuracy "
        "(single-headed, no task identity). Quoted: the paper's figure, not run here.",
        "",
        "| strategy | method | source | measured here | paper | difference | "
        "avg forgetting | BWT | authors' code here |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        measured = r.get("measured")
        authors = r.get("authors_code")
        lines.append(
            f"| {r['strategy']} | {r['name']} | {r['source']} | {_fmt(measured)} | "
            f"{_fmt(r['paper'])} | {_signed(r.get('difference'))} | "
            f"{'—' if r.get('avg_forgetting') is None else format(r['avg_forgetting'], '.2f')} | "
            f"{_signed(r.get('backward_transfer'))} | {_fmt(authors)} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--table", type=int, choices=sorted(TABLES), required=True,
                   help="2: split MNIST; 3: split Fashion-MNIST")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-9"),
                   help="seeds of every row, e.g. 0-9 or 0,3,7")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of the implemented rows (default: all of them)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per task (default: the paper's; other values are marked)")
    p.add_argument("--data-dir", default=None,
                   help="folder with one sub-folder per dataset (e.g. ../shared/datasets)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/tableN)")
    p.add_argument("--resume", action="store_true",
                   help="keep the seeds already in OUT/<method>/results.json")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from spacenet_jax.running.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    parser = build_parser()
    args = parser.parse_args(argv)
    table = TABLES[args.table]
    methods = implemented_methods(table)
    if args.methods is not None:
        chosen = [m for m in args.methods.replace(" ", "").split(",") if m]
        unknown = [m for m in chosen if m not in methods]
        if unknown:
            parser.error(f"--methods: {', '.join(unknown)} not in table {table.number}'s "
                         f"implemented rows ({', '.join(methods)}); choose among those")
        methods = chosen
    base = DEFAULT_CONFIGS[table.number]
    if args.epochs is not None:
        if args.epochs <= 0:
            parser.error(f"--epochs must be positive, got {args.epochs}")
        base = dataclasses.replace(base, epochs=args.epochs)
    out = args.out or Path("runs") / f"table{table.number}"
    configs = {m: dataclasses.replace(base, method=m) for m in methods}
    try:  # checked before the long work starts
        finished = {
            m: read_finished_runs(out / m / "results.json", c, table.benchmark)
            if args.resume else []
            for m, c in configs.items()
        }
    except ResultsFileError as err:
        refuse(str(err))
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_or_exit(table.dataset, args.data_dir, args.quiet)

    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for m in methods:
        if not args.quiet:
            print(f"== table {table.number}: {m} ({METHODS[m]}), seeds {args.seeds}",
                  file=sys.stderr, flush=True)
        try:
            results[m] = run_seeds(
                configs[m], dataset, args.seeds, benchmark=table.benchmark,
                out=out / m / "results.json", progress=not args.quiet, finished=finished[m],
            )
        except StudyError as err:
            print(f"error ({err})", file=sys.stderr)
            raise SystemExit(2) from None
    rows = table_rows(table, results)
    checks = check_claims(rows)
    command = "python -m experiments.reproduce " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    paper_schedule = base.epochs == DEFAULT_CONFIGS[table.number].epochs
    text = markdown_table(table, rows, base, args.seeds, command.strip())
    if not paper_schedule:
        text += (f"\n**Not the paper's schedule** ({base.epochs} epochs per task instead of "
                 f"{DEFAULT_CONFIGS[table.number].epochs}): not comparable with the paper.\n")
    if checks:
        text += "\n" + "\n".join(f"- {k}: {'yes' if v else 'NO'}" for k, v in checks.items())
        text += "\n"
    payload = {
        "table": table.number,
        "benchmark": table.benchmark,
        "seeds": args.seeds,
        "config": base.to_dict(),
        "paper_schedule": paper_schedule,
        "rows": rows,
        "checks": checks,
        "seconds": time.perf_counter() - start,
    }
    (out / f"table{table.number}.md").write_text(text)
    write_json_atomic(out / f"table{table.number}.json", payload)
    print(text)
    print(f"written: {out / f'table{table.number}.md'}, {out / f'table{table.number}.json'}")
    return payload


if __name__ == "__main__":
    with command_line_process():
        main()

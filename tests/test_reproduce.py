"""experiments.reproduce: the table built from hand-made results, and the command on real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.paper_tables import TABLES
from experiments.reproduce import check_claims, markdown_table, table_rows
from experiments.split_fashion_mnist import SPLIT_FASHION_MNIST
from experiments.split_mnist import SPLIT_MNIST

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


def _payload(values: list[float], forgetting: list[float] | None = None) -> dict:
    """A results.json payload with the given final average accuracies (fractions)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0

    def s(m: float, sd: float) -> dict:
        return {"n": n, "mean": m, "std": sd, "sem": sd / n**0.5, "values": []}

    f = None if forgetting is None else s(sum(forgetting) / n, 0.0)
    return {"summary": {
        "final_avg_acc": s(mean, std), "avg_forgetting": f,
        "backward_transfer": None if f is None else s(-f["mean"], 0.0),
        "seeds": list(range(n)), "seconds_per_run": s(1.0, 0.0),
    }}


RESULTS = {
    "spacenet": _payload([0.70, 0.68], forgetting=[0.2, 0.2]),
    "static": _payload([0.62, 0.60], forgetting=[0.3, 0.3]),
    "rehearsal": _payload([0.88, 0.90], forgetting=[0.05, 0.05]),
    "joint": _payload([0.95, 0.95]),
}


def test_rows_quote_unimplemented_methods_and_measure_the_others():
    rows = table_rows(TABLES[2], RESULTS)
    by_name = {r["name"]: r for r in rows}
    for name in ("EWC", "SI", "MAS", "LwF", "DGR", "iCaRL", "DEN"):
        row = by_name[name]
        assert row["source"] == "quoted" and "measured" not in row and row["method"] is None
        assert row["paper"]["mean"] > 0
    space = by_name["SpaceNet"]
    assert space["source"] == "measured"
    assert space["measured"]["mean"] == pytest.approx(69.0)
    assert space["measured"]["std"] == pytest.approx(100 * 0.0141421, rel=1e-4)
    assert space["difference"] == pytest.approx(69.0 - 75.53)
    assert space["avg_forgetting"] == pytest.approx(20.0)
    assert space["backward_transfer"] == pytest.approx(-20.0)
    assert space["authors_code"] == {"mean": 69.64, "std": 1.72, "seeds": "0-9"}
    joint = by_name["Joint training (dense, upper bound)"]
    assert joint["paper"] is None and joint["difference"] is None
    assert joint["avg_forgetting"] is None
    # A row that was not run stays as the paper quotes it (no paper figure for fine-tuning).
    fine = by_name["Fine-tuning (dense, lower bound)"]
    assert fine["source"] == "quoted" and fine["paper"] is None


def test_claims_are_checked_on_the_measured_means():
    checks = check_claims(table_rows(TABLES[2], RESULTS))
    assert checks == {
        "static < spacenet < rehearsal": True,
        "spacenet within 2 sd of the authors' code": True,  # 69.0 vs 69.64 +- 2 * 1.72
    }
    worse = dict(RESULTS, rehearsal=_payload([0.5, 0.5], forgetting=[0.0, 0.0]))
    worse["spacenet"] = _payload([0.60, 0.62], forgetting=[0.2, 0.2])
    checks = check_claims(table_rows(TABLES[2], worse))
    assert checks["static < spacenet < rehearsal"] is False
    assert checks["spacenet within 2 sd of the authors' code"] is False  # 61 vs 69.64
    assert check_claims(table_rows(TABLES[3], {"joint": RESULTS["joint"]})) == {}


def test_markdown_marks_quoted_rows_and_formats_numbers():
    rows = table_rows(TABLES[3], RESULTS)
    text = markdown_table(TABLES[3], rows, SPLIT_FASHION_MNIST, list(range(10)), "cmd")
    lines = {line.split("|")[2].strip(): line for line in text.splitlines() if line.count("|") > 5}
    assert "| quoted | — | 19.47 ± 0.98 |" in lines["EWC"]
    assert "| measured | 69.00 ± 1.41 | 64.83 ± 0.69 | +4.17 | 20.00 | -20.00 |" in lines[
        "SpaceNet"
    ]
    assert "`cmd`; 10 seed(s) (0..9)" in text
    assert "MAS" not in lines  # Table 3 has no MAS row


def test_the_benchmarks_share_the_paper_setup_except_input_statistics():
    assert SPLIT_FASHION_MNIST.layer_sizes == SPLIT_MNIST.layer_sizes
    assert SPLIT_FASHION_MNIST.connections_per_task == SPLIT_MNIST.connections_per_task
    assert SPLIT_FASHION_MNIST.epochs == SPLIT_MNIST.epochs == 4
    assert (SPLIT_FASHION_MNIST.input_mean, SPLIT_FASHION_MNIST.input_std) == (0.2860, 0.3530)


def _run(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPACENET_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "fashion_mnist").is_dir(),
                    reason="../shared/datasets absent")
def test_reproduce_table3_short_schedule_and_resume(tmp_path, shared_cache):
    """The command on real Fashion-MNIST (1 epoch, two fast rows), then resumed with a seed more."""
    out, cache = tmp_path / "t3", shared_cache
    common = ["experiments.reproduce", "--table", "3", "--epochs", "1", "--methods",
              "finetune,joint", "--data-dir", str(SHARED_DATASETS), "--out", str(out)]
    first = _run([*common, "--seeds", "0"], cache)
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads((out / "table3.json").read_text())
    assert table["paper_schedule"] is False and table["seeds"] == [0]
    measured = {r["method"]: r for r in table["rows"] if r["source"] == "measured"}
    assert set(measured) == {"finetune", "joint"}
    # Class-incremental fine-tuning forgets almost everything; joint training does not.
    assert measured["finetune"]["measured"]["mean"] < 35
    assert measured["joint"]["measured"]["mean"] > 60
    assert "Not the paper's schedule" in (out / "table3.md").read_text()
    first_runs = json.loads((out / "joint" / "results.json").read_text())["runs"]
    assert [r["benchmark"] for r in first_runs] == ["split_fashion_mnist"]

    second = _run([*common, "--seeds", "0,1", "--resume"], cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "seed 0] already in" in second.stderr
    runs = json.loads((out / "joint" / "results.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0] == first_runs[0]  # kept, not rerun

    # Resuming into results of another configuration is refused before any training.
    clash = _run([*common[:4], "2", *common[5:], "--seeds", "0", "--resume"], cache)
    assert clash.returncode != 0
    assert "another configuration" in clash.stderr

"""The records of the multi-hour runs kept in the repository (``docs/runs/<name>/results.json``).

They are what the README's figures for those runs are read from, and what a later session merges
its seeds into (``--out`` merges, ``--resume`` skips the seeds already there), so each must be a
valid results.json whose summary is exactly what ``running.study.summarize_runs`` makes of its
runs, and whose records are internally consistent."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from spacenet_jax.running.study import summarize_runs
from spacenet_jax.storage.results_schema import JSON_SCHEMA, load_results

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "docs" / "runs").glob("*/results.json"))


def test_there_are_recorded_runs():
    assert RECORDS, "docs/runs/*/results.json: the README's multi-hour runs are kept there"


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.parent.name)
def test_a_recorded_run_validates_and_its_summary_is_its_runs(path):
    payload = json.loads(path.read_text())
    jsonschema.validate(payload, JSON_SCHEMA)
    results = load_results(path)
    runs = results["runs"]
    assert runs and len({r["seed"] for r in runs}) == len(runs), "one record per seed"
    expected = summarize_runs(runs)
    summary = {k: v for k, v in results["summary"].items() if k in expected}
    _assert_close(summary, json.loads(json.dumps(expected)))


def _assert_close(got, want, where="summary"):
    """Equal structure, numbers equal up to float rounding."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.parent.name)
def test_a_recorded_runs_metrics_follow_from_its_accuracy_matrix(path):
    for run in load_results(path)["runs"]:
        acc = run["acc_matrix"]
        T = len(acc)
        assert run["tasks_learned"] == T
        # The lower triangle is filled, the upper one empty: task j is tested once learned.
        assert all((acc[i][j] is None) == (j > i) for i in range(T) for j in range(T))
        assert run["final_task_acc"] == acc[-1]
        assert run["final_avg_acc"] == pytest.approx(np.mean(acc[-1]))
        il = run["task_il_acc_matrix"]
        # Within the task's own classes is never harder than among all classes.
        assert all(il[i][j] >= acc[i][j] - 1e-9 for i in range(T) for j in range(i + 1))
        if run["forgetting"] is not None:
            best = [max(acc[i][j] for i in range(j, T)) for j in range(T - 1)]
            assert run["forgetting"] == pytest.approx(
                [b - a for b, a in zip(best, acc[-1][:-1], strict=True)])


def test_the_wide_variants_figure_is_drawn_from_its_records():
    """docs/figures/split_cifar10_wide_final_task_accuracy.* (the README's figure of the wide CNN)
    holds, for each of its two bars, exactly the seeds and accuracies of the kept record; a record
    that gains a seed without the figure being drawn again fails here."""
    figure = json.loads(
        (ROOT / "docs" / "figures" / "split_cifar10_wide_final_task_accuracy.json").read_text())
    records = ["split_cifar10_wide_per_task", "split_cifar10_wide_rel_w0.5"]
    assert len(figure["methods"]) == len(records)
    for label, record in zip(figure["methods"], records, strict=True):
        runs = load_results(ROOT / "docs" / "runs" / record / "results.json")["runs"]
        assert figure["seeds"][label] == [r["seed"] for r in runs], label
        expected = [r["final_task_acc"] + [r["final_avg_acc"]] for r in runs]
        np.testing.assert_allclose(figure["per_seed"][label], expected, rtol=1e-9, err_msg=label)

"""``python -m experiments.compare``: finished runs side by side (Figure 3 across methods and its
table), read from their results.json; unreadable inputs and clashing labels are refused."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, synthetic_dataset

from experiments import compare
from experiments.common import main

DATA = synthetic_dataset()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """SpaceNet over seeds 0-1 and Static-SparseNN on seed 0 (synthetic, one epoch a task)."""
    root = tmp_path_factory.mktemp("runs")
    for name, flags in (("spacenet", ["--seeds", "0,1"]),
                        ("static", ["--seed", "0", "--method", "static"])):
        main("synthetic", "synthetic", "synthetic benchmark", TINY,
             argv=["--epochs", "1", "--quiet", "--out", str(root / name), *flags],
             load=lambda data_dir, quiet: DATA)
    return root


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        compare.main(argv)
    assert err.value.code == 2
    return capsys.readouterr().err


def test_table_and_figure_from_the_records(runs, tmp_path, capsys):
    out = tmp_path / "cmp" / "fig3.png"
    summaries = compare.main([f"SpaceNet={runs / 'spacenet'}",
                              str(runs / "static" / "results.json"), "--out", str(out)])
    assert list(summaries) == ["SpaceNet", "static"]  # the method when no label is given
    records = json.loads((runs / "spacenet" / "results.json").read_text())["runs"]
    mine = summaries["SpaceNet"]
    assert mine["seeds"] == [0, 1]
    assert mine["average"] == pytest.approx([r["final_avg_acc"] for r in records])
    assert mine["after_last"] == pytest.approx(
        [sum(r["final_task_acc"][t] for r in records) / 2 for t in range(3)])
    assert mine["just_after"] == pytest.approx(
        [sum(r["acc_matrix"][t][t] for r in records) / 2 for t in range(3)])
    assert mine["seconds_per_seed"] == pytest.approx(
        sum(r["seconds"]["total"] for r in records) / 2)
    table = out.with_suffix(".md").read_text()
    assert table in capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| SpaceNet |"))
    assert f"**{100 * mine['average_mean']:.1f} +- {100 * mine['average_std']:.1f}**" in row
    assert out.read_bytes().startswith(b"\x89PNG")
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["methods"] == ["SpaceNet", "static"]
    assert data["mean"][0][-1] == pytest.approx(mine["average_mean"])


def test_a_path_with_an_equals_sign_is_a_path(tmp_path):
    folder = tmp_path / "lr=0.1"
    folder.mkdir()
    assert compare.parse_source(str(folder)) == (None, folder)
    assert compare.parse_source("A b=runs/x") == ("A b", compare.Path("runs/x"))


def test_refusals(runs, tmp_path, capsys):
    png = str(tmp_path / "fig.png")
    assert "does not exist" in refused([str(tmp_path / "nowhere"), "--out", png], capsys)
    assert "given twice" in refused([f"x={runs / 'spacenet'}", f"x={runs / 'static'}",
                                     "--out", png], capsys)
    assert ".png or .pdf" in refused([str(runs / "static"), "--out",
                                      str(tmp_path / "fig")], capsys)
    assert not (tmp_path / "fig.png").exists()

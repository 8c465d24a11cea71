"""``python -m experiments.combine``: seeds run in separate folders join into the results.json
one run of all of them writes; other configurations, repeated seeds and a foreign OUT are
refused."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, synthetic_dataset

from experiments import combine
from experiments.common import main
from spacenet_jax.storage.results_schema import load_results

DATA = synthetic_dataset()
ARGS = ["--epochs", "1", "--quiet"]


def run(out, *flags):
    return main("synthetic", "synthetic", "synthetic benchmark", TINY,
                argv=[*ARGS, "--out", str(out), *flags], load=lambda data_dir, quiet: DATA)


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        combine.main(argv)
    assert err.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Seeds 0-2 in one command, and the same seeds as 0 and 1-2 in two folders."""
    root = tmp_path_factory.mktemp("runs")
    run(root / "all", "--seeds", "0-2", "--seed-batch", "1")
    run(root / "a", "--seed", "0")
    run(root / "b", "--seeds", "1,2", "--seed-batch", "1")
    run(root / "lr", "--seed", "5", "--lr", "0.07")
    return root


def test_combined_folders_equal_one_run_of_all_the_seeds(runs, tmp_path):
    payload = combine.main([str(runs / "a"), str(runs / "b" / "results.json"),
                            "--out", str(tmp_path)])
    whole = json.loads((runs / "all" / "results.json").read_text())
    assert [r["seed"] for r in payload["runs"]] == [0, 1, 2]
    for key in ("final_avg_acc", "final_task_acc_mean", "final_task_il_avg_acc", "seeds",
                "avg_forgetting"):
        assert payload["summary"][key] == whole["summary"][key], key
    for mine, theirs in zip(payload["runs"], whole["runs"], strict=True):
        assert mine["acc_matrix"] == theirs["acc_matrix"]
    assert payload["summary"]["combined_from"] == [str(runs / "a" / "results.json"),
                                                   str(runs / "b" / "results.json")]
    assert load_results(tmp_path / "results.json")["summary"]["final_avg_acc"]["n"] == 3
    assert (tmp_path / "final_task_accuracy.png").stat().st_size > 0


def test_another_configuration_is_refused_with_the_flag_that_differs(runs, tmp_path, capsys):
    err = refused([str(runs / "a"), str(runs / "lr"), "--out", str(tmp_path)], capsys)
    assert "another configuration" in err and "learning_rate (--lr)" in err
    assert not (tmp_path / "results.json").exists()


def test_a_seed_in_two_inputs_is_refused(runs, tmp_path, capsys):
    err = refused([str(runs / "all"), str(runs / "b"), "--out", str(tmp_path)], capsys)
    assert "seed 1 is in both" in err
    assert not (tmp_path / "results.json").exists()


def test_missing_input_and_foreign_out_are_refused_before_writing(runs, tmp_path, capsys):
    err = refused([str(runs / "a"), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                  capsys)
    assert "does not exist" in err
    before = (runs / "all" / "results.json").read_bytes()
    err = refused([str(runs / "a"), str(runs / "b"), "--out", str(runs / "all")], capsys)
    assert "already exists and is not one of the inputs" in err
    assert (runs / "all" / "results.json").read_bytes() == before


def test_out_may_be_one_of_the_inputs(runs, tmp_path):
    target = tmp_path / "grow"
    run(target, "--seed", "0")
    combine.main([str(target), str(runs / "b"), "--out", str(target)])
    assert [r["seed"] for r in load_results(target / "results.json")["runs"]] == [0, 1, 2]

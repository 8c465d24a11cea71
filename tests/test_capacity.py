"""The capacity plan: computed from the config alone, and what a real run then uses."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import TINY, synthetic_dataset

from experiments.common import main as experiment_main
from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.running.capacity import capacity_plan, format_plan
from spacenet_jax.running.runner import run_task_sequence


def test_split_mnist_plan_matches_the_paper_settings():
    plan = capacity_plan(SPLIT_MNIST)
    assert len(plan["tasks"]) == 5
    for t, task in enumerate(plan["tasks"]):
        assert [h["free_before"] for h in task["hidden"]] == [400 - 40 * t] * 2
        assert [h["selected"] for h in task["hidden"]] == [80, 80]
        assert [h["free_after"] for h in task["hidden"]] == [360 - 40 * t] * 2
        assert [(x["connections"], x["regrowth"], x["positions"]) for x in task["layers"]] == [
            (10000, 2000, 784 * 80), (1640, 328, 80 * 80), (80, 0, 80 * 2)
        ]
        assert all(x["fits"] for x in task["layers"])
    final = plan["final"]
    assert [h["reserved"] for h in final["hidden"]] == [200, 200]
    assert [x["used"] for x in final["layers"]] == [50000, 8200, 400]
    assert final["connections_used"] == 58600
    assert final["connection_positions"] == 784 * 400 + 400 * 400 + 400 * 10
    text = format_plan(plan)
    assert "network: 58600 of 477600 connections used (12.3%)" in text
    assert "weights 1: 10000 (+2000 regrown) of 62720 positions" in text
    # People count from 1: tasks, hidden layers and weight matrices, in the JSON too.
    assert [task["task"] for task in plan["tasks"]] == [1, 2, 3, 4, 5]
    assert [x["layer"] for x in final["layers"]] == [1, 2, 3]
    assert text.splitlines()[1].startswith("task 1 (classes [0, 1])")


def test_dense_methods_plan_every_connection_and_no_reservation():
    plan = capacity_plan(dataclasses.replace(TINY, method="finetune"))
    assert all(h["reserved"] == 0 for task in plan["tasks"] for h in task["hidden"])
    final = plan["final"]
    assert final["connections_used"] == final["connection_positions"]


def test_plan_agrees_with_what_a_run_uses():
    config = TINY
    _, record = run_task_sequence(config, synthetic_dataset(), 0, progress=False)
    plan = capacity_plan(config)
    assert record["free_neurons"] == [
        [h["free_after"] for h in task["hidden"]] for task in plan["tasks"]
    ]
    assert record["connections_per_task"] == [
        [x["connections"] for x in task["layers"]] for task in plan["tasks"]
    ]
    assert record["connections_used"] == [x["used"] for x in plan["final"]["layers"]]


def test_a_plan_that_does_not_fit_says_so():
    plan = capacity_plan(TINY)
    plan["tasks"][1]["layers"][0]["fits"] = False
    assert "DOES NOT FIT" in format_plan(plan)


def test_dry_run_prints_and_writes_the_plan_without_loading_data(tmp_path, capsys):
    def no_data(data_dir, quiet):
        raise AssertionError("--dry-run must not load the dataset")

    result = experiment_main("synthetic", "synthetic", "test", TINY,
                             argv=["--dry-run", "--out", str(tmp_path)], load=no_data)
    out = capsys.readouterr().out
    assert "capacity plan (spacenet)" in out and "after the last task" in out
    assert json.loads((tmp_path / "capacity_plan.json").read_text()) == result["plan"]
    assert not (tmp_path / "results.json").exists()


def test_dry_run_of_an_impossible_configuration_is_refused(capsys):
    with pytest.raises(SystemExit):
        experiment_main("synthetic", "synthetic", "test", TINY,
                        argv=["--dry-run", "--specific-neurons", "8,7", "--selected-neurons",
                              "8,7"], load=None)
    err = capsys.readouterr().err
    assert "impossible configuration" in err and "hidden layer" in err

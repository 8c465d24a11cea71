"""Sweeps (``experiments.sweep``): a grid of settings x seeds as one vmapped program equals the
separate runs, compiles once for the traced hyper-parameters, resumes, and refuses bad grids."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import TINY, synthetic_dataset

from experiments import sweep
from spacenet_jax import init_state, learn_task, make_task_data, task_indices
from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.state import hyperparameters, with_hyperparameters
from spacenet_jax.running.runner import run_task_sequence, run_task_sequences

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

BASE = dataclasses.replace(TINY, epochs=1, validation_per_class=5)
BENCH = "synthetic"


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


def _comparable(record: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(record)).items()
            if k not in ("seconds", "batch", "provenance")}


def test_hyperparameters_are_traced_state_kept_across_tasks(data):
    state = with_hyperparameters(init_state(TINY, 0), learning_rate=0.05, momentum=0.5)
    tasks = make_task_data(data.train_images, data.train_labels,
                           task_indices(data.train_labels, TINY.task_classes), TINY.batch_size)
    state = learn_task(learn_task(state, TINY, tasks[0]), TINY, tasks[1])
    values = {k: float(v) for k, v in hyperparameters(state).items()}
    assert values == pytest.approx({"learning_rate": 0.05, "momentum": 0.5})
    with pytest.raises(ValueError, match="epochs"):
        with_hyperparameters(state, epochs=3)


def test_a_2x2_grid_in_one_program_equals_the_four_separate_runs(data):
    settings = sweep.parse_grid(["learning_rate=0.01,0.05", "momentum=0,0.9"], TINY)
    assert settings == [{"learning_rate": a, "momentum": b}
                        for a in (0.01, 0.05) for b in (0.0, 0.9)]
    config = dataclasses.replace(TINY, epochs=1)
    batched = run_task_sequences(config, data, [0] * 4, settings=settings, progress=False)
    finals = set()
    for setting, (state, record) in zip(settings, batched, strict=True):
        alone_state, alone = run_task_sequence(dataclasses.replace(config, **setting), data, 0,
                                               progress=False)
        assert _comparable(record) == _comparable(alone), setting
        for x, y in zip(state.weights, alone_state.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        finals.add(round(record["final_avg_acc"], 6))
    assert len(finals) > 1  # the settings do train differently


@pytest.mark.slow
def test_a_grid_over_the_input_mean_and_sd_in_one_program_equals_the_separate_runs(data):
    from spacenet_jax.running import multiseed

    settings = sweep.parse_grid(["input_mean=0.4,0.6", "input_std=0.25,0.3",
                                 "learning_rate=0.05"], TINY)
    assert sweep.split_setting(settings[0]) == ({}, settings[0])  # all traced: one group
    config = dataclasses.replace(TINY, epochs=1)
    multiseed.train_epochs_and_rewire.clear_cache()
    batched = run_task_sequences(config, data, [0] * 4, settings=settings, progress=False)
    assert multiseed.train_epochs_and_rewire._cache_size() == 1
    finals = set()
    for setting, (state, record) in zip(settings, batched, strict=True):
        alone_state, alone = run_task_sequence(dataclasses.replace(config, **setting), data, 0,
                                               progress=False)
        assert record["config"]["input_mean"] == setting["input_mean"]
        assert _comparable(record) == _comparable(alone), setting
        for x, y in zip(state.weights, alone_state.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        finals.add(round(record["final_avg_acc"], 6))
    assert len(finals) > 1  # the normalisations do train differently
    with pytest.raises(ConfigError, match="not used with input_normalisation='per_pixel'"):
        run_task_sequences(dataclasses.replace(config, input_normalisation="per_pixel"), data,
                           [0, 1], settings=[{"input_mean": 0.4}] * 2, progress=False)


def test_the_traced_settings_compile_once(data):
    from spacenet_jax.running import multiseed

    config = dataclasses.replace(TINY, epochs=1, learning_rate=0.013)  # a program of its own
    run_task_sequences(config, data, [0, 1], settings=[{"learning_rate": 0.01}] * 2,
                       progress=False)
    compiled = multiseed.train_epochs_and_rewire._cache_size()
    run_task_sequences(config, data, [0, 1], settings=[{"learning_rate": 0.05},
                                                       {"learning_rate": 0.2}], progress=False)
    assert multiseed.train_epochs_and_rewire._cache_size() == compiled


@pytest.mark.slow
def test_cli_grid_writes_each_setting_ranks_on_validation_and_resumes(tmp_path, data, capsys):
    out = tmp_path / "sweep"
    argv = ["--grid", "learning_rate=0.01,0.05", "--grid", "specific_neurons=2/2,3/3",
            "--seeds", "0,1", "--validation", "5", "--out", str(out), "--quiet"]
    sweep.BENCHMARKS["synthetic"] = ("synthetic", dataclasses.replace(TINY, epochs=1))
    try:
        first = sweep.main(["--benchmark", "synthetic", *argv, "--batch", "3"], dataset=data)
        table = capsys.readouterr().out
        assert len(first["settings"]) == 4 and all(r["seeds"] == [0, 1]
                                                   for r in first["settings"])
        means = [r["validation_final_avg_acc"]["mean"] for r in first["settings"]]
        assert means == sorted(means, reverse=True)  # ranked on validation
        assert first["best"]["name"] in table and "validation accuracy" in table
        assert (out / "sweep.png").stat().st_size > 1000
        # each setting's results.json is the run of that configuration
        row = next(r for r in first["settings"]
                   if r["setting"] == {"learning_rate": 0.05, "specific_neurons": [3, 3]})
        saved = json.loads((out / row["results"]).read_text())["runs"]
        config = dataclasses.replace(TINY, epochs=1, learning_rate=0.05,
                                     specific_neurons=(3, 3), validation_per_class=5)
        _, alone = run_task_sequence(config, data, 1, benchmark="synthetic", progress=False)
        assert _comparable(saved[1]) == _comparable(alone)

        with pytest.raises(SystemExit):  # the same seeds again without --resume
            sweep.main(["--benchmark", "synthetic", *argv], dataset=data)
        assert "add --resume" in capsys.readouterr().err
        # one more seed: only the four new members run, the rest is kept as it was
        more = sweep.main(["--benchmark", "synthetic", *argv[:4], "--seeds", "0-2",
                           *argv[6:], "--resume"], dataset=data)
        assert all(r["seeds"] == [0, 1, 2] for r in more["settings"])
        again = json.loads((out / row["results"]).read_text())["runs"]
        assert again[:2] == saved
        # a wider grid: the shape group whose settings are all done runs nothing (it once
        # crashed), the new group runs, and sweep.json ranks all of them
        wider = sweep.main(["--benchmark", "synthetic", *argv[:2], "--grid",
                            "specific_neurons=2/2,3/3,4/4", "--seeds", "0-2", *argv[6:],
                            "--resume"], dataset=data)
        assert len(wider["settings"]) == 6 and all(r["seeds"] == [0, 1, 2]
                                                   for r in wider["settings"])
        assert json.loads((out / row["results"]).read_text())["runs"] == again
    finally:
        del sweep.BENCHMARKS["synthetic"]


def test_random_search_is_reproducible_and_within_its_space():
    space = ["learning_rate=log:0.001:0.1", "momentum=uniform:0:0.9",
             "specific_neurons=choice:20/20,40/40", "epochs=uniform:2:6"]
    paper = sweep.BENCHMARKS["split_mnist"][1]  # a network that can take every draw
    a = sweep.draw_random(space, 8, paper, search_seed=3)
    assert a == sweep.draw_random(space, 8, paper, search_seed=3)
    assert a != sweep.draw_random(space, 8, paper, search_seed=4)
    for s in a:
        assert 0.001 <= s["learning_rate"] <= 0.1 and 0 <= s["momentum"] <= 0.9
        assert s["specific_neurons"] in ((20, 20), (40, 40)) and isinstance(s["epochs"], int)


@pytest.mark.parametrize("entries, message", [
    (["layer_sizes=1,2"], "cannot sweep 'layer_sizes'"),
    (["learning_rate"], "write NAME=V1,V2"),
    (["epochs=two"], "expected int"),
    (["momentum=0", "momentum=0.5"], "twice"),
])
def test_bad_grids_are_refused_with_the_fix(entries, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.parse_grid(entries, BASE)


def test_cli_refuses_a_sweep_without_validation_and_an_impossible_setting(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--grid", "momentum=0", "--validation", "0", "--out", str(tmp_path)])
    assert "never on the test set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        sweep.main(["--grid", "momentum=0,1.5", "--out", str(tmp_path / "m")],
                   dataset=synthetic_dataset())
    assert err.value.code == 2 and "momentum must be in [0, 1)" in capsys.readouterr().err


def test_random_draws_the_network_cannot_take_are_drawn_again():
    space = ["connections_per_task=choice:60/30/8,60/30/9999", "momentum=uniform:0:0.9"]
    rejected = []
    drawn = sweep.draw_random(space, 6, BASE, search_seed=0, rejected=rejected)
    assert len(drawn) == 6 and all(s["connections_per_task"] == (60, 30, 8) for s in drawn)
    assert rejected and all(s["connections_per_task"] == (60, 30, 9999) for s, _ in rejected)
    assert all("connections" in why for _, why in rejected)
    with pytest.raises(sweep.SweepError, match="only 0 of 2 draws"):
        sweep.draw_random(["connections_per_task=choice:60/30/9999"], 2, BASE, search_seed=0)


def test_a_preset_sets_the_flags_defaults_and_flags_still_override(data):
    from experiments.common import main

    presets = {"paper": TINY, "mine": dataclasses.replace(TINY, learning_rate=0.05,
                                                           specific_neurons=(3, 3))}

    def run(*flags):
        return main(BENCH, BENCH, "d", TINY, ["--epochs", "1", "--quiet", *flags],
                    load=lambda data_dir, quiet: data, presets=presets)["runs"][0]["config"]

    assert run()["learning_rate"] == TINY.learning_rate
    mine = run("--preset", "mine")
    assert mine["learning_rate"] == 0.05 and tuple(mine["specific_neurons"]) == (3, 3)
    assert run("--preset", "mine", "--lr", "0.02")["learning_rate"] == 0.02
    with pytest.raises(SystemExit):
        run("--preset", "nonsense")


def _preset(module: str, name: str):
    """``(presets, paper, preset, fields the preset changes)`` of an experiment module."""
    import importlib

    presets = importlib.import_module(f"experiments.{module}").PRESETS
    paper, preset = presets["paper"], presets[name]
    changed = {f.name for f in dataclasses.fields(paper)
               if getattr(paper, f.name) != getattr(preset, f.name)}
    return presets, paper, preset, changed


@pytest.mark.parametrize("module", ["split_mnist", "split_fashion_mnist"])
def test_the_tuned_presets_fit_and_differ_from_the_paper_only_where_chosen(module, capsys):
    from experiments.common import main

    presets, paper, tuned, changed = _preset(module, "tuned")
    assert changed == {
        "split_mnist": {"selected_neurons", "connections_per_task", "rewire_ratio",
                        "input_normalisation", "learning_rate"},
        "split_fashion_mnist": {"epochs", "learning_rate", "input_normalisation"},
    }[module]
    plan = main(module, "unused", "d", paper, ["--preset", "tuned", "--dry-run"],
                presets=presets)["plan"]
    assert plan  # the whole sequence fits the network
    # the earlier preset: the dataset's one mean and sd
    _, _, earlier, earlier_changed = _preset(module, "tuned_dataset_normalisation")
    assert earlier_changed == {
        "split_mnist": {"selected_neurons", "connections_per_task", "rewire_ratio", "epochs"},
        "split_fashion_mnist": {"epochs", "learning_rate"},
    }[module]
    assert tuned.input_normalisation == "per_pixel" != earlier.input_normalisation
    assert str(tuned.selected_neurons[0]) in capsys.readouterr().out


@pytest.mark.parametrize("module", ["split_mnist", "split_fashion_mnist"])
def test_the_tuned_rehearsal_presets_change_only_method_and_schedule(module, capsys):
    from experiments.common import main

    presets, paper, tuned, changed = _preset(module, "tuned_rehearsal")
    # the paper's network and budget: only the method, its learning rate and epochs differ
    assert changed <= {"method", "learning_rate", "epochs"} and "method" in changed
    assert tuned.method == "rehearsal" and tuned.learning_rate > paper.learning_rate
    plan = main(module, "unused", "d", paper, ["--preset", "tuned_rehearsal", "--dry-run"],
                presets=presets)["plan"]
    assert plan["method"] == "rehearsal" and plan["tasks"]
    # the preset's method is the flag's default, and a flag still overrides it
    args = ["--preset", "tuned_rehearsal", "--dry-run", "--method", "spacenet"]
    assert main(module, "unused", "d", paper, args, presets=presets)["plan"]["method"] == "spacenet"
    capsys.readouterr()

"""Tests of the analysis figures (paper Figures 4-6, capacity), their data and the report CLI.

One tiny checkpointed run (TINY, seeds 0 and 1, SpaceNet) and a Static-SparseNN one (seed 0) are
made once for the module, written as an experiment writes them (``results.json`` and
``checkpoints/seed_<s>/<task>``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, synthetic_dataset
from matplotlib.image import imread

from experiments import figures as figures_cli
from spacenet_jax.analysis import figure_data as analysis
from spacenet_jax.analysis import plots
from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.state import FREE, init_state
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.running.study import results_file
from spacenet_jax.storage.checkpoint import TaskCheckpointer, restore_task, seed_dir
from spacenet_jax.storage.results_io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BENCH = "synthetic"
# orbax's internal event loop reports a closed loop after a restore it could not finish.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
STATIC = dataclasses.replace(TINY, method="static")


def _make_run(root: Path, config: SpaceNetConfig, seeds: list[int], data) -> Path:
    """An experiment's --out folder: results.json and checkpoints after every task."""
    runs = []
    for seed in seeds:
        with TaskCheckpointer(root / "checkpoints", config, seed, benchmark=BENCH,
                              dataset="synthetic") as ck:
            _, record = run_task_sequence(
                config, data, seed, benchmark=BENCH, progress=False, on_task_end=ck
            )
        runs.append(record)
    write_json_atomic(root / "results.json", results_file(runs, BENCH, config.method))
    return root


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    return _make_run(tmp_path_factory.mktemp("spacenet"), TINY, [0, 1], data)


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory, data) -> Path:
    return _make_run(tmp_path_factory.mktemp("static"), STATIC, [0], data)


@pytest.fixture(scope="module")
def records(run_dir) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["runs"]


def _state(root: Path, config: SpaceNetConfig, step: int, seed: int = 0):
    state, _ = restore_task(seed_dir(root / "checkpoints", seed), config, seed, step)
    return jax.device_get(state)


def _pixels(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG, read back."""
    assert path.is_file() and path.stat().st_size > 0
    return imread(path).shape[:2]


def _data(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


# ---- Figure 4 ------------------------------------------------------------------------------


def test_activations_match_a_numpy_forward_pass(run_dir, data, tmp_path):
    state = _state(run_dir, TINY, 1)
    acts, labels = analysis.task_activations(
        state, TINY, data.test_images, data.test_labels, task=0, per_class=10
    )
    assert [a.shape for a in acts] == [(20, 24), (20, 20)]
    np.testing.assert_array_equal(labels, [0] * 10 + [1] * 10)
    # The same images through a plain numpy MLP.
    index = analysis.pick_class_examples(data.test_labels, (0, 1), 10)
    h = (data.test_images[index] / 255.0 - TINY.input_mean) / TINY.input_std
    for layer, a in enumerate(acts):
        h = np.maximum(h @ np.asarray(state.weights[layer]) + np.asarray(state.biases[layer]), 0)
        np.testing.assert_allclose(a, h, rtol=1e-4, atol=1e-4)
    assert all((a >= 0).all() for a in acts)

    path = plots.plot_activations(acts, labels, tmp_path / "fig4.png", figsize=(6, 3), dpi=50)
    assert _pixels(path) == (150, 300)
    saved = _data(path)
    assert saved["labels"] == labels.tolist()
    assert np.allclose(saved["activations"][1], acts[1], atol=1e-4)
    assert saved["fraction_active"][0] == pytest.approx(float((acts[0] > 0).mean()))


# ---- Figure 5 ------------------------------------------------------------------------------


def test_connections_before_and_after_training(run_dir, records, tmp_path):
    record = records[0]
    for task in (0, 1):
        previous = init_state(TINY, 0) if task == 0 else _state(run_dir, TINY, task)
        allocated = analysis.initial_allocation(previous, TINY)
        trained = _state(run_dir, TINY, task + 1)
        for layer in range(TINY.num_layers):
            conn = analysis.task_connections(allocated, trained, TINY, layer)
            assert conn["count_before"] == TINY.connections_per_task[layer]
            assert conn["count_after"] == record["connections_per_task"][task][layer]
            np.testing.assert_array_equal(
                conn["after"], np.asarray(trained.connection_owner[layer]) == task
            )
            # Every connection, before and after, joins the task's selected units.
            outside = np.ones(conn["before"].shape, bool)
            outside[np.ix_(conn["rows"], conn["cols"])] = False
            assert not (conn["before"] & outside).any() and not (conn["after"] & outside).any()
    # The hidden->hidden connections of task 2 moved during its adaptive training.
    conn = analysis.task_connections(allocated, trained, TINY, 1)
    assert not np.array_equal(conn["before"], conn["after"])

    path = plots.plot_connections(conn, tmp_path / "fig5.png", figsize=(9, 3), dpi=40)
    assert _pixels(path) == (120, 360)
    saved = _data(path)
    assert saved["count_after"] == record["connections_per_task"][1][1]
    assert len(saved["after"]) == saved["count_after"]
    assert sorted(map(tuple, saved["before"])) == sorted(zip(*np.nonzero(conn["before"]),
                                                             strict=True))


def test_static_connections_do_not_move(static_dir):
    """Static-SparseNN never rewires: the re-created allocation is exactly the trained mask."""
    allocated = analysis.initial_allocation(_state(static_dir, STATIC, 1), STATIC)
    conn = analysis.task_connections(allocated, _state(static_dir, STATIC, 2), STATIC, 0)
    np.testing.assert_array_equal(conn["before"], conn["after"])


def test_connections_refuse_states_of_other_tasks(run_dir):
    allocated = analysis.initial_allocation(_state(run_dir, TINY, 1), TINY)
    with pytest.raises(ValueError, match="pass the state after task 2"):
        analysis.task_connections(allocated, _state(run_dir, TINY, 3), TINY)


# ---- Figure 6 ------------------------------------------------------------------------------


def test_input_connection_counts(run_dir, static_dir, records, tmp_path):
    state = _state(run_dir, TINY, 3)
    counts = analysis.input_connection_counts(state, TINY, image_shape=(6, 6))
    assert counts.shape == (3, 6, 6)
    owner = np.asarray(state.connection_owner[0])
    for t in range(3):
        np.testing.assert_array_equal(counts[t].ravel(), (owner == t).sum(axis=1))
        assert counts[t].sum() == records[0]["connections_per_task"][t][0]
    # 36 inputs are a square: the default shape is the same.
    np.testing.assert_array_equal(analysis.input_connection_counts(state, TINY), counts)
    with pytest.raises(ValueError, match="does not hold"):
        analysis.input_connection_counts(state, TINY, image_shape=(4, 8))
    with pytest.raises(ValueError, match="not learned"):
        analysis.input_connection_counts(_state(run_dir, TINY, 1), TINY, tasks=[2])

    static = analysis.input_connection_counts(_state(static_dir, STATIC, 3), STATIC, [0, 2])
    maps = {"SpaceNet": counts[[0, 2]], "Static-SparseNN": static}
    path = plots.plot_input_connections(maps, [0, 2], tmp_path / "fig6.png",
                                        task_classes=TINY.task_classes, figsize=(5, 5), dpi=40)
    assert _pixels(path) == (200, 200)
    saved = _data(path)
    assert saved["maps"]["SpaceNet"] == counts[[0, 2]].tolist()
    assert saved["totals"]["Static-SparseNN"] == [60, 60]


# ---- capacity ------------------------------------------------------------------------------


def test_capacity_counts_the_masks(run_dir, records, tmp_path):
    record = records[0]
    states = [_state(run_dir, TINY, step) for step in (1, 2, 3)]
    cap = analysis.capacity_over_tasks(states, TINY)
    assert cap["tasks_learned"] == [1, 2, 3]
    for i, state in enumerate(states):
        for h, owner in enumerate(state.neuron_owner):
            owner = np.asarray(owner)
            assert cap["reserved"][i][h] == int((owner != FREE).sum())
            assert cap["reserved"][i][h] == (i + 1) * TINY.specific_neurons[h]
            assert cap["free"][i][h] + cap["shared"][i][h] == record["free_neurons"][i][h]
            assert cap["shared"][i][h] > 0
        assert cap["connections_used"][i] == [
            int((np.asarray(o) != FREE).sum()) for o in state.connection_owner
        ]
    cumulative = np.cumsum(record["connections_per_task"], axis=0).tolist()
    assert cap["connections_used"] == cumulative
    assert cap["network_positions"] == 36 * 24 + 24 * 20 + 20 * 6

    # What results.json alone gives agrees where it can.
    from_record = analysis.capacity_from_record(record, TINY)
    for key in ("tasks_learned", "reserved", "unreserved", "connections_used", "network_used"):
        assert from_record[key] == cap[key], key
    assert from_record["free"] is None and from_record["shared"] is None

    path = plots.plot_capacity(cap, tmp_path / "capacity.png", figsize=(8, 3), dpi=50)
    assert _pixels(path) == (150, 400)
    assert _data(path)["reserved"] == cap["reserved"]
    path = plots.plot_capacity(from_record, tmp_path / "capacity_record.png")
    assert _data(path)["source"] == "results.json"


def test_cnn_is_refused_for_figures_4_to_6_but_has_a_capacity(data):
    # A fresh CNN state (no connections, every map free), built from the shapes alone: quick.
    shapes = jax.eval_shape(lambda: init_state(TINY_CNN, 0))
    state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
    state = state.replace(
        connection_owner=tuple(np.full_like(o, FREE) for o in state.connection_owner),
        neuron_owner=tuple(np.full_like(o, FREE) for o in state.neuron_owner),
    )
    with pytest.raises(ConfigError, match="MLP only"):
        analysis.hidden_activations(state, TINY_CNN, data.test_images[:4])
    with pytest.raises(ConfigError, match="MLP only"):
        analysis.input_connection_counts(state, TINY_CNN)
    with pytest.raises(ConfigError, match="MLP only"):
        analysis.task_connections(state, state, TINY_CNN)
    cap = analysis.capacity(state, TINY_CNN)
    assert cap["free"] == [12, 12, 16] and cap["shared"] == [0, 0, 0]
    # Kernels for the conv layers; 2 x 2 x 12 flattened features into the dense layer.
    assert cap["positions"] == [3 * 12, 12 * 12, 2 * 2 * 12 * 16, 16 * 6]


# ---- heatmap and bars ----------------------------------------------------------------------


def test_accuracy_matrix_heatmap(records, tmp_path):
    path = plots.plot_accuracy_matrix(records, tmp_path / "acc.png", figsize=(4, 4), dpi=50)
    assert _pixels(path) == (200, 200)
    saved = _data(path)
    assert saved["seeds"] == [0, 1]
    for i in range(3):
        for j in range(3):
            cells = [r["acc_matrix"][i][j] for r in records]
            if cells[0] is None:
                assert saved["mean"][i][j] is None
            else:
                assert saved["mean"][i][j] == pytest.approx(np.mean(cells))


def test_final_task_accuracy_as_pdf_with_its_data(records, tmp_path):
    path = plots.plot_final_task_accuracy(
        records, tmp_path / "bars.pdf", format="pdf", save_data=True
    )
    assert path.read_bytes().startswith(b"%PDF")
    saved = _data(path)
    np.testing.assert_allclose(saved["final_task_acc"], [r["final_task_acc"] for r in records])
    with pytest.raises(ValueError, match="format"):
        plots.plot_accuracy_matrix(records, tmp_path / "x.svg", format="svg")


# ---- the command line ----------------------------------------------------------------------


def test_cli_end_to_end(run_dir, static_dir, data, monkeypatch, capsys):
    monkeypatch.setattr("spacenet_jax.analysis.inspect.load_checkpoint_dataset",
                        lambda name, d: data)
    assert figures_cli.main([str(run_dir), "--compare", str(static_dir), "--dpi", "50"]) == 0
    out, err = capsys.readouterr()
    printed = [Path(line) for line in out.split()]
    fig_dir = run_dir / "figures"
    for name in figures_cli.FIGURES:
        assert fig_dir / f"{name}.png" in printed, name
        assert fig_dir / f"{name}.json" in printed, name
        height, width = _pixels(fig_dir / f"{name}.png")
        assert height > 100 and width > 100
    assert run_dir / "report.md" in printed
    assert "[figures] drawing fig5_connections" in err and "skipped" not in err
    # Figure 6 puts the Static-SparseNN run beside SpaceNet.
    assert set(_data(fig_dir / "fig6_input_connections.json")["maps"]) == {
        "SpaceNet", "Static-SparseNN"
    }
    report = (run_dir / "report.md").read_text()
    for text in ("## Configuration", "| connections_per_task | `[60, 30, 8]` |",
                 "**mean ± sd**", "Backward transfer", "![", "(figures/fig4_activations.png)",
                 f"| jax | `{jax.__version__}` |", "| flax |", "| optax |", "| device |",
                 "Static-SparseNN"):
        assert text in report, text
    mean = np.mean([r["final_avg_acc"] for r in json.loads(
        (run_dir / "results.json").read_text())["runs"]])
    assert f"{100 * mean:.2f} ± " in report


def test_cli_without_checkpoints_draws_what_results_allow(run_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "results.json", bare / "results.json")
    assert figures_cli.main([str(bare), "--format", "pdf"]) == 0
    out, err = capsys.readouterr()
    for name in ("accuracy_matrix", "final_task_accuracy", "capacity"):
        pdf = bare / "figures" / f"{name}.pdf"
        assert pdf.read_bytes().startswith(b"%PDF") and str(pdf) in out
    assert _data(bare / "figures" / "capacity.pdf")["source"] == "results.json"
    for name in ("fig4_activations", "fig5_connections", "fig6_input_connections"):
        assert not (bare / "figures" / f"{name}.pdf").exists()
        assert f"skipped {name}: no checkpoint of seed 0" in err
    report = (bare / "report.md").read_text()
    assert "### Skipped figures" in report and "[capacity.pdf](figures/capacity.pdf)" in report


def test_cli_missing_results_exits_2(tmp_path):
    env_root = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "experiments.figures", str(tmp_path / "nothing")],
        cwd=ROOT, env={"PYTHONPATH": env_root, "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "results.json not found" in done.stderr
    assert not (tmp_path / "nothing" / "figures").exists()


def test_cli_unknown_seed_exits_2(run_dir, capsys):
    assert figures_cli.main([str(run_dir), "--seed", "7"]) == 2
    assert "no run of seed 7" in capsys.readouterr().err


def test_figures_are_a_table_that_takes_new_specs(run_dir, tmp_path):
    """A user's ``FigureSpec`` is drawn (or skipped with its reason) and reported beside the
    built-in ones; the run's context gives it the records and the checkpoints."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("figures", "report.md"))
    seen = {}

    def draw_masks(ctx: figures_cli.FigureContext, path: Path) -> Path:
        state = ctx.checkpoints.state(ctx.checkpoints.steps[-1])
        seen["steps"], seen["seed"] = ctx.checkpoints.steps, ctx.seed
        seen["active"] = int(sum((np.asarray(o) >= 0).sum() for o in state.connection_owner))
        path.write_bytes(b"not really a png")
        path.with_suffix(".json").write_text(json.dumps({"active": seen["active"]}))
        return path

    mine = figures_cli.FigureSpec("masks", "Masks after the last task", "Connections in use.",
                                  draw_masks)
    never = figures_cli.FigureSpec("never", "Never drawn", "", draw_masks,
                                   unavailable=lambda ctx: "needs something this run lacks")
    built_in = {s.name: s for s in figures_cli.FIGURE_SPECS}
    out = figures_cli.make_figures(copy, figures=[built_in["accuracy_matrix"], mine, never],
                                   progress=lambda line: None)
    assert list(out.figures) == ["accuracy_matrix", "masks"]
    assert out.skipped == {"never": "needs something this run lacks"}
    assert seen["steps"] == [1, 2, 3] and seen["seed"] == 0 and seen["active"] > 0
    report = out.report.read_text()
    assert "### Masks after the last task" in report and "Connections in use." in report
    assert "- `never`: needs something this run lacks" in report
    assert not (copy / "figures" / "capacity.png").exists()  # only the specs asked for

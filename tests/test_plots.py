"""Tests of spacenet_jax.analysis.plots: Figure 3 (accuracy on each task after the last task)."""

from __future__ import annotations

import struct

import pytest

from spacenet_jax.analysis.plots import plot_final_task_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(seed: int, acc: list[float], method: str = "spacenet") -> dict:
    return {
        "seed": seed,
        "method": method,
        "benchmark": "split_mnist",
        "final_task_acc": acc,
        "final_avg_acc": sum(acc) / max(len(acc), 1),
    }


def _png_size(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC, "not a PNG file"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def _open_pyplot_figures() -> int:
    from matplotlib import _pylab_helpers

    return len(_pylab_helpers.Gcf.get_all_fig_managers())


def test_one_run(tmp_path):
    before = _open_pyplot_figures()
    path = tmp_path / "figures" / "nested" / "fig3.png"  # parents are created
    out = plot_final_task_accuracy([_run(0, [0.9, 0.85, 0.99, 1.0, 0.7])], path)
    assert out == path and path.is_file()
    width, height = _png_size(path)
    assert width > 300 and height > 200
    assert _open_pyplot_figures() == before


def test_three_runs_with_title_and_str_path(tmp_path):
    before = _open_pyplot_figures()
    runs = [
        _run(0, [0.95, 0.80, 0.99]),
        _run(1, [0.93, 0.70, 0.98]),
        _run(2, [0.97, 0.75, 1.00]),
    ]
    out = plot_final_task_accuracy(runs, str(tmp_path / "fig3.png"), title="three seeds")
    assert out == tmp_path / "fig3.png"
    assert out.read_bytes().startswith(b"\x89PNG")
    assert _open_pyplot_figures() == before


def test_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    plot_final_task_accuracy([_run(0, [0.5]), _run(1, [0.6])], path)
    assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "runs, match",
    [
        ([], "runs is empty"),
        ([_run(0, [0.9, 0.8]), _run(1, [0.9, 0.8, 0.7])], "different numbers of tasks"),
        ([{"seed": 0}], "'final_task_acc'"),
        ([_run(0, [])], "non-empty list"),
        ([_run(0, [90.0, 80.0])], r"fractions in \[0, 1\]"),
        ([_run(0, [0.9, float("nan")])], r"fractions in \[0, 1\]"),
        ([_run(0, [0.9]), _run(1, [0.8], method="finetune")], "mix methods"),
    ],
)
def test_bad_input(tmp_path, runs, match):
    path = tmp_path / "fig.png"
    with pytest.raises(ValueError, match=match):
        plot_final_task_accuracy(runs, path)
    assert not path.exists()


def test_different_task_counts_message_names_the_seeds(tmp_path):
    runs = [_run(3, [0.9, 0.8]), _run(7, [0.9, 0.8, 0.7])]
    with pytest.raises(ValueError, match="seed 3: 2, seed 7: 3"):
        plot_final_task_accuracy(runs, tmp_path / "fig.png")


def test_a_single_run_record_instead_of_a_list(tmp_path):
    with pytest.raises(ValueError, match="list of run records"):
        plot_final_task_accuracy(_run(0, [0.9]), tmp_path / "fig.png")


# ---- Figure 3 across methods ---------------------------------------------------------------


def _methods_data(path) -> dict:
    import json

    return json.loads(path.with_suffix(".json").read_text())


def test_methods_side_by_side_means_sds_and_averages(tmp_path):
    from spacenet_jax.analysis.plots import plot_methods_final_task_accuracy

    methods = {
        "SpaceNet": [_run(0, [0.9, 0.5, 0.7]), _run(1, [0.7, 0.3, 0.5])],
        "fine-tuning": [_run(0, [0.0, 0.0, 1.0], method="finetune")],
    }
    path = plot_methods_final_task_accuracy(methods, tmp_path / "fig3.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    data = _methods_data(path)
    assert data["groups"] == ["Task 1", "Task 2", "Task 3", "Average"]
    assert data["methods"] == ["SpaceNet", "fine-tuning"]
    assert data["seeds"] == {"SpaceNet": [0, 1], "fine-tuning": [0]}
    # means over seeds per task, then the mean of each seed's own average
    assert data["mean"][0] == pytest.approx([0.8, 0.4, 0.6, 0.6])
    assert data["mean"][1] == pytest.approx([0.0, 0.0, 1.0, 1 / 3])
    assert data["std"][0] == pytest.approx([2 ** 0.5 / 10] * 4)  # sd of (0.9, 0.7) etc.
    assert data["std"][1] == pytest.approx([0.0] * 4)  # one seed: no spread
    assert data["per_seed"]["SpaceNet"][1] == pytest.approx([0.7, 0.3, 0.5, 0.5])


@pytest.mark.parametrize(
    "methods, match",
    [
        ({}, "at least one label"),
        ({"a": [_run(0, [0.9, 0.8])], "b": [_run(0, [0.9, 0.8, 0.7])]},
         "different numbers of tasks.*a: 2, b: 3"),
        ({"a": [_run(0, [0.9]), _run(1, [0.8], method="static")]}, "a: runs mix methods"),
        ({"a": [_run(0, [90.0])]}, r"a: .*fractions in \[0, 1\]"),
        ({"a": [_run(0, [0.9])], "b": [{**_run(0, [0.9]), "benchmark": "split_cifar10"}]},
         "different benchmarks"),
    ],
)
def test_methods_bad_input(tmp_path, methods, match):
    from spacenet_jax.analysis.plots import plot_methods_final_task_accuracy

    path = tmp_path / "fig.png"
    with pytest.raises(ValueError, match=match):
        plot_methods_final_task_accuracy(methods, path)
    assert not path.exists()

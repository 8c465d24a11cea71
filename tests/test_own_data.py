"""``python -m experiments.own_data``: SpaceNet on a user's .npz or on a tfds dataset by name,
with their own class order (issue 14, item 12). Tiny data, one epoch, offline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from experiments import own_data
from experiments.own_data import (
    default_tasks,
    derived_sparsity,
    parse_task_classes,
    pixel_statistics,
    select_classes,
)
from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.core.config import ConfigError
from spacenet_jax.storage.data import ImageDataset


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPACENET_DATA_DIR", raising=False)


def _write_npz(path, *, classes=6, side=6, labels=None, dtype=np.uint8, drop=()):
    """Noisy class prototypes as (N, side, side) images; ``labels`` renames the classes."""
    rng = np.random.default_rng(0)
    protos = rng.uniform(0, 255, (classes, side, side))
    names = np.arange(classes) if labels is None else np.asarray(labels)
    arrays = {}
    for split, per_class in (("train", 40), ("test", 10)):
        y = np.repeat(np.arange(classes), per_class)
        x = np.clip(protos[y] + rng.normal(0, 40, (len(y), side, side)), 0, 255)
        arrays[f"{split}_images"] = x.astype(np.uint8).astype(dtype)
        arrays[f"{split}_labels"] = names[y]
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def test_npz_runs_with_a_seeded_class_order(tmp_path):
    npz = _write_npz(tmp_path / "shapes.npz")
    out = tmp_path / "out"
    payload = own_data.run(["--npz", str(npz), "--epochs", "1", "--seed", "0",
                            "--class-order-seed", "1", "--quiet", "--out", str(out)])
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["seed"] == payload["runs"][0]["seed"] == 0
    assert run["benchmark"] == "own_data:npz:shapes"
    config = run["config"]
    expected = default_tasks(range(6), 2, order_seed=1)
    assert expected != ((0, 1), (2, 3), (4, 5))  # the seed did shuffle the classes
    assert config["task_classes"] == [list(t) for t in expected]
    assert config["layer_sizes"] == [36, 400, 400, 6]
    assert config["connections_per_task"] == [round(10000 / (784 * 80) * 36 * 80), 1640, 80]
    assert config["selected_neurons"] == [80, 80] and config["specific_neurons"] == [40, 40]
    images = np.load(npz)["train_images"]
    assert config["input_mean"] == pytest.approx(images.mean() / 255, abs=1e-4)
    assert config["input_std"] == pytest.approx((images / 255).std(), abs=1e-4)
    assert len(run["final_task_acc"]) == 3 and run["tasks_learned"] == 3


def test_npz_task_classes_pick_and_renumber_classes(tmp_path, capsys):
    npz = _write_npz(tmp_path / "letters.npz", labels=[10, 20, 30, 40, 50, 60])
    payload = own_data.run(["--npz", str(npz), "--task-classes", "40,20/10,60",
                            "--hidden", "40,40", "--dry-run"])
    err = capsys.readouterr().err
    assert "letters: 160 training and 40 test images of 6x6x1, 4 classes in 2 tasks: " \
           "{40,20} {10,60}" in err
    assert "10->0, 20->1, 40->2, 60->3" in err
    assert "network 36-40-40-4, connections per task 46,16,8, selected neurons 8,8, " \
           "specific neurons 4,4" in err
    assert "plan" in payload  # --dry-run: the plan, no training


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task-classes", "0,1/2,3", "--class-order-seed", "3"], "give one of the two"),
        (["--task-classes", "0,1/1,2"], r"classes \[1\] in more than one task"),
        (["--task-classes", "0,1/7"], r"classes \[7\].*its classes: \[0, 1, 2, 3, 4, 5\]"),
        (["--data-dir", "somewhere"], "--data-dir is for --tfds"),
        (["--task-classes", "0,x"], "bad --task-classes"),
        (["--classes-per-task", "7"], "6 classes, fewer than --classes-per-task 7"),
    ],
)
def test_npz_refusals(tmp_path, capsys, argv, message):
    npz = _write_npz(tmp_path / "d.npz")
    with pytest.raises(SystemExit) as info:
        own_data.run(["--npz", str(npz), "--quiet", *argv])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (dict(dtype=np.float32), r"float32 of shape \(240, 6, 6\).*\(x \* 255\)\.round\(\)"),
        (dict(drop=("test_labels",)), "lacks test_labels"),
    ],
)
def test_npz_data_refusals(tmp_path, capsys, make, message):
    npz = _write_npz(tmp_path / "d.npz", **make)
    with pytest.raises(SystemExit) as info:
        own_data.run(["--npz", str(npz), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --npz") and re.search(message, err)


def test_missing_npz_and_missing_tfds_data_dir(tmp_path, capsys):
    with pytest.raises(SystemExit):
        own_data.run(["--npz", str(tmp_path / "none.npz"), "--quiet"])
    assert "none.npz: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        own_data.run(["--tfds", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--quiet"])
    assert f"the data folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_tfds_dataset_by_name_on_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # tfds's mock makes download_and_prepare a no-op and serves random examples; the network
    # check is what a real, reachable network would say.
    monkeypatch.setattr(own_data, "require_network", lambda *args, **kwargs: None)
    with tfds.testing.mock_data(num_examples=200):
        payload = own_data.run(["--tfds", "mnist", "--task-classes", "0,1/2,3", "--epochs", "1",
                                "--batch-size", "32", "--quiet"])
    (run,) = payload["runs"]
    assert run["benchmark"] == "own_data:tfds:mnist"
    assert run["config"]["layer_sizes"] == (784, 400, 400, 4)
    assert run["config"]["task_classes"] == ((0, 1), (2, 3))
    assert run["config"]["connections_per_task"] == SPLIT_MNIST.connections_per_task
    assert run["tasks_learned"] == 2


# ---------------------------------------------------------------------------------------------
# the pieces


def test_derived_sparsity_of_split_mnist_is_split_mnist():
    assert derived_sparsity(784, (400, 400), 5, 2, 0.2) == (
        SPLIT_MNIST.connections_per_task, SPLIT_MNIST.selected_neurons,
        SPLIT_MNIST.specific_neurons,
    )
    # 50 tasks (CIFAR-100 in pairs) reserve fewer neurons so that the last task finds 80 free.
    connections, selected, specific = derived_sparsity(3072, (400, 400), 50, 2, 0.2)
    assert selected == (80, 80) and specific == (6, 6) and 400 - 49 * 6 >= 80
    assert connections == (round(10000 / (784 * 80) * 3072 * 80), 1640, 80)


def test_parse_task_classes_and_default_tasks():
    assert parse_task_classes("0,1/2,3/4,5") == ((0, 1), (2, 3), (4, 5))
    assert parse_task_classes(" 7 / 3,9 ") == ((7,), (3, 9))
    assert default_tasks([4, 0, 2, 1, 3]) == ((0, 1), (2, 3, 4))  # the odd class joins
    assert default_tasks(range(6), 3) == ((0, 1, 2), (3, 4, 5))
    shuffled = default_tasks(range(10), 2, order_seed=5)
    assert sorted(c for t in shuffled for c in t) == list(range(10))
    assert shuffled == default_tasks(range(10), 2, order_seed=5) != default_tasks(range(10))
    with pytest.raises(ConfigError, match="at least 1"):
        default_tasks(range(4), 0)


def test_select_classes_keeps_and_renumbers():
    images = np.arange(8, dtype=np.uint8)[:, None].repeat(3, axis=1)
    labels = np.array([5, 9, 2, 5, 7, 9, 2, 7], np.int32)
    data = ImageDataset("d", images, labels, images[:4], labels[:4], 10)
    with pytest.raises(ConfigError, match=r"classes \[7\] that d's test set does not have"):
        select_classes(data, ((9, 2), (7,)))
    picked, tasks = select_classes(data, ((9, 2), (5,)))
    assert tasks == ((2, 0), (1,)) and picked.num_classes == 3
    assert picked.train_labels.tolist() == [1, 2, 0, 1, 2, 0]
    assert picked.train_images[:, 0].tolist() == [0, 1, 2, 3, 5, 6]


def test_pixel_statistics_match_numpy():
    images = np.random.default_rng(1).integers(0, 256, (1000, 50), dtype=np.uint8)
    mean, std = pixel_statistics(images, rows=64)
    assert mean == pytest.approx(images.mean() / 255) and std == pytest.approx(
        (images / 255).std())

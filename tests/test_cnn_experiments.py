"""The CNN experiments' command lines: flags, the combined CIFAR-10/100 dataset, the PNG."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.cifar10_100 import CIFAR10_100, TASK_CLASSES, combine_cifar10_100
from experiments.cnn import add_cnn_arguments, cnn_config_from_args
from experiments.common import main
from experiments.split_cifar10 import PRESETS, SPLIT_CIFAR10
from spacenet_jax.storage.data import ImageDataset

ROOT = Path(__file__).resolve().parents[1]


def _cifar_like(num_classes: int, per_class: int, seed: int = 0) -> ImageDataset:
    """Learnable 32x32x3 uint8 images: a per-class colour tint plus noise."""
    rng = np.random.default_rng(seed)
    tints = rng.uniform(40, 215, size=(num_classes, 3))

    def draw(n):
        labels = np.repeat(np.arange(num_classes), n).astype(np.int32)
        pixels = tints[labels][:, None, None, :] + rng.normal(0, 30, (len(labels), 32, 32, 3))
        return np.clip(pixels, 0, 255).astype(np.uint8).reshape(len(labels), -1), labels

    return ImageDataset(
        f"fake{num_classes}", *draw(per_class), *draw(per_class // 2), num_classes,
        image_shape=(32, 32, 3),
    )


def test_cifar10_100_tasks_and_combined_labels():
    assert TASK_CLASSES[0] == tuple(range(10)) and TASK_CLASSES[-1] == tuple(range(50, 60))
    assert CIFAR10_100.num_classes == 60 and CIFAR10_100.num_tasks == 6
    both = combine_cifar10_100(_cifar_like(10, 4), _cifar_like(100, 2))
    assert both.num_classes == 60 and both.image_shape == (32, 32, 3)
    # CIFAR-10's 40 images, then CIFAR-100's classes 0-49 (100 images) as labels 10-59.
    assert both.train_images.shape == (40 + 100, 3072)
    assert sorted(set(both.train_labels.tolist())) == list(range(60))
    with pytest.raises(ValueError, match="expected CIFAR-10"):
        combine_cifar10_100(_cifar_like(100, 2), _cifar_like(10, 2))


def test_split_cifar10_cli_on_fake_images_writes_results_and_the_figure(tmp_path, capsys):
    out = tmp_path / "run"
    payload = main(
        "split_cifar10", "cifar10", "test", SPLIT_CIFAR10,
        ["--seeds", "0,1", "--epochs", "1", "--width", "16,16,16,16", "--dense", "32",
         "--weights-per-task", "0.06", "--specific-neurons", "1,1,1,1,4", "--out", str(out),
         "--quiet"],
        add_arguments=add_cnn_arguments, make_config=cnn_config_from_args,
        load=lambda data_dir, quiet: _cifar_like(10, 40),
    )
    saved = json.loads((out / "results.json").read_text())
    runs = saved["runs"]
    assert [r["seed"] for r in runs] == [0, 1] == [r["seed"] for r in payload["runs"]]
    config = runs[0]["config"]
    assert config["layer_sizes"] == [3, 16, 16, 16, 16, 32, 10] and config["conv_layers"] == 4
    assert config["selected_neurons"] == [16, 16, 16, 16, 32]
    assert runs[0]["connections_per_task"][0][0] == round(0.06 * 3 * 16)  # kernels
    assert saved["summary"]["final_avg_acc"]["n"] == 2
    png = out / "final_task_accuracy.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "final_task_accuracy.png" in capsys.readouterr().out


@pytest.mark.slow
def test_the_per_task_preset_sets_the_inference_rule_and_flags_still_override_it(tmp_path):
    def run(out, *flags):
        return main(
            "split_cifar10", "cifar10", "test", SPLIT_CIFAR10,
            ["--preset", "per_task", "--epochs", "1", "--width", "16,16,16,16", "--dense", "32",
             "--weights-per-task", "0.06", "--specific-neurons", "1,1,1,1,4", "--out", str(out),
             "--quiet", *flags],
            add_arguments=add_cnn_arguments, make_config=cnn_config_from_args,
            load=lambda data_dir, quiet: _cifar_like(10, 16), presets=PRESETS,
        )["runs"][0]["config"]

    config = run(tmp_path / "preset")
    assert (config["inference"], config["task_scores"], config["logit_weight"],
            config["negatives"]) == ("per_task", "mahalanobis_relative", 0.1, "rotations")
    assert config["learning_rate"] == SPLIT_CIFAR10.learning_rate
    config = run(tmp_path / "override", "--negatives", "none", "--logit-weight", "0.5")
    assert (config["inference"], config["negatives"], config["logit_weight"]) == (
        "per_task", "none", 0.5)
    paper, preset = PRESETS["paper"], PRESETS["per_task"]
    assert {f.name for f in dataclasses.fields(paper)
            if getattr(paper, f.name) != getattr(preset, f.name)} == {
        "inference", "task_scores", "logit_weight", "negatives"}


def test_a_dataset_that_does_not_fit_the_network_is_refused():
    from spacenet_jax.core.config import ConfigError
    from spacenet_jax.running.runner import run_task_sequence

    mnist_like = ImageDataset("mnist", np.zeros((4, 784), np.uint8), np.arange(4) % 2,
                              np.zeros((2, 784), np.uint8), np.arange(2), 10)
    with pytest.raises(ConfigError, match=r"784 values each.*takes 3072"):
        run_task_sequence(SPLIT_CIFAR10, mnist_like, seed=0, progress=False)
    few = _cifar_like(4, 2)
    with pytest.raises(ConfigError, match=r"classes \[4, 5, 6, 7, 8, 9\]"):
        run_task_sequence(SPLIT_CIFAR10, few, seed=0, progress=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "1,2,3"], "bad --width"),
        (["--weights-per-task", "1.5"], "weights-per-task"),
        (["--specific-neurons", "20,20,5,6,30"], "specific"),
    ],
)
def test_cnn_flags_refuse_bad_values(args, message, tmp_path):
    env = {**os.environ, "SPACENET_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "experiments.split_cifar10", *args, "--quiet"], cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_cifar10_100_without_cifar100_files_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    (data / "cifar10").mkdir(parents=True)
    env = {**os.environ, "SPACENET_CACHE_DIR": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "experiments.cifar10_100", "--data-dir", str(data), "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "cifar" in result.stderr.lower()
    assert "Traceback" not in result.stderr

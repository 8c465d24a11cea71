"""The validation split (``--validation``): held out of training, evaluated beside the test set."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, synthetic_dataset

from spacenet_jax.running.runner import run_task_sequence, run_task_sequences
from spacenet_jax.storage.data import DatasetError, hold_out_validation

TESTS = Path(__file__).resolve().parent
VALIDATED = dataclasses.replace(TINY, validation_per_class=10, validation_seed=4, epochs=2)


def test_hold_out_takes_per_class_examples_once_and_keeps_the_rest():
    data = synthetic_dataset()
    split = hold_out_validation(data, 10, seed=4)
    assert np.bincount(split.validation_labels).tolist() == [10] * 6
    assert np.bincount(split.train_labels).tolist() == [60] * 6
    # Together they are the original training set, each example exactly once.
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert len(split.train_images) + len(split.validation_images) == len(data.train_images)
    assert rows(split.train_images) | rows(split.validation_images) == rows(data.train_images)
    assert not rows(split.train_images) & rows(split.validation_images)
    # The test set is untouched; the draw depends on the validation seed only.
    np.testing.assert_array_equal(split.test_images, data.test_images)
    again = hold_out_validation(data, 10, seed=4)
    np.testing.assert_array_equal(again.validation_images, split.validation_images)
    other = hold_out_validation(data, 10, seed=5)
    assert rows(other.validation_images) != rows(split.validation_images)
    assert hold_out_validation(data, 0, seed=4) is data


def test_impossible_hold_out_is_refused_with_the_range():
    data = synthetic_dataset(train_per_class=12)
    with pytest.raises(DatasetError, match="between 1 and 11"):
        hold_out_validation(data, 12)
    with pytest.raises(DatasetError, match="already has a validation set"):
        hold_out_validation(hold_out_validation(data, 2), 2)


def test_held_out_examples_are_not_trained_on_and_are_evaluated_like_the_test_set():
    data = synthetic_dataset()
    _, record = run_task_sequence(VALIDATED, data, seed=1, progress=False)
    split = hold_out_validation(data, 10, seed=4)
    # The same run on the reduced training set, scored on the held-out examples as its test
    # set: the training is identical (so nothing held out was trained on) and the validation
    # matrices are that run's test matrices.
    reduced = dataclasses.replace(
        split, test_images=split.validation_images, test_labels=split.validation_labels,
        validation_images=None, validation_labels=None,
    )
    plain = dataclasses.replace(VALIDATED, validation_per_class=0)
    _, on_held_out = run_task_sequence(plain, reduced, seed=1, progress=False)
    validation = record["validation"]
    assert validation["acc_matrix"] == on_held_out["acc_matrix"]
    assert validation["task_il_acc_matrix"] == on_held_out["task_il_acc_matrix"]
    assert validation["final_avg_acc"] == pytest.approx(on_held_out["final_avg_acc"])
    # And the test matrices are those of the reduced run on the real test set.
    on_test = dataclasses.replace(split, validation_images=None, validation_labels=None)
    _, tested = run_task_sequence(plain, on_test, seed=1, progress=False)
    assert record["acc_matrix"] == tested["acc_matrix"]
    assert "validation" not in tested


def test_vmapped_seeds_give_each_seeds_validation_record():
    data = synthetic_dataset()
    batched = run_task_sequences(VALIDATED, data, [1, 2], progress=False)
    for seed, (_, record) in zip([1, 2], batched, strict=True):
        _, single = run_task_sequence(VALIDATED, data, seed=seed, progress=False)
        assert record["validation"] == single["validation"]


def test_cli_writes_the_validation_summary_and_refuses_too_many(tmp_path):
    common = [sys.executable, str(TESTS / "synthetic_cli.py"), "--epochs", "1", "--quiet"]
    done = subprocess.run([*common, "--validation", "5", "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["runs"][0]["config"]["validation_per_class"] == 5
    assert 0 <= results["summary"]["validation"]["final_avg_acc"]["mean"] <= 1
    assert "validation set: final average" in done.stdout
    refused = subprocess.run([*common, "--validation", "1000", "--out", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    assert refused.returncode == 2
    assert "cannot hold out 1000 validation examples per class" in refused.stderr
    assert not (tmp_path / "b" / "results.json").exists()


def test_progress_shows_the_validation_split_when_there_is_one(capsys):
    """Settings are chosen on validation: with a validation split the per-task progress line
    shows its accuracy, not the test set's (which stays in the record)."""
    data = synthetic_dataset()
    _, record = run_task_sequence(VALIDATED, data, seed=1, progress=True)
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if "done in" in line][-1]
    assert "validation accuracy (%) per task" in last and "test accuracy" not in err
    mean = np.mean(record["validation"]["acc_matrix"][-1])
    assert f"| mean {100 * mean:.1f} |" in last
    run_task_sequence(TINY, data, seed=1, progress=True)
    assert "test accuracy (%) per task" in capsys.readouterr().err

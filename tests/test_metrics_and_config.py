"""Metrics on hand-made accuracy matrices, and refusals of impossible configurations."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.common import parse_seeds
from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.running import metrics

ACC = [
    [0.9, None, None],
    [0.8, 0.7, None],
    [0.6, 0.75, 0.5],
]


def test_final_and_average_accuracy():
    assert metrics.final_accuracies(ACC) == [0.6, 0.75, 0.5]
    assert metrics.average_accuracy(ACC) == pytest.approx((0.6 + 0.75 + 0.5) / 3)


def test_forgetting_uses_best_accuracy_ever():
    # task 0: best 0.9, final 0.6 -> 0.3; task 1: best 0.75 (after task 2!), final 0.75 -> 0.
    assert metrics.forgetting(ACC) == pytest.approx([0.3, 0.0])
    assert metrics.average_forgetting(ACC) == pytest.approx(0.15)


def test_backward_transfer():
    # (0.6 - 0.9) and (0.75 - 0.7)
    assert metrics.backward_transfer(ACC) == pytest.approx((-0.3 + 0.05) / 2)


def test_complete_forgetting_of_a_finetuned_network():
    # Each task learned perfectly, then entirely lost by the next one (class-IL fine-tuning).
    acc = [[1.0 if j == i else (0.0 if j < i else None) for j in range(4)] for i in range(4)]
    assert metrics.final_accuracies(acc) == [0.0, 0.0, 0.0, 1.0]
    assert metrics.average_accuracy(acc) == 0.25
    assert metrics.forgetting(acc) == [1.0, 1.0, 1.0]
    assert metrics.average_forgetting(acc) == 1.0
    assert metrics.backward_transfer(acc) == -1.0


def test_perfect_retention_and_positive_backward_transfer():
    acc = [[0.8, None], [0.9, 0.7]]  # task 0 improved after task 1 was learned
    assert metrics.forgetting(acc) == [0.0]
    assert metrics.backward_transfer(acc) == pytest.approx(0.1)
    assert metrics.average_accuracy(acc) == pytest.approx(0.8)


def test_single_task_metrics_are_zero():
    assert metrics.average_forgetting([[0.8]]) == 0.0
    assert metrics.backward_transfer([[0.8]]) == 0.0


def test_non_square_matrix_is_refused():
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy([[0.1, 0.2]])


def test_summarize():
    s = metrics.summarize([0.6, 0.8])
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert s["sem"] == pytest.approx(0.1, rel=1e-5)


def test_paper_defaults():
    c = SpaceNetConfig()
    assert c.layer_sizes == (784, 400, 400, 10)
    assert c.connections_per_task == (10000, 1640, 80)
    assert c.rewire_counts == (2000, 328, 0)
    assert c.rewired_layers == (0, 1)
    assert hash(c) == hash(SpaceNetConfig())  # usable as a jit static argument


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"selected_neurons": (80,)}, "one count per hidden layer"),
        ({"connections_per_task": (10, 10)}, "one count per matrix"),
        ({"specific_neurons": (90, 40)}, "specific_neurons=90"),
        ({"selected_neurons": (100, 80), "specific_neurons": (80, 40)}, "only 4 tasks fit"),
        ({"selected_neurons": (500, 80)}, "selected_neurons=500"),
        ({"connections_per_task": (10000, 6000, 80)}, "do not fit"),
        ({"connections_per_task": (10000, 1640, 200)}, "do not fit"),
        ({"rewire_ratio": 1.5}, "rewire_ratio"),
        ({"rewire_ratio": -0.1}, "rewire_ratio"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"task_classes": ((0, 1), (1, 2))}, "must not overlap"),
        ({"task_classes": ((0, 1), (10, 11))}, "names class 10"),
        ({"task_classes": ((0, 1), ())}, "no classes"),
        ({"epochs": 0}, "positive"),
        ({"task_classes": ((0, 1), (2, 3))}, r"no task names classes \[4, 5, 6, 7, 8, 9\]"),
        ({"rewire_ratio": 0.0}, "use method 'static'"),
        ({"rewire_ratio": 0.0, "method": "rehearsal"}, "use method 'static'"),
    ],
)
def test_impossible_configurations_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(SpaceNetConfig(), **changes)


def test_static_and_dense_methods_accept_a_zero_rewire_ratio():
    for method in ("static", "finetune", "joint"):
        assert dataclasses.replace(SpaceNetConfig(), rewire_ratio=0.0, method=method)


def test_parse_seeds():
    assert parse_seeds("3") == [3]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("0-2,9") == [0, 1, 2, 9]
    for bad in ("x", "4-2", "-1", ""):
        with pytest.raises(Exception, match="seed"):
            parse_seeds(bad)

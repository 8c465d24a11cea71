"""The CNN's per-task budget rules (``--budget``): per layer, or a global ERK budget with caps.

The expected counts are written out as numbers computed by hand from the formulas in
``experiments.cnn.layer_budget`` / ``task_cap`` (derivations in the comments), not by the code
under test.
"""

from __future__ import annotations

import argparse
import math

import pytest

from experiments.cifar10_100 import TASK_CLASSES as CIFAR10_100_TASKS
from experiments.cnn import (
    BUDGETS,
    DEFAULT_BUDGET,
    WIDTHS,
    add_cnn_arguments,
    cnn_config,
    layer_budget,
    task_cap,
)
from experiments.common import main
from spacenet_jax.core.config import selected_fan
from spacenet_jax.running.capacity import capacity_plan

SPLIT = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
#: (name, task classes, outputs) of the two CNN benchmarks.
BENCHMARKS = {"split_cifar10": (SPLIT, 10), "cifar10_100": (CIFAR10_100_TASKS, 60)}

# The paper's CNN: weight shapes of the hidden layers (HWIO for conv; 6*6*64 = 2304 flattened
# features into the dense layer) and their weights: 864 + 9216 + 18432 + 36864 + 1179648.
PAPER_SHAPES = ((3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64), (3, 3, 64, 64), (2304, 512))
PAPER_HIDDEN_WEIGHTS = 1245024
WIDE_HIDDEN_WEIGHTS = 1728 + 36864 + 73728 + 147456 + 4608 * 512  # 2619072

# "layer": round(0.12 * positions) per hidden layer (positions 96, 1024, 2048, 4096, 2304*512;
# wide 192, 4096, 8192, 16384, 4608*512), and round(0.12 * 512 * classes of a task) at the
# output: 122.88 -> 123 (2 classes), 614.4 -> 614 (10 classes).
LAYER = {
    ("split_cifar10", "paper"): (12, 123, 246, 492, 141558, 123),
    ("split_cifar10", "wide"): (23, 492, 983, 1966, 283116, 123),
    ("cifar10_100", "paper"): (12, 123, 246, 492, 141558, 614),
    ("cifar10_100", "wide"): (23, 492, 983, 1966, 283116, 614),
}

# "erk". Caps: the largest c with T*c + round(0.2*c) <= B, B the positions between the last
# task's selected units (every free map: 32 - 2(T-1), 32 - 2(T-1), 64 - 5(T-1), 64 - 6(T-1),
# 512 - 30(T-1); the dense inputs are 36 features per map).
#   split, T=5: B = 3*24=72 -> 13 (65+3=68; 14: 70+3=73), 24*24=576 -> 110 (550+22),
#     24*44=1056 -> 203 (1015+41), 44*40=1760 -> 338 (1690+68), 40*36*392=564480 -> 108553
#     (542765+21711=564476). ERK shares eps*sum(shape) with eps = 0.12*1245024/3163 = 47.23
#     (sum(shape): 41, 70, 102, 134, 2816): 1937, 3306, 4818, 6329, 133012 weights, all above
#     the caps (117, 990, 1827, 3042, 108553 weights): every layer gets its cap.
#   cifar10_100, T=6: B = 3*22=66 -> 10 (60+2; 11: 66+2=68), 22*22=484 -> 78 (468+16),
#     22*39=858 -> 138 (828+28), 39*34=1326 -> 213 (1278+43), 34*36*362=443088 -> 71465
#     (428790+14293=443083); all capped again.
#   wide split, T=5: B = 3*56=168 -> 32, 56*56=3136 -> 603, 56*108=6048 -> 1163,
#     108*104=11232 -> 2160, 104*36*392=1467648 -> 282240. Budget 0.12*2619072 = 314288.64,
#     sum(shape): 73, 134, 198, 262, 5120 (total 5787). eps = 54.31: conv1 (3965 > 288),
#     conv2 (7278 > 5427), conv3 (10753 > 10467) capped; then eps = 298106.64/5382 = 55.39:
#     dense (283595 > 282240) capped; conv4 gets the rest, 15866.64 weights = 1762.96 -> 1763.
#   wide cifar10_100, T=6: B = 162 -> 26, 2916 -> 470, 54*103=5562 -> 897,
#     103*98=10094 -> 1628, 98*36*362=1277136 -> 205989; conv2, conv3 and dense capped at
#     eps = 54.31, then conv4 (rest 95762.64 > 14652): every layer capped.
ERK = {
    ("split_cifar10", "paper"): (13, 110, 203, 338, 108553, 123),
    ("split_cifar10", "wide"): (32, 603, 1163, 1763, 282240, 123),
    ("cifar10_100", "paper"): (10, 78, 138, 213, 71465, 614),
    ("cifar10_100", "wide"): (26, 470, 897, 1628, 205989, 614),
}
CASES = [(b, w) for b in BENCHMARKS for w in WIDTHS]


def _config(benchmark: str, width: str, budget: str):
    classes, outputs = BENCHMARKS[benchmark]
    return cnn_config(classes, outputs, maps=WIDTHS[width], budget=budget)


def _hidden_weights(counts) -> int:
    return sum(c * (9 if layer < 4 else 1) for layer, c in enumerate(counts[:5]))


@pytest.mark.parametrize(("benchmark", "width"), CASES)
def test_counts_of_both_rules(benchmark, width):
    assert _config(benchmark, width, "layer").connections_per_task == LAYER[benchmark, width]
    assert _config(benchmark, width, "erk").connections_per_task == ERK[benchmark, width]


def test_layer_is_the_default_and_the_rule_is_not_a_config_field():
    assert DEFAULT_BUDGET == "layer" and set(BUDGETS) == {"layer", "erk"}
    config = cnn_config(SPLIT, 10)
    assert config.connections_per_task == LAYER["split_cifar10", "paper"]
    assert "budget" not in config.to_dict()


def test_the_helper_alone():
    # "layer" is round(fraction * positions), no cap.
    assert layer_budget(PAPER_SHAPES, "layer", 0.12, 5, 0.2) == (12, 123, 246, 492, 141558)
    # "erk" without last_blocks caps by the whole layer: 96 -> 18 (90+4 <= 96; 19: 95+4),
    # 1024 -> 197 (985+39 = 1024), 2048 -> 393 (1965+79), 4096 -> 787 (3935+157).
    # eps = 47.23 caps conv1-3 (1937 > 162, 3306 > 1773, 4818 > 3537 weights), not conv4
    # (6329 < 7083); then eps = (149402.88 - 5472) / (134 + 2816) = 48.79: conv4 6537.9
    # weights -> 726 kernels, the dense layer 137393.0.
    assert layer_budget(PAPER_SHAPES, "erk", 0.12, 5, 0.2) == (18, 197, 393, 726, 137393)
    with pytest.raises(ValueError, match="unknown budget rule"):
        layer_budget(PAPER_SHAPES, "global", 0.12, 5, 0.2)


def test_task_cap_is_the_largest_count_that_fits_the_last_block():
    assert [task_cap(b, 5, 0.2) for b in (72, 576, 1056, 1760, 564480)] == [
        13, 110, 203, 338, 108553
    ]
    assert task_cap(3, 5, 0.2) == 1  # at least one (validation then refuses what cannot fit)
    for block in range(1, 400):
        for tasks in (1, 2, 5, 6):
            for r in (0.0, 0.2, 0.25, 0.5):
                c = task_cap(block, tasks, r)
                assert c == 1 or tasks * c + round(r * c) <= block
                assert tasks * (c + 1) + round(r * (c + 1)) > block


def test_erk_spends_the_budget_when_no_cap_binds():
    fraction = 0.005
    budget = fraction * PAPER_HIDDEN_WEIGHTS  # 6225.12 weights
    eps = budget / (41 + 70 + 102 + 134 + 2816)  # 1.968: densities eps * sum(shape) / W
    expected = tuple(
        round(eps * sum(shape) / math.prod(shape[:-2])) for shape in PAPER_SHAPES
    )
    assert expected == (9, 15, 22, 29, 5542)  # far below the caps (13, 110, 203, 338, 108553)
    config = cnn_config(SPLIT, 10, weights_per_task=fraction, budget="erk")
    assert config.connections_per_task[:5] == expected
    # Rounding kernels moves each conv layer by at most 4.5 weights, the dense one by 0.5.
    assert abs(_hidden_weights(expected) - budget) <= 4 * 4.5 + 0.5
    # ERK densities: the small conv1 is the densest, the dense layer the sparsest.
    densities = [c / (s[-2] * s[-1]) for c, s in zip(expected, PAPER_SHAPES, strict=True)]
    assert densities == sorted(densities, reverse=True)


def test_erk_moves_what_capped_layers_cannot_take_to_the_others():
    # The wide split CIFAR-10 network: four layers capped, conv4 takes the rest of the budget.
    counts = ERK["split_cifar10", "wide"]
    assert abs(_hidden_weights(counts) - 0.12 * WIDE_HIDDEN_WEIGHTS) <= 4.5
    # The paper's CNN: every layer capped, the budget cannot be spent.
    assert _hidden_weights(ERK["split_cifar10", "paper"]) == 114529 < 0.12 * PAPER_HIDDEN_WEIGHTS


@pytest.mark.parametrize(("benchmark", "width"), CASES)
@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_task_fits(benchmark, width, budget):
    config = _config(benchmark, width, budget)  # SpaceNetConfig validation passes
    plan = capacity_plan(config)
    assert all(layer["fits"] for task in plan["tasks"] for layer in task["layers"])
    if budget == "erk":  # the caps: fits even if earlier tasks' positions fill the last block
        last, tasks = config.num_tasks - 1, config.num_tasks
        for layer in range(5):
            block = math.prod(selected_fan(config, layer, last))
            count, regrow = config.connections_per_task[layer], config.rewire_counts[layer]
            assert tasks * count + regrow <= block


@pytest.mark.parametrize(("benchmark", "width"), CASES)
def test_every_selected_map_reachable(benchmark, width):
    """Whether a task has at least one kernel per selected feature map (the last task's)."""
    layer_rule, erk = _config(benchmark, width, "layer"), _config(benchmark, width, "erk")
    last = erk.num_tasks - 1
    selected = [selected_fan(erk, layer, last)[1] for layer in range(4)]
    # conv2-4: enough kernels under ERK (e.g. 110 >= 24, 203 >= 44, 338 >= 40).
    assert all(erk.connections_per_task[layer] >= selected[layer] for layer in (1, 2, 3))
    # conv1 under "layer": 12 < 24 maps of the last task (< 32 maps of the first).
    assert layer_rule.connections_per_task[0] < selected[0]
    # conv1 under any rule: positions are owned by one task, and 3 * maps of them cannot give
    # every task one kernel per map its last task selects (5 * 24 = 120 > 96).
    assert erk.num_tasks * selected[0] > erk.positions(0)
    assert erk.connections_per_task[0] == task_cap(3 * selected[0], erk.num_tasks, 0.2)


@pytest.mark.parametrize("benchmark", list(BENCHMARKS))
@pytest.mark.parametrize("width", list(WIDTHS))
def test_dry_run_shows_the_erk_counts(benchmark, width, capsys):
    classes, outputs = BENCHMARKS[benchmark]
    from experiments.cnn import cnn_config_from_args

    payload = main(
        benchmark, benchmark, "test", cnn_config(classes, outputs),
        ["--dry-run", "--budget", "erk", "--width", width],
        add_arguments=add_cnn_arguments, make_config=cnn_config_from_args,
    )
    counts = ERK[benchmark, width]
    layers = payload["plan"]["tasks"][0]["layers"]
    assert [layer["connections"] for layer in layers] == list(counts)
    text = capsys.readouterr().out
    assert f"weights 5: {counts[4]} (+{round(0.2 * counts[4])} regrown)" in text
    assert "DOES NOT FIT" not in text


def test_budget_flag():
    parser = argparse.ArgumentParser()
    add_cnn_arguments(parser)
    assert parser.parse_args([]).budget == DEFAULT_BUDGET
    assert parser.parse_args(["--budget", "erk"]).budget == "erk"
    with pytest.raises(SystemExit):
        parser.parse_args(["--budget", "global"])

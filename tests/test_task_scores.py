"""Task scores (``config.task_scores``): per-task inference on one scale, from statistics of each
task's own training images, gathered when it ends and never changed afterwards."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, data_for, host, run_keeping_states

from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.network import (
    layer_outputs,
    predict_with_tasks,
    preprocess,
    task_subnetwork_outputs,
    task_subnetwork_weights,
)
from spacenet_jax.core.task_scores import (
    SHRINKAGE,
    class_scores,
    feature_width,
    fit_task_statistics,
    statistics_size,
)
from spacenet_jax.running.runner import run_task_sequence, run_task_sequences
from spacenet_jax.storage.checkpoint import TaskCheckpointer, restore_task, seed_dir
from spacenet_jax.storage.data import task_indices

PER_TASK = dataclasses.replace(TINY, inference="per_task")
MAHALANOBIS = dataclasses.replace(PER_TASK, task_scores="mahalanobis")
STANDARDISED = dataclasses.replace(PER_TASK, task_scores="standardised")


MAHALANOBIS_ALL = dataclasses.replace(PER_TASK, task_scores="mahalanobis_all")
CNN_PER_TASK = dataclasses.replace(TINY_CNN, inference="per_task")
RELATIVE = dataclasses.replace(PER_TASK, task_scores="mahalanobis_relative")


@pytest.mark.parametrize("config", [
    MAHALANOBIS, dataclasses.replace(CNN_PER_TASK, task_scores="mahalanobis"), MAHALANOBIS_ALL,
    dataclasses.replace(CNN_PER_TASK, task_scores="mahalanobis_all"),
], ids=["mlp", "cnn", "mlp-all-layers", "cnn-all-layers"])
def test_statistics_are_those_of_each_tasks_own_training_images(config):
    """Recomputed with numpy from the task's examples in the sub-network it ended with."""
    data = data_for(config)
    state, _, states = run_keeping_states(config, data)
    logit_norm, class_means, precisions, distance_norm = state.task_statistics
    index = task_indices(data.train_labels, config.task_classes)
    for t, classes in enumerate(config.task_classes):
        images, labels = data.train_images[index[t]], data.train_labels[index[t]]
        h, logits = (np.asarray(a, np.float64) for a in
                     task_subnetwork_outputs(states[t], config, images, t))
        largest = logits[:, list(classes)].max(1)
        np.testing.assert_allclose(logit_norm[t], [largest.mean(), largest.std()], rtol=1e-4,
                                   atol=1e-5)
        means = np.stack([h[labels == c].mean(0) for c in classes])
        np.testing.assert_allclose(class_means[list(classes)], means, rtol=1e-4, atol=1e-5)
        centred = h - class_means[labels].astype(np.float64)
        cov = centred.T @ centred / len(h)
        D = cov.shape[0]
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / D * np.eye(D)
        np.testing.assert_allclose(cov @ precisions[t], np.eye(D), atol=1e-2)
        d = h[:, None, :] - means[None]
        d2 = np.einsum("nkd,de,nke->nk", d, np.asarray(precisions[t], np.float64), d)
        nearest = d2.min(1)
        np.testing.assert_allclose(distance_norm[t], [nearest.mean(), nearest.std()],
                                   rtol=2e-3)
    assert statistics_size(config) == sum(a.size for a in state.task_statistics)


def test_relative_distance_subtracts_one_gaussian_over_each_tasks_own_features():
    """``mahalanobis_relative``: the task's one mean and shrunk covariance over all its training
    features, the norm of the relative distance, and the scores, against numpy."""
    config = RELATIVE
    data = data_for(config)
    state, _, states = run_keeping_states(config, data)
    logit_norm, class_means, precisions, distance_norm, task_means, task_precisions = (
        np.asarray(a, np.float64) for a in state.task_statistics)
    index = task_indices(data.train_labels, config.task_classes)
    for t, classes in enumerate(config.task_classes):
        images = data.train_images[index[t]]
        h, _ = (np.asarray(a, np.float64) for a in
                task_subnetwork_outputs(states[t], config, images, t))
        np.testing.assert_allclose(task_means[t], h.mean(0), rtol=1e-4, atol=1e-5)
        centred = h - h.mean(0)
        cov = centred.T @ centred / len(h)
        D = cov.shape[0]
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / D * np.eye(D)
        np.testing.assert_allclose(cov @ task_precisions[t], np.eye(D), atol=1e-2)

        def relative(features, t=t, classes=classes):
            d = features[:, None, :] - class_means[list(classes)][None]
            d2 = np.einsum("nkd,de,nke->nk", d, precisions[t], d)
            d0 = features - task_means[t]
            return d2 - np.einsum("nd,de,ne->n", d0, task_precisions[t], d0)[:, None]

        nearest = relative(h).min(1)  # a small difference of large forms: absolute rounding
        np.testing.assert_allclose(distance_norm[t], [nearest.mean(), nearest.std()],
                                   rtol=2e-3, atol=1e-2)
        # The scores of the finished state's task t on test images.
        features, logits = (np.asarray(a, np.float64) for a in
                            task_subnetwork_outputs(state, config, data.test_images[:32], t))
        scores = class_scores(config, state.task_statistics, t, jnp.asarray(True),
                              jnp.asarray(features, jnp.float32), jnp.asarray(logits, jnp.float32))
        expected = ((logits[:, list(classes)] - logit_norm[t, 0]) / logit_norm[t, 1]
                    - (relative(features) - distance_norm[t, 0]) / distance_norm[t, 1])
        # float32 against float64: the relative distance is a difference of two quadratic
        # forms, so rounding is about 1e-3 of the scores (up to hundreds far from the task).
        np.testing.assert_allclose(np.asarray(scores)[:, list(classes)], expected, rtol=5e-3,
                                   atol=5e-2)
    D, T, C = feature_width(config), config.num_tasks, config.num_classes
    assert sum(config.layer_sizes[1:-1]) == D
    assert statistics_size(config) == 2 * T + C * D + 2 * T * D * D + 2 * T + T * D


@pytest.mark.parametrize("config", [MAHALANOBIS_ALL, dataclasses.replace(
    CNN_PER_TASK, task_scores="mahalanobis_all")], ids=["mlp", "cnn"])
def test_all_layer_features_are_every_hidden_layer_with_conv_maps_averaged_over_space(config):
    data = data_for(config)
    state, _, _ = run_keeping_states(config, data)
    images = data.test_images[:16]
    task = config.num_tasks - 1
    features, logits = task_subnetwork_outputs(state, config, images, task)
    weights, biases = task_subnetwork_weights(state, task)
    hidden, _, plain_logits = layer_outputs(weights, biases, preprocess(images, config), config)
    expected = np.concatenate(
        [np.asarray(h).mean(axis=(1, 2)) if h.ndim == 4 else np.asarray(h) for h in hidden], 1)
    assert features.shape == (16, feature_width(config)) == (16, sum(config.layer_sizes[1:-1]))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logits, plain_logits)
    if config.is_cnn:  # not just the dense layer: the conv maps' means are in it
        assert feature_width(config) > config.layer_sizes[-2]


def test_a_tasks_statistics_never_change_after_it_ends():
    data = data_for(MAHALANOBIS)
    _, _, states = run_keeping_states(MAHALANOBIS, data)
    for t in range(MAHALANOBIS.num_tasks):
        classes = list(MAHALANOBIS.task_classes[t])
        for later in states[t + 1:]:
            for leaf in (0, 2, 3):  # per-task rows
                np.testing.assert_array_equal(later.task_statistics[leaf][t],
                                              states[t].task_statistics[leaf][t])
            np.testing.assert_array_equal(later.task_statistics[1][classes],
                                          states[t].task_statistics[1][classes])


def test_training_is_unchanged_and_standardising_keeps_each_tasks_ranking():
    """The scores change prediction only: the same weights as plain per-task inference, the
    same task-incremental predictions (standardising is monotone within a task)."""
    data = data_for(PER_TASK)
    plain, plain_record, _ = run_keeping_states(PER_TASK, data)
    for config in (STANDARDISED, MAHALANOBIS):
        scored, record, _ = run_keeping_states(config, data)
        for a, b in zip(jax.tree.leaves(plain.weights), jax.tree.leaves(scored.weights),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    scored, record, _ = run_keeping_states(STANDARDISED, data)
    assert record["task_il_acc_matrix"] == plain_record["task_il_acc_matrix"]
    with_tasks = np.asarray(predict_with_tasks(scored, STANDARDISED, data.test_images))
    plain_tasks = np.asarray(predict_with_tasks(plain, PER_TASK, data.test_images))
    np.testing.assert_array_equal(with_tasks[:, 1:], plain_tasks[:, 1:])


def test_fit_does_not_depend_on_the_order_of_the_examples():
    data = data_for(MAHALANOBIS)
    _, _, states = run_keeping_states(MAHALANOBIS, data)
    index = task_indices(data.train_labels, MAHALANOBIS.task_classes)[0]
    before = states[0].replace(task_statistics=jax.tree.map(np.zeros_like,
                                                            states[0].task_statistics))
    fit = lambda ix: fit_task_statistics(  # noqa: E731
        before, MAHALANOBIS, data.train_images, data.train_labels, ix, len(ix), 0)
    shuffled = np.random.default_rng(0).permutation(index)
    for a, b in zip(fit(index).task_statistics, fit(shuffled).task_statistics, strict=True):
        np.testing.assert_array_equal(a, b)


def test_vmapped_seeds_give_each_seeds_statistics_and_record():
    data = data_for(MAHALANOBIS)
    batched = run_task_sequences(MAHALANOBIS, data, [1, 2], progress=False)
    for seed, (state, record) in zip([1, 2], batched, strict=True):
        single, single_record, _ = run_keeping_states(MAHALANOBIS, data, seed)
        assert record["acc_matrix"] == single_record["acc_matrix"]
        for a, b in zip(host(state).task_statistics, single.task_statistics, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_needs_per_task_inference_and_a_known_rule():
    with pytest.raises(ConfigError, match=r"only per-task inference has.*--inference per_task"):
        dataclasses.replace(TINY, task_scores="standardised")
    with pytest.raises(ConfigError, match="task_scores must be one of logits, standardised"):
        dataclasses.replace(PER_TASK, task_scores="energy")
    assert statistics_size(PER_TASK) == 0
    assert statistics_size(STANDARDISED) == 2 * TINY.num_tasks
    D, T, C = TINY.layer_sizes[-2], TINY.num_tasks, TINY.num_classes
    assert statistics_size(MAHALANOBIS) == 2 * T + C * D + T * D * D + 2 * T
    D_all = sum(TINY.layer_sizes[1:-1])
    assert statistics_size(MAHALANOBIS_ALL) == 2 * T + C * D_all + T * D_all**2 + 2 * T


def test_logit_weight_adds_the_raw_logit_to_a_finished_tasks_score():
    """``logit_weight`` w: a finished task's scores are the rule's plus w times the logits;
    an unfinished task's are its raw logits either way; w = 0 is the rule alone."""
    config = RELATIVE
    data = data_for(config)
    state, _, _ = run_keeping_states(config, data)
    weighted = dataclasses.replace(config, logit_weight=0.25)
    for t in range(config.num_tasks):
        features, logits = task_subnetwork_outputs(state, config, data.test_images[:16], t)
        rule = class_scores(config, state.task_statistics, t, jnp.asarray(True), features,
                            logits)
        ours = class_scores(weighted, state.task_statistics, t, jnp.asarray(True), features,
                            logits)
        np.testing.assert_allclose(ours, rule + 0.25 * logits, rtol=1e-6, atol=1e-5)
        assert not np.allclose(ours, rule)
        unfinished = class_scores(weighted, state.task_statistics, t, jnp.asarray(False),
                                  features, logits)
        np.testing.assert_array_equal(unfinished, logits)


@pytest.mark.parametrize("weight, message", [
    (-0.1, "logit_weight must be a finite number >= 0"),
    (float("nan"), "logit_weight must be a finite number >= 0"),
])
def test_logit_weight_must_be_a_finite_non_negative_number(weight, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(RELATIVE, logit_weight=weight)


def test_logit_weight_needs_a_rule_other_than_raw_logits():
    with pytest.raises(ConfigError, match=r"task_scores='logits' is the raw logit already.*"
                                          r"--task-scores mahalanobis_relative"):
        dataclasses.replace(PER_TASK, logit_weight=0.1)


def test_checkpoints_keep_the_statistics_and_reevaluation_reproduces_the_run(tmp_path):
    from experiments.reevaluate import reevaluate_seed

    data = data_for(MAHALANOBIS)
    with TaskCheckpointer(tmp_path / "a", MAHALANOBIS, 0, benchmark="synthetic") as ck:
        state, direct = run_task_sequence(MAHALANOBIS, data, 0, progress=False, on_task_end=ck,
                                          benchmark="synthetic")
    restored, _ = restore_task(seed_dir(tmp_path / "a", 0), MAHALANOBIS, 0,
                               benchmark="synthetic")
    for a, b in zip(host(state).task_statistics, restored.task_statistics, strict=True):
        np.testing.assert_array_equal(a, b)
    # A run made with raw logits, rescored from its checkpoints, is the run made with the rule.
    with TaskCheckpointer(tmp_path / "b", PER_TASK, 0, benchmark="synthetic") as ck:
        run_task_sequence(PER_TASK, data, 0, progress=False, on_task_end=ck,
                          benchmark="synthetic")
    record = reevaluate_seed(seed_dir(tmp_path / "b", 0), "per_task", data, "mahalanobis")
    drop = ("seconds", "reevaluated_from", "benchmark", "batch")
    assert {k: v for k, v in record.items() if k not in drop} == {
        k: v for k, v in direct.items() if k not in drop}

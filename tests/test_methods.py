"""The baselines run through SpaceNet's code path: rehearsal, fine-tuning and joint training."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import numpy as np
import pytest
from conftest import TINY, assert_invariants, host, synthetic_dataset

from spacenet_jax import begin_task, end_task, init_state, make_task_data
from spacenet_jax.core.config import METHODS, ConfigError
from spacenet_jax.core.continual import learn_task
from spacenet_jax.core.stages import replay_memory, training_stages
from spacenet_jax.core.state import FREE
from spacenet_jax.running import metrics
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.running.study import summarize_runs
from spacenet_jax.storage.data import task_indices


def _config(method: str, **changes):
    return dataclasses.replace(TINY, method=method, **changes)


def test_method_properties():
    flags = {
        m: (c.sparse, c.rewire, c.replay, c.joint, c.num_stages)
        for m in METHODS
        for c in [_config(m)]
    }
    assert flags == {
        "spacenet": (True, True, False, False, 3),
        "static": (True, False, False, False, 3),
        "rehearsal": (True, True, True, False, 3),
        "finetune": (False, False, False, False, 3),
        "joint": (False, False, False, True, 1),
    }
    assert _config("static").rewire_counts == (0, 0, 0)


def test_unknown_method_and_negative_replay_are_refused():
    with pytest.raises(ConfigError, match=r"unknown method 'ewc'.*spacenet"):
        _config("ewc")
    with pytest.raises(ConfigError, match="replay_per_task"):
        _config("rehearsal", replay_per_task=-1)


def test_dense_methods_ignore_the_sparsity_settings():
    # 90 reserved neurons per task cannot fit SpaceNet, but a dense network never reserves.
    with pytest.raises(ConfigError):
        _config("spacenet", specific_neurons=(8, 7), selected_neurons=(8, 7))
    _config("finetune", specific_neurons=(8, 7), selected_neurons=(8, 7))


# ---- training stages ----------------------------------------------------------------------


def _examples():
    return [np.arange(0, 10), np.arange(10, 16), np.arange(16, 30)]


def test_stages_of_sequential_methods_are_the_tasks():
    for method in ("spacenet", "static", "finetune"):
        stages = training_stages(_config(method), _examples(), seed=0)
        assert [s.tolist() for s in stages] == [e.tolist() for e in _examples()]


def test_joint_has_one_stage_of_all_examples():
    (stage,) = training_stages(_config("joint"), _examples(), seed=0)
    assert stage.tolist() == list(range(30))


def test_rehearsal_replays_every_earlier_task_in_full_by_default():
    stages = training_stages(_config("rehearsal"), _examples(), seed=0)
    assert [sorted(s.tolist()) for s in stages] == [
        list(range(10)), list(range(16)), list(range(30))
    ]


def test_rehearsal_with_a_bounded_memory_replays_the_same_subset_every_stage():
    stages = training_stages(_config("rehearsal", replay_per_task=4), _examples(), seed=3)
    first, second, third = (set(s.tolist()) for s in stages)
    assert first == set(range(10))
    memory0 = second - set(range(10, 16))
    assert len(memory0) == 4 and memory0 <= set(range(10))
    assert set(range(10, 16)) <= second
    # The task-0 memory is drawn once and replayed unchanged later; task 1 adds 4 of its own.
    assert third & set(range(10)) == memory0
    assert len(third & set(range(10, 16))) == 4
    assert set(range(16, 30)) <= third and len(third) == 4 + 4 + 14
    again = training_stages(_config("rehearsal", replay_per_task=4), _examples(), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(stages, again, strict=True))


def test_replay_memory_keeps_all_when_asked_for_more_than_exist():
    rng = np.random.default_rng(0)
    assert replay_memory(np.arange(5), 0, rng).tolist() == [0, 1, 2, 3, 4]
    assert replay_memory(np.arange(5), 9, rng).tolist() == [0, 1, 2, 3, 4]
    kept = replay_memory(np.arange(100, 120), 6, rng)
    assert len(set(kept.tolist())) == 6 and np.all(np.diff(kept) > 0)


def test_stages_refuse_a_task_count_mismatch():
    with pytest.raises(ValueError, match="2 tasks of examples for a config of 3"):
        training_stages(_config("spacenet"), _examples()[:2], seed=0)


# ---- each method on tiny synthetic data -----------------------------------------------------


def _learn_all(config, dataset, seed=0):
    stages = training_stages(
        config, task_indices(dataset.train_labels, config.task_classes), seed
    )
    data = make_task_data(dataset.train_images, dataset.train_labels, stages, config.batch_size)
    state = init_state(config, seed)
    states = [state]
    for stage in data:
        state = learn_task(state, config, stage)
        states.append(state)
    return states


def test_rehearsal_keeps_old_output_columns_live_and_old_weights_frozen():
    config = _config("rehearsal")
    states = _learn_all(config, synthetic_dataset())
    for before, after in itertools.pairwise(states):
        assert_invariants(before, after, config)
    final = host(states[-1])
    # Nothing is moved aside: the live output layer holds every task's columns.
    assert not np.any(np.asarray(final.saved_output_weights))
    live = np.asarray(final.weights[-1])
    for t, classes in enumerate(config.task_classes):
        owner = np.asarray(final.connection_owner[-1])[:, list(classes)]
        assert np.sum(owner == t) == config.connections_per_task[-1]
        assert np.any(live[:, list(classes)] != 0), f"task {t}'s output columns are not live"
    # Neurons are reserved as in SpaceNet.
    for h in range(config.num_hidden):
        owners = np.asarray(final.neuron_owner[h])
        assert [int(np.sum(owners == t)) for t in range(3)] == [config.specific_neurons[h]] * 3


def test_finetune_trains_the_whole_dense_network_and_protects_nothing():
    config = _config("finetune")
    states = _learn_all(config, synthetic_dataset())
    after_first, final = host(states[1]), host(states[-1])
    for layer in range(config.num_layers):
        # Task 0 starts from the dense Glorot draw, everywhere.
        w0 = np.asarray(after_first.weights[layer])
        assert np.all(w0 != 0)
        # The last task owns (and trained) every position, including task 0's.
        assert np.all(np.asarray(final.connection_owner[layer]) == config.num_tasks - 1)
        assert not np.array_equal(np.asarray(final.weights[layer]), w0)
    assert all(np.all(np.asarray(o) == FREE) for o in final.neuron_owner)
    assert not np.any(np.asarray(final.saved_output_weights))
    assert int(final.task) == config.num_tasks


def test_joint_learns_every_task_in_one_stage():
    config = _config("joint")
    states = _learn_all(config, synthetic_dataset())
    assert len(states) == 2
    assert int(states[-1].task) == config.num_tasks
    with pytest.raises(ConfigError, match="nothing left to learn"):
        learn_task(states[-1], config, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_end_to_end_and_records_the_same_shape(method):
    config = _config(method)
    state, record = run_task_sequence(config, synthetic_dataset(), seed=1, progress=False)
    T = config.num_tasks
    assert record["method"] == method and record["config"]["method"] == method
    assert record["tasks_learned"] == T and int(state.task) == T
    assert len(record["final_task_acc"]) == T
    assert 0.0 <= record["final_avg_acc"] <= 1.0
    assert record["final_avg_acc"] == pytest.approx(np.mean(record["final_task_acc"]))
    assert len(record["acc_matrix"]) == config.num_stages
    if method == "joint":
        assert record["avg_forgetting"] is None and record["backward_transfer"] is None
        assert record["final_avg_acc"] > 0.9  # the upper bound on easy synthetic classes
    else:
        assert len(record["forgetting"]) == T - 1
        assert record["backward_transfer"] == pytest.approx(
            metrics.backward_transfer(record["acc_matrix"])
        )
    if config.sparse:
        assert record["connections_per_task"] == [list(config.connections_per_task)] * T
        assert record["connections_used"] == [T * c for c in config.connections_per_task]
    else:
        assert record["connections_per_task"] is None
        assert record["connections_used"] == [a * b for a, b in zip(
            config.layer_sizes[:-1], config.layer_sizes[1:], strict=True)]


def test_finetune_forgets_and_joint_does_not():
    data = synthetic_dataset()
    _, fine = run_task_sequence(_config("finetune", epochs=6), data, seed=0, progress=False)
    _, joint = run_task_sequence(_config("joint"), data, seed=0, progress=False)
    assert fine["final_task_acc"][-1] > 0.9  # the last task is learned ...
    assert fine["forgetting"][0] > 0.3  # ... and the first one largely forgotten
    assert joint["final_avg_acc"] > fine["final_avg_acc"]


def test_summary_over_seeds_skips_metrics_that_do_not_apply():
    data = synthetic_dataset()
    runs = [run_task_sequence(_config("joint"), data, seed=s, progress=False)[1] for s in (0, 1)]
    summary = summarize_runs(runs)
    assert summary["avg_forgetting"] is None and summary["backward_transfer"] is None
    assert summary["final_avg_acc"]["n"] == 2
    assert summary["final_avg_acc"]["mean"] == pytest.approx(
        np.mean([r["final_avg_acc"] for r in runs])
    )


def test_methods_do_not_recompile_from_task_to_task():
    """Every method's begin/end compile once for the whole sequence (static shapes)."""
    for method in ("rehearsal", "finetune"):
        config = _config(method)
        jax.clear_caches()
        _learn_all(config, synthetic_dataset())
        assert begin_task._cache_size() == 1 and end_task._cache_size() == 1, method

"""Per-task inference (``config.inference == "per_task"``): every task's classes are scored by
the sub-network it was learned in, so later tasks cannot move its logits."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, data_for, host, run_keeping_states

from spacenet_jax.core.config import ConfigError
from spacenet_jax.core.network import (
    forward,
    predict_with_tasks,
    preprocess,
    task_subnetwork_logits,
    task_subnetwork_weights,
)
from spacenet_jax.core.output_layer import inference_weights
from spacenet_jax.core.state import init_state
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.storage.checkpoint import TaskCheckpointer, restore_task, seed_dir


@pytest.mark.parametrize("base", [TINY, TINY_CNN], ids=["mlp", "cnn"])
def test_each_task_is_scored_by_the_network_it_ended_with(base):
    config = dataclasses.replace(base, inference="per_task")
    data = data_for(config)
    final, _, states = run_keeping_states(config, data)
    x = preprocess(data.test_images, config)
    logits = np.asarray(task_subnetwork_logits(final, config, x))
    masks = np.asarray(config.class_masks())
    for t, after_t in enumerate(states):
        # What the whole network gave for task t's classes just after learning t.
        then = np.asarray(forward(inference_weights(after_t), after_t.biases, x, config))
        np.testing.assert_allclose(logits[:, masks[t]], then[:, masks[t]], rtol=1e-6, atol=1e-6)
        # Its biases were kept, and its sub-network holds no later task's connection.
        for kept, b in zip(final.task_biases, after_t.biases, strict=True):
            np.testing.assert_array_equal(kept[t], b)
        weights, _ = task_subnetwork_weights(final, t)
        for owner, w in zip(final.connection_owner, weights, strict=True):
            later = np.asarray(owner) > t
            w = np.asarray(w)
            assert not np.any(w[..., later] if w.ndim == 4 else w[later])
    # The later tasks did change the shared network's logits for the first task: the test
    # would not notice anything otherwise.
    shared = np.asarray(forward(inference_weights(final), final.biases, x, config))
    first = np.asarray(forward(inference_weights(states[0]), states[0].biases, x, config))
    assert not np.allclose(shared[:, masks[0]], first[:, masks[0]], atol=1e-4)


def test_training_is_the_same_and_only_prediction_changes():
    data = data_for(TINY)
    shared_state, shared_rec, _ = run_keeping_states(TINY, data)
    per_task = dataclasses.replace(TINY, inference="per_task")
    state, record, _ = run_keeping_states(per_task, data)
    for a, b in zip(jax.tree.leaves(shared_state), jax.tree.leaves(state.replace(task_biases=())),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert shared_state.task_biases == ()
    # Right after the first task both predict the same: the sub-network is the network.
    assert record["acc_matrix"][0] == shared_rec["acc_matrix"][0]
    assert record["config"]["inference"] == "per_task"
    assert shared_rec["config"]["inference"] == "shared"


def test_task_il_predictions_use_each_tasks_sub_network():
    config = dataclasses.replace(TINY, inference="per_task")
    data = data_for(config)
    final, _, states = run_keeping_states(config, data)
    preds = np.asarray(predict_with_tasks(final, config, data.test_images))
    x = preprocess(data.test_images, config)
    masks = np.asarray(config.class_masks())
    for t, after_t in enumerate(states):
        then = np.asarray(forward(inference_weights(after_t), after_t.biases, x, config))
        want = np.where(masks[t], then, -np.inf).argmax(axis=1)
        np.testing.assert_array_equal(preds[:, 1 + t], want)


def test_before_a_task_ends_it_uses_the_live_biases():
    config = dataclasses.replace(TINY, inference="per_task")
    state = init_state(config, 0)
    assert [b.shape for b in state.task_biases] == [(3, 24), (3, 20), (3, 6)]
    state = state.replace(biases=tuple(b + 1.0 for b in state.biases))
    _, biases = task_subnetwork_weights(state, 0)  # task 0 is being learned
    for b in biases:
        np.testing.assert_array_equal(b, 1.0)


@pytest.mark.parametrize("method", ["finetune", "joint", "rehearsal"])
def test_refused_without_task_owned_connections(method):
    with pytest.raises(ConfigError, match=r"inference='per_task' needs .*use inference='shared'"):
        dataclasses.replace(TINY, method=method, inference="per_task")
    with pytest.raises(ConfigError, match=r"inference must be one of shared, per_task"):
        dataclasses.replace(TINY, inference="ensemble")


def test_checkpoint_round_trip_keeps_the_task_biases(tmp_path):
    config = dataclasses.replace(TINY, inference="per_task")
    data = data_for(config)
    with TaskCheckpointer(tmp_path, config, 0, benchmark="synthetic") as ck:
        state, _ = run_task_sequence(config, data, 0, progress=False, on_task_end=ck,
                                     benchmark="synthetic")
    restored, _ = restore_task(seed_dir(tmp_path, 0), config, 0, benchmark="synthetic")
    for a, b in zip(host(state).task_biases, restored.task_biases, strict=True):
        np.testing.assert_array_equal(a, b)
    # The paper's inference cannot read it (another configuration), and says so.
    from spacenet_jax.storage.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="inference"):
        restore_task(seed_dir(tmp_path, 0), TINY, 0, benchmark="synthetic")


def checkpoint_seeds(checkpoint_dir, data, seeds):
    """Train TINY on ``data`` for each seed, with a checkpoint after every task."""
    for seed in seeds:
        with TaskCheckpointer(checkpoint_dir, TINY, seed, benchmark="synthetic") as ck:
            run_task_sequence(TINY, data, seed, progress=False, on_task_end=ck,
                              benchmark="synthetic")


def test_reevaluate_skips_a_seed_still_training_and_refuses_when_none_is_finished(
        tmp_path, capsys):
    """A seed whose run is still in progress (fewer task checkpoints than tasks) is skipped with
    a note, not summarised with the finished ones (which crashed after all the work); with no
    finished seed the command refuses before loading anything."""
    import shutil

    from experiments.reevaluate import main as reevaluate_main
    from experiments.reevaluate import seed_folders

    data = data_for(TINY)
    checkpoint_seeds(tmp_path / "ckpt", data, seeds=(0, 1))
    T = TINY.num_tasks
    for step in range(2, T + 1):  # seed 1 as if still learning its second task
        shutil.rmtree(seed_dir(tmp_path / "ckpt", 1) / str(step))
    finished, unfinished = seed_folders(tmp_path / "ckpt")
    assert finished == [seed_dir(tmp_path / "ckpt", 0)]
    assert unfinished == [(seed_dir(tmp_path / "ckpt", 1), 1, T)]
    shutil.rmtree(seed_dir(tmp_path / "ckpt", 0))
    with pytest.raises(SystemExit):
        reevaluate_main([str(tmp_path / "ckpt"), "--inference", "per_task",
                         "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert f"seed_1: skipped, 1 of its {T} tasks are checkpointed" in captured.out
    assert "holds the checkpoints of every task (only unfinished runs, above)" in captured.err
    assert not (tmp_path / "out").exists()


def test_reevaluating_checkpoints_gives_the_per_task_run(tmp_path):
    """``experiments.reevaluate``: a shared run's task checkpoints, evaluated per task, give the
    record a per-task run writes (training is the same)."""
    from experiments.reevaluate import reevaluate_seed

    data = data_for(TINY)
    with TaskCheckpointer(tmp_path, TINY, 0, benchmark="synthetic") as ck:
        run_task_sequence(TINY, data, 0, progress=False, on_task_end=ck, benchmark="synthetic")
    record = reevaluate_seed(seed_dir(tmp_path, 0), "per_task", data)
    _, direct, _ = run_keeping_states(dataclasses.replace(TINY, inference="per_task"), data)
    drop = ("seconds", "reevaluated_from", "benchmark", "batch")
    assert {k: v for k, v in record.items() if k not in drop} == {
        k: v for k, v in direct.items() if k not in drop}
    back = reevaluate_seed(seed_dir(tmp_path, 0), "shared", data)
    assert back["acc_matrix"] == run_task_sequence(TINY, data, 0, progress=False)[1]["acc_matrix"]


def test_reevaluate_shows_progress_and_keeps_each_seed_as_it_finishes(tmp_path, capsys,
                                                                       monkeypatch):
    """A line per seed and task on stderr; results.json is written after each seed, so a
    failure in a later seed keeps the seeds already evaluated (and --quiet is quiet)."""
    import experiments.reevaluate as reevaluate
    from spacenet_jax.storage.checkpoint import CheckpointError
    from spacenet_jax.storage.results_schema import load_results

    data = data_for(TINY)
    checkpoint_seeds(tmp_path / "ckpt", data, seeds=(0, 1))
    monkeypatch.setattr(reevaluate, "load_dataset", lambda *args, **kwargs: data)
    args = [str(tmp_path / "ckpt"), "--inference", "per_task"]
    payload = reevaluate.main([*args, "--out", str(tmp_path / "all")])
    err = capsys.readouterr().err
    T = TINY.num_tasks
    for seed in (0, 1):
        for task in range(1, T + 1):
            assert f"[reevaluate synthetic seed {seed}] task {task}/{T} in " in err
    last = payload["runs"][1]["acc_matrix"][-1]
    assert err.rstrip().endswith(
        "test accuracy (%) per task " + " ".join(f"{100 * a:.1f}" for a in last))

    real = reevaluate.reevaluate_seed

    def fails_on_seed_1(folder, *rest, **kwargs):
        if folder.name == "seed_1":
            raise CheckpointError(f"{folder} is corrupt")
        return real(folder, *rest, **kwargs)

    monkeypatch.setattr(reevaluate, "reevaluate_seed", fails_on_seed_1)
    with pytest.raises(SystemExit):
        reevaluate.main([*args, "--quiet", "--out", str(tmp_path / "part")])
    captured = capsys.readouterr()
    assert "seed_1 is corrupt" in captured.err and "[reevaluate" not in captured.err
    kept = load_results(tmp_path / "part" / "results.json")["runs"]
    assert [r["seed"] for r in kept] == [0]
    assert kept[0]["acc_matrix"] == payload["runs"][0]["acc_matrix"]


def test_reevaluate_refuses_an_out_whose_results_hold_a_seed_it_does_not_score(tmp_path,
                                                                               capsys,
                                                                               monkeypatch):
    """``--out`` is replaced by the seeds scored, so a results.json there with another seed
    (a kept record of earlier seeds) is refused before any work and left as it was; scoring
    the same seeds into the same folder again is allowed."""
    import shutil

    import experiments.reevaluate as reevaluate

    data = data_for(TINY)
    checkpoint_seeds(tmp_path / "ckpt", data, seeds=(0, 1))
    monkeypatch.setattr(reevaluate, "load_dataset", lambda *args, **kwargs: data)
    out = tmp_path / "kept"
    reevaluate.main([str(tmp_path / "ckpt"), "--inference", "per_task", "--quiet",
                     "--out", str(out)])
    kept = (out / "results.json").read_bytes()
    capsys.readouterr()

    shutil.copytree(seed_dir(tmp_path / "ckpt", 1), seed_dir(tmp_path / "only_1", 1))
    with pytest.raises(SystemExit):
        reevaluate.main([str(tmp_path / "only_1"), "--inference", "per_task", "--quiet",
                         "--out", str(out)])
    err = capsys.readouterr().err
    assert "with seed(s) 0, which this call does not score" in err
    assert "experiments.combine" in err
    assert (out / "results.json").read_bytes() == kept

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    with pytest.raises(SystemExit):
        reevaluate.main([str(tmp_path / "only_1"), "--inference", "per_task", "--quiet",
                         "--out", str(tmp_path / "bad")])
    assert "not a readable results.json" in capsys.readouterr().err

    again = reevaluate.main([str(tmp_path / "ckpt"), "--inference", "per_task", "--quiet",
                             "--out", str(out)])
    assert [r["seed"] for r in again["runs"]] == [0, 1]

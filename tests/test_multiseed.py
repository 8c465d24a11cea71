"""Many seeds as one vmapped program: the same results as single runs, sharded or not."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY, synthetic_dataset

from experiments.common import main as experiment_main
from spacenet_jax import CapacityError
from spacenet_jax.core.continual import check_allocation, check_rewiring
from spacenet_jax.running import multiseed
from spacenet_jax.running.runner import run_task_sequence, run_task_sequences
from spacenet_jax.running.study import seed_batches
from spacenet_jax.storage.checkpoint import TaskCheckpointer, saved_tasks, seed_dir

TESTS = Path(__file__).resolve().parent
BENCH = "synthetic"

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _without_timing(record: dict) -> dict:
    """A record without what legitimately differs between a batch and a single run."""
    return {k: v for k, v in json.loads(json.dumps(record)).items()
            if k not in ("seconds", "batch", "provenance")}


def _assert_same_state(a, b, what: str) -> None:
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b),
                            strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, (what, jax.tree_util.keystr(path))
        assert np.array_equal(x, y), f"{what}: {jax.tree_util.keystr(path)} differs"


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


CONFIGS = {
    "spacenet": dataclasses.replace(TINY, momentum=0.9),
    # A bounded replay memory: each seed draws its own subset, so the stages differ per seed.
    "rehearsal": dataclasses.replace(TINY, method="rehearsal", replay_per_task=25, epochs=2),
    "joint": dataclasses.replace(TINY, method="joint", epochs=2),
}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_batched_seeds_equal_single_seed_runs(data, method):
    config = CONFIGS[method]
    seeds = [0, 5, 2]
    batched = run_task_sequences(config, data, seeds, benchmark=BENCH, progress=False)
    for seed, (state, record) in zip(seeds, batched, strict=True):
        alone_state, alone = run_task_sequence(config, data, seed, benchmark=BENCH,
                                               progress=False)
        _assert_same_state(state, alone_state, f"{method} seed {seed}")
        assert _without_timing(record) == _without_timing(alone)  # task-IL matrix included
        rows = 1 if method == "joint" else config.num_tasks
        assert len(record["task_il_acc_matrix"]) == rows
        for row, il_row in zip(record["acc_matrix"], record["task_il_acc_matrix"], strict=True):
            assert all(a is None or a <= b for a, b in zip(row, il_row, strict=True))
        assert record["batch"] == seeds and alone["batch"] == [seed]
    # Different seeds really are different runs.
    assert batched[0][1]["acc_matrix"] != batched[1][1]["acc_matrix"]


def test_batched_programs_compile_once_for_a_whole_sequence(data):
    functions = (multiseed.begin_tasks, multiseed.train_epochs_and_rewire,
                 multiseed.end_tasks, multiseed.predict_seeds)
    for f in functions:
        f.clear_cache()
    run_task_sequences(TINY, data, [1, 2], benchmark=BENCH, progress=False)
    for f in functions:
        assert f._cache_size() == 1, f"{f.__name__} compiled {f._cache_size()} times"


def test_batched_progress_reports_every_epoch_and_task(data, capsys):
    config = dataclasses.replace(TINY, epochs=2)
    run_task_sequences(config, data, [4, 5, 6], benchmark=BENCH, progress=True)
    err = capsys.readouterr().err
    assert err.count("epoch") == config.num_tasks * config.epochs
    assert "[synthetic spacenet seeds 4-6] task 3/3 epoch 2/2" in err
    assert err.count("done in") == config.num_tasks and "(mean of 3 seeds)" in err
    assert err.count("| task-IL mean ") == config.num_tasks


def test_seed_devices_use_fewest_rounds_then_fewest_devices():
    pool = [object()] * 8
    assert len(multiseed.seed_devices(10, pool)) == 5  # two rounds either way: no padding
    assert len(multiseed.seed_devices(8, pool)) == 8
    assert len(multiseed.seed_devices(3, pool)) == 3
    assert len(multiseed.seed_devices(17, pool)) == 6  # three rounds: 18 slots, one padding
    assert multiseed.pad_seeds([4, 5, 6], 2) == [4, 5, 6, 6]
    assert multiseed.pad_seeds([4, 5, 6], 3) == [4, 5, 6]
    with pytest.raises(ValueError, match="no devices"):
        multiseed.seed_devices(2, [])


def test_stack_and_unstack_round_trip():
    from spacenet_jax import init_state

    singles = [init_state(TINY, s) for s in (3, 9)]
    stacked = multiseed.stack_states(singles)
    assert stacked.weights[0].shape == (2, *singles[0].weights[0].shape)
    for a, b in zip(multiseed.unstack_states(stacked), singles, strict=True):
        _assert_same_state(a, b, "unstacked")


def test_capacity_errors_name_the_seed():
    report = {
        "neuron_shortfall": np.array([[0, 0], [0, 2]]),
        "connection_shortfall": np.zeros((2, 3), int),
        "candidate_positions": np.full((2, 3), 50),
    }
    with pytest.raises(CapacityError, match=r"seed 7, task 2, hidden layer 2: 2 too few"):
        check_allocation(report, 1, seeds=[3, 7])
    report["neuron_shortfall"][:] = 0
    report["connection_shortfall"][0, 1] = 4
    with pytest.raises(CapacityError, match=r"seed 3, task 2, weight matrix 2: only 50 free"):
        check_allocation(report, 1, seeds=[3, 7])
    with pytest.raises(CapacityError, match=r"seed 7, task 3, epoch 1, weight matrix 1: 5 too few"):
        check_rewiring(np.array([[0, 0, 0], [5, 0, 0]]), 2, 0, seeds=[3, 7])
    check_rewiring(np.zeros((2, 3), int), 2, 0, seeds=[3, 7])  # no shortfall: no error


def test_seed_batches_group_seeds_by_resume_point():
    record = lambda rows: (None, {"acc_matrix": [[0.5]] * rows})  # noqa: E731
    resume = {1: record(2), 4: record(1), 5: record(2)}
    assert seed_batches([0, 1, 2, 3, 4, 5], resume, 10) == [[0, 2, 3], [4], [1, 5]]
    assert seed_batches([0, 1, 2, 3, 4, 5], resume, 2) == [[0, 2], [3], [4], [1, 5]]
    assert seed_batches([0, 1, 2], {}, 1) == [[0], [1], [2]]


def _cli(argv: list[str], data) -> dict:
    return experiment_main(BENCH, "synthetic", "test", TINY, argv=["--quiet", *argv],
                           load=lambda data_dir, quiet: data)


class _Crash(Exception):
    pass


def test_cli_batch_crashed_mid_sequence_resumes_per_seed(tmp_path, data, monkeypatch):
    """A crash after seed 0 saved task 2 but before seeds 1 and 2 did: --resume continues seed
    0 from task 2 and seeds 1-2 (one batch) from task 1, and ends as an uninterrupted run."""
    whole = _cli(["--seeds", "0-2", "--out", str(tmp_path / "whole")], data)
    assert [r["batch"] for r in whole["runs"]] == [[0, 1, 2]] * 3

    save = TaskCheckpointer.save

    def crash_on_seed_1_task_2(self, state, record):
        if self.seed == 1 and int(state.task) == 2:
            raise _Crash
        return save(self, state, record)

    monkeypatch.setattr(TaskCheckpointer, "save", crash_on_seed_1_task_2)
    ck, out = tmp_path / "ck", tmp_path / "resumed"
    with pytest.raises(_Crash):
        _cli(["--seeds", "0-2", "--out", str(out), "--checkpoint-dir", str(ck)], data)
    monkeypatch.setattr(TaskCheckpointer, "save", save)
    assert [saved_tasks(seed_dir(ck, s)) for s in range(3)] == [[1, 2], [1], [1]]

    resumed = _cli(["--seeds", "0-2", "--out", str(out), "--checkpoint-dir", str(ck),
                    "--resume"], data)
    assert [saved_tasks(seed_dir(ck, s)) for s in range(3)] == [[1, 2, 3]] * 3
    assert [r["batch"] for r in resumed["runs"]] == [[0], [1, 2], [1, 2]]
    assert [_without_timing(r) for r in resumed["runs"]] == [
        _without_timing(r) for r in whole["runs"]
    ]
    on_disk = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in on_disk["runs"]] == [0, 1, 2]


def test_cli_seed_batch_one_runs_seeds_one_by_one(tmp_path, data):
    payload = _cli(["--seeds", "3,4", "--seed-batch", "1", "--epochs", "1"], data)
    assert [r["batch"] for r in payload["runs"]] == [[3], [4]]
    with pytest.raises(SystemExit):
        _cli(["--seeds", "3,4", "--seed-batch", "0"], data)


@pytest.mark.slow
def test_sharded_over_8_cpu_devices_equals_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    done = subprocess.run([sys.executable, str(TESTS / "sharded_check.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["output_devices"] == 8
    assert [c["devices_used"] for c in report["cases"]] == [8, 2]
    assert all(c["equal"] for c in report["cases"])
    assert not any(report["collectives"].values())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_equal_one_process(tmp_path, data):
    """jax.distributed with two CPU processes of two devices each: the seeds are sharded over
    four devices in two processes; process 0 writes results.json, equal to a one-process run."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "SPACENET_COMPILATION_CACHE_DIR": "off",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    port, out = str(_free_port()), tmp_path / "out"
    workers = [
        subprocess.Popen([sys.executable, str(TESTS / "distributed_worker.py"), str(i), "2",
                          port, str(out)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr[-4000:]
    assert "final average accuracy over 4 seed(s)" in outputs[0][0]
    # Process 1 computes and stays quiet (gloo's own connection lines aside).
    assert "accuracy" not in outputs[1][0] and "epoch" not in outputs[1][1]
    assert "on 4 devices" in outputs[0][1]
    runs = json.loads((out / "results.json").read_text())["runs"]
    alone = run_task_sequences(TINY, data, [0, 1, 2, 3], benchmark=BENCH, progress=False,
                               devices=jax.devices()[:1])
    assert [_without_timing(r) for r in runs] == [_without_timing(r) for _, r in alone]


def test_cli_refuses_checkpoints_with_distributed(tmp_path, data, capsys):
    with pytest.raises(SystemExit):
        _cli(["--distributed", "--checkpoint-dir", str(tmp_path / "ck")], data)
    assert "--checkpoint-dir is not supported with --distributed" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()

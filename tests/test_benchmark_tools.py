"""The benchmark's helpers and the persistent compilation cache (nothing here is timed)."""

from __future__ import annotations

import os

import jax
import pytest

from benchmarks.split_mnist import flops_per_step, whole_process
from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.running.compile_cache import enable_compilation_cache


def test_flops_of_a_dense_masked_step():
    # 784*400 + 400*400 + 400*10 = 477600 weights; 6 FLOPs per weight and example.
    assert flops_per_step(SPLIT_MNIST) == 6 * 128 * 477600


def test_flops_of_the_cnn_step():
    from benchmarks.cnn import forward_flops, step_flops
    from experiments.split_cifar10 import SPLIT_CIFAR10

    macs = [32 * 32 * 9 * 3 * 32,    # conv1, SAME on 32x32
            30 * 30 * 9 * 32 * 32,   # conv2, VALID -> 30x30, pool -> 15x15
            15 * 15 * 9 * 32 * 64,   # conv3, SAME
            13 * 13 * 9 * 64 * 64,   # conv4, VALID -> 13x13, pool -> 6x6
            2304 * 512, 512 * 10]
    assert forward_flops(SPLIT_CIFAR10) == 2 * 128 * sum(macs)
    # backward: twice the forward, without the images' gradient (conv1's input gradient)
    assert step_flops(SPLIT_CIFAR10) == 2 * 128 * (3 * sum(macs) - macs[0])


def test_cnn_table_compares_the_epoch_step_with_pytorch(capsys):
    """Besides the jitted single step, the table gives the step as training runs it (inside
    the compiled epoch) against the PyTorch reference."""
    from benchmarks.cnn import print_table

    result = {  # benchmarks/cnn.py's JSON from a run on 2026-12-06, shortened
        "date": "2026-12-06", "backend": "cpu", "device": "cpu", "jax": "0.10.2",
        "step_gflop": 15.70, "forward_gflop": 5.31, "step_at_gemm_rate_ms": 74.1,
        "gemm_floor": {"n": 2048, "ms": 81.1, "gflops": 211.8},
        "forward_ms": 40.5, "gradient_ms": 165.9, "spacenet_step_ms": 175.0,
        "spacenet_step_xla_conv_gradient_ms": 163.9, "spacenet_step_xla_default_flags_ms": 482.0,
        "epoch": {"steps": 79, "examples": 10000, "stepwise_epoch_s": 13.0,
                  "stepwise_ms_per_step": 164.6, "scan_epoch_s": 10.66,
                  "scan_ms_per_step": 134.9, "used_by_learn_task": "scan"},
        "torch_step_ms": 140.9, "spacenet_over_torch": 175.0 / 140.9,
        "training_step_over_torch": 134.9 / 140.9,
    }
    print_table(result)
    out = capsys.readouterr().out
    rows = {line.strip().rsplit(" ", 1)[0].strip(): line.strip().rsplit(" ", 1)[1]
            for line in out.splitlines()[1:]}
    assert rows["SpaceNet step / PyTorch step"] == "1.24x"
    assert rows["the epoch's step / PyTorch step"] == "0.96x"


def test_whole_process_reports_wall_cpu_and_memory():
    usage = whole_process(["json.tool", "--help"], dict(os.environ))
    assert usage["wall_s"] > 0 and usage["cpu_s"] > 0 and 5 < usage["peak_mib"] < 2000
    with pytest.raises(SystemExit, match="benchmark run failed"):
        whole_process(["no_such_module_here"], dict(os.environ))


@pytest.fixture
def restore_cache_config():
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_compilation_cache_is_enabled_where_asked(tmp_path, monkeypatch, restore_cache_config):
    monkeypatch.setenv("SPACENET_COMPILATION_CACHE_DIR", str(tmp_path / "cc"))
    assert enable_compilation_cache() == tmp_path / "cc"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cc")
    monkeypatch.setenv("SPACENET_COMPILATION_CACHE_DIR", "off")
    assert enable_compilation_cache() is None


def test_seeds_training_loop_times_a_vmapped_batch():
    from conftest import TINY, synthetic_dataset

    from benchmarks.split_mnist import seeds_training_loop
    from spacenet_jax.core.continual import make_task_data
    from spacenet_jax.storage.data import task_indices

    data = synthetic_dataset()
    tasks = make_task_data(data.train_images, data.train_labels,
                           task_indices(data.train_labels, TINY.task_classes), TINY.batch_size)
    result = seeds_training_loop(TINY, tasks, seeds=3, repeats=1)
    assert result["seeds"] == 3
    assert result["first_run_s"] > 0 and 0 < result["warm_run_s"] < result["first_run_s"]


def test_task_data_goes_to_the_device_without_compiling_a_program(caplog):
    # jnp.asarray of a host array runs a small compiled program per shape (start-up time);
    # on_device transfers it, casts only where asked, and returns device arrays as they are.
    import logging

    import numpy as np

    from spacenet_jax.core.continual import on_device

    host = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG, logger="jax"):
        placed = on_device(host)
        as_int = on_device(host, np.int32)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
    assert isinstance(placed, jax.Array) and placed.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(placed), host)
    assert as_int.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(as_int), host.astype(np.int32))
    assert on_device(placed) is placed
    assert on_device(placed, np.int32).dtype == np.int32


def test_every_training_command_frees_its_exit_from_garbage_collection():
    import gc
    import importlib
    import inspect

    from experiments.common import command_line_process

    def collectable(obj: object) -> bool:  # frozen objects are not in get_objects()
        return any(o is obj for o in gc.get_objects())

    imported = command_line_process  # alive before: frozen on entry
    try:
        with command_line_process():
            assert not collectable(imported)
            made = [1, 2, 3]  # made during the run: still collectable until the end
            assert collectable(made)
        assert not collectable(made)
    finally:
        gc.unfreeze()  # this is a test process: give the objects back to the collector
    for name in ("split_mnist", "split_fashion_mnist", "split_cifar10", "cifar10_100",
                 "own_data", "sweep", "reproduce", "reevaluate"):
        source = inspect.getsource(importlib.import_module(f"experiments.{name}"))
        main_block = source[source.index('if __name__ == "__main__":'):]
        assert "with command_line_process():" in main_block, name

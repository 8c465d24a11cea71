"""Tiny configurations, synthetic data and the invariants every SpaceNet operation must keep."""

from __future__ import annotations

import os
from pathlib import Path

# Keep the tests on the CPU and deterministic on any machine.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

from spacenet_jax.core.config import SpaceNetConfig
from spacenet_jax.core.state import FREE, SpaceNetState
from spacenet_jax.storage.data import ImageDataset

TINY = SpaceNetConfig(
    layer_sizes=(36, 24, 20, 6),
    task_classes=((0, 1), (2, 3), (4, 5)),
    connections_per_task=(60, 30, 8),
    selected_neurons=(8, 7),
    specific_neurons=(4, 3),
    rewire_ratio=0.25,
    learning_rate=0.05,
    batch_size=16,
    epochs=3,
    input_mean=0.5,
    input_std=0.25,
)

#: Two conv layers on 8x8x3 images (each followed by a max-pool), a dense layer, 6 outputs.
TINY_CNN = SpaceNetConfig(
    layer_sizes=(3, 12, 12, 16, 6),
    image_shape=(8, 8, 3),
    conv_layers=2,
    conv_padding=("SAME", "VALID"),
    pool_after=(0,),
    task_classes=((0, 1), (2, 3), (4, 5)),
    connections_per_task=(6, 12, 60, 12),
    selected_neurons=(12, 12, 8),  # 12 = the conv layers' width: every free map
    specific_neurons=(2, 2, 4),
    rewire_ratio=0.25,
    learning_rate=0.05,
    batch_size=16,
    epochs=3,
    input_mean=(0.5, 0.5, 0.5),
    input_std=0.25,
)


@pytest.fixture
def tiny_config() -> SpaceNetConfig:
    return TINY


def synthetic_dataset(
    num_classes: int = 6, dim: int = 36, train_per_class: int = 70, test_per_class: int = 30,
    seed: int = 0,
) -> ImageDataset:
    """Noisy class prototypes as uint8 'images': learnable, but not trivially."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(num_classes, dim))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes), per_class)
        noise = rng.normal(0, 60, size=(len(labels), dim))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        order = rng.permutation(len(labels))
        return images[order], labels[order].astype(np.int32)

    train_x, train_y = draw(train_per_class)
    test_x, test_y = draw(test_per_class)
    return ImageDataset("synthetic", train_x, train_y, test_x, test_y, num_classes)


@pytest.fixture
def tiny_data() -> ImageDataset:
    return synthetic_dataset()


def host(state: SpaceNetState) -> SpaceNetState:
    return jax.device_get(state)


def data_for(config: SpaceNetConfig) -> ImageDataset:
    """``synthetic_dataset`` with images of ``config``'s input width (MLP or CNN)."""
    dim = int(np.prod(config.image_shape)) if config.is_cnn else config.layer_sizes[0]
    return synthetic_dataset(dim=dim)


def run_keeping_states(config: SpaceNetConfig, data: ImageDataset, seed: int = 0):
    """``(final state, record, [state after each task])`` of one run, states on the host."""
    from spacenet_jax.running.runner import run_task_sequence

    states = []
    state, record = run_task_sequence(
        config, data, seed, progress=False,
        on_task_end=lambda task, s, rec: states.append(host(s)),
    )
    return host(state), record, states


def assert_invariants(before: SpaceNetState, after: SpaceNetState, config: SpaceNetConfig) -> None:
    """What no operation may break (the core issue's list), checked between two states."""
    before, after = host(before), host(after)
    task = int(before.task)
    L = config.num_layers
    for layer in range(L):
        ob = np.asarray(before.connection_owner[layer])
        oa = np.asarray(after.connection_owner[layer])
        earlier = (ob >= 0) & (ob < task)
        # Masks of different tasks never overlap: earlier tasks' positions keep their owner.
        np.testing.assert_array_equal(oa[earlier], ob[earlier])
        # Earlier tasks' weights are bit-identical (output layer: compare the deployed weights).
        if layer < L - 1:
            wb, wa = np.asarray(before.weights[layer]), np.asarray(after.weights[layer])
        else:
            wb = np.asarray(before.weights[layer]) + np.asarray(before.saved_output_weights)
            wa = np.asarray(after.weights[layer]) + np.asarray(after.saved_output_weights)
        assert np.array_equal(wa[earlier], wb[earlier]), f"layer {layer}: earlier weights moved"
        # No task owns a position -> the live weight there is exactly zero.
        assert np.all(np.asarray(after.weights[layer])[oa == FREE] == 0.0)
        # The current task's connections join its selected units, and never a reserved neuron.
        current = oa == int(after.task)
        rows, cols = np.nonzero(current)
        sel_in = np.asarray(after.selected[layer])
        sel_out = np.asarray(after.selected[layer + 1])
        if current.any():
            assert sel_in[rows].all() and sel_out[cols].all(), f"layer {layer}: off selection"
        if 0 < layer + 1 < L:  # into a hidden neuron
            reserved_before = np.asarray(before.neuron_owner[layer]) != FREE
            assert not (current & reserved_before[None, :]).any(), "grew into a reserved neuron"
    # Output biases of earlier tasks' classes are frozen.
    earlier_classes = config.class_masks()[:task].any(axis=0)
    out_before, out_after = np.asarray(before.biases[-1]), np.asarray(after.biases[-1])
    assert np.array_equal(out_after[earlier_classes], out_before[earlier_classes])
    for h in range(config.num_hidden):
        nb, na = np.asarray(before.neuron_owner[h]), np.asarray(after.neuron_owner[h])
        reserved = nb != FREE
        # Reserved neurons stay reserved by the same task; their biases are bit-identical.
        np.testing.assert_array_equal(na[reserved], nb[reserved])
        assert np.array_equal(
            np.asarray(after.biases[h])[reserved], np.asarray(before.biases[h])[reserved]
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files holding ``slow`` tests first, each file's tests in their own order: under
    pytest-xdist (a file per worker) no long file is then left to start last while the other
    workers sit idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """The ``$SPACENET_CACHE_DIR`` of the tests' runs on real data, one for the whole session:
    tfds prepares MNIST and Fashion-MNIST into it once (15-30 s each on 2 CPU cores), and the
    runs' subprocesses reuse each other's compiled programs (``jax-compilation`` inside it). The
    session's own ``$SPACENET_CACHE_DIR`` when set (``.ci/run`` sets one), else a fresh folder
    shared by the pytest-xdist workers of this run. Concurrent preparations of one dataset wait
    for each other (``spacenet_jax.storage.data``'s lock). Tests of the cache itself use their
    own."""
    env = os.environ.get("SPACENET_CACHE_DIR")
    if env:
        return Path(env)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    (root / "shared-cache").mkdir(exist_ok=True)
    return root / "shared-cache"


@pytest.fixture(autouse=True, scope="session")
def _compiled_programs_kept_on_disk(shared_cache):
    """JAX's persistent compilation cache for the whole session, in ``shared_cache``: a program
    compiled by one test file is read back from disk by the next (``jax.clear_caches`` frees
    them after each file) and by the runs' subprocesses. ``SPACENET_TEST_COMPILATION_CACHE=off``
    leaves it off (an experiment's ``main`` called in-process still turns on its own)."""
    if os.environ.get("SPACENET_TEST_COMPILATION_CACHE", "").lower() == "off":
        yield None
        return
    from spacenet_jax.running.compile_cache import enable_compilation_cache

    yield enable_compilation_cache(shared_cache / "jax-compilation")


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_freed_after_each_module():
    """Free every compiled program after each test file (``jax.clear_caches``). The whole suite
    compiles several thousand programs in one process; kept alive to the end, XLA:CPU crashed
    compiling one late in the run (``tests/test_validation.py``, in three local clean-clone
    runs, never with the file alone). The likely cause, not proven: each executable holds
    mapped code and the process runs out of mappings. No test relies on a program compiled by
    another file."""
    yield
    jax.clear_caches()

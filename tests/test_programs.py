"""``core.programs``: top-level programs run from stored executables without tracing, and only
when everything that decides the program matches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, synthetic_dataset

from spacenet_jax.core import programs
from spacenet_jax.running.compile_cache import FolderExecutableStore


class MemoryStore:
    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.loads = 0

    def load(self, key: str) -> bytes | None:
        self.loads += 1
        return self.entries.get(key)

    def save(self, key: str, payload: bytes) -> None:
        self.entries[key] = payload


@pytest.fixture
def store():
    store = MemoryStore()
    programs.set_executable_store(store)
    yield store
    programs.set_executable_store(None)


def _counting_program():
    """A fresh ``Program`` (as in a new process) of a function that counts its traces."""
    traces = []

    def scale(x, config, y=None):
        traces.append(1)
        return x * config + (0.0 if y is None else y)

    return programs.program(static_argnames=("config",))(scale), traces


def test_a_stored_executable_runs_without_tracing(store):
    first, traces = _counting_program()
    x = jnp.arange(4.0)
    np.testing.assert_array_equal(first(x, 3), x * 3)
    assert len(traces) == 1 and len(store.entries) == 1
    again, traces_again = _counting_program()  # "another process": nothing in memory
    np.testing.assert_array_equal(again(x, config=3), x * 3)  # keyword or positional alike
    assert traces_again == [] and store.loads == 2
    # other static values, shapes, dtypes or a default filled in: other programs
    np.testing.assert_array_equal(again(x, 4), x * 4)
    again(jnp.arange(5.0), 3)
    again(jnp.arange(4), 3)
    again(x, 3, jnp.ones(4))
    assert len(traces_again) == 4 and len(store.entries) == 5


def test_inside_another_trace_the_program_is_inlined(store):
    fn, traces = _counting_program()
    out = jax.vmap(lambda v: fn(v, 2))(jnp.ones((3, 2)))
    np.testing.assert_array_equal(out, 2 * np.ones((3, 2)))
    assert store.entries == {} and len(traces) == 1


def test_an_unreadable_entry_is_compiled_again(store):
    fn, _ = _counting_program()
    fn(jnp.ones(2), 2)
    (key,) = store.entries
    store.entries[key] = b"not an executable"
    again, traces = _counting_program()
    np.testing.assert_array_equal(again(jnp.ones(2), 2), 2 * np.ones(2))
    assert len(traces) == 1 and store.entries[key] != b"not an executable"


def test_the_key_holds_the_package_source_and_the_libraries(store, monkeypatch):
    environment = programs._environment()
    assert programs._source_fingerprint() in environment and jax.__version__ in environment
    fn, _ = _counting_program()
    fn(jnp.ones(2), 2)
    monkeypatch.setattr(programs, "_environment", lambda: "another jax, or edited code")
    again, traces = _counting_program()
    again(jnp.ones(2), 2)
    assert len(traces) == 1 and len(store.entries) == 2


def test_a_whole_task_from_stored_executables_equals_the_jitted_one(tmp_path):
    """begin_task, the donated epoch program, end_task and prediction, run once to fill a
    folder store and once more from it (memory cleared), give the jitted run bit for bit."""
    from spacenet_jax.core.continual import learn_task, make_task_data
    from spacenet_jax.core.network import predict
    from spacenet_jax.core.state import init_state
    from spacenet_jax.storage.data import task_indices

    data = synthetic_dataset()
    tasks = make_task_data(data.train_images, data.train_labels,
                           task_indices(data.train_labels, TINY.task_classes), TINY.batch_size)
    x = jnp.asarray(data.test_images)

    def run():
        state = init_state(TINY, 1)
        for task in tasks[:2]:
            state = learn_task(state, TINY, task)
        return jax.device_get(state), np.asarray(predict(state, TINY, x))

    plain = run()
    programs.set_executable_store(FolderExecutableStore(tmp_path))
    try:
        filled = run()
        for wrapped in _package_programs():
            wrapped._compiled.clear()
        stored = run()
    finally:
        programs.set_executable_store(None)
    assert any(tmp_path.rglob("*.bin"))
    for other in (filled, stored):
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)


def _package_programs() -> list[programs.Program]:
    from spacenet_jax.core import continual, network, state, subnetwork

    found = []
    for module in (continual, network, state, subnetwork):
        found += [v for v in vars(module).values() if isinstance(v, programs.Program)]
    assert len(found) >= 6
    return found


def test_stored_executables_across_processes_after_jax_filled_its_own_cache(tmp_path):
    """Process 1 fills JAX's persistent cache without the store; process 2 fills the store
    (compiling anew: an executable read back from JAX's cache serializes without its code on
    XLA:CPU); process 3 runs from the store. All three write the same results."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "SPACENET_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    results = []
    for run, store in enumerate(["off", "on", "on"]):
        out = tmp_path / f"out{run}"
        done = subprocess.run(
            [sys.executable, str(tests / "synthetic_cli.py"), "--seed", "2", "--epochs", "2",
             "--quiet", "--out", str(out)],
            cwd=tests.parent, env={**env, "SPACENET_EXECUTABLE_STORE": store},
            capture_output=True, text=True, check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        (record,) = json.loads((out / "results.json").read_text())["runs"]
        results.append((record["acc_matrix"], record["task_il_acc_matrix"]))
        stored = list((tmp_path / "cache" / "executables").rglob("*.bin"))
        assert bool(stored) == (run > 0)
    assert results[0] == results[1] == results[2]

"""Dependencies point one way: the library never imports the command line, and the algorithm's
core never imports storage, plotting or TensorFlow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spacenet_jax"

#: The algorithm: what a task does to the state, and prediction.
CORE = {
    "config", "state", "network", "training", "importance", "allocation", "rewiring",
    "reservation", "output_layer", "continual", "stages", "task_scores", "layers", "compiler",
    "inputs",
}
#: What the core must not reach, directly or through another module.
NOT_FOR_CORE = {
    "spacenet_jax.data", "spacenet_jax.checkpoint", "spacenet_jax.plots", "spacenet_jax.runner",
    "spacenet_jax.inspect", "spacenet_jax.analysis", "tensorflow", "tensorflow_datasets",
    "matplotlib", "orbax",
}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "spacenet_jax":
                found.update(f"spacenet_jax.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in sorted(PACKAGE.glob("*.py"))}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_library_never_imports_the_experiments_or_benchmarks():
    offenders = {
        module: sorted(i for i in imports if _top(i) in ("experiments", "benchmarks", "tests"))
        for module, imports in _modules().items()
    }
    assert not {m: i for m, i in offenders.items() if i}, offenders


def test_the_core_reaches_no_storage_plotting_or_tensorflow():
    modules = _modules()

    def reach(module: str, seen: set[str]) -> set[str]:
        out: set[str] = set()
        for name in modules.get(module, ()):
            out.add(name)
            if name.startswith("spacenet_jax.") and name not in seen:
                seen.add(name)
                out |= reach(name.removeprefix("spacenet_jax."), seen)
        return out

    bad = {}
    for module in sorted(CORE):
        reached = reach(module, set())
        hits = sorted(n for n in reached
                      if n in NOT_FOR_CORE or _top(n) in {_top(x) for x in NOT_FOR_CORE
                                                          if not x.startswith("spacenet_jax")})
        if hits:
            bad[module] = hits
    assert not bad, f"core modules reaching storage, plotting or TensorFlow: {bad}"


@pytest.mark.parametrize("source, expected", [
    ("import experiments.common\n", {"experiments.common"}),
    ("def f():\n    from experiments.cnn import x\n", {"experiments.cnn"}),
    ("from spacenet_jax import data, plots\n", {"spacenet_jax", "spacenet_jax.data",
                                                "spacenet_jax.plots"}),
])
def test_the_import_walk_sees_lazy_and_package_imports(tmp_path, source, expected):
    """The check above can fail: it sees imports inside functions and ``from pkg import mod``."""
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports_of(path) == expected


def test_flatten_order_matches_the_feature_map_of_every_mask_row():
    """Perturb one feature map of a real conv output; exactly the flattened inputs that
    ``config.input_units`` assigns to that map change (so the masks of the first dense layer
    index the features the network really feeds it)."""
    import jax
    import numpy as np
    from conftest import TINY_CNN

    from spacenet_jax.network import flatten_features, layer_outputs, preprocess
    from spacenet_jax.state import init_state

    config = TINY_CNN
    state = init_state(config, 0)
    weights = state.init_weights  # dense draw: every map is live
    images = np.random.default_rng(0).integers(0, 256, (2, 8 * 8 * 3), dtype=np.uint8)
    hidden, _, _ = layer_outputs(weights, state.biases, preprocess(images, config), config)
    last_conv = config.conv_layers - 1
    pooled = hidden[last_conv]  # TINY_CNN does not pool after its last conv layer
    dense = config.conv_layers  # the first dense layer reads the flattened maps
    np.testing.assert_allclose(
        jax.nn.relu(flatten_features(pooled) @ weights[dense] + state.biases[dense]),
        hidden[dense], rtol=1e-6,
    )
    flat = flatten_features(pooled)
    maps = config.layer_sizes[config.conv_layers]
    units = config.input_units(config.conv_layers)
    for m in (0, 5, maps - 1):
        bumped = pooled.at[..., m].add(1.0)
        changed = np.any(np.asarray(flatten_features(bumped) != flat), axis=0)
        np.testing.assert_array_equal(np.flatnonzero(changed), np.flatnonzero(units == m))
    assert jax.tree.leaves(hidden)  # the walk returned every hidden layer
    assert len(hidden) == config.num_hidden

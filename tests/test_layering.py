"""Dependencies point one way: the library never imports the command line, and the algorithm's
core never imports storage, plotting or TensorFlow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spacenet_jax"

#: The layers, in order: each may import only the ones before it.
LAYERS = ("core", "storage", "running", "analysis")
#: What the algorithm's core must not reach, directly or through another module, besides the
#: later layers.
NOT_FOR_CORE = {"tensorflow", "tensorflow_datasets", "matplotlib", "orbax"}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module.startswith("spacenet_jax"):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    """Dotted module name -> its imports, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = imports_of(path)
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "spacenet_jax" and parts[1] in LAYERS \
        else None


def test_the_package_is_laid_out_in_its_layers():
    """Every module sits in one of the four layers (the top-level ``__init__`` aside)."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(LAYERS)


def test_the_library_never_imports_the_experiments_or_benchmarks():
    offenders = {
        module: sorted(i for i in imports if _top(i) in ("experiments", "benchmarks", "tests"))
        for module, imports in _modules().items()
    }
    assert not {m: i for m, i in offenders.items() if i}, offenders


def _reach(modules: dict[str, set[str]], module: str, seen: set[str]) -> set[str]:
    out: set[str] = set()
    for name in modules.get(module, ()):
        out.add(name)
        if name.startswith("spacenet_jax.") and name not in seen:
            seen.add(name)
            out |= _reach(modules, name, seen)
    return out


def test_each_layer_imports_only_the_layers_before_it():
    """core <- storage <- running <- analysis, directly or through another module."""
    modules = _modules()
    bad = {}
    for module in modules:
        layer = _layer(module)
        if layer is None:
            continue
        allowed = set(LAYERS[: LAYERS.index(layer) + 1])
        hits = sorted(n for n in imports_of_layers(modules[module]) if _layer(n) not in allowed)
        if hits:
            bad[module] = hits
    assert not bad, f"modules importing a later layer: {bad}"


def imports_of_layers(imports: set[str]) -> set[str]:
    return {n for n in imports if _layer(n) is not None}


def test_the_core_reaches_no_storage_plotting_or_tensorflow():
    modules = _modules()
    core = [m for m in modules if _layer(m) == "core"]
    assert len(core) >= 15, core  # the walk found the core's modules
    bad = {}
    for module in sorted(core):
        reached = _reach(modules, module, set())
        hits = sorted(n for n in reached if _top(n) in NOT_FOR_CORE
                      or _layer(n) not in (None, "core"))
        if hits:
            bad[module] = hits
    assert not bad, f"core modules reaching storage, plotting or TensorFlow: {bad}"


@pytest.mark.parametrize("source, expected", [
    ("import experiments.common\n", {"experiments.common"}),
    ("def f():\n    from experiments.cnn import x\n", {"experiments.cnn"}),
    ("from spacenet_jax.storage import data, checkpoint\n",
     {"spacenet_jax.storage", "spacenet_jax.storage.data", "spacenet_jax.storage.checkpoint"}),
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

    from spacenet_jax.core.network import flatten_features, layer_outputs, preprocess
    from spacenet_jax.core.state import init_state

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

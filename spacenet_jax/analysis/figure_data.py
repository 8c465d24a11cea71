"""The data behind the paper's analysis figures (Section 6), computed from SpaceNet states.

Every function here is pure: states (after some task, e.g. restored with
``spacenet_jax.storage.checkpoint.restore_task``) in, numpy arrays and plain dicts out, ready
to draw (``spacenet_jax.analysis.plots``) or to save as JSON.

* Figure 4 -- ``task_activations``: hidden-layer activations of a task's test images (the paper:
  50 test images of each class of task 1, after task 1).
* Figure 5 -- ``initial_allocation`` and ``task_connections``: a task's connections between two
  layers as allocated (``begin_task`` on the state after the previous task) and after its
  adaptive sparse training (``connection_owner == task`` in the state after the task).
* Figure 6 -- ``input_connection_counts``: how many of a task's first-layer connections leave
  each input pixel, as an image.
* ``capacity`` / ``capacity_over_tasks`` / ``capacity_from_record``: free, shared and reserved
  neurons per hidden layer, and connections in use, after each task.

Figures 4-6 need an MLP on flat images (a CNN config is refused with a ``ConfigError``); the
capacity functions work for any run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.continual import begin_task
from spacenet_jax.core.network import layer_outputs
from spacenet_jax.core.normalisation import preprocess
from spacenet_jax.core.output_layer import inference_weights
from spacenet_jax.core.state import FREE, SpaceNetState, connections_used

__all__ = [
    "capacity",
    "capacity_from_record",
    "capacity_over_tasks",
    "default_image_shape",
    "hidden_activations",
    "initial_allocation",
    "input_connection_counts",
    "mask_counts",
    "pick_class_examples",
    "require_mlp",
    "require_sparse",
    "task_activations",
    "task_connections",
]


def require_mlp(config: SpaceNetConfig, figure: str) -> None:
    """Raise ``ConfigError`` unless ``config`` is an MLP on flat inputs (Figures 4-6)."""
    if config.is_cnn:
        raise ConfigError(
            f"{figure} is drawn for an MLP only (as in the paper, on split MNIST); this run is a "
            f"CNN ({config.conv_layers} conv layers, image_shape={config.image_shape})"
        )


def require_sparse(config: SpaceNetConfig, figure: str) -> None:
    """Raise ``ConfigError`` for a dense method, whose tasks own every connection."""
    if not config.sparse:
        raise ConfigError(
            f"{figure} shows a task's sparse connections; method {config.method!r} is dense "
            f"(each task owns every connection), so there is nothing to show"
        )


def _host(state: SpaceNetState) -> SpaceNetState:
    return jax.tree.map(np.asarray, jax.device_get(state))


# ---- Figure 4: activations ----------------------------------------------------------------


def hidden_activations(
    state: SpaceNetState, config: SpaceNetConfig, images: np.ndarray
) -> list[np.ndarray]:
    """ReLU activations of every hidden layer for uint8 images ``(N, D)``.

    The images are normalised as in training (``normalisation.preprocess``) and go through the
    deployed network (every stored output column restored; it does not change hidden units).

    Returns:
      One float32 ``(N, layer_sizes[h + 1])`` array per hidden layer ``h``.

    Raises:
      ConfigError: a CNN configuration; ValueError: images of another width.
    """
    require_mlp(config, "Figure 4 (hidden activations)")
    if np.ndim(images) != 2 or np.shape(images)[1] != config.layer_sizes[0]:
        raise ValueError(
            f"images of shape {np.shape(images)} do not fit the network's "
            f"{config.layer_sizes[0]} inputs; pass flat uint8 images (N, {config.layer_sizes[0]})"
        )
    hidden, _, _ = layer_outputs(
        inference_weights(state), state.biases,
        preprocess(jnp.asarray(images), config, state.input_statistics), config
    )
    return [np.asarray(h, np.float32) for h in hidden]


def pick_class_examples(
    labels: np.ndarray, classes: Sequence[int], per_class: int = 50, seed: int = 0
) -> np.ndarray:
    """Indices of up to ``per_class`` random examples of each class, grouped in class order.

    Within a class the examples are in ascending index order; the draw depends only on
    ``seed`` (numpy ``default_rng``), so a figure is reproducible.

    Returns:
      int64 ``(n,)`` indices into ``labels``, ``n <= per_class * len(classes)`` (a class with
      fewer examples contributes all of them).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picked = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        take = min(per_class, len(pool))
        picked.append(np.sort(rng.choice(pool, size=take, replace=False)))
    return np.concatenate(picked) if picked else np.zeros((0,), np.int64)


def task_activations(
    state: SpaceNetState,
    config: SpaceNetConfig,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    task: int = 0,
    per_class: int = 50,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Figure 4: hidden activations of ``per_class`` test images of each class of ``task``.

    The paper draws them after task 1 (``state`` restored after one task, ``task=0``), 50
    images of class 0 then 50 of class 1.

    Args:
      state: the state whose network is probed.
      test_images: uint8 ``(M, D)``; test_labels: ``(M,)``.
      task: 0-based task whose classes are shown.
      per_class: images per class (fewer if the test set has fewer).
      seed: seed of the draw of images.

    Returns:
      ``(activations, labels)``: per hidden layer a float32 ``(n_images, n_units)`` array, and
      the int ``(n_images,)`` labels of the images (grouped by class).
    """
    index = pick_class_examples(test_labels, config.task_classes[task], per_class, seed)
    images = np.asarray(test_images)[index]
    return hidden_activations(state, config, images), np.asarray(test_labels)[index]


# ---- Figure 5: a task's connections before and after adaptive training ---------------------


def initial_allocation(previous: SpaceNetState, config: SpaceNetConfig) -> SpaceNetState:
    """The state right after ``begin_task`` of task ``previous.task`` (host arrays).

    ``begin_task`` is a deterministic function of the state, so applied to the state after
    task ``t - 1`` (or to ``init_state(config, seed)`` for the first task) it reproduces task
    ``t``'s initial allocation exactly, before any training or rewiring.
    """
    state, _ = begin_task(jax.device_put(previous), config)
    return _host(state)


def task_connections(
    allocated: SpaceNetState, trained: SpaceNetState, config: SpaceNetConfig, layer: int = 1
) -> dict[str, Any]:
    """Figure 5: task ``t``'s connections in weight layer ``layer``, before and after training.

    Args:
      allocated: the state after ``begin_task`` of task ``t`` (``initial_allocation``).
      trained: the state after task ``t`` (``trained.task == t + 1``).
      layer: weight layer, 0 (inputs -> hidden 1) .. L-1 (-> outputs); the paper's picture is
        between two hidden layers, ``layer=1``.

    Returns:
      A dict with ``task`` (0-based ``t``), ``layer``, ``num_layers``, ``before`` and ``after``
      (bool ``(fan_in, fan_out)``: ``connection_owner[layer] == t``), ``rows`` / ``cols`` (int, the
      task's selected input / output units of the layer, where every connection of the task
      lies), ``count_before`` / ``count_after``, and ``rows_used_*`` / ``cols_used_*`` (how many
      input / output units carry at least one of the connections, before and after: fewer after
      means the connections were compacted).

    Raises:
      ConfigError: a CNN or a dense method; ValueError: states not of consecutive points of
      one task, or a layer out of range.
    """
    require_mlp(config, "Figure 5 (connections before and after training)")
    require_sparse(config, "Figure 5 (connections before and after training)")
    if not 0 <= layer < config.num_layers:
        raise ValueError(f"layer must be in 0..{config.num_layers - 1}, got {layer}")
    allocated, trained = _host(allocated), _host(trained)
    task = int(allocated.task)
    if int(trained.task) != task + 1:
        raise ValueError(
            f"'allocated' is at the start of task {task + 1} but 'trained' is after "
            f"{int(trained.task)} tasks; pass the state after task {task + 1}"
        )
    before = np.asarray(allocated.connection_owner[layer]) == task
    after = np.asarray(trained.connection_owner[layer]) == task
    return {
        "task": task,
        "layer": layer,
        "num_layers": config.num_layers,
        "before": before,
        "after": after,
        "rows": np.flatnonzero(allocated.selected[layer]),
        "cols": np.flatnonzero(allocated.selected[layer + 1]),
        **mask_counts(before, after),
    }


def mask_counts(before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    """Connections, and rows / columns carrying any, of two bool ``(fan_in, fan_out)`` masks."""
    counts = {}
    for tag, mask in (("before", before), ("after", after)):
        counts[f"count_{tag}"] = int(mask.sum())
        counts[f"rows_used_{tag}"] = int(mask.any(axis=1).sum())
        counts[f"cols_used_{tag}"] = int(mask.any(axis=0).sum())
    return counts


# ---- Figure 6: connections leaving each input pixel ----------------------------------------


def default_image_shape(config: SpaceNetConfig) -> tuple[int, int]:
    """``(height, width)`` to draw the input layer as an image.

    ``config.image_shape[:2]`` if set, else a square when ``layer_sizes[0]`` is a perfect square
    (784 -> 28 x 28). Raises ``ValueError`` otherwise (pass the shape explicitly).
    """
    if config.image_shape:
        return int(config.image_shape[0]), int(config.image_shape[1])
    n = config.layer_sizes[0]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"the input layer has {n} units, not a square image; give the image shape"
        )
    return side, side


def input_connection_counts(
    state: SpaceNetState,
    config: SpaceNetConfig,
    tasks: Sequence[int] | None = None,
    image_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Figure 6: per task, the number of its connections leaving each input pixel.

    For task ``t`` this is ``sum over fan_out of (connection_owner[0] == t)``, reshaped to the
    image (the paper: 784 -> 28 x 28).

    Args:
      state: a state after the tasks asked for (usually the last one).
      tasks: 0-based tasks (default: every task learned, ``range(state.task)``).
      image_shape: ``(height, width)`` (default ``default_image_shape``); its product must be
        ``layer_sizes[0]``.

    Returns:
      int64 ``(len(tasks), height, width)``.

    Raises:
      ConfigError: a CNN or a dense method; ValueError: a bad shape or a task not learned yet.
    """
    require_mlp(config, "Figure 6 (connections per input pixel)")
    require_sparse(config, "Figure 6 (connections per input pixel)")
    owner = np.asarray(jax.device_get(state.connection_owner[0]))
    learned = int(np.asarray(state.task))
    tasks = list(range(learned)) if tasks is None else [int(t) for t in tasks]
    bad = [t for t in tasks if not 0 <= t < learned]
    if bad:
        raise ValueError(
            f"task {bad[0] + 1} is not learned in this state ({learned} tasks learned)"
        )
    shape = tuple(int(s) for s in (image_shape or default_image_shape(config)))[:2]
    if len(shape) != 2 or shape[0] * shape[1] != owner.shape[0]:
        raise ValueError(
            f"image shape {shape} does not hold the {owner.shape[0]} input units"
        )
    counts = [(owner == t).sum(axis=1).reshape(shape) for t in tasks]
    return np.stack(counts).astype(np.int64) if counts else np.zeros((0, *shape), np.int64)


# ---- capacity ---------------------------------------------------------------------------


def _unit_any(used_rows: np.ndarray, config: SpaceNetConfig, layer: int) -> np.ndarray:
    """Per unit of unit layer ``layer``: whether any row of weight layer ``layer`` is used."""
    index = config.input_units(layer)
    if index is None:
        return used_rows
    out = np.zeros(config.layer_sizes[layer], bool)
    np.logical_or.at(out, index, used_rows)
    return out


def capacity(state: SpaceNetState, config: SpaceNetConfig) -> dict[str, Any]:
    """How much of the network one state uses.

    Per hidden layer ``h`` the neurons (feature maps for conv layers) split into three
    disjoint groups: ``reserved`` (``neuron_owner != FREE``: specific to a task, never selected
    again), ``shared`` (not reserved, but carrying at least one connection of some task, in or
    out: a later task may select it and share it), and ``free`` (neither). ``free + shared``
    is the record's ``free_neurons`` (unreserved neurons).

    Returns:
      A dict: ``tasks_learned``; ``hidden_sizes``; ``free``, ``shared``, ``reserved`` (int per
      hidden layer); ``connections_used`` (positions owned by any task, per weight layer; kernels
      for conv layers); ``positions`` (per weight layer); ``network_used`` and
      ``network_positions`` (their sums); ``connections_per_task`` (``[task][layer]``, owner
      counts of each task learned).
    """
    host = _host(state)
    owners = [np.asarray(o) for o in host.connection_owner]
    learned = int(host.task)
    free, shared, reserved = [], [], []
    for h in range(config.num_hidden):
        unit = h + 1
        incoming = (owners[h] != FREE).any(axis=0)
        outgoing = _unit_any((owners[unit] != FREE).any(axis=1), config, unit)
        is_reserved = np.asarray(host.neuron_owner[h]) != FREE
        carrying = incoming | outgoing
        reserved.append(int(is_reserved.sum()))
        shared.append(int((~is_reserved & carrying).sum()))
        free.append(int((~is_reserved & ~carrying).sum()))
    used = connections_used(host)
    positions = [int(o.size) for o in owners]
    return {
        "tasks_learned": learned,
        "hidden_sizes": list(config.layer_sizes[1:-1]),
        "free": free,
        "shared": shared,
        "reserved": reserved,
        "connections_used": used,
        "positions": positions,
        "network_used": sum(used),
        "network_positions": sum(positions),
        "connections_per_task": [[int((o == t).sum()) for o in owners] for t in range(learned)],
    }


def capacity_over_tasks(
    states: Sequence[SpaceNetState], config: SpaceNetConfig
) -> dict[str, Any]:
    """``capacity`` after each task, from the states after each (e.g. every checkpoint).

    Returns:
      A dict with ``source: "checkpoints"``, ``tasks_learned`` (per state), ``hidden_sizes``,
      ``positions``, ``network_positions``, and per state (outer list): ``free``, ``shared``,
      ``reserved``, ``unreserved`` (``free + shared``; per hidden layer), ``connections_used``
      (per weight layer) and ``network_used``.
    """
    if not states:
        raise ValueError("no states: pass the state after each task")
    steps = [capacity(s, config) for s in states]
    out: dict[str, Any] = {
        "source": "checkpoints",
        "tasks_learned": [c["tasks_learned"] for c in steps],
        "hidden_sizes": steps[0]["hidden_sizes"],
        "positions": steps[0]["positions"],
        "network_positions": steps[0]["network_positions"],
    }
    for key in ("free", "shared", "reserved", "connections_used", "network_used"):
        out[key] = [c[key] for c in steps]
    out["unreserved"] = [
        [f + s for f, s in zip(c["free"], c["shared"], strict=True)] for c in steps
    ]
    return out


def capacity_from_record(
    record: Mapping[str, Any], config: SpaceNetConfig
) -> dict[str, Any]:
    """What ``capacity_over_tasks`` can be derived from a run record alone (no checkpoints).

    ``reserved = size - free_neurons`` after each task; connections in use after task ``t``
    are the sum of ``connections_per_task`` of tasks ``0..t`` (a finished task's connections
    never change), or every position for a dense method. Free and shared neurons cannot be told
    apart without the masks: ``free`` and ``shared`` are ``None``, ``unreserved`` is the
    record's ``free_neurons``.

    Returns:
      The keys of ``capacity_over_tasks``, with ``source: "results.json"``.
    """
    sizes = list(config.layer_sizes[1:-1])
    unreserved = [[int(v) for v in row] for row in record["free_neurons"]]
    steps = len(unreserved)
    positions = [config.positions(layer) for layer in range(config.num_layers)]
    per_task = record.get("connections_per_task")
    if per_task is None:  # dense: the current stage owns every connection
        used = [list(positions) for _ in range(steps)]
    else:
        cumulative = np.cumsum(np.asarray(per_task, np.int64), axis=0)
        used = [[int(v) for v in cumulative[t]] for t in range(steps)]
    learned = int(record.get("tasks_learned", steps))
    tasks_learned = [learned] if config.joint else list(range(1, steps + 1))
    return {
        "source": "results.json",
        "tasks_learned": tasks_learned,
        "hidden_sizes": sizes,
        "positions": positions,
        "network_positions": sum(positions),
        "free": None,
        "shared": None,
        "reserved": [[n - u for n, u in zip(sizes, row, strict=True)] for row in unreserved],
        "unreserved": unreserved,
        "connections_used": used,
        "network_used": [sum(row) for row in used],
    }

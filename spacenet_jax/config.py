"""Hyper-parameters of a SpaceNet run, as one frozen (hashable, jit-static) dataclass.

The defaults are the paper's split MNIST setup (Section 5.1) as the authors' implementation runs
it: an MLP 784-400-400-10, five tasks of two classes, 80 selected and 40 reserved ("specific")
neurons per hidden layer and task, 10000 / 1640 / 80 connections per task and layer, SGD with
learning rate 0.01, batch 128, 4 epochs per task, rewiring ratio r = 0.2.

Everything the jitted functions need to know statically (layer sizes, per-layer connection counts,
the top-k sizes of drop and grow) is derived here on the host, so the traced code has static
shapes and never recompiles from one task to the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


class ConfigError(ValueError):
    """An impossible or inconsistent configuration, found before any training starts."""


#: The methods one code path runs (``SpaceNetConfig.method``), and what each one is.
METHODS: dict[str, str] = {
    "spacenet": "SpaceNet: sparse allocation, drop and grow, neuron reservation",
    "static": "Static-SparseNN: SpaceNet's allocation and reservation without drop and grow",
    "rehearsal": "SpaceNet-Rehearsal: SpaceNet that also replays earlier tasks' training data",
    "finetune": "dense network of the same shape, trained task after task (lower bound)",
    "joint": "dense network of the same shape, trained on all tasks' data at once (upper bound)",
}


@dataclasses.dataclass(frozen=True)
class SpaceNetConfig:
    """Static configuration of SpaceNet on an MLP.

    Attributes:
      layer_sizes: units per layer, input first, output (all classes of all tasks) last.
      task_classes: the classes of each task, in task order (class-incremental split).
      connections_per_task: connections allocated to each task in each weight matrix (L entries
        for L = len(layer_sizes) - 1 weight matrices). Kept constant by drop and grow.
      selected_neurons: neurons selected per hidden layer for each task (``sel_l^t``).
      specific_neurons: neurons reserved per hidden layer after each task (``spec_l^t``).
      rewire_ratio: fraction r of a task's connections dropped and regrown after every epoch but
        the last, in each hidden weight matrix (the output layer is not rewired).
      method: one of ``METHODS``. ``spacenet`` is the paper's method; ``static`` is its
        Static-SparseNN ablation (no drop and grow); ``rehearsal`` is SpaceNet-Rehearsal (each
        task also trains on earlier tasks' data, see ``replay_per_task``); ``finetune`` and
        ``joint`` are a dense network of the same shape trained without any protection, task
        after task or on all tasks at once (the lower and upper bounds). The dense methods
        ignore the sparsity settings.
      replay_per_task: for ``rehearsal``, how many training examples of each earlier task are
        kept and replayed (0, the default, keeps all of them, as in the paper).
      learning_rate, momentum, batch_size, epochs: plain SGD as in the paper.
      input_mean, input_std: inputs are ``(pixels / 255 - mean) / std``.
    """

    layer_sizes: tuple[int, ...] = (784, 400, 400, 10)
    task_classes: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    connections_per_task: tuple[int, ...] = (10000, 1640, 80)
    selected_neurons: tuple[int, ...] = (80, 80)
    specific_neurons: tuple[int, ...] = (40, 40)
    rewire_ratio: float = 0.2
    method: str = "spacenet"
    replay_per_task: int = 0
    learning_rate: float = 0.01
    momentum: float = 0.0
    batch_size: int = 128
    epochs: int = 4
    input_mean: float = 0.1307
    input_std: float = 0.3081

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that the config stays hashable (jit-static).
        object.__setattr__(self, "layer_sizes", tuple(int(n) for n in self.layer_sizes))
        object.__setattr__(
            self, "task_classes", tuple(tuple(int(c) for c in t) for t in self.task_classes)
        )
        for name in ("connections_per_task", "selected_neurons", "specific_neurons"):
            object.__setattr__(self, name, tuple(int(n) for n in getattr(self, name)))
        validate(self)

    # ---- derived, static quantities -------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of weight matrices L."""
        return len(self.layer_sizes) - 1

    @property
    def num_hidden(self) -> int:
        return len(self.layer_sizes) - 2

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    @property
    def num_classes(self) -> int:
        return self.layer_sizes[-1]

    @property
    def sparse(self) -> bool:
        """Tasks get sparse connections and reserve neurons (SpaceNet and its variants)."""
        return self.method in ("spacenet", "static", "rehearsal")

    @property
    def rewire(self) -> bool:
        """Drop and grow after every epoch but the last (adaptive sparse training)."""
        return self.method in ("spacenet", "rehearsal")

    @property
    def replay(self) -> bool:
        """Each task also trains on earlier tasks' data (rehearsal)."""
        return self.method == "rehearsal"

    @property
    def joint(self) -> bool:
        """All tasks are learned in one training stage on their pooled data."""
        return self.method == "joint"

    @property
    def num_stages(self) -> int:
        """Training stages: one per task, or a single one for ``joint``."""
        return 1 if self.joint else self.num_tasks

    @property
    def rewired_layers(self) -> tuple[int, ...]:
        """Indices of the weight matrices that drop and grow act on (all but the output)."""
        return tuple(range(self.num_layers - 1)) if self.rewire else ()

    @property
    def rewire_counts(self) -> tuple[int, ...]:
        """k_l: connections dropped (and grown) per rewired layer, fixed so top-k is static."""
        return tuple(
            round(self.rewire_ratio * self.connections_per_task[layer])
            if layer in self.rewired_layers
            else 0
            for layer in range(self.num_layers)
        )

    def class_masks(self) -> np.ndarray:
        """bool (num_tasks, num_classes): which output units belong to each task."""
        masks = np.zeros((self.num_tasks, self.num_classes), dtype=bool)
        for t, classes in enumerate(self.task_classes):
            masks[t, list(classes)] = True
        return masks

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)


def _fail(message: str) -> None:
    raise ConfigError(message)


def validate(config: SpaceNetConfig) -> None:
    """Check that every task of the sequence can be allocated, trained and reserved.

    Raises ConfigError naming the layer, the task and the numbers, with a suggested fix.
    """
    sizes = config.layer_sizes
    L = len(sizes) - 1
    if L < 1 or any(n <= 0 for n in sizes):
        _fail(f"layer_sizes must hold at least two positive sizes, got {sizes}")
    if config.method not in METHODS:
        _fail(f"unknown method {config.method!r}: choose one of {', '.join(METHODS)}")
    if config.replay_per_task < 0:
        _fail(f"replay_per_task must be >= 0 (0 replays everything), got {config.replay_per_task}")
    if len(config.connections_per_task) != L:
        _fail(
            f"connections_per_task has {len(config.connections_per_task)} entries but the "
            f"network has {L} weight matrices (layer_sizes={sizes}); give one count per matrix"
        )
    H = L - 1
    for name in ("selected_neurons", "specific_neurons"):
        if len(getattr(config, name)) != H:
            _fail(
                f"{name} has {len(getattr(config, name))} entries but the network has {H} "
                f"hidden layers (layer_sizes={sizes}); give one count per hidden layer"
            )
    if not 0.0 <= config.rewire_ratio < 1.0:
        _fail(f"rewire_ratio must be in [0, 1), got {config.rewire_ratio}")
    if config.learning_rate <= 0:
        _fail(f"learning_rate must be positive, got {config.learning_rate}")
    if not 0.0 <= config.momentum < 1.0:
        _fail(f"momentum must be in [0, 1), got {config.momentum}")
    if config.batch_size <= 0 or config.epochs <= 0:
        _fail(f"batch_size and epochs must be positive, got {config.batch_size}, {config.epochs}")
    if config.input_std <= 0:
        _fail(f"input_std must be positive, got {config.input_std}")

    # Classes: in range, non-empty tasks, no class in two tasks.
    if not config.task_classes:
        _fail("task_classes is empty: give at least one task")
    seen: dict[int, int] = {}
    for t, classes in enumerate(config.task_classes):
        if not classes:
            _fail(f"task {t} has no classes")
        for c in classes:
            if not 0 <= c < sizes[-1]:
                _fail(
                    f"task {t} names class {c} but the output layer has {sizes[-1]} units "
                    f"(classes 0..{sizes[-1] - 1}); enlarge layer_sizes[-1] or fix task_classes"
                )
            if c in seen:
                _fail(f"class {c} appears in task {seen[c]} and task {t}: tasks must not overlap")
            seen[c] = t

    if not config.sparse:
        return  # a dense network: the sparsity settings are not used

    # Neurons: before task t, (t * spec) neurons of each hidden layer are reserved.
    T = config.num_tasks
    for h in range(H):
        n, sel, spec = sizes[h + 1], config.selected_neurons[h], config.specific_neurons[h]
        if not 0 < sel <= n:
            _fail(f"hidden layer {h + 1}: selected_neurons={sel} must be in 1..{n}")
        if not 0 <= spec <= sel:
            _fail(
                f"hidden layer {h + 1}: specific_neurons={spec} must be in 0..selected_neurons"
                f"={sel} (reserved neurons are chosen among the selected ones)"
            )
        free_at_last = n - (T - 1) * spec
        if free_at_last < sel:
            last = (n - sel) // spec if spec else T
            _fail(
                f"hidden layer {h + 1}: task {T - 1} (0-based) needs {sel} free neurons but only "
                f"{free_at_last} of {n} remain after {T - 1} tasks reserve {spec} each; only "
                f"{last + 1} tasks fit. Lower specific_neurons or selected_neurons, or widen "
                f"the layer"
            )

    # Connections: each task's count must fit between its selected neurons, with room to grow.
    for layer in range(L):
        count = config.connections_per_task[layer]
        if count <= 0:
            _fail(f"layer {layer}: connections_per_task must be positive, got {count}")
        fan_in = sizes[0] if layer == 0 else config.selected_neurons[layer - 1]
        for t, classes in enumerate(config.task_classes):
            fan_out = len(classes) if layer == L - 1 else config.selected_neurons[layer]
            k = config.rewire_counts[layer]
            positions = fan_in * fan_out
            if count + k > positions:
                _fail(
                    f"layer {layer}, task {t}: {count} connections (+{k} for regrowth) do not "
                    f"fit in the {positions} positions between {fan_in} and {fan_out} selected "
                    f"units; lower connections_per_task[{layer}] or rewire_ratio, or select "
                    f"more neurons"
                )


def parse_int_list(text: str | Sequence[int]) -> tuple[int, ...]:
    """'80,80' or [80, 80] -> (80, 80)."""
    if isinstance(text, str):
        return tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    return tuple(int(p) for p in text)

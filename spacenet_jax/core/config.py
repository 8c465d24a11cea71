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
import math
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

#: The largest weight matrix a configuration may have: positions are int32 (2**31 - 1).
MAX_WEIGHTS_PER_LAYER = 2**31 - 1

#: ``SpaceNetConfig.output_columns``: what happens to finished tasks' output columns.
OUTPUT_COLUMNS: dict[str, str] = {
    "stored": "moved aside while later tasks train, restored for prediction (the paper)",
    "live": "kept in the network, frozen, so later tasks' losses see their logits",
    "reserved": "stored, keeping only the connections from the task's reserved last-hidden "
    "units (no later task trains into them)",
}

#: ``SpaceNetConfig.inference``: which network scores each task's classes at prediction time.
INFERENCE: dict[str, str] = {
    "shared": "one forward pass of the whole network, every stored output column restored "
    "(the paper)",
    "per_task": "each task's classes scored by the sub-network it was learned in: the "
    "connections of it and earlier tasks, with the biases it ended with (no drift)",
}

#: ``SpaceNetConfig.task_scores``: how per-task inference makes the tasks' scores comparable
#: (``spacenet_jax.core.task_scores``).
TASK_SCORES: dict[str, str] = {
    "logits": "each task's raw logits (per-task inference as it is)",
    "standardised": "each task's logits standardised by the mean and sd of its largest logit "
    "on its own training images",
    "mahalanobis": "the standardised logit plus the standardised Mahalanobis closeness of the "
    "last hidden features to the class mean (statistics of the task's own training images)",
    "mahalanobis_all": "as mahalanobis, on the features of every hidden layer: each conv "
    "layer's maps averaged over space, and every dense unit",
    "mahalanobis_relative": "as mahalanobis_all, with the relative distance (Ren et al. 2021): "
    "the class's distance minus that to one Gaussian over all the task's training features",
}

#: ``SpaceNetConfig.negatives``: what a task's head learns to score below its own images, with
#: no other task's data (``spacenet_jax.core.negatives``).
NEGATIVES: dict[str, str] = {
    "none": "only the cross-entropy on the task's images (the paper)",
    "rotations": "also each batch turned by a random quarter turn: the task's classes must "
    "score its upright images a margin above the turned ones (a CNN on square images)",
}

#: ``SpaceNetConfig.input_normalisation``: how uint8 pixels become the network's inputs
#: (``spacenet_jax.core.normalisation``).
INPUT_NORMALISATIONS: dict[str, str] = {
    "dataset": "(pixels / 255 - input_mean) / input_std, the dataset's one mean and sd (per "
    "channel for a CNN; the paper)",
    "per_pixel": "each input value centred on its own mean and divided by its own sd over the "
    "training images, fitted when the first task starts and fixed afterwards",
}

#: ``SpaceNetConfig.training_step``: how an epoch computes the current task's steps. Both give
#: the same updates, moments and Omega up to float rounding.
TRAINING_STEPS: dict[str, str] = {
    "auto": "subnetwork on the CPU where the configuration allows it, masked otherwise",
    "masked": "whole weight matrices, gradients and updates masked to the task's connections",
    "subnetwork": "only the task's blocks between its selected units, gathered to static "
    "shapes (sparse MLP methods; spacenet_jax.core.subnetwork)",
}


@dataclasses.dataclass(frozen=True)
class SpaceNetConfig:
    """Static configuration of SpaceNet on an MLP or a CNN.

    Attributes:
      layer_sizes: units per layer, input first, output (all classes of all tasks) last. In a
        CNN the first ``conv_layers + 1`` entries are channels / feature maps (the input's
        channels first), the rest dense neurons.
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
      output_columns: what happens to a finished task's output columns (its classes' weights
        from the last hidden layer) while later tasks train: ``"stored"`` (the paper's
        Algorithm 1, lines 14-15: moved aside, so a later task's loss sees earlier classes only
        through their frozen biases; restored for prediction) or ``"live"`` (kept in the
        network, frozen, so a later task's loss also sees the earlier classes' logits on its
        images and learns to beat them), or ``"reserved"`` (stored, after dropping the task's
        output connections from last-hidden units it did not reserve, which later tasks keep
        training). ``rehearsal`` always keeps them live.
      inference: one of ``INFERENCE``: how a learned network scores the classes, without task
        identity either way. ``"shared"`` (the paper) runs the whole network once; later tasks'
        connections into units an earlier task reads, and the biases they keep training, move
        that task's logits (its features drift). ``"per_task"`` scores task t's classes with
        the sub-network of the connections of tasks ``<= t`` and the biases as they were when t
        ended (kept in ``SpaceNetState.task_biases``), which later tasks never change: T forward
        passes instead of one, and every task's logits stay exactly what they were when it was
        learned. Training is the same. Only for the sparse methods that store output columns.
      task_scores: one of ``TASK_SCORES``, with ``inference="per_task"`` only: the scale on
        which each task's sub-network scores its classes (``spacenet_jax.core.task_scores``), from
        statistics of the task's own training images gathered when it ends. ``"logits"``
        (default) changes nothing.
      logit_weight: with a ``task_scores`` rule other than ``"logits"``, each class's raw logit
        added to its score with this weight (>= 0; 0, the default, is the rule alone). The
        rules put every task's scores on one scale; a little of the raw logit gives back the
        confidence of the sub-network itself (chosen on validation for split CIFAR-10's
        ``per_task`` preset).
      negatives: one of ``NEGATIVES``: ``"none"`` (the paper) or ``"rotations"``: every
        step also runs the batch turned by a random quarter turn, and adds ``negatives_weight``
        times the mean squared hinge ``max(0, margin + lse(turned) - lse(upright))^2`` on the
        logsumexp ``lse`` of the current task's own class logits
        (``spacenet_jax.core.negatives``), so that a task's head scores its own upright images
        above everything else it is shown, without other tasks' data; meant for
        ``inference="per_task"``, where the heads compete. A CNN on square images, with
        stored output columns only; twice the step's work.
      negatives_weight: the weight of that term (> 0).
      learning_rate, momentum, batch_size, epochs: plain SGD as in the paper.
      input_mean, input_std: inputs are ``(pixels / 255 - mean) / std``; a tuple gives one
        value per channel.
      input_normalisation: one of ``INPUT_NORMALISATIONS``: ``"dataset"`` (the paper) uses
        ``input_mean`` / ``input_std``; ``"per_pixel"`` ignores them and standardises every
        input value by its own mean and sd over the training images
        (``spacenet_jax.core.normalisation``; the two ``(D,)`` arrays live in the state).
      image_shape: ``(height, width, channels)`` of the (flattened, HWC) input images for a CNN;
        empty for an MLP on flat inputs.
      conv_layers: the first ``conv_layers`` weight layers are ``kernel_size`` x
        ``kernel_size`` convolutions (Section 5.3). Their unit of connection is a whole kernel
        between an input and an output feature map: masks, Omega and connection counts are per
        kernel, ``(in_maps, out_maps)``; neurons are feature maps.
      kernel_size: convolution kernel size.
      conv_padding: ``"SAME"`` or ``"VALID"`` per conv layer (empty: all ``"SAME"``).
      pool_after: conv layers (0-based) followed by a 2x2 max-pool of stride 2.
      validation_per_class: training examples of each class held out as a validation set
        (0: none). They are not trained on; after each task the network is evaluated on them
        beside the test set (``record["validation"]``), so that settings can be chosen without
        looking at the test set. Which examples are held out depends only on the labels and
        ``validation_seed`` (``storage.data.hold_out_validation``), not on the run's seed.
      validation_seed: seed of the validation draw.
      training_step: one of ``TRAINING_STEPS``: whether an epoch computes whole weight
        matrices and masks them (``"masked"``), or only the current task's blocks
        (``"subnetwork"``, the sparse backward pass; sparse methods on an MLP). The two give the
        same training up to float rounding; ``"auto"`` (default) takes the blocks on the CPU.

    ``selected_neurons[h]`` equal to the layer's width selects *every free* neuron (feature map)
    of that layer, as the paper does for its CNN.
    """

    layer_sizes: tuple[int, ...] = (784, 400, 400, 10)
    task_classes: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    connections_per_task: tuple[int, ...] = (10000, 1640, 80)
    selected_neurons: tuple[int, ...] = (80, 80)
    specific_neurons: tuple[int, ...] = (40, 40)
    rewire_ratio: float = 0.2
    method: str = "spacenet"
    replay_per_task: int = 0
    output_columns: str = "stored"
    inference: str = "shared"
    task_scores: str = "logits"
    logit_weight: float = 0.0
    negatives: str = "none"
    negatives_weight: float = 1.0
    learning_rate: float = 0.01
    momentum: float = 0.0
    batch_size: int = 128
    epochs: int = 4
    input_mean: float | tuple[float, ...] = 0.1307
    input_std: float | tuple[float, ...] = 0.3081
    input_normalisation: str = "dataset"
    image_shape: tuple[int, ...] = ()
    conv_layers: int = 0
    kernel_size: int = 3
    conv_padding: tuple[str, ...] = ()
    pool_after: tuple[int, ...] = ()
    validation_per_class: int = 0
    validation_seed: int = 0
    training_step: str = "auto"

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that the config stays hashable (jit-static).
        object.__setattr__(self, "layer_sizes", tuple(int(n) for n in self.layer_sizes))
        object.__setattr__(
            self, "task_classes", tuple(tuple(int(c) for c in t) for t in self.task_classes)
        )
        for name in (
            "connections_per_task", "selected_neurons", "specific_neurons", "image_shape",
            "pool_after",
        ):
            object.__setattr__(self, name, tuple(int(n) for n in getattr(self, name)))
        for name in ("input_mean", "input_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        padding = tuple(str(p).upper() for p in self.conv_padding) or ("SAME",) * self.conv_layers
        object.__setattr__(self, "conv_padding", padding)
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
    def is_cnn(self) -> bool:
        return self.conv_layers > 0

    def is_conv(self, layer: int) -> bool:
        """Whether weight layer ``layer`` is a convolution."""
        return layer < self.conv_layers

    @property
    def conv_output_shape(self) -> tuple[int, int, int]:
        """``(height, width, maps)`` after the last conv layer (and its pooling)."""
        height, width = self.image_shape[0], self.image_shape[1]
        for layer in range(self.conv_layers):
            if self.conv_padding[layer] == "VALID":
                height, width = height - self.kernel_size + 1, width - self.kernel_size + 1
            if layer in self.pool_after:
                height, width = height // 2, width // 2
        return height, width, self.layer_sizes[self.conv_layers]

    def mask_shape(self, layer: int) -> tuple[int, int]:
        """``(units_in, units_out)`` of a layer's connection arrays (owner, Omega).

        For a conv layer the units are feature maps (one entry per kernel); for the dense layer
        right after the convolutions the inputs are the flattened features (HWC order).
        """
        if self.is_cnn and layer == self.conv_layers:
            h, w, c = self.conv_output_shape
            return h * w * c, self.layer_sizes[layer + 1]
        return self.layer_sizes[layer], self.layer_sizes[layer + 1]

    def weight_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of a layer's weights: HWIO kernels for conv layers, else the mask shape."""
        if self.is_conv(layer):
            k = self.kernel_size
            return k, k, self.layer_sizes[layer], self.layer_sizes[layer + 1]
        return self.mask_shape(layer)

    def input_units(self, layer: int) -> np.ndarray | None:
        """For each input row of ``mask_shape(layer)``, its unit in unit layer ``layer``.

        ``None`` where rows and units coincide; for the first dense layer of a CNN, the feature
        map of each flattened feature (HWC order: feature ``i`` belongs to map ``i % maps``).
        """
        if self.is_cnn and layer == self.conv_layers:
            rows = self.mask_shape(layer)[0]
            return np.arange(rows) % self.layer_sizes[layer]
        return None

    def selects_all(self, hidden: int) -> bool:
        """Whether every free neuron of hidden layer ``hidden`` (0-based) is selected."""
        return self.selected_neurons[hidden] >= self.layer_sizes[hidden + 1]

    def positions(self, layer: int) -> int:
        """Connection positions of a layer (kernels for conv layers)."""
        rows, cols = self.mask_shape(layer)
        return rows * cols

    @property
    def sparse(self) -> bool:
        """Tasks get sparse connections and reserve neurons (SpaceNet and its variants)."""
        return self.method in ("spacenet", "static", "rehearsal")

    @property
    def has_task_blocks(self) -> bool:
        """A task's connections lie in blocks smaller than its layers, which
        ``training_step="subnetwork"`` trains alone: a sparse method on an MLP (the dense methods
        own every position, and a CNN selects every free feature map)."""
        return self.sparse and not self.is_cnn

    @property
    def rewire(self) -> bool:
        """Drop and grow after every epoch but the last (adaptive sparse training)."""
        return self.method in ("spacenet", "rehearsal")

    @property
    def replay(self) -> bool:
        """Each task also trains on earlier tasks' data (rehearsal)."""
        return self.method == "rehearsal"

    @property
    def stores_output_columns(self) -> bool:
        """A finished task's output columns are moved aside while later tasks train."""
        return self.sparse and not self.replay and self.output_columns != "live"

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


#: The command-line flag that sets each configuration field, for messages about differences.
FLAGS: dict[str, str] = {
    "layer_sizes": "--hidden, or --width / --dense for a CNN",
    "connections_per_task": "--connections, or --weights-per-task / --budget for a CNN",
    "selected_neurons": "--selected-neurons",
    "specific_neurons": "--specific-neurons",
    "rewire_ratio": "--rewire-ratio",
    "method": "--method",
    "replay_per_task": "--replay-per-task",
    "output_columns": "--output-columns",
    "inference": "--inference",
    "task_scores": "--task-scores",
    "logit_weight": "--logit-weight",
    "negatives": "--negatives",
    "negatives_weight": "--negatives-weight",
    "validation_per_class": "--validation",
    "validation_seed": "--validation-seed",
    "learning_rate": "--lr",
    "momentum": "--momentum",
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "training_step": "--training-step",
    "input_normalisation": "--input-normalisation",
}

#: Fields that come from the dataset, not from a flag.
DATASET_FIELDS = ("input_mean", "input_std", "image_shape", "task_classes")


def describe_differences(saved: dict, wanted: dict, saved_as: str = "saved",
                         wanted_as: str = "this run") -> list[str]:
    """People's words for how two ``to_dict()`` configurations differ: one item per flag
    (``"learning_rate (--lr): saved 0.05, this run 0.07"``, the two sides named by
    ``saved_as`` and ``wanted_as``), and one for a different dataset (pixel normalisation,
    image shape or classes), which no flag sets."""
    keys = sorted(set(saved) | set(wanted))
    differ = [k for k in keys if saved.get(k) != wanted.get(k)]
    items = []
    if any(k in DATASET_FIELDS for k in differ):
        items.append("the data (its image shape, pixel normalisation or task classes): it was "
                     "made on another dataset or benchmark")
    for k in differ:
        if k not in DATASET_FIELDS:
            flag = f" ({FLAGS[k]})" if k in FLAGS else ""
            items.append(f"{k}{flag}: {saved_as} {saved.get(k, '<absent>')!r}, {wanted_as} "
                         f"{wanted.get(k, '<absent>')!r}")
    return items


def as_saved(config: SpaceNetConfig) -> dict:
    """``config.to_dict()`` as JSON gives it back (tuples as lists): the form in which
    configurations are written to checkpoints and ``results.json`` and compared with saved
    ones (after ``with_default_fields``)."""
    return json_ready(config.to_dict())


def matches_saved(config: SpaceNetConfig, saved: object) -> bool:
    """Whether a saved configuration (a JSON dict, perhaps of an older version) is ``config``."""
    return with_default_fields(json_ready(saved)) == as_saved(config)


def with_default_fields(saved: dict) -> dict:
    """A saved ``to_dict()`` (JSON) with every field it lacks set to today's default, so that
    results and checkpoints written before a field existed still match a run that leaves the
    field at its default."""
    if not isinstance(saved, dict):
        return saved
    defaults = {
        f.name: f.default for f in dataclasses.fields(SpaceNetConfig)
        if f.default is not dataclasses.MISSING
    }
    return json_ready({**json_ready(defaults), **saved})


def json_ready(value):
    """Tuples as lists, recursively, as JSON gives them back."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


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
    if config.output_columns not in OUTPUT_COLUMNS:
        _fail(
            f"output_columns must be one of {', '.join(OUTPUT_COLUMNS)}, got "
            f"{config.output_columns!r}"
        )
    if config.input_normalisation not in INPUT_NORMALISATIONS:
        _fail(f"input_normalisation must be one of {', '.join(INPUT_NORMALISATIONS)}, got "
              f"{config.input_normalisation!r}")
    if config.inference not in INFERENCE:
        _fail(f"inference must be one of {', '.join(INFERENCE)}, got {config.inference!r}")
    if config.inference == "per_task" and not config.stores_output_columns:
        _fail(
            f"inference='per_task' needs task-owned connections and stored output columns "
            f"(method spacenet or static, output_columns stored or reserved); method "
            f"{config.method!r} with output_columns {config.output_columns!r} has none: use "
            f"inference='shared'"
        )
    if config.training_step not in TRAINING_STEPS:
        _fail(f"training_step must be one of {', '.join(TRAINING_STEPS)}, got "
              f"{config.training_step!r}")
    if config.training_step == "subnetwork" and not config.has_task_blocks:
        _fail(
            f"training_step='subnetwork' trains a sparse task's blocks of an MLP; method "
            f"{config.method!r}{' on a CNN' if config.is_cnn else ''} has none: use "
            f"training_step='masked' or 'auto'"
        )
    if config.validation_per_class < 0:
        _fail(
            f"validation_per_class must be >= 0 (0 holds out nothing), got "
            f"{config.validation_per_class}"
        )
    if config.task_scores not in TASK_SCORES:
        _fail(f"task_scores must be one of {', '.join(TASK_SCORES)}, got {config.task_scores!r}")
    if config.task_scores != "logits" and config.inference != "per_task":
        _fail(
            f"task_scores={config.task_scores!r} rescales each task's sub-network scores, which "
            f"only per-task inference has: add inference='per_task' (--inference per_task)"
        )
    if not (math.isfinite(config.logit_weight) and config.logit_weight >= 0):
        _fail(f"logit_weight must be a finite number >= 0, got {config.logit_weight}")
    if config.logit_weight and config.task_scores == "logits":
        _fail(
            f"logit_weight={config.logit_weight} adds the raw logit to a task_scores rule's "
            f"score, and task_scores='logits' is the raw logit already: choose a rule "
            f"(--task-scores mahalanobis_relative, for instance) or logit_weight=0"
        )
    if config.negatives not in NEGATIVES:
        _fail(f"negatives must be one of {', '.join(NEGATIVES)}, got {config.negatives!r}")
    if config.negatives != "none":
        square = len(config.image_shape) == 3 and config.image_shape[0] == config.image_shape[1]
        if not (config.is_cnn and square):
            network = f"a CNN on {config.image_shape} images" if config.is_cnn else "an MLP"
            _fail(
                f"negatives={config.negatives!r} turns the input images, which needs a CNN on "
                f"square images; this network is {network}: use negatives='none'"
            )
        if not config.stores_output_columns:
            _fail(
                f"negatives={config.negatives!r} trains the current task's own classes against "
                f"its turned images, which needs a sparse method that stores finished tasks' "
                f"output columns (spacenet or static); method {config.method!r} with "
                f"output_columns {config.output_columns!r} has none: use negatives='none'"
            )
        if not config.negatives_weight > 0:
            _fail(f"negatives_weight must be > 0, got {config.negatives_weight}")
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
    if config.rewire and config.rewire_ratio == 0.0:
        _fail(
            f"rewire_ratio=0 never drops or grows a connection, which is Static-SparseNN: use "
            f"method 'static' (--method static), or a ratio in (0, 1) for {config.method}"
        )
    if config.learning_rate <= 0:
        _fail(f"learning_rate must be positive, got {config.learning_rate}")
    if not 0.0 <= config.momentum < 1.0:
        _fail(f"momentum must be in [0, 1), got {config.momentum}")
    if config.batch_size <= 0 or config.epochs <= 0:
        _fail(f"batch_size and epochs must be positive, got {config.batch_size}, {config.epochs}")
    _validate_cnn(config)
    _validate_normalisation(config)

    # Classes: in range, non-empty tasks, no class in two tasks.
    if not config.task_classes:
        _fail("task_classes is empty: give at least one task")
    seen: dict[int, int] = {}
    for t, classes in enumerate(config.task_classes):
        if not classes:
            _fail(f"task {t + 1} has no classes")
        for c in classes:
            if not 0 <= c < sizes[-1]:
                _fail(
                    f"task {t + 1} names class {c} but the output layer has {sizes[-1]} units "
                    f"(classes 0..{sizes[-1] - 1}); enlarge layer_sizes[-1] or fix task_classes"
                )
            if c in seen:
                _fail(
                    f"class {c} appears in task {seen[c] + 1} and task {t + 1}: tasks must not "
                    f"overlap"
                )
            seen[c] = t
    unused = sorted(set(range(sizes[-1])) - set(seen))
    if unused:
        _fail(
            f"the output layer has {sizes[-1]} units but no task names classes {unused}: every "
            f"class must belong to a task (or shrink layer_sizes[-1] to the classes used)"
        )

    for layer in range(L):  # positions are int32 (top-k, indices): refuse what overflows
        count = math.prod(config.weight_shape(layer))
        if count > MAX_WEIGHTS_PER_LAYER:
            _fail(
                f"weight matrix {layer + 1} would hold {count:,} weights "
                f"{config.weight_shape(layer)}, more than the {MAX_WEIGHTS_PER_LAYER:,} that "
                f"int32 positions can address (and far more than fits in memory); choose "
                f"smaller layer sizes"
            )

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
        free_at_last = free_neurons_before(config, h, T - 1)
        need = max(spec, 1) if config.selects_all(h) else sel
        if free_at_last < need:
            last = (n - need) // spec if spec else T
            _fail(
                f"hidden layer {h + 1}: task {T} (the last) needs {need} free neurons but "
                f"only {free_at_last} of {n} remain after {T - 1} tasks reserve {spec} each; "
                f"only {last + 1} tasks fit. Lower specific_neurons or selected_neurons, or "
                f"widen the layer"
            )

    # Connections: each task's count must fit between its selected neurons, with room to grow.
    # (An optimistic check: positions earlier tasks took are found, if short, during the run.)
    for layer in range(L):
        count = config.connections_per_task[layer]
        if count <= 0:
            _fail(
                f"weight matrix {layer + 1}: connections_per_task[{layer}] must be positive, "
                f"got {count}"
            )
        for t in range(config.num_tasks):
            fan_in, fan_out = selected_fan(config, layer, t)
            _, k, positions = task_connections(config, layer, t)
            if count + k > positions:
                unit = "kernels" if config.is_conv(layer) else "connections"
                _fail(
                    f"weight matrix {layer + 1}, task {t + 1}: {count} {unit} (+{k} for regrowth) "
                    f"do not "
                    f"fit in the {positions} positions between {fan_in} and {fan_out} selected "
                    f"units; lower connections_per_task[{layer}] or rewire_ratio, or select "
                    f"more neurons"
                )


def free_neurons_before(config: SpaceNetConfig, hidden: int, task: int) -> int:
    """Free neurons of hidden layer ``hidden`` (0-based) when task ``task`` (0-based) starts:
    its size less what the earlier tasks reserved (dense methods reserve nothing)."""
    spec = config.specific_neurons[hidden] if config.sparse else 0
    return config.layer_sizes[hidden + 1] - task * spec


def task_connections(config: SpaceNetConfig, layer: int, task: int) -> tuple[int, int, int]:
    """``(connections, regrowth, positions)`` of weight matrix ``layer`` for task ``task``: the
    task's connections (kernels for conv layers), the ones regrown per rewiring, and the
    positions between the task's selected units they must fit in with the regrowth
    (``connections + regrowth <= positions``). Dense methods claim every position."""
    if not config.sparse:
        fan_in, fan_out = config.mask_shape(layer)
        return fan_in * fan_out, 0, fan_in * fan_out
    fan_in, fan_out = selected_fan(config, layer, task)
    return config.connections_per_task[layer], config.rewire_counts[layer], fan_in * fan_out


def selected_count(config: SpaceNetConfig, hidden: int, task: int) -> int:
    """How many neurons of hidden layer ``hidden`` (0-based) task ``task`` selects: ``sel``, or
    every free one (the layer minus what ``task`` earlier tasks reserved)."""
    if config.selects_all(hidden):
        n = config.layer_sizes[hidden + 1]
        return n - task * config.specific_neurons[hidden]
    return config.selected_neurons[hidden]


def selected_fan(config: SpaceNetConfig, layer: int, task: int) -> tuple[int, int]:
    """``(fan_in, fan_out)``: the rows and columns of weight matrix ``layer`` between task
    ``task``'s selected units (every input; the task's classes at the output), so the task's
    connections must fit in ``fan_in * fan_out`` positions (kernels for conv layers)."""
    last = config.num_layers - 1
    fan_in = config.mask_shape(0)[0] if layer == 0 else selected_count(config, layer - 1, task)
    if config.input_units(layer) is not None:  # the flattened features of the maps
        h, w, _ = config.conv_output_shape
        fan_in *= h * w
    fan_out = (
        len(config.task_classes[task]) if layer == last else selected_count(config, layer, task)
    )
    return fan_in, fan_out


def _validate_cnn(config: SpaceNetConfig) -> None:
    if config.conv_layers < 0 or config.conv_layers >= config.num_layers:
        _fail(
            f"conv_layers={config.conv_layers} must be in 0..{config.num_layers - 1} (the "
            f"output layer is dense)"
        )
    if not config.is_cnn:
        return
    if len(config.image_shape) != 3 or min(config.image_shape) <= 0:
        _fail(f"a CNN needs image_shape=(height, width, channels), got {config.image_shape}")
    if config.image_shape[2] != config.layer_sizes[0]:
        _fail(
            f"image_shape has {config.image_shape[2]} channels but layer_sizes[0]="
            f"{config.layer_sizes[0]}; they must agree"
        )
    if config.kernel_size <= 0:
        _fail(f"kernel_size must be positive, got {config.kernel_size}")
    if len(config.conv_padding) != config.conv_layers or not set(config.conv_padding) <= {
        "SAME", "VALID"
    }:
        _fail(
            f"conv_padding must give SAME or VALID for each of the {config.conv_layers} conv "
            f"layers, got {config.conv_padding}"
        )
    if any(not 0 <= p < config.conv_layers for p in config.pool_after):
        _fail(f"pool_after names conv layers 0..{config.conv_layers - 1}, got {config.pool_after}")
    h, w, _ = config.conv_output_shape
    if h <= 0 or w <= 0:
        _fail(
            f"images of {config.image_shape[:2]} shrink to {h}x{w} through the conv layers; use "
            f"SAME padding or fewer pools"
        )


def _validate_normalisation(config: SpaceNetConfig) -> None:
    channels = config.image_shape[2] if config.is_cnn else None
    for name in ("input_mean", "input_std"):
        value = getattr(config, name)
        if isinstance(value, tuple) and len(value) != channels:
            _fail(
                f"{name} has {len(value)} values; give one float, or one per channel of a CNN's "
                f"images ({channels})"
            )
    stds = config.input_std if isinstance(config.input_std, tuple) else (config.input_std,)
    if min(stds) <= 0:
        _fail(f"input_std must be positive, got {config.input_std}")


def parse_int_list(text: str | Sequence[int]) -> tuple[int, ...]:
    """'80,80' or [80, 80] -> (80, 80)."""
    if isinstance(text, str):
        return tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    return tuple(int(p) for p in text)

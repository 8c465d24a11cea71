"""The paper's CNN (Section 5.3) as a SpaceNet configuration, and its command-line flags.

Conv 32-32 (3x3), 2x2 max-pool, conv 64-64 (3x3), 2x2 max-pool, dense 512, sparse output; the
padding follows the Keras CIFAR-10 network of Zenke et al. that the paper uses (SAME, VALID,
SAME, VALID), so the dense layer sees 6 x 6 x 64 features. 12% of the weights per task, read by
one of two rules (``--budget``, see ``layer_budget``): ``layer``, 12% of each hidden layer's
kernels / weights, or ``erk``, a global budget of 12% of the hidden layers' weights spread with
Erdos-Renyi-Kernel densities; at the output, under both, 12% of the weights into the task's own
classes. Every free feature map / neuron is selected for each task, and 2, 2, 5, 6, 30 maps /
neurons are reserved per task; SGD with learning rate 0.1, 20 epochs per task. The larger
variant (``--width wide``) has 64-64-128-128 feature maps.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence

from spacenet_jax.core.config import ConfigError, SpaceNetConfig, parse_int_list, selected_fan

#: Feature maps of the four conv layers: the paper's network and its larger variant.
WIDTHS: dict[str, tuple[int, ...]] = {"paper": (32, 32, 64, 64), "wide": (64, 64, 128, 128)}
#: CIFAR-10 training-set channel statistics (RGB), for ``(pixels / 255 - mean) / std``.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SPECIFIC = (2, 2, 5, 6, 30)
WEIGHTS_PER_TASK = 0.12
#: How ``weights_per_task`` becomes per-layer connection counts (``layer_budget``).
BUDGETS: dict[str, str] = {
    "layer": "the fraction of each hidden layer's connections (kernels for conv layers)",
    "erk": "a global budget of the fraction of all hidden weights, spread over the hidden "
    "layers with Erdos-Renyi-Kernel densities, each layer capped so that every task fits",
}
#: The rule used when none is named (``cnn_config``'s and ``--budget``'s default).
DEFAULT_BUDGET = "layer"


def task_cap(last_block: int, num_tasks: int, rewire_ratio: float) -> int:
    """The most connections per task that a layer can guarantee to every task of a sequence.

    The largest ``count`` (at least 1) with ``num_tasks * count + round(rewire_ratio * count)
    <= last_block``, about ``last_block / (num_tasks + rewire_ratio)``, where ``last_block`` is
    the number of positions between the last task's selected units (``selected_fan`` of task
    ``num_tasks - 1``; kernels for conv layers). Why: a position belongs to one task at a time
    and earlier tasks keep theirs, so when task ``t`` starts, the ``t`` earlier tasks may own up
    to ``t * count`` positions inside its block; the task needs ``count`` free positions there
    plus ``k = round(r * count)`` more to regrow into (a dropped position is not regrown in the
    same rewiring): ``(t + 1) * count + k <= block(t)``. Blocks only shrink as units are
    reserved, so the last task binds. This holds wherever the earlier tasks' positions lie.
    The looser ``positions / (num_tasks * (1 + r))`` over the whole layer does not: earlier
    tasks' positions can fill the shrinking block (split CIFAR-10 run through this project's
    allocation and reservation, with a stand-in importance and no training, left conv2-4 of
    the last task short).
    """
    count = math.floor((last_block + 0.5) / (num_tasks + rewire_ratio)) + 1
    while count > 1 and num_tasks * count + round(rewire_ratio * count) > last_block:
        count -= 1
    return count


def layer_budget(
    weight_shapes: Sequence[Sequence[int]],
    rule: str,
    fraction: float,
    num_tasks: int,
    rewire_ratio: float,
    last_blocks: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Connections per task in each hidden weight layer (kernels for conv layers).

    A layer's weight shape is ``(k_h, k_w, n_in, n_out)`` for a conv layer, ``(n_in, n_out)``
    for a dense one (``n_in`` of the first dense layer after the convolutions is the flattened
    features, 6 * 6 * 64 = 2304 in the paper's CNN); a connection joins an input and an output
    unit, so it holds ``k_h * k_w`` weights in a conv layer, one in a dense layer, and the layer
    has ``P_l = n_in * n_out`` connection positions and ``W_l = prod(shape_l)`` weights.

    * ``"layer"``: ``max(1, round(fraction * P_l))`` in every layer (no cap).
    * ``"erk"``: a global budget of ``B = fraction * sum_l W_l`` weights spread with
      Erdos-Renyi-Kernel densities (Evci et al. 2020), ``d_l = eps * sum(shape_l) /
      prod(shape_l)``: ``eps * (n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)`` for a
      conv layer, ``eps * (n_in + n_out) / (n_in * n_out)`` for a dense one, with ``eps`` such
      that ``sum_l d_l W_l = B`` (so layer ``l`` gets ``eps * sum(shape_l)`` weights). A layer
      whose share exceeds its cap ``task_cap(last_blocks[l], num_tasks, rewire_ratio)``
      connections gets the cap, and the rest of the budget is spread again over the uncapped
      layers (``eps`` recomputed) until no layer exceeds its cap. Counts are ``d_l W_l / (k_h
      k_w)``, rounded, at least 1: the total is ``B`` up to rounding unless every layer is
      capped (then it is the sum of the caps, less than ``B``).

    Args:
      last_blocks: per layer, the positions between the last task's selected units (default:
        ``P_l``, right when no unit is ever reserved).

    Returns:
      one count per layer of ``weight_shapes``.
    """
    shapes = [tuple(int(n) for n in shape) for shape in weight_shapes]
    positions = [shape[-2] * shape[-1] for shape in shapes]
    if rule == "layer":
        return tuple(max(1, round(fraction * p)) for p in positions)
    if rule != "erk":
        raise ValueError(f"unknown budget rule {rule!r}: choose one of {', '.join(BUDGETS)}")
    blocks = positions if last_blocks is None else [int(b) for b in last_blocks]
    caps = [task_cap(b, num_tasks, rewire_ratio) for b in blocks]
    per_connection = [math.prod(shape[:-2]) for shape in shapes]
    budget = fraction * sum(math.prod(shape) for shape in shapes)
    layers = range(len(shapes))
    capped: set[int] = set()
    eps = 0.0
    while len(capped) < len(shapes):
        rest = budget - sum(caps[i] * per_connection[i] for i in capped)
        eps = max(rest, 0.0) / sum(sum(shapes[i]) for i in layers if i not in capped)
        over = {
            i for i in layers
            if i not in capped and eps * sum(shapes[i]) > caps[i] * per_connection[i]
        }
        if not over:
            break
        capped |= over
    return tuple(
        caps[i] if i in capped
        else min(caps[i], max(1, round(eps * sum(shapes[i]) / per_connection[i])))
        for i in layers
    )


def cnn_config(
    task_classes: Sequence[Sequence[int]],
    num_outputs: int,
    *,
    maps: Sequence[int] = WIDTHS["paper"],
    dense: Sequence[int] = (512,),
    weights_per_task: float = WEIGHTS_PER_TASK,
    budget: str = DEFAULT_BUDGET,
    connections: Sequence[int] | None = None,
    selected: Sequence[int] | None = None,
    specific: Sequence[int] = SPECIFIC,
    **hyper,
) -> SpaceNetConfig:
    """A SpaceNet CNN on 32x32 RGB images.

    Args:
      task_classes: classes of each task; num_outputs: units of the shared output layer.
      maps: feature maps of the four 3x3 conv layers; dense: hidden dense layer sizes.
      weights_per_task: fraction of the weights allocated to every task, in the hidden layers
        as ``budget`` says (``layer_budget``); at the output, of the positions between the last
        hidden layer and the task's classes. Used unless ``connections`` gives the counts.
      budget: ``"layer"`` (the fraction of each hidden layer) or ``"erk"`` (a global budget
        spread with Erdos-Renyi-Kernel densities); see ``BUDGETS`` and ``layer_budget``. The
        ``erk`` caps use ``rewire_ratio`` whatever the method, so that ``static`` and
        ``spacenet`` get the same counts.
      selected: selected maps / neurons per hidden layer (default: every free one).
      specific: maps / neurons reserved per hidden layer after each task.
      **hyper: other ``SpaceNetConfig`` fields (method, learning_rate, epochs, ...).
    """
    maps, dense = tuple(maps), tuple(dense)
    if len(maps) != 4:
        raise ValueError(f"the paper's CNN has four conv layers, got maps={maps}")
    sizes = (3, *maps, *dense, num_outputs)
    hidden = sizes[1:-1]
    selected = tuple(selected) if selected is not None else hidden
    hyper = {"learning_rate": 0.1, "epochs": 20, **hyper}
    shape_only = SpaceNetConfig(  # dense method: no sparsity checks, just the layer shapes
        layer_sizes=sizes, task_classes=tuple(map(tuple, task_classes)),
        connections_per_task=(1,) * (len(sizes) - 1), selected_neurons=selected,
        specific_neurons=tuple(specific), image_shape=(32, 32, 3), conv_layers=4,
        conv_padding=("SAME", "VALID", "SAME", "VALID"), pool_after=(1, 3),
        input_mean=CIFAR_MEAN, input_std=CIFAR_STD,
        **{**hyper, "method": "finetune", "inference": "shared"},
    )
    if connections is None:
        # Hidden layers: by the budget rule. Output layer (both rules): a fraction of the block
        # between the last hidden layer and one task's classes, the only weights a task can use
        # (a fraction of all 512 x 60 outputs would not fit CIFAR-10/100's later tasks).
        last = shape_only.num_layers - 1
        task_block = shape_only.mask_shape(last)[0] * max(len(c) for c in task_classes)
        last_task = shape_only.num_tasks - 1
        hidden_counts = layer_budget(
            [shape_only.weight_shape(layer) for layer in range(last)], budget,
            weights_per_task, shape_only.num_tasks, shape_only.rewire_ratio,
            [math.prod(selected_fan(shape_only, layer, last_task)) for layer in range(last)],
        )
        connections = (*hidden_counts, max(1, round(weights_per_task * task_block)))
    return dataclasses.replace(
        shape_only,
        connections_per_task=tuple(connections),
        method=hyper.get("method", "spacenet"),
        inference=hyper.get("inference", "shared"),
    )


def parse_width(text: str) -> tuple[int, ...]:
    """'paper', 'wide' or four comma-separated map counts."""
    if text in WIDTHS:
        return WIDTHS[text]
    try:
        maps = parse_int_list(text)
    except ValueError:
        maps = ()
    if len(maps) != 4 or min(maps) <= 0:
        raise argparse.ArgumentTypeError(
            f"bad --width {text!r}: use 'paper' (32,32,64,64), 'wide' (64,64,128,128) or four "
            f"positive map counts such as 48,48,96,96"
        )
    return maps


def add_cnn_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("CNN")
    g.add_argument("--width", type=parse_width, default=WIDTHS["paper"],
                   help="feature maps of the conv layers: paper (32,32,64,64), wide "
                   "(64,64,128,128), or four numbers")
    g.add_argument("--dense", type=parse_int_list, default=(512,),
                   help="hidden dense layer sizes after the conv layers")
    g.add_argument("--weights-per-task", type=float, default=WEIGHTS_PER_TASK,
                   help="fraction of the weights allocated per task, per layer or globally as "
                   "--budget says (at the output, of the weights into the task's classes)")
    g.add_argument("--budget", choices=list(BUDGETS), default=DEFAULT_BUDGET,
                   help="how --weights-per-task becomes per-layer counts: "
                   + "; ".join(f"{k}: {v}" for k, v in BUDGETS.items()))


def cnn_config_from_args(args: argparse.Namespace, defaults: SpaceNetConfig) -> SpaceNetConfig:
    if not 0 < args.weights_per_task <= 1:
        raise ConfigError(f"--weights-per-task must be in (0, 1], got {args.weights_per_task}")
    config = cnn_config(
        defaults.task_classes, defaults.num_classes, maps=args.width, dense=args.dense,
        weights_per_task=args.weights_per_task, budget=args.budget,
        connections=args.connections,
        selected=args.selected_neurons, specific=args.specific_neurons,
        rewire_ratio=args.rewire_ratio, method=args.method,
        replay_per_task=args.replay_per_task, output_columns=args.output_columns,
        inference=args.inference, learning_rate=args.lr, momentum=args.momentum,
        batch_size=args.batch_size, epochs=args.epochs,
    )
    return dataclasses.replace(config, training_step=args.training_step)

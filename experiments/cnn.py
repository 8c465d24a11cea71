"""The paper's CNN (Section 5.3) as a SpaceNet configuration, and its command-line flags.

Conv 32-32 (3x3), 2x2 max-pool, conv 64-64 (3x3), 2x2 max-pool, dense 512, sparse output; the
padding follows the Keras CIFAR-10 network of Zenke et al. that the paper uses (SAME, VALID,
SAME, VALID), so the dense layer sees 6 x 6 x 64 features. 12% of each layer's weights per task
(kernels for conv layers; at the output, of the weights into the task's own classes), every
free feature map / neuron selected for each task, and 2, 2, 5, 6, 30 maps / neurons reserved
per task; SGD with learning rate 0.1, 20 epochs per task. The
larger variant (``--width wide``) has 64-64-128-128 feature maps.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from spacenet_jax.config import ConfigError, SpaceNetConfig, parse_int_list

#: Feature maps of the four conv layers: the paper's network and its larger variant.
WIDTHS: dict[str, tuple[int, ...]] = {"paper": (32, 32, 64, 64), "wide": (64, 64, 128, 128)}
#: CIFAR-10 training-set channel statistics (RGB), for ``(pixels / 255 - mean) / std``.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SPECIFIC = (2, 2, 5, 6, 30)
WEIGHTS_PER_TASK = 0.12


def cnn_config(
    task_classes: Sequence[Sequence[int]],
    num_outputs: int,
    *,
    maps: Sequence[int] = WIDTHS["paper"],
    dense: Sequence[int] = (512,),
    weights_per_task: float = WEIGHTS_PER_TASK,
    connections: Sequence[int] | None = None,
    selected: Sequence[int] | None = None,
    specific: Sequence[int] = SPECIFIC,
    **hyper,
) -> SpaceNetConfig:
    """A SpaceNet CNN on 32x32 RGB images.

    Args:
      task_classes: classes of each task; num_outputs: units of the shared output layer.
      maps: feature maps of the four 3x3 conv layers; dense: hidden dense layer sizes.
      weights_per_task: fraction of each hidden layer's connection positions (kernels for conv
        layers) allocated to every task; at the output, of the positions between the last
        hidden layer and the task's classes. Used unless ``connections`` gives the counts.
      selected: selected maps / neurons per hidden layer (default: every free one).
      specific: maps / neurons reserved per hidden layer after each task.
      **hyper: other ``SpaceNetConfig`` fields (method, learning_rate, epochs, ...).
    """
    maps, dense = tuple(maps), tuple(dense)
    if len(maps) != 4:
        raise ValueError(f"the paper's CNN has four conv layers, got maps={maps}")
    sizes = (3, *maps, *dense, num_outputs)
    hidden = sizes[1:-1]
    hyper = {"learning_rate": 0.1, "epochs": 20, **hyper}
    shape_only = SpaceNetConfig(  # dense method: no sparsity checks, just the layer shapes
        layer_sizes=sizes, task_classes=tuple(map(tuple, task_classes)),
        connections_per_task=(1,) * (len(sizes) - 1), selected_neurons=hidden,
        specific_neurons=tuple(specific), image_shape=(32, 32, 3), conv_layers=4,
        conv_padding=("SAME", "VALID", "SAME", "VALID"), pool_after=(1, 3),
        input_mean=CIFAR_MEAN, input_std=CIFAR_STD, **{**hyper, "method": "finetune"},
    )
    if connections is None:
        # Hidden layers: a fraction of all the layer's positions. Output layer: of the block
        # between the last hidden layer and one task's classes, the only weights a task can use
        # (a fraction of all 512 x 60 outputs would not fit CIFAR-10/100's later tasks).
        last = shape_only.num_layers - 1
        task_block = shape_only.mask_shape(last)[0] * max(len(c) for c in task_classes)
        connections = tuple(
            max(1, round(weights_per_task * (
                task_block if layer == last else shape_only.positions(layer)
            )))
            for layer in range(shape_only.num_layers)
        )
    return dataclasses.replace(
        shape_only,
        connections_per_task=tuple(connections),
        selected_neurons=tuple(selected) if selected is not None else hidden,
        method=hyper.get("method", "spacenet"),
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
                   help="fraction of each layer's weights (kernels) allocated per task")


def cnn_config_from_args(args: argparse.Namespace, defaults: SpaceNetConfig) -> SpaceNetConfig:
    if not 0 < args.weights_per_task <= 1:
        raise ConfigError(f"--weights-per-task must be in (0, 1], got {args.weights_per_task}")
    return cnn_config(
        defaults.task_classes, defaults.num_classes, maps=args.width, dense=args.dense,
        weights_per_task=args.weights_per_task, connections=args.connections,
        selected=args.selected_neurons, specific=args.specific_neurons,
        rewire_ratio=args.rewire_ratio, method=args.method,
        replay_per_task=args.replay_per_task, learning_rate=args.lr, momentum=args.momentum,
        batch_size=args.batch_size, epochs=args.epochs,
    )

"""Split MNIST (paper Section 5.1): five two-class tasks, one shared 10-way output layer.

    python -m experiments.split_mnist --seed 3
    python -m experiments.split_mnist --seeds 0-4 --data-dir ../shared/datasets --out runs/mnist
    python -m experiments.split_mnist --preset tuned --seeds 0-9 --data-dir ../shared/datasets
    python -m experiments.split_mnist --preset tuned_dataset_normalisation --seeds 0-9
    python -m experiments.split_mnist --preset tuned_rehearsal --seeds 0-9
"""

from __future__ import annotations

import dataclasses

from experiments.common import command_line_process, main
from spacenet_jax.core.config import SpaceNetConfig

#: The paper's split MNIST setup (the defaults of SpaceNetConfig).
SPLIT_MNIST = SpaceNetConfig()

#: The paper's method with the settings chosen on a validation split (500 training images per
#: class held out, seeds 0-9, ``python -m experiments.sweep``; README, "Hyper-parameter
#: sweeps"): 55 instead of 80 selected neurons per hidden layer, 100 instead of 80 output
#: connections per task, rewire ratio 0.35 instead of 0.2, every input value standardised by
#: its own mean and sd over the training images (``input_normalisation="per_pixel"``) and
#: learning rate 0.02 instead of 0.01, 4 epochs per task as in the paper (validation
#: 84.70 +- 0.86 % against 75.65 +- 2.90 for the earlier preset and 70.88 +- 4.42 for the
#: paper's settings).
SPLIT_MNIST_TUNED = dataclasses.replace(
    SPLIT_MNIST, selected_neurons=(55, 55), connections_per_task=(10000, 1640, 100),
    rewire_ratio=0.35, input_normalisation="per_pixel", learning_rate=0.02,
)

#: The earlier preset (2026-12-06): the same structure with 3 epochs, learning rate 0.01 and
#: the dataset's one mean and sd.
SPLIT_MNIST_TUNED_DATASET_NORMALISATION = dataclasses.replace(
    SPLIT_MNIST, selected_neurons=(55, 55), connections_per_task=(10000, 1640, 100),
    rewire_ratio=0.35, epochs=3,
)

#: SpaceNet-Rehearsal with the settings chosen on the validation split (seeds 0-9; README,
#: "Where the figures differ from the paper"): learning rate 0.1 instead of 0.01 and 8 epochs
#: per task instead of 4, the paper's budget otherwise (validation 95.68 +- 0.30 % against
#: 87.85 on seeds 0-4 at the paper's settings).
SPLIT_MNIST_TUNED_REHEARSAL = dataclasses.replace(
    SPLIT_MNIST, method="rehearsal", learning_rate=0.1, epochs=8,
)

PRESETS = {"paper": SPLIT_MNIST, "tuned": SPLIT_MNIST_TUNED,
           "tuned_dataset_normalisation": SPLIT_MNIST_TUNED_DATASET_NORMALISATION,
           "tuned_rehearsal": SPLIT_MNIST_TUNED_REHEARSAL}

if __name__ == "__main__":
    with command_line_process():
        main("split_mnist", "mnist", __doc__.splitlines()[0], SPLIT_MNIST, presets=PRESETS)

"""Split Fashion-MNIST (paper Section 5.2): five tasks of two consecutive classes, 10-way output.

The paper uses the same architecture and settings as split MNIST; the inputs are normalised with
Fashion-MNIST's own training-set mean and standard deviation.

    python -m experiments.split_fashion_mnist --seed 3
    python -m experiments.split_fashion_mnist --seeds 0-9 --data-dir ../shared/datasets \
        --out runs/fmnist
    python -m experiments.split_fashion_mnist --preset tuned --seeds 0-9
    python -m experiments.split_fashion_mnist --preset tuned_dataset_normalisation --seeds 0-9
    python -m experiments.split_fashion_mnist --preset tuned_rehearsal --seeds 0-9
"""

from __future__ import annotations

import dataclasses

from experiments.common import command_line_process, main
from experiments.split_mnist import SPLIT_MNIST

#: Split MNIST's setup; only the input statistics differ (Fashion-MNIST's training set).
SPLIT_FASHION_MNIST = dataclasses.replace(SPLIT_MNIST, input_mean=0.2860, input_std=0.3530)

#: Settings chosen on Fashion-MNIST's own validation split (500 images per class held out,
#: ``python -m experiments.sweep``; README, "Hyper-parameter sweeps"): the paper's network and
#: budget with every input value standardised by its own mean and sd over the training images
#: (``input_normalisation="per_pixel"``) instead of one mean and sd, 3 epochs per task instead
#: of 4, and learning rate 0.04 instead of 0.01: 71.41 +- 1.26 % over seeds 0-9, against
#: 64.53 +- 3.42 for the same schedule at learning rate 0.0228 with the dataset's one mean and
#: sd (the earlier preset, ``SPLIT_FASHION_MNIST_TUNED_DATASET_NORMALISATION``) and
#: 60.78 +- 4.45 for the paper's settings.
SPLIT_FASHION_MNIST_TUNED = dataclasses.replace(SPLIT_FASHION_MNIST, epochs=3,
                                                learning_rate=0.04,
                                                input_normalisation="per_pixel")

#: The earlier preset (2026-12-06): 3 epochs, learning rate 0.0228, the dataset's mean and sd.
SPLIT_FASHION_MNIST_TUNED_DATASET_NORMALISATION = dataclasses.replace(
    SPLIT_FASHION_MNIST, epochs=3, learning_rate=0.0228,
)

#: SpaceNet-Rehearsal with the learning rate chosen on the validation split (seeds 0-9; README,
#: "Where the figures differ from the paper"): 0.1 instead of 0.01, the paper's settings
#: otherwise (validation 84.69 +- 0.42 % against 81.02 on seeds 0-4 at the paper's settings;
#: 0.3 gave 84.56 +- 1.57).
SPLIT_FASHION_MNIST_TUNED_REHEARSAL = dataclasses.replace(
    SPLIT_FASHION_MNIST, method="rehearsal", learning_rate=0.1,
)

PRESETS = {"paper": SPLIT_FASHION_MNIST, "tuned": SPLIT_FASHION_MNIST_TUNED,
           "tuned_dataset_normalisation": SPLIT_FASHION_MNIST_TUNED_DATASET_NORMALISATION,
           "tuned_rehearsal": SPLIT_FASHION_MNIST_TUNED_REHEARSAL}

if __name__ == "__main__":
    with command_line_process():
        main("split_fashion_mnist", "fashion_mnist", __doc__.splitlines()[0], SPLIT_FASHION_MNIST,
             presets=PRESETS)

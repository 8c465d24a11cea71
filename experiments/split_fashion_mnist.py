"""Split Fashion-MNIST (paper Section 5.2): five tasks of two consecutive classes, 10-way output.

The paper uses the same architecture and settings as split MNIST; the inputs are normalised with
Fashion-MNIST's own training-set mean and standard deviation.

    python -m experiments.split_fashion_mnist --seed 3
    python -m experiments.split_fashion_mnist --seeds 0-9 --data-dir ../shared/datasets \
        --out runs/fmnist
"""

from __future__ import annotations

import dataclasses

from experiments.common import main
from experiments.split_mnist import SPLIT_MNIST

#: Split MNIST's setup; only the input statistics differ (Fashion-MNIST's training set).
SPLIT_FASHION_MNIST = dataclasses.replace(SPLIT_MNIST, input_mean=0.2860, input_std=0.3530)

if __name__ == "__main__":
    main("split_fashion_mnist", "fashion_mnist", __doc__.splitlines()[0], SPLIT_FASHION_MNIST)

"""Split MNIST (paper Section 5.1): five two-class tasks, one shared 10-way output layer.

    python -m experiments.split_mnist --seed 3
    python -m experiments.split_mnist --seeds 0-4 --data-dir ../shared/datasets --out runs/mnist
"""

from __future__ import annotations

from experiments.common import main
from spacenet_jax.core.config import SpaceNetConfig

#: The paper's split MNIST setup (the defaults of SpaceNetConfig).
SPLIT_MNIST = SpaceNetConfig()

if __name__ == "__main__":
    main("split_mnist", "mnist", __doc__.splitlines()[0], SPLIT_MNIST)

"""Split CIFAR-10: five tasks of two CIFAR-10 classes each, on the paper's CNN (Section 5.3).

Runs offline from the publisher's binary batches (``--data-dir`` holding
``cifar10/cifar-10-batches-bin``).

    python -m experiments.split_cifar10 --seed 3
    python -m experiments.split_cifar10 --seed 3 --epochs 5 --data-dir ../shared/datasets \
        --out runs/c10
"""

from __future__ import annotations

from experiments.cnn import add_cnn_arguments, cnn_config, cnn_config_from_args
from experiments.common import main

#: The paper's CNN and settings on five two-class tasks of CIFAR-10 (10 outputs).
SPLIT_CIFAR10 = cnn_config(((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)), 10)

if __name__ == "__main__":
    main(
        "split_cifar10", "cifar10", __doc__.splitlines()[0], SPLIT_CIFAR10,
        add_arguments=add_cnn_arguments, make_config=cnn_config_from_args,
    )

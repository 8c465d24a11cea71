"""CIFAR-10/100 (paper Section 5.3): all of CIFAR-10, then CIFAR-100 classes 0-9, ..., 40-49.

Six tasks of ten classes on one shared 60-way output layer (CIFAR-100 class c is output 10 + c),
on the paper's CNN. CIFAR-100 is read from the publisher's binary version
(``<data-dir>/cifar100/cifar-100-binary``) or downloaded by tensorflow-datasets.

    python -m experiments.cifar10_100 --seed 3
    python -m experiments.cifar10_100 --seed 3 --width wide --data-dir DATA --out runs/c10_100
"""

from __future__ import annotations

from experiments.cnn import add_cnn_arguments, cnn_config, cnn_config_from_args
from experiments.common import command_line_process, main
from spacenet_jax.storage.data import ImageDataset, combine_cifar10_100, load_dataset

__all__ = ["CIFAR10_100", "TASK_CLASSES", "combine_cifar10_100", "load_cifar10_100"]

#: Task 1: CIFAR-10's ten classes; tasks 2-6: CIFAR-100 classes 0-9, ..., 40-49 (+10).
TASK_CLASSES = (tuple(range(10)), *(tuple(range(10 + 10 * t, 20 + 10 * t)) for t in range(5)))
CIFAR10_100 = cnn_config(TASK_CLASSES, 60)


def load_cifar10_100(data_dir: str | None, quiet: bool) -> ImageDataset:
    return load_dataset("cifar10_100", data_dir, verbose=not quiet)


if __name__ == "__main__":
    with command_line_process():
        main(
            "cifar10_100", "cifar10_100", __doc__.splitlines()[0], CIFAR10_100,
            add_arguments=add_cnn_arguments, make_config=cnn_config_from_args,
            load=load_cifar10_100,
        )

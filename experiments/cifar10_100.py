"""CIFAR-10/100 (paper Section 5.3): all of CIFAR-10, then CIFAR-100 classes 0-9, ..., 40-49.

Six tasks of ten classes on one shared 60-way output layer (CIFAR-100 class c is output 10 + c),
on the paper's CNN. CIFAR-100 is read from the publisher's binary version
(``<data-dir>/cifar100/cifar-100-binary``) or downloaded by tensorflow-datasets.

    python -m experiments.cifar10_100 --seed 3
    python -m experiments.cifar10_100 --seed 3 --width wide --data-dir DATA --out runs/c10_100
"""

from __future__ import annotations

import numpy as np

from experiments.cnn import add_cnn_arguments, cnn_config, cnn_config_from_args
from experiments.common import main
from spacenet_jax.data import ImageDataset, load_dataset

#: Task 1: CIFAR-10's ten classes; tasks 2-6: CIFAR-100 classes 0-9, ..., 40-49 (+10).
TASK_CLASSES = (tuple(range(10)), *(tuple(range(10 + 10 * t, 20 + 10 * t)) for t in range(5)))
CIFAR10_100 = cnn_config(TASK_CLASSES, 60)


def combine_cifar10_100(cifar10: ImageDataset, cifar100: ImageDataset) -> ImageDataset:
    """One dataset: CIFAR-10 as classes 0-9 and CIFAR-100's classes 0-49 as 10-59.

    CIFAR-100 classes 50-99 are not part of the benchmark and are left out.
    """
    if cifar10.num_classes != 10 or cifar100.num_classes != 100:
        raise ValueError(
            f"expected CIFAR-10 (10 classes) and CIFAR-100 (100 classes), got "
            f"{cifar10.name} ({cifar10.num_classes}) and {cifar100.name} "
            f"({cifar100.num_classes})"
        )

    def join(x10, y10, x100, y100):
        keep = y100 < 50
        images = np.concatenate([x10, x100[keep]])
        labels = np.concatenate([y10, y100[keep] + 10]).astype(np.int32)
        return images, labels

    train = join(cifar10.train_images, cifar10.train_labels,
                 cifar100.train_images, cifar100.train_labels)
    test = join(cifar10.test_images, cifar10.test_labels,
                cifar100.test_images, cifar100.test_labels)
    return ImageDataset("cifar10_100", *train, *test, 60, image_shape=cifar10.image_shape)


def load_cifar10_100(data_dir: str | None, quiet: bool) -> ImageDataset:
    return combine_cifar10_100(
        load_dataset("cifar10", data_dir, verbose=not quiet),
        load_dataset("cifar100", data_dir, verbose=not quiet),
    )


if __name__ == "__main__":
    main(
        "cifar10_100", "cifar10_100", __doc__.splitlines()[0], CIFAR10_100,
        add_arguments=add_cnn_arguments, make_config=cnn_config_from_args,
        load=load_cifar10_100,
    )

"""Split CIFAR-10: five tasks of two CIFAR-10 classes each, on the paper's CNN (Section 5.3).

Runs offline from the publisher's binary batches (``--data-dir`` holding
``cifar10/cifar-10-batches-bin``).

    python -m experiments.split_cifar10 --seed 3
    python -m experiments.split_cifar10 --seed 3 --epochs 5 --data-dir ../shared/datasets \
        --out runs/c10
    python -m experiments.split_cifar10 --preset per_task --seeds 0-2 --data-dir ../shared/datasets
"""

from __future__ import annotations

import dataclasses

from experiments.cnn import add_cnn_arguments, cnn_config, cnn_config_from_args
from experiments.common import command_line_process, main

#: The paper's CNN and settings on five two-class tasks of CIFAR-10 (10 outputs).
SPLIT_CIFAR10 = cnn_config(((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)), 10)

#: Beyond the paper: the same network and training, but each task's sub-network scores its
#: own classes (``inference="per_task"``) by the relative Mahalanobis distance of every hidden
#: layer's features (``task_scores="mahalanobis_relative"``), and each task's head also learns
#: to score its own images turned by quarter turns below them (``negatives="rotations"``): no
#: task identity at test time, no old data. The paper's shared head keeps little of the
#: earlier tasks (README, "Why tasks 2-5 are not learned"). The rule was chosen on validation
#: (500 images per class held out, seeds 0-2, 20 epochs): 49.8 +- 3.2 % against 46.1 +- 4.3
#: for ``mahalanobis_all`` and 32.8 +- 3.7 for the shared head, with the same negatives; then
#: the raw logit added with weight 0.1 (``logit_weight``), the best of 0-1.5 on the same
#: validation runs: 50.9 % (higher in each of the three seeds).
SPLIT_CIFAR10_PER_TASK = dataclasses.replace(
    SPLIT_CIFAR10, inference="per_task", task_scores="mahalanobis_relative",
    logit_weight=0.1, negatives="rotations",
)

PRESETS = {"paper": SPLIT_CIFAR10, "per_task": SPLIT_CIFAR10_PER_TASK}

if __name__ == "__main__":
    with command_line_process():
        main(
            "split_cifar10", "cifar10", __doc__.splitlines()[0], SPLIT_CIFAR10,
            add_arguments=add_cnn_arguments, make_config=cnn_config_from_args, presets=PRESETS,
        )

"""Your own data: SpaceNet on any tfds image-classification dataset, or on a .npz of arrays.

    python -m experiments.own_data --npz my_data.npz --seed 0
    python -m experiments.own_data --tfds kmnist --task-classes 0,1/2,3/4,5 --out runs/kmnist
    python -m experiments.own_data --tfds cifar10 --class-order-seed 7 --epochs 2

``--npz FILE`` holds ``train_images``, ``train_labels``, ``test_images`` and ``test_labels``:
uint8 images ``(N, H, W, C)``, ``(N, H, W)`` or already flat ``(N, D)``, integer labels ``(N,)``.
``--tfds NAME`` is prepared by tensorflow-datasets: read from ``--data-dir`` when that is a tfds
data folder holding NAME, else prepared from the files in it (tfds's manual download folder),
else from tfds's own data folder (downloading it, when the network answers).

The tasks are ``--task-classes`` (``0,1/2,3/4,5``: the labels as they are in the data), or all
classes in ascending order, or in a seeded random order with ``--class-order-seed``, split into
consecutive groups of ``--classes-per-task`` (default: pairs). The network is an MLP whose input
is the flattened image and whose output has one unit per class used; its hidden layers are split
MNIST's (``--hidden``), and the selected and reserved neurons and the connections per task are
split MNIST's scaled to the data (same fraction of the layers, same density between selected
units), unless given with the usual flags. Inputs are normalised with the training set's own
mean and standard deviation. ``--dry-run`` loads the data too (the network's size comes from
it), then prints the capacity plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.common import command_line_process, config_from_args, main
from experiments.split_mnist import SPLIT_MNIST
from spacenet_jax.core.config import ConfigError, SpaceNetConfig
from spacenet_jax.core.inputs import uint8_conversion_hint
from spacenet_jax.storage.data import (
    DatasetError,
    ImageDataset,
    cache_dir,
    require_network,
    resolve_data_dir,
)

NPZ_KEYS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
#: Split MNIST's network: 80 of 400 neurons selected and 40 reserved per task and hidden layer;
#: 10000 connections between 784 inputs and 80 selected neurons, 1640 between 80 and 80, 80
#: between 80 and a task's 2 classes. ``derived_sparsity`` keeps these fractions and densities.
_SELECTED_FRACTION = 80 / 400
_SPECIFIC_FRACTION = 40 / 400
_DENSITY_IN, _DENSITY_HIDDEN, _DENSITY_OUT = 10000 / (784 * 80), 1640 / (80 * 80), 80 / (80 * 2)
_DERIVED = {
    "connections": "scaled from split MNIST's 10000,1640,80 to the data",
    "selected_neurons": "a fifth of each hidden layer (split MNIST's 80 of 400)",
    "specific_neurons": "a tenth of each hidden layer (split MNIST's 40 of 400), fewer if the "
    "tasks would run out of free neurons",
}


# ---------------------------------------------------------------------------------------------
# flags


def parse_task_classes(text: str) -> tuple[tuple[int, ...], ...]:
    """``'0,1/2,3/4,5'`` -> ``((0, 1), (2, 3), (4, 5))``: tasks separated by ``/``, classes by
    commas."""
    try:
        tasks = tuple(
            tuple(int(c) for c in task.split(",") if c.strip())
            for task in text.replace(" ", "").split("/")
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad --task-classes {text!r}: give integer labels, classes of a task separated by "
            f"commas and tasks by '/', e.g. 0,1/2,3/4,5"
        ) from None
    if not tasks or any(not t for t in tasks):
        raise argparse.ArgumentTypeError(
            f"bad --task-classes {text!r}: every task needs at least one class, e.g. 0,1/2,3"
        )
    return tasks


def add_own_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tfds`` / ``--npz``, the task split, and derived defaults for the sparsity flags."""
    g = parser.add_argument_group("your data (one of --tfds, --npz)")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--tfds", metavar="NAME",
                        help="a tensorflow-datasets image-classification dataset, e.g. kmnist, "
                        "cifar10, emnist/letters (with 'train' and 'test' splits)")
    source.add_argument("--npz", type=Path, metavar="FILE",
                        help="a .npz with train_images, train_labels, test_images, test_labels "
                        "(uint8 images (N, H, W, C), (N, H, W) or (N, D); integer labels)")
    g.add_argument("--task-classes", type=parse_task_classes, default=None,
                   help="the tasks, e.g. 0,1/2,3/4,5 (labels as in the data); if not given, "
                   "all classes in consecutive groups of --classes-per-task")
    g.add_argument("--classes-per-task", type=int, default=2,
                   help="classes per task when the tasks are not given (a last, smaller group "
                   "joins the task before it)")
    g.add_argument("--class-order-seed", type=int, default=None, metavar="S",
                   help="shuffle the class order with seed S before splitting it into tasks; "
                   "if not given, the classes go in ascending order")
    parser.set_defaults(connections=None, selected_neurons=None, specific_neurons=None)
    for action in parser._actions:  # the usual flags keep their meaning, not their defaults
        if action.dest in _DERIVED:
            action.help = f"{action.help}; if not given, {_DERIVED[action.dest]}"


# ---------------------------------------------------------------------------------------------
# data


def _flat_images(
    images: np.ndarray, what: str, fix: str | None = None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 images (N, H, W, C), (N, H, W) or (N, D) as (N, D) rows and their (H, W, C);
    ``fix`` replaces the advice on converting other dtypes."""
    if images.dtype != np.uint8:
        raise DatasetError(
            f"{what} are {images.dtype} of shape {images.shape}, but SpaceNet takes uint8 "
            f"pixels 0-255; {fix or uint8_conversion_hint(images.dtype) + ', and save again'}"
        )
    if images.ndim == 4:
        shape = images.shape[1:]
    elif images.ndim == 3:
        shape = (*images.shape[1:], 1)
    elif images.ndim == 2:
        shape = (1, images.shape[1], 1)
    else:
        raise DatasetError(
            f"{what} have shape {images.shape}: expected (N, H, W, C), (N, H, W) or (N, D)"
        )
    if images.shape[0] == 0 or min(shape) == 0:
        raise DatasetError(f"{what} are empty (shape {images.shape}): give at least one image")
    return np.ascontiguousarray(images.reshape(images.shape[0], -1)), tuple(map(int, shape))


def _int_labels(labels: np.ndarray, count: int, what: str) -> np.ndarray:
    """Integer labels (N,) as int32."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{what} are {labels.dtype}: class labels must be integers; convert whole-number "
            f"labels with y.astype(np.int32), one-hot labels with y.argmax(axis=1)"
        )
    if labels.shape != (count,):
        raise DatasetError(
            f"{what} have shape {labels.shape}, expected ({count},): one label per image"
        )
    if count and (labels.min() < np.iinfo(np.int32).min or labels.max() > np.iinfo(np.int32).max):
        raise DatasetError(f"{what} do not fit in int32; renumber the classes 0, 1, 2, ...")
    return labels.astype(np.int32)


def dataset_from_arrays(
    name: str, arrays: dict[str, np.ndarray], source: str, fix: str | None = None
) -> ImageDataset:
    """An ImageDataset from the four arrays of :data:`NPZ_KEYS`, checked and flattened
    (``fix``: what to say about images that are not uint8, instead of how to convert them).

    ``num_classes`` is one more than the largest label (the labels are renumbered later, by
    :func:`select_classes`).

    Raises:
        DatasetError: naming ``source``, the array, what it is and what it should be.
    """
    splits = {}
    for split in ("train", "test"):
        images, shape = _flat_images(arrays[f"{split}_images"], f"{source}: {split}_images",
                                     fix)
        labels = _int_labels(arrays[f"{split}_labels"], images.shape[0],
                             f"{source}: {split}_labels")
        splits[split] = images, labels, shape
    if splits["train"][2] != splits["test"][2]:
        raise DatasetError(
            f"{source}: the training images are {splits['train'][2]} (height, width, channels) "
            f"but the test images {splits['test'][2]}; give images of one size"
        )
    top = max(int(splits[s][1].max()) for s in splits)
    return ImageDataset(
        name, splits["train"][0], splits["train"][1], splits["test"][0], splits["test"][1],
        num_classes=top + 1, image_shape=splits["train"][2],
    )


def read_npz(path: str | os.PathLike) -> ImageDataset:
    """The dataset in a ``.npz`` of :data:`NPZ_KEYS` (named after the file).

    Raises:
        DatasetError: the file is missing or not an npz of plain arrays, lacks a key, or holds
            arrays of the wrong kind.
    """
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = list(npz.files)
            arrays = {k: np.asarray(npz[k]) for k in NPZ_KEYS if k in found}
    except FileNotFoundError:
        raise DatasetError(f"--npz {path}: no such file") from None
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(
            f"--npz {path} is not a .npz of plain arrays ({type(err).__name__}: {err}); save it "
            f"with np.savez(path, train_images=..., train_labels=..., test_images=..., "
            f"test_labels=...)"
        ) from None
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DatasetError(
            f"--npz {path} lacks {', '.join(missing)} (it holds {', '.join(found) or 'nothing'});"
            f" it needs the arrays {', '.join(NPZ_KEYS)}"
        )
    return dataset_from_arrays(path.stem, arrays, f"--npz {path}")


def _tfds_hint(name: str) -> str:
    return (
        f"pass --data-dir DIR, where DIR is a tensorflow-datasets data folder holding a "
        f"prepared {name}/ or the files tfds's manual download of {name} expects"
    )


def load_tfds(name: str, data_dir: str | os.PathLike | None, *, verbose: bool) -> ImageDataset:
    """The 'train' and 'test' splits of tfds dataset ``name`` as an ImageDataset.

    Read from ``data_dir`` (or $SPACENET_DATA_DIR) when it is a tfds data folder where ``name``
    is prepared; else prepared (in ``cache_dir()/tfds-own``) from the files in ``data_dir``
    (``data_dir/name`` if it exists) as tfds's manual download folder; without a data folder,
    from tfds's own data folder, downloading it there if need be (after checking that the
    network answers).

    Raises:
        DatasetError: a data folder that does not exist, no network, an unknown dataset, no
            'train' or 'test' split, images of different sizes, or tfds failing.
    """
    folder = resolve_data_dir(data_dir)
    if folder is not None and not folder.is_dir():
        raise DatasetError(
            f"cannot load {name}: the data folder {folder} does not exist; {_tfds_hint(name)}"
        )
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetError(
            f"cannot load {name}: {type(err).__name__}: {err}. Fix: pip install "
            f"tensorflow-datasets tensorflow-cpu"
        ) from err
    try:
        if not (verbose and sys.stderr.isatty()):
            tfds.disable_progress_bar()
        builder = None
        if folder is not None:
            builder = tfds.builder(name, data_dir=str(folder))
            if not builder.is_prepared():
                manual = folder / name if (folder / name).is_dir() else folder
                builder = tfds.builder(name, data_dir=str(cache_dir() / "tfds-own" / name))
                if not builder.is_prepared():
                    if verbose:
                        print(f"preparing {name} with tensorflow-datasets from {manual}...",
                              file=sys.stderr)
                    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                        manual_dir=str(manual), try_download_gcs=False))
        else:
            builder = tfds.builder(name)
            if not builder.is_prepared():
                require_network(name, _tfds_hint(name))
                if verbose:
                    print(f"downloading {name} with tensorflow-datasets into "
                          f"{builder.data_dir}...", file=sys.stderr)
                builder.download_and_prepare()
        arrays = {}
        for split in ("train", "test"):
            try:
                pairs = builder.as_dataset(split=split, as_supervised=True)
            except (ValueError, KeyError) as err:
                if split not in str(err):
                    raise
                raise DatasetError(
                    f"{name} has no '{split}' split (its splits: "
                    f"{', '.join(builder.info.splits) or 'unknown'}); this command needs a "
                    f"'train' and a 'test' split"
                ) from err
            batches = list(tfds.as_numpy(pairs.batch(4096)))
            if not batches:
                raise DatasetError(f"the '{split}' split of {name} is empty")
            arrays[f"{split}_images"] = np.concatenate([images for images, _ in batches])
            arrays[f"{split}_labels"] = np.concatenate([labels for _, labels in batches])
    except DatasetError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0].rstrip(".")
        raise DatasetError(
            f"cannot load {name} with tensorflow-datasets: {type(err).__name__}: {first}. "
            f"Fix: check the name (tfds.list_builders()), that it is an image-classification "
            f"dataset with (image, label) pairs of one image size, or {_tfds_hint(name)}"
        ) from err
    return dataset_from_arrays(
        name, arrays, f"tfds {name}",
        f"{name} is not an image-classification dataset of uint8 images; choose one that is",
    )


# ---------------------------------------------------------------------------------------------
# tasks and configuration


def default_tasks(
    classes: Sequence[int], per_task: int = 2, order_seed: int | None = None
) -> tuple[tuple[int, ...], ...]:
    """``classes`` in ascending order (or shuffled by ``order_seed``), in consecutive groups of
    ``per_task``; a last, smaller group joins the task before it."""
    if per_task < 1:
        raise ConfigError(f"--classes-per-task must be at least 1, not {per_task}")
    order = sorted(int(c) for c in classes)
    if order_seed is not None:
        order = [order[i] for i in np.random.default_rng(order_seed).permutation(len(order))]
    if len(order) < per_task:
        raise ConfigError(
            f"the data has {len(order)} classes, fewer than --classes-per-task {per_task}"
        )
    tasks = [tuple(order[i : i + per_task]) for i in range(0, len(order), per_task)]
    if len(tasks) > 1 and len(tasks[-1]) < per_task:
        tasks[-2:] = [tasks[-2] + tasks[-1]]
    return tuple(tasks)


def select_classes(
    dataset: ImageDataset, tasks: Sequence[Sequence[int]]
) -> tuple[ImageDataset, tuple[tuple[int, ...], ...]]:
    """Keep the examples of the tasks' classes and number those classes 0..K-1 in ascending
    order of their labels (data labelled 0..K-1 keeps its labels).

    Returns:
        The dataset with the new labels and ``K`` classes, and the tasks in the new numbers.

    Raises:
        ConfigError: a class in two tasks, or without training or test examples.
    """
    used = sorted(c for t in tasks for c in t)
    if len(set(used)) != len(used):
        twice = sorted({c for c in used if used.count(c) > 1})
        raise ConfigError(f"--task-classes names classes {twice} in more than one task")
    for split in ("train", "test"):
        present = set(np.unique(getattr(dataset, f"{split}_labels")).tolist())
        absent = [c for c in used if c not in present]
        if absent:
            raise ConfigError(
                f"the tasks name classes {absent} that {dataset.name}'s {split} set does not "
                f"have (its classes: {sorted(present)})"
            )
    lookup = np.asarray(used)

    def relabel(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.isin(labels, lookup)
        return images[keep], np.searchsorted(lookup, labels[keep]).astype(np.int32)

    train = relabel(dataset.train_images, dataset.train_labels)
    test = relabel(dataset.test_images, dataset.test_labels)
    selected = dataclasses.replace(
        dataset, train_images=train[0], train_labels=train[1], test_images=test[0],
        test_labels=test[1], num_classes=len(used),
    )
    return selected, tuple(tuple(used.index(c) for c in t) for t in tasks)


def pixel_statistics(images: np.ndarray, rows: int = 4096) -> tuple[float, float]:
    """Mean and standard deviation of ``images / 255`` (uint8), from a histogram of the pixel
    values, a few thousand rows at a time (no float copy of the images)."""
    counts = np.zeros(256, np.int64)
    for start in range(0, images.shape[0], rows):
        counts += np.bincount(images[start : start + rows].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum()
    mean = float(counts @ values / total)
    std = float(np.sqrt(max(counts @ (values - mean) ** 2 / total, 0.0)))
    return mean, std if std > 0 else 1.0


def derived_sparsity(
    input_size: int,
    hidden: Sequence[int],
    num_tasks: int,
    smallest_task: int,
    rewire_ratio: float,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Split MNIST's sparsity scaled to another network: ``(connections, selected, specific)``.

    A fifth of each hidden layer is selected per task and a tenth reserved (80 and 40 of 400),
    fewer reserved when ``num_tasks`` tasks would run out of free neurons; each weight matrix
    gets the density split MNIST's has between the selected units (10000 of 784 x 80, 1640 of
    80 x 80, 80 of 80 x 2 for the smallest task), leaving room for the regrown connections.
    Split MNIST's own network gets split MNIST's numbers.
    """
    selected = tuple(max(1, round(n * _SELECTED_FRACTION)) for n in hidden)
    specific = []
    for n, sel in zip(hidden, selected, strict=True):
        spec = max(0, round(n * _SPECIFIC_FRACTION))
        if num_tasks > 1:
            spec = min(spec, (n - sel) // (num_tasks - 1))
        specific.append(min(spec, sel))
    fans = [input_size, *selected, smallest_task]
    densities = [_DENSITY_IN] + [_DENSITY_HIDDEN] * (len(hidden) - 1) + [_DENSITY_OUT]
    connections = []
    for layer, density in enumerate(densities):
        positions = fans[layer] * fans[layer + 1]
        room = positions if layer == len(hidden) else int(positions / (1 + rewire_ratio))
        connections.append(max(1, min(round(density * positions), room)))
    return tuple(connections), selected, tuple(specific)


def own_config(
    args: argparse.Namespace,
    defaults: SpaceNetConfig,
    dataset: ImageDataset,
    tasks: tuple[tuple[int, ...], ...],
) -> SpaceNetConfig:
    """The MLP for ``dataset`` (relabelled by :func:`select_classes`): the flags' values, with
    the sparsity flags not given derived by :func:`derived_sparsity`."""
    hidden = tuple(args.hidden)
    smallest = min(len(t) for t in tasks)
    connections, selected, specific = derived_sparsity(
        dataset.train_images.shape[1], hidden, len(tasks), smallest, args.rewire_ratio
    )
    filled = argparse.Namespace(**{
        **vars(args),
        "connections": args.connections or connections,
        "selected_neurons": args.selected_neurons or selected,
        "specific_neurons": args.specific_neurons or specific,
    })
    mean, std = pixel_statistics(dataset.train_images)
    template = dataclasses.replace(
        defaults,
        layer_sizes=(dataset.train_images.shape[1], *hidden, dataset.num_classes),
        task_classes=tasks,
        connections_per_task=filled.connections,
        selected_neurons=filled.selected_neurons,
        specific_neurons=filled.specific_neurons,
        method=args.method,
        input_mean=round(mean, 4),
        input_std=round(std, 4),
    )
    return config_from_args(filled, template)


# ---------------------------------------------------------------------------------------------
# the command


def _describe(dataset: ImageDataset, original: tuple[tuple[int, ...], ...],
              config: SpaceNetConfig) -> str:
    h, w, c = dataset.image_shape
    lines = [
        f"{dataset.name}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} "
        f"test images of {h}x{w}x{c}, {dataset.num_classes} classes in "
        f"{len(original)} tasks: " + " ".join("{" + ",".join(map(str, t)) + "}"
                                              for t in original),
        f"network {'-'.join(map(str, config.layer_sizes))}, connections per task "
        f"{','.join(map(str, config.connections_per_task))}, selected neurons "
        f"{','.join(map(str, config.selected_neurons))}, specific neurons "
        f"{','.join(map(str, config.specific_neurons))}, inputs normalised with mean "
        f"{config.input_mean} and sd {config.input_std}",
    ]
    if config.task_classes != original:
        lines.append("classes as numbered in the network (ascending labels): " + ", ".join(
            f"{label}->{i}" for i, label in enumerate(sorted(c for t in original for c in t))
        ))
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags, load the data, build its configuration and run it (``common.main``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--tfds")
    source.add_argument("--npz", type=Path)
    known, _ = source.parse_known_args(argv)
    label = known.tfds or (known.npz.stem if known.npz else "")
    benchmark = f"own_data:{'tfds' if known.tfds else 'npz'}:{label}" if label else "own_data"
    loaded: dict[str, ImageDataset] = {}

    def make_config(args: argparse.Namespace, defaults: SpaceNetConfig) -> SpaceNetConfig:
        if args.npz is not None and args.data_dir is not None:
            raise ConfigError("--data-dir is for --tfds; --npz names its file itself")
        if args.task_classes is not None and args.class_order_seed is not None:
            raise ConfigError(
                "--class-order-seed shuffles the classes before the default split into tasks; "
                "with --task-classes the order is yours: give one of the two"
            )
        try:
            dataset = (read_npz(args.npz) if args.npz is not None
                       else load_tfds(args.tfds, args.data_dir, verbose=not args.quiet))
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        tasks = args.task_classes or default_tasks(
            np.unique(dataset.train_labels), args.classes_per_task, args.class_order_seed
        )
        selected, network_tasks = select_classes(dataset, tasks)
        config = own_config(args, defaults, selected, network_tasks)
        loaded["dataset"] = selected
        if not args.quiet:
            print(_describe(selected, tuple(map(tuple, tasks)), config), file=sys.stderr)
        return config

    return main(
        # The dataset named in checkpoints is the benchmark, not a load_dataset name: the
        # arrays are this data after select_classes, which load_dataset cannot rebuild.
        benchmark, benchmark, __doc__.splitlines()[0], SPLIT_MNIST, argv,
        add_arguments=add_own_data_arguments, make_config=make_config,
        load=lambda data_dir, quiet: loaded["dataset"],
    )


if __name__ == "__main__":
    with command_line_process():
        run()

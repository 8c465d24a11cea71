"""Loading MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 as numpy arrays, and splitting them into
class-incremental tasks.

The first load of MNIST / Fashion-MNIST goes through TensorFlow Datasets (tfds), from a folder
holding the canonical gzip idx files (``--data-dir`` / ``$SPACENET_DATA_DIR``) or, without one,
from the network. CIFAR-10 / CIFAR-100 are read directly with numpy from the publisher's binary
batches in the data folder (tfds cannot take those as a manual download), or, without a data
folder, downloaded by tfds. The result is checked and cached as an ``.npz`` file (with a
``.json`` sidecar holding its sha256 and the name, size and sha256 of every source file) under
:func:`cache_dir`, so later loads are plain numpy reads that never import TensorFlow.

A data folder, when given, must exist and hold the dataset's files even when a cache exists, and
a cache made from other files (or downloaded) is rebuilt from them. Without a data folder, the
cache is used as it is; with no cache either, the network is probed first (a few seconds), so
that an offline machine fails at once with the fix instead of retrying downloads for minutes.

Processes sharing a cache folder (seeds started side by side, a parallel test suite) prepare a
dataset one at a time: the second waits for the first (a lock in ``cache_dir()/locks``) and then
reads its cache.

TensorFlow and tensorflow-datasets are imported lazily, only on the slow path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import math
import operator
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import threading
import urllib.parse
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "CIFAR_DATASETS",
    "MNIST_DATASETS",
    "SUPPORTED",
    "DatasetError",
    "ImageDataset",
    "cache_dir",
    "load_dataset",
    "network_problem",
    "read_cifar_binary",
    "require_network",
    "resolve_data_dir",
    "source_fingerprint",
    "task_indices",
]

#: The datasets prepared through tfds from the canonical gzip idx files (28x28 grey images).
MNIST_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist")
#: The datasets read from the publisher's binary batches (32x32 RGB images).
CIFAR_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
#: Datasets made of others: ``"cifar10_100"``, CIFAR-10 then CIFAR-100's classes 0-49 as 10-59
#: (the paper's CIFAR-10/100, :func:`combine_cifar10_100`).
COMBINED_DATASETS: tuple[str, ...] = ("cifar10_100",)
#: Every name :func:`load_dataset` accepts.
SUPPORTED: tuple[str, ...] = MNIST_DATASETS + CIFAR_DATASETS + COMBINED_DATASETS

CANONICAL_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

NUM_CLASSES = 10
NUM_PIXELS = 28 * 28
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}

_PRETTY = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
}
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_DATA_DIR_HINT = (
    "point --data-dir (or $SPACENET_DATA_DIR) at a folder holding '{name}/' with the files "
    + ", ".join(CANONICAL_FILES)
    + " (e.g. ../shared/datasets)"
)


MNIST_IMAGE_SHAPE: tuple[int, int, int] = (28, 28, 1)
CIFAR_IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
CIFAR_PIXELS = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class _CifarFormat:
    """The publisher's binary version of one CIFAR dataset."""

    folder: str  # the folder the publisher's archive extracts to
    files: dict[str, tuple[str, ...]]  # split -> its batch files, in order
    label_bytes: int  # label bytes before the pixels of each record
    label_byte: int  # which of them is the label used (CIFAR-100: 1, the fine label)
    num_classes: int
    record_counts: dict[str, int]  # records a split has in the real files (documentation)

    @property
    def record_size(self) -> int:
        return self.label_bytes + CIFAR_PIXELS


_CIFAR: dict[str, _CifarFormat] = {
    "cifar10": _CifarFormat(
        folder="cifar-10-batches-bin",
        files={
            "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            "test": ("test_batch.bin",),
        },
        label_bytes=1,
        label_byte=0,
        num_classes=10,
        record_counts={"train": 50000, "test": 10000},
    ),
    "cifar100": _CifarFormat(
        folder="cifar-100-binary",
        files={"train": ("train.bin",), "test": ("test.bin",)},
        label_bytes=2,  # coarse (0-19), then fine (0-99)
        label_byte=1,
        num_classes=100,
        record_counts={"train": 50000, "test": 10000},
    ),
}
_CIFAR100_COARSE_CLASSES = 20


class DatasetError(RuntimeError):
    """A dataset could not be loaded; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A whole image-classification dataset held in memory.

    Every image is one row of uint8 pixels, flattened in row-major **HWC** order:
    ``images.reshape(-1, *image_shape)`` gives (height, width, channels).

    Attributes:
        name: one of :data:`SUPPORTED` (or any name, for synthetic data).
        train_images: uint8, shape (N, H*W*C): MNIST (60000, 784), CIFAR (50000, 3072).
        train_labels: int32, shape (N,).
        test_images: uint8, shape (M, H*W*C): (10000, 784) or (10000, 3072).
        test_labels: int32, shape (M,).
        num_classes: number of classes (10; 100 for CIFAR-100).
        image_shape: (height, width, channels) of one image: (28, 28, 1) for MNIST and
            Fashion-MNIST (the default), (32, 32, 3) for CIFAR-10 / CIFAR-100.
        validation_images, validation_labels: training examples held out for choosing
            settings (:func:`hold_out_validation`), or None.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    image_shape: tuple[int, int, int] = MNIST_IMAGE_SHAPE
    validation_images: np.ndarray | None = None
    validation_labels: np.ndarray | None = None


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


def hold_out_validation(dataset: ImageDataset, per_class: int, seed: int = 0) -> ImageDataset:
    """Move ``per_class`` training examples of every class into a validation set.

    The examples are drawn without replacement from each class with ``numpy``'s generator
    seeded by ``seed``, so the split depends only on the training labels, ``per_class`` and
    ``seed``; the remaining training examples and the validation examples keep their original
    order. ``per_class=0`` returns ``dataset`` unchanged.

    Returns:
        The dataset with ``train_*`` reduced by ``per_class * classes`` examples and
        ``validation_*`` holding them (uint8 ``(V, D)`` images, int32 ``(V,)`` labels).

    Raises:
        DatasetError: the dataset already has a validation set, or a class has no more than
            ``per_class`` training examples (nothing would be left to train on).
    """
    if per_class == 0:
        return dataset
    if dataset.validation_images is not None:
        raise DatasetError(f"{dataset.name} already has a validation set; hold one out once")
    labels = np.asarray(dataset.train_labels)
    classes, counts = np.unique(labels, return_counts=True)
    if per_class < 0 or per_class >= counts.min():
        smallest = int(classes[np.argmin(counts)])
        raise DatasetError(
            f"cannot hold out {per_class} validation examples per class: class {smallest} has "
            f"only {int(counts.min())} training examples; use --validation between 1 and "
            f"{int(counts.min()) - 1}"
        )
    rng = np.random.default_rng(seed)
    held = np.zeros(labels.shape[0], dtype=bool)
    for c in classes:
        members = np.flatnonzero(labels == c)
        held[rng.choice(members, size=per_class, replace=False)] = True
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[~held],
        train_labels=labels[~held],
        validation_images=dataset.train_images[held],
        validation_labels=labels[held],
    )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """The argument if given, else $SPACENET_DATA_DIR if set, else None.

    None means: let tfds download. An empty string counts as not given.
    """
    if data_dir is not None and str(data_dir) != "":
        return pathlib.Path(data_dir).expanduser()
    env = os.environ.get("SPACENET_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return None


def cache_dir() -> pathlib.Path:
    """$SPACENET_CACHE_DIR if set, else ~/.cache/spacenet_jax."""
    env = os.environ.get("SPACENET_CACHE_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "spacenet_jax"


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, verbose: bool = True
) -> ImageDataset:
    """Load MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 as flattened uint8 images and int32
    labels.

    A verified npz cache under ``cache_dir()/arrays`` (one per dataset name) is used when
    present (no TensorFlow import) and, if a data folder is given, made from exactly its files
    (same names, sizes and sha256, recorded in the cache's sidecar); otherwise the cache is
    rebuilt from the data folder. Without a cache:

    - ``"mnist"`` / ``"fashion_mnist"``: prepared with tensorflow-datasets from the canonical
      gzip idx files in ``resolve_data_dir(data_dir)`` (``<data_dir>/<name>/`` or ``<data_dir>``
      itself). Images are (N, 784), labels 0-9, ``image_shape`` (28, 28, 1).
    - ``"cifar10"``: read with numpy from the publisher's binary batches ``data_batch_1..5.bin``
      and ``test_batch.bin`` in ``<data_dir>/cifar10/cifar-10-batches-bin/``,
      ``<data_dir>/cifar-10-batches-bin/``, ``<data_dir>/cifar10/`` or ``<data_dir>`` itself.
      The real files hold 50000 train / 10000 test images; any whole number of 3073-byte
      records is accepted. Images are (N, 3072) in HWC order, labels 0-9, ``image_shape``
      (32, 32, 3).
    - ``"cifar100"``: the same from the publisher's ``cifar-100-binary`` (``train.bin``, 50000
      records, and ``test.bin``, 10000, of 3074 bytes each) in
      ``<data_dir>/cifar100/cifar-100-binary/``, ``<data_dir>/cifar-100-binary/``,
      ``<data_dir>/cifar100/`` or ``<data_dir>`` itself. The labels are the **fine** labels,
      0-99.

    When no data folder is given (no ``data_dir``, no $SPACENET_DATA_DIR) any valid cache is
    used; without one, every dataset is downloaded by tfds, after a quick check that the
    network is reachable (:func:`require_network`). The result is then verified and cached.

    Args:
        name: one of :data:`SUPPORTED`.
        data_dir: folder holding the dataset files; see :func:`resolve_data_dir`. When given it
            must exist and hold the files, cache or not.
        verbose: print short progress lines to stderr.

    Raises:
        DatasetError: unknown name, a data folder that does not exist, missing/corrupt/truncated
            files, files of another dataset, labels out of range, a bad cache, no data folder
            and no network, or TensorFlow / tensorflow-datasets missing or failing.
    """
    if name not in SUPPORTED:
        raise DatasetError(
            f"unknown dataset {name!r}: supported datasets are {', '.join(SUPPORTED)}"
        )
    if name == "cifar10_100":
        return combine_cifar10_100(load_dataset("cifar10", data_dir, verbose=verbose),
                                   load_dataset("cifar100", data_dir, verbose=verbose))

    folder = resolve_data_dir(data_dir)
    files = [] if folder is None else _source_files(name, folder)
    sources = source_fingerprint(files) if files else None
    source_folder = files[0].parent if files else None
    cached = _load_cache(name, sources, source_folder)
    if cached is not None:
        return cached

    with _preparation_lock(name) as waited:
        if waited:  # another process prepared it meanwhile: its cache, checked as any other
            cached = _load_cache(name, sources, source_folder)
            if cached is not None:
                return cached
        if name in CIFAR_DATASETS and folder is not None:
            dataset = _load_cifar_binary(name, folder, verbose=verbose)
        else:
            dataset = _load_with_tfds(name, folder, sources, verbose=verbose)
        _write_cache(dataset, sources, verbose=verbose)
    return dataset


@contextlib.contextmanager
def _preparation_lock(name: str) -> Iterator[bool]:
    """Hold ``cache_dir()/locks/<name>.lock`` while ``name`` is prepared and cached; yield
    whether another process held it first (it then has usually cached the arrays).

    Two processes on a fresh cache (seeds started side by side, a parallel test suite) would
    otherwise prepare the same tfds folder at once and trip over each other's files. The lock is
    ``flock`` (``filelock``): released by the operating system when its holder dies, so a
    killed preparation never blocks the next one. Where the cache folder cannot be written, no
    lock is taken (and no cache will be written either: :func:`_write_cache` warns)."""
    from filelock import FileLock, Timeout

    lock: FileLock | None = None
    waited = False
    try:
        path = cache_dir() / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _info(f"another process is preparing {name} in {cache_dir()}; waiting for it "
                  f"(lock {path})", True)
            waited = True
            lock.acquire()
    except OSError:
        lock = None
    try:
        yield waited
    finally:
        if lock is not None:
            lock.release()


def _source_files(name: str, folder: pathlib.Path) -> list[pathlib.Path]:
    """The files of ``name`` that a load from ``folder`` reads; DatasetError (saying which
    folder or file is missing and how to fix it) when the folder or a file is absent."""
    if name in _CIFAR:
        found = _find_cifar_dir(name, folder)
        return [found / f for split in SPLIT_SIZES for f in _CIFAR[name].files[split]]
    found = _find_manual_dir(name, folder)
    return [found / f for f in CANONICAL_FILES]


def source_fingerprint(files: Sequence[str | os.PathLike]) -> list[dict[str, object]]:
    """``[{"name", "size", "sha256"}]`` of each file, in order: what a cache was made from.

    Raises:
        DatasetError: a file cannot be read.
    """
    out: list[dict[str, object]] = []
    for f in map(pathlib.Path, files):
        try:
            out.append({"name": f.name, "size": f.stat().st_size, "sha256": _sha256_file(f)})
        except OSError as err:
            raise DatasetError(
                f"cannot read {f} ({_one_line(err)}); check its permissions, or re-copy it"
            ) from err
    return out


def _sources_differ(recorded: object, sources: list[dict[str, object]]) -> str | None:
    """Why a cache whose sidecar recorded ``recorded`` was not made from ``sources``, or None
    when it was."""
    if recorded is None:
        return "it was downloaded by tensorflow-datasets or made before sources were recorded"
    if not isinstance(recorded, list):
        return "its record of the source files is unreadable"
    if recorded == sources:
        return None
    old = {r.get("name"): r for r in recorded if isinstance(r, dict)}
    for new in sources:
        before = old.get(new["name"])
        if before is None:
            return f"it was not made from a file named {new['name']}"
        if before != new:
            return (
                f"{new['name']} differs (size {before.get('size')} -> {new['size']}, sha256 "
                f"{str(before.get('sha256'))[:12]}... -> {str(new['sha256'])[:12]}...)"
            )
    return "it was made from another set of files"


def read_cifar_binary(
    path: str | os.PathLike, name: str = "cifar10"
) -> tuple[np.ndarray, np.ndarray]:
    """Read one of the publisher's CIFAR binary batch files.

    A CIFAR-10 record is 3073 bytes: the label (0-9), then the 1024 red, 1024 green and 1024
    blue bytes of a 32x32 image, row by row. A CIFAR-100 record is 3074 bytes: the coarse label
    (0-19), the fine label (0-99), then the same 3072 pixel bytes. The real files hold 10000
    (CIFAR-10) or 50000 / 10000 (CIFAR-100 train / test) records; any positive whole number of
    records is accepted.

    Args:
        path: the ``.bin`` file.
        name: ``"cifar10"`` or ``"cifar100"``: the record format.

    Returns:
        ``(images, labels)``: uint8 images of shape (N, 3072), each row a 32x32x3 image
        flattened in HWC order (``images.reshape(N, 32, 32, 3)``), and int32 labels of shape
        (N,) (the fine labels for CIFAR-100).

    Raises:
        DatasetError: the file is missing or unreadable, empty, not a whole number of records
            ("truncated or not a CIFAR binary batch"), or holds a label out of range.
        ValueError: ``name`` is not a CIFAR dataset.
    """
    if name not in _CIFAR:
        raise ValueError(f"name must be one of {', '.join(_CIFAR)}, got {name!r}")
    fmt = _CIFAR[name]
    path = pathlib.Path(path)
    pretty = _PRETTY[name]
    fix = f"re-copy the publisher's {pretty} binary files, or " + _data_dir_hint(name)
    try:
        size = path.stat().st_size
        raw = np.fromfile(path, dtype=np.uint8) if size else np.empty(0, np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot read {pretty} file {path} ({_one_line(err)}); {fix}") from err
    if raw.size == 0 or raw.size % fmt.record_size != 0:
        raise DatasetError(
            f"{pretty} file {path.name} is truncated or not a CIFAR binary batch: {path} has "
            f"{raw.size} bytes, not a positive multiple of the {fmt.record_size}-byte "
            f"{pretty} record; {fix}"
        )
    records = raw.reshape(-1, fmt.record_size)
    label_checks = [(fmt.label_byte, fmt.num_classes, "label")]
    if name == "cifar100":
        label_checks = [(0, _CIFAR100_COARSE_CLASSES, "coarse label"), *label_checks]
    for byte, count, what in label_checks:
        bad = np.flatnonzero(records[:, byte] >= count)
        if bad.size:
            raise DatasetError(
                f"{pretty} file {path} has a {what} out of range: record {int(bad[0])} has "
                f"{what} {int(records[bad[0], byte])}, but {pretty} {what}s run from 0 to "
                f"{count - 1} ({bad.size} such record(s)); the file is corrupt or not a "
                f"{pretty} binary batch; {fix}"
            )
    labels = records[:, fmt.label_byte].astype(np.int32)
    # Each record's pixels are planes (C, H, W); rows of the result are (H, W, C).
    images = records[:, fmt.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images).reshape(-1, CIFAR_PIXELS), labels


def task_indices(labels: np.ndarray, task_classes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """For each task, the int32 indices (sorted ascending) of the examples whose label is in that task's classes. Raises ValueError if a class is out of range of the labels, appears in two tasks, or a task has no examples."""  # noqa: E501
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if labels.size == 0:
        raise ValueError("labels is empty: there are no examples to split into tasks")
    max_label = int(labels.max())
    owner: dict[int, int] = {}
    result: list[np.ndarray] = []
    for t, classes in enumerate(task_classes):
        try:
            cls = [operator.index(c) for c in classes]
        except TypeError as err:
            raise ValueError(f"task {t}: classes must be integers, got {list(classes)!r}") from err
        for c in cls:
            if c < 0 or c > max_label:
                raise ValueError(
                    f"task {t}: class {c} is out of range: labels run from 0 to {max_label}"
                )
            if owner.get(c, t) != t:
                raise ValueError(f"class {c} appears in two tasks: {owner[c]} and {t}")
            owner[c] = t
        idx = np.flatnonzero(np.isin(labels, np.asarray(cls, dtype=labels.dtype)))
        if idx.size == 0:
            raise ValueError(f"task {t} (classes {cls}) has no examples")
        result.append(idx.astype(np.int32))
    return result


# ----------------------------------------------------------------------------------------------
# cache


def _cache_paths(name: str) -> tuple[pathlib.Path, pathlib.Path]:
    folder = cache_dir() / "arrays"
    return folder / f"{name}.npz", folder / f"{name}.json"


def _warn(msg: str) -> None:
    print(f"spacenet_jax.storage.data: warning: {msg}", file=sys.stderr, flush=True)


def _info(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"spacenet_jax.storage.data: {msg}", file=sys.stderr, flush=True)


def _load_cache(
    name: str,
    sources: list[dict[str, object]] | None = None,
    folder: pathlib.Path | None = None,
) -> ImageDataset | None:
    """The cached dataset, or None (after a warning when the cache is bad, or was not made from
    ``sources``, the fingerprint of the data folder ``folder``) to rebuild it. With ``sources``
    None (no data folder given) any valid cache is used."""
    npz_path, json_path = _cache_paths(name)
    if not npz_path.exists():
        return None
    if not json_path.exists():
        _warn(f"cache {npz_path} has no sidecar {json_path.name}; rebuilding it")
        return None
    try:
        meta = json.loads(json_path.read_text())
        expected = meta["sha256"]
        meta_name = meta.get("name", name)
    except (OSError, ValueError, KeyError, TypeError) as err:
        _warn(f"cache sidecar {json_path} is unreadable ({_one_line(err)}); rebuilding the cache")
        return None
    if meta_name != name:
        _warn(f"cache sidecar {json_path} is for {meta_name!r}, not {name!r}; rebuilding the cache")
        return None
    if sources is not None:
        why = _sources_differ(meta.get("sources"), sources)
        if why is not None:
            _warn(
                f"cache {npz_path} was not made from the files in {folder} ({why}); "
                "rebuilding it from them"
            )
            return None
    try:
        raw = bytearray(npz_path.stat().st_size)
        with open(npz_path, "rb") as f:
            if f.readinto(raw) != len(raw):
                raise OSError("the file changed size while it was read")
    except OSError as err:
        _warn(f"cache {npz_path} is unreadable ({_one_line(err)}); rebuilding it")
        return None
    if hashlib.sha256(raw).hexdigest() != expected:
        _warn(f"cache {npz_path} does not match the sha256 in {json_path.name}; rebuilding it")
        return None
    try:
        arrays = _npz_arrays(raw, _ARRAY_KEYS)
    except (OSError, ValueError, KeyError, EOFError, zlib.error) as err:
        _warn(f"cache {npz_path} is unreadable ({_one_line(err)}); rebuilding it")
        return None
    dataset = ImageDataset(
        name=name, num_classes=_num_classes(name), image_shape=_image_shape(name), **arrays
    )
    _verify(
        dataset,
        source=f"the cache {npz_path}",
        fix=f"delete {npz_path} (and {json_path.name}) and load again to rebuild it",
    )
    return dataset


def _npz_arrays(raw: bytearray, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file read into ``raw``, as views of ``raw`` where the
    archive stores them uncompressed (``np.savez``; 0.2 s less than ``np.load`` for MNIST's
    55 MB, which copies every array), else through ``np.load``. ``raw`` is already verified
    (sha256), so the zip's own CRCs are not checked again."""
    import zipfile

    def copies() -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in keys}

    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        if any(members[k].compress_type != zipfile.ZIP_STORED for k in keys):
            return copies()
    arrays = {}
    view = memoryview(raw)
    for k in keys:
        info = members[k]
        local = bytes(view[info.header_offset : info.header_offset + 30])
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {info.filename} has no local file header")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        npy = io.BytesIO(bytes(view[start : start + min(info.file_size, 4096)]))
        version = np.lib.format.read_magic(npy)
        if version not in ((1, 0), (2, 0)):  # not what np.savez writes: the slow path
            return copies()
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(npy)
        if dtype.hasobject:
            raise ValueError(f"member {info.filename} holds Python objects")
        count = math.prod(shape)
        if npy.tell() + count * dtype.itemsize != info.file_size:
            raise ValueError(f"member {info.filename} is truncated")
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=start + npy.tell())
        arrays[k] = array.reshape(shape, order="F" if fortran else "C")
    return arrays


def _write_cache(
    dataset: ImageDataset, sources: list[dict[str, object]] | None, *, verbose: bool
) -> None:
    """Write the npz and its json sidecar (with ``sources``, the fingerprint of the files it
    was made from; None for a download) atomically; warn (and go on) when that fails."""
    npz_path, json_path = _cache_paths(dataset.name)
    try:
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            npz_path,
            lambda f: np.savez(f, **{k: getattr(dataset, k) for k in _ARRAY_KEYS}),
        )
        digest = _sha256_file(npz_path)
        meta = {
            "name": dataset.name,
            "sha256": digest,
            "train_size": int(dataset.train_labels.shape[0]),
            "test_size": int(dataset.test_labels.shape[0]),
            "num_classes": dataset.num_classes,
            "image_shape": list(dataset.image_shape),
            "sources": sources,
        }
        text = json.dumps(meta, indent=2) + "\n"
        _atomic_write(json_path, lambda f: f.write(text.encode()))
    except OSError as err:
        _warn(
            f"could not write the cache in {npz_path.parent} ({_one_line(err)}); continuing "
            "without it (set $SPACENET_CACHE_DIR to a writable folder to cache the arrays)"
        )
        return
    _info(f"cached {dataset.name} arrays in {npz_path}", verbose)


def _atomic_write(path: pathlib.Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is ordinary readable data
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# verification


def _looks_like_fashion(train_labels: np.ndarray, test_labels: np.ndarray | None) -> bool:
    """Fashion-MNIST has exactly 6000 train (and 1000 test) images of every class; MNIST not."""
    train_ok = np.array_equal(
        np.bincount(train_labels, minlength=NUM_CLASSES), np.full(NUM_CLASSES, 6000)
    )
    if test_labels is None:
        return train_ok
    test_ok = np.array_equal(
        np.bincount(test_labels, minlength=NUM_CLASSES), np.full(NUM_CLASSES, 1000)
    )
    return train_ok and test_ok


def _mixup_message(name: str, source: str, fix: str) -> str:
    other = "Fashion-MNIST" if name == "mnist" else "MNIST (or another dataset)"
    if name == "mnist":
        found = "exactly 6000 training images of every class"
    else:
        found = "uneven class counts instead of exactly 6000 training / 1000 test per class"
    return (
        f"{_PRETTY[name]} expected, but {source} looks like {other}: it has {found}. "
        f"These files look like {other}, not {_PRETTY[name]}; {fix}"
    )


def _num_classes(name: str) -> int:
    return _CIFAR[name].num_classes if name in _CIFAR else NUM_CLASSES


def _image_shape(name: str) -> tuple[int, int, int]:
    return CIFAR_IMAGE_SHAPE if name in _CIFAR else MNIST_IMAGE_SHAPE


def _verify(dataset: ImageDataset, *, source: str, fix: str) -> None:
    """Check sizes, dtypes, label set and which dataset it is; raise DatasetError if wrong."""
    if dataset.name in _CIFAR:
        _verify_cifar(dataset, source=source, fix=fix)
        return
    name = dataset.name
    for split, size in SPLIT_SIZES.items():
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        if images.dtype != np.uint8 or images.shape != (size, NUM_PIXELS):
            raise DatasetError(
                f"{_PRETTY[name]} {split} images from {source}: expected uint8 of shape "
                f"({size}, {NUM_PIXELS}), found {images.dtype} of shape {images.shape}; {fix}"
            )
        if labels.dtype != np.int32 or labels.shape != (size,):
            raise DatasetError(
                f"{_PRETTY[name]} {split} labels from {source}: expected int32 of shape "
                f"({size},), found {labels.dtype} of shape {labels.shape}; {fix}"
            )
        found = sorted(int(v) for v in np.unique(labels))
        if found != list(range(NUM_CLASSES)):
            raise DatasetError(
                f"{_PRETTY[name]} {split} labels from {source}: expected exactly the classes "
                f"0..{NUM_CLASSES - 1}, found {found}; {fix}"
            )
    fashion = _looks_like_fashion(dataset.train_labels, dataset.test_labels)
    if fashion != (name == "fashion_mnist"):
        raise DatasetError(_mixup_message(name, source, fix))


def _verify_cifar(dataset: ImageDataset, *, source: str, fix: str) -> None:
    """Dtypes, shapes and label range of CIFAR arrays (any positive number of images, so that
    small files in the publisher's format load too)."""
    name, pretty = dataset.name, _PRETTY[dataset.name]
    num_classes = _CIFAR[name].num_classes
    if dataset.num_classes != num_classes or tuple(dataset.image_shape) != CIFAR_IMAGE_SHAPE:
        raise DatasetError(
            f"{pretty} from {source}: expected {num_classes} classes of {CIFAR_IMAGE_SHAPE} "
            f"images, found {dataset.num_classes} of {dataset.image_shape}; {fix}"
        )
    for split in SPLIT_SIZES:
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        n = labels.shape[0] if labels.ndim == 1 else -1
        if images.dtype != np.uint8 or n < 1 or images.shape != (n, CIFAR_PIXELS):
            raise DatasetError(
                f"{pretty} {split} images from {source}: expected uint8 of shape "
                f"(N, {CIFAR_PIXELS}) with N >= 1 matching {n} labels, found {images.dtype} "
                f"of shape {images.shape}; {fix}"
            )
        if labels.dtype != np.int32:
            raise DatasetError(
                f"{pretty} {split} labels from {source}: expected int32, found "
                f"{labels.dtype}; {fix}"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise DatasetError(
                f"{pretty} {split} labels from {source}: expected labels from 0 to "
                f"{num_classes - 1}, found labels from {low} to {high}; {fix}"
            )


# ----------------------------------------------------------------------------------------------
# CIFAR binary batches


def _data_dir_hint(name: str) -> str:
    """How to point the loader at the files of ``name``."""
    if name not in _CIFAR:
        return _DATA_DIR_HINT.format(name=name)
    fmt = _CIFAR[name]
    files = ", ".join(f for split in SPLIT_SIZES for f in fmt.files[split])
    return (
        f"pass --data-dir (or set $SPACENET_DATA_DIR) pointing at the folder holding "
        f"{name}/{fmt.folder} (the publisher's binary {_PRETTY[name]} files {files}), "
        "e.g. ../shared/datasets"
    )


def _find_cifar_dir(name: str, data_dir: pathlib.Path) -> pathlib.Path:
    """The folder holding the binary batches of ``name``; every batch file must be there."""
    fmt = _CIFAR[name]
    files = [f for split in SPLIT_SIZES for f in fmt.files[split]]
    hint = _data_dir_hint(name)
    if not data_dir.is_dir():
        raise DatasetError(f"cannot load {name}: the data folder {data_dir} does not exist; {hint}")
    # The publisher's folder wins wherever it is; a plain folder counts once it holds a file.
    nested = [data_dir / name / fmt.folder, data_dir / fmt.folder]
    plain = [data_dir / name, data_dir]
    folder = next((d for d in nested if d.is_dir()), None)
    if folder is None:
        folder = next((d for d in plain if any((d / f).is_file() for f in files)), None)
    if folder is None:
        looked = ", ".join(f"{d}/" for d in nested + plain)
        raise DatasetError(
            f"cannot load {name}: no folder with the {_PRETTY[name]} binary files "
            f"({', '.join(files)}) found; looked for {looked}; {hint}"
        )
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"cannot load {name}: missing batch file(s) {', '.join(missing)} in {folder}; "
            f"re-copy the publisher's {_PRETTY[name]} binary files there, or {hint}"
        )
    return folder


def _from_splits(
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    image_shape: tuple[int, int, int],
) -> ImageDataset:
    """An ImageDataset from ``{"train": (images, labels), "test": (images, labels)}``."""
    return ImageDataset(
        name=name,
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        num_classes=num_classes,
        image_shape=image_shape,
    )


def _load_cifar_binary(name: str, data_dir: pathlib.Path, *, verbose: bool) -> ImageDataset:
    fmt = _CIFAR[name]
    folder = _find_cifar_dir(name, data_dir)
    _info(f"reading {name} from the binary batches in {folder} (first use only)...", verbose)
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLIT_SIZES:
        parts = [read_cifar_binary(folder / f, name) for f in fmt.files[split]]
        splits[split] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
    dataset = _from_splits(name, splits, fmt.num_classes, CIFAR_IMAGE_SHAPE)
    _verify(
        dataset,
        source=f"the binary batches in {folder}",
        fix=f"re-copy the publisher's {_PRETTY[name]} binary files to {folder}",
    )
    return dataset


# ----------------------------------------------------------------------------------------------
# tfds


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0].strip().rstrip(":").strip() if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _find_manual_dir(name: str, data_dir: pathlib.Path) -> pathlib.Path:
    """The folder holding the four canonical files: ``data_dir/name`` or ``data_dir`` itself."""
    hint = _DATA_DIR_HINT.format(name=name)
    if not data_dir.is_dir():
        raise DatasetError(
            f"cannot load {name}: the data folder {data_dir} does not exist "
            f"(missing file {name}/{CANONICAL_FILES[0]} and the rest); {hint}"
        )
    sub = data_dir / name
    if sub.is_dir():
        candidate = sub
    elif all((data_dir / f).is_file() for f in CANONICAL_FILES):
        return data_dir
    else:
        candidate = data_dir
    missing = [f for f in CANONICAL_FILES if not (candidate / f).is_file()]
    if missing:
        where = (
            f"{candidate}"
            if candidate == sub
            else f"{data_dir} (it has no '{name}/' subfolder and does not hold the files itself)"
        )
        raise DatasetError(
            f"cannot load {name}: missing file(s) {', '.join(missing)} in {where}; {hint}"
        )
    return candidate


def _peek_train_labels(path: pathlib.Path) -> np.ndarray | None:
    """The labels of a gzip idx1 file, or None if it cannot be read (tfds will then say why)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error):
        return None
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != 2049:
        return None
    n = int.from_bytes(raw[4:8], "big")
    if len(raw) != 8 + n:
        return None
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


def _check_manual_files(name: str, manual: pathlib.Path) -> None:
    """Refuse early when the folder plainly holds the other dataset (tfds would only say
    'wrong checksum')."""
    labels = _peek_train_labels(manual / "train-labels-idx1-ubyte.gz")
    if labels is None or labels.shape != (SPLIT_SIZES["train"],) or labels.max() >= NUM_CLASSES:
        return
    if _looks_like_fashion(labels, None) != (name == "fashion_mnist"):
        raise DatasetError(
            _mixup_message(
                name,
                f"the folder {manual}",
                f"copy the canonical {_PRETTY[name]} files there, or "
                + _DATA_DIR_HINT.format(name=name),
            )
        )


def _tfds_fix(name: str, err: BaseException, manual: pathlib.Path | None) -> str:
    """How to fix an error raised while preparing or reading through tfds."""
    if isinstance(err, ImportError):
        missing = getattr(err, "name", None) or ""
        if missing.startswith("tensorflow_datasets"):
            return "pip install tensorflow-datasets tensorflow-cpu importlib_resources"
        if missing.startswith("importlib_resources"):
            return "pip install importlib_resources (tensorflow-datasets needs it on Python 3.11)"
        return (
            f"pip install tensorflow-cpu (tensorflow-datasets needs TensorFlow to prepare {name})"
        )
    kind = type(err).__name__
    if manual is not None:
        if "Checksum" in kind or "checksum" in str(err):
            return (
                f"a file in {manual} is corrupt or truncated (wrong checksum): re-copy the "
                f"canonical {_PRETTY[name]} files there, or " + _data_dir_hint(name)
            )
        return (
            f"check the files in {manual} (re-copy the canonical {_PRETTY[name]} files), or "
            f"delete {cache_dir() / 'tfds' / name} and try again"
        )
    return (
        "no data folder was given, so tensorflow-datasets tried to download it (this needs "
        "the network); " + _data_dir_hint(name)
    )


#: Where tensorflow-datasets downloads from: it looks for the prepared dataset on Google Cloud
#: Storage first (the canonical MNIST files are served from there too).
TFDS_DOWNLOAD_ADDRESS: tuple[str, int] = ("storage.googleapis.com", 443)
#: Seconds the network probe waits for a connection (DNS included) before it gives up.
NETWORK_PROBE_TIMEOUT = 3.0
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_SOURCES_STAMP = "spacenet_sources.json"


def _probe_address(address: tuple[str, int]) -> tuple[str, int]:
    """The address a download to ``address`` connects to first: the HTTPS proxy if one is set
    ($https_proxy, $all_proxy), else ``address`` itself."""
    for var in _PROXY_VARIABLES:
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        parsed = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
        if parsed.hostname:
            default = 443 if parsed.scheme == "https" else 1080 if "socks" in parsed.scheme else 80
            try:
                return parsed.hostname, parsed.port or default
            except ValueError:  # a port that is not a number: let the connection say so
                return parsed.hostname, default
    return address


def network_problem(
    address: tuple[str, int] = TFDS_DOWNLOAD_ADDRESS, timeout: float = NETWORK_PROBE_TIMEOUT
) -> str | None:
    """None if a TCP connection to ``address`` (or to the HTTPS proxy that downloads would go
    through) opens within ``timeout`` seconds, name resolution included; else what went wrong,
    in a few words. Never takes much longer than ``timeout``."""
    host, port = _probe_address(address)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except Exception as err:  # a probe reports, it never raises (it may outlive the call)
            outcome.append(err)

    thread = threading.Thread(target=connect, name="spacenet-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    via = "" if (host, port) == tuple(address) else " (the proxy from the environment)"
    if not outcome:
        return f"no connection to {host}:{port}{via} within {timeout:g} s"
    if outcome[0] is not None:
        return f"cannot connect to {host}:{port}{via}: {_one_line(outcome[0])}"
    return None


def require_network(name: str, hint: str, timeout: float = NETWORK_PROBE_TIMEOUT) -> None:
    """Raise DatasetError at once, with ``hint`` (how to give local files instead), when a
    download of ``name`` cannot work because the network is unreachable."""
    problem = network_problem(timeout=timeout)
    if problem is None:
        return
    raise DatasetError(
        f"cannot load {name}: no data folder was given (no --data-dir, $SPACENET_DATA_DIR is "
        f"not set) and no cache of it exists in {cache_dir()}, so it would be downloaded, but "
        f"the network is unreachable ({problem}). Fix: {hint}"
    )


def _tfds_prepared(tfds_root: pathlib.Path, name: str) -> bool:
    """Whether tfds has a prepared ``name`` in ``tfds_root`` (``<name>/<version>/``)."""
    return any((tfds_root / name).glob("*/dataset_info.json"))


def _tfds_sources(tfds_root: pathlib.Path) -> object:
    """The fingerprint of the files a tfds folder was prepared from (None: downloaded),
    or ``"unknown"`` when no readable stamp says."""
    try:
        return json.loads((tfds_root / _SOURCES_STAMP).read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _load_with_tfds(
    name: str,
    data_dir: pathlib.Path | None,
    sources: list[dict[str, object]] | None = None,
    *,
    verbose: bool,
) -> ImageDataset:
    """Prepare ``name`` with tfds in ``cache_dir()/tfds/<name>`` (from the files in ``data_dir``,
    fingerprinted as ``sources``, else from the network) and read it.

    A folder prepared from other files (or downloaded, or of unknown origin) is deleted first
    when ``data_dir`` is given, so that tfds re-reads and checksums the files given now."""
    manual = None
    if data_dir is not None:
        manual = _find_manual_dir(name, data_dir)
        _check_manual_files(name, manual)

    tfds_root = cache_dir() / "tfds" / name
    if manual is not None and sources is None:
        sources = source_fingerprint([manual / f for f in CANONICAL_FILES])
    if manual is not None and tfds_root.exists() and _tfds_sources(tfds_root) != sources:
        _warn(
            f"{tfds_root} was not prepared from the files in {manual}; deleting it to prepare "
            "them again"
        )
        shutil.rmtree(tfds_root, ignore_errors=True)
    if manual is None and not _tfds_prepared(tfds_root, name):
        require_network(name, _data_dir_hint(name))
    origin = str(manual) if manual is not None else "the network"
    _info(f"preparing {name} with tensorflow-datasets from {origin} (first use only)...", verbose)
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow_datasets as tfds

        if not (verbose and sys.stderr.isatty()):  # tfds's bars flood logs and CI output
            tfds.disable_progress_bar()
        if manual is not None:
            config = tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=False)
        else:
            config = tfds.download.DownloadConfig()
        builder = tfds.builder(name, data_dir=str(tfds_root))
        builder.download_and_prepare(
            download_dir=str(tfds_root / "downloads"), download_config=config
        )
        splits = {}
        for split in SPLIT_SIZES:
            images, labels = tfds.as_numpy(
                builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
            )
            splits[split] = (
                np.ascontiguousarray(np.asarray(images, dtype=np.uint8).reshape(len(images), -1)),
                np.asarray(labels).astype(np.int32),
            )
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"cannot prepare {name} with tensorflow-datasets from {origin} "
            f"(tfds folder {tfds_root}): {_one_line(err)}. Fix: {_tfds_fix(name, err, manual)}"
        ) from err

    dataset = _from_splits(name, splits, _num_classes(name), _image_shape(name))
    _verify(
        dataset,
        source=f"tensorflow-datasets (prepared in {tfds_root} from {origin})",
        fix=(
            f"delete {tfds_root}, check that {origin} holds the canonical {_PRETTY[name]} "
            "files, and load again"
        ),
    )
    if manual is not None or not (tfds_root / _SOURCES_STAMP).exists():
        # What the prepared folder was made from (None: downloaded), for the next load.
        stamp = json.dumps({"sources": sources}, indent=2) + "\n"
        with contextlib.suppress(OSError):
            _atomic_write(tfds_root / _SOURCES_STAMP, lambda f: f.write(stamp.encode()))
    return dataset

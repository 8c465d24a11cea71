"""Loading MNIST and Fashion-MNIST as numpy arrays, and splitting them into class-incremental tasks.

The first load of a dataset goes through TensorFlow Datasets (tfds), from a folder holding the
canonical gzip idx files (``--data-dir`` / ``$SPACENET_DATA_DIR``) or, without one, from the
network. The result is checked and cached as an ``.npz`` file (with a ``.json`` sidecar holding
its sha256) under :func:`cache_dir`, so later loads are plain numpy reads that never import
TensorFlow.

TensorFlow and tensorflow-datasets are imported lazily, only on the slow path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import operator
import os
import pathlib
import sys
import tempfile
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "SUPPORTED",
    "DatasetError",
    "ImageDataset",
    "cache_dir",
    "load_dataset",
    "resolve_data_dir",
    "task_indices",
]

SUPPORTED: tuple[str, ...] = ("mnist", "fashion_mnist")

CANONICAL_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

NUM_CLASSES = 10
NUM_PIXELS = 28 * 28
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}

_PRETTY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_DATA_DIR_HINT = (
    "point --data-dir (or $SPACENET_DATA_DIR) at a folder holding '{name}/' with the files "
    + ", ".join(CANONICAL_FILES)
    + " (e.g. ../shared/datasets)"
)


class DatasetError(RuntimeError):
    """A dataset could not be loaded; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A whole image-classification dataset held in memory.

    Attributes:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        train_images: uint8, shape (60000, 784), each row a row-major flattened 28x28 image.
        train_labels: int32, shape (60000,).
        test_images: uint8, shape (10000, 784).
        test_labels: int32, shape (10000,).
        num_classes: number of classes (10).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


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
    """Load MNIST or Fashion-MNIST as flattened uint8 images and int32 labels.

    A verified npz cache under ``cache_dir()/arrays`` is used when present (no TensorFlow
    import). Otherwise the dataset is prepared with tensorflow-datasets, from the canonical
    files in ``resolve_data_dir(data_dir)`` (``<data_dir>/<name>/`` or ``<data_dir>`` itself)
    or, when no data folder is given, downloaded by tfds; then verified and cached.

    Args:
        name: one of :data:`SUPPORTED`.
        data_dir: folder holding the canonical gzip idx files; see :func:`resolve_data_dir`.
            Ignored when a valid cache exists.
        verbose: print short progress lines to stderr.

    Raises:
        DatasetError: unknown name, missing/corrupt files, files of the other dataset, a bad
            cache, or TensorFlow / tensorflow-datasets missing or failing.
    """
    if name not in SUPPORTED:
        raise DatasetError(
            f"unknown dataset {name!r}: supported datasets are {', '.join(SUPPORTED)}"
        )

    cached = _load_cache(name)
    if cached is not None:
        return cached

    dataset = _load_with_tfds(name, resolve_data_dir(data_dir), verbose=verbose)
    _write_cache(dataset, verbose=verbose)
    return dataset


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
    print(f"spacenet_jax.data: warning: {msg}", file=sys.stderr, flush=True)


def _info(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"spacenet_jax.data: {msg}", file=sys.stderr, flush=True)


def _load_cache(name: str) -> ImageDataset | None:
    """The cached dataset, or None (after a warning when the cache is bad) to rebuild it."""
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
    try:
        raw = npz_path.read_bytes()
    except OSError as err:
        _warn(f"cache {npz_path} is unreadable ({_one_line(err)}); rebuilding it")
        return None
    if hashlib.sha256(raw).hexdigest() != expected:
        _warn(f"cache {npz_path} does not match the sha256 in {json_path.name}; rebuilding it")
        return None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in _ARRAY_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zlib.error) as err:
        _warn(f"cache {npz_path} is unreadable ({_one_line(err)}); rebuilding it")
        return None
    dataset = ImageDataset(name=name, num_classes=NUM_CLASSES, **arrays)
    _verify(
        dataset,
        source=f"the cache {npz_path}",
        fix=f"delete {npz_path} (and {json_path.name}) and load again to rebuild it",
    )
    return dataset


def _write_cache(dataset: ImageDataset, *, verbose: bool) -> None:
    """Write the npz and its json sidecar atomically; warn (and go on) when that fails."""
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


def _verify(dataset: ImageDataset, *, source: str, fix: str) -> None:
    """Check sizes, dtypes, label set and which dataset it is; raise DatasetError if wrong."""
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
                f"canonical {_PRETTY[name]} files there, or " + _DATA_DIR_HINT.format(name=name)
            )
        return (
            f"check the files in {manual} (re-copy the canonical {_PRETTY[name]} files), or "
            f"delete {cache_dir() / 'tfds' / name} and try again"
        )
    return (
        "no data folder was given, so tensorflow-datasets tried to download it (this needs "
        "the network); " + _DATA_DIR_HINT.format(name=name)
    )


def _load_with_tfds(name: str, data_dir: pathlib.Path | None, *, verbose: bool) -> ImageDataset:
    manual = None
    if data_dir is not None:
        manual = _find_manual_dir(name, data_dir)
        _check_manual_files(name, manual)

    tfds_root = cache_dir() / "tfds" / name
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

    dataset = ImageDataset(
        name=name,
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        num_classes=NUM_CLASSES,
    )
    _verify(
        dataset,
        source=f"tensorflow-datasets (prepared in {tfds_root} from {origin})",
        fix=(
            f"delete {tfds_root}, check that {origin} holds the canonical {_PRETTY[name]} "
            "files, and load again"
        ),
    )
    return dataset

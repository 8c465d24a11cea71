"""Tests of storage.data on the real MNIST / Fashion-MNIST files in ../shared/datasets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from spacenet_jax.storage import data
from spacenet_jax.storage.data import DatasetError, ImageDataset, load_dataset, task_indices

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FILES = data.CANONICAL_FILES
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_shared = pytest.mark.skipif(
    not all((SHARED / n / f).is_file() for n in data.MNIST_DATASETS for f in FILES),
    reason=f"canonical MNIST / Fashion-MNIST files not found under {SHARED}",
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and no inherited data folder."""
    monkeypatch.setenv("SPACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPACENET_DATA_DIR", raising=False)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _prepare(name: str, tmp_path_factory) -> tuple[ImageDataset, Path]:
    if not all((SHARED / name / f).is_file() for f in FILES):
        pytest.skip(f"canonical {name} files not found under {SHARED / name}")
    cache = tmp_path_factory.mktemp(f"{name}_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPACENET_CACHE_DIR", str(cache))
        mp.delenv("SPACENET_DATA_DIR", raising=False)
        _no_network(mp)
        ds = load_dataset(name, SHARED, verbose=False)
    return ds, cache


@pytest.fixture(scope="module")
def mnist_load(tmp_path_factory):
    """MNIST prepared once through tfds from ../shared/datasets; (dataset, cache folder)."""
    return _prepare("mnist", tmp_path_factory)


@pytest.fixture(scope="module")
def fashion_load(tmp_path_factory):
    return _prepare("fashion_mnist", tmp_path_factory)


def _copy_prepared(src_cache: Path, dst_cache: Path, name: str) -> None:
    """Copy the tfds-prepared dataset (not the npz cache) so a rebuild needs no prepare step."""
    shutil.copytree(
        src_cache / "tfds" / name,
        dst_cache / "tfds" / name,
        ignore=shutil.ignore_patterns("downloads"),
    )


def _link_folder(dst: Path, src: Path, files=FILES) -> Path:
    dst.mkdir(parents=True)
    for f in files:
        (dst / f).symlink_to(src / f)
    return dst


def _check_common(ds: ImageDataset, name: str) -> None:
    assert ds.name == name
    assert ds.num_classes == 10
    assert ds.train_images.shape == (60000, 784) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 784) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (60000,) and ds.train_labels.dtype == np.int32
    assert ds.test_labels.shape == (10000,) and ds.test_labels.dtype == np.int32
    for images in (ds.train_images, ds.test_images):
        assert images.min() == 0 and images.max() == 255
    assert ds.train_images.flags.c_contiguous


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.slow
def test_mnist_loads_through_tfds(mnist_load):
    ds, cache = mnist_load
    _check_common(ds, "mnist")
    assert np.bincount(ds.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.test_labels).tolist() == MNIST_TEST_COUNTS
    # Row-major flattening of 28x28: the central pixels of digits are inked, the corners never.
    assert ds.train_images.reshape(-1, 28, 28)[:, 0, 0].max() == 0
    assert ds.train_images.reshape(-1, 28, 28)[:, 14, 14].mean() > 100
    npz, sidecar = cache / "arrays" / "mnist.npz", cache / "arrays" / "mnist.json"
    meta = json.loads(sidecar.read_text())
    assert meta["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert meta["name"] == "mnist"
    assert (meta["train_size"], meta["test_size"]) == (60000, 10000)
    assert not list((cache / "arrays").glob("*.tmp"))


def test_mnist_second_load_uses_cache_without_tensorflow(mnist_load):
    ds, cache = mnist_load
    script = textwrap.dedent(
        """
        import sys
        from spacenet_jax.storage.data import load_dataset
        ds = load_dataset("mnist", sys.argv[1])  # the files the cache was made from
        ds = load_dataset("mnist")  # no data folder: the cache as it is
        assert "tensorflow" not in sys.modules, "the cached load imported tensorflow"
        assert "tensorflow_datasets" not in sys.modules
        print(int(ds.train_images.sum(dtype="int64")), int(ds.test_labels.sum()))
        """
    )
    env = {**os.environ, "SPACENET_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SPACENET_DATA_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", script, str(SHARED)], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        str(int(ds.train_images.sum(dtype=np.int64))),
        str(int(ds.test_labels.sum())),
    ]
    assert "preparing" not in out.stderr and "warning" not in out.stderr


@pytest.mark.slow
def test_fashion_mnist_loads(fashion_load, mnist_load):
    ds, _ = fashion_load
    _check_common(ds, "fashion_mnist")
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    # Not MNIST's pixels under another name (the shared extraction-cache trap).
    assert not np.array_equal(ds.train_images[:100], mnist_load[0].train_images[:100])


@needs_shared
def test_mnist_name_with_fashion_files_raises(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    _link_folder(tmp_path / "data" / "mnist", SHARED / "fashion_mnist")
    with pytest.raises(DatasetError, match="Fashion-MNIST") as info:
        load_dataset("mnist", tmp_path / "data", verbose=False)
    assert "6000" in str(info.value)


@needs_shared
def test_fashion_name_with_mnist_files_raises(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    _link_folder(tmp_path / "data", SHARED / "mnist")  # the four files directly in data_dir
    with pytest.raises(DatasetError, match="look like MNIST"):
        load_dataset("fashion_mnist", tmp_path / "data", verbose=False)


@pytest.mark.parametrize("name", data.MNIST_DATASETS)
def test_cache_of_the_other_dataset_is_refused(tmp_path, name):
    """The fast path verifies too: a cache whose class counts belong to the other dataset."""
    rng = np.random.default_rng(0)
    if name == "mnist":  # give "mnist" Fashion-like counts
        train, test = np.repeat(np.arange(10), 6000), np.repeat(np.arange(10), 1000)
    else:
        train = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)
        test = np.repeat(np.arange(10), MNIST_TEST_COUNTS)
    arrays = tmp_path / "cache" / "arrays"
    arrays.mkdir(parents=True)
    npz = arrays / f"{name}.npz"
    np.savez(
        npz,
        train_images=np.zeros((60000, 784), np.uint8),
        train_labels=rng.permutation(train).astype(np.int32),
        test_images=np.zeros((10000, 784), np.uint8),
        test_labels=rng.permutation(test).astype(np.int32),
    )
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    (arrays / f"{name}.json").write_text(json.dumps({"name": name, "sha256": digest}))
    other = "Fashion-MNIST" if name == "mnist" else "MNIST"
    with pytest.raises(DatasetError, match=f"look like {other}") as info:
        load_dataset(name, verbose=False)
    assert f"delete {npz}" in str(info.value)
    assert not (tmp_path / "cache" / "tfds").exists()


# ---------------------------------------------------------------------------------------------
# missing and corrupt files


def test_unknown_name():
    with pytest.raises(DatasetError, match="mnist, fashion_mnist"):
        load_dataset("imagenet")


def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", missing, verbose=False)
    msg = str(info.value)
    assert str(missing) in msg and "--data-dir" in msg and "train-images-idx3-ubyte.gz" in msg
    assert not (tmp_path / "cache").exists()


@needs_shared
@pytest.mark.parametrize("missing", FILES)
def test_missing_file(tmp_path, missing):
    folder = _link_folder(
        tmp_path / "data" / "mnist", SHARED / "mnist", [f for f in FILES if f != missing]
    )
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "data", verbose=False)
    msg = str(info.value)
    assert missing in msg and str(folder) in msg
    assert "--data-dir" in msg and "SPACENET_DATA_DIR" in msg
    assert all(f not in msg.split(";")[0] for f in FILES if f != missing)


def test_data_dir_without_dataset_subfolder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="no 'mnist/' subfolder") as info:
        load_dataset("mnist", tmp_path / "data", verbose=False)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)


def _mnist_with_first_file_cut(folder: Path) -> Path:
    """A copy of the shared MNIST folder (links) whose first file is cut in half."""
    folder = _link_folder(folder, SHARED / "mnist", [f for f in FILES if f != FILES[0]])
    whole = (SHARED / "mnist" / FILES[0]).read_bytes()
    (folder / FILES[0]).write_bytes(whole[: len(whole) // 2])
    return folder


@needs_shared
def test_truncated_file_fails_checksum_without_network(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    folder = _mnist_with_first_file_cut(tmp_path / "data" / "mnist")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "data", verbose=False)
    msg = str(info.value)
    assert "checksum" in msg.lower() and "re-copy" in msg and str(folder) in msg
    assert "\n" not in msg
    assert info.value.__cause__ is not None
    assert not (tmp_path / "cache" / "arrays" / "mnist.npz").exists()


@needs_shared
def test_missing_tensorflow_datasets_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DatasetError, match="pip install tensorflow-datasets") as info:
        load_dataset("mnist", SHARED, verbose=False)
    assert isinstance(info.value.__cause__, ImportError)


# ---------------------------------------------------------------------------------------------
# cache


def test_tampered_cache_is_rebuilt(mnist_load, tmp_path, capsys):
    ds, src = mnist_load
    cache = tmp_path / "cache"
    _copy_prepared(src, cache, "mnist")
    (cache / "arrays").mkdir()
    for f in ("mnist.npz", "mnist.json"):
        shutil.copy(src / "arrays" / f, cache / "arrays" / f)
    npz = cache / "arrays" / "mnist.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one pixel of the training images: np.load would not notice
    npz.write_bytes(bytes(raw))

    again = load_dataset("mnist", SHARED, verbose=True)

    err = capsys.readouterr().err
    assert "does not match the sha256" in err and "rebuilding" in err
    assert "preparing mnist with tensorflow-datasets" in err and "cached mnist" in err
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)
    assert npz.read_bytes() == (src / "arrays" / "mnist.npz").read_bytes()


def test_unreadable_cache_is_rebuilt(mnist_load, tmp_path, capsys):
    ds, src = mnist_load
    cache = tmp_path / "cache"
    _copy_prepared(src, cache, "mnist")
    (cache / "arrays").mkdir()
    npz = cache / "arrays" / "mnist.npz"
    npz.write_bytes(b"not an npz file")
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    (cache / "arrays" / "mnist.json").write_text(json.dumps({"name": "mnist", "sha256": digest}))

    again = load_dataset("mnist", SHARED, verbose=False)

    assert "unreadable" in capsys.readouterr().err
    np.testing.assert_array_equal(again.train_labels, ds.train_labels)
    assert npz.stat().st_size > 40_000_000


def test_unwritable_cache_warns_and_continues(mnist_load, tmp_path, capsys):
    ds, src = mnist_load
    cache = tmp_path / "cache"
    _copy_prepared(src, cache, "mnist")
    (cache / "arrays").write_text("a file where the cache folder should be")

    again = load_dataset("mnist", SHARED, verbose=False)

    assert "could not write the cache" in capsys.readouterr().err
    np.testing.assert_array_equal(again.test_images, ds.test_images)


@needs_shared
def test_cache_and_tfds_folder_made_from_other_files_are_not_used(
    mnist_load, tmp_path, monkeypatch, capsys
):
    """Both the arrays and tfds's prepared folder remember their source files: a data folder
    whose files differ (here a truncated copy) is read again, and tfds's checksum refuses it."""
    _no_network(monkeypatch)
    _, src = mnist_load
    cache = tmp_path / "cache"
    _copy_prepared(src, cache, "mnist")
    shutil.copytree(src / "arrays", cache / "arrays")
    recorded = json.loads((cache / "arrays" / "mnist.json").read_text())["sources"]
    assert [s["name"] for s in recorded] == list(FILES)
    assert recorded[0]["sha256"] == hashlib.sha256(
        (SHARED / "mnist" / FILES[0]).read_bytes()).hexdigest()
    stamp = json.loads((cache / "tfds" / "mnist" / "spacenet_sources.json").read_text())
    assert stamp["sources"] == recorded

    folder = _mnist_with_first_file_cut(tmp_path / "data" / "mnist")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "data", verbose=False)
    assert "checksum" in str(info.value).lower() and str(folder) in str(info.value)
    err = capsys.readouterr().err
    assert f"was not made from the files in {folder}" in err
    assert f"{FILES[0]} differs" in err and "deleting it to prepare them again" in err


# ---------------------------------------------------------------------------------------------
# configuration


def test_resolve_data_dir(tmp_path, monkeypatch):
    assert data.resolve_data_dir(None) is None
    monkeypatch.setenv("SPACENET_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_cache_dir(tmp_path, monkeypatch):
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SPACENET_CACHE_DIR")
    assert data.cache_dir() == Path.home() / ".cache" / "spacenet_jax"


def test_spacenet_data_dir_env_is_honoured(mnist_load, tmp_path, monkeypatch):
    bad = tmp_path / "env_data"
    monkeypatch.setenv("SPACENET_DATA_DIR", str(bad))
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        load_dataset("mnist", verbose=False)

    if not (SHARED / "mnist").is_dir():
        pytest.skip(f"{SHARED / 'mnist'} is absent")
    ds, src = mnist_load
    _copy_prepared(src, tmp_path / "cache", "mnist")
    monkeypatch.setenv("SPACENET_DATA_DIR", str(SHARED))
    again = load_dataset("mnist", verbose=False)
    np.testing.assert_array_equal(again.train_labels, ds.train_labels)


# ---------------------------------------------------------------------------------------------
# task_indices


def test_task_indices_partition():
    labels = np.array([3, 0, 1, 2, 0, 3, 1, 2, 4, 5, 5, 4])
    tasks = task_indices(labels, [(0, 1), [2, 3], (5, 4)])
    assert [t.tolist() for t in tasks] == [[1, 2, 4, 6], [0, 3, 5, 7], [8, 9, 10, 11]]
    assert all(t.dtype == np.int32 for t in tasks)
    assert sorted(np.concatenate(tasks).tolist()) == list(range(len(labels)))
    for t, classes in zip(tasks, [(0, 1), (2, 3), (4, 5)], strict=True):
        assert set(labels[t].tolist()) == set(classes)


def test_task_indices_partial_tasks_and_numpy_classes():
    labels = np.arange(10, dtype=np.int32).repeat(3)
    (only,) = task_indices(labels, [np.array([9, 7])])
    assert only.tolist() == [21, 22, 23, 27, 28, 29]


@pytest.mark.parametrize(
    "task_classes, match",
    [
        ([(0, 1), (2, 6)], "out of range"),
        ([(0, -1)], "out of range"),
        ([(0, 1), (1, 2)], "two tasks"),
        ([(0, 1), (4,)], "no examples"),
        ([(0, 1), ()], "no examples"),
        ([(0, 1.5)], "integers"),
    ],
)
def test_task_indices_errors(task_classes, match):
    labels = np.array([0, 1, 2, 3, 5, 5])
    with pytest.raises(ValueError, match=match):
        task_indices(labels, task_classes)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_cache_arrays_are_read_without_copies_and_equal_np_load(tmp_path, save):
    from spacenet_jax.storage.data import _npz_arrays

    rng = np.random.default_rng(0)
    arrays = {"a": rng.integers(0, 255, (7, 5), dtype=np.uint8),
              "b": rng.integers(0, 9, (7,)).astype(np.int32),
              "c": np.asfortranarray(rng.normal(size=(3, 4)))}
    path = tmp_path / "x.npz"
    save(path, **arrays)
    raw = bytearray(path.read_bytes())
    read = _npz_arrays(raw, ["a", "b", "c"])
    for k, v in arrays.items():
        np.testing.assert_array_equal(read[k], v)
        assert read[k].dtype == v.dtype and read[k].flags.writeable
    if save is np.savez:  # stored: views of the buffer, not copies
        assert all(np.shares_memory(read[k], np.frombuffer(raw, np.uint8)) for k in arrays)
        with pytest.raises(ValueError, match="truncated"):
            _npz_arrays(_truncated_member(raw), ["a"])


def _truncated_member(raw: bytearray) -> bytearray:
    """``raw`` with member ``a`` one byte short of what its ``.npy`` header announces."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "a.npy":
                data = data[:-1]  # one byte short of the header's shape
            dst.writestr(item, data)
    return bytearray(out.getvalue())

"""Tests of the CIFAR-10 / CIFAR-100 loaders of spacenet_jax.storage.data on small files in the
publisher's binary format (and, marked slow, on the real CIFAR-10 in ../shared/datasets)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from spacenet_jax.storage import data
from spacenet_jax.storage.data import DatasetError, ImageDataset, load_dataset, task_indices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CIFAR10_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
CIFAR100_FILES = ["train.bin", "test.bin"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and no inherited data folder."""
    monkeypatch.setenv("SPACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPACENET_DATA_DIR", raising=False)


def _planes(r: int, g: int, b: int) -> bytes:
    """3072 pixel bytes whose red plane is all r, green all g and blue all b."""
    return bytes([r]) * 1024 + bytes([g]) * 1024 + bytes([b]) * 1024


def _ramp(seed: int) -> bytes:
    """3072 distinct-ish pixel bytes: channel c of pixel (y, x) is (seed + 7c + 3y + x) % 256."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((seed + 7 * c + 3 * y + x) % 256).astype(np.uint8).tobytes()


def _ramp_hwc(seed: int) -> np.ndarray:
    y, x, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((seed + 7 * c + 3 * y + x) % 256).astype(np.uint8)


def _write_cifar10(folder: Path, skip: tuple[str, ...] = ()) -> Path:
    """Two records per batch file: label k of file f is (2f + k) % 10, pixels below."""
    folder.mkdir(parents=True, exist_ok=True)
    for f, name in enumerate(CIFAR10_FILES):
        if name in skip:
            continue
        records = []
        for k in range(2):
            label = (2 * f + k) % 10
            pixels = _planes(10, 20, 30) if (f, k) == (0, 0) else _ramp(label)
            records.append(bytes([label]) + pixels)
        (folder / name).write_bytes(b"".join(records))
    return folder


def _write_cifar100(folder: Path) -> Path:
    """train.bin: 3 records, test.bin: 2; coarse labels differ from the fine ones."""
    folder.mkdir(parents=True, exist_ok=True)
    train = [(3, 17, _planes(10, 20, 30)), (19, 99, _ramp(1)), (0, 0, _ramp(2))]
    test = [(5, 42, _ramp(3)), (11, 64, _planes(255, 0, 128))]
    for name, recs in (("train.bin", train), ("test.bin", test)):
        (folder / name).write_bytes(b"".join(bytes([c, f]) + px for c, f, px in recs))
    return folder


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_shapes_labels_and_hwc_order(tmp_path, capsys):
    _write_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", tmp_path / "data", verbose=False)

    assert isinstance(ds, ImageDataset)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
    assert ds.train_images.shape == (10, 3072) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (2, 3072) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.train_images.flags.c_contiguous and ds.test_images.flags.c_contiguous
    # Batches in order 1..5, records in file order.
    assert ds.train_labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert ds.test_labels.tolist() == [0, 1]

    images = ds.train_images.reshape(-1, *ds.image_shape)
    assert images[0, 0, 0].tolist() == [10, 20, 30]
    assert (images[0, ..., 0] == 10).all() and (images[0, ..., 1] == 20).all()
    assert (images[0, ..., 2] == 30).all()
    assert ds.train_images[0, :6].tolist() == [10, 20, 30, 10, 20, 30]  # HWC, not CHW
    for i in range(1, 10):
        np.testing.assert_array_equal(images[i], _ramp_hwc(int(ds.train_labels[i])))
    np.testing.assert_array_equal(ds.test_images[1].reshape(32, 32, 3), _ramp_hwc(1))
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["nested", "batches_folder", "name_folder", "itself"])
def test_cifar10_folder_layouts(tmp_path, layout):
    root = tmp_path / "data"
    folder = {
        "nested": root / "cifar10" / "cifar-10-batches-bin",
        "batches_folder": root / "cifar-10-batches-bin",
        "name_folder": root / "cifar10",
        "itself": root,
    }[layout]
    _write_cifar10(folder)
    ds = load_dataset("cifar10", root, verbose=False)
    assert ds.train_labels.shape == (10,)
    # data_dir pointing at the batches folder itself works too.
    (tmp_path / "cache" / "arrays" / "cifar10.npz").unlink()
    assert load_dataset("cifar10", folder, verbose=False).test_labels.tolist() == [0, 1]


def test_cifar10_data_dir_from_environment(tmp_path, monkeypatch):
    _write_cifar10(tmp_path / "env" / "cifar-10-batches-bin")
    monkeypatch.setenv("SPACENET_DATA_DIR", str(tmp_path / "env"))
    assert load_dataset("cifar10", verbose=False).train_labels.shape == (10,)


def test_cifar10_cache_round_trip(tmp_path, capsys):
    root = tmp_path / "data"
    _write_cifar10(root / "cifar-10-batches-bin")
    first = load_dataset("cifar10", root, verbose=True)
    err = capsys.readouterr().err
    assert "reading cifar10" in err and "cached cifar10" in err

    arrays = tmp_path / "cache" / "arrays"
    npz, sidecar = arrays / "cifar10.npz", arrays / "cifar10.json"
    meta = json.loads(sidecar.read_text())
    assert meta["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert meta["name"] == "cifar10" and meta["num_classes"] == 10
    assert meta["image_shape"] == [32, 32, 3]
    assert (meta["train_size"], meta["test_size"]) == (10, 2)

    assert [s["name"] for s in meta["sources"]] == CIFAR10_FILES
    # The second load from the same files reads the cache.
    again = load_dataset("cifar10", root, verbose=True)
    assert capsys.readouterr().err == ""
    # Without a data folder the cache is all that is needed; a data folder given must be whole.
    (root / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    assert load_dataset("cifar10", verbose=True).test_labels.tolist() == [0, 1]
    assert capsys.readouterr().err == ""
    with pytest.raises(DatasetError, match=r"missing batch file.*test_batch\.bin"):
        load_dataset("cifar10", root, verbose=True)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        a, b = getattr(first, key), getattr(again, key)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert (again.num_classes, again.image_shape) == (10, (32, 32, 3))


@pytest.mark.parametrize("other_process_caches", [True, False])
def test_a_load_waits_for_another_process_preparing_the_same_dataset(
    tmp_path, monkeypatch, capsys, other_process_caches
):
    """While another process holds the dataset's preparation lock, a load waits; then it reads
    that process's cache instead of preparing again, or, if the other one died without caching,
    prepares it itself."""
    import threading

    from filelock import FileLock

    root = tmp_path / "data"
    folder = _write_cifar10(root / "cifar-10-batches-bin")
    reads = []
    read = data._load_cifar_binary
    monkeypatch.setattr(data, "_load_cifar_binary",
                        lambda *a, **k: reads.append(1) or read(*a, **k))
    other = FileLock(tmp_path / "cache" / "locks" / "cifar10.lock")
    (tmp_path / "cache" / "locks").mkdir(parents=True)
    other.acquire()
    loaded = {}
    waiter = threading.Thread(target=lambda: loaded.update(ds=load_dataset("cifar10", root)))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and reads == []  # waiting, nothing read yet
    if other_process_caches:
        sources = data.source_fingerprint([folder / f for f in CIFAR10_FILES])
        data._write_cache(read("cifar10", root, verbose=False), sources, verbose=False)
    other.release()
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    err = capsys.readouterr().err
    assert "another process is preparing cifar10" in err and "waiting for it" in err
    assert reads == ([] if other_process_caches else [1])
    assert ("reading cifar10" in err) is not other_process_caches
    assert loaded["ds"].train_labels.tolist() == [(2 * f + k) % 10 for f in range(5)
                                                   for k in range(2)]


def test_cifar10_tampered_cache_is_reread(tmp_path, capsys):
    root = tmp_path / "data"
    _write_cifar10(root / "cifar-10-batches-bin")
    first = load_dataset("cifar10", root, verbose=False)
    npz = tmp_path / "cache" / "arrays" / "cifar10.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    again = load_dataset("cifar10", root, verbose=False)
    assert "does not match the sha256" in capsys.readouterr().err
    np.testing.assert_array_equal(again.train_images, first.train_images)


def test_task_indices_on_cifar10(tmp_path):
    _write_cifar10(tmp_path / "data" / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", tmp_path / "data", verbose=False)
    tasks = task_indices(ds.train_labels, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)])
    assert [t.tolist() for t in tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


# ---------------------------------------------------------------------------------------------
# CIFAR-100


@pytest.mark.parametrize(
    "where", [("cifar100", "cifar-100-binary"), ("cifar-100-binary",), ("cifar100",), ()]
)
def test_cifar100_fine_labels_and_hwc_order(tmp_path, where, capsys):
    root = tmp_path / "data"
    _write_cifar100(root.joinpath(*where))
    ds = load_dataset("cifar100", root, verbose=False)

    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.image_shape == (32, 32, 3)
    assert ds.train_images.shape == (3, 3072) and ds.test_images.shape == (2, 3072)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.train_labels.tolist() == [17, 99, 0]  # fine labels, not coarse (3, 19, 0)
    assert ds.test_labels.tolist() == [42, 64]
    images = ds.train_images.reshape(-1, 32, 32, 3)
    assert images[0, 0, 0].tolist() == [10, 20, 30] and (images[0, ..., 0] == 10).all()
    np.testing.assert_array_equal(images[1], _ramp_hwc(1))
    assert ds.test_images.reshape(-1, 32, 32, 3)[1, 31, 31].tolist() == [255, 0, 128]
    assert "warning" not in capsys.readouterr().err

    again = load_dataset("cifar100", verbose=False)  # from the cache
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    assert again.train_labels.tolist() == [17, 99, 0] and again.num_classes == 100


def test_cifar100_label_out_of_range(tmp_path):
    folder = _write_cifar100(tmp_path / "data" / "cifar-100-binary")
    raw = bytearray((folder / "test.bin").read_bytes())
    raw[3074 + 1] = 100  # fine label of the second record
    (folder / "test.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"label out of range: record 1 has label 100") as info:
        load_dataset("cifar100", tmp_path / "data", verbose=False)
    assert str(folder / "test.bin") in str(info.value) and "0 to 99" in str(info.value)


def test_cifar100_coarse_label_out_of_range(tmp_path):
    folder = _write_cifar100(tmp_path / "data" / "cifar-100-binary")
    raw = bytearray((folder / "train.bin").read_bytes())
    raw[0] = 20
    (folder / "train.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"coarse label out of range.*0 to 19"):
        load_dataset("cifar100", tmp_path / "data", verbose=False)


def test_cifar100_refuses_cifar10_files(tmp_path):
    """A CIFAR-10 batch is 3073-byte records; read as CIFAR-100 the size does not fit."""
    folder = tmp_path / "data" / "cifar-100-binary"
    _write_cifar10(folder)
    (folder / "data_batch_1.bin").rename(folder / "train.bin")
    (folder / "test_batch.bin").rename(folder / "test.bin")
    with pytest.raises(DatasetError, match="truncated or not a CIFAR binary batch"):
        load_dataset("cifar100", tmp_path / "data", verbose=False)


def test_cifar100_missing_folder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match="cifar100/cifar-100-binary"):
        load_dataset("cifar100", tmp_path / "data", verbose=False)


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DatasetError, match=re.escape(f"{missing} does not exist")) as info:
        load_dataset("cifar10", missing, verbose=False)
    assert "--data-dir" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_missing_cifar_folder(tmp_path):
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)  # an empty dataset folder does not count
    (root / "mnist").mkdir()
    with pytest.raises(DatasetError, match="no folder with the CIFAR-10 binary files") as info:
        load_dataset("cifar10", root, verbose=False)
    msg = str(info.value)
    for looked in (root / "cifar10" / "cifar-10-batches-bin", root / "cifar-10-batches-bin"):
        assert f"{looked}/" in msg
    assert "--data-dir" in msg and "cifar10/cifar-10-batches-bin" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("missing", ["data_batch_3.bin", "test_batch.bin"])
def test_missing_batch_file(tmp_path, missing):
    folder = _write_cifar10(tmp_path / "data" / "cifar-10-batches-bin", skip=(missing,))
    with pytest.raises(
        DatasetError, match=re.escape(f"missing batch file(s) {missing} in")
    ) as info:
        load_dataset("cifar10", tmp_path / "data", verbose=False)
    assert str(folder) in str(info.value)
    assert not (tmp_path / "cache" / "arrays" / "cifar10.npz").exists()


@pytest.mark.parametrize("keep", [3073 * 2 - 1, 100, 0])
def test_truncated_batch_file(tmp_path, keep):
    folder = _write_cifar10(tmp_path / "data" / "cifar-10-batches-bin")
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetError, match="truncated or not a CIFAR binary batch") as info:
        load_dataset("cifar10", tmp_path / "data", verbose=False)
    msg = str(info.value)
    assert "data_batch_2.bin" in msg and f"{keep} bytes" in msg and "3073" in msg
    assert not (tmp_path / "cache" / "arrays" / "cifar10.npz").exists()


def test_label_out_of_range(tmp_path):
    folder = _write_cifar10(tmp_path / "data" / "cifar-10-batches-bin")
    path = folder / "data_batch_4.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 10  # label of the second record
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="label out of range: record 1 has label 10") as info:
        load_dataset("cifar10", tmp_path / "data", verbose=False)
    assert str(path) in str(info.value) and "0 to 9" in str(info.value)


def test_read_cifar_binary_directly(tmp_path):
    folder = _write_cifar10(tmp_path / "b")
    images, labels = data.read_cifar_binary(folder / "data_batch_1.bin")
    assert images.shape == (2, 3072) and labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        data.read_cifar_binary(folder / "data_batch_1.bin", "mnist")
    with pytest.raises(DatasetError, match="cannot read"):
        data.read_cifar_binary(folder / "absent.bin")


def test_supported_names():
    assert set(data.SUPPORTED) == {"mnist", "fashion_mnist", "cifar10", "cifar100",
                                   "cifar10_100"}
    with pytest.raises(DatasetError, match="cifar10, cifar100"):
        load_dataset("imagenet")


def test_positional_constructor_keeps_mnist_shape():
    ds = ImageDataset(
        "x",
        np.zeros((1, 784), np.uint8),
        np.zeros(1, np.int32),
        np.zeros((1, 784), np.uint8),
        np.zeros(1, np.int32),
        10,
    )
    assert ds.image_shape == (28, 28, 1)


# ---------------------------------------------------------------------------------------------
# the real CIFAR-10


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason=f"CIFAR-10 not found under {SHARED}")
def test_real_cifar10(tmp_path):
    ds = load_dataset("cifar10", SHARED, verbose=False)
    assert ds.train_images.shape == (50000, 3072) and ds.test_images.shape == (10000, 3072)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    # The publisher's first training images: frog, truck, truck, deer, automobile, ...
    assert ds.train_labels[:5].tolist() == [6, 9, 9, 4, 1]
    # Natural images are bluish-poor: over the training set the red mean beats the blue one.
    hwc = ds.train_images.reshape(-1, 32, 32, 3)
    assert hwc[..., 0].mean() > hwc[..., 2].mean() + 5
    again = load_dataset("cifar10", verbose=False)  # from the cache
    np.testing.assert_array_equal(again.test_images, ds.test_images)


def test_cifar10_100_is_a_dataset_name(tmp_path):
    """The paper's CIFAR-10/100 loads by name (checkpoints name it): CIFAR-10 as 0-9, CIFAR-100's
    fine classes below 50 as 10-59, the rest left out."""
    _write_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-bin")
    _write_cifar100(tmp_path / "data" / "cifar100" / "cifar-100-binary")
    both = load_dataset("cifar10_100", tmp_path / "data", verbose=False)
    assert both.name == "cifar10_100" and both.num_classes == 60
    # train: 10 CIFAR-10 records, then CIFAR-100 fine labels 17 and 0 (99 is left out).
    assert both.train_labels.tolist()[-2:] == [27, 10] and len(both.train_labels) == 12
    assert both.test_labels.tolist()[-1:] == [52] and len(both.test_labels) == 3

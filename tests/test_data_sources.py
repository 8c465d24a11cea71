"""The array cache is tied to the files it was made from, and a data folder that is given must
exist, cache or not (issue 14, item 4). Small CIFAR-10 files in the publisher's format keep these
tests fast (no TensorFlow); the tfds path is tested in test_data.py on the real MNIST files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spacenet_jax.storage import data
from spacenet_jax.storage.data import DatasetError, load_dataset

ROOT = Path(__file__).resolve().parents[1]
FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPACENET_DATA_DIR", raising=False)


def _write(folder: Path, shift: int = 0) -> Path:
    """One record per batch file: file f holds label (f + shift) % 10 and pixels of that value."""
    folder.mkdir(parents=True, exist_ok=True)
    for f, name in enumerate(FILES):
        label = (f + shift) % 10
        (folder / name).write_bytes(bytes([label]) + bytes([label * 20]) * 3072)
    return folder


def _sidecar(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "cache" / "arrays" / "cifar10.json").read_text())


def test_sidecar_records_the_source_files(tmp_path):
    folder = _write(tmp_path / "a" / "cifar-10-batches-bin")
    load_dataset("cifar10", tmp_path / "a", verbose=False)
    assert _sidecar(tmp_path)["sources"] == [
        {"name": f, "size": 3073,
         "sha256": hashlib.sha256((folder / f).read_bytes()).hexdigest()}
        for f in FILES
    ]


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_missing_data_dir_is_refused_even_with_a_cache(tmp_path, monkeypatch, how):
    _write(tmp_path / "a" / "cifar-10-batches-bin")
    load_dataset("cifar10", tmp_path / "a", verbose=False)
    missing = tmp_path / "nowhere"
    if how == "environment":
        monkeypatch.setenv("SPACENET_DATA_DIR", str(missing))
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", missing if how == "argument" else None, verbose=False)
    msg = str(info.value)
    assert f"the data folder {missing} does not exist" in msg
    assert "--data-dir" in msg and "SPACENET_DATA_DIR" in msg and "data_batch_1.bin" in msg


def test_other_files_rebuild_the_cache_and_the_same_files_elsewhere_do_not(tmp_path, capsys):
    _write(tmp_path / "a" / "cifar-10-batches-bin")
    first = load_dataset("cifar10", tmp_path / "a", verbose=False)
    assert first.train_labels.tolist() == [0, 1, 2, 3, 4]
    capsys.readouterr()

    _write(tmp_path / "b" / "cifar-10-batches-bin", shift=3)  # same names and sizes, other bytes
    other = load_dataset("cifar10", tmp_path / "b", verbose=True)
    err = capsys.readouterr().err
    assert other.train_labels.tolist() == [3, 4, 5, 6, 7]  # b's data, not the cache's
    assert other.train_images[0, 0] == 60
    assert f"was not made from the files in {tmp_path / 'b' / 'cifar-10-batches-bin'}" in err
    assert "data_batch_1.bin differs" in err and "rebuilding" in err
    assert "reading cifar10" in err
    b_sums = [hashlib.sha256((tmp_path / "b" / "cifar-10-batches-bin" / f).read_bytes())
              .hexdigest() for f in FILES]
    assert [s["sha256"] for s in _sidecar(tmp_path)["sources"]] == b_sums

    # A byte-for-byte copy of b in another folder is the same source: the cache is used.
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    again = load_dataset("cifar10", tmp_path / "c", verbose=True)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(again.train_images, other.train_images)
    # Without a data folder, the cache as it is.
    assert load_dataset("cifar10", verbose=True).train_labels.tolist() == [3, 4, 5, 6, 7]
    assert capsys.readouterr().err == ""


def test_a_cache_without_recorded_sources_is_rebuilt_when_a_folder_is_given(tmp_path, capsys):
    _write(tmp_path / "a" / "cifar-10-batches-bin")
    load_dataset("cifar10", tmp_path / "a", verbose=False)
    sidecar = tmp_path / "cache" / "arrays" / "cifar10.json"
    meta = json.loads(sidecar.read_text())
    del meta["sources"]  # as an older version (or a download) wrote it
    sidecar.write_text(json.dumps(meta))
    capsys.readouterr()

    assert load_dataset("cifar10", verbose=False).train_labels.tolist() == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""  # no folder given: used as it is
    load_dataset("cifar10", tmp_path / "a", verbose=False)
    assert "made before sources were recorded" in capsys.readouterr().err
    assert len(_sidecar(tmp_path)["sources"]) == len(FILES)


def test_source_fingerprint_of_an_unreadable_file(tmp_path):
    with pytest.raises(DatasetError, match=r"cannot read .*gone\.bin"):
        data.source_fingerprint([tmp_path / "gone.bin"])


def _fake_mnist_cache(cache: Path) -> None:
    """A valid MNIST cache (MNIST's class counts, blank images) made by a download."""
    arrays = cache / "arrays"
    arrays.mkdir(parents=True)
    counts = ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
              [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    npz = arrays / "mnist.npz"
    np.savez(
        npz,
        train_images=np.zeros((60000, 784), np.uint8),
        train_labels=np.repeat(np.arange(10), counts[0]).astype(np.int32),
        test_images=np.zeros((10000, 784), np.uint8),
        test_labels=np.repeat(np.arange(10), counts[1]).astype(np.int32),
    )
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    (arrays / "mnist.json").write_text(json.dumps({"name": "mnist", "sha256": digest,
                                                   "sources": None}))


def test_split_mnist_refuses_a_missing_data_dir_despite_its_cache(tmp_path):
    """The issue's reproduction: ``$E --data-dir /no/such/folder`` with a cache in place."""
    cache = tmp_path / "cache"
    _fake_mnist_cache(cache)
    missing = tmp_path / "no" / "such" / "folder"
    env = {k: v for k, v in os.environ.items() if k != "SPACENET_DATA_DIR"}
    env.update(SPACENET_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "experiments.split_mnist", "--seed", "3", "--epochs", "1",
         "--quiet", "--data-dir", str(missing)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"the data folder {missing} does not exist" in result.stderr
    assert "--data-dir" in result.stderr and "train-images-idx3-ubyte.gz" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - start < 60

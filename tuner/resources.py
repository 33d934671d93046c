"""Pack trials onto what the cluster has: a GPU share and CPUs per trial, and concurrency."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# MNIST and a 593k-parameter net use a sliver of a modern GPU: 4 trials share one.
DEFAULT_GPU_SHARE = 0.25
# GPU memory one trial needs, not measured (no GPU was lent): the CUDA context (~0.5 GB) plus the
# epoch's augmentation chunk (up to ~1.5 GB at 60k images: float pixels, affine_grid's base and
# sampling grids, the warped copy) plus weights, activations and cuDNN workspace. 2.5 GB is the
# top of that estimate: 16 trials would need ~40 GB, so a 24 GB card takes 8.
TRIAL_GPU_BYTES = int(2.5e9)
GPU_MEMORY_USABLE = 0.9  # leave room for fragmentation and other processes' growth
# Key alive_nodes() adds to a GPU node's resource dict: free bytes on one of its GPUs, measured
# in a Ray task on that node (mem_get_info). Absent = not measured (no CUDA there): no cap.
GPU_FREE_KEY = "s5_gpu_free_bytes"
GPU_MEMORY_TIMEOUT_S = 30
# Ray leaves CUDA_VISIBLE_DEVICES alone when this is set (ray/_private/accelerators/nvidia_gpu.py):
# every GPU stays visible and "cuda" would be GPU 0 for every trial, whatever Ray assigned.
NOSET_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Placement:
    gpus: float
    cpus: float
    nodes: int
    gpu_per_trial: float
    cpu_per_trial: int
    concurrent: int
    asked_gpu_share: float = 0.0  # the share asked for (or the default) before spreading raised it
    memory_cap: int = 0  # trials one GPU's free memory holds (TRIAL_GPU_BYTES each); 0 = not measured

    @property
    def resources(self) -> dict:
        return {"cpu": self.cpu_per_trial, "gpu": self.gpu_per_trial}

    def describe(self) -> str:
        where = f"{self.gpu_per_trial:g} GPU + {self.cpu_per_trial} CPU" if self.gpu_per_trial \
            else f"{self.cpu_per_trial} CPU (no GPU)"
        if self.gpu_per_trial > self.asked_gpu_share > 0:
            per_gpu = math.floor(1 / self.gpu_per_trial + 1e-9)
            why = (f"GPU memory holds {self.memory_cap}" if 0 < self.memory_cap < 1 / self.asked_gpu_share - 1e-9
                   else "so all GPUs get trials")
            where += f" (raised from {self.asked_gpu_share:g}: at most {per_gpu} on any GPU, {why})"
        return (f"plan: {self.gpus:g} GPU, {self.cpus:g} CPU on {self.nodes} node(s); "
                f"each trial {where}; {self.concurrent} trials at once")


def place(nodes: list[dict], gpus_per_trial: float | None = None,
          cpus_per_trial: int | None = None, max_concurrent: int | None = None) -> Placement:
    """`nodes`: one resource dict per alive node ({"CPU": 8, "GPU": 1, ...}). Never asks for a GPU the
    cluster lacks (such a trial would wait forever)."""
    gpus = sum(n.get("GPU", 0) for n in nodes)
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if gpus_per_trial is not None and gpus_per_trial > 1:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g}: a trial trains on one GPU; "
                         "use a share in (0, 1]")
    if gpus_per_trial is not None and gpus_per_trial > 0 and gpus == 0:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g} asked for, but the cluster has no GPU; "
                         "drop the flag to run on CPU")
    if gpus > 0 and gpus_per_trial != 0:
        return gpu_placement(nodes, gpus_per_trial or DEFAULT_GPU_SHARE, cpus_per_trial, max_concurrent)
    # CPU trials: one thread each on small machines, a few on big ones.
    cpu_share = cpus_per_trial or max(1, int(max((n.get("CPU", 0) for n in nodes), default=1)) // 8)
    concurrent = sum(int(n.get("CPU", 0) // cpu_share) for n in nodes)
    if concurrent == 0:
        raise ValueError(f"no node can fit one trial ({cpu_share} CPU); lower --cpus-per-trial")
    return Placement(gpus=gpus, cpus=cpus, nodes=len(nodes), gpu_per_trial=0.0, cpu_per_trial=cpu_share,
                     concurrent=min(concurrent, max_concurrent or concurrent))


def gpu_placement(nodes: list[dict], asked: float, cpus_per_trial: int | None,
                  max_concurrent: int | None) -> Placement:
    """Trials on GPU nodes only, the same number k on every GPU. Ray fills one GPU before the next and
    never splits a trial across two, so a node holds floor(1/share) trials per whole GPU, and a share
    below 1/k piles trials onto the first GPUs while others idle. So k is the most trials per GPU (at
    most floor(1/asked), and what GPU memory holds) that every GPU node's CPUs can feed and
    --max-concurrent allows, and the share is raised to 1/k. When not even one trial per GPU fits
    (fewer CPUs or --max-concurrent than GPUs), k = 1: a share of 1 keeps two trials off one GPU."""
    gpu_nodes = [(int(n["GPU"]), int(n.get("CPU", 0))) for n in nodes if n.get("GPU", 0) >= 1]
    if not gpu_nodes:
        raise ValueError("no node has a whole GPU for one trial")
    per_gpu = math.floor(1 / asked + 1e-9)
    free = [n[GPU_FREE_KEY] for n in nodes if n.get("GPU", 0) >= 1 and n.get(GPU_FREE_KEY)]
    # trials the smallest measured GPU's free memory holds (at least 1); 0 when none was measured
    held = max(1, int(min(free) * GPU_MEMORY_USABLE // TRIAL_GPU_BYTES)) if free else 0
    cap = max_concurrent or math.inf

    def cpu_share(k: int) -> int:  # each GPU node's CPUs split evenly among the trials its GPUs hold
        return cpus_per_trial or max(1, min(c // (k * g) for g, c in gpu_nodes))

    k = next((k for k in range(min(per_gpu, held or math.inf), 0, -1)
              if k * sum(g for g, _ in gpu_nodes) <= cap
              and all(c // cpu_share(k) >= k * g for g, c in gpu_nodes)), 1)
    share = asked if k == per_gpu else 1 / k
    cpu = cpu_share(k)
    concurrent = min(cap, sum(min(k * g, c // cpu) for g, c in gpu_nodes))
    if concurrent == 0:
        raise ValueError(f"no node can fit one trial ({cpu} CPU, {share:g} GPU); "
                         "lower --cpus-per-trial or --gpus-per-trial")
    return Placement(gpus=sum(n.get("GPU", 0) for n in nodes), cpus=sum(n.get("CPU", 0) for n in nodes),
                     nodes=len(nodes), gpu_per_trial=share, cpu_per_trial=cpu, concurrent=int(concurrent),
                     asked_gpu_share=asked, memory_cap=held)


def task_resources(cpus: int, gpus: float, name: str) -> dict:
    """Keyword arguments for `ray.remote(**...)(fn)`: one Ray task with these resources. A GPU task gets
    max_calls=1 (its worker exits after the call): Ray 2.60 refuses max_calls in .options() and sets it
    itself only for a num_gpus given to the decorator, so `.options(num_gpus=...)` reuses workers, and a
    reused worker's torch keeps the CUDA context (and cached memory) of its first task's GPU, whatever
    CUDA_VISIBLE_DEVICES Ray sets next. CPU tasks reuse workers (a new process and MNIST read cost
    seconds; worker_splits caches the data per worker)."""
    return {"num_cpus": cpus, "num_gpus": gpus, "name": name, **({"max_calls": 1} if gpus else {})}


def task_options(plan: Placement, name: str) -> dict:
    """task_resources for one trial's share of `plan`: `ray.remote(**task_options(plan, name))(fn)`."""
    return task_resources(plan.cpu_per_trial, plan.gpu_per_trial, name)


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


def alive_nodes() -> list[dict]:
    """Resource dicts of the connected cluster's alive nodes; a GPU node's also holds GPU_FREE_KEY
    when a task there could measure its GPU's free memory."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    free = gpu_free_bytes([n["NodeID"] for n in alive if n["Resources"].get("GPU", 0) >= 1])
    return [{**n["Resources"], **({GPU_FREE_KEY: free[n["NodeID"]]} if free.get(n.get("NodeID")) else {})}
            for n in alive]


def free_gpu_memory() -> int | None:
    """In a Ray task with a GPU share: free bytes on that GPU, None without CUDA."""
    import torch

    return int(torch.cuda.mem_get_info(assigned_device())[0]) if torch.cuda.is_available() else None


def gpu_free_bytes(node_ids: list[str]) -> dict[str, int | None]:
    """node id -> free bytes on one of its GPUs, from a task pinned to it (a sliver of a GPU, so it
    starts beside running work); a node that does not answer in GPU_MEMORY_TIMEOUT_S is left out."""
    if not node_ids:
        return {}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {ray.remote(**task_resources(0, 0.01, "gpu-memory"))(free_gpu_memory).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(): node for node in node_ids}
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=GPU_MEMORY_TIMEOUT_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    found = {}
    for ref in done:
        try:
            found[refs[ref]] = ray.get(ref)
        except ray.exceptions.RayError:  # e.g. a GPU share on a torch without CUDA: not measured
            continue
    return found


class GpuOutOfMemory(ValueError):
    """A trial's CUDA out-of-memory error, as one line that names the flag to change."""


def explain_oom(err: BaseException, share: float) -> GpuOutOfMemory:
    first = (str(err).strip().splitlines() or ["CUDA out of memory"])[0][:160]
    per_gpu = math.floor(1 / share + 1e-9) if share else 1
    bigger = min(1.0, 2 * share) if share else 1.0
    return GpuOutOfMemory(f"CUDA out of memory with up to {per_gpu} trial(s) per GPU ({share:g} GPU each): "
                          f"{first}; give each trial more of a GPU, e.g. --gpus-per-trial {bigger:g}")

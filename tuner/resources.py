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


@dataclass(frozen=True)
class Plan:
    gpus: float
    cpus: float
    nodes: int
    gpu_per_trial: float
    cpu_per_trial: int
    concurrent: int
    asked_gpu_share: float = 0.0  # the share asked for (or the default) before spreading raised it

    @property
    def resources(self) -> dict:
        return {"cpu": self.cpu_per_trial, "gpu": self.gpu_per_trial}

    def describe(self) -> str:
        where = f"{self.gpu_per_trial:g} GPU + {self.cpu_per_trial} CPU" if self.gpu_per_trial \
            else f"{self.cpu_per_trial} CPU (no GPU)"
        if self.gpu_per_trial > self.asked_gpu_share > 0:
            per_gpu = math.floor(1 / self.gpu_per_trial + 1e-9)
            where += f" (raised from {self.asked_gpu_share:g}: at most {per_gpu} on any GPU, so all GPUs get trials)"
        return (f"plan: {self.gpus:g} GPU, {self.cpus:g} CPU on {self.nodes} node(s); "
                f"each trial {where}; {self.concurrent} trials at once")


def plan(nodes: list[dict], gpus_per_trial: float | None = None,
         cpus_per_trial: int | None = None, max_concurrent: int | None = None) -> Plan:
    """`nodes`: one resource dict per alive node ({"CPU": 8, "GPU": 1, ...}).

    Never asks for a GPU the cluster lacks (such a trial would wait forever).
    """
    gpus = sum(n.get("GPU", 0) for n in nodes)
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if gpus_per_trial is not None and gpus_per_trial > 1:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g}: a trial trains on one GPU; "
                         "use a share in (0, 1]")
    if gpus_per_trial is not None and gpus_per_trial > 0 and gpus == 0:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g} asked for, but the cluster has no GPU; "
                         "drop the flag to run on CPU")
    if gpus > 0 and gpus_per_trial != 0:
        return gpu_plan(nodes, gpus_per_trial or DEFAULT_GPU_SHARE, cpus_per_trial, max_concurrent)
    # CPU trials: one thread each on small machines, a few on big ones.
    cpu_share = cpus_per_trial or max(1, int(max((n.get("CPU", 0) for n in nodes), default=1)) // 8)
    concurrent = sum(int(n.get("CPU", 0) // cpu_share) for n in nodes)
    if concurrent == 0:
        raise ValueError(f"no node can fit one trial ({cpu_share} CPU); lower --cpus-per-trial")
    return Plan(gpus=gpus, cpus=cpus, nodes=len(nodes), gpu_per_trial=0.0, cpu_per_trial=cpu_share,
                concurrent=min(concurrent, max_concurrent or concurrent))


def gpu_plan(nodes: list[dict], asked: float, cpus_per_trial: int | None,
             max_concurrent: int | None) -> Plan:
    """Trials on GPU nodes only, the same number k on every GPU.

    Ray fills one GPU before it uses the next and never splits a trial across two, so a node
    holds floor(1/share) trials per whole GPU, and any share below 1/k lets trials pile onto the
    first GPUs while others idle. So k is the most trials per GPU (at most floor(1/asked)) that
    every GPU node's CPUs can feed and --max-concurrent allows, and the share is raised to 1/k.
    When not even one trial per GPU fits (fewer CPUs or --max-concurrent than GPUs), k = 1:
    a share of 1 keeps two trials off one GPU.
    """
    gpu_nodes = [(int(n["GPU"]), int(n.get("CPU", 0))) for n in nodes if n.get("GPU", 0) >= 1]
    if not gpu_nodes:
        raise ValueError("no node has a whole GPU for one trial")
    k_max = math.floor(1 / asked + 1e-9)
    cap = max_concurrent or math.inf

    def cpu_share(k: int) -> int:  # each GPU node's CPUs split evenly among the trials its GPUs hold
        return cpus_per_trial or max(1, min(c // (k * g) for g, c in gpu_nodes))

    k = next((k for k in range(k_max, 0, -1)
              if k * sum(g for g, _ in gpu_nodes) <= cap
              and all(c // cpu_share(k) >= k * g for g, c in gpu_nodes)), 1)
    share = asked if k == k_max else 1 / k
    cpu = cpu_share(k)
    concurrent = min(cap, sum(min(k * g, c // cpu) for g, c in gpu_nodes))
    if concurrent == 0:
        raise ValueError(f"no node can fit one trial ({cpu} CPU, {share:g} GPU); "
                         "lower --cpus-per-trial or --gpus-per-trial")
    return Plan(gpus=sum(n.get("GPU", 0) for n in nodes), cpus=sum(n.get("CPU", 0) for n in nodes),
                nodes=len(nodes), gpu_per_trial=share, cpu_per_trial=cpu, concurrent=int(concurrent),
                asked_gpu_share=asked)


def assigned_device() -> torch.device:
    """The device for code running in a Ray trial or task: the resources Ray gave it decide.

    A GPU share -> "cuda", which is the assigned GPU (Ray sets CUDA_VISIBLE_DEVICES for it). No
    GPU -> cpu, never "auto": Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for zero-GPU workers,
    so "auto" would pick GPU 0 behind Ray's back.
    """
    import ray
    import torch

    gpu_ids = ray.get_gpu_ids()
    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
    if not gpu_ids and not share:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build, but no GPU is visible to it" if torch.version.cuda \
            else "built for CPU"
        raise ValueError(f"this trial was given GPU(s) {gpu_ids or share} by Ray, but torch here has no "
                         f"CUDA (torch {torch.__version__}, {build}; CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA torch on the "
                         "GPU nodes or run with --gpus-per-trial 0")
    return torch.device("cuda")


def worker_device(cpus: float) -> torch.device:
    """In a Ray trial or task: torch threads = the CPUs Ray gave it (never more), and its device."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return assigned_device()


@functools.lru_cache(maxsize=2)
def worker_splits(data_dir: str) -> dict:
    """MNIST's splits, read and checked once per worker process: Ray reuses trial actors
    (reuse_actors) and task workers. data_dir is absolute: Ray runs workers in other folders."""
    from mnist_net.data import load_splits

    return load_splits(data_dir)


def alive_nodes() -> list[dict]:
    """Resource dicts of the connected cluster's alive nodes."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

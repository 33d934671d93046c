"""Pack trials onto what the cluster has: a GPU share and CPUs per trial, and concurrency."""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    @property
    def resources(self) -> dict:
        return {"cpu": self.cpu_per_trial, "gpu": self.gpu_per_trial}

    def describe(self) -> str:
        where = f"{self.gpu_per_trial:g} GPU + {self.cpu_per_trial} CPU" if self.gpu_per_trial \
            else f"{self.cpu_per_trial} CPU (no GPU)"
        return (f"plan: {self.gpus:g} GPU, {self.cpus:g} CPU on {self.nodes} node(s); "
                f"each trial {where}; {self.concurrent} trials at once")


def plan(nodes: list[dict], gpus_per_trial: float | None = None,
         cpus_per_trial: int | None = None, max_concurrent: int | None = None) -> Plan:
    """`nodes`: one resource dict per alive node ({"CPU": 8, "GPU": 1, ...}).

    Never asks for a GPU the cluster lacks (such a trial would wait forever).
    """
    gpus = sum(n.get("GPU", 0) for n in nodes)
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if gpus_per_trial is not None and gpus_per_trial > 0 and gpus == 0:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g} asked for, but the cluster has no GPU; "
                         "drop the flag to run on CPU")
    use_gpu = gpus > 0 and gpus_per_trial != 0
    gpu_share = (gpus_per_trial or DEFAULT_GPU_SHARE) if use_gpu else 0.0
    if use_gpu:
        gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= gpu_share]
        if not gpu_nodes:
            raise ValueError(f"no node has {gpu_share:g} GPU free for one trial")
        # Split each GPU node's CPUs evenly among the trials its GPUs hold.
        cpu_share = cpus_per_trial or max(1, min(
            int(n.get("CPU", 0) // max(1, math.floor(n["GPU"] / gpu_share))) for n in gpu_nodes))
        slots = [min(math.floor(n.get("GPU", 0) / gpu_share), int(n.get("CPU", 0) // cpu_share))
                 for n in nodes]
    else:
        # CPU trials: one thread each on small machines, a few on big ones.
        cpu_share = cpus_per_trial or max(1, int(max((n.get("CPU", 0) for n in nodes), default=1)) // 8)
        slots = [int(n.get("CPU", 0) // cpu_share) for n in nodes]
    concurrent = sum(slots)
    if concurrent == 0:
        raise ValueError(f"no node can fit one trial ({cpu_share} CPU, {gpu_share:g} GPU); "
                         "lower --cpus-per-trial or --gpus-per-trial")
    if max_concurrent is not None:
        concurrent = min(concurrent, max_concurrent)
    return Plan(gpus=gpus, cpus=cpus, nodes=len(nodes), gpu_per_trial=gpu_share,
                cpu_per_trial=cpu_share, concurrent=concurrent)


def alive_nodes() -> list[dict]:
    """Resource dicts of the connected cluster's alive nodes."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

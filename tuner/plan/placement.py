"""Where trials run: on several nodes, first every node checked (it sees the storage, has MNIST and runs this
code), then the trials packed onto what the cluster has: a GPU share and CPUs per trial, and concurrency."""

from __future__ import annotations

import contextlib
import math
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from mnist_net.cli import say
from tuner.settings import DEFAULT_GPU_SHARE, SearchSettings
from tuner.worker import NodeInfo, code_fingerprint, free_gpu_memory, node_check, node_name

# A storage folder some node cannot see is refused (exit 2), not worked around: trial attempts placed there fail
# after their first epoch and Ray reruns them elsewhere, silently. A URI (s3://, gs://...) is not checked: Ray
# reaches it from every node.
CHECK_TIMEOUT_S = 60  # a node fetching MNIST takes seconds; one silent this long is named


def check_nodes(storage: str, data_dir: str) -> list[NodeInfo]:
    """node_check on every alive node, if there are several; ValueError (one line) naming each node that cannot see
    the storage folder or get MNIST into data_dir, runs other code or does not answer."""
    import ray

    names = {n["NodeID"]: node_name(n["NodeManagerAddress"], n["NodeID"]) for n in ray.nodes() if n["Alive"]}
    if len(names) < 2:  # the driver has checked its own storage and data
        return []
    token = secrets.token_hex(16)
    marker = None if "://" in storage else Path(storage, ".node-check", token)
    if marker:
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(token)
    try:
        found, problems = run_checks(names, marker and str(marker), token, data_dir)
    finally:
        if marker:
            marker.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another search's check may still use the folder
                marker.parent.rmdir()
    blind, here = [names[n] for n, i in found.items() if i.reads_storage is False], code_fingerprint()
    if blind:
        problems.insert(0, f"the Ray storage {storage} is a folder that node(s) {', '.join(blind)} cannot see, so "
                        "trials placed there would fail: pass --storage a folder every node mounts, or a URI Ray "
                        "accepts such as s3://bucket/path or gs://bucket/path")
    for node, info in found.items():
        if info.data_error:
            problems.append(f"node {names[node]} cannot get MNIST into {data_dir}: {info.data_error}")
        if info.code != here:
            problems.append(f"node {names[node]} runs other code than this driver (tuner or mnist_net differ): "
                            "install the same commit of this project there")
    if problems:
        raise ValueError("; ".join(problems))
    return list(found.values())


def run_checks(names: dict[str, str], marker: str | None, token: str, data_dir: str
               ) -> tuple[dict[str, NodeInfo], list[str]]:
    """node_check pinned to every node at once, no CPU (it starts beside running work), the wait bounded. max_calls=1:
    a reused worker keeps the GPUs its torch's CUDA check saw, whatever Ray gives its next task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_calls=1, max_retries=0, name="node-check")(node_check)
    refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        marker, token, data_dir): node for node in names}
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=CHECK_TIMEOUT_S)
    found, problems = {}, []
    for ref in done:
        try:
            found[refs[ref]] = ray.get(ref)
        except ray.exceptions.RayError as err:  # e.g. this project is not installed there
            cause = str(getattr(err, "cause", None) or err).strip().splitlines() or [type(err).__name__]
            problems.append(f"node {names[refs[ref]]} could not run the node check: {cause[0][:200]}")
    for ref in pending:
        ray.cancel(ref, force=True)
        problems.append(f"node {names[refs[ref]]} did not answer the node check within {CHECK_TIMEOUT_S} s")
    return found, problems


def one_precision(settings: SearchSettings, found: list[NodeInfo]) -> SearchSettings:
    """--precision auto where the trials' nodes train in different precisions (bf16 GPUs beside fp16 V100s, or
    CPU-only nodes beside bf16 ones): every trial and confirm run in fp32, which every device has, so that all
    rank on equal terms. Trials go to GPU nodes only when there are any (gpu_placement)."""
    gpus = any(n.cuda for n in found)
    kinds = sorted({n.amp for n in found if n.cuda or not gpus})
    if settings.precision != "auto" or len(kinds) < 2:
        return settings
    say(f"the nodes train in {' and '.join(kinds)} under --precision auto: every trial and confirm run trains in "
        "fp32, so that all rank on equal terms (--precision picks another)")
    return replace(settings, precision="fp32")


# GPU memory per trial, estimated (no GPU lent): CUDA context ~0.5 GB + the epoch's augmentation chunk (<= ~1.5 GB at
# 60k images) + weights, activations, cuDNN workspace. 2.5 GB tops that: 16 trials need ~40 GB; a 24 GB card takes 8.
TRIAL_GPU_BYTES = int(2.5e9)
GPU_MEMORY_USABLE = 0.9  # leave room for fragmentation and other processes' growth
# alive_nodes()'s key: free bytes on a GPU of that node (mem_get_info in a Ray task); absent = not measured: no cap.
GPU_FREE_KEY = "s5_gpu_free_bytes"
GPU_MEMORY_TIMEOUT_S = 30


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
    """`nodes`: one resource dict per alive node. Never asks for a GPU the cluster lacks (it would wait forever)."""
    gpus = sum(n.get("GPU", 0) for n in nodes)
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if gpus_per_trial is not None and gpus_per_trial > 1:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g}: a trial trains on one GPU; use a share in (0, 1]")
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


def gpu_placement(nodes: list[dict], asked: float, cpus_per_trial: int | None, max_concurrent: int | None) -> Placement:
    """Trials on GPU nodes only, k on every GPU: Ray fills one GPU before the next, so a share below 1/k piles trials
    onto the first GPUs. k: the most per GPU (<= floor(1/asked), and what memory holds) that every GPU node's CPUs feed
    and --max-concurrent allow; the share becomes 1/k. If not one per GPU fits, k = 1: share 1 keeps two off a GPU."""
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
              if k * sum(g for g, _ in gpu_nodes) <= cap and all(c // cpu_share(k) >= k * g for g, c in gpu_nodes)), 1)
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
    """Kwargs for `ray.remote(**...)(fn)`. GPU tasks get max_calls=1 (worker exits after): Ray 2.60 refuses it in
    .options(), sets it only for a decorator's num_gpus, and a reused worker's torch keeps its first GPU's CUDA context
    whatever CUDA_VISIBLE_DEVICES says next. CPU tasks reuse workers: a new process and MNIST read cost seconds."""
    return {"num_cpus": cpus, "num_gpus": gpus, "name": name, **({"max_calls": 1} if gpus else {})}


def task_options(plan: Placement, name: str) -> dict:
    """task_resources for one trial's share of `plan`: `ray.remote(**task_options(plan, name))(fn)`."""
    return task_resources(plan.cpu_per_trial, plan.gpu_per_trial, name)


def alive_nodes() -> list[dict]:
    """The alive nodes' resource dicts; a GPU node's also has GPU_FREE_KEY if a task there measured its free memory."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    free = gpu_free_bytes([n["NodeID"] for n in alive if n["Resources"].get("GPU", 0) >= 1])
    return [{**n["Resources"], **({GPU_FREE_KEY: free[n["NodeID"]]} if free.get(n.get("NodeID")) else {})}
            for n in alive]


def gpu_free_bytes(node_ids: list[str]) -> dict[str, int | None]:
    """node id -> a GPU's free bytes there, by a pinned task (a GPU sliver: starts beside work); silent ones omitted."""
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

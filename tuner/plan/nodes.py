"""The node check, before anything trains or calibrates on several nodes: each sees the storage, has MNIST and runs
this code. A storage folder some node cannot see is refused (exit 2), not worked around: trial attempts placed there
fail after their first epoch and Ray reruns them elsewhere, silently. A URI (s3://, gs://...) is not checked: Ray
reaches it from every node."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import replace
from pathlib import Path

from mnist_net.cli import say
from tuner.settings import SearchSettings
from tuner.worker import NodeInfo, code_fingerprint, node_check, node_name

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
    rank on equal terms. Trials go to GPU nodes only when there are any (plan.placement)."""
    gpus = any(n.cuda for n in found)
    kinds = sorted({n.amp for n in found if n.cuda or not gpus})
    if settings.precision != "auto" or len(kinds) < 2:
        return settings
    say(f"the nodes train in {' and '.join(kinds)} under --precision auto: every trial and confirm run trains in "
        "fp32, so that all rank on equal terms (--precision picks another)")
    return replace(settings, precision="fp32")

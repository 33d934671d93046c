"""Calibration for --time-budget: one trial's training and eval speed on this cluster.

Ray tasks, each with one trial's resources (CPUs, GPU share) and on the device Ray gave it, as many
at once as trials will run: contention between concurrent trials is in the numbers, and a cluster
measures the nodes that will train. A few seconds: a short slice per batch size of the space.
"""

from __future__ import annotations

import statistics
import time

from tuner.budget import Throughput
from tuner.space import BATCH_SIZES

# Images timed per batch size (at least two steps), after a warm-up slice; then one eval pass.
CALIBRATION_IMAGES = 512
CALIBRATION_EVAL = 2000


def measure_train(cfg, train, device) -> float:
    """Training images/s of one epoch of `cfg` on `train` (a small slice)."""
    from mnist_net.engine import fit

    history = fit(cfg.replace(epochs=1), train, _head(train, 1), device=device)  # 1-image eval: ~free
    return history.epochs[0]["images_per_s"]


def measure_eval(cfg, val, device) -> float:
    """Eval images/s of a fresh model of `cfg` on `val`, after one warm-up batch."""
    import torch

    from mnist_net.engine import build_training, evaluate
    from mnist_net.runtime import autocast_dtype

    model, amp = build_training(cfg, device).forward, autocast_dtype(device, cfg.precision)
    evaluate(model, _head(val, 1000), amp_dtype=amp, channels_last=cfg.channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    evaluate(model, val, amp_dtype=amp, channels_last=cfg.channels_last)  # ends in a host sync
    return len(val) / (time.perf_counter() - start)


def calibration_task(data_dir: str, base, threads: int) -> dict:
    """One trial's throughput per batch size, on the device and threads Ray gave this task."""
    from mnist_net.data import load_splits  # not the per-worker cache: load_s is what a trial pays
    from tuner.resources import worker_device

    device = worker_device(threads)
    start = time.perf_counter()
    splits = load_splits(data_dir)
    load_s = time.perf_counter() - start
    train = splits["train"].subset(2 * max(BATCH_SIZES), base.seed).to(device)
    measure_train(base.replace(batch_size=32), _head(train, 256), device)  # warm-up: threads, caches
    speeds = {b: measure_train(base.replace(batch_size=b), _head(train, max(2 * b, CALIBRATION_IMAGES)), device)
              for b in BATCH_SIZES}
    val = _head(splits["val"], CALIBRATION_EVAL).to(device)
    return {"train": speeds, "eval": measure_eval(base, val, device), "load_s": load_s}


def calibrate(data_dir: str, base, cpu_per_trial: int, gpu_per_trial: float, tasks: int) -> Throughput:
    """Run `tasks` calibration tasks at once, each with one trial's resources; their mean speed."""
    import ray

    remote = ray.remote(calibration_task).options(num_cpus=cpu_per_trial, num_gpus=gpu_per_trial,
                                                  max_retries=0)
    try:
        found = ray.get([remote.remote(data_dir, base, cpu_per_trial) for _ in range(tasks)])
    except ray.exceptions.RayTaskError as err:  # e.g. a GPU share on a torch without CUDA
        raise ValueError(f"calibration failed: {getattr(err, 'cause', None) or err}") from None
    return Throughput(train={b: statistics.fmean(r["train"][b] for r in found) for b in BATCH_SIZES},
                      eval=statistics.fmean(r["eval"] for r in found),
                      load_s=max(r["load_s"] for r in found))


def _head(split, n: int):
    from mnist_net.data import Split

    return Split(split.images[:n], split.labels[:n])

"""Calibration for --time-budget: one trial's training and eval speed here, in seconds, from Ray tasks with one trial's
resources on their Ray-given device, as many at once as trials will run, on the training nodes: contention shows."""

from __future__ import annotations

import os
import statistics
import time

from mnist_net.cli import say
from tuner.plan.placement import task_resources
from tuner.settings import Throughput
from tuner.space import BATCH_SIZES
from tuner.worker import node_label, worker_device

# Images timed per batch size (>= TIMED_STEPS steps: ~1 ms GPU steps need more vs jitter), after a same-shape warm-up
CALIBRATION_IMAGES = 512
CALIBRATION_EVAL = 2000  # images of the one eval pass
TIMED_STEPS = {"cpu": 2, "cuda": 16}
WARMUP_STEPS = 3  # cuDNN's autotuning (cudnn.benchmark, per input shape), allocator, lazy init


def measure_train(cfg, train, device) -> float:
    """Training images/s of `cfg` on a small `train` slice, after a warm-up on the same batch shapes so cuDNN
    autotuning, CUDA lazy init and first allocations fall outside the timing (train_epoch ends in a host sync)."""
    import torch

    from mnist_net.engine import build_training, train_epoch
    from mnist_net.runtime import autocast_dtype

    training = build_training(cfg, device)
    amp, b = autocast_dtype(device, cfg.precision), cfg.batch_size

    def run(images: int, seed: int):
        gen = torch.Generator(device=device).manual_seed(seed)
        return train_epoch(training.forward, training.optimizer, _head(train, images), batch_size=b,
                           generator=gen, augment=cfg.augment, amp_dtype=amp,
                           channels_last=cfg.channels_last, scaler=training.scaler)

    run(min(len(train), WARMUP_STEPS * b) // b * b or b, seed=0)
    steps = TIMED_STEPS.get(device.type, TIMED_STEPS["cpu"])
    return run(max(steps * b, CALIBRATION_IMAGES), seed=1).images_per_s


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


def calibration_task(data_dir: str, base, threads: int, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict:
    """One trial's throughput per batch size, on the device and threads Ray gave this task."""
    from mnist_net.data import load_splits  # not the per-worker cache: load_s is what a trial pays

    device = worker_device(threads)
    start = time.perf_counter()
    splits = load_splits(data_dir)
    load_s = time.perf_counter() - start
    steps = TIMED_STEPS.get(device.type, TIMED_STEPS["cpu"])
    train = splits["train"].subset(max(steps * max(batch_sizes), CALIBRATION_IMAGES), base.seed).to(device)
    speeds = {b: measure_train(base.replace(batch_size=b), train, device) for b in batch_sizes}
    val = _head(splits["val"], CALIBRATION_EVAL).to(device)
    return {"train": speeds, "eval": measure_eval(base, val, device), "load_s": load_s, "pid": os.getpid(),
            "node": node_label()}


def calibration_runs(data_dir: str, base, cpu_per_trial: int, gpu_per_trial: float, tasks: int,
                     batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[dict]:
    """What `tasks` calibration tasks, at once with one trial's resources (GPU ones never share a worker), measured."""
    import ray

    # SPREAD: on several nodes each measures its own speed (named in the plan), as trials will run on each
    remote = ray.remote(**task_resources(cpu_per_trial, gpu_per_trial, "calibration"), max_retries=0,
                        scheduling_strategy="SPREAD")(calibration_task)
    try:
        return ray.get([remote.remote(data_dir, base, cpu_per_trial, batch_sizes) for _ in range(tasks)])
    except ray.exceptions.RayTaskError as err:  # e.g. a GPU share on a torch without CUDA
        raise ValueError(f"calibration failed: {getattr(err, 'cause', None) or err}") from None


def calibrate(data_dir: str, base, cpu_per_trial: int, gpu_per_trial: float, tasks: int,
              batch_sizes: tuple[int, ...] = BATCH_SIZES) -> Throughput:
    """Run `tasks` calibration tasks at once, each with one trial's resources; their mean speed (at `batch_sizes`:
    the search needs the space's, a confirm run its configs')."""
    found = calibration_runs(data_dir, base, cpu_per_trial, gpu_per_trial, tasks, batch_sizes)
    nodes = sorted({r["node"] for r in found})
    if len(nodes) > 1:  # trials are ranked alike on every node; the plan says how fast each is
        say("calibrated per node, training images/s per trial (mean over batch sizes): " + ", ".join(
            f"{n} {statistics.fmean(v for r in found if r['node'] == n for v in r['train'].values()):.0f}"
            for n in nodes))
    return Throughput(train={b: statistics.fmean(r["train"][b] for r in found) for b in batch_sizes},
                      eval=statistics.fmean(r["eval"] for r in found), load_s=max(r["load_s"] for r in found))


def _head(split, n: int):
    from mnist_net.data import Split

    return Split(split.images[:n], split.labels[:n])

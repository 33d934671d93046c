"""The Ray Tune function trainable: a thin wrapper over mnist_net's fit loop."""

from __future__ import annotations

import logging
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from ray import tune

from mnist_net.config import TrainConfig
from mnist_net.engine import EpochRecord, Training, build_training, cpu_state, fit
from mnist_net.runtime import cpu_model
from tuner.space import PARAMS, REPORTED, RUNG_METRIC, val_score
from tuner.worker import explain_oom, node_label, precision_name, worker_device, worker_splits

# Ray logs every checkpoint at INFO in the trial's process, breaking the driver's progress line; failures still log.
logging.getLogger("ray.train").setLevel(logging.WARNING)

CHECKPOINT_FILE = "state.pt"
AUTO_CHECKPOINT_RATIO = 20  # "auto": checkpoint once training since the last is 20x its cost, so they cost <= 5 %


def to_train_config(config: dict, base: TrainConfig) -> TrainConfig:
    """The trainable boundary: Tune's sampled params -> the typed config, validated once."""
    return TrainConfig.from_dict({**{k: config[k] for k in PARAMS}, "batch_size": int(config["batch_size"])}, base)


def train_s5(config: dict, base: TrainConfig, data_dir: str, checkpoint_every: int | None = None) -> None:
    """Train on the train split on the device Ray assigned, reporting val metrics every epoch. checkpoint_every: every N
    epochs, or None (auto: the first, then once the time since the last reaches AUTO_CHECKPOINT_RATIO x the save cost:
    every epoch for CPU epochs of seconds, every few for sub-second GPU ones); the last always, so a finished trial
    keeps its weights. A retried or resumed trial restarts at its last checkpoint, retraining the epochs since."""
    cfg = to_train_config(config, base)
    asked = tune.get_context().get_trial_resources().required_resources
    device = worker_device(asked.get("CPU", 1))
    share = asked.get("GPU", 0) or 1.0  # its part of the GPU's memory (engine.gpu_chunk_images)
    splits = worker_splits(data_dir)
    train = splits["train"].subset(cfg.train_size, cfg.seed).to(device)
    val = splits["val"].subset(cfg.eval_size, cfg.seed).to(device)
    training = build_training(cfg, device)
    start_epoch = restore(training, tune.get_checkpoint())
    policy = CheckpointPolicy(checkpoint_every, last_epoch=cfg.epochs)
    here = where(device, cfg.precision)

    def report(record: EpochRecord, t: Training) -> None:
        metrics = {**epoch_metrics(record), **here}
        if not policy.due(record.epoch, time.perf_counter()):
            tune.report(metrics)
            return
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            save_state(tmp, t, record.epoch, cfg)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))  # copies it to storage
        end = time.perf_counter()
        policy.saved(end - start, end)

    try:
        fit(cfg, train, val, device=device, training=training, start_epoch=start_epoch, callback=report,
            memory_share=share)
    except torch.OutOfMemoryError as err:  # one line naming --gpus-per-trial, not a page of allocator stats
        raise explain_oom(err, asked.get("GPU", 0)) from None


def where(device: torch.device, precision: str) -> dict:
    """space.WHERE for this trial: its node (IP, id), its device (with the GPU's or CPU's name), its autocast."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"node": node_label(), "device": f"{device} ({name})", "precision": precision_name(device, precision)}


def epoch_metrics(record: EpochRecord) -> dict:
    """An epoch's report. getattr: a REPORTED name no EpochRecord has fails at once; None (after divergence) -> 0.0."""
    values = {k: getattr(record, k) for k in REPORTED}
    return {**{k: 0.0 if v is None else v for k, v in values.items()}, "peak_rss_mb": peak_rss_mb(),
            RUNG_METRIC: val_score(record.val_acc, record.val_loss)}


@dataclass
class CheckpointPolicy:
    """Which epochs a trial checkpoints (see train_s5). Times are time.perf_counter() seconds."""

    every: int | None  # None = auto
    last_epoch: int
    save_seconds: float | None = None  # what the last checkpoint cost; None = none made yet
    since: float = field(default_factory=time.perf_counter)  # when the last checkpoint ended

    def due(self, epoch: int, now: float) -> bool:
        if epoch >= self.last_epoch:
            return True
        if self.every is not None:
            return epoch % self.every == 0
        return self.save_seconds is None or now - self.since >= AUTO_CHECKPOINT_RATIO * self.save_seconds

    def saved(self, seconds: float, now: float) -> None:
        self.save_seconds, self.since = seconds, now


def save_state(folder: str, training: Training, epoch: int, cfg: TrainConfig) -> None:
    """Everything the next epoch needs (weights, momentum, lr schedule, fp16 loss scale, epoch, CPU RNG), on
    the CPU so a plain torch.load works without a GPU: a ~5 MB device-to-host copy (bench/gpu.sh section 2)."""
    state = {**cpu_state(training.state_dict()), "epoch": epoch, "seed": cfg.seed,
             "torch_rng": torch.get_rng_state(), "config": cfg.to_dict()}
    torch.save(state, os.path.join(folder, CHECKPOINT_FILE))


def load_checkpoint_state(path: str) -> dict:
    """A saved state, all on the CPU: load_state_dict moves it to the trial's device; set_rng_state takes CPU only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(training: Training, checkpoint: tune.Checkpoint | None) -> int:
    """Load the trial's last checkpoint, if any, into `training` and the CPU RNG; the epoch it finished (0 = none)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = load_checkpoint_state(os.path.join(folder, CHECKPOINT_FILE))
    training.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])


def peak_rss_mb() -> float:
    """This trial process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)

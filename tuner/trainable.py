"""The Ray Tune function trainable: a thin wrapper over mnist_net's fit loop."""

from __future__ import annotations

import functools
import os
import tempfile

import torch
from ray import tune

from mnist_net.config import TrainConfig
from mnist_net.data import load_splits
from mnist_net.engine import Training, build_training, fit
from mnist_net.runtime import pick_device

CHECKPOINT_FILE = "state.pt"
REPORTED = ("val_acc", "val_loss", "train_loss", "train_acc", "lr", "images_per_s",
            "epoch_seconds", "eval_seconds", "diverged")


# Ray reuses trial processes (reuse_actors), so each process reads and checks MNIST once.
cached_splits = functools.lru_cache(maxsize=2)(load_splits)


def to_train_config(config: dict, base: TrainConfig) -> TrainConfig:
    """The trainable boundary: Tune's sampled params -> the typed config, validated once."""
    params = {k: config[k] for k in ("lr", "momentum", "batch_size")}
    params["batch_size"] = int(params["batch_size"])
    return TrainConfig.from_dict(params, base)


def train_s5(config: dict, base: TrainConfig, data_dir: str) -> None:
    """Train on the train split, report val metrics and a checkpoint every epoch."""
    cfg = to_train_config(config, base)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # never more threads than Ray gave the trial
    device = pick_device(cfg.device)
    splits = cached_splits(data_dir)  # an absolute path: Ray moves each trial's working dir
    train = splits["train"].subset(cfg.train_size, cfg.seed).to(device)
    val = splits["val"].subset(cfg.eval_size, cfg.seed).to(device)
    training = build_training(cfg, device)
    start_epoch = restore(training)

    def report(record: dict, t: Training) -> None:
        metrics = {**{k: record.get(k, 0.0) for k in REPORTED}, "peak_rss_mb": peak_rss_mb()}
        with tempfile.TemporaryDirectory() as tmp:
            state = {**t.state_dict(), "epoch": record["epoch"], "seed": cfg.seed,
                     "torch_rng": torch.get_rng_state(), "config": cfg.to_dict()}
            torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    fit(cfg, train, val, device=device, training=training, start_epoch=start_epoch, callback=report)


def restore(training: Training) -> int:
    """Load the trial's last checkpoint, if any; return the epoch it finished."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True,
                           map_location=next(training.model.parameters()).device)
    training.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])


def peak_rss_mb() -> float:
    """This trial process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)

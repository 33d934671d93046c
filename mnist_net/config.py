"""The one typed training config. Defaults are the seed's recipe."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_net import files

TRAIN_SPLITS = ("train", "train+val")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainConfig:
    # Seed recipe: SGD(lr=0.01, momentum=0.9), batch 512, 20 epochs, StepLR(15, 0.1).
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 512
    epochs: int = 20
    # StepLR decays the lr by gamma once, after this fraction of the epochs: 0.75 of the seed's
    # 20 is its step 15, and a 4-epoch trial decays after epoch 3, as its 20-epoch retrain will.
    decay_fraction: float = 0.75
    step_size: int | None = None  # explicit StepLR step in epochs; None = from decay_fraction
    gamma: float = 0.1
    seed: int = 1
    # "train+val" = all 60k training images, as the seed did (curves on test);
    # "train" = first 50k, per-epoch metrics on the 10k val split (tuning).
    train_split: str = "train+val"
    train_size: int | None = None  # fixed seeded subset for cheap trials; None = all
    eval_size: int | None = None  # subset of the per-epoch eval split; None = all
    augment: bool = True
    device: str = "auto"  # "auto" picks cuda > mps > cpu
    channels_last: bool = True  # faster convs on CPU (oneDNN) and tensor cores
    # bf16 autocast only where the hardware has bf16 units; fp16 (+ loss scaling) on pre-Ampere
    # CUDA GPUs with fp16 tensor cores (V100, T4); else fp32
    precision: str = "auto"
    compile: bool = False  # torch.compile: pays off only for long runs
    # torch.compile's mode when compile is on. "reduce-overhead" adds CUDA graphs (fewer kernel
    # launches per step on a GPU); bench/gpu_bench.py measures which pays off, so the default
    # stays torch's own until a GPU run shows a gain.
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        _check(is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0,
               f"lr must be a positive number, got {self.lr!r}")
        _check(is_number(self.momentum) and 0 <= self.momentum < 1,
               f"momentum must be in [0, 1), got {self.momentum!r}")
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            _check(is_int(value) and value > 0, f"{name} must be a positive integer, got {value!r}")
        _check(self.step_size is None or (is_int(self.step_size) and self.step_size > 0),
               f"step_size must be a positive integer or None, got {self.step_size!r}")
        _check(is_number(self.decay_fraction) and 0 < self.decay_fraction <= 1,
               f"decay_fraction must be in (0, 1], got {self.decay_fraction!r}")
        _check(is_number(self.gamma) and 0 < self.gamma <= 1,
               f"gamma must be in (0, 1], got {self.gamma!r}")
        _check(is_int(self.seed) and self.seed >= 0,
               f"seed must be a non-negative integer, got {self.seed!r}")
        _check(self.train_split in TRAIN_SPLITS,
               f"train_split must be one of {TRAIN_SPLITS}, got {self.train_split!r}")
        for name in ("train_size", "eval_size"):
            value = getattr(self, name)
            _check(value is None or (is_int(value) and value > 0),
                   f"{name} must be a positive integer or None, got {value!r}")
        _check(self.precision in PRECISIONS,
               f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.compile_mode in COMPILE_MODES,
               f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        for name in ("augment", "channels_last", "compile"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        _check(isinstance(self.device, str) and self.device != "", "device must be a name like 'cpu'")

    @property
    def lr_step_size(self) -> int:
        """StepLR's step: the explicit step_size, else decay_fraction of the epochs, rounded half up
        (20 -> 15, 8 -> 6, 4 -> 3; 2 -> 2, i.e. a 2-epoch run never decays)."""
        if self.step_size is not None:
            return self.step_size
        return max(1, math.floor(self.decay_fraction * self.epochs + 0.5))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Build from a dict; unknown keys are an error, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return dataclasses.replace(base or cls(), **values)


def load_config_file(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a JSON config: a plain mapping, or the tuner's best_config.json ({"config": {...}})."""
    path = Path(path)
    data = files.read_json(path, f"config file {path}")
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    return TrainConfig.from_dict(data, base)


def is_number(value: Any) -> bool:
    """A real number: not a bool (True is not 1.0 here), not NaN. The one check every config uses."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def is_int(value: Any) -> bool:
    """An integer that is not a bool (True is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)

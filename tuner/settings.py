"""Search settings: the cost knobs, their presets, and what a resumed search reuses."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from mnist_net import files

# A machine with no GPU and no budget flags: search + retrain of the default 32
# samples fit in 20 minutes on 2 cores (measured: README "CPU budget").
CPU_BUDGET = {"max_epochs": 4, "train_size": 5000, "eval_size": 5000,
              "retrain_seeds": 2, "retrain_epochs": 2}
SMOKE = {"num_samples": 4, "max_epochs": 2, "train_size": 512, "eval_size": 500,
         "retrain_seeds": 1, "retrain_epochs": 1, "retrain_train_size": 1024}
BUDGETS = ("full", "cpu", "smoke")
BUDGET_FLAGS = ("max_epochs", "train_size", "eval_size", "retrain_seeds", "retrain_epochs")


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 32
    max_epochs: int = 20  # the seed's epochs
    train_size: int | None = None  # None = the whole 50k train split
    eval_size: int | None = None  # None = the whole 10k val split
    seed: int = 0
    max_concurrent: int | None = None  # None = as many as the resources fit
    gpus_per_trial: float | None = None  # None = resources.DEFAULT_GPU_SHARE when GPUs exist
    cpus_per_trial: int | None = None
    retrain_seeds: int = 3
    retrain_epochs: int | None = None  # None = max_epochs
    retrain_train_size: int | None = None  # None = all 60k (only the smoke test shrinks it)
    budget: str = "full"  # "full", "cpu" (automatic on a GPU-less machine) or "smoke"

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_epochs", "retrain_seeds"):
            value = getattr(self, name)
            if not (_is_int(value) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_size", "eval_size", "max_concurrent", "cpus_per_trial",
                     "retrain_epochs", "retrain_train_size"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (_is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        g = self.gpus_per_trial
        if g is not None and not (g == 0 or 0 < g <= 1 or float(g).is_integer() and g > 0):
            raise ValueError(f"gpus_per_trial must be 0, a fraction in (0, 1] or a whole number, got {g}")
        if self.train_size is not None and self.train_size > 50_000:
            raise ValueError(f"train_size {self.train_size} exceeds the 50,000-image train split")
        if self.eval_size is not None and self.eval_size > 10_000:
            raise ValueError(f"eval_size {self.eval_size} exceeds the 10,000-image val split")

    @property
    def grace_period(self) -> int:
        """ASHA's first rung: ~1/10 of the epochs, at least 1 (early epochs are noisy)."""
        return max(1, self.max_epochs // 10)

    @property
    def reduction_factor(self) -> int:
        """Halve at each rung on short budgets; keep a third on long ones (more rungs)."""
        return 2 if self.max_epochs <= 6 else 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        files.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> SearchSettings:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"cannot read the saved search settings {path}: {err}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is not a count

"""Search settings: the cost knobs, their presets, and what a resumed search reuses, with the plan's typed
values saved inside them (Throughput, Prediction, BudgetPlan)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_net import files
from mnist_net.cli import COMPILE_MODE_CHOICES, compile_changes
from mnist_net.config import PRECISIONS, TrainConfig, is_int, is_number
from mnist_net.data import N_TRAIN, N_VAL
from tuner.space import BATCH_SIZES, FIDELITY_FIELDS, LADDER, Fidelity, grace_period_for, reduction_factor_for

# A machine with no GPU and no budget flag: the whole command (search + confirm stage) is planned to
# finish in this many seconds (tuner/plan/budget.py), whatever the CPU's speed.
DEFAULT_TIME_BUDGET_S = 20 * 60
SMOKE = {"num_samples": 4, "max_epochs": 2, "train_size": 512, "eval_size": 500,
         "confirm_top": 2, "confirm_seeds": 1, "confirm_epochs": 1, "confirm_train_size": 1024}
DEFAULT_CONFIRM_TOP = 3
DEFAULT_GPU_SHARE = 0.25  # MNIST and a 593k-parameter net use a sliver of a modern GPU: 4 trials share one
# The smoke search's trials 2 and 3, after the seed's config: one that learns within its first
# 512-image epoch (20-30 % val after it, bf16 or fp32 CPU) and one that cannot (one step a
# epoch at lr 0.001: chance). ASHA then has a trial below the median on any machine.
SMOKE_POINTS = [{"lr": 0.05, "momentum": 0.9, "batch_size": 32},
                {"lr": 0.001, "momentum": 0.5, "batch_size": 1024}]
# Where the fidelity comes from. "full": the defaults (or the fidelity flags given); "time": planned to
# --time-budget; "smoke": the tiny test preset.
FIDELITY_MODES = ("full", "time", "smoke")
# Names an older search_settings.json used: a --resume of it still loads.
RENAMED = {"retrain_seeds": "confirm_seeds", "retrain_epochs": "confirm_epochs",
           "retrain_train_size": "confirm_train_size", "budget": "fidelity_mode"}


@dataclass(frozen=True)
class Throughput:
    """One trial's speed while `concurrent` trials run at once (calibrated, or fake in tests)."""

    train: dict[int, float]  # training images/s per batch size
    eval: float  # eval images/s (batch 1000)
    load_s: float = 0.0  # a trial process reading MNIST

    def s_per_image(self) -> float:
        """Mean seconds per training image over the space's batch sizes (a trial draws one)."""
        return statistics.fmean(1 / self.train[b] for b in BATCH_SIZES)

    def to_dict(self) -> dict:
        return {"train_images_per_s": {str(b): round(v, 1) for b, v in self.train.items()},
                "eval_images_per_s": round(self.eval, 1), "load_s": round(self.load_s, 2)}

    @classmethod
    def from_dict(cls, d: dict) -> Throughput:
        train = {int(b): v for b, v in d["train_images_per_s"].items()}
        return cls(train, d["eval_images_per_s"], d.get("load_s", 0.0))


@dataclass(frozen=True)
class Prediction:
    search_s: float
    confirm_s: float
    total_s: float  # including the time already spent and publishing

    def to_dict(self) -> dict:
        return {k: round(v, 1) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BudgetPlan:
    """What a time budget planned: the hard stop of the search (seconds from its start), and, unless
    the smoke preset (never calibrated), the level, the speeds it was chosen from and the prediction.
    Saved in search_settings.json, so that --resume reuses it instead of recalibrating."""

    search_time_budget_s: float
    level: int | None = None  # 1 = the seed's full recipe
    fidelity: Fidelity | None = None
    fixed_by_flags: tuple[str, ...] = ()
    predicted: Prediction | None = None
    throughput: Throughput | None = None
    calibration_s: float = 0.0
    tasks: int = 0  # calibration tasks run at once
    spent_before_search_s: float = 0.0

    def to_dict(self) -> dict:
        if self.fidelity is None:
            return {"search_time_budget_s": self.search_time_budget_s}
        return {"level": self.level, "levels": len(LADDER), "fidelity": asdict(self.fidelity),
                "fixed_by_flags": list(self.fixed_by_flags), "predicted_s": self.predicted.to_dict(),
                "throughput": {**self.throughput.to_dict(), "calibration_s": self.calibration_s, "tasks": self.tasks},
                "spent_before_search_s": self.spent_before_search_s, "search_time_budget_s": self.search_time_budget_s}

    @classmethod
    def from_dict(cls, d: dict) -> BudgetPlan:
        if "fidelity" not in d:
            return cls(d["search_time_budget_s"])
        thr = d["throughput"]
        return cls(d["search_time_budget_s"], d["level"], Fidelity(**d["fidelity"]), tuple(d["fixed_by_flags"]),
                   Prediction(**d["predicted_s"]), Throughput.from_dict(thr), thr["calibration_s"], thr["tasks"],
                   d["spent_before_search_s"])


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 32
    max_epochs: int = 20  # the seed's epochs
    train_size: int | None = None  # None = the whole 50k train split
    eval_size: int | None = None  # None = the whole 10k val split
    seed: int = 0
    max_concurrent: int | None = None  # None = as many as the resources fit
    gpus_per_trial: float | None = None  # None = DEFAULT_GPU_SHARE when GPUs exist
    cpus_per_trial: int | None = None
    confirm_top: int | None = None  # K configs of the search to confirm; None = DEFAULT_CONFIRM_TOP, at most N
    confirm_seeds: int = 3
    confirm_epochs: int | None = None  # None = max_epochs
    confirm_train_size: int | None = None  # images of the 50k train split per confirm run; None = all
    fidelity_mode: str = "full"  # one of FIDELITY_MODES
    time_budget_s: float | None = None  # --time-budget: the whole command's wall-clock budget
    budget_plan: BudgetPlan | None = None  # what the time budget planned (tuner.plan.search_plan)
    checkpoint_every: int | None = None  # epochs between trial checkpoints; None = auto (trainable)
    compile_mode: str | None = None  # --compile-mode (mnist_net.cli); None = TrainConfig's own (eager)
    precision: str = "auto"  # every trial's and confirm run's; plan.search_plan makes "auto" one on mixed nodes

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_epochs", "confirm_seeds"):
            value = getattr(self, name)
            if not (is_int(value) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_size", "eval_size", "max_concurrent", "cpus_per_trial",
                     "confirm_top", "confirm_epochs", "confirm_train_size", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and not (is_int(value) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.fidelity_mode not in FIDELITY_MODES:
            raise ValueError(f"fidelity_mode must be one of {FIDELITY_MODES}, got {self.fidelity_mode!r}")
        g = self.gpus_per_trial
        if g is not None and not (is_number(g) and 0 <= g <= 1):
            # engine and trainable train on one device: a second GPU would sit idle, booked
            raise ValueError(f"a trial trains on one GPU: gpus_per_trial must be 0 (CPU) or a share in "
                             f"(0, 1], got {g!r}")
        t = self.time_budget_s
        if t is not None and not (is_number(t) and 0 < t < math.inf):
            raise ValueError(f"time_budget_s must be a positive number of seconds, got {t!r}")
        if (self.fidelity_mode == "time" and t is None) or (self.fidelity_mode == "full" and t is not None):
            raise ValueError(f"fidelity_mode {self.fidelity_mode!r} with time_budget_s {t!r}: a time budget "
                             "plans the fidelity (mode 'time') or stops the smoke preset")
        if self.confirm_top is not None and self.confirm_top > self.num_samples:
            raise ValueError(f"confirm_top {self.confirm_top} exceeds num_samples {self.num_samples}: the "
                             "search cannot have more configs to confirm than trials")
        for name in ("train_size", "confirm_train_size"):
            if (getattr(self, name) or 0) > N_TRAIN:
                raise ValueError(f"{name} {getattr(self, name)} exceeds the {N_TRAIN:,}-image train split")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODE_CHOICES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODE_CHOICES}, got {self.compile_mode!r}")
        if self.eval_size is not None and self.eval_size > N_VAL:
            raise ValueError(f"eval_size {self.eval_size} exceeds the {N_VAL:,}-image val split")

    @property
    def grace_period(self) -> int:
        return grace_period_for(self.max_epochs)

    @property
    def reduction_factor(self) -> int:
        return reduction_factor_for(self.max_epochs)

    def trial_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (Tune's sampled params replace lr, momentum, batch)."""
        return TrainConfig(epochs=self.max_epochs, train_split="train", train_size=self.train_size,
                           eval_size=self.eval_size, seed=self.seed, **self.train_changes())

    def fidelity(self) -> Fidelity:
        """The cost knobs as a space.Fidelity, None read as the whole split (Fidelity.settings inverts it)."""
        return Fidelity(self.max_epochs, self.train_size or N_TRAIN, self.eval_size or N_VAL, self.confirm_seeds,
                        self.confirm_epochs or self.max_epochs, self.confirm_train_size or N_TRAIN)

    def train_changes(self) -> dict:
        """TrainConfig fields beyond the recipe: compile_mode (as every CLI reads --compile-mode), precision."""
        return {**compile_changes(argparse.Namespace(compile_mode=self.compile_mode)), "precision": self.precision}

    @property
    def top(self) -> int:
        """The configs of the search the confirm stage takes (besides the seed's)."""
        return self.confirm_top or min(DEFAULT_CONFIRM_TOP, self.num_samples)

    @property
    def search_time_budget_s(self) -> float | None:
        """Ray Tune's hard stop for the search (seconds from its start), if any."""
        return None if self.budget_plan is None else self.budget_plan.search_time_budget_s

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "budget_plan": None if self.budget_plan is None else self.budget_plan.to_dict()}

    def save(self, path: Path) -> None:
        files.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> SearchSettings:
        try:
            saved = {RENAMED.get(k, k): v for k, v in json.loads(path.read_text()).items()}
            plan = saved.get("budget_plan")
            return cls(**{**saved, "budget_plan": None if plan is None else BudgetPlan.from_dict(plan)})
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"cannot read the saved search settings {path}: {err}") from None


def fidelity_flags(args: argparse.Namespace) -> dict:
    """The fidelity flags the user gave: a time budget plans only the others."""
    return {k: getattr(args, k) for k in FIDELITY_FIELDS if getattr(args, k, None) is not None}


def from_args(args: argparse.Namespace) -> SearchSettings:
    """Defaults < smoke preset < explicit flags (each flag's dest is its field's name), validated here."""
    names = [f.name for f in dataclasses.fields(SearchSettings) if f.name not in ("fidelity_mode", "budget_plan")]
    explicit = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    mode = "smoke" if args.smoke_test else "time" if "time_budget_s" in explicit else "full"
    return SearchSettings(**{**(SMOKE if args.smoke_test else {}), **explicit, "fidelity_mode": mode})


def with_default_budget(settings: SearchSettings, has_gpu: bool, fixed: dict) -> SearchSettings:
    """A new search on a machine with no GPU and no fidelity flag is planned to DEFAULT_TIME_BUDGET_S."""
    if settings.fidelity_mode != "full" or has_gpu or fixed:
        return settings
    return dataclasses.replace(settings, fidelity_mode="time", time_budget_s=float(DEFAULT_TIME_BUDGET_S))

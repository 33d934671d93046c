"""What a search trains: ASHA's rungs over a trial's epochs, a Fidelity and the LADDER of levels a time
budget picks from; and what a time budget planned (Throughput, Prediction, BudgetPlan), the typed values
the plan hands on."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, fields, replace

from mnist_net.data import N_TRAIN, N_VAL
from tuner.space import BATCH_SIZES

# Async ASHA on a TPE search passes more trials per rung than the idealised 1/reduction factor:
# TPE's suggestions after its random start-up trials (optuna's n_startup_trials, 10) are better
# than those they are compared with. Measured on the committed 32-trial CPU search: 25 of 32
# passed rung 1, 22 of 25 rung 2; the random start-up passes ~1/rf, guided trials ~0.9.
TPE_STARTUP = 10
GUIDED_PASS = 0.9


def grace_period_for(max_epochs: int) -> int:
    """ASHA's first rung: ~1/10 of the epochs, at least 1 (early epochs are noisy)."""
    return max(1, max_epochs // 10)


def reduction_factor_for(max_epochs: int) -> int:
    """Halve at each rung on short budgets; keep a third on long ones (more rungs)."""
    return 2 if max_epochs <= 6 else 3


def pass_fraction(num_samples: int, rf: int) -> float:
    """Expected share of the trials reaching a rung that pass it (see TPE_STARTUP)."""
    random = min(num_samples, TPE_STARTUP)
    return (random / rf + (num_samples - random) * GUIDED_PASS) / num_samples


def rungs(max_epochs: int, grace: int, rf: int) -> list[int]:
    """ASHA's milestones below max_epochs, as Ray's _Bracket computes them."""
    count = int(math.log(max_epochs / grace) / math.log(rf) + 1)
    return [grace * rf**k for k in range(count) if grace * rf**k < max_epochs]


def expected_epochs(max_epochs: int, num_samples: int) -> float:
    """Mean epochs a trial runs under ASHA with the search's grace period and reduction factor."""
    rf = reduction_factor_for(max_epochs)
    marks = rungs(max_epochs, grace_period_for(max_epochs), rf) + [max_epochs]
    p = pass_fraction(num_samples, rf)
    return marks[0] + sum(p ** (k + 1) * (marks[k + 1] - marks[k]) for k in range(len(marks) - 1))


@dataclass(frozen=True)
class Fidelity:
    max_epochs: int
    train_size: int  # images per trial, of the 50k train split
    eval_size: int  # val images scored each epoch
    confirm_seeds: int
    confirm_epochs: int
    confirm_train_size: int  # images per confirm run, of the 50k train split

    def settings(self) -> dict:
        """As SearchSettings fields: None where the level uses the whole split (SearchSettings.fidelity)."""
        whole = {"train_size": N_TRAIN, "eval_size": N_VAL, "confirm_train_size": N_TRAIN}
        return {k: None if v >= whole.get(k, float("inf")) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"{self.max_epochs} epochs x {self.train_size:,} images per trial, val {self.eval_size:,}; "
                f"confirm {self.confirm_seeds} seed(s) x {self.confirm_epochs} epoch(s) x "
                f"{self.confirm_train_size:,} images per config")


def _steps(first: int, last: int, ratio: float = 0.9) -> list[int]:
    """first, ~first*ratio, ... down to last, rounded to 2 significant digits."""
    out, value = [], float(first)
    while value > last * 1.001:
        out.append(int(float(f"{value:.2g}")))
        value *= ratio
    return sorted(set(out + [last]), reverse=True)


def build_ladder() -> tuple[Fidelity, ...]:
    """The levels, highest first; each is at most its predecessor in every field. The confirm stage
    trains what a whole trial trains (its epochs and images), and keeps 3 seeds to the last."""
    f = Fidelity(20, N_TRAIN, N_VAL, 3, 20, N_TRAIN)
    levels = [f, f := replace(f, eval_size=5000)]
    for epochs in (18, 16, 14, 12, 11, 10, 9, 8, 7, 6, 5, 4):
        levels.append(f := replace(f, max_epochs=epochs, confirm_epochs=epochs))
    for size in _steps(N_TRAIN, 5000)[1:]:
        levels.append(f := replace(f, train_size=size, confirm_train_size=size))
    for size in (4000, 3000, 2000):
        levels.append(f := replace(f, eval_size=size))
    for size in _steps(5000, 2000)[1:]:
        levels.append(f := replace(f, train_size=size, confirm_train_size=size))
    levels.append(f := replace(f, max_epochs=3, confirm_epochs=3))
    for size in _steps(2000, 1000)[1:]:
        levels.append(f := replace(f, train_size=size, confirm_train_size=size))
    levels += [f := replace(f, confirm_seeds=2), replace(f, confirm_seeds=1)]  # seeds go last
    return tuple(levels)


LADDER = build_ladder()
FIDELITY_FIELDS = tuple(f.name for f in fields(Fidelity))


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

"""Fit a search and its retrain into a wall-clock budget (`--time-budget 20m`).

Three steps, before the search starts:
1. Calibrate: time a short training slice per batch size in the space, and an eval pass, as Ray
   tasks with each trial's resources, as many at once as trials will run (so contention between
   concurrent trials is in the numbers, and a cluster measures the nodes that will train).
2. Predict the wall time of each fidelity level of LADDER (`predict`, model below).
3. Take the highest level predicted to fit in the budget less PLAN_MARGIN, and spend what it
   leaves on more images per trial (`fill`); flags the user gave override the ladder's values.
   The search's hard stop (Ray Tune's time_budget_s) is what the budget leaves after the
   predicted retrain: a search that runs long is cut there, and the retrain still fits.

The ladder gives fidelity up in this order, from the seed's full recipe down:
  1. retrain seeds 3 -> 2 (the verdict keeps a spread and its paired test per seed);
  2. val images 10,000 -> 5,000 (±0.2 pp per trial score: below what separates configs early);
  3. epochs 20 -> 4 (by 2, then by 1), trials and retrain alike, trials still on the whole 50k
     train split (4 epochs keep two ASHA rungs and an lr decay after epoch 3);
  4. images per trial 50,000 -> 5,000 in ~10 % steps; the retrain follows with the fewest
     epochs (at least 2) whose 60k images cover what a trial saw, so it never ranks the
     winner on less training than the search did;
  5. retrain epochs 2 -> 1;
  6. val images 5,000 -> 2,000, then images per trial 5,000 -> 2,000;
  7. epochs 4 -> 3 (the fewest with two rungs), then images per trial 2,000 -> 1,000;
  8. retrain seeds 2 -> 1 (last: the verdict loses its spread).
The retrain always trains on all 60,000 images.

Prediction model (`predict`), each term from the calibration or a constant measured below:
- one trial epoch = train images x s/image (mean over the space's batch sizes, as a trial draws
  one uniformly) + val images / eval images/s + EPOCH_OVERHEAD_S;
- ASHA: a trial stopped at rung k ran r_k epochs; each rung passes a fraction p of the trials
  reaching it (`pass_fraction`), so a trial runs r_0 + sum_k p^(k+1) (r_(k+1) - r_k) epochs;
- search = SEARCH_SETUP_S + MNIST load + N x (trial + TRIAL_OVERHEAD_S) / concurrent + the
  drain at the end (slots idle while the last trials finish: about half a full trial);
- retrain = RETRAIN_SETUP_S + MNIST load + the makespan of its 2 x seeds runs over the slots, in
  the order tuner.retrain submits them (best config at the mean batch speed, the seed's config at
  batch 512; each epoch on 60k plus a 10k test pass, and one more test pass for the predictions);
- total = time already spent (start-up, calibration) + search + retrain + PUBLISH_S.
"""

from __future__ import annotations

import argparse
import heapq
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, fields, replace

from tuner.settings import grace_period_for, reduction_factor_for
from tuner.space import BATCH_SIZES, SEED_CONFIG

N_TRAIN, N_VAL, N_RETRAIN, N_TEST = 50_000, 10_000, 60_000, 10_000
# Overheads measured on the 2-core CPU VM (README): per-epoch report and checkpoint, per-trial Ray
# bookkeeping with reused actors, the Tuner's start, the retrain's task start-up and writes, and
# publishing the tables, study and plots.
EPOCH_OVERHEAD_S = 0.05
TRIAL_OVERHEAD_S = 0.5
SEARCH_SETUP_S = 5.0
RETRAIN_SETUP_S = 8.0
PUBLISH_S = 8.0
# Async ASHA on a TPE search passes more trials per rung than the idealised 1/reduction factor:
# TPE's suggestions after its random start-up trials (optuna's n_startup_trials, 10) are better
# than those they are compared with. Measured on the committed 32-trial CPU search: 25 of 32
# passed rung 1, 22 of 25 rung 2; the random start-up passes ~1/rf, guided trials ~0.9.
TPE_STARTUP = 10
GUIDED_PASS = 0.9
# The plan aims this far below the budget, so that the search's hard stop (what the budget leaves
# after the predicted retrain) has slack for a search that runs a little long.
PLAN_MARGIN = 0.05


@dataclass(frozen=True)
class Fidelity:
    max_epochs: int
    train_size: int  # images per trial, of the 50k train split
    eval_size: int  # val images scored each epoch
    retrain_seeds: int
    retrain_epochs: int

    def settings(self) -> dict:
        """As SearchSettings fields: None where the level uses the whole split."""
        out = asdict(self)
        out["train_size"] = None if self.train_size >= N_TRAIN else self.train_size
        out["eval_size"] = None if self.eval_size >= N_VAL else self.eval_size
        return out

    def describe(self) -> str:
        return (f"{self.max_epochs} epochs x {self.train_size:,} images per trial, val {self.eval_size:,}; "
                f"retrain {self.retrain_seeds} seed(s) x {self.retrain_epochs} epoch(s) on 60,000")


def _steps(first: int, last: int, ratio: float = 0.9) -> list[int]:
    """first, ~first*ratio, ... down to last, rounded to 2 significant digits."""
    out, value = [], float(first)
    while value > last * 1.001:
        out.append(int(float(f"{value:.2g}")))
        value *= ratio
    return sorted(set(out + [last]), reverse=True)


def build_ladder() -> tuple[Fidelity, ...]:
    """The levels, highest first; each is at most its predecessor in every field."""
    f = Fidelity(20, N_TRAIN, N_VAL, 3, 20)
    levels = [f, f := replace(f, retrain_seeds=2), f := replace(f, eval_size=5000)]
    for epochs in (18, 16, 14, 12, 11, 10, 9, 8, 7, 6, 5, 4):
        levels.append(f := replace(f, max_epochs=epochs, retrain_epochs=epochs))
    for size in _steps(N_TRAIN, 5000)[1:]:
        retrain = max(2, math.ceil(f.max_epochs * size / N_RETRAIN))
        levels.append(f := replace(f, train_size=size, retrain_epochs=min(f.retrain_epochs, retrain)))
    levels.append(f := replace(f, retrain_epochs=1))
    for size in (4000, 3000, 2000):
        levels.append(f := replace(f, eval_size=size))
    for size in _steps(5000, 2000)[1:]:
        levels.append(f := replace(f, train_size=size))
    levels.append(f := replace(f, max_epochs=3))
    for size in _steps(2000, 1000)[1:]:
        levels.append(f := replace(f, train_size=size))
    levels.append(replace(f, retrain_seeds=1))
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


@dataclass(frozen=True)
class Prediction:
    search_s: float
    retrain_s: float
    total_s: float  # including the time already spent and publishing

    def to_dict(self) -> dict:
        return {k: round(v, 1) for k, v in asdict(self).items()}


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h' or plain seconds -> seconds (argparse type: one-line errors)."""
    match = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+))\s*([smh]?)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds, or a number "
                                         "with s, m or h (90s, 20m, 1.5h)")
    seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive duration (e.g. 20m)")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


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


def predict(f: Fidelity, thr: Throughput, num_samples: int, concurrent: int,
            spent_s: float = 0.0) -> Prediction:
    """The wall time of a search and retrain at fidelity `f` (the model in the module docstring)."""
    epoch = f.train_size * thr.s_per_image() + f.eval_size / thr.eval + EPOCH_OVERHEAD_S
    slots = min(concurrent, num_samples)
    trial = expected_epochs(f.max_epochs, num_samples) * epoch + TRIAL_OVERHEAD_S
    full = f.max_epochs * epoch + TRIAL_OVERHEAD_S
    search = SEARCH_SETUP_S + thr.load_s + num_samples * trial / slots + (slots - 1) / slots * full / 2

    def run(s_per_image: float) -> float:  # epochs on 60k, each scored on test; then its predictions
        return f.retrain_epochs * (N_RETRAIN * s_per_image + N_TEST / thr.eval + EPOCH_OVERHEAD_S) + N_TEST / thr.eval

    # submitted as tuner.retrain does: the best config's seeds, then the seed config's
    seed_batch = SEED_CONFIG["batch_size"]
    runs = [run(thr.s_per_image())] * f.retrain_seeds + [run(1 / thr.train[seed_batch])] * f.retrain_seeds
    retrain = RETRAIN_SETUP_S + thr.load_s + makespan(runs, min(concurrent, len(runs)))
    return Prediction(search, retrain, spent_s + search + retrain + PUBLISH_S)


def makespan(durations: list[float], slots: int) -> float:
    """When the last of `durations` ends, each started in order on the first free slot."""
    ends = [0.0] * slots
    for d in durations:
        heapq.heappush(ends, heapq.heappop(ends) + d)
    return max(ends)


def fill(f: Fidelity, thr: Throughput, budget_s: float, num_samples: int, concurrent: int,
         spent_s: float) -> tuple[Fidelity, Prediction]:
    """Spend the slack a level leaves below the budget on images per trial (in hundreds, up to the
    whole split): the levels are steps, and a step down can free a fifth of the budget."""
    low, high = f.train_size // 100, N_TRAIN // 100  # low fits
    while low < high:
        mid = (low + high + 1) // 2
        if predict(replace(f, train_size=mid * 100), thr, num_samples, concurrent, spent_s).total_s <= budget_s:
            low = mid
        else:
            high = mid - 1
    f = replace(f, train_size=max(f.train_size, low * 100))
    return f, predict(f, thr, num_samples, concurrent, spent_s)


class BudgetTooSmall(ValueError):
    """Even the lowest level does not fit; the message names the smallest budget that would."""


def choose(thr: Throughput, budget_s: float, num_samples: int, concurrent: int, spent_s: float = 0.0,
           fixed: dict | None = None, margin: float = 0.0) -> tuple[int, Fidelity, Prediction]:
    """(level index, fidelity, prediction) of the highest level predicted to fit in
    budget_s x (1 - margin), its slack then spent on images per trial (`fill`).

    `fixed`: Fidelity fields the user set; they replace the ladder's values at every level.
    """
    fixed, target = fixed or {}, budget_s * (1 - margin)
    for index, level in enumerate(LADDER):
        f = replace(level, **fixed)
        p = predict(f, thr, num_samples, concurrent, spent_s)
        if p.total_s <= target:
            if "train_size" not in fixed:
                f, p = fill(f, thr, target, num_samples, concurrent, spent_s)
            return index, f, p
    need = math.ceil(p.total_s / (1 - margin) / 60)
    raise BudgetTooSmall(f"--time-budget {format_duration(budget_s)} is too small here: even the lowest "
                         f"fidelity ({f.describe()}) is predicted to take {format_duration(p.total_s)} "
                         f"for {num_samples} trials, {concurrent} at a time; the smallest budget that "
                         f"works here is {need}m")


# --- the plan a search records -------------------------------------------------------------------

def plan_settings(settings, plan, data_dir: str, base, fixed: dict, started: float):
    """SearchSettings with the fidelity fields not in `fixed` planned to settings.time_budget_s
    (counted from time.monotonic() == started) and the plan recorded in budget_plan.

    The search's hard stop is what the budget leaves after the predicted retrain and publishing.
    The smoke preset is never calibrated: its budget only stops the search.
    """
    from mnist_net.cli import say
    from tuner.calibrate import calibrate

    if settings.budget == "smoke":
        left = settings.time_budget_s - (time.monotonic() - started)
        return replace(settings, budget_plan={"search_time_budget_s": round(max(left, 1.0), 1)})
    tasks = min(plan.concurrent, settings.num_samples)
    say(f"time budget {format_duration(settings.time_budget_s)}: calibrating ({tasks} task(s) with one "
        "trial's resources each)")
    calibrating = time.monotonic()
    thr = calibrate(data_dir, base, plan.cpu_per_trial, plan.gpu_per_trial, tasks)
    calibration_s = time.monotonic() - calibrating
    spent = time.monotonic() - started
    level, fidelity, predicted = choose(thr, settings.time_budget_s, settings.num_samples, plan.concurrent,
                                        spent, fixed, PLAN_MARGIN)
    # level 1 = the full recipe, as printed
    record = {"level": level + 1, "levels": len(LADDER), "fidelity": asdict(fidelity),
              "fixed_by_flags": sorted(fixed), "predicted_s": predicted.to_dict(),
              "throughput": {**thr.to_dict(), "calibration_s": round(calibration_s, 1), "tasks": tasks},
              "spent_before_search_s": round(spent, 1),
              "search_time_budget_s": round(settings.time_budget_s - spent - predicted.retrain_s - PUBLISH_S, 1)}
    return replace(settings, **fidelity.settings(), budget_plan=record)


def describe(settings) -> str | None:
    """One line: the budget, the level chosen, the prediction and the calibrated speeds."""
    record, fmt = settings.budget_plan, format_duration
    if settings.budget != "time" or record is None:
        return None
    thr, p = record["throughput"], record["predicted_s"]
    speeds = ", ".join(f"{b}: {v:.0f}" for b, v in thr["train_images_per_s"].items())
    return (f"time budget {fmt(settings.time_budget_s)}: level {record['level']} of {record['levels']}, "
            f"{Fidelity(**record['fidelity']).describe()}; predicted {fmt(p['total_s'])} (search "
            f"{fmt(p['search_s'])}, hard stop at {fmt(record['search_time_budget_s'])}; retrain "
            f"{fmt(p['retrain_s'])}). Calibrated images/s per trial by batch size {{{speeds}}}, eval "
            f"{thr['eval_images_per_s']:.0f}, {thr['tasks']} at once, in {thr['calibration_s']:.0f} s")

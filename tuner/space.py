"""The search's vocabulary, each fact once: the space, the metric and its mode, what a trial reports,
how a trial ended and the score a study records for it, and its number and id in Ray's folders; and
what a search trains: ASHA's rungs over a trial's epochs, a Fidelity and the LADDER of levels a time
budget picks from."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from mnist_net.data import N_TRAIN, N_VAL
from mnist_net.engine import CHANCE_ACC  # noqa: F401  (what a diverged trial scores; the tuner reads it here)

METRIC = "val_acc"  # percent correct on the 10k val split (never test)
MODE = "max"
TIME_ATTR = "training_iteration"  # one iteration == one epoch
# The engine's per-epoch numbers a trial reports (tuner.run.trainable); trial_epochs.csv keeps them, with
# the trial's peak memory (tuner.publish.results). "diverged" shows in trials.csv's status instead.
EPOCH_METRICS = ("val_acc", "val_loss", "train_loss", "train_acc", "lr", "images_per_s", "epoch_seconds",
                 "eval_seconds")
REPORTED = (*EPOCH_METRICS, "diverged")
# Where a trial trained, reported with each epoch: its node, device and precision (trials.csv, the study).
WHERE = ("node", "device", "precision")
# What ASHA compares at its rungs: val_acc, ties broken by the lower val_loss. Trials still at chance
# (a big batch before its first useful steps) tie exactly, and ASHA stops only a trial strictly
# below its cutoff: in the AVX2-emulated default run (README) half the trials sat at 10.1 % after
# epoch 1 and ASHA stopped none. The loss term moves a score by at most LOSS_WEIGHT x 10 = 0.001 pp,
# under val_acc's resolution (0.01 pp on 10,000 images), so it never reorders different accuracies.
RUNG_METRIC = "val_score"
LOSS_WEIGHT = 1e-4


def val_score(val_acc: float, val_loss: float) -> float:
    """val_acc less LOSS_WEIGHT x val_loss (a non-finite loss, or one above 10, counts as 10)."""
    return val_acc - LOSS_WEIGHT * (val_loss if math.isfinite(val_loss) and val_loss < 10 else 10.0)


@dataclass(frozen=True)
class Param:
    """One hyperparameter; param_space, space_record and optuna_distributions all read SPACE."""

    kind: str  # "loguniform", "uniform" (Ray's sampler names) or "choice"
    values: tuple  # (low, high), or the choices


SPACE = {"lr": Param("loguniform", (1e-3, 0.2)),
         "momentum": Param("uniform", (0.5, 0.99)),
         "batch_size": Param("choice", (32, 64, 128, 256, 512, 1024))}
PARAMS = tuple(SPACE)
# By name, for what checks a trial against the space (tuner.extend) or loops over batch sizes.
LR_RANGE, MOMENTUM_RANGE, BATCH_SIZES = SPACE["lr"].values, SPACE["momentum"].values, SPACE["batch_size"].values

# The seed's recipe is always trial 1, so the baseline is in every search.
SEED_CONFIG = {"lr": 0.01, "momentum": 0.9, "batch_size": 512}


def param_space() -> dict:
    from ray import tune  # here, so that reading results (the notebook) never imports Ray

    return {name: tune.choice(list(p.values)) if p.kind == "choice" else getattr(tune, p.kind)(*p.values)
            for name, p in SPACE.items()}


def contains(trials) -> bool:
    """Whether every row of a trials table (one column per param) lies inside SPACE."""
    return all((trials[name].isin(p.values) if p.kind == "choice" else trials[name].between(*p.values)).all()
               for name, p in SPACE.items())


def space_record() -> dict:
    """The same space as JSON, recorded in best_config.json so that --extend can compare spaces."""
    return {name: {p.kind: list(p.values)} for name, p in SPACE.items()}


def optuna_distributions() -> dict:
    """The same space as Optuna distributions, to rebuild a study from finished trials."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {name: CategoricalDistribution(list(p.values)) if p.kind == "choice"
            else FloatDistribution(*p.values, log=p.kind == "loguniform") for name, p in SPACE.items()}


def name_metric(study) -> None:
    """Name the study's objective METRIC, so optuna-dashboard (it reads study.metric_names) says val_acc, not
    "Objective 0"."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # set_metric_names: Optuna >= 3.2
        study.set_metric_names([METRIC])


def trial_status(*, errored: bool, diverged: bool, epochs_run: int, max_epochs: int) -> str:
    """The one rule naming how a trial ended (published tables, the live study, the progress line)."""
    return ("errored" if errored else "diverged" if diverged
            else "finished" if epochs_run >= max_epochs else "stopped")


def status_from_result(result: dict | None, error: bool, max_epochs: int) -> str:
    """trial_status from a trial's last reported result (Ray's dict)."""
    result = result or {}
    return trial_status(errored=error, diverged=bool(result.get("diverged")),
                        epochs_run=int(result.get(TIME_ATTR, 0) or 0), max_epochs=max_epochs)


def study_value(status: str, last_val_acc: float | None) -> float | None:
    """What Optuna records for a trial: its last reported val_acc (what OptunaSearch saw), chance for a
    diverged one (its loss went non-finite: it is never chosen), None (FAIL) for an errored one."""
    if status == "diverged":
        return CHANCE_ACC
    if status == "errored" or last_val_acc is None or math.isnan(last_val_acc):
        return None
    return float(last_val_acc)


def trial_number(trial_id: str, path: str) -> int:
    """Creation order, from Ray's trial folder name: 'train_s5_<id>_3_batch_size=...' -> 3."""
    match = re.search(rf"_{re.escape(trial_id)}_(\d+)_", Path(path).name)
    return int(match.group(1)) if match else 10**9


def ray_trial_id(result) -> str:
    """A Ray Result's trial id, from its last report, or its folder's name if it never reported."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def cut_short(result) -> bool:
    """Neither errored nor ended on its own. Only a trial that returned or that the scheduler stopped
    has done=True in its last result; on Ctrl-C or the time budget Ray 2.60 stops the running trials
    and marks them TERMINATED like finished ones."""
    return result.error is None and not (result.metrics or {}).get("done")


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

"""The confirm stage's recipe and its time: seeds, epochs and images per run, as planned, or fitted (raised or
shrunk) to the time a --time-budget left, at the speeds the trials measured, then kept to while the runs go
(Deadline, Pace); where a verdict at that recipe holds against the seed's own (`starved`), and the full-recipe
check that measures it there (FULL_RECIPE)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from mnist_net.cli import format_duration, say
from mnist_net.config import TrainConfig
from mnist_net.data import N_TRAIN, N_VAL
from tuner.plan.budget import (
    MIN_CONFIRM_IMAGES,
    PUBLISH_S,
    confirm_time,
    makespan,
    raise_confirm,
    run_time,
    shrink_confirm,
)
from tuner.settings import SearchSettings, Throughput

SPLIT_SIZES = {"train": N_TRAIN, "train+val": N_TRAIN + N_VAL}  # the images a recipe's split trains on
# The seed's config at its own recipe, and what the default search's winner gained there: committed in
# results/full-recipe-confirmed (4 seeds, 2026-12-03): 99.27 % on test, +0.21 pp (per seed +0.11 to +0.29).
SEED_RECIPE_TEST_ACC, SEED_RECIPE_GAP_PP = 99.27, 0.21


@dataclass(frozen=True)
class Recipe:
    seeds: int
    epochs: int
    train_size: int | None = None  # None = the whole split
    train_split: str = "train"  # or "train+val": the seed's 60k, no selection

    def __post_init__(self) -> None:
        if self.train_split not in ("train", "train+val"):
            raise ValueError(f"train_split must be 'train' or 'train+val', got {self.train_split!r}")
        if min(self.seeds, self.epochs, self.train_size or 1) < 1:
            raise ValueError(f"a recipe needs positive seeds, epochs and images, got {self}")

    @property
    def selects(self) -> bool:
        return self.train_split == "train"

    def images(self) -> int:
        return min(self.train_size or SPLIT_SIZES[self.train_split], SPLIT_SIZES[self.train_split])

    def describe(self) -> str:
        return (f"{self.seeds} seed(s) x {self.epochs} epoch(s) on {self.images():,} images of "
                f"{self.train_split}" + ("; winner chosen on val, verdict on test" if self.selects else ""))


# The check at the seed's recipe: 20 epochs on train+val. 3 seeds left the committed gap's interval across 0
# (2026-12-02), 4 decided it (2026-12-03): docs/confirm.md.
FULL_RECIPE = Recipe(seeds=4, epochs=TrainConfig.epochs, train_split="train+val")


def confirm_recipe(settings: SearchSettings, left_s: float | None = None, batch_sizes: list[int] = (),
                   thr: Throughput | None = None, concurrent: int = 1) -> tuple[Recipe, float | None]:
    """The confirm stage's recipe and its predicted seconds: as planned or given; with a time budget, fitted
    to the time left at the speeds the trials measured: raised when a search ended early, shrunk (images,
    then epochs, then seeds) when the plan no longer fits."""
    planned = Recipe(settings.confirm_seeds, settings.confirm_epochs or settings.max_epochs,
                     settings.confirm_train_size)
    b = settings.budget_plan
    if left_s is None or b is None or b.fidelity is None or {"confirm_epochs", "confirm_train_size"} & set(
            b.fixed_by_flags):
        return planned, None
    thr, f, room = thr or b.throughput, b.fidelity, left_s - PUBLISH_S
    speeds = [1 / thr.train[b] for b in batch_sizes]  # seconds per image, each candidate's batch size
    seeds, (e, n), how = f.confirm_seeds, raise_confirm(f, thr, room, speeds, concurrent), ""
    if confirm_time(seeds, e, n, speeds, thr, concurrent) > room:
        seeds, e, n = shrink_confirm(f, thr, room, speeds, concurrent) or (1, 1, MIN_CONFIRM_IMAGES)
        how = "; shrunk to fit the time left, at the speeds the trials measured"
    predicted = confirm_time(seeds, e, n, speeds, thr, concurrent)
    say(f"confirm stage: {format_duration(left_s)} left of the budget -> {seeds} seed(s) x {e} epochs x {n:,} images "
        f"per run (planned {f.confirm_seeds} x {f.confirm_epochs} x {f.confirm_train_size:,}{how}), predicted "
        f"{format_duration(predicted)}" + (" (over the time left: nothing smaller to run)" if predicted > room else ""))
    return Recipe(seeds, e, None if n >= N_TRAIN else n), predicted


def from_runs(runs: dict[str, list[dict]]) -> Throughput:
    """The speeds confirm runs measured: median training images/s per batch size, eval images/s on 10k."""
    train: dict[int, list[float]] = {}
    evals = []
    for run in (r for rs in runs.values() for r in rs):
        for e in run["epochs_history"]:
            train.setdefault(run["config"]["batch_size"], []).append(e["images_per_s"])
            evals += [N_VAL / e["eval_seconds"]] if e.get("eval_seconds") else []
    return Throughput({b: statistics.median(v) for b, v in train.items()}, statistics.median(evals))


def full_recipe_time(thr: Throughput, batch_size: int, concurrent: int, seeds: int = FULL_RECIPE.seeds) -> float:
    """Predicted seconds of the full-recipe check: a config of `batch_size` and the seed's, `seeds` each."""
    return confirm_time(seeds, FULL_RECIPE.epochs, FULL_RECIPE.images(), [1 / thr.train[batch_size]], thr,
                        concurrent)


def starved(seed_test_acc: float) -> bool:
    """The seed's config far from converged: further below its own-recipe accuracy than the gap a tuned config
    measured there, so a gap at this recipe measures how starved it is, not what tuning buys at its recipe."""
    return seed_test_acc < SEED_RECIPE_TEST_ACC - SEED_RECIPE_GAP_PP


@dataclass(frozen=True)
class Deadline:
    """When the confirm runs must have ended (time.monotonic()), the speeds that predict a run, and the overrun
    tolerated before a seed is dropped (a seed fewer costs the verdict more than a few seconds cost the budget)."""

    end: float
    thr: Throughput
    slack_s: float = 0.0

    def run_s(self, config: dict, recipe: Recipe) -> float:
        return run_time(recipe.epochs, recipe.images(), 1 / self.thr.train[config["batch_size"]], self.thr)


class Pace:
    """How long the runs still pending will take: each predicted run scaled by the ratio measured so far; the first
    `slots` pending are running (since the run before them ended), the rest wait for a slot."""

    def __init__(self, slots: int, submitted: list) -> None:
        self.slots, self.ratios = max(slots, 1), []
        self.since = dict.fromkeys(submitted[:self.slots], time.monotonic())  # when each running run started

    def ended(self, ratio: float) -> None:
        self.ratios.append(ratio)

    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 1.0

    def left_s(self, predicted: list[float], pending: list) -> float:
        now, r = time.monotonic(), self.ratio()
        running = pending[:self.slots]
        for ref in running:
            self.since.setdefault(ref, now)  # it took the slot of the run that just ended
        ends = [max(self.since[ref] + r * p - now, 0.0) for ref, p in zip(running, predicted, strict=False)]
        return makespan([r * p for p in predicted[len(running):]], len(ends), ends) if ends else 0.0

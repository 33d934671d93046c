"""The confirm stage's recipe: seeds, epochs and images per run, as planned, or raised to what the time
left of a --time-budget fits at the speeds the trials measured."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from mnist_net.cli import format_duration, say
from mnist_net.data import N_TRAIN, N_VAL
from tuner.fidelity import Throughput
from tuner.plan.budget import PUBLISH_S, confirm_time, raise_confirm
from tuner.settings import SearchSettings

SPLIT_SIZES = {"train": N_TRAIN, "train+val": N_TRAIN + N_VAL}  # the images a recipe's split trains on


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


def confirm_recipe(settings: SearchSettings, left_s: float | None = None, batch_sizes: list[int] = (),
                   epochs: pd.DataFrame | None = None, concurrent: int = 1) -> tuple[Recipe, float | None]:
    """The confirm stage's recipe and its predicted seconds: as planned or given; with a time budget,
    raised to what the time left fits at the speeds the trials measured (a search that ended early
    gives the rest)."""
    planned = Recipe(settings.confirm_seeds, settings.confirm_epochs or settings.max_epochs,
                     settings.confirm_train_size)
    b = settings.budget_plan
    if left_s is None or b is None or b.fidelity is None or {"confirm_epochs", "confirm_train_size"} & set(
            b.fixed_by_flags):
        return planned, None
    thr, f = measured(replace(b.throughput, load_s=0.0), epochs), b.fidelity
    speeds = [1 / thr.train[b] for b in batch_sizes]  # seconds per image, each candidate's batch size
    e, n = raise_confirm(f, thr, left_s - PUBLISH_S, speeds, concurrent)
    predicted = confirm_time(f.confirm_seeds, e, n, speeds, thr, concurrent)
    say(f"confirm stage: {format_duration(left_s)} left of the budget -> {e} epochs x {n:,} images per run "
        f"(planned {f.confirm_epochs} x {f.confirm_train_size:,}), predicted {format_duration(predicted)}")
    return replace(planned, epochs=e, train_size=None if n >= N_TRAIN else n), predicted


def measured(thr: Throughput, epochs: pd.DataFrame | None) -> Throughput:
    """The calibrated speeds, replaced by the median training images/s the trials reported per batch size."""
    if epochs is None or epochs.empty or "batch_size" not in epochs:
        return thr
    seen = epochs.dropna(subset=["images_per_s"]).groupby("batch_size")["images_per_s"].median()
    return replace(thr, train={b: float(seen.get(b, v)) for b, v in thr.train.items()})

"""Fit a search and its confirm stage into a wall-clock budget (`--time-budget 20m`): the model.

Calibrated speeds (tuner.plan.search_plan.calibrate) predict each level of LADDER (`predict`); the highest level that
fits the budget is taken and its slack spent on images per trial (`pick_level`). The model, term by
term, and the ladder's order: docs/time-budget.md.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace
from typing import TYPE_CHECKING

from mnist_net.cli import format_duration
from mnist_net.data import N_TEST, N_TRAIN, N_VAL
from tuner.settings import Prediction, SearchSettings, Throughput
from tuner.space import LADDER, SEED_CONFIG, Fidelity, expected_epochs

if TYPE_CHECKING:
    import pandas as pd

# Overheads measured on the 2-core CPU VM (README): per-epoch report and checkpoint, per-trial Ray
# bookkeeping with reused actors, the Tuner's start, the confirm stage's task start-up and writes, and
# publishing the tables, study and plots.
EPOCH_OVERHEAD_S = 0.05
TRIAL_OVERHEAD_S = 0.5
SEARCH_SETUP_S = 5.0
CONFIRM_SETUP_S = 8.0
PUBLISH_S = 8.0
# The plan aims this far below the budget, so that the search's hard stop (what the budget leaves
# after the predicted confirm stage) has slack for a search that runs a little long.
PLAN_MARGIN = 0.05
# A confirm stage whose runs go slower than predicted drops its last seed only when they would end later than
# this share of the budget past it: a 5 % overrun costs less than a verdict on one seed fewer.
DROP_SLACK = 0.05


def predict(f: Fidelity, thr: Throughput, num_samples: int, concurrent: int,
            spent_s: float = 0.0, configs: int = 4) -> Prediction:
    """The wall time of a search and its confirm stage of `configs` configs (K + the seed's) at `f`."""
    epoch = f.train_size * thr.s_per_image() + f.eval_size / thr.eval + EPOCH_OVERHEAD_S
    slots = min(concurrent, num_samples)
    trial = expected_epochs(f.max_epochs, num_samples) * epoch + TRIAL_OVERHEAD_S
    full = f.max_epochs * epoch + TRIAL_OVERHEAD_S
    search = SEARCH_SETUP_S + thr.load_s + num_samples * trial / slots + (slots - 1) / slots * full / 2
    confirm = planned_confirm_time(f, thr, concurrent, configs)
    return Prediction(search, confirm, spent_s + search + confirm + PUBLISH_S)


def planned_confirm_time(f: Fidelity, thr: Throughput, concurrent: int, configs: int) -> float:
    """The confirm stage at `f` before its candidates are known: each searched config at the mean batch speed."""
    searched = [thr.s_per_image()] * (configs - 1)
    return confirm_time(f.confirm_seeds, f.confirm_epochs, f.confirm_train_size, searched, thr, concurrent)


def hard_stop(budget_s: float, spent_s: float, confirm_s: float) -> float:
    """The search's hard stop (seconds from its start): what the budget leaves after the confirm stage."""
    return budget_s - spent_s - confirm_s - PUBLISH_S


def confirm_time(seeds: int, epochs: int, images: int, searched_s_per_image: list[float], thr: Throughput,
                 concurrent: int) -> float:
    """The confirm stage's wall time: every (config, seed) run, in the order tuner.confirm.runs
    submits them, over the slots; the seed's config trains at batch 512's speed."""
    per_config = searched_s_per_image + [1 / thr.train[SEED_CONFIG["batch_size"]]]
    return runs_time([run_time(epochs, images, s, thr) for _ in range(seeds) for s in per_config], thr, concurrent)


def runs_time(durations: list[float], thr: Throughput, concurrent: int) -> float:
    """Confirm runs of these `durations` as a stage: its start-up, then their makespan over the slots."""
    return CONFIRM_SETUP_S + thr.load_s + makespan(durations, min(concurrent, len(durations))) if durations else 0.0


def run_time(epochs: int, images: int, s_per_image: float, thr: Throughput) -> float:
    """One confirm run: `epochs`, each scored on a whole 10k split (val, or test at 60k); then test once."""
    return epochs * (images * s_per_image + N_VAL / thr.eval + EPOCH_OVERHEAD_S) + N_TEST / thr.eval


def search_speeds(settings: SearchSettings, epochs: pd.DataFrame | None) -> Throughput | None:
    """The speeds a planned search measured (None: no plan): its calibration, learnt from its trials' epochs."""
    b = settings.budget_plan
    if b is None or b.throughput is None:
        return None
    return measured(b.throughput, epochs, b.fidelity.eval_size if b.fidelity else settings.fidelity().eval_size)


def measured(thr: Throughput, epochs: pd.DataFrame | None, eval_images: int = N_VAL) -> Throughput:
    """The calibrated speeds, replaced by the medians the trials reported: training images/s per batch size,
    and eval images/s (`eval_images` scored per epoch)."""
    if epochs is None or epochs.empty or "batch_size" not in epochs:
        return thr
    seen = epochs.dropna(subset=["images_per_s"]).groupby("batch_size")["images_per_s"].median()
    evals = epochs["eval_seconds"].dropna().median() if "eval_seconds" in epochs else math.nan
    return replace(thr, train={b: float(seen.get(b, v)) for b, v in thr.train.items()},
                   eval=eval_images / float(evals) if evals > 0 else thr.eval)  # False for nan


def makespan(durations: list[float], slots: int, busy: list[float] = ()) -> float:
    """When the last of `durations` ends, each started in order on the first free slot (`busy`: when
    the slots already taken free up)."""
    ends = sorted(list(busy) + [0.0] * (slots - len(busy)))
    for d in durations:
        heapq.heappush(ends, heapq.heappop(ends) + d)
    return max(ends)


def fill_images(f: Fidelity, thr: Throughput, budget_s: float, num_samples: int, concurrent: int,
         spent_s: float, configs: int = 4) -> tuple[Fidelity, Prediction]:
    """Spend the slack a level leaves below the budget on images per trial (in hundreds, up to the
    whole split): the levels are steps, and a step down can free a fifth of the budget."""
    follow = f.confirm_train_size == f.train_size  # the confirmation keeps training what a trial does

    def at(size: int) -> Fidelity:
        return replace(f, train_size=size, **({"confirm_train_size": size} if follow else {}))

    low, high = f.train_size // 100, N_TRAIN // 100  # low fits
    while low < high:
        mid = (low + high + 1) // 2
        if predict(at(mid * 100), thr, num_samples, concurrent, spent_s, configs).total_s <= budget_s:
            low = mid
        else:
            high = mid - 1
    f = at(max(f.train_size, low * 100))
    return f, predict(f, thr, num_samples, concurrent, spent_s, configs)


class BudgetTooSmall(ValueError):
    """Even the lowest level does not fit; the message names the smallest budget that would."""


def pick_level(thr: Throughput, budget_s: float, num_samples: int, concurrent: int, spent_s: float = 0.0,
           fixed: dict | None = None, margin: float = 0.0, configs: int = 4) -> tuple[int, Fidelity, Prediction]:
    """(level index, fidelity, prediction) of the highest level predicted to fit in
    budget_s x (1 - margin), its slack then spent on images per trial (`fill_images`).

    `fixed`: Fidelity fields the user set; they replace the ladder's values at every level.
    """
    fixed, target = fixed or {}, budget_s * (1 - margin)
    for index, level in enumerate(LADDER):
        f = replace(level, **fixed)
        p = predict(f, thr, num_samples, concurrent, spent_s, configs)
        if p.total_s <= target:
            if "train_size" not in fixed:
                f, p = fill_images(f, thr, target, num_samples, concurrent, spent_s, configs)
            return index, f, p
    need = math.ceil(p.total_s / (1 - margin) / 60)
    raise BudgetTooSmall(f"--time-budget {format_duration(budget_s)} is too small here: even the lowest "
                         f"fidelity ({f.describe()}) is predicted to take {format_duration(p.total_s)} "
                         f"for {num_samples} trials, {concurrent} at a time, and {configs} configs to confirm; "
                         f"the smallest budget that works here is {need}m")


def raise_confirm(f: Fidelity, thr: Throughput, left_s: float, searched_s_per_image: list[float],
                  concurrent: int) -> tuple[int, int]:
    """(epochs, images) for the confirm stage: the highest ladder level's, no lower than planned,
    predicted to fit in left_s at the planned seeds with the candidates' own speeds."""
    for level in LADDER:
        epochs = max(level.confirm_epochs, f.confirm_epochs)
        images = max(level.confirm_train_size, f.confirm_train_size)
        if confirm_time(f.confirm_seeds, epochs, images, searched_s_per_image, thr, concurrent) <= left_s:
            return epochs, images
    return f.confirm_epochs, f.confirm_train_size


def shrink_confirm(f: Fidelity, thr: Throughput, left_s: float, searched_s_per_image: list[float],
                   concurrent: int) -> tuple[int, int, int] | None:
    """(seeds, epochs, images) below the plan that fit in left_s: images first (down to MIN_CONFIRM_IMAGES),
    then epochs, then seeds, as the ladder drops them last; None if even one seed of one epoch does not."""
    sizes = [n for n in _sizes(f.confirm_train_size) if n < f.confirm_train_size] or [f.confirm_train_size]
    tries = [(f.confirm_epochs, n) for n in sizes] + [(e, sizes[-1]) for e in range(f.confirm_epochs - 1, 0, -1)]
    for seeds in range(f.confirm_seeds, 0, -1):
        for e, n in tries:
            if confirm_time(seeds, e, n, searched_s_per_image, thr, concurrent) <= left_s:
                return seeds, e, n
    return None


MIN_CONFIRM_IMAGES = 1000  # the ladder's fewest images per trial


def _sizes(first: int) -> list[int]:
    """first, ~0.9 first, ... down to MIN_CONFIRM_IMAGES, in hundreds."""
    out, n = [], float(first)
    while n > MIN_CONFIRM_IMAGES:
        out.append(int(n) // 100 * 100)
        n *= 0.9
    return out + [MIN_CONFIRM_IMAGES]

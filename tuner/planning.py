"""The plan of a time-budgeted search: calibrate, choose a fidelity level, record it; after the
search, the confirm stage's recipe on the time actually left (the model is tuner.budget)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import pandas as pd

from mnist_net.cli import say
from tuner.budget import (
    LADDER,
    PLAN_MARGIN,
    PUBLISH_S,
    Fidelity,
    Throughput,
    choose,
    confirm_time,
    format_duration,
    raise_confirm,
)
from tuner.calibrate import calibrate
from tuner.confirm import Recipe
from tuner.settings import SearchSettings


def plan_settings(settings: SearchSettings, plan, data_dir: str, base, fixed: dict, started: float) -> SearchSettings:
    """SearchSettings with the fidelity fields not in `fixed` planned to settings.time_budget_s
    (counted from time.monotonic() == started) and the plan recorded in budget_plan.

    The search's hard stop is what the budget leaves after the predicted confirm stage.
    The smoke preset is never calibrated: its budget only stops the search.
    """
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
                                        spent, fixed, PLAN_MARGIN, configs=settings.top + 1)
    # level 1 = the full recipe, as printed
    record = {"level": level + 1, "levels": len(LADDER), "fidelity": asdict(fidelity),
              "fixed_by_flags": sorted(fixed), "predicted_s": predicted.to_dict(),
              "throughput": {**thr.to_dict(), "calibration_s": round(calibration_s, 1), "tasks": tasks},
              "spent_before_search_s": round(spent, 1),
              "search_time_budget_s": round(settings.time_budget_s - spent - predicted.confirm_s - PUBLISH_S, 1)}
    return replace(settings, **fidelity.settings(), budget_plan=record)


def describe(settings: SearchSettings) -> str | None:
    """One line: the budget, the level chosen, the prediction and the calibrated speeds."""
    record, fmt = settings.budget_plan, format_duration
    if settings.budget != "time" or record is None:
        return None
    thr, p = record["throughput"], record["predicted_s"]
    speeds = ", ".join(f"{b}: {v:.0f}" for b, v in thr["train_images_per_s"].items())
    return (f"time budget {fmt(settings.time_budget_s)}: level {record['level']} of {record['levels']}, "
            f"{Fidelity(**record['fidelity']).describe()}; predicted {fmt(p['total_s'])} (search "
            f"{fmt(p['search_s'])}, hard stop at {fmt(record['search_time_budget_s'])}; confirm "
            f"{fmt(p['confirm_s'])}). Calibrated images/s per trial by batch size {{{speeds}}}, eval "
            f"{thr['eval_images_per_s']:.0f}, {thr['tasks']} at once, in {thr['calibration_s']:.0f} s")


def confirm_recipe(settings: SearchSettings, left_s: float | None = None, batch_sizes: list[int] = (),
                   epochs: pd.DataFrame | None = None, concurrent: int = 1) -> tuple[Recipe, float | None]:
    """The confirm stage's recipe and its predicted seconds: as planned or given; with a time budget,
    raised to what the time left fits at the speeds the trials measured (a search that ended early
    gives the rest)."""
    planned = Recipe(settings.confirm_seeds, settings.confirm_epochs or settings.max_epochs,
                     settings.confirm_train_size)
    record = settings.budget_plan or {}
    if left_s is None or "fidelity" not in record or {"confirm_epochs", "confirm_train_size"} & set(
            record.get("fixed_by_flags", [])):
        return planned, None
    thr = measured(Throughput(train={int(b): v for b, v in record["throughput"]["train_images_per_s"].items()},
                              eval=record["throughput"]["eval_images_per_s"]), epochs)
    f = Fidelity(**record["fidelity"])
    speeds = [1 / thr.train[b] for b in batch_sizes]  # seconds per image, each candidate's batch size
    e, n = raise_confirm(f, thr, left_s - PUBLISH_S, speeds, concurrent)
    predicted = confirm_time(f.confirm_seeds, e, n, speeds, thr, concurrent)
    say(f"confirm stage: {format_duration(left_s)} left of the budget -> {e} epochs x {n:,} images per run "
        f"(planned {f.confirm_epochs} x {f.confirm_train_size:,}), predicted {format_duration(predicted)}")
    return replace(planned, epochs=e, train_size=None if n >= 50_000 else n), predicted


def measured(thr: Throughput, epochs: pd.DataFrame | None) -> Throughput:
    """The calibrated speeds, replaced by the median training images/s the trials reported per batch size."""
    if epochs is None or epochs.empty or "batch_size" not in epochs:
        return thr
    seen = epochs.dropna(subset=["images_per_s"]).groupby("batch_size")["images_per_s"].median()
    return replace(thr, train={b: float(seen.get(b, v)) for b, v in thr.train.items()})

"""Stage 2 of a search, the plan: where trials run, and a time budget's calibration and fidelity level (or,
with no budget, the predicted wall time); after the search, the confirm stage's recipe on the time left.
The model is tuner.plan.budget."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mnist_net.cli import format_duration, say
from tuner.plan.budget import PLAN_MARGIN, hard_stop, pick_level, predict
from tuner.plan.calibrate import calibrate
from tuner.plan.placement import Placement, alive_nodes, check_nodes, one_precision, place
from tuner.settings import BudgetPlan, SearchSettings, Throughput, with_default_budget
from tuner.space import LADDER

LONG_S = 3600  # a search predicted to take longer is told about --time-budget


@dataclass(frozen=True)
class SearchPlan:
    """Stage 2: the settings with their fidelity planned (and the hard stop in budget_plan), and
    where the trials run."""

    settings: SearchSettings
    placement: Placement


def plan_search(settings: SearchSettings, fixed: dict, storage: str, data_dir: str, started: float, *,
                new: bool, resumed: bool) -> SearchPlan:
    """On the connected Ray: check every node (ValueError naming those that cannot train) and place the
    trials; a `new` search (not resumed, not an extension) on a machine with no GPU and no fidelity flag
    gets the default time budget; a time budget not yet planned is planned; else a fixed fidelity is
    said as a predicted wall time (not on --resume). `fixed`: the fidelity flags given."""
    settings = one_precision(settings, check_nodes(storage, data_dir))
    nodes = alive_nodes()
    if new:
        settings = with_default_budget(settings, any(n.get("GPU", 0) > 0 for n in nodes), fixed)
    placement = place(nodes, settings.gpus_per_trial, settings.cpus_per_trial, settings.max_concurrent)
    if settings.time_budget_s is not None and settings.budget_plan is None:
        settings = plan_settings(settings, placement, data_dir, fixed, started)
    elif not resumed and (line := predict_wall_time(settings, placement, data_dir, started)) is not None:
        say(line)  # no budget (GPUs, or fidelity flags): how long the recipe asked for will take
    return SearchPlan(settings, placement)


def plan_settings(settings: SearchSettings, placement: Placement, data_dir: str, fixed: dict,
                  started: float) -> SearchSettings:
    """SearchSettings with the fidelity fields not in `fixed` planned to settings.time_budget_s
    (counted from time.monotonic() == started) and the plan recorded in budget_plan.

    The search's hard stop is what the budget leaves after the predicted confirm stage.
    The smoke preset is never calibrated: its budget only stops the search.
    """
    if settings.fidelity_mode == "smoke":
        left = settings.time_budget_s - (time.monotonic() - started)
        return replace(settings, budget_plan=BudgetPlan(round(max(left, 1.0), 1)))
    tasks = min(placement.concurrent, settings.num_samples)
    say(f"time budget {format_duration(settings.time_budget_s)}: calibrating ({tasks} task(s) with one "
        "trial's resources each)")
    calibrating = time.monotonic()
    thr = calibrate(data_dir, settings.trial_config(), placement.cpu_per_trial, placement.gpu_per_trial, tasks)
    calibration_s = time.monotonic() - calibrating
    spent = time.monotonic() - started
    level, fidelity, predicted = pick_level(thr, settings.time_budget_s, settings.num_samples, placement.concurrent,
                                            spent, fixed, PLAN_MARGIN, configs=settings.top + 1)
    stop = hard_stop(settings.time_budget_s, spent, predicted.confirm_s)
    record = BudgetPlan(round(stop, 1), level + 1, fidelity, tuple(sorted(fixed)), predicted, thr,
                        round(calibration_s, 1), tasks, round(spent, 1))  # level 1 = the full recipe, as printed
    return replace(settings, **fidelity.settings(), budget_plan=record)


def predict_wall_time(settings: SearchSettings, placement: Placement, data_dir: str,
                      started: float) -> str | None:
    """For a search with a fixed fidelity (mode "full"): calibrate as --time-budget does, then
    predicted_line. None for a time budget (it printed its plan) or the smoke preset."""
    if settings.fidelity_mode != "full":
        return None
    thr = calibrate(data_dir, settings.trial_config(), placement.cpu_per_trial, placement.gpu_per_trial,
                    min(placement.concurrent, settings.num_samples))
    return predicted_line(settings, thr, placement.concurrent, time.monotonic() - started)


def predicted_line(settings: SearchSettings, thr: Throughput, concurrent: int, spent_s: float = 0.0) -> str:
    """The predicted wall time of the search and its confirm stage, and what to do if it is hours
    (the GPU default is the full recipe with no budget: on a T4 that can be hours)."""
    f = settings.fidelity()
    p = predict(f, thr, settings.num_samples, concurrent, spent_s, configs=settings.top + 1)
    line = (f"predicted wall time {format_duration(p.total_s)} (search {format_duration(p.search_s)}, "
            f"confirm {format_duration(p.confirm_s)}) for {settings.num_samples} trials, {concurrent} at once, "
            f"at {f.describe()}; from {min(thr.train.values()):.0f}-{max(thr.train.values()):.0f} training "
            "images/s per trial, calibrated")
    if p.total_s > LONG_S:
        line += "; that is hours: --time-budget 1h (or any duration) plans a lower fidelity to fit it"
    return line


def describe(settings: SearchSettings) -> str | None:
    """One line: the budget, the level chosen, the prediction and the calibrated speeds."""
    b, fmt = settings.budget_plan, format_duration
    if settings.fidelity_mode != "time" or b is None:
        return None
    speeds = ", ".join(f"{k}: {v:.0f}" for k, v in b.throughput.train.items())
    return (f"time budget {fmt(settings.time_budget_s)}: level {b.level} of {len(LADDER)}, "
            f"{b.fidelity.describe()}; predicted {fmt(b.predicted.total_s)} (search "
            f"{fmt(b.predicted.search_s)}, hard stop at {fmt(b.search_time_budget_s)}; confirm "
            f"{fmt(b.predicted.confirm_s)}). Calibrated images/s per trial by batch size {{{speeds}}}, eval "
            f"{b.throughput.eval:.0f}, {b.tasks} at once, in {b.calibration_s:.0f} s")

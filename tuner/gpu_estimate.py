"""The wall time a search without --time-budget will take, said before it starts (GPUs too).

With GPUs the search's default is the full recipe with no budget: on a T4 that can be hours. The
same calibration and model as --time-budget (tuner.calibrate, tuner.budget.predict), applied to
the fidelity the settings already fix instead of choosing one.
"""

from __future__ import annotations

import time

from mnist_net.cli import format_duration
from tuner.budget import N_TRAIN, N_VAL, Fidelity, Throughput, predict

LONG_S = 3600  # above this, the line suggests a budget


def settings_fidelity(settings) -> Fidelity:
    """The settings' cost knobs as a budget.Fidelity (None = the whole split, as the search reads it)."""
    return Fidelity(max_epochs=settings.max_epochs, train_size=settings.train_size or N_TRAIN,
                    eval_size=settings.eval_size or N_VAL, confirm_seeds=settings.confirm_seeds,
                    confirm_epochs=settings.confirm_epochs or settings.max_epochs,
                    confirm_train_size=settings.confirm_train_size or N_TRAIN)


def predicted_line(settings, thr: Throughput, concurrent: int, spent_s: float = 0.0) -> str:
    """One line: the predicted wall time of the search and its confirm stage, and what to do if long."""
    f = settings_fidelity(settings)
    p = predict(f, thr, settings.num_samples, concurrent, spent_s, configs=settings.top + 1)
    line = (f"predicted wall time {format_duration(p.total_s)} (search {format_duration(p.search_s)}, "
            f"confirm {format_duration(p.confirm_s)}) for {settings.num_samples} trials, {concurrent} at once, "
            f"at {f.describe()}; from {min(thr.train.values()):.0f}-{max(thr.train.values()):.0f} training "
            "images/s per trial, calibrated")
    if p.total_s > LONG_S:
        line += "; that is hours: --time-budget 1h (or any duration) plans a lower fidelity to fit it"
    return line


def predict_wall_time(settings, plan, data_dir: str, base, started: float) -> str | None:
    """Calibrate (a few seconds of Ray tasks with each trial's resources) and return predicted_line,
    for a search whose fidelity is fixed ("full"); None when --time-budget already printed its plan
    or the smoke preset runs. `started`: time.monotonic() when the command began."""
    from tuner.calibrate import calibrate

    if settings.fidelity_mode != "full":
        return None
    tasks = min(plan.concurrent, settings.num_samples)
    thr = calibrate(data_dir, base, plan.cpu_per_trial, plan.gpu_per_trial, tasks)
    return predicted_line(settings, thr, plan.concurrent, time.monotonic() - started)

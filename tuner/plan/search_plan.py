"""Stage 2 of a search, the plan: every node checked and the trials placed, then a time budget's calibration
and fidelity level (or, with no budget, the predicted wall time). The model is tuner.plan.budget."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, replace

from mnist_net.cli import format_duration, say
from tuner.plan.budget import PLAN_MARGIN, hard_stop, pick_level, predict
from tuner.plan.placement import Placement, alive_nodes, check_nodes, one_precision, place, task_resources
from tuner.settings import BudgetPlan, SearchSettings, Throughput, with_default_budget
from tuner.space import BATCH_SIZES, LADDER
from tuner.worker import node_label, worker_device

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


# Calibration, the plan's first step under a time budget: one trial's training and eval speed here, from Ray tasks
# with one trial's resources on their Ray-given device, as many at once as trials will run, on the training nodes:
# contention shows.
# Images timed per batch size (>= TIMED_STEPS steps: ~1 ms GPU steps need more vs jitter), after a same-shape warm-up
CALIBRATION_IMAGES = 512
CALIBRATION_EVAL = 2000  # images of the one eval pass
TIMED_STEPS = {"cpu": 2, "cuda": 16}
WARMUP_STEPS = 3  # cuDNN's autotuning (cudnn.benchmark, per input shape), allocator, lazy init


def measure_train(cfg, train, device) -> float:
    """Training images/s of `cfg` on a small `train` slice, after a warm-up on the same batch shapes so cuDNN
    autotuning, CUDA lazy init and first allocations fall outside the timing (train_epoch ends in a host sync)."""
    import torch

    from mnist_net.engine import build_training, train_epoch
    from mnist_net.runtime import autocast_dtype

    training = build_training(cfg, device)
    amp, b = autocast_dtype(device, cfg.precision), cfg.batch_size

    def run(images: int, seed: int):
        gen = torch.Generator(device=device).manual_seed(seed)
        return train_epoch(training.forward, training.optimizer, _head(train, images), batch_size=b,
                           generator=gen, augment=cfg.augment, amp_dtype=amp,
                           channels_last=cfg.channels_last, scaler=training.scaler)

    run(min(len(train), WARMUP_STEPS * b) // b * b or b, seed=0)
    steps = TIMED_STEPS.get(device.type, TIMED_STEPS["cpu"])
    return run(max(steps * b, CALIBRATION_IMAGES), seed=1).images_per_s


def measure_eval(cfg, val, device) -> float:
    """Eval images/s of a fresh model of `cfg` on `val`, after one warm-up batch."""
    import torch

    from mnist_net.engine import build_training, evaluate
    from mnist_net.runtime import autocast_dtype

    model, amp = build_training(cfg, device).forward, autocast_dtype(device, cfg.precision)
    evaluate(model, _head(val, 1000), amp_dtype=amp, channels_last=cfg.channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    evaluate(model, val, amp_dtype=amp, channels_last=cfg.channels_last)  # ends in a host sync
    return len(val) / (time.perf_counter() - start)


def calibration_task(data_dir: str, base, threads: int, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict:
    """One trial's throughput per batch size, on the device and threads Ray gave this task."""
    from mnist_net.data import load_splits  # not the per-worker cache: load_s is what a trial pays

    device = worker_device(threads)
    start = time.perf_counter()
    splits = load_splits(data_dir)
    load_s = time.perf_counter() - start
    steps = TIMED_STEPS.get(device.type, TIMED_STEPS["cpu"])
    train = splits["train"].subset(max(steps * max(batch_sizes), CALIBRATION_IMAGES), base.seed).to(device)
    speeds = {b: measure_train(base.replace(batch_size=b), train, device) for b in batch_sizes}
    val = _head(splits["val"], CALIBRATION_EVAL).to(device)
    return {"train": speeds, "eval": measure_eval(base, val, device), "load_s": load_s, "pid": os.getpid(),
            "node": node_label()}


def calibration_runs(data_dir: str, base, cpu_per_trial: int, gpu_per_trial: float, tasks: int,
                     batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[dict]:
    """What `tasks` calibration tasks, at once with one trial's resources (GPU ones never share a worker), measured."""
    import ray

    # SPREAD: on several nodes each measures its own speed (named in the plan), as trials will run on each
    remote = ray.remote(**task_resources(cpu_per_trial, gpu_per_trial, "calibration"), max_retries=0,
                        scheduling_strategy="SPREAD")(calibration_task)
    try:
        return ray.get([remote.remote(data_dir, base, cpu_per_trial, batch_sizes) for _ in range(tasks)])
    except ray.exceptions.RayTaskError as err:  # e.g. a GPU share on a torch without CUDA
        raise ValueError(f"calibration failed: {getattr(err, 'cause', None) or err}") from None


def calibrate(data_dir: str, base, cpu_per_trial: int, gpu_per_trial: float, tasks: int,
              batch_sizes: tuple[int, ...] = BATCH_SIZES) -> Throughput:
    """Run `tasks` calibration tasks at once, each with one trial's resources; their mean speed (at `batch_sizes`:
    the search needs the space's, a confirm run its configs')."""
    found = calibration_runs(data_dir, base, cpu_per_trial, gpu_per_trial, tasks, batch_sizes)
    nodes = sorted({r["node"] for r in found})
    if len(nodes) > 1:  # trials are ranked alike on every node; the plan says how fast each is
        say("calibrated per node, training images/s per trial (mean over batch sizes): " + ", ".join(
            f"{n} {statistics.fmean(v for r in found if r['node'] == n for v in r['train'].values()):.0f}"
            for n in nodes))
    return Throughput(train={b: statistics.fmean(r["train"][b] for r in found) for b in batch_sizes},
                      eval=statistics.fmean(r["eval"] for r in found), load_s=max(r["load_s"] for r in found))


def _head(split, n: int):
    from mnist_net.data import Split

    return Split(split.images[:n], split.labels[:n])

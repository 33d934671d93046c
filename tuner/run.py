"""Stage 3 of a search: the trials, with Ray Tune. Optuna's TPE proposes configs, ASHA stops the weak
ones at its rungs, and each trial trains on the resources the plan gave it (tuner.trainable)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

from mnist_net.cli import say
from tuner import cluster, watch
from tuner.planning import SearchPlan
from tuner.settings import SMOKE_POINTS, SearchSettings
from tuner.space import METRIC, MODE, RUNG_METRIC, SEED_CONFIG, TIME_ATTR, param_space


@dataclass(frozen=True)
class SearchRun:
    """What stage 4 (publish) takes: Ray's results, and how the search ended."""

    grid: object  # ray.tune.ResultGrid
    seconds: float
    stopped_by_budget: bool  # Ray's time_budget_s stopped trials still running
    watching: watch.Watch  # the progress line and MLflow runs, ended after publishing


def run_trials(exp, plan: SearchPlan) -> SearchRun | None:
    """Run (or resume) the experiment `exp` (a tuner.search.Experiment) to its end; None when it was
    interrupted: its state is saved, the line saying how to resume printed, and Ray disconnected."""
    from ray import tune

    from tuner.trainable import train_s5

    settings = plan.settings
    watching = watch.start(exp, settings, plan.placement)
    trainable = tune.with_resources(
        tune.with_parameters(train_s5, base=settings.trial_config(), data_dir=exp.data_dir,
                             checkpoint_every=settings.checkpoint_every),
        plan.placement.resources)
    start = time.time()
    try:
        if exp.resumed:
            say(f"resuming {exp.name}: finished trials are kept, the rest continue from their checkpoints")
            tuner = tune.Tuner.restore(f"{exp.storage}/{exp.name}", trainable, resume_unfinished=True,
                                       resume_errored=True, param_space=param_space())
        else:
            tuner = build_tuner(trainable, settings, plan.placement, exp.storage, exp.name,
                                exp.extension.warm_start() if exp.extension else None, exp.summary_dir,
                                watching.callbacks, exp.verbose)
        grid = tuner.fit()
    except KeyboardInterrupt:
        grid = None
    unfinished = grid is not None and cluster.unfinished(grid, settings.num_samples)
    # Ray's time_budget_s stops the trials as Ctrl-C does; only the time taken tells them apart.
    hard_stop = settings.search_time_budget_s
    by_budget = unfinished and hard_stop is not None and time.time() - start >= hard_stop
    if grid is None or (unfinished and not by_budget):
        with sigint_ignored():  # one more Ctrl-C must not cut ray.shutdown() and leave Ray running
            watching.end(None, interrupted=True)  # first: it ends the progress line
            say(f"search interrupted; its state is saved. Resume with: {exp.resume_command}")
            cluster.disconnect()
        return None
    return SearchRun(grid, time.time() - start, by_budget, watching)


@contextlib.contextmanager
def sigint_ignored():
    """Ctrl-C ignored inside (the main thread only: elsewhere Python refuses to set handlers)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def build_tuner(trainable, settings: SearchSettings, placement, storage: str, name: str,
                warm: tuple[list[dict], list[float]] | None = None, summary_dir=None,
                callbacks: list | None = None, verbose: bool = False):
    """summary_dir: the Optuna study lives in <summary_dir>/study.db from the first trial (None: in
    memory). callbacks: the progress line, MLflow (tuner.watch); verbose: Ray's tables instead."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if not verbose:  # Optuna logs a line per trial; Ray's new output prints a box and a TensorBoard
        # hint to its session folder even at verbose=0: its legacy reporter prints nothing there
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    scheduler = ASHAScheduler(time_attr=TIME_ATTR, metric=RUNG_METRIC, mode=MODE, max_t=settings.max_epochs,
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(),
        tune_config=tune.TuneConfig(search_alg=searcher(settings, name, warm, summary_dir), scheduler=scheduler,
                                    num_samples=settings.num_samples, max_concurrent_trials=placement.concurrent,
                                    # the hard stop of a --time-budget: the confirm stage gets the rest
                                    time_budget_s=settings.search_time_budget_s,
                                    # a new process per trial costs seconds of imports and data loading
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1 if verbose else 0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def searcher(settings: SearchSettings, name: str, warm, summary_dir):
    """Optuna's TPE, seeded. A new search runs the seed's config first (the smoke preset adds a sure
    learner and a sure non-learner, so ASHA has a trial to stop on any CPU); an extension tells TPE
    its parent's trials instead."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tuner.searcher import live_searcher
    from tuner.study import FILE

    points, rewards = warm or ([dict(SEED_CONFIG)] + (SMOKE_POINTS if settings.fidelity_mode == "smoke" else []), None)
    kw = dict(points_to_evaluate=points, evaluated_rewards=rewards,
              sampler=optuna.samplers.TPESampler(seed=settings.seed))
    if summary_dir is None:
        return OptunaSearch(metric=METRIC, mode=MODE, **kw)
    return live_searcher(summary_dir / FILE, name, settings.max_epochs, **kw)

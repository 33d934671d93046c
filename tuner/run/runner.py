"""Stage 3 of a search: the trials, with Ray Tune. Optuna's TPE proposes configs, ASHA stops the weak
ones at its rungs, and each trial trains on the resources the plan gave it (tuner.trainable)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from mnist_net.cli import say
from tuner.plan.search_plan import SearchPlan
from tuner.run import cluster, study, tracking
from tuner.settings import SMOKE_POINTS, SearchSettings
from tuner.space import METRIC, MODE, RUNG_METRIC, SEED_CONFIG, TIME_ATTR, cut_short, param_space


@dataclass
class Watch:
    summary_dir: Path
    mlflow_uri: str | None = None
    parent_run_id: str | None = None
    callbacks: list = field(default_factory=list)

    def end(self, best: dict | None, interrupted: bool = False) -> None:
        """End the progress line; close the MLflow parent run: FINISHED with the search's best, or KILLED."""
        for callback in self.callbacks:
            getattr(callback, "close", lambda: None)()
        if self.mlflow_uri and self.parent_run_id:
            tracking.end_search(self.mlflow_uri, self.parent_run_id, best, "KILLED" if interrupted else "FINISHED")


def start_watching(exp, settings, placement) -> Watch:
    """The callbacks of the experiment `exp` (a tuner.search.Experiment): the progress line unless
    exp.verbose (Ray's tables then), and Ray's MLflow logger under a parent run with exp.mlflow."""
    import optuna

    from tuner.run import progress

    w = Watch(exp.summary_dir, exp.mlflow)
    if not exp.verbose:  # Optuna logs a line per trial (and "Using an existing study" on a resume); Ray's
        # new output prints a box and a TensorBoard hint even at verbose=0: its legacy reporter prints nothing
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        w.callbacks.append(progress.for_search(settings, resumed=exp.resumed))
    if w.mlflow_uri:
        w.parent_run_id = tracking.start_search(w.mlflow_uri, exp.name, settings, placement, exp.summary_dir)
        w.callbacks.append(tracking.trial_callback(w.mlflow_uri, w.parent_run_id, settings.max_epochs))
        say(f"MLflow: {w.mlflow_uri}, experiment {tracking.EXPERIMENT}, parent run {w.parent_run_id}")
    say(f"live Optuna study: optuna-dashboard {study.storage_url(exp.summary_dir / study.FILE)}")
    return w


@dataclass(frozen=True)
class SearchRun:
    """What stage 4 (publish) takes: Ray's results, and how the search ended."""

    grid: object  # ray.tune.ResultGrid
    seconds: float
    stopped_by_budget: bool  # Ray's time_budget_s stopped trials still running
    watching: Watch  # the progress line and MLflow runs, ended after publishing


def run_trials(exp, plan: SearchPlan) -> SearchRun | None:
    """Run (or resume) the experiment `exp` (a tuner.search.Experiment) to its end; None when it was
    interrupted: its state is saved, the line saying how to resume printed, and Ray disconnected."""
    from ray import tune

    from tuner.run import deadline
    from tuner.run.trainable import train_s5

    settings = plan.settings
    watching = start_watching(exp, settings, plan.placement)
    trainable = tune.with_resources(
        tune.with_parameters(train_s5, base=settings.trial_config(), data_dir=exp.data_dir,
                             checkpoint_every=settings.checkpoint_every),
        plan.placement.resources)
    start = time.time()
    deadline.clear()
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
    ended_early = grid is not None and unfinished(grid, settings.num_samples)
    # The hard stop ends the trials as Ctrl-C does: the stopper says it fired (an experiment saved before it
    # existed used Ray's time_budget_s: the time taken tells them apart)
    hard_stop = settings.search_time_budget_s
    by_budget = ended_early and (deadline.fired() or hard_stop is not None and time.time() - start >= hard_stop)
    if grid is None or (ended_early and not by_budget):
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
    memory). callbacks: the progress line, MLflow (start_watching); verbose: Ray's tables instead."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tuner.run.deadline import LearningStop

    scheduler = ASHAScheduler(time_attr=TIME_ATTR, metric=RUNG_METRIC, mode=MODE, max_t=settings.max_epochs,
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(),
        tune_config=tune.TuneConfig(search_alg=searcher(settings, name, warm, summary_dir), scheduler=scheduler,
                                    num_samples=settings.num_samples, max_concurrent_trials=placement.concurrent,
                                    # a new process per trial costs seconds of imports and data loading
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1 if verbose else 0, callbacks=callbacks,
            # the hard stop of a --time-budget, re-planned as trials report: the confirm stage gets the rest
            stop=LearningStop(settings) if settings.search_time_budget_s else None,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def asha_line(settings: SearchSettings) -> str:
    """The scheduler build_tuner sets up, in one line."""
    return (f"ASHA on {METRIC} ({MODE}; ties broken by val_loss) over epochs: max_t {settings.max_epochs}, "
            f"grace period {settings.grace_period}, reduction factor {settings.reduction_factor}")


def searcher(settings: SearchSettings, name: str, warm, summary_dir):
    """Optuna's TPE, seeded. A new search runs the seed's config first (the smoke preset adds a sure
    learner and a sure non-learner, so ASHA has a trial to stop on any CPU); an extension tells TPE
    its parent's trials instead."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    points, rewards = warm or ([dict(SEED_CONFIG)] + (SMOKE_POINTS if settings.fidelity_mode == "smoke" else []), None)
    kw = dict(points_to_evaluate=points, evaluated_rewards=rewards,
              sampler=optuna.samplers.TPESampler(seed=settings.seed))
    if summary_dir is None:
        return OptunaSearch(metric=METRIC, mode=MODE, **kw)
    return study.live_searcher(summary_dir / study.FILE, name, settings.max_epochs, **kw)


def unfinished(grid, num_samples: int) -> bool:
    """True when the run was interrupted: fewer trials than asked for, or one not yet ended (Ray
    marks a trial stopped by Ctrl-C TERMINATED like a finished one: results.cut_short tells them apart)."""
    return (len(grid) < num_samples or grid.num_terminated + grid.num_errors < len(grid)
            or any(cut_short(r) for r in grid))

"""Search lr, momentum and batch size for the S5 network with Ray Tune + Optuna + ASHA.

`python -m tuner.search --num-samples 32` runs the search, writes its results under
--out (default results/), then confirms its top configs against the seed's (tuner.retrain).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

from mnist_net.cli import Parser, add_compile_mode, non_negative_float, non_negative_int, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR
from mnist_net.download import DataUnavailable, ensure_mnist
from mnist_net.files import prepare_out_dir
from tuner import budget, cluster, confirm, extend, gpu_estimate, planning, publish, resources, retrain, tracking, watch
from tuner.results import NoFinishedTrial
from tuner.settings import BUDGET_FLAGS, DEFAULT_CONFIRM_TOP, DEFAULT_TIME_BUDGET_S, SMOKE, SMOKE_POINTS, SearchSettings
from tuner.space import METRIC, MODE, SEED_CONFIG, TIME_ATTR, param_space

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def build_parser() -> Parser:
    d = SearchSettings()
    p = Parser(prog="python -m tuner.search", description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=positive_int,
                   help=f"trials, the seed's config first (default {d.num_samples})")
    p.add_argument("--time-budget", type=budget.parse_duration, metavar="DURATION",
                   help="wall-clock budget for the whole command, search and confirm stage: 90s, 20m, 1.5h or "
                   "seconds. The fidelity flags below that are not given are planned to fit it after a "
                   f"few seconds of calibration (default {DEFAULT_TIME_BUDGET_S // 60}m on a machine "
                   "with no GPU and none of the fidelity flags; with GPUs: none, full fidelity)")
    p.add_argument("--max-epochs", type=positive_int,
                   help=f"epochs per trial (default {d.max_epochs}, or planned to --time-budget)")
    p.add_argument("--train-size", type=positive_int, help="training subset per trial (default all 50,000, "
                   "or planned to --time-budget)")
    p.add_argument("--eval-size", type=positive_int, help="val subset scored each epoch (default all 10,000, "
                   "or planned to --time-budget)")
    p.add_argument("--seed", type=non_negative_int, help=f"seeds the sampler and every trial (default {d.seed})")
    p.add_argument("--max-concurrent", type=positive_int, help="cap on trials at once (default: what fits)")
    p.add_argument("--gpus-per-trial", type=non_negative_float, help="GPU share per trial, at most 1 (a trial "
                   f"trains on one GPU); 0 forces CPU (default {resources.DEFAULT_GPU_SHARE} when GPUs exist)")
    p.add_argument("--cpus-per-trial", type=positive_int, help="CPUs per trial (default: planned)")
    p.add_argument("--confirm-top", type=positive_int, metavar="K", help="the search's K best distinct "
                   f"configs are confirmed against the seed's (default {DEFAULT_CONFIRM_TOP}, at most --num-samples)")
    p.add_argument("--confirm-seeds", "--retrain-seeds", type=positive_int, dest="confirm_seeds",
                   help=f"seeds per confirmed config (default {d.confirm_seeds}, kept to the last by --time-budget)")
    p.add_argument("--confirm-epochs", "--retrain-epochs", type=positive_int, dest="confirm_epochs",
                   help="epochs per confirm run (default = --max-epochs, or planned to --time-budget)")
    p.add_argument("--confirm-train-size", type=positive_int, help="images of the 50k train split per "
                   "confirm run (default all, or planned to --time-budget)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="checkpoint each trial every N epochs (default auto: after the first epoch, then "
                   "whenever the epochs since the last save took about 20x the save's cost). A resumed or "
                   "retried trial loses the epochs since its last checkpoint")
    p.add_argument("--no-confirm", "--no-retrain", action="store_true", dest="no_confirm",
                   help="stop after the search (confirm later with python -m tuner.retrain --search NAME)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for the search's summary files")
    p.add_argument("--storage", help="Ray's experiment storage: a path or URI all nodes share (default <out>/ray)")
    p.add_argument("--name", help="experiment name (default s5-<UTC time>)")
    p.add_argument("--extend", metavar="NAME", help="run --num-samples more trials (default: as many as NAME "
                   "ran) in a new experiment, TPE warm-started from the finished search NAME in --out")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name "
                   "(default: the newest one in --storage)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="existing Ray cluster host:port (default $RAY_ADDRESS; none = start a local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only)")
    p.add_argument("--verbose", action="store_true", help="Ray's trial tables and Optuna's log instead of "
                   "the one progress line")
    p.add_argument("--mlflow", metavar="URI", type=tracking.uri_arg, help="also log to MLflow (extra [mlflow]): "
                   "a parent run for the search, one nested run per trial; e.g. file:///tmp/mlruns or http://host:5000")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every trial checkpoint (default: "
                   "a finished search keeps only the best trial's last and those a --resume would load)")
    add_compile_mode(p)
    p.add_argument("--smoke-test", action="store_true", help=f"tiny preset for tests: {SMOKE}, never "
                   "calibrated (with --time-budget, the budget is only the search's hard stop)")
    return p


def settings_from_args(args: argparse.Namespace, has_gpu: bool) -> SearchSettings:
    """Defaults < smoke preset < explicit flags. A time budget (--time-budget, or the default one
    on a machine with no GPU and no fidelity flag) makes it budget "time": plan_budget fills in
    the fidelity flags not given (planning.plan_settings)."""
    explicit = {k: getattr(args, k) for k in
                ("num_samples", "max_epochs", "train_size", "eval_size", "seed", "max_concurrent",
                 "gpus_per_trial", "cpus_per_trial", "confirm_top", "confirm_seeds", "confirm_epochs",
                 "confirm_train_size", "checkpoint_every", "compile_mode")
                if getattr(args, k) is not None}
    preset, kind, time_budget = {}, "full", args.time_budget
    if args.smoke_test:
        preset, kind = SMOKE, "smoke"
    elif time_budget is None and not has_gpu and not any(k in explicit for k in BUDGET_FLAGS):
        time_budget = float(DEFAULT_TIME_BUDGET_S)
    if time_budget is not None and kind == "full":
        kind = "time"
    return SearchSettings(**{**preset, **explicit, "budget": kind, "time_budget_s": time_budget})


def trial_base(settings: SearchSettings) -> TrainConfig:
    """The TrainConfig every trial starts from (Tune's sampled params replace lr, momentum, batch)."""
    return TrainConfig(epochs=settings.max_epochs, train_split="train", train_size=settings.train_size,
                       eval_size=settings.eval_size, seed=settings.seed, **settings.compile_changes())


def data_dir(args) -> str:
    return str(Path(args.data_dir).expanduser().resolve())  # absolute: Ray runs tasks in other folders


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # a --time-budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is not None and not NAME_RE.match(args.name):
        parser.fail(f"--name {args.name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
    try:
        settings_from_args(args, has_gpu=True)  # reject bad values before Ray starts
        ext = extend.check(args, *planned_paths(args)) if args.extend else None  # before any folder exists
        out = prepare_out_dir(args.out)
        storage = cluster.resolve_storage(args.storage, out)
        name, saved = resolve_experiment(args, storage, out)  # a clash or nothing to resume: before Ray too
        ext = extend.saved(out, name, saved) if saved else ext
        ensure_mnist(args.data_dir)  # once, in the driver, before any trial starts
        cluster.connect(args.address, args.dashboard)
    except (ValueError, DataUnavailable, ConnectionError) as err:
        parser.fail(str(err))
    try:
        nodes = resources.alive_nodes()
        has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
        settings = saved or (ext.settings if ext else settings_from_args(args, has_gpu))
        plan = resources.plan(nodes, settings.gpus_per_trial, settings.cpus_per_trial,
                              settings.max_concurrent)
        if settings.time_budget_s is not None and settings.budget_plan is None:  # never on --resume
            fixed = {k: getattr(args, k) for k in budget.FIDELITY_FIELDS if getattr(args, k) is not None}
            settings = planning.plan_settings(settings, plan, data_dir(args), trial_base(settings), fixed, started)
        elif not args.resume and (line := gpu_estimate.predict_wall_time(
                settings, plan, data_dir(args), trial_base(settings), started)) is not None:
            say(line)  # no budget (GPUs, or fidelity flags): say how long the full recipe will take
    except ValueError as err:  # includes budget.BudgetTooSmall, after calibration
        cluster.disconnect()
        parser.fail(str(err))
    except KeyboardInterrupt:  # during the calibration: nothing written yet
        cluster.disconnect()
        say("interrupted before the search started; nothing was written")
        return 130
    return run(args, settings, plan, storage, out, name, ext, started)


def planned_paths(args) -> tuple[Path, str]:
    """--out and the Ray storage as they will be, without creating either."""
    out = Path(args.out).expanduser().resolve()
    return out, (args.storage.rstrip("/") if args.storage and "://" in args.storage
                 else str(Path(args.storage or out / "ray").expanduser().resolve()))


def resolve_experiment(args, storage: str, out: Path) -> tuple[str, SearchSettings | None]:
    """A new experiment's name (refusing to overwrite one), or the name and saved settings of the
    one to resume. Needs no Ray: a wrong --name fails in a second, not after Ray has started."""
    if args.resume:
        name = args.name or cluster.newest_experiment(storage)
        if not cluster.can_restore(storage, name):
            what = f"experiment {name!r}" if name else "experiment"
            raise ValueError(f"nothing to resume: no restorable {what} in {storage}; "
                             "start a new search without --resume")
        return name, SearchSettings.load(out / name / "search_settings.json")
    name = args.name or time.strftime("s5-%Y%m%d-%H%M%S", time.gmtime())
    if cluster.can_restore(storage, name) or (out / name).exists():
        raise ValueError(f"experiment {name!r} already exists in {storage}; pass --resume to "
                         "continue it, or a new --name")
    return name, None


def run(args, settings: SearchSettings, plan: resources.Plan, storage: str, out: Path, name: str,
        ext: extend.Extension | None = None, started: float | None = None) -> int:
    from ray import tune

    from tuner.trainable import train_s5

    summary_dir = out / name
    summary_dir.mkdir(parents=True, exist_ok=True)
    settings.save(summary_dir / "search_settings.json")
    if ext is not None:
        ext.save(summary_dir)  # the link to the parent, for the results and a --resume
        say(f"extending {ext.parent}: TPE warm-started with {len(ext.warm_start()[0])} of its trials")
    if (line := planning.describe(settings)) is not None:
        say(line)
    say(plan.describe())
    say(f"ASHA on {METRIC} ({MODE}) over epochs: max_t {settings.max_epochs}, grace period "
        f"{settings.grace_period}, reduction factor {settings.reduction_factor}")
    say(f"experiment {name}: Ray storage {storage}, summary {summary_dir}")
    if args.resume:
        try:
            watch.check_resume(summary_dir, f"{storage}/{name}", name)
        except ValueError as err:
            cluster.disconnect()
            say(f"error: {err}")
            return 2
    watching = watch.start(args, settings, plan, summary_dir, name)
    trainable = tune.with_resources(
        tune.with_parameters(train_s5, base=trial_base(settings), data_dir=data_dir(args),
                             checkpoint_every=settings.checkpoint_every),
        plan.resources)
    resume = f"python -m tuner.search --resume --name {name} --out {out}" + (
        f" --storage {args.storage}" if args.storage else "")
    start = time.time()
    try:
        if args.resume:
            say(f"resuming {name}: finished trials are kept, the rest continue from their checkpoints")
            tuner = tune.Tuner.restore(f"{storage}/{name}", trainable, resume_unfinished=True,
                                       resume_errored=True, param_space=param_space())
        else:
            tuner = build_tuner(trainable, settings, plan, storage, name, ext.warm_start() if ext else None,
                                summary_dir, watching.callbacks, args.verbose)
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
            say(f"search interrupted; its state is saved. Resume with: {resume}")
            cluster.disconnect()
        return 130
    if by_budget:
        say(f"search stopped by its time budget ({budget.format_duration(hard_stop)}): publishing the trials "
            "that finished; those still running are marked budget_stopped in trials.csv")
    try:
        best = publish.write_search_results(grid, settings, plan, storage, summary_dir, out, name,
                                            time.time() - start, ext, stopped_by_budget=by_budget)
    except OSError as err:  # disk full, folder gone read-only: earlier files stay as they were
        say(f"error: cannot write the search's results to {summary_dir}: {err.strerror or err}. "
            f"Ray's experiment in {storage}/{name} is complete; free space and rerun: {resume}")
        cluster.disconnect()
        return 1
    except NoFinishedTrial as err:  # every trial errored or diverged: nothing to choose
        say(f"error: {err}")
        cluster.disconnect()
        return 1
    watching.end(best)
    watch.tidy(grid, f"{storage}/{name}", best, args.keep_checkpoints)
    say(f"best: lr {best['config']['lr']:.4g}, momentum {best['config']['momentum']:.3f}, "
        f"batch {best['config']['batch_size']} -> {METRIC} {best[METRIC]:.2f}% "
        f"(epoch {best['epoch']}); seed config: {best['seed_config_val_acc']:.2f}%")
    try:  # on the search's Ray, so a cluster's nodes run the confirm runs: disconnect after
        if not args.no_confirm:
            confirm_stage(args, settings, summary_dir, out, started)
        return 0
    except ValueError as err:  # e.g. a GPU share on a torch without CUDA, in a confirm run
        say(f"error: the confirm stage failed: {err}")
        return 1
    finally:
        cluster.disconnect()


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


def confirm_stage(args, settings: SearchSettings, summary_dir: Path, out: Path, started: float | None) -> dict:
    """The search's top configs and the seed's, on the search's Ray; best_config.json then names the
    confirmed winner, with the search's own pick beside it."""
    import pandas as pd
    import ray

    trials = retrain.read_trials(summary_dir)
    cands = tuple(confirm.candidates(trials, settings.top))
    runs = len(cands) * settings.confirm_seeds
    plan = resources.plan(resources.alive_nodes(), settings.gpus_per_trial, settings.cpus_per_trial, runs)
    left = None if settings.time_budget_s is None or started is None else \
        settings.time_budget_s - (time.monotonic() - started)
    epochs = pd.read_csv(summary_dir / "trial_epochs.csv").merge(trials[["trial_id", "batch_size"]], on="trial_id")
    recipe, predicted_s = planning.confirm_recipe(settings, left, [c.config["batch_size"] for c in cands[:-1]],
                                                  epochs, plan.concurrent)
    job = retrain.Job(cands, recipe, data_dir(args), summary_dir, str(summary_dir / "trials.csv"),
                      settings.compile_changes())
    try:
        rep = retrain.execute(job, plan, predicted_s)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, ValueError):
            raise ValueError(str(err.cause)) from None
        raise
    publish.record_confirmation(out, summary_dir, rep)
    if (mlflow := tracking.parent_of(summary_dir)) is not None:
        tracking.log_final(*mlflow, rep, name="confirm")
    return rep


def build_tuner(trainable, settings: SearchSettings, plan: resources.Plan, storage: str, name: str,
                warm: tuple[list[dict], list[float]] | None = None, summary_dir: Path | None = None,
                callbacks: list | None = None, verbose: bool = False):
    """summary_dir: the Optuna study lives in <summary_dir>/study.db from the first trial (None: in
    memory). callbacks: the progress line, MLflow (tuner.watch); verbose: Ray's tables instead."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tuner.searcher import live_searcher
    from tuner.study import FILE

    # A new search runs the seed's config first (the smoke preset adds a sure learner and a sure
    # non-learner, so ASHA has a trial to stop on any CPU); an extension tells TPE its parent's
    # trials instead.
    points, rewards = warm or ([dict(SEED_CONFIG)] + (SMOKE_POINTS if settings.budget == "smoke" else []), None)
    kw = dict(points_to_evaluate=points, evaluated_rewards=rewards,
              sampler=optuna.samplers.TPESampler(seed=settings.seed))
    searcher = (live_searcher(summary_dir / FILE, name, settings.max_epochs, **kw) if summary_dir is not None
                else OptunaSearch(metric=METRIC, mode=MODE, **kw))
    if not verbose:  # Optuna logs a line per trial; Ray's new output prints a box and a TensorBoard
        # hint to its session folder even at verbose=0: its legacy reporter prints nothing there
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    scheduler = ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=settings.max_epochs,
                              grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    max_concurrent_trials=plan.concurrent,
                                    # the hard stop of a --time-budget: the retrain gets the rest
                                    time_budget_s=settings.search_time_budget_s,
                                    # a new process per trial costs seconds of imports and data loading
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1 if verbose else 0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


if __name__ == "__main__":
    sys.exit(main())

"""Search lr, momentum and batch size for the S5 network with Ray Tune + Optuna + ASHA.

`python -m tuner.search --num-samples 32` runs the search, writes its results under
--out (default results/), then retrains the best config against the seed's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from mnist_net.cli import Parser, non_negative_float, non_negative_int, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR
from mnist_net.download import DataUnavailable, ensure_mnist
from mnist_net.files import prepare_out_dir
from tuner import cluster, publish, resources
from tuner.results import NoFinishedTrial
from tuner.settings import BUDGET_FLAGS, CPU_BUDGET, SMOKE, SearchSettings
from tuner.space import METRIC, MODE, SEED_CONFIG, TIME_ATTR, param_space

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def build_parser() -> Parser:
    d = SearchSettings()
    p = Parser(prog="python -m tuner.search", description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=positive_int,
                   help=f"trials, the seed's config first (default {d.num_samples})")
    p.add_argument("--max-epochs", type=positive_int,
                   help=f"epochs per trial (default {d.max_epochs}; CPU budget {CPU_BUDGET['max_epochs']})")
    p.add_argument("--train-size", type=positive_int, help="training subset per trial (default all 50,000; "
                   f"CPU budget {CPU_BUDGET['train_size']})")
    p.add_argument("--eval-size", type=positive_int, help="val subset scored each epoch (default all 10,000; "
                   f"CPU budget {CPU_BUDGET['eval_size']})")
    p.add_argument("--seed", type=non_negative_int, help=f"seeds the sampler and every trial (default {d.seed})")
    p.add_argument("--max-concurrent", type=positive_int, help="cap on trials at once (default: what fits)")
    p.add_argument("--gpus-per-trial", type=non_negative_float, help="GPU share per trial; 0 forces CPU "
                   f"(default {resources.DEFAULT_GPU_SHARE} when GPUs exist)")
    p.add_argument("--cpus-per-trial", type=positive_int, help="CPUs per trial (default: planned)")
    p.add_argument("--retrain-seeds", type=positive_int, help="seeds for the final retrain "
                   f"(default {d.retrain_seeds}; CPU budget {CPU_BUDGET['retrain_seeds']})")
    p.add_argument("--retrain-epochs", type=positive_int, help="epochs for the retrain (default = --max-epochs; "
                   f"CPU budget {CPU_BUDGET['retrain_epochs']})")
    p.add_argument("--no-retrain", action="store_true", help="stop after the search")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for the search's summary files")
    p.add_argument("--storage", help="Ray's experiment storage: a path or URI all nodes share (default <out>/ray)")
    p.add_argument("--name", help="experiment name (default s5-<UTC time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name "
                   "(default: the newest one in --storage)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="existing Ray cluster host:port (default $RAY_ADDRESS; none = start a local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only)")
    p.add_argument("--smoke-test", action="store_true", help=f"tiny preset for tests: {SMOKE}")
    return p


def settings_from_args(args: argparse.Namespace, has_gpu: bool) -> SearchSettings:
    """Defaults < CPU budget (no GPU, no budget flag given) or smoke preset < explicit flags."""
    explicit = {k: getattr(args, k) for k in
                ("num_samples", "max_epochs", "train_size", "eval_size", "seed", "max_concurrent",
                 "gpus_per_trial", "cpus_per_trial", "retrain_seeds", "retrain_epochs")
                if getattr(args, k) is not None}
    preset, budget = {}, "full"
    if args.smoke_test:
        preset, budget = SMOKE, "smoke"
    elif not has_gpu and not any(k in explicit for k in BUDGET_FLAGS):
        preset, budget = CPU_BUDGET, "cpu"
    return SearchSettings(**{**preset, **explicit, "budget": budget})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is not None and not NAME_RE.match(args.name):
        parser.fail(f"--name {args.name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
    try:
        settings_from_args(args, has_gpu=True)  # reject bad values before Ray starts
        out = prepare_out_dir(args.out)
        storage = cluster.resolve_storage(args.storage, out)
        name, saved = resolve_experiment(args, storage, out)  # a clash or nothing to resume: before Ray too
        ensure_mnist(args.data_dir)  # once, in the driver, before any trial starts
        cluster.connect(args.address, args.dashboard)
    except (ValueError, DataUnavailable, ConnectionError) as err:
        parser.fail(str(err))
    try:
        nodes = resources.alive_nodes()
        has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
        settings = saved or settings_from_args(args, has_gpu)
        plan = resources.plan(nodes, settings.gpus_per_trial, settings.cpus_per_trial,
                              settings.max_concurrent)
    except ValueError as err:
        cluster.disconnect()
        parser.fail(str(err))
    return run(args, settings, plan, storage, out, name)


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


def run(args, settings: SearchSettings, plan: resources.Plan, storage: str, out: Path, name: str) -> int:
    from ray import tune

    from tuner.trainable import train_s5

    summary_dir = out / name
    summary_dir.mkdir(parents=True, exist_ok=True)
    settings.save(summary_dir / "search_settings.json")
    if settings.budget == "cpu":
        say(f"no GPU and no budget flags: using the CPU budget {CPU_BUDGET} (about 20 min on 2 cores)")
    say(plan.describe())
    say(f"ASHA on {METRIC} ({MODE}) over epochs: max_t {settings.max_epochs}, grace period "
        f"{settings.grace_period}, reduction factor {settings.reduction_factor}")
    say(f"experiment {name}: Ray storage {storage}, summary {summary_dir}")
    base = TrainConfig(epochs=settings.max_epochs, train_split="train", train_size=settings.train_size,
                       eval_size=settings.eval_size, seed=settings.seed)
    trainable = tune.with_resources(
        tune.with_parameters(train_s5, base=base, data_dir=str(Path(args.data_dir).expanduser().resolve())),
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
            tuner = build_tuner(trainable, settings, plan, storage, name)
        grid = tuner.fit()
    except KeyboardInterrupt:
        grid = None
    if grid is None or cluster.unfinished(grid, settings.num_samples):
        say(f"search interrupted; its state is saved. Resume with: {resume}")
        cluster.disconnect()
        return 130
    try:
        best = publish.write_search_results(grid, settings, plan, storage, summary_dir, out, name,
                                            time.time() - start)
    except OSError as err:  # disk full, folder gone read-only: earlier files stay as they were
        say(f"error: cannot write the search's results to {summary_dir}: {err.strerror or err}. "
            f"Ray's experiment in {storage}/{name} is complete; free space and rerun: {resume}")
        cluster.disconnect()
        return 1
    except NoFinishedTrial as err:  # every trial errored or diverged: nothing to choose
        say(f"error: {err}")
        cluster.disconnect()
        return 1
    cluster.disconnect()
    say(f"best: lr {best['config']['lr']:.4g}, momentum {best['config']['momentum']:.3f}, "
        f"batch {best['config']['batch_size']} -> {METRIC} {best[METRIC]:.2f}% "
        f"(epoch {best['epoch']}); seed config: {best['seed_config_val_acc']:.2f}%")
    if args.no_retrain:
        return 0
    from tuner import retrain

    return retrain.main([
        "--config", str(out / "best_config.json"), "--seeds", str(settings.retrain_seeds),
        "--epochs", str(settings.retrain_epochs or settings.max_epochs),
        "--data-dir", str(args.data_dir), "--out", str(summary_dir)]
        + (["--train-size", str(settings.retrain_train_size)] if settings.retrain_train_size else []))


def build_tuner(trainable, settings: SearchSettings, plan: resources.Plan, storage: str, name: str):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=METRIC, mode=MODE, points_to_evaluate=[dict(SEED_CONFIG)],
                            sampler=optuna.samplers.TPESampler(seed=settings.seed))
    scheduler = ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=settings.max_epochs,
                              grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    max_concurrent_trials=plan.concurrent,
                                    # a new process per trial costs seconds of imports and data loading
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


if __name__ == "__main__":
    sys.exit(main())

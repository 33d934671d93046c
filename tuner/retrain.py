"""Confirm a search's leaders against the seed's config: same seeds, one recipe, a paired verdict.

`python -m tuner.retrain --search NAME` confirms the top K configs of a finished search (winner
chosen on val, verdict on test); `--config best_config.json` compares that one config with the
seed's; `--full-recipe` does so at the seed's own recipe (20 epochs on train+val, 4 seeds), with
--search's confirmed best, and predicts its time first. The search runs this stage itself at its
end (tuner.search). Every run is a Ray task.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mnist_net import files
from mnist_net.cli import (
    Parser,
    add_compile_mode,
    compile_changes,
    non_negative_float,
    parse_duration,
    positive_int,
    say,
)
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, load_splits
from mnist_net.download import DataUnavailable
from tuner.confirm.recipe import FULL_RECIPE, Recipe
from tuner.confirm.stage import (
    Job,
    config_candidates,
    confirmed_candidates,
    execute,
    fit_to_budget,
    place_runs,
    search_candidates,
)
from tuner.run import cluster
from tuner.settings import DEFAULT_CONFIRM_TOP, SearchSettings

SMOKE = {"seeds": 1, "epochs": 1, "train_size": 1024}
FULL = {"seeds": FULL_RECIPE.seeds, "epochs": FULL_RECIPE.epochs, "train_split": FULL_RECIPE.train_split}
# The search's own confirm defaults, and the seed's epochs (TrainConfig's defaults are the seed's recipe).
DEFAULTS = {"seeds": SearchSettings.confirm_seeds, "epochs": TrainConfig.epochs, "train_size": None,
            "train_split": "train"}


def build_parser() -> Parser:
    p = Parser(prog="python -m tuner.retrain", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--search", metavar="NAME", help="confirm the top --top configs of the finished search "
                      "NAME in --results (its trials.csv)")
    what.add_argument("--config", type=Path, help="a best_config.json: its one config against the seed's "
                      "(default results/best_config.json when --search is not given)")
    p.add_argument("--top", type=positive_int, default=DEFAULT_CONFIRM_TOP, help="configs of the search to confirm")
    p.add_argument("--results", type=Path, default=Path("results"), help="the searches' summary folders")
    p.add_argument("--seeds", type=positive_int, help=f"train seeds 1..N for each config (default {DEFAULTS['seeds']})")
    p.add_argument("--epochs", type=positive_int, help=f"epochs per run (default the seed's {DEFAULTS['epochs']})")
    p.add_argument("--train-size", type=positive_int, help="images per run (default: the whole split)")
    p.add_argument("--train-split", choices=("train", "train+val"),
                   help="train (default): 50k, winner chosen on val; train+val: the seed's 60k recipe, --config only")
    p.add_argument("--full-recipe", action="store_true",
                   help=f"the seed's recipe: train+val, {FULL_RECIPE.epochs} epochs, {FULL_RECIPE.seeds} seeds unless "
                   "given; --search NAME takes its confirmed best (retrain.json) and writes to NAME/full-recipe; "
                   "prints its predicted time here before it starts")
    p.add_argument("--time-budget", dest="time_budget_s", type=parse_duration, metavar="DURATION",
                   help="end within it (20m, 4h): fewer seeds when the predicted runs do not fit, and the last "
                   "seeds dropped if the runs turn out slower (default: no limit)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder (on every node)")
    p.add_argument("--out", type=Path, help="output folder (default: the search's summary folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a retrain.json already in the output folder (default: refuse); runs "
                   "already saved there for the same config, seed and recipe are reused")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="existing Ray cluster host:port (default $RAY_ADDRESS; none = start a local Ray)")
    p.add_argument("--gpus-per-run", type=non_negative_float,
                   help="GPU share per run, as the search's --gpus-per-trial (default: planned)")
    p.add_argument("--cpus-per-run", type=positive_int, help="CPUs per run (default: planned)")
    add_compile_mode(p)
    p.add_argument("--smoke-test", action="store_true", help=f"tiny preset for tests: {SMOKE} unless given")
    return p


def job_from_args(args) -> Job:
    """The candidates and recipe the flags ask for; ValueError (one line) on anything wrong."""
    recipe = Recipe(args.seeds, args.epochs, args.train_size, args.train_split)
    if args.full_recipe and args.search:
        cands, folder, source = confirmed_candidates(args.results / args.search)
        folder = folder / "full-recipe"
    elif args.search:
        if args.train_split != "train":
            raise ValueError("--train-split train+val leaves no val to choose among --search's configs; "
                             "use --config for the seed's 60k recipe")
        cands, folder, source = search_candidates(args.results / args.search, args.top)
    else:
        cands, folder, source = config_candidates(args.config or args.results / "best_config.json")
    out = Path(args.out or folder).expanduser()
    if (out / "retrain.json").exists() and not args.overwrite:
        raise ValueError(f"{out / 'retrain.json'} exists; pass a new --out (or --overwrite to replace it)")
    data_dir = str(Path(args.data_dir).expanduser().resolve())  # tasks run in other folders
    return Job(tuple(cands), recipe, data_dir, files.prepare_out_dir(out), source, compile_changes(args))


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # a --time-budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.full_recipe and args.train_split == "train":
        parser.fail("--full-recipe trains on train+val, the seed's 60k; drop --train-split train")
    presets = ([FULL] if args.full_recipe else []) + ([SMOKE] if args.smoke_test else [])  # smoke's sizes win
    for key, value in {**DEFAULTS, **{k: v for p in presets for k, v in p.items()}}.items():  # explicit flags win
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    try:
        job = job_from_args(args)
        load_splits(job.data_dir)  # fails here, once, if MNIST is missing
    except (ValueError, DataUnavailable) as err:
        parser.fail(str(err))
    try:
        connected(parser, args, job, started)
    except KeyboardInterrupt:  # connected has already shut down a Ray it started
        say(f"interrupted: the runs already saved in {job.out / 'runs'} are reused when the same command is run again")
        return 130
    return 0


def connected(parser: Parser, args, job: Job, started: float) -> dict:
    """The stage on Ray: the caller's Ray if this process runs one (left running), else its own (ended)."""
    import ray

    try:
        cluster.connect(args.address)
        plan = place_runs(len(job.cands) * job.recipe.seeds, args.gpus_per_run, args.cpus_per_run)
        if not (args.full_recipe or args.time_budget_s):
            return execute(job, plan)
        job, predicted, deadline = fit_to_budget(job, plan, args.time_budget_s, started)
        return execute(job, plan, predicted, deadline)
    except ray.exceptions.RayTaskError as err:  # first: Ray makes it an instance of its cause's class
        if isinstance(err.cause, ValueError):  # e.g. a GPU share but a torch build without CUDA
            parser.fail(f"a confirm run failed: {err.cause}")
        raise
    except (ValueError, ConnectionError) as err:
        parser.fail(str(err))
    finally:
        cluster.disconnect()


if __name__ == "__main__":
    sys.exit(main())

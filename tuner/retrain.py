"""Confirm a search's leaders against the seed's config: same seeds, one recipe, a paired verdict.

`python -m tuner.retrain --search NAME` confirms the top K configs of a finished search (winner
chosen on val, verdict on test); `--config best_config.json` compares that one config with the
seed's. The search runs this stage itself at its end (tuner.search). Every run is a Ray task.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_net import files, plots
from mnist_net.cli import Parser, add_compile_mode, compile_changes, non_negative_float, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, load_splits
from mnist_net.download import DataUnavailable
from mnist_net.runtime import provenance
from tuner import cluster, confirm, planning, publish, resources, tracking
from tuner.confirm import SEED_LABEL, Candidate, Recipe
from tuner.confirm_runs import RunStore, run_all
from tuner.settings import DEFAULT_CONFIRM_TOP, SearchSettings
from tuner.space import PARAMS, SEED_CONFIG

SMOKE = {"seeds": 1, "epochs": 1, "train_size": 1024}
# The search's own confirm defaults, and the seed's epochs (TrainConfig's defaults are the seed's recipe).
DEFAULTS = {"seeds": SearchSettings.confirm_seeds, "epochs": TrainConfig.epochs, "train_size": None}


@dataclass(frozen=True)
class Job:
    """What the stage needs: the configs, the recipe, where the data is and where results go."""

    cands: tuple[Candidate, ...]
    recipe: Recipe
    data_dir: str
    out: Path
    source: str  # the best_config.json or trials.csv the candidates came from
    changes: dict = field(default_factory=dict)  # TrainConfig fields beyond the recipe (--compile-mode)


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
    p.add_argument("--train-split", choices=("train", "train+val"), default="train",
                   help="train: 50k, winner chosen on val; train+val: the seed's 60k recipe, --config only")
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


def read_best(path: Path) -> dict:
    """The best_config.json a search wrote, checked; ValueError says what is wrong."""
    data = files.read_json(path, str(path), missing_hint="; run `python -m tuner.search` first",
                           invalid_hint="; rerun the search or fix the file")
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or any(p not in config for p in PARAMS):
        raise ValueError(f"{path} has no \"config\" with {list(PARAMS)}; is it a best_config.json?")
    for key, params in (("config", config), ("seed_config", data.get("seed_config", SEED_CONFIG))):
        if not isinstance(params, dict) or sorted(params) != sorted(PARAMS):
            # only the searched hyperparameters: an "epochs" here would override the recipe's
            raise ValueError(f"{path}: \"{key}\" must hold exactly {list(PARAMS)}, got "
                             f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
        try:
            TrainConfig.from_dict(params)  # wrong types or values fail here, before any training
        except ValueError as err:
            raise ValueError(f"{path}: \"{key}\": {err}") from None
    experiment = data.get("experiment", {})
    if not (isinstance(experiment, dict) and isinstance(experiment.get("summary_dir", "."), str)):
        raise ValueError(f"{path}: \"experiment\" must be an object with a \"summary_dir\" string")
    return data


def read_trials(folder: Path) -> pd.DataFrame:
    path = folder / "trials.csv"
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}; is {folder.name} a finished search?") from None


def job_from_args(args) -> Job:
    """The candidates and recipe the flags ask for; ValueError (one line) on anything wrong."""
    recipe = Recipe(args.seeds, args.epochs, args.train_size, args.train_split)
    if args.search:
        if args.train_split != "train":
            raise ValueError("--train-split train+val leaves no val to choose among --search's configs; "
                             "use --config for the seed's 60k recipe")
        folder = args.results / args.search
        cands = confirm.candidates(read_trials(folder), args.top)
        out, source = args.out or folder, str(folder / "trials.csv")
    else:
        path = args.config or args.results / "best_config.json"
        best = read_best(path)
        seed = best.get("seed_config", SEED_CONFIG)
        cands = [Candidate("best", dict(best["config"]), best.get("val_acc")), Candidate(SEED_LABEL, dict(seed))]
        out, source = args.out or path.parent / best.get("experiment", {}).get("summary_dir", "."), str(path)
    out = Path(out).expanduser()
    if (out / "retrain.json").exists() and not args.overwrite:
        raise ValueError(f"{out / 'retrain.json'} exists; pass a new --out (or --overwrite to replace it)")
    data_dir = str(Path(args.data_dir).expanduser().resolve())  # tasks run in other folders
    return Job(tuple(cands), recipe, data_dir, files.prepare_out_dir(out), source, compile_changes(args))


def confirm_search(settings, summary_dir: Path, out: Path, data_dir: str, left_s: float | None) -> dict:
    """Stage 5 of a search, on its Ray: its top configs and the seed's, at the recipe the time left fits (`left_s`;
    None = as planned); best_config.json then names the confirmed winner, with the search's own pick beside it."""
    import ray

    trials = read_trials(summary_dir)
    cands = tuple(confirm.candidates(trials, settings.top))
    plan = resources.place(resources.alive_nodes(), settings.gpus_per_trial, settings.cpus_per_trial,
                          len(cands) * settings.confirm_seeds)
    epochs = pd.read_csv(summary_dir / "trial_epochs.csv").merge(trials[["trial_id", "batch_size"]], on="trial_id")
    recipe, predicted_s = planning.confirm_recipe(settings, left_s, [c.config["batch_size"] for c in cands[:-1]],
                                                  epochs, plan.concurrent)
    job = Job(cands, recipe, data_dir, summary_dir, str(summary_dir / "trials.csv"), settings.compile_changes())
    try:
        rep = execute(job, plan, predicted_s)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, ValueError):  # e.g. a GPU share on a torch without CUDA
            raise ValueError(str(err.cause)) from None
        raise
    publish.record_confirmation(out, summary_dir, rep)
    if (mlflow := tracking.parent_of(summary_dir)) is not None:
        tracking.log_final(*mlflow, rep, name="confirm")
    return rep


def execute(job: Job, plan: resources.Placement, predicted_s: float | None = None) -> dict:
    """Run (or read back) every run on the connected Ray, then write and return the report."""
    splits = load_splits(job.data_dir)
    say(f"confirm: {len(job.cands)} configs x {job.recipe.seeds} seed(s), {job.recipe.describe()}; {plan.describe()}")
    cands = list(job.cands)
    runs = run_all(cands, job.recipe, job.data_dir, plan, RunStore(job.out / "runs"), job.changes, predicted_s)
    rep = {**confirm.report(cands, runs, splits["test"].labels.numpy(), job.recipe), "source": job.source,
           "provenance": provenance()}
    write_outputs(job, runs, rep)
    for line in confirm.lines(rep):
        say(line)
    return rep


def write_outputs(job: Job, runs: dict[str, list[dict]], rep: dict) -> None:
    files.write_json(job.out / "retrain.json", rep)
    best = rep["best"]["label"]
    plots.curves(runs[best][0]["epochs_history"], job.out / "best_curves.png", title=f"{best} (seed 1)")
    plots.curves(runs[SEED_LABEL][0]["epochs_history"], job.out / "seed_curves.png", title="seed config (seed 1)")
    weights = RunStore(job.out / "runs").weights(rep["winner"]["config"], 1, job.recipe)
    if weights.is_file():
        files.write_bytes(job.out / "best_model.pt", weights.read_bytes())
    buf = io.BytesIO()  # to recompute the statistics: predictions[label][seed - 1, image]
    np.savez_compressed(buf, **{c.label: np.stack([r["predictions"] for r in runs[c.label]]) for c in job.cands})
    files.write_bytes(job.out / "test_predictions.npz", buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke_test else DEFAULTS).items():  # explicit flags win
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    try:
        job = job_from_args(args)
        load_splits(job.data_dir)  # fails here, once, if MNIST is missing
    except (ValueError, DataUnavailable) as err:
        parser.fail(str(err))
    try:
        connected(parser, args, job)
    except KeyboardInterrupt:  # connected has already shut down a Ray it started
        say(f"interrupted: the runs already saved in {job.out / 'runs'} are reused when the same command is run again")
        return 130
    return 0


def connected(parser: Parser, args, job: Job) -> dict:
    """The stage on Ray: reuse the caller's connection, else connect and disconnect."""
    import ray

    own = not ray.is_initialized()
    try:
        if own:
            cluster.connect(args.address)
        runs = len(job.cands) * job.recipe.seeds
        plan = resources.place(resources.alive_nodes(), args.gpus_per_run, args.cpus_per_run, runs)
        return execute(job, plan)
    except ray.exceptions.RayTaskError as err:  # first: Ray makes it an instance of its cause's class
        if isinstance(err.cause, ValueError):  # e.g. a GPU share but a torch build without CUDA
            parser.fail(f"a confirm run failed: {err.cause}")
        raise
    except (ValueError, ConnectionError) as err:
        parser.fail(str(err))
    finally:
        if own:
            cluster.disconnect()


if __name__ == "__main__":
    sys.exit(main())

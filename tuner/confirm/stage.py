"""Stage 5, the confirm stage's engine: the search's top configs and the seed's, trained with the same
seeds at one recipe as Ray tasks on the connected Ray, the report written and a winner named. Its CLI is
tuner.retrain; the search runs it itself at its end (confirm_search).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_net import files, plots
from mnist_net.cli import format_duration, say
from mnist_net.config import TrainConfig
from mnist_net.data import load_splits
from mnist_net.runtime import provenance
from tuner.confirm import report as confirm
from tuner.confirm.recipe import FULL_RECIPE, Deadline, Recipe, confirm_recipe, from_runs, full_recipe_time
from tuner.confirm.report import SEED_LABEL, Candidate
from tuner.confirm.runs import RunStore, run_all
from tuner.plan import placement
from tuner.plan.budget import DROP_SLACK, PUBLISH_S, run_time, runs_time, search_speeds
from tuner.plan.search_plan import calibrate
from tuner.run import tracking
from tuner.space import METRIC, PARAMS, SEED_CONFIG


@dataclass(frozen=True)
class Job:
    """What the stage needs: the configs, the recipe, where the data is and where results go."""

    cands: tuple[Candidate, ...]
    recipe: Recipe
    data_dir: str
    out: Path
    source: str  # the best_config.json or trials.csv the candidates came from
    changes: dict = field(default_factory=dict)  # TrainConfig fields beyond the recipe (--compile-mode)


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


def search_candidates(folder: Path, top: int) -> tuple[list[Candidate], Path, str]:
    """The top `top` distinct configs of the finished search in `folder`, and the seed's; (them, the
    folder, the file they came from)."""
    return confirm.candidates(read_trials(folder), top), folder, str(folder / "trials.csv")


def confirmed_candidates(folder: Path) -> tuple[list[Candidate], Path, str]:
    """The config a confirm stage in `folder` compared with the seed's (its retrain.json's best), and the seed's."""
    path = folder / "retrain.json"
    rep = files.read_json(path, str(path), missing_hint=f"; confirm it first: python -m tuner.retrain --search "
                          f"{folder.name} --results {folder.parent}", invalid_hint="; confirm the search again")
    best = rep["best"]
    return ([Candidate(best["label"], dict(best["config"]), best.get("proxy_val_acc"), best.get("trial_id")),
             Candidate(SEED_LABEL, dict(SEED_CONFIG))], folder, str(path))


def predict_runs(job: Job, thr, concurrent: int) -> float:
    """Seconds the job's runs not yet saved will take at `thr` (calibrated), over `concurrent` slots."""
    store, r = RunStore(job.out / "runs"), job.recipe
    todo = [run_time(r.epochs, r.images(), 1 / thr.train[c.config["batch_size"]], thr)
            for s in range(1, r.seeds + 1) for c in job.cands if not store.path(c.config, s, r, ".json").is_file()]
    return runs_time(todo, thr, concurrent)


def fit_to_budget(job: Job, plan: placement.Placement, budget_s: float | None, started: float
                  ) -> tuple[Job, float, Deadline | None]:
    """Calibrate here, predict the runs still to train, and fit the seeds to a budget (counted from
    time.monotonic() == started); ValueError if one seed does not fit."""
    thr = calibrate(job.data_dir, TrainConfig(**job.changes), plan.cpu_per_trial, plan.gpu_per_trial, plan.concurrent,
                    tuple(sorted({c.config["batch_size"] for c in job.cands})))
    left = None if budget_s is None else budget_s - (time.monotonic() - started)
    for seeds in range(job.recipe.seeds, 0, -1):
        fitted = replace(job, recipe=replace(job.recipe, seeds=seeds))
        predicted = predict_runs(fitted, thr, plan.concurrent)
        if left is None or predicted <= left:
            break
    else:
        raise ValueError(f"--time-budget {format_duration(budget_s)} is too small: one seed of each config at "
                         f"{job.recipe.describe()} is predicted to take {format_duration(predicted)} here")
    say(f"predicted {format_duration(predicted)} here for {len(job.cands)} configs x {seeds} seed(s), "
        f"{fitted.recipe.describe()}" + (f" (fewer seeds than {job.recipe.seeds} to fit --time-budget "
                                         f"{format_duration(budget_s)})" if seeds < job.recipe.seeds else ""))
    return fitted, predicted, None if left is None else Deadline(started + budget_s, thr, DROP_SLACK * budget_s)


def config_candidates(path: Path) -> tuple[list[Candidate], Path, str]:
    """A best_config.json's one config and its seed config; (them, its search's summary folder, the file)."""
    best = read_best(path)
    seed = best.get("seed_config", SEED_CONFIG)
    cands = [Candidate("best", dict(best["config"]), best.get("val_acc")), Candidate(SEED_LABEL, dict(seed))]
    return cands, path.parent / best.get("experiment", {}).get("summary_dir", "."), str(path)


def place_runs(runs: int, gpus_per_run: float | None, cpus_per_run: int | None) -> placement.Placement:
    """Where `runs` confirm runs go on the connected Ray (shares as the search's trials are placed)."""
    return placement.place(placement.alive_nodes(), gpus_per_run, cpus_per_run, runs)


def confirm_search(settings, summary_dir: Path, out: Path, data_dir: str, left_s: float | None) -> dict:
    """Stage 5 of a search, on its Ray: its top configs and the seed's, at the recipe the time left fits (`left_s`;
    None = as planned); best_config.json then names the confirmed winner, with the search's own pick beside it."""
    import ray

    trials = read_trials(summary_dir)
    cands = tuple(confirm.candidates(trials, settings.top))
    plan = place_runs(len(cands) * settings.confirm_seeds, settings.gpus_per_trial, settings.cpus_per_trial)
    epochs = pd.read_csv(summary_dir / "trial_epochs.csv").merge(trials[["trial_id", "batch_size"]], on="trial_id")
    thr = search_speeds(settings, epochs)
    recipe, predicted_s = confirm_recipe(settings, left_s, [c.config["batch_size"] for c in cands[:-1]],
                                         thr, plan.concurrent)
    job = Job(cands, recipe, data_dir, summary_dir, str(summary_dir / "trials.csv"), settings.train_changes())
    deadline = None if thr is None or left_s is None else Deadline(time.monotonic() + left_s - PUBLISH_S, thr,
                                                                   DROP_SLACK * settings.time_budget_s)
    try:
        rep = execute(job, plan, predicted_s, deadline)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, ValueError):  # e.g. a GPU share on a torch without CUDA
            raise ValueError(str(err.cause)) from None
        raise
    record_confirmation(out, summary_dir, rep)
    if (mlflow := tracking.parent_of(summary_dir)) is not None:
        tracking.log_final(*mlflow, rep, name="confirm")
    return rep


def record_confirmation(out: Path, summary_dir: Path, report: dict) -> dict:
    """best_config.json names the confirmed winner (its mean val_acc at the confirm recipe); the
    search's own pick (its proxy score) stays beside it as proxy_best."""
    best = files.read_json(summary_dir / "best_config.json", "best_config.json")
    proxy = best.get("proxy_best") or {k: best[k] for k in ("config", METRIC, "epoch", "trial_id")}
    comparison, rank = report["comparison"], report.get("ranking") or {}
    winner = next(c for c in report["candidates"] if c["label"] == report["winner"]["label"])
    best.update({
        "config": report["winner"]["config"], METRIC: winner["val_acc_mean"], "epoch": report["epochs"],
        "trial_id": winner["trial_id"], "proxy_best": proxy,
        "confirmed": {"winner": report["winner"]["label"], "why": report["winner"]["why"],
                      "verdict": comparison["verdict"], "outcome": comparison["outcome"],
                      "kendall_tau": rank.get("tau"), "recipe": report["recipe"], "warnings": report["warnings"],
                      "seed_config_starved": comparison.get("starved"), "full_recipe": report.get("full_recipe"),
                      "file": "retrain.json"},
    })
    files.write_json(summary_dir / "best_config.json", best)
    files.write_json(out / "best_config.json", best)
    return best


def execute(job: Job, plan: placement.Placement, predicted_s: float | None = None,
            deadline: Deadline | None = None) -> dict:
    """Run (or read back) every run on the connected Ray (dropping the last seeds a deadline cannot fit), then
    write and return the report."""
    splits = load_splits(job.data_dir)
    say(f"confirm: {len(job.cands)} configs x {job.recipe.seeds} seed(s), {job.recipe.describe()}; {plan.describe()}")
    cands = list(job.cands)
    runs = run_all(cands, job.recipe, job.data_dir, plan, RunStore(job.out / "runs"), job.changes, predicted_s,
                   deadline)
    job = replace(job, recipe=replace(job.recipe, seeds=len(runs[SEED_LABEL])))
    rep = {**confirm.report(cands, runs, splits["test"].labels.numpy(), job.recipe), "source": job.source,
           "provenance": provenance()}
    rep["full_recipe"] = full_recipe_hint(job, rep, runs, plan.concurrent)
    rep["seed_recipe_lines"] = confirm.seed_recipe_lines(rep)  # what the notebook shows under the verdict
    write_outputs(job, runs, rep)
    for line in confirm.lines(rep):
        say(line)
    return rep


def full_recipe_hint(job: Job, rep: dict, runs: dict[str, list[dict]], concurrent: int) -> dict | None:
    """The command that checks this verdict at the seed's recipe, and its time predicted from these runs' speeds;
    None when these runs are the seed's recipe already."""
    if job.recipe.train_split == "train+val" and job.recipe.epochs >= FULL_RECIPE.epochs:
        return None
    if job.source.endswith(("trials.csv", "retrain.json")):  # a search's folder
        folder = Path(job.source).parent
        what = f"--search {folder.name} --results {folder.parent}"
    else:
        what = f"--config {job.source}"
    batch = rep["best"]["config"]["batch_size"]
    return {"command": f"python -m tuner.retrain {what} --full-recipe",
            "predicted_s": round(full_recipe_time(from_runs(runs), batch, concurrent), 1)}


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

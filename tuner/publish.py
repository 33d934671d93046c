"""Write what a finished search leaves in results/: best config, trial tables, the settled study, plots."""

from __future__ import annotations

import os
from pathlib import Path

from mnist_net import files
from mnist_net.runtime import provenance
from tuner import extend, results, study
from tuner.resources import Placement
from tuner.settings import SearchSettings
from tuner.space import METRIC, MODE, PARAMS, SEED_CONFIG, space_record


def write_search_results(grid, settings: SearchSettings, plan: Placement, storage: str, summary_dir: Path,
                         out: Path, name: str, wall_s: float, ext: extend.Extension | None = None,
                         stopped_by_budget: bool = False) -> dict:
    """stopped_by_budget: Ray's time_budget_s ended the search; the trials it cut short are marked
    BUDGET_STOPPED and the best is chosen among the others."""
    trials, epochs = results.tables(grid, settings.max_epochs)
    if stopped_by_budget:
        trials = mark_budget_stopped(trials, grid)
    results.write_csv(trials, summary_dir / "trials.csv")
    results.write_csv(epochs, summary_dir / "trial_epochs.csv")
    study_db = summary_dir / study.FILE
    # The live study (tuner.searcher) is settled; a search started before it existed gets one built.
    optuna_study = (study.settle(study_db, name, trials) if study_db.is_file()
                    else results.build_study(trials, epochs, study_db, name))
    plots = results.write_plots(optuna_study, summary_dir)
    pool = trials if ext is None else ext.pool(trials, name)  # an extension: best over its parents' too
    row = results.best_trial(pool)
    seed_row = trials.iloc[0]  # points_to_evaluate makes the seed's config trial 1
    best = {
        "config": {p: results._native(row[p]) for p in PARAMS},
        METRIC: float(row["best_val_acc"]), "epoch": int(row["best_epoch"]),
        "metric": METRIC, "mode": MODE, "trial_id": row["trial_id"],
        "seed_config": dict(SEED_CONFIG), "seed_config_val_acc": float(seed_row["best_val_acc"]),
        "experiment": {"name": name, "storage": storage, "ray_path": f"{storage}/{name}",
                       # relative to the results folder, so a committed results/ stays valid
                       "summary_dir": os.path.relpath(summary_dir, out)},
        "search": {**settings.to_dict(), "grace_period": settings.grace_period,
                   "reduction_factor": settings.reduction_factor, "plan": plan.describe(),
                   "trials": len(trials), "status_counts": trials["status"].value_counts().to_dict(),
                   "wall_time_s": round(wall_s, 1), "stopped_by_budget": stopped_by_budget},
        "seed": settings.seed, "files": ["trials.csv", "trial_epochs.csv", "study.db", *plots],
        "provenance": provenance(), "space": space_record(),
    }
    if ext is not None:
        best = ext.link(best, row, len(pool))
    files.write_json(summary_dir / "best_config.json", best)
    files.write_json(out / "best_config.json", best)  # the stable copy: the latest finished search
    return best


BUDGET_STOPPED = "budget_stopped"


def mark_budget_stopped(trials, grid):
    """Trials cut short (results.cut_short: neither errored nor finished nor stopped by ASHA) were
    still running when the time budget ran out."""
    cut = {results.ray_trial_id(r) for r in grid if results.cut_short(r)}
    hit = trials["trial_id"].isin(cut) & (trials["status"] == "stopped")
    trials = trials.copy()
    trials.loc[hit, "status"] = BUDGET_STOPPED
    trials.loc[hit, "stopped_early"] = False
    return trials


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
                      "file": "retrain.json"},
    })
    files.write_json(summary_dir / "best_config.json", best)
    files.write_json(out / "best_config.json", best)
    return best

"""Write what a finished search leaves in results/: best config, trial tables, study, plots."""

from __future__ import annotations

import os
from pathlib import Path

from mnist_net import files
from mnist_net.runtime import provenance
from tuner import results
from tuner.resources import Plan
from tuner.settings import SearchSettings
from tuner.space import METRIC, MODE, PARAMS, SEED_CONFIG


def write_search_results(grid, settings: SearchSettings, plan: Plan, storage: str, summary_dir: Path,
                         out: Path, name: str, wall_s: float) -> dict:
    trials, epochs = results.tables(grid, settings.max_epochs)
    results.write_csv(trials, summary_dir / "trials.csv")
    results.write_csv(epochs, summary_dir / "trial_epochs.csv")
    study = results.build_study(trials, epochs, summary_dir / "study.db", name)
    plots = results.write_plots(study, summary_dir)
    row = results.best_trial(trials)
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
                   "wall_time_s": round(wall_s, 1)},
        "seed": settings.seed, "files": ["trials.csv", "trial_epochs.csv", "study.db", *plots],
        "provenance": provenance(),
    }
    files.write_json(summary_dir / "best_config.json", best)
    files.write_json(out / "best_config.json", best)  # the stable copy: the latest finished search
    return best

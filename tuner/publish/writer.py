"""Stage 4: write what a finished search leaves in results/ (best config, trial tables, the settled
study, plots), then remove the trial checkpoints nothing can use any more."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mnist_net import files
from mnist_net.cli import format_duration, say
from mnist_net.runtime import provenance
from tuner import extend
from tuner.plan.search_plan import SearchPlan
from tuner.publish import results
from tuner.run import study
from tuner.space import METRIC, MODE, PARAMS, SEED_CONFIG, cut_short, ray_trial_id, space_record


def publish(exp, plan: SearchPlan, done) -> dict | None:
    """Stage 4 of the experiment `exp` (tuner.search.Experiment) after its run `done` (a run.runner.SearchRun):
    the search's files and best_config.json, spent checkpoints removed; None after a one-line error."""
    if done.stopped_by_budget:
        say(f"search stopped by its time budget ({format_duration(plan.settings.search_time_budget_s)}): "
            "publishing the trials that finished; those still running are marked budget_stopped in trials.csv")
    try:
        best = write_search_results(done.grid, plan, exp.storage, exp.summary_dir, exp.out, exp.name, done.seconds,
                                    exp.extension, stopped_by_budget=done.stopped_by_budget)
    except OSError as err:  # disk full, folder gone read-only: earlier files stay as they were
        say(f"error: cannot write the search's results to {exp.summary_dir}: {err.strerror or err}. "
            f"Ray's experiment in {exp.storage}/{exp.name} is complete; free space and rerun: {exp.resume_command}")
        return None
    except results.NoFinishedTrial as err:  # every trial errored or diverged: nothing to choose
        say(f"error: {err}")
        return None
    done.watching.end(best)
    tidy(done.grid, f"{exp.storage}/{exp.name}", best, exp.keep_checkpoints)
    c = best["config"]
    say(f"best: lr {c['lr']:.4g}, momentum {c['momentum']:.3f}, batch {c['batch_size']} -> {METRIC} "
        f"{best[METRIC]:.2f}% (epoch {best['epoch']}); seed config: {best['seed_config_val_acc']:.2f}%")
    return best


def write_search_results(grid, plan: SearchPlan, storage: str, summary_dir: Path, out: Path, name: str,
                         wall_s: float, ext: extend.Extension | None = None, stopped_by_budget: bool = False) -> dict:
    """stopped_by_budget: Ray's time_budget_s ended the search; the trials it cut short are marked
    BUDGET_STOPPED and the best is chosen among the others."""
    settings = plan.settings
    trials, epochs = results.tables(grid, settings.max_epochs)
    if stopped_by_budget:
        trials = mark_budget_stopped(trials, grid)
    results.write_csv(trials, summary_dir / "trials.csv")
    results.write_csv(epochs, summary_dir / "trial_epochs.csv")
    study_db = summary_dir / study.FILE
    # The live study (run.study's searcher) is settled; a search started before it existed gets one built.
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
                   "reduction_factor": settings.reduction_factor, "plan": plan.placement.describe(),
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
    """Trials cut short (space.cut_short: neither errored nor finished nor stopped by ASHA) were
    still running when the time budget ran out."""
    cut = {ray_trial_id(r) for r in grid if cut_short(r)}
    hit = trials["trial_id"].isin(cut) & (trials["status"] == "stopped")
    trials = trials.copy()
    trials.loc[hit, "status"] = BUDGET_STOPPED
    trials.loc[hit, "stopped_early"] = False
    return trials


# Each trial keeps its two newest checkpoints while the search runs (CheckpointConfig num_to_keep=2),
# about 5 MB each. Once the search is published, a trial that ended (finished, stopped by ASHA,
# diverged) is never trained again: its checkpoints go, except the best trial's newest (its weights).
# A trial a --resume would restart (errored: resume_errored; cut by the time budget: no done=True in
# its last result) keeps its newest, the one a restore loads.
def removable(grid, best_trial_id: str) -> list[Path]:
    """The checkpoint folders nothing can use once the search is published."""
    doomed = []
    for result in grid:
        ended = not cut_short(result) and result.error is None
        found = sorted(p for p in Path(result.path).glob("checkpoint_*") if p.is_dir())  # oldest first
        doomed.extend(found[:-1] if ray_trial_id(result) == best_trial_id or not ended else found)
    return doomed


def tidy(grid, experiment_dir: str, best: dict, keep: bool) -> None:
    """Remove what `removable` names from a local storage folder unless `keep`; say the sizes."""
    if "://" in experiment_dir and not experiment_dir.startswith("file://"):
        say(f"checkpoints kept: {experiment_dir} is remote storage")
        return
    folder = Path(experiment_dir.removeprefix("file://"))
    before = size_mb(folder)
    if keep:
        say(f"storage {folder}: {before:.1f} MB (--keep-checkpoints: every checkpoint kept)")
        return
    doomed = removable(grid, best["trial_id"])
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    after = size_mb(folder)
    say(f"storage {folder}: {after:.1f} MB (removed {len(doomed)} checkpoints nothing can use any more, "
        f"{before - after:.1f} MB; --keep-checkpoints keeps them)")


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20

"""Read a search, finished or still running, back from results/ for review (the notebook's data source), without Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from tuner import space
from tuner.publish.results import plot_study
from tuner.space import BATCH_SIZES, METRIC, PARAMS, SEED_CONFIG, TIME_ATTR, status_from_result

FULL_RECIPE_DIR = "full-recipe"  # the README's `tuner.retrain --train-split train+val --epochs 20 --out` check
TABLE_COLUMNS = ["trial", *PARAMS, "best_val_acc", "best_epoch", "epochs_run", "stopped_early", "status"]


@dataclass
class Review:
    folder: Path  # the experiment's summary folder
    best: dict
    trials: pd.DataFrame
    epochs: pd.DataFrame
    retrain: dict | None

    @property
    def name(self) -> str:
        return self.best["experiment"]["name"]


def missing_message(results: Path) -> str:
    return (f"No finished search in {results}: run `python -m tuner.search --num-samples 32` "
            "to produce one, then rerun this notebook.")


def load(results: str | Path, name: str | None = None) -> Review | None:
    """Search `name` in `results` (finished or running), else the latest finished; None if none. Rereads files."""
    results = Path(results)
    best_file = results / (name or "") / "best_config.json"
    if best_file.is_file():
        return finished(results, json.loads(best_file.read_text()))
    return None if name is None else running(results, name)


def finished(results: Path, best: dict) -> Review:
    folder = results / best["experiment"]["summary_dir"]
    retrain_file = folder / "retrain.json"
    return Review(folder=folder, best=best, trials=pd.read_csv(folder / "trials.csv"),
                  epochs=pd.read_csv(folder / "trial_epochs.csv"),
                  retrain=json.loads(retrain_file.read_text()) if retrain_file.is_file() else None)


def running(results: Path, name: str) -> Review | None:
    """A running (or interrupted) search from Ray's trial files in results/ray/<name>; its best so far as `best`."""
    settings_file = results / name / "search_settings.json"
    if not settings_file.is_file():
        return None
    settings = json.loads(settings_file.read_text())
    trials, epochs = trial_files(results / "ray" / name, settings["max_epochs"])
    search = {**settings, "grace_period": space.grace_period_for(settings["max_epochs"]),
              "reduction_factor": space.reduction_factor_for(settings["max_epochs"]), "trials": len(trials)}
    best = {"experiment": {"name": name, "summary_dir": name}, "search": search, "running": True,
            "seed_config": dict(SEED_CONFIG), "config": None, METRIC: None}
    ok = trials[trials["status"] != "diverged"].dropna(subset=["best_val_acc"])
    if len(ok):
        top = ok.loc[ok["best_val_acc"].idxmax()]
        best.update({"config": {p: top[p] for p in PARAMS}, METRIC: float(top["best_val_acc"]),
                     "epoch": int(top["best_epoch"]), "trial_id": top["trial_id"]})
    return Review(folder=results / name, best=best, trials=trials, epochs=epochs, retrain=None)


def trial_files(experiment: Path, max_epochs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) like trials.csv, trial_epochs.csv; "running" until a trial ends; half-written lines skipped."""
    rows, epochs = [], []
    for n, trial_dir in enumerate(sorted(experiment.glob("*/params.json"), key=lambda p: p.stat().st_mtime)):
        records = []
        result_file = trial_dir.parent / "result.json"
        for line in (result_file.read_text().splitlines() if result_file.is_file() else []):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        history = {int(r[TIME_ATTR]): r for r in records}  # a retried epoch: its last report
        config = json.loads(trial_dir.read_text())
        last = records[-1] if records else {}
        status = status_from_result(last, False, max_epochs) if last.get("done") or last.get("diverged") else "running"
        trial_id = last.get("trial_id") or trial_dir.parent.name
        best_epoch = max(history, key=lambda e: history[e][METRIC]) if history else None
        rows.append({"trial": n + 1, "trial_id": trial_id, **{p: config.get(p) for p in PARAMS},
                     "best_val_acc": history[best_epoch][METRIC] if history else None, "best_epoch": best_epoch,
                     "epochs_run": len(history), "stopped_early": status == "stopped", "status": status})
        epochs += [{"trial_id": trial_id, "epoch": e, METRIC: r[METRIC]} for e, r in sorted(history.items())]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS[:1] + ["trial_id"] + TABLE_COLUMNS[1:]), \
        pd.DataFrame(epochs, columns=["trial_id", "epoch", METRIC])


def full_recipe(review: Review, results: str | Path) -> Review | None:
    """`review` with results/full-recipe's check as its retrain (of which config: full_recipe_note); None if none."""
    path = Path(results) / FULL_RECIPE_DIR / "retrain.json"
    if not path.is_file() or review.best.get("running"):
        return None
    return replace(review, retrain=json.loads(path.read_text()))


def full_recipe_note(review: Review, full: Review) -> str:
    """Whether the full-recipe check is of this search's confirmed winner, or of an earlier one."""
    checked = full.retrain["best"]["config"]
    if checked == {p: review.best["config"][p] for p in PARAMS}:
        return f"the full-recipe check is of this search's confirmed winner {checked}"
    return (f"the full-recipe check is of {checked} (an earlier search's winner), not of this search's "
            f"confirmed winner {review.best['config']}")


def trial_table(review: Review) -> pd.DataFrame:
    """Trials sorted best first on val accuracy."""
    return (review.trials[TABLE_COLUMNS].sort_values("best_val_acc", ascending=False, na_position="last")
            .reset_index(drop=True))


def optuna_figures(review: Review) -> list[Figure]:
    """Optuna's plots of the study (those it can draw yet, for a running study): see results.PLOTS."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=review.name, storage=f"sqlite:///{review.folder / 'study.db'}")
    return list(plot_study(study).values())


def trial_curves(review: Review) -> Figure:
    """Val error per epoch (log axis: the leaders' 1-2 % spread shows) by batch size; chosen and seed config thick."""
    search = review.best["search"]
    colours = dict(zip(BATCH_SIZES, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(BATCH_SIZES))), strict=True))
    fig, ax = plt.subplots(figsize=(10, 5))
    trials = review.trials.set_index("trial_id")
    for trial_id, group in review.epochs.groupby("trial_id", sort=False):
        row = trials.loc[trial_id]
        error = 100 - group[METRIC].clip(upper=99.99)
        ax.plot(group["epoch"], error, color=colours.get(int(row["batch_size"]), "gray"), alpha=0.6, lw=1)
        for config, label, style in ((review.best.get("config"), "chosen", "-"), (SEED_CONFIG, "seed's config", "--")):
            if config is not None and all(abs(float(row[p]) - float(config[p])) < 1e-9 for p in PARAMS):
                ax.plot(group["epoch"], error, color="black", lw=2.5, ls=style, marker="o", ms=4,
                        label=f"{label}: lr {row['lr']:.3g}, m {row['momentum']:.2f}, bs {int(row['batch_size'])}")
    for batch, colour in colours.items():
        ax.plot([], [], color=colour, label=f"batch {batch}")
    for rung in space.rungs(search["max_epochs"], search["grace_period"], search["reduction_factor"]):
        ax.axvline(rung, color="gray", linestyle=":")
    so_far = " so far" if review.best.get("running") else ""
    ax.set(yscale="log", xlabel="epoch", ylabel=f"val error (100 - {METRIC}, %, log)",
           title=f"{len(review.trials)} trials{so_far}; dotted lines: ASHA rungs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if t >= ax.get_ylim()[0] / 2])
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def retrain_table(review: Review) -> pd.DataFrame:
    """Each confirmed config: proxy score, mean val_acc (picks the winner), test mean ± std; old files: best, seed."""
    entries = review.retrain.get("candidates") or [review.retrain[k] for k in ("best", "seed_config")]
    winner = review.retrain.get("winner", {}).get("label")
    rows = [{"config": e.get("label", k), **e["config"], "seeds": len(e["test_acc"]),
             "proxy_val_acc": e.get("proxy_val_acc"), "val_acc_mean": e.get("val_acc_mean"),
             "test_acc_mean": e["test_acc_mean"], "test_acc_std": e["test_acc_std"],
             "winner": winner is not None and e.get("label", k) == winner}
            for k, e in zip(("best", "seed_config", *[""] * (len(entries) - 2)), entries, strict=True)]
    return pd.DataFrame(rows)


def ranking(review: Review) -> str:
    """How well the search's proxy ranked the confirmed configs (Kendall's tau), and any warning."""
    rank = review.retrain.get("ranking") or {}
    if rank.get("tau") is None or rank["tau"] != rank["tau"]:  # NaN: no ranking
        return "no ranking: fewer than two confirmed configs with a proxy score, or no selection split"
    return "\n".join([f"proxy vs confirmation ranking of {rank['configs']} configs: Kendall tau {rank['tau']:+.2f} "
                      f"(p = {rank['pvalue']:.2g})"] + [f"warning: {w}" for w in review.retrain.get("warnings", [])])


def verdict(review: Review) -> str:
    """The verdict (tuner.confirm.stats) and, below the seed's recipe, where it holds; or why there is none."""
    comparison = review.retrain.get("comparison")
    if comparison is None:  # a retrain.json from before the paired statistics
        return ("This retrain.json has no paired comparison; rerun `python -m tuner.retrain --out DIR` "
                "for McNemar's test and a confidence interval.")
    return "\n".join([comparison["verdict"], *review.retrain.get("seed_recipe_lines", [])])


def comparison_table(review: Review) -> pd.DataFrame | None:
    """Per seed: test accuracies, difference, McNemar's b, c and p; then the mean with its 95 % CI; None if old."""
    c = review.retrain.get("comparison")
    if c is None:
        return None
    rows = [{"seed": seed, "best_acc": a, "seed_config_acc": s, "diff_pp": m["diff_pp"],
             "b (only best right)": m["b"], "c (only seed config right)": m["c"], "mcnemar_p": m["pvalue"]}
            for seed, a, s, m in zip(review.retrain["seeds"], c["acc_best"], c["acc_seed_config"], c["mcnemar"],
                                     strict=True)]
    rows.append({"seed": "mean", "best_acc": sum(c["acc_best"]) / len(rows),
                 "seed_config_acc": sum(c["acc_seed_config"]) / len(rows), "diff_pp": c["mean_diff_pp"],
                 "ci_95_pp": f"{c['ci_low_pp']:.2f} to {c['ci_high_pp']:.2f}", "ci_method": c["ci_method"]})
    return pd.DataFrame(rows)


def retrain_curves(review: Review) -> Figure:
    """Train loss and per-epoch score (val if the stage selects; else test, as the seed logged it), best vs seed."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 5))
    first = review.retrain["best"]["epochs_history"][0]
    key = "val_acc" if first and "val_acc" in first[0] else "test_acc"
    for label, color in (("best", "tab:blue"), ("seed_config", "tab:orange")):
        name = review.retrain[label].get("label", label)
        for i, history in enumerate(review.retrain[label]["epochs_history"]):
            epochs = [e["epoch"] for e in history]
            kw = {"color": color, "alpha": 0.8, "label": name if i == 0 else None}
            ax_loss.plot(epochs, [e["train_loss"] for e in history], **kw)
            ax_acc.plot(epochs, [e[key] for e in history], marker="o", **kw)
    for ax, title in ((ax_loss, "train loss"), (ax_acc, f"{key.split('_')[0]} accuracy (%)")):
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return fig

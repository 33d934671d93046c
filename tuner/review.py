"""Read a finished search back from results/ for review (the notebook's data source)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from tuner.results import PLOTS
from tuner.space import METRIC, PARAMS

# Where `python -m tuner.retrain --epochs 20 --out results/full-recipe` (the README's full-recipe
# check of the committed search's winner) leaves its retrain.json.
FULL_RECIPE_DIR = "full-recipe"
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


def load(results: str | Path) -> Review | None:
    """The latest finished search under `results` (via best_config.json), or None if there is none."""
    results = Path(results)
    best_file = results / "best_config.json"
    if not best_file.is_file():
        return None
    best = json.loads(best_file.read_text())
    folder = results / best["experiment"]["summary_dir"]
    retrain_file = folder / "retrain.json"
    return Review(folder=folder, best=best, trials=pd.read_csv(folder / "trials.csv"),
                  epochs=pd.read_csv(folder / "trial_epochs.csv"),
                  retrain=json.loads(retrain_file.read_text()) if retrain_file.is_file() else None)


def full_recipe(review: Review, results: str | Path) -> Review | None:
    """The same search with its retrain swapped for the full-recipe one, when that one was run for
    this search's best config; else None. verdict, comparison_table and retrain_curves take it."""
    path = Path(results) / FULL_RECIPE_DIR / "retrain.json"
    if not path.is_file():
        return None
    full = json.loads(path.read_text())
    if full.get("best", {}).get("config") != {p: review.best["config"][p] for p in PARAMS}:
        return None  # a full-recipe run of an earlier search's winner
    return replace(review, retrain=full)


def trial_table(review: Review) -> pd.DataFrame:
    """Trials sorted best first on val accuracy."""
    return (review.trials[TABLE_COLUMNS].sort_values("best_val_acc", ascending=False, na_position="last")
            .reset_index(drop=True))


def study(review: Review):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=review.name, storage=f"sqlite:///{review.folder / 'study.db'}")


def optuna_figures(review: Review) -> list[Figure]:
    """Optuna's optimization history, parameter importances and parallel coordinates."""
    import optuna.visualization.matplotlib as ovm

    s, figures = study(review), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is marked experimental
        for fn in PLOTS.values():
            ax = getattr(ovm, fn)(s)
            figures.append((ax.flat[0] if hasattr(ax, "flat") else ax).figure)
    return figures


def trial_curves(review: Review) -> Figure:
    """val_acc per epoch for every trial; dotted lines mark ASHA's rungs."""
    search = review.best["search"]
    fig, ax = plt.subplots(figsize=(10, 5))
    for _, group in review.epochs.groupby("trial_id", sort=False):
        ax.plot(group["epoch"], group[METRIC], marker=".", alpha=0.7)
    rung = search["grace_period"]
    while rung < search["max_epochs"]:
        ax.axvline(rung, color="gray", linestyle=":")
        rung *= search["reduction_factor"]
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{METRIC} (%)")
    ax.set_title(f"{len(review.trials)} trials; dotted lines: ASHA rungs")
    return fig


def retrain_table(review: Review) -> pd.DataFrame:
    """Best vs seed config on test, mean ± std over the retrain seeds."""
    rows = []
    for label in ("best", "seed_config"):
        r = review.retrain[label]
        rows.append({"config": label, **r["config"], "seeds": len(r["test_acc"]),
                     "test_acc_mean": r["test_acc_mean"], "test_acc_std": r["test_acc_std"],
                     "test_acc": r["test_acc"]})
    return pd.DataFrame(rows)


def verdict(review: Review) -> str:
    """The retrain's one-line verdict (tuner.stats), or why there is none."""
    comparison = review.retrain.get("comparison")
    if comparison is None:  # a retrain.json from before the paired statistics
        return ("This retrain.json has no paired comparison; rerun `python -m tuner.retrain --out DIR` "
                "for McNemar's test and a confidence interval.")
    return comparison["verdict"]


def comparison_table(review: Review) -> pd.DataFrame | None:
    """Per seed: both test accuracies, the difference, McNemar's discordant counts and p; then the
    mean difference with its 95 % CI (method in the last column). None for an old retrain.json."""
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
    """Train loss and test accuracy per epoch, every retrain seed, best vs seed config."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 5))
    for label, color in (("best", "tab:blue"), ("seed_config", "tab:orange")):
        for i, history in enumerate(review.retrain[label]["epochs_history"]):
            epochs = [e["epoch"] for e in history]
            kw = {"color": color, "alpha": 0.8, "label": label if i == 0 else None}
            ax_loss.plot(epochs, [e["train_loss"] for e in history], **kw)
            ax_acc.plot(epochs, [e["test_acc"] for e in history], marker="o", **kw)
    ax_loss.set_title("train loss")
    ax_acc.set_title("test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.legend()
    return fig

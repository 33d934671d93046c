"""Turn Ray's ResultGrid into the files a search leaves: trials.csv, epochs, the Optuna study."""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from mnist_net import files
from tuner import space
from tuner.space import EPOCH_METRICS, METRIC, MODE, PARAMS, TIME_ATTR, WHERE, name_metric, study_value

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")  # optuna's plot_<name>


def tables(grid, max_epochs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per trial-epoch) from a ResultGrid."""
    rows, epochs = [], []
    for result in grid:
        trial_id = space.ray_trial_id(result)
        history = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        if not history.empty:
            # A retried or resumed trial retrains the epochs after its last checkpoint: keep each epoch's last report.
            history = history.drop_duplicates(TIME_ATTR, keep="last").reset_index(drop=True)
            epochs += [{"trial_id": trial_id, "epoch": int(rec[TIME_ATTR]),
                        **{k: rec.get(k) for k in (*EPOCH_METRICS, "peak_rss_mb")}} for _, rec in history.iterrows()]
        rows.append({"trial": space.trial_number(trial_id, result.path),
                     **trial_row(trial_id, result.config or {}, history, result.error, max_epochs)})
    trials = pd.DataFrame(rows).sort_values("trial", kind="stable").reset_index(drop=True)
    trials["best_epoch"] = trials["best_epoch"].astype("Int64")  # stays an integer beside an errored trial
    return trials, pd.DataFrame(epochs)


def trial_row(trial_id: str, config: dict, history: pd.DataFrame, error, max_epochs: int) -> dict:
    ran = int(history[TIME_ATTR].max()) if not history.empty else 0
    diverged = bool(not history.empty and history["diverged"].fillna(False).astype(bool).any())
    status = space.trial_status(errored=error is not None, diverged=diverged, epochs_run=ran, max_epochs=max_epochs)
    val = history[METRIC] if not history.empty else pd.Series(dtype=float)
    best_idx = val.idxmax() if val.notna().any() else None
    # Ray wraps a trial's exception in a RayTaskError: a coloured traceback that fills the column; show the cause.
    cause = getattr(error, "cause", None) or error
    return {"trial_id": trial_id, **{p: config.get(p) for p in PARAMS},
            "best_val_acc": float(val[best_idx]) if best_idx is not None else math.nan,
            "best_epoch": int(history.loc[best_idx, TIME_ATTR]) if best_idx is not None else None,
            "last_val_acc": float(val.iloc[-1]) if len(val) else math.nan,
            "epochs_run": ran, "stopped_early": status == "stopped", "status": status,
            "wall_time_s": float(history["time_total_s"].iloc[-1]) if not history.empty else 0.0,
            **{k: history[k].iloc[-1] if k in history else None for k in WHERE},
            "error": None if error is None else f"{type(cause).__name__}: {cause}"[:300]}


class NoFinishedTrial(RuntimeError):
    """Every trial errored or diverged: there is no best config."""


def best_trial(trials: pd.DataFrame) -> pd.Series:
    """The trial with the highest val_acc at any epoch; diverged and errored trials never win."""
    ok = trials[trials["status"].isin(["finished", "stopped"]) & trials["best_val_acc"].notna()]
    if ok.empty:
        # The search's last line: name the first trial's error (e.g. a GPU share without CUDA).
        errors = trials["error"].dropna() if "error" in trials else []
        first = f"; first error: {str(errors.iloc[0]).splitlines()[0]}" if len(errors) else ""
        raise NoFinishedTrial(f"no trial finished with a val_acc (all errored or diverged){first}; "
                              "see trials.csv for their errors")
    return ok.loc[ok["best_val_acc"].idxmax() if MODE == "max" else ok["best_val_acc"].idxmin()]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    files.write_text(path, df.to_csv(index=False))


def build_study(trials: pd.DataFrame, epochs: pd.DataFrame, storage_file: Path, name: str):
    """The trials as an Optuna SQLite study: value = last val_acc (as OptunaSearch saw), chance if diverged, or FAIL."""
    import optuna

    dists = space.optuna_distributions()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_db = Path(tmp) / "study.db"
        study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_db}",
                                    direction="maximize" if MODE == "max" else "minimize")
        name_metric(study)
        for _, row in trials.iterrows():
            if any(pd.isna(row[p]) for p in PARAMS):
                continue  # a trial whose actor never started has no config to record
            value = study_value(row["status"], row["last_val_acc"])
            steps = epochs[epochs["trial_id"] == row["trial_id"]] if not epochs.empty else epochs
            study.add_trial(optuna.trial.create_trial(
                params={p: _native(row[p]) for p in PARAMS}, distributions=dists, value=value,
                state=optuna.trial.TrialState.FAIL if value is None else optuna.trial.TrialState.COMPLETE,
                intermediate_values={int(r.epoch): float(r.val_acc) for r in steps.itertuples()
                                     if r.val_acc == r.val_acc},
                user_attrs={"ray_trial_id": row["trial_id"], "status": row["status"],
                            "epochs_run": int(row["epochs_run"])}))
        del study  # release the SQLite connection before the file moves
        with files.atomic_path(storage_file) as final_tmp:
            shutil.copyfile(tmp_db, final_tmp)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage_file}")


def plot_study(study) -> dict:
    """Optuna's matplotlib plots of the study, name -> Figure; one it cannot draw yet is skipped."""
    import optuna.visualization.matplotlib as ovm

    drawn = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name in PLOTS:
            try:
                ax = getattr(ovm, f"plot_{name}")(study)
            except (ValueError, RuntimeError) as err:  # e.g. importances need 2 complete trials
                print(f"skipped {name} plot: {err}")
                continue
            drawn[name] = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    return drawn


def write_plots(study, folder: Path) -> list[str]:
    """plot_study's figures as PNGs in `folder`; returns the names written."""
    import matplotlib.pyplot as plt

    from mnist_net.plots import save

    drawn = plot_study(study)
    for name, fig in drawn.items():
        save(fig, folder / f"{name}.png")
        plt.close(fig)
    return [f"{name}.png" for name in drawn]


def _native(value):
    """numpy scalars -> Python numbers, as Optuna's distributions expect."""
    return value.item() if hasattr(value, "item") else value

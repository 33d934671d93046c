"""The live Optuna study, results/<name>/study.db from the first trial (optuna-dashboard reads it), and the
searcher that writes it as the trials report; checked before a --resume and settled on publishing (each trial's
final status)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

from ray.tune.search.optuna import OptunaSearch

from mnist_net import files
from tuner.space import METRIC, MODE, TIME_ATTR, WHERE, name_metric, status_from_result, study_value

FILE = "study.db"
LOCK_WAIT_S = 30  # a reader (the dashboard, the notebook) holds the file for milliseconds


def storage_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def rdb_storage(path: Path):
    import optuna
    import sqlalchemy

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(storage_url(path),
                                              engine_kwargs={"connect_args": {"timeout": LOCK_WAIT_S}})
        # a reader (optuna-dashboard) made the new file's schema this instant: a duplicate row, or, when both
        # create the tables at once, "table alembic_version already exists" (seen in the suite's shared search)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == 2:
                raise
            time.sleep(0.2)  # then it exists: the next try finds it


# Ray's OptunaSearch (2.60) takes a `storage` and already reports each epoch's val_acc as an intermediate value
# (`on_trial_result` -> `trial.report`). LiveOptunaSearch adds user attributes: the Ray trial id (to match the two),
# the epochs run and the final status. Ray pickles the searcher for a --resume; the RDB storage pickles as its URL
# and re-opens the file when loaded (checked: tests/test_watch.py), so a resumed search continues the same study.
class LiveOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def _setup_study(self, mode):
        """A --resume sets the searcher up again on its saved study: enqueueing points_to_evaluate (or
        telling an extension's warm start) a second time would make a duplicate the next trial."""
        import optuna

        if self._study_name not in optuna.study.get_all_study_names(self._storage):
            super()._setup_study(mode)
        else:
            points, rewards = self._points_to_evaluate, self._evaluated_rewards
            self._points_to_evaluate, self._evaluated_rewards = [], None
            super()._setup_study(mode)
            self._points_to_evaluate, self._evaluated_rewards = points, rewards
        name_metric(self._ot_study)  # on a resume too: a study saved before issue 23 named no metric

    def suggest(self, trial_id: str):
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict):
        super().on_trial_result(trial_id, result)
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            record(self._ot_trials[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            ot_trial = self._ot_trials[trial_id]
            # Ray hands a trial's last result (the one ASHA stops it on, or its last epoch) to
            # on_trial_complete only: report it here, and before super(), since Optuna refuses
            # values and attributes on a finished trial.
            if result and result.get(METRIC) is not None and TIME_ATTR in result:
                if result[TIME_ATTR] not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                    ot_trial.report(result[METRIC], result[TIME_ATTR])
                record(ot_trial, result)
            ot_trial.set_user_attr("status", status_from_result(result, error, self._max_epochs))
        super().on_trial_complete(trial_id, result, error)


def record(ot_trial, result: dict) -> None:
    """The user attributes a result sets: the epochs run, and where the trial trains (a retry or resume may move it)."""
    ot_trial.set_user_attr("epochs_run", int(result[TIME_ATTR]))
    for key in WHERE:
        ot_trial.set_user_attr(key, result.get(key))


def live_searcher(path: Path, name: str, max_epochs: int, **kwargs) -> LiveOptunaSearch:
    """The search's OptunaSearch on a new SQLite study at `path`, named after the experiment."""
    return LiveOptunaSearch(metric=METRIC, mode=MODE, study_name=name, storage=rdb_storage(path),
                            max_epochs=max_epochs, **kwargs)


def check(path: Path, name: str) -> None:
    """Before a --resume: ValueError (one line, naming the file) if the study cannot be written; reads only."""
    if not path.is_file():
        raise ValueError(f"cannot resume: {path} is missing; the search's Optuna study lives there "
                         "(put it back, e.g. from a backup, and resume again)")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=2)) as conn:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            conn.execute("BEGIN IMMEDIATE")  # the write lock the search will need
            conn.rollback()
            names = {r[0] for r in conn.execute("SELECT study_name FROM studies")}
    except sqlite3.OperationalError as err:
        why = ("is locked by another process (is this search still running?)" if "locked" in str(err)
               else f"is not a readable Optuna study ({err})")
        raise ValueError(f"cannot resume: {path} {why}; nothing was changed") from None
    except sqlite3.DatabaseError as err:
        raise ValueError(f"cannot resume: {path} is corrupt ({err}); nothing was changed") from None
    if name not in names:
        raise ValueError(f"cannot resume: {path} holds no study named {name!r}; nothing was changed")


def settle(path: Path, name: str, trials):
    """Publish the live study (returned): a settled copy (finish) replaces it atomically, or a failed write keeps it."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / FILE
        with closing(sqlite3.connect(path, timeout=LOCK_WAIT_S)) as src, closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)  # consistent even while a reader has the file open
        finish(copy, name, trials)
        with files.atomic_path(path) as final_tmp:
            shutil.copyfile(copy, final_tmp)
    return optuna.load_study(study_name=name, storage=storage_url(path))


def finish(path: Path, name: str, trials) -> None:
    """Give every trial Ray ran its published status and epochs. One still RUNNING in the study (cut by the time
    budget, or left by a kill) completes with its last val_acc, as build_study records it; one never started fails."""
    import optuna

    storage = rdb_storage(path)
    study = optuna.load_study(study_name=name, storage=storage)
    by_ray = {r["trial_id"]: r for r in trials.to_dict("records")}
    for ft in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = by_ray.get(ft.user_attrs.get("ray_trial_id"))
        trial = optuna.Trial(study, ft._trial_id)
        if row is None:
            trial.set_user_attr("status", "never_started")
        else:
            trial.set_user_attr("epochs_run", int(row["epochs_run"]))
        value = None if row is None else study_value(row["status"], row["last_val_acc"])
        study.tell(trial, value, state=optuna.trial.TrialState.FAIL if value is None else None)
    ids = {ft.user_attrs.get("ray_trial_id"): ft._trial_id for ft in study.get_trials(deepcopy=False)}
    storage.engine.dispose()
    # Optuna freezes finished trials; their published status may differ (budget_stopped): set it in this copy's table.
    with sqlite3.connect(path) as conn:
        for ray_id, row in by_ray.items():
            if ray_id in ids:
                conn.execute("DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = 'status'", (ids[ray_id],))
                conn.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, 'status', ?)",
                             (ids[ray_id], json.dumps(row["status"])))
    conn.close()


def check_resume(summary_dir: Path, experiment_dir: str, name: str) -> None:
    """ValueError (one line naming the file) if the study a --resume continues is missing, locked or corrupt; none for a
    search started before the live study (its saved searcher state names no sqlite: study; publish builds study.db)."""
    local = "://" not in experiment_dir
    live = local and any(b"sqlite:" in p.read_bytes() for p in Path(experiment_dir).glob("searcher-state-*.pkl"))
    if live or (summary_dir / FILE).exists():
        check(summary_dir / FILE, name)

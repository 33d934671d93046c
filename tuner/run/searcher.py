"""OptunaSearch writing its study to SQLite as it goes, with what a reader needs to follow it.

Ray's OptunaSearch (2.60) takes a `storage` and already reports each epoch's val_acc as an
intermediate value (`on_trial_result` -> `trial.report`). LiveOptunaSearch adds user attributes:
the Ray trial id (to match the two), the epochs run and the final status. Ray pickles the
searcher for a --resume; the RDB storage pickles as its URL and re-opens the file when loaded
(checked: tests/test_watch.py), so a resumed search continues the same study.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.search.optuna import OptunaSearch

from tuner.run.study import name_metric, rdb_storage
from tuner.space import METRIC, MODE, TIME_ATTR, WHERE, status_from_result


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

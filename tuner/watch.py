"""What tuner.run.run_trials adds around tuner.fit() so a search can be watched and leaves little behind:
the progress line, MLflow runs, the live study's check before a --resume, and the checkpoint
tidy-up after publishing. One object, so run_trials needs a few lines, not a dozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mnist_net.cli import say
from tuner import disk, study, tracking


@dataclass
class Watch:
    summary_dir: Path
    mlflow_uri: str | None = None
    parent_run_id: str | None = None
    callbacks: list = field(default_factory=list)

    def end(self, best: dict | None, interrupted: bool = False) -> None:
        """End the progress line; close the MLflow parent run: FINISHED with the search's best, or KILLED."""
        for callback in self.callbacks:
            getattr(callback, "close", lambda: None)()
        if self.mlflow_uri and self.parent_run_id:
            tracking.end_search(self.mlflow_uri, self.parent_run_id, best, "KILLED" if interrupted else "FINISHED")


def start(exp, settings, placement) -> Watch:
    """The search's callbacks for the experiment `exp` (a tuner.search.Experiment): the progress
    line unless exp.verbose (Ray's own tables then), and Ray's MLflow logger under a parent run
    with exp.mlflow (already checked by the parser)."""
    from tuner import progress  # imports Ray Tune: not at tuner.search's import

    w = Watch(exp.summary_dir, exp.mlflow)
    if not exp.verbose:
        w.callbacks.append(progress.for_search(settings, resumed=exp.resumed))
    if w.mlflow_uri:
        w.parent_run_id = tracking.start_search(w.mlflow_uri, exp.name, settings, placement, exp.summary_dir)
        w.callbacks.append(tracking.trial_callback(w.mlflow_uri, w.parent_run_id, settings.max_epochs))
        say(f"MLflow: {w.mlflow_uri}, experiment {tracking.EXPERIMENT}, parent run {w.parent_run_id}")
    say(f"live Optuna study: optuna-dashboard {study.storage_url(exp.summary_dir / study.FILE)}")
    return w


def check_resume(summary_dir: Path, experiment_dir: str, name: str) -> None:
    """ValueError (one line naming the file) when the study a --resume continues is missing,
    locked or corrupt; a search started before the live study has none to check."""
    local = "://" not in experiment_dir
    if (local and study.is_live(Path(experiment_dir))) or (summary_dir / study.FILE).exists():
        study.check(summary_dir / study.FILE, name)


def tidy(grid, experiment_dir: str, best: dict, keep: bool) -> None:
    say(disk.tidy(grid, experiment_dir, best["trial_id"], keep))

"""What tuner.run.run_trials adds around tuner.fit(): the progress line, MLflow runs, the live study's
check before a --resume, and, once the search is published, the tidy-up of spent checkpoints."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mnist_net.cli import say
from tuner import study, tracking
from tuner.results import cut_short, ray_trial_id


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
    """The callbacks of the experiment `exp` (a tuner.search.Experiment): the progress line unless
    exp.verbose (Ray's tables then), and Ray's MLflow logger under a parent run with exp.mlflow."""
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

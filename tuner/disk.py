"""What a published search keeps on disk: the checkpoints something can still use.

Each trial keeps its two newest checkpoints while the search runs (CheckpointConfig
num_to_keep=2): about 5 MB each, 256 MB for a 32-trial search. Once the search is published:
- a trial that ended (finished, stopped by ASHA, diverged) is never trained again: its
  checkpoints go, except the best trial's newest (its weights, to inspect or evaluate);
- a trial that --resume would restart (errored: resume_errored; cut by the time budget: no
  done=True in its last result) keeps its newest checkpoint, the one a restore loads.
Only a local storage folder is tidied; `--keep-checkpoints` keeps everything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuner.results import cut_short, ray_trial_id


def size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def checkpoints(trial_dir: Path) -> list[Path]:
    """A trial's checkpoint folders, oldest first (Ray numbers them checkpoint_000000, ...)."""
    return sorted(p for p in Path(trial_dir).glob("checkpoint_*") if p.is_dir())


def removable(grid, best_trial_id: str) -> list[Path]:
    """The checkpoint folders nothing can use once the search is published (module docstring)."""
    doomed = []
    for result in grid:
        trial_id, ended = ray_trial_id(result), not cut_short(result) and result.error is None
        found = checkpoints(Path(result.path))
        keep_newest = trial_id == best_trial_id or not ended
        doomed.extend(found[:-1] if keep_newest else found)
    return doomed


def tidy(grid, experiment_dir: str, best_trial_id: str, keep: bool) -> str:
    """Remove what `removable` names unless `keep`; return the line to print (sizes before/after)."""
    if "://" in experiment_dir and not experiment_dir.startswith("file://"):
        return f"checkpoints kept: {experiment_dir} is remote storage"
    folder = Path(experiment_dir.removeprefix("file://"))
    before = size_bytes(folder)
    if keep:
        return f"storage {folder}: {megabytes(before)} (--keep-checkpoints: every checkpoint kept)"
    doomed = removable(grid, best_trial_id)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    after = size_bytes(folder)
    return (f"storage {folder}: {megabytes(after)} (removed {len(doomed)} checkpoints nothing can use any more, "
            f"{megabytes(before - after)}; --keep-checkpoints keeps them)")

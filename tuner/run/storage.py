"""Where a search keeps its experiment: Ray storage (a folder or a URI), and the experiments in it."""

from __future__ import annotations

from pathlib import Path

from mnist_net.files import prepare_out_dir


def storage_path(storage: str | None, out: Path) -> str:
    """Ray's storage: a URI as given, else the absolute folder (default <out>/ray). Creates nothing."""
    if storage is not None and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage or Path(out) / "ray").expanduser().resolve())


def resolve_storage(storage: str | None, out: Path) -> str:
    """storage_path, its folder made and checked writable."""
    path = storage_path(storage, out)
    return path if "://" in path else str(prepare_out_dir(path))


def can_restore(storage: str, name: str | None) -> bool:
    from ray import tune

    return bool(name) and tune.Tuner.can_restore(f"{storage}/{name}")


def newest_experiment(storage: str) -> str | None:
    """The most recently modified restorable experiment in a local storage folder."""
    if "://" in storage or not Path(storage).is_dir():
        return None
    folders = sorted((p for p in Path(storage).iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p.name for p in folders if can_restore(storage, p.name)), None)

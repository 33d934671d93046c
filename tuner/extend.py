"""Extend a finished search: K more trials in a new experiment whose TPE starts from its trials.

`python -m tuner.search --extend NAME --num-samples K`. Ray's Tuner.restore only resumes an interrupted experiment
(ray #18847, #30223), so this is a new one, warm-started with OptunaSearch's points_to_evaluate + evaluated_rewards:
each finished trial of NAME (and of searches it extended) reaches Optuna as completed, with its reported reward.
Rewards compare only at one fidelity, so it keeps NAME's epochs, subset sizes, seed; best_config.json: best of both."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mnist_net import files
from mnist_net.cli import say
from mnist_net.runtime import git_commit
from tuner import space
from tuner.settings import SearchSettings
from tuner.space import PARAMS, space_record, study_value

LINK_FILE = "extends.json"  # in the extension's summary folder: what a --resume needs to publish
# Flags an extension may set; every other settings flag must equal the parent's (fidelity).
MAY_DIFFER = ("num_samples", "max_concurrent", "gpus_per_trial", "cpus_per_trial", "confirm_top", "confirm_seeds",
              "confirm_epochs", "confirm_train_size", "checkpoint_every")


@dataclass(frozen=True)
class Extension:
    parent: str  # the extended experiment's name
    parent_best: dict  # its best_config.json: already the best over its own ancestors
    trials: pd.DataFrame  # its trials and its ancestors', an "experiment" column says whose
    settings: SearchSettings  # the extension's: the parent's fidelity, its own trial count
    space: str  # "recorded" or how an unrecorded parent space was accepted

    def warm_start(self) -> tuple[list[dict], list[float]]:
        """(points_to_evaluate, evaluated_rewards): OptunaSearch's last val_acc; diverged: chance; errored: left out."""
        scored = [(r, study_value(r.status, r.last_val_acc)) for r in self.trials.itertuples()]
        ok = [(r, v) for r, v in scored if v is not None]  # batch_size below: one of Optuna's int choices, exactly
        points = [{p: int(getattr(r, p)) if p == "batch_size" else float(getattr(r, p)) for p in PARAMS} for r, _ in ok]
        return points, [v for _, v in ok]

    def pool(self, own: pd.DataFrame, name: str) -> pd.DataFrame:
        """Every trial of the lineage, this experiment's last, to choose the best from."""
        return pd.concat([self.trials, own.assign(experiment=name)], ignore_index=True)

    def link(self, best: dict, row: pd.Series, pool_size: int) -> dict:
        """best_config.json's extension fields; the seed-config baseline is the parent's trial."""
        return {**best, "extends": self.parent, "best_experiment": row["experiment"],
                "seed_config_val_acc": self.parent_best["seed_config_val_acc"],
                "seed_config_experiment": self.parent_best.get("seed_config_experiment", self.parent),
                "trials_with_parents": pool_size, "parent_space": self.space}

    def save(self, folder: Path) -> None:
        files.write_json(folder / LINK_FILE, {"extends": self.parent, "parent_space": self.space,
                                              "warm_start_trials": len(self.warm_start()[0])})


def requested(args, out: Path, storage: str) -> Extension:
    """The extension `args` asks for, or ValueError (one line); writes nothing, starts no Ray (`out` may not exist)."""
    name = args.extend
    if args.resume:
        raise ValueError("--extend starts a new experiment; --resume continues an interrupted one: pick one")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"--extend {name!r} is not a search name (a folder in --out)")
    folder = out / name
    if not (folder / "best_config.json").is_file():
        from tuner.run.storage import can_restore  # imports Ray Tune: only for a search that did not finish

        if can_restore(storage, name):
            raise ValueError(f"search {name!r} is unfinished; finish it first with `python -m tuner.search "
                             f"--resume --name {name} --out {out}`, then extend it")
        what = "has no best_config.json (it did not finish)" if folder.is_dir() else "does not exist"
        raise ValueError(f"cannot extend {name!r}: {folder} {what}; --extend takes a finished search in --out")
    parent_best = files.read_json(folder / "best_config.json", str(folder / "best_config.json"))
    trials = lineage(out, name)
    space = parent_space(name, parent_best, trials)
    settings = extension_settings(args, name, SearchSettings.load(folder / "search_settings.json"))
    commit = (parent_best.get("provenance") or {}).get("git_commit")
    if commit and commit.removesuffix("-dirty") != (git_commit() or "").removesuffix("-dirty"):
        say(f"note: {name} ran at commit {commit[:12]}; its rewards compare with this code's only if "
            "training is unchanged since")
    return Extension(parent=name, parent_best=parent_best, trials=trials, settings=settings, space=space)


def lineage(out: Path, name: str) -> pd.DataFrame:
    """trials.csv of `name` and of every search it extends, each row tagged with its experiment."""
    frames, seen = [], set()
    while name and name not in seen:
        seen.add(name)
        path = out / name / "trials.csv"
        if not path.is_file():
            raise ValueError(f"cannot extend: {path} is missing (needed for the warm start)")
        frames.append(pd.read_csv(path).assign(experiment=name))
        link = out / name / LINK_FILE
        name = files.read_json(link, str(link)).get("extends") if link.is_file() else None
    return pd.concat(frames[::-1], ignore_index=True)


def parent_space(name: str, parent_best: dict, trials: pd.DataFrame) -> str:
    """"recorded" if NAME's space is today's; unrecorded passes if all trials lie inside it (Optuna rejects others)."""
    recorded = parent_best.get("space")
    if recorded is not None:
        if recorded != space_record():
            raise ValueError(f"search {name!r} searched a different space ({recorded}) than tuner/space.py "
                             f"defines now ({space_record()}); start a new search instead")
        return "recorded"
    if not space.contains(trials):
        raise ValueError(f"search {name!r} has no recorded space and some of its trials lie outside "
                         "tuner/space.py's ranges: it searched a different space; start a new search instead")
    return "not recorded; every trial lies inside the current space"


def extension_settings(args, name: str, parent: SearchSettings) -> SearchSettings:
    """The parent's settings with the flags an extension may change; a differing fidelity flag is refused."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchSettings)  # a flag's dest is its field
             if getattr(args, f.name, None) is not None}
    conflicts = sorted(k for k, v in given.items() if k not in MAY_DIFFER and v != getattr(parent, k))
    if getattr(args, "smoke_test", False):
        conflicts.insert(0, "smoke_test")
    if conflicts:
        flags = ", ".join("--" + k.replace("_", "-") for k in conflicts)
        raise ValueError(f"{flags}: an extension keeps {name!r}'s settings so rewards compare "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in MAY_DIFFER)} may change)")
    return dataclasses.replace(parent, **{k: v for k, v in given.items() if k in MAY_DIFFER})


def of_resumed(out: Path, name: str, settings: SearchSettings) -> Extension | None:
    """The extension a resumed experiment `name` was started as, or None if it is not one."""
    link = out / name / LINK_FILE
    if not link.is_file():
        return None
    recorded = files.read_json(link, str(link))
    parent = recorded["extends"]
    best_file = out / parent / "best_config.json"
    return Extension(parent=parent, parent_best=files.read_json(best_file, str(best_file)),
                     trials=lineage(out, parent), settings=settings, space=recorded.get("parent_space", "recorded"))

"""The confirm stage's runs: one Ray task per (config, seed), each saved as soon as it ends. A run already saved for
the same config, seed and recipe is read back, not retrained, so an interrupted confirm stage, or one asked for more
seeds (`--seeds 5` after 3), trains only what is missing. Saved: <out>/runs/<key>.json (numbers, curves), .npy (test
predictions, uint8), .pt (CPU weights, not committed)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from mnist_net import files
from mnist_net.cli import say
from mnist_net.config import TrainConfig
from mnist_net.data import eval_split_name
from mnist_net.engine import build_training, fit, predict
from mnist_net.runtime import autocast, autocast_dtype
from tuner import worker
from tuner.confirm.recipe import Deadline, Pace, Recipe
from tuner.confirm.report import Candidate
from tuner.plan import placement
from tuner.run import progress
from tuner.space import PARAMS


def run_one(params: dict, seed: int, recipe: Recipe, data_dir: str, cpus: int, changes: dict | None = None) -> dict:
    """One run, as a Ray task: fit on the recipe's split, predict the full test split once; returns plain data only."""
    device = worker.worker_device(cpus)
    splits = worker.worker_splits(data_dir)
    cfg = TrainConfig.from_dict(dict(params), TrainConfig(
        epochs=recipe.epochs, seed=seed, train_split=recipe.train_split, train_size=recipe.train_size,
        **(changes or {})))
    train = splits[cfg.train_split].subset(cfg.train_size, seed).to(device)
    evals = splits[eval_split_name(cfg.train_split)].to(device)  # the whole val (or, for 60k, test) split
    start = time.perf_counter()
    training = build_training(cfg, device)
    history = fit(cfg, train, evals, device=device, training=training)
    with autocast(device, autocast_dtype(device, cfg.precision)):
        preds = predict(training.forward, splits["test"].to(device), channels_last=cfg.channels_last)
    preds = preds.to(torch.uint8).cpu().numpy()
    return {"seed": seed, "config": {p: getattr(cfg, p) for p in PARAMS}, "val_acc": history.epochs[-1].val_acc,
            "test_acc": 100.0 * float(np.mean(preds == splits["test"].labels.numpy())), "diverged": history.diverged,
            "seconds": time.perf_counter() - start, "epochs_history": [e.to_dict() for e in history.epochs],
            "predictions": preds, "device": str(device), "host": os.uname().nodename,
            "state_dict": {k: v.detach().cpu() for k, v in training.model.state_dict().items()}}


class RunStore:
    """Finished runs on disk, keyed by config, seed and recipe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, config: dict, seed: int, recipe: Recipe, suffix: str) -> Path:
        key = (f"lr{config['lr']:.6g}_m{config['momentum']:.6g}_b{config['batch_size']}"
               f"-{recipe.train_split}-{recipe.epochs}ep-{recipe.train_size or 'all'}-seed{seed}")
        return self.folder / (key + suffix)  # not with_suffix: the key has dots

    def load(self, config: dict, seed: int, recipe: Recipe) -> dict | None:
        try:
            run = json.loads(self.path(config, seed, recipe, ".json").read_text())
            run["predictions"] = np.load(self.path(config, seed, recipe, ".npy"))
        except (OSError, ValueError):  # absent or partial: train it again
            return None
        return run

    def weights(self, config: dict, seed: int, recipe: Recipe) -> Path:
        return self.path(config, seed, recipe, ".pt")

    def save(self, run: dict, recipe: Recipe) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        run, key = dict(run), (run["config"], run["seed"], recipe)
        if (state := run.pop("state_dict", None)) is not None:
            with files.atomic_path(self.weights(*key)) as tmp:
                torch.save(state, tmp)
        with files.atomic_path(self.path(*key, ".npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, run.pop("predictions"))
        files.write_json(self.path(*key, ".json"), run)  # last: its presence means the run is whole


def run_all(cands: list[Candidate], recipe: Recipe, data_dir: str, plan: placement.Placement, store: RunStore,
            changes: dict | None = None, predicted_s: float | None = None,
            deadline: Deadline | None = None) -> dict[str, list[dict]]:
    """Every (candidate, seed) run, read from the store or trained as Ray tasks submitted at once, seed by seed; with a
    deadline, the last seeds are dropped whole when the runs so far say the rest would end after it."""
    import ray

    runs = {(c.label, s): store.load(c.config, s, recipe) for c in cands for s in range(1, recipe.seeds + 1)}
    missing = [(c, s) for s in range(1, recipe.seeds + 1) for c in cands if runs[(c.label, s)] is None]
    # ray.remote(**options), not .options(): Ray takes max_calls (a fresh worker per GPU run) only there
    refs = {ray.remote(**placement.task_options(plan, f"confirm-{c.label.replace(' ', '')}-seed{s}"))(run_one).remote(
        dict(c.config), s, recipe, data_dir, plan.cpu_per_trial, changes): (c, s) for c, s in missing}
    bar = progress.runs_bar(len(runs), predicted_s, "confirm")
    bar.update(len(runs) - len(missing))  # read back from the store
    bar.refresh()
    pending, seeds = list(refs), recipe.seeds
    pace = Pace(plan.concurrent, pending)
    try:
        while pending:
            done, _ = ray.wait(pending, num_returns=1)
            pending.remove(done[0])
            (c, s), run = refs[done[0]], ray.get(done[0])
            store.save(run, recipe)
            runs[(c.label, s)] = store.load(c.config, s, recipe)
            bar.update(1)
            score = f"val {run['val_acc']:.2f}%" if run["val_acc"] is not None else f"test {run['test_acc']:.2f}%"
            bar.set_postfix_str(f"last: {c.label} seed {s}, {score}, {run['seconds']:.0f}s")  # no val at 60k
            if deadline is not None:
                pace.ended(run["seconds"] / deadline.run_s(run["config"], recipe))
                pending, seeds = fit_deadline(deadline, pace, refs, pending, recipe, seeds)
    except BaseException:  # a failed run or Ctrl-C: the others are no longer wanted; saved runs stay
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return {c.label: [runs[(c.label, s)] for s in range(1, seeds + 1)] for c in cands}


def fit_deadline(deadline: Deadline, pace: Pace, refs: dict, pending: list, recipe: Recipe,
                 seeds: int) -> tuple[list, int]:
    """(pending, seeds) after dropping whole seeds, last first, while the runs left would end after the deadline."""
    import ray

    while seeds > 1 and pace.left_s([deadline.run_s(refs[r][0].config, recipe) for r in pending],
                                    pending) + time.monotonic() > deadline.end + deadline.slack_s:
        drop = [r for r in pending if refs[r][1] == seeds]
        pending = [r for r in pending if r not in drop]
        for ref in drop:
            ray.cancel(ref, force=True)
        say(f"confirm stage: runs take {pace.ratio():.2f}x their prediction; seed {seeds} dropped to end "
            "within the time budget")
        seeds -= 1
    return pending, seeds

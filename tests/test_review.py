"""The notebook's full-recipe view, and which config it was of; the confirm stage's table and ranking; a
search still running, read back from Ray's trial files."""

import json
import os

import pandas as pd

from tuner import review

BEST = {"lr": 0.175, "momentum": 0.572, "batch_size": 32}
SEED = {"lr": 0.01, "momentum": 0.9, "batch_size": 512}


def make_review(tmp_path) -> review.Review:
    best = {"config": dict(BEST), "experiment": {"name": "s", "summary_dir": "s"}}
    return review.Review(folder=tmp_path / "s", best=best, trials=pd.DataFrame(), epochs=pd.DataFrame(),
                         retrain={"epochs": 2})


def write_full(tmp_path, config: dict) -> None:
    folder = tmp_path / review.FULL_RECIPE_DIR
    folder.mkdir()
    (folder / "retrain.json").write_text(json.dumps({"epochs": 20, "best": {"config": config}}))


def test_full_recipe_of_this_search_replaces_only_the_retrain(tmp_path):
    rev = make_review(tmp_path)
    assert review.full_recipe(rev, tmp_path) is None  # not run yet
    write_full(tmp_path, BEST)
    full = review.full_recipe(rev, tmp_path)
    assert full.retrain["epochs"] == 20 and full.best is rev.best and rev.retrain["epochs"] == 2


def test_full_recipe_of_another_winner_says_so(tmp_path):
    write_full(tmp_path, {**BEST, "lr": 0.01})
    rev = make_review(tmp_path)
    full = review.full_recipe(rev, tmp_path)
    assert "an earlier search's winner" in review.full_recipe_note(rev, full)
    write_full_again = tmp_path / review.FULL_RECIPE_DIR / "retrain.json"
    write_full_again.write_text(json.dumps({"epochs": 20, "best": {"config": BEST}}))
    assert "this search's confirmed winner" in review.full_recipe_note(rev, review.full_recipe(rev, tmp_path))


def entry(label, acc):
    return {"label": label, "config": dict(BEST), "test_acc": [acc], "test_acc_mean": acc, "test_acc_std": 0.0,
            "proxy_val_acc": acc - 1, "val_acc_mean": acc - 0.5}


def test_confirm_table_lists_every_confirmed_config_and_marks_the_winner(tmp_path):
    rev = make_review(tmp_path)
    cands = [entry("trial 3", 99.0), entry("trial 7", 98.9), entry("seed_config", 98.5)]
    rev.retrain = {"candidates": cands, "winner": {"label": "trial 3"}, "best": cands[0], "seed_config": cands[2],
                   "ranking": {"tau": -0.33, "pvalue": 1.0, "configs": 3}, "warnings": ["the proxy ranked ..."]}
    table = review.retrain_table(rev)
    assert list(table["config"]) == ["trial 3", "trial 7", "seed_config"]
    assert list(table["winner"]) == [True, False, False]
    assert list(table["proxy_val_acc"]) == [98.0, 97.9, 97.5]
    assert review.ranking(rev).splitlines() == ["proxy vs confirmation ranking of 3 configs: Kendall tau -0.33 (p = 1)",
                                                "warning: the proxy ranked ..."]
    old = {"best": entry("best", 99.0), "seed_config": entry("seed_config", 98.0)}  # a retrain.json from before
    rev.retrain = old
    assert list(review.retrain_table(rev)["config"]) == ["best", "seed_config"] and "no ranking" in review.ranking(rev)


def test_trial_curves_mark_ashas_rungs(tmp_path):
    rev = make_review(tmp_path)
    rev.best["search"] = {"max_epochs": 20, "grace_period": 2, "reduction_factor": 3}
    rev.trials = pd.DataFrame([{"trial_id": "t1", **BEST}])
    rev.epochs = pd.DataFrame({"trial_id": "t1", "epoch": range(1, 21), "val_acc": range(80, 100)})
    ax = review.trial_curves(rev).axes[0]
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"] == [2, 6, 18]


def write_trial(experiment, n: int, config: dict, lines: list) -> None:
    """A Ray trial folder as a running search leaves it: params.json, result.json (one line per report)."""
    folder = experiment / f"train_s5_{n}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(config))
    (folder / "result.json").write_text("\n".join(json.dumps(r) if isinstance(r, dict) else r for r in lines))
    os.utime(folder / "params.json", (1000 + n, 1000 + n))  # creation order


def test_a_running_search_reads_back_from_rays_files(tmp_path):
    assert review.load(tmp_path) is None and review.load(tmp_path, "r") is None  # nothing there yet
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "search_settings.json").write_text(json.dumps({"max_epochs": 3, "num_samples": 8}))
    ray_dir = tmp_path / "ray" / "r"

    def rep(tid, epoch, acc, **kw):
        return {"trial_id": tid, "training_iteration": epoch, "val_acc": acc, **kw}

    write_trial(ray_dir, 1, BEST, [rep("a", 1, 90.0), rep("a", 2, 93.0), rep("a", 2, 95.0),  # epoch 2 retried
                                   rep("a", 3, 94.0, done=True)])
    write_trial(ray_dir, 2, SEED, [rep("b", 1, 80.0, done=True)])
    write_trial(ray_dir, 3, BEST, [rep("c", 1, 97.0), rep("c", 2, 99.0, diverged=True, done=True)])
    write_trial(ray_dir, 4, SEED, [rep("d", 1, 96.0), '{"trial_id": "d", "training_it'])  # a line being written
    rev = review.load(tmp_path, "r")
    assert list(rev.trials["trial_id"]) == ["a", "b", "c", "d"] and list(rev.trials["trial"]) == [1, 2, 3, 4]
    assert list(rev.trials["status"]) == ["finished", "stopped", "diverged", "running"]
    assert list(rev.trials["stopped_early"]) == [False, True, False, False]
    assert list(rev.trials["epochs_run"]) == [3, 1, 2, 1] and list(rev.trials["best_epoch"]) == [2, 1, 2, 1]
    assert list(rev.trials["best_val_acc"]) == [95.0, 80.0, 99.0, 96.0]
    assert list(rev.epochs[rev.epochs["trial_id"] == "a"]["val_acc"]) == [90.0, 95.0, 94.0] and len(rev.epochs) == 7
    # the best so far: the running trial's 96 %, not the diverged trial's 99 %
    assert rev.best["running"] and rev.best["config"] == SEED and rev.best["val_acc"] == 96.0
    assert rev.best["trial_id"] == "d" and rev.best["epoch"] == 1 and rev.best["search"]["trials"] == 4
    write_full(tmp_path, SEED)
    assert rev.name == "r" and rev.retrain is None and review.full_recipe(rev, tmp_path) is None  # not while running

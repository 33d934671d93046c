"""The notebook's full-recipe view, and which config it was of; the confirm stage's table and ranking."""

import json

import pandas as pd

from tuner import review

BEST = {"lr": 0.175, "momentum": 0.572, "batch_size": 32}


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

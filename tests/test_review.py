"""The notebook's full-recipe view: shown only for the search whose best config it retrained."""

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


def test_full_recipe_of_another_winner_is_not_shown(tmp_path):
    write_full(tmp_path, {**BEST, "lr": 0.01})
    assert review.full_recipe(make_review(tmp_path), tmp_path) is None

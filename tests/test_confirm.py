"""tuner.confirm on constructed trials and runs: which configs are confirmed, who wins and why,
Kendall's tau and its warnings, the report's verdict. No Ray, no training."""

import math

import numpy as np
import pandas as pd
import pytest

from tuner.confirm import report
from tuner.confirm.recipe import Recipe
from tuner.confirm.report import SEED_LABEL, Candidate
from tuner.space import SEED_CONFIG

A = {"lr": 0.05, "momentum": 0.9, "batch_size": 32}
B = {"lr": 0.02, "momentum": 0.8, "batch_size": 64}
C = {"lr": 0.1, "momentum": 0.6, "batch_size": 32}


def trials(rows):
    return pd.DataFrame([{"trial": i + 1, "trial_id": f"t{i + 1}", **cfg, "best_val_acc": acc, "status": status}
                         for i, (cfg, acc, status) in enumerate(rows)])


def test_candidates_are_the_top_distinct_configs_then_the_seeds():
    t = trials([(SEED_CONFIG, 73.2, "finished"), (A, 98.9, "finished"), (dict(A), 98.9, "stopped"),
                (B, 99.1, "diverged"), (C, 98.7, "stopped"), (B, 98.0, "finished"), (C, 99.5, "errored")])
    got = report.candidates(t, 3)
    assert [c.label for c in got] == ["trial 2", "trial 5", "trial 6", SEED_LABEL]  # A once; diverged/errored never
    assert [c.config for c in got] == [A, C, B, SEED_CONFIG]
    assert [c.proxy_val_acc for c in got] == [98.9, 98.7, 98.0, 73.2] and got[0].trial_id == "t2"
    assert [c.label for c in report.candidates(t, 1)] == ["trial 2", SEED_LABEL]
    # a search whose seed's-config trial failed still confirms against the seed's config, unscored
    assert report.candidates(t.iloc[1:], 1)[-1] == Candidate(SEED_LABEL, SEED_CONFIG, None)
    with pytest.raises(ValueError, match="no finished trial besides the seed's config"):
        report.candidates(t.iloc[:1], 3)


def summaries(vals):
    return {label: {"val_acc_mean": v, "val_acc": [v]} for label, v in vals.items()}


CANDS = [Candidate("trial 2", A, 98.9), Candidate("trial 5", C, 98.7), Candidate(SEED_LABEL, SEED_CONFIG, 73.2)]


def test_the_winner_is_chosen_on_val_and_the_verdict_takes_the_best_searched():
    winner, challenger, why = report.select(CANDS, summaries({"trial 2": 98.8, "trial 5": 99.0, SEED_LABEL: 98.5}))
    assert winner is challenger is CANDS[1]
    assert why.startswith("highest mean val_acc over 1 seed(s) on the whole val split: 99.00%")
    winner, challenger, _ = report.select(CANDS, summaries({"trial 2": 98.8, "trial 5": 99.0, SEED_LABEL: 99.2}))
    assert (winner, challenger) == (CANDS[2], CANDS[1])
    rank, warnings = report.ranking(CANDS, summaries({"trial 2": 98.8, "trial 5": 99.0, SEED_LABEL: 99.2}), winner)
    assert rank["tau"] == pytest.approx(-1.0) and rank["labels"] == ["trial 2", "trial 5", SEED_LABEL]
    assert any("Kendall tau -1.00" in w for w in warnings)
    assert any("scored the seed's config below trial 2" in w and "confirmation ranks it first" in w for w in warnings)
    rank, warnings = report.ranking(CANDS, summaries({"trial 2": 99.1, "trial 5": 99.0, SEED_LABEL: 98.2}), CANDS[0])
    assert rank["tau"] == pytest.approx(1.0) and warnings == []


def run(seed, val, preds):
    return {"seed": seed, "val_acc": val, "test_acc": 100.0 * float(np.mean(preds == LABELS)), "diverged": False,
            "seconds": 1.0, "epochs_history": [], "device": "cpu", "host": "h", "predictions": preds}


LABELS = np.arange(10_000) % 10


def flipped(n_wrong, seed):
    preds = LABELS.copy()
    wrong = np.random.default_rng(seed).choice(len(LABELS), n_wrong, replace=False)
    preds[wrong] = (preds[wrong] + 1) % 10
    return preds


def test_report_records_every_run_the_winner_tau_and_a_verdict():
    runs = {"trial 2": [run(s, 99.0 + s / 10, flipped(60, s)) for s in (1, 2, 3)],
            "trial 5": [run(s, 98.7, flipped(90, 10 + s)) for s in (1, 2, 3)],
            # 149, 150, 151 wrong: the seeds' differences spread, so the paired t interval applies (equal
            # differences would pool the seeds' 30k images into a bootstrap: seconds more)
            SEED_LABEL: [run(s, 98.4, flipped(148 + s, 20 + s)) for s in (1, 2, 3)]}
    rep = report.report(CANDS, runs, LABELS, Recipe(3, 4, 8500))
    assert rep["winner"]["label"] == "trial 2" and rep["best"]["label"] == "trial 2"
    assert rep["best"]["test_acc"] == pytest.approx([99.4] * 3)
    assert rep[SEED_LABEL]["test_acc_mean"] == pytest.approx(98.5)
    assert rep["ranking"]["tau"] == pytest.approx(1.0)
    assert rep["comparison"]["outcome"] in ("better_on_every_seed", "better")
    assert rep["comparison"]["verdict"].startswith("the confirmed winner (trial 2) beats the seed's config")
    assert rep["comparison"]["verdict"].endswith("at 4 epochs on 8,500 images (1/35 of the seed's 20 × 60k), 3 seeds")
    assert rep["comparison"]["starved"]  # 98.5 % is 0.77 pp below the seed recipe's 99.27 %
    lines = report.lines(rep)
    assert lines[-2].startswith("confirmed winner: trial 2") and lines[-1] == rep["comparison"]["verdict"]
    assert any(line.startswith("proxy vs confirmation ranking of 3 configs: Kendall tau +1.00") for line in lines)


def test_the_seeds_60k_recipe_has_nothing_to_select():
    cands = [Candidate("best", A, 98.9), Candidate(SEED_LABEL, SEED_CONFIG)]
    runs = {"best": [run(1, None, flipped(60, 1))], SEED_LABEL: [run(1, None, flipped(70, 2))]}
    rep = report.report(cands, runs, LABELS, Recipe(1, 20, None, "train+val"))
    assert rep["winner"]["label"] == "best" and rep["winner"]["why"].startswith("one config besides the seed's")
    assert rep["ranking"] == {} and rep["budget"]["select_images"] == 0
    assert rep["comparison"]["verdict"].endswith("at 20 epochs on 60k images (the seed's recipe), 1 seed")
    with pytest.raises(ValueError, match="train_split"):
        Recipe(1, 1, None, "test")
    assert not math.isnan(rep["comparison"]["mean_diff_pp"])


def test_pace_scales_the_predicted_runs_by_the_measured_ratio(monkeypatch):
    """The runs left, predicted at the calibrated speeds and scaled by how much slower the finished ones ran: the
    running ones count from when they started, the waiting ones queue for the slots."""
    from tuner.confirm import recipe

    clock = [100.0]
    monkeypatch.setattr(recipe.time, "monotonic", lambda: clock[0])
    pace = recipe.Pace(2, ["a", "b", "c", "d"])  # a and b start at 100
    clock[0] = 130.0  # a ended after 30 s, predicted 20: 1.5x
    pace.ended(1.5)
    # b: predicted 20 -> 30 s, started at 100, so 0 s left; c starts now (30 s); d waits for b's slot (30 s)
    assert pace.left_s([20.0, 20.0, 20.0], ["b", "c", "d"]) == pytest.approx(30.0)
    assert pace.ratio() == 1.5
    clock[0] = 140.0
    pace.ended(2.5)  # median of 1.5 and 2.5: 2x
    # c: 40 s from 130, so 30 left; d took b's slot now: 40 s
    assert pace.left_s([20.0, 20.0], ["c", "d"]) == pytest.approx(40.0)

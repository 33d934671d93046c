"""The time-budget planner: its arithmetic with fake throughputs (no Ray, no training), the
ladder's order, the duration parser, and one real calibration through `tuner.search`."""

import argparse
import math
import re
from dataclasses import replace
from itertools import pairwise

import pytest
from ray.tune.schedulers.async_hyperband import _Bracket

from mnist_net.cli import parse_duration
from tuner import space
from tuner.confirm import recipe
from tuner.plan import budget
from tuner.plan.budget import CONFIRM_SETUP_S, EPOCH_OVERHEAD_S, PUBLISH_S, SEARCH_SETUP_S, TRIAL_OVERHEAD_S
from tuner.settings import BudgetPlan, Prediction, SearchSettings, Throughput
from tuner.space import BATCH_SIZES, LADDER, Fidelity

# Every batch size at 1,000 training images/s (0.001 s per image), eval at 2,000 images/s.
FLAT = Throughput(train={b: 1000.0 for b in BATCH_SIZES}, eval=2000.0, load_s=0.0)
N, SLOTS = 32, 2


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("20m", 1200), ("1.5h", 5400), ("300", 300), (" 2M ", 120), ("0.5m", 30), (".5h", 1800),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "abc", "20x", "", "1e3", "inf", "nan", "5 min"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_the_ladder_starts_at_the_full_recipe_and_only_ever_gives_fidelity_up():
    assert LADDER[0] == Fidelity(max_epochs=20, train_size=50_000, eval_size=10_000, confirm_seeds=3,
                                 confirm_epochs=20, confirm_train_size=50_000)
    assert LADDER[-1] == Fidelity(max_epochs=3, train_size=1000, eval_size=2000, confirm_seeds=1,
                                  confirm_epochs=3, confirm_train_size=1000)
    for high, low in pairwise(LADDER):
        assert high != low
        assert all(getattr(low, k) <= getattr(high, k) for k in space.FIDELITY_FIELDS), (high, low)
        assert budget.predict(low, FLAT, N, SLOTS).total_s < budget.predict(high, FLAT, N, SLOTS).total_s


def test_the_order_in_which_fidelity_is_given_up():
    """The field each step lowers, runs of the same field collapsed: the documented order."""
    order = []
    for high, low in pairwise(LADDER):
        changed = "+".join(k for k in space.FIDELITY_FIELDS if getattr(low, k) != getattr(high, k))
        if not order or order[-1] != changed:
            order.append(changed)
    assert order == [
        "eval_size", "max_epochs+confirm_epochs",  # 20 -> 4 epochs, trials and confirmation
        "train_size+confirm_train_size", "eval_size", "train_size+confirm_train_size",  # 50k -> 2k
        "max_epochs+confirm_epochs", "train_size+confirm_train_size", "confirm_seeds",  # seeds last
    ]
    # a confirm run trains what a whole trial trains; 3 seeds until nothing else is left to give up
    for f in LADDER:
        assert (f.confirm_epochs, f.confirm_train_size) == (f.max_epochs, f.train_size)
    assert [f.confirm_seeds for f in LADDER[-3:]] == [3, 2, 1] and {f.confirm_seeds for f in LADDER[:-2]} == {3}


@pytest.mark.parametrize("max_epochs", [2, 3, 4, 6, 7, 8, 9, 12, 18, 20, 27, 35])
def test_rungs_are_the_milestones_of_rays_asha_below_max_t(max_epochs):
    s = SearchSettings(max_epochs=max_epochs)
    bracket = _Bracket(min_t=s.grace_period, max_t=max_epochs, reduction_factor=s.reduction_factor, s=0)
    rays = sorted(m for m, _ in bracket._rungs if m < max_epochs)
    assert space.rungs(max_epochs, s.grace_period, s.reduction_factor) == rays


def test_expected_epochs_by_hand():
    # 32 trials: 10 random ones pass a rung with 1/rf, 22 TPE-guided ones with 0.9
    p2 = (10 / 2 + 22 * 0.9) / 32  # 0.775
    assert space.pass_fraction(32, 2) == pytest.approx(p2)
    # 4 epochs: grace 1, rf 2, rungs at 1 and 2
    assert space.expected_epochs(4, 32) == pytest.approx(1 + p2 * 1 + p2**2 * 2)
    # 20 epochs: grace 2, rf 3, rungs at 2, 6, 18
    p3 = (10 / 3 + 22 * 0.9) / 32
    assert space.expected_epochs(20, 32) == pytest.approx(2 + p3 * 4 + p3**2 * 12 + p3**3 * 2)
    # 1 epoch: no rung, every trial runs it; 4 samples: all random
    assert space.expected_epochs(1, 32) == 1
    assert space.pass_fraction(4, 2) == 0.5


def test_prediction_by_hand():
    f = Fidelity(max_epochs=4, train_size=5000, eval_size=5000, confirm_seeds=2, confirm_epochs=2,
                 confirm_train_size=6000)
    epoch = 5000 * 0.001 + 5000 / 2000 + EPOCH_OVERHEAD_S  # 7.55 s
    p = 0.775
    trial = (1 + p + p * p * 2) * epoch + TRIAL_OVERHEAD_S
    full = 4 * epoch + TRIAL_OVERHEAD_S
    search = SEARCH_SETUP_S + N * trial / SLOTS + 0.5 * full / 2
    run = 2 * (6000 * 0.001 + 10_000 / 2000 + EPOCH_OVERHEAD_S) + 10_000 / 2000  # 27.1 s, val scored whole
    confirm = CONFIRM_SETUP_S + 4 * run  # 4 configs x 2 seeds, equal runs, on 2 slots: four rounds
    got = budget.predict(f, FLAT, N, SLOTS, spent_s=30.0)
    assert got.search_s == pytest.approx(search)
    assert got.confirm_s == pytest.approx(confirm)
    assert got.total_s == pytest.approx(30.0 + search + confirm + PUBLISH_S)
    assert budget.predict(f, FLAT, N, SLOTS, configs=2).confirm_s == pytest.approx(CONFIRM_SETUP_S + 2 * run)


def test_uneven_speeds_and_slots():
    # batch 512 (the seed config's) twice as slow: its retrain runs take longer than the best's
    slow = replace(FLAT, train={**FLAT.train, 512: 500.0}, load_s=2.0)
    assert slow.s_per_image() == pytest.approx((5 * 0.001 + 0.002) / 6)
    f = Fidelity(max_epochs=1, train_size=1000, eval_size=1000, confirm_seeds=1, confirm_epochs=1,
                 confirm_train_size=50_000)
    best = 50_000 * slow.s_per_image() + 5 + EPOCH_OVERHEAD_S + 5
    seed = 50_000 * 0.002 + 5 + EPOCH_OVERHEAD_S + 5
    # one slot: the runs one after the other; two: side by side, the longer one decides
    assert budget.predict(f, slow, 4, 1, configs=2).confirm_s == pytest.approx(CONFIRM_SETUP_S + 2 + best + seed)
    assert budget.predict(f, slow, 4, 3, configs=2).confirm_s == pytest.approx(CONFIRM_SETUP_S + 2 + seed)
    # 4 one-epoch trials on 3 slots: 4 x trial / 3 + (2/3) x trial / 2
    trial = 1000 * slow.s_per_image() + 0.5 + EPOCH_OVERHEAD_S + TRIAL_OVERHEAD_S
    assert budget.predict(f, slow, 4, 3).search_s == pytest.approx(SEARCH_SETUP_S + 2 + 4 * trial / 3 + trial / 3)
    assert budget.makespan([3, 3, 2, 2, 2], 2) == 7  # in order, each on the first free slot


def test_choose_takes_the_highest_level_that_fits():
    for k in (0, 5, 20, 31, 40, len(LADDER) - 2):
        exact = budget.predict(LADDER[k], FLAT, N, SLOTS, 30.0).total_s
        index, f, p = budget.pick_level(FLAT, exact, N, SLOTS, 30.0)
        assert (index, f, p.total_s) == (k, LADDER[k], exact)  # and no room for 100 more images
        index, _, _ = budget.pick_level(FLAT, exact - 0.01, N, SLOTS, 30.0)
        assert index == k + 1


def test_slack_goes_to_images_per_trial_by_hand():
    """A 4-epoch level: 100 more images per trial, and per confirm run, cost 7.262 s here (32 trials
    x 2.97625 epochs / 2 slots + the drain's 4 epochs / 4 + 4 configs x 3 seeds x 4 epochs / 2 slots
    of confirmation, at 0.001 s per image)."""
    level = LADDER.index(Fidelity(4, 5000, 5000, 3, 4, 5000))
    base = budget.predict(LADDER[level], FLAT, N, SLOTS).total_s
    per_100 = 100 * 0.001 * (N * space.expected_epochs(4, N) / SLOTS + 4 / 4 + 4 * 3 * 4 / SLOTS)
    assert per_100 == pytest.approx(7.262)
    index, f, p = budget.pick_level(FLAT, base + 10 * per_100 + 1, N, SLOTS)
    # 6,000 images per trial fit, 6,100 do not: the first level that fits is the 5,500 one
    assert LADDER[index] == Fidelity(4, 5500, 5000, 3, 4, 5500)
    assert f == Fidelity(4, 6000, 5000, 3, 4, 6000)
    assert p.total_s == pytest.approx(base + 10 * per_100)


def test_flags_the_user_gave_are_kept_at_every_level():
    index, f, _ = budget.pick_level(FLAT, 900, N, SLOTS, fixed={"max_epochs": 2, "confirm_seeds": 3})
    assert (f.max_epochs, f.confirm_seeds) == (2, 3)
    # with the train size fixed too, nothing fills the slack
    _, g, p = budget.pick_level(FLAT, 900, N, SLOTS, fixed={"train_size": 1234})
    assert g.train_size == 1234 and p.total_s <= 900


def test_a_budget_below_the_lowest_level_names_the_smallest_that_works():
    lowest = budget.predict(LADDER[-1], FLAT, N, SLOTS, 30.0).total_s
    with pytest.raises(budget.BudgetTooSmall) as info:
        budget.pick_level(FLAT, lowest - 1, N, SLOTS, 30.0)
    assert f"the smallest budget that works here is {math.ceil(lowest / 60)}m" in str(info.value)
    assert "and 4 configs to confirm" in str(info.value)  # K + 1 configs x 1 seed at the lowest level
    # more configs to confirm need more time
    with pytest.raises(budget.BudgetTooSmall, match="and 8 configs to confirm"):
        budget.pick_level(FLAT, lowest - 1, N, SLOTS, 30.0, configs=8)
    assert budget.predict(LADDER[-1], FLAT, N, SLOTS, 30.0, configs=8).total_s > lowest
    budget.pick_level(FLAT, math.ceil(lowest / 60) * 60, N, SLOTS, 30.0)  # which does
    # with a margin, the level must fit in the budget less the margin, and so must the smallest
    with pytest.raises(budget.BudgetTooSmall, match=f"works here is {math.ceil(lowest / 0.9 / 60)}m"):
        budget.pick_level(FLAT, lowest, N, SLOTS, 30.0, margin=0.1)
    _, _, p = budget.pick_level(FLAT, lowest / 0.9, N, SLOTS, 30.0, margin=0.1)
    assert p.total_s == pytest.approx(lowest)


@pytest.mark.slow
def test_too_small_a_budget_fails_after_a_real_calibration(tmp_path, capfd):
    """The whole path on a local Ray: calibration tasks, the plan, then one error line and exit 2."""
    import ray

    from tuner import search

    out = tmp_path / "results"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.delenv("RAY_ADDRESS", raising=False)
        search.main(["--time-budget", "5s", "--num-samples", "4", "--out", str(out), "--name", "tiny"])
    err = capfd.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "calibrating" in err
    last = err.splitlines()[-1]
    assert last.startswith("python -m tuner.search: error: --time-budget 5 s is too small here"), last
    assert re.search(r"the smallest budget that works here is \d+m$", last), last
    assert not ray.is_initialized() and not (out / "tiny").exists()


def test_the_confirm_stage_takes_the_time_the_search_left():
    """raise_confirm: the highest (epochs, images) of the ladder whose confirmation fits the time
    left, at the planned seeds and the candidates' own speeds; never below the plan."""
    planned = LADDER.index(Fidelity(4, 5000, 5000, 3, 4, 5000))
    f = LADDER[planned]
    speeds = [0.001, 0.001, 0.001]
    at_plan = budget.confirm_time(3, 4, 5000, speeds, FLAT, SLOTS)
    assert budget.raise_confirm(f, FLAT, at_plan, speeds, SLOTS) == (4, 5000)
    assert budget.raise_confirm(f, FLAT, at_plan / 2, speeds, SLOTS) == (4, 5000)  # never below the plan
    roomy = budget.confirm_time(3, 6, 50_000, speeds, FLAT, SLOTS)
    assert budget.raise_confirm(f, FLAT, roomy, speeds, SLOTS) == (6, 50_000)
    assert budget.raise_confirm(f, FLAT, roomy - 1, speeds, SLOTS) == (5, 50_000)
    # slower candidates (batch 32 at half speed) get less from the same time
    assert budget.raise_confirm(f, FLAT, roomy, [0.002] * 3, SLOTS)[0] < 6


def test_a_confirm_stage_that_no_longer_fits_shrinks_images_then_epochs_then_seeds():
    """shrink_confirm, the issue's case (the planned recipe would overrun the time left): fewer images first, then
    fewer epochs, then fewer seeds; always the largest that fits, never one that does not."""
    f = LADDER[LADDER.index(Fidelity(4, 5000, 5000, 3, 4, 5000))]
    speeds = [0.001] * 3
    at_plan = budget.confirm_time(3, 4, 5000, speeds, FLAT, SLOTS)
    seeds, epochs, images = budget.shrink_confirm(f, FLAT, at_plan * 0.8, speeds, SLOTS)
    assert (seeds, epochs) == (3, 4) and budget.MIN_CONFIRM_IMAGES < images < 5000
    assert budget.confirm_time(3, 4, images, speeds, FLAT, SLOTS) <= at_plan * 0.8
    bigger = budget._sizes(5000)[budget._sizes(5000).index(images) - 1]
    assert budget.confirm_time(3, 4, bigger, speeds, FLAT, SLOTS) > at_plan * 0.8  # the largest that fits
    fewest_images = budget.confirm_time(3, 4, budget.MIN_CONFIRM_IMAGES, speeds, FLAT, SLOTS)
    seeds, epochs, images = budget.shrink_confirm(f, FLAT, fewest_images - 1, speeds, SLOTS)
    assert (seeds, images) == (3, budget.MIN_CONFIRM_IMAGES) and epochs < 4
    one_epoch = budget.confirm_time(3, 1, budget.MIN_CONFIRM_IMAGES, speeds, FLAT, SLOTS)
    assert budget.shrink_confirm(f, FLAT, one_epoch - 1, speeds, SLOTS)[0] < 3
    assert budget.shrink_confirm(f, FLAT, 1.0, speeds, SLOTS) is None


def test_the_confirm_recipe_shrinks_and_says_so_when_the_plan_would_overrun(capsys):
    settings = SearchSettings(fidelity_mode="time", time_budget_s=1200.0, confirm_seeds=3, confirm_epochs=4,
                              confirm_train_size=5000, max_epochs=4, budget_plan=a_budget_plan())
    at_plan = budget.confirm_time(3, 4, 5000, [0.001] * 3, FLAT, SLOTS) + PUBLISH_S
    r, predicted = recipe.confirm_recipe(settings, at_plan * 0.8, [64, 64, 64], None, SLOTS)
    assert r.seeds == 3 and r.epochs == 4 and r.train_size < 5000 and predicted <= at_plan * 0.8 - PUBLISH_S
    assert "shrunk to fit the time left" in capsys.readouterr().err
    # the trials measured half the calibrated speed: the same time left buys fewer images
    slow = Throughput({b: 500.0 for b in BATCH_SIZES}, 1000.0)
    r_slow, _ = recipe.confirm_recipe(settings, at_plan * 0.8, [64, 64, 64], slow, SLOTS)
    assert r_slow.images() < r.images()


def test_the_speeds_are_learnt_from_the_trials_epochs():
    import pandas as pd

    epochs = pd.DataFrame({"batch_size": [64, 64, 64, 512], "images_per_s": [400.0, 500.0, 600.0, 900.0],
                           "eval_seconds": [2.0, 2.5, 3.0, 2.5]})
    thr = budget.measured(FLAT, epochs, eval_images=5000)
    assert thr.train[64] == 500.0 and thr.train[512] == 900.0 and thr.train[128] == 1000.0  # unseen: calibrated
    assert thr.eval == 2000.0  # 5,000 images in a median 2.5 s


def test_the_searchs_hard_stop_moves_as_the_trials_teach_the_confirm_stages_cost(capsys):
    """LearningStop: trials twice as slow as calibrated make the predicted confirm stage longer, so the search stops
    earlier (by what the confirm stage gains, within MOVE of the plan); faster ones give the search more; the smoke
    preset's stop never moves."""
    from tuner.run.deadline import MOVE, REPLAN_EVERY, LearningStop

    plan = a_budget_plan()
    plan = replace(plan, search_time_budget_s=1200.0 - 30.0 - plan.predicted.confirm_s - PUBLISH_S)  # as planned
    settings = SearchSettings(fidelity_mode="time", time_budget_s=1200.0, budget_plan=plan)

    def fed(speed: float, eval_s: float) -> LearningStop:
        stop = LearningStop(settings)
        for _ in range(REPLAN_EVERY):
            assert stop("t1", {"config": {"batch_size": 64}, "images_per_s": speed, "eval_seconds": eval_s}) is False
        return stop

    f = plan.fidelity
    same = fed(1000.0, f.eval_size / 2000.0)  # what the calibration said: the stop stays
    assert same.hard_stop_s == pytest.approx(plan.search_time_budget_s)
    slow = fed(250.0, f.eval_size / 500.0)
    thr = Throughput({**FLAT.train, 64: 250.0}, 500.0)
    confirm = budget.confirm_time(f.confirm_seeds, f.confirm_epochs, f.confirm_train_size, [thr.s_per_image()] * 3,
                                  thr, SLOTS)
    floor = MOVE[0] * plan.search_time_budget_s
    assert slow.hard_stop_s == pytest.approx(max(1200.0 - 30.0 - confirm - PUBLISH_S, floor))
    assert slow.hard_stop_s < same.hard_stop_s and slow._budget == slow.hard_stop_s
    assert "the search's hard stop moves to" in capsys.readouterr().err
    assert same.hard_stop_s < fed(4000.0, f.eval_size / 8000.0).hard_stop_s <= MOVE[1] * plan.search_time_budget_s
    smoke = SearchSettings(fidelity_mode="smoke", time_budget_s=30.0, budget_plan=BudgetPlan(25.0))
    stop = LearningStop(smoke)
    for _ in range(REPLAN_EVERY):
        stop("t1", {"config": {"batch_size": 64}, "images_per_s": 1.0, "eval_seconds": 9.0})
    assert stop.hard_stop_s == 25.0


def a_budget_plan(fixed=()) -> BudgetPlan:
    f = LADDER[40]
    p = budget.predict(f, FLAT, N, SLOTS, 30.0)
    return BudgetPlan(600.0, 41, f, tuple(fixed), p, FLAT, 12.5, SLOTS, 30.0)


def test_a_budget_plan_survives_search_settings_json_as_the_resume_reads_it(tmp_path):
    """The typed plan is what --resume reloads: the same values, and the JSON keys the notebook and
    best_config.json readers use (budget_plan.level, .fidelity, .predicted_s, .throughput)."""
    s = SearchSettings(fidelity_mode="time", time_budget_s=1200.0, budget_plan=a_budget_plan(["max_epochs"]))
    s.save(tmp_path / "s.json")
    loaded = SearchSettings.load(tmp_path / "s.json")
    assert loaded.budget_plan == replace(s.budget_plan, throughput=Throughput.from_dict(FLAT.to_dict()),
                                         predicted=Prediction(**s.budget_plan.predicted.to_dict()))
    record = s.to_dict()["budget_plan"]
    assert {"level", "levels", "fidelity", "fixed_by_flags", "predicted_s", "throughput",
            "spent_before_search_s", "search_time_budget_s"} == set(record)
    assert record["throughput"]["train_images_per_s"]["512"] == 1000.0 and record["levels"] == len(LADDER)
    assert loaded.search_time_budget_s == 600.0
    smoke = SearchSettings(fidelity_mode="smoke", time_budget_s=30.0, budget_plan=BudgetPlan(25.0))
    smoke.save(tmp_path / "smoke.json")
    assert SearchSettings.load(tmp_path / "smoke.json").budget_plan == BudgetPlan(25.0)


def test_an_older_search_settings_file_with_budget_still_loads(tmp_path):
    old = SearchSettings().to_dict()
    old["budget"] = old.pop("fidelity_mode")
    (tmp_path / "old.json").write_text(__import__("json").dumps(old))
    assert SearchSettings.load(tmp_path / "old.json") == SearchSettings()


def test_the_confirm_recipe_is_raised_from_the_typed_plan_unless_its_flags_were_given():
    settings = SearchSettings(fidelity_mode="time", time_budget_s=1200.0, confirm_seeds=3, confirm_epochs=4,
                              confirm_train_size=LADDER[40].confirm_train_size, max_epochs=4,
                              budget_plan=a_budget_plan())
    roomy = budget.confirm_time(3, 6, 50_000, [0.001] * 3, FLAT, SLOTS) + PUBLISH_S
    r, predicted = recipe.confirm_recipe(settings, roomy, [64, 64, 64], None, SLOTS)
    assert (r.epochs, r.train_size) == (6, None) and predicted <= roomy
    fixed = replace(settings, budget_plan=a_budget_plan(["confirm_epochs"]))
    r, predicted = recipe.confirm_recipe(fixed, roomy, [64, 64, 64], None, SLOTS)
    assert (r.epochs, predicted) == (4, None)


def test_calibration_on_several_nodes_names_each_nodes_speed(monkeypatch, capsys):
    """Calibration tasks spread over the nodes (SPREAD); the plan names each node's speed, the budget uses the mean."""
    from tuner.plan import search_plan

    def run(node, speed):
        return {"train": {b: speed for b in BATCH_SIZES}, "eval": 2 * speed, "load_s": 1.0, "pid": 1, "node": node}

    found = [run("10.0.0.1 (aaaa1111)", 600.0), run("10.0.0.2 (bbbb2222)", 200.0), run("10.0.0.2 (bbbb2222)", 300.0)]
    monkeypatch.setattr(search_plan, "calibration_runs", lambda *args: found)
    thr = search_plan.calibrate("/data", None, 1, 0.0, 3)
    assert capsys.readouterr().err.strip() == ("calibrated per node, training images/s per trial (mean over batch "
                                               "sizes): 10.0.0.1 (aaaa1111) 600, 10.0.0.2 (bbbb2222) 250")
    assert thr.train[64] == pytest.approx(1100 / 3) and thr.load_s == 1.0
    monkeypatch.setattr(search_plan, "calibration_runs", lambda *args: found[:1])
    search_plan.calibrate("/data", None, 1, 0.0, 1)
    assert capsys.readouterr().err == ""  # one node: nothing to compare

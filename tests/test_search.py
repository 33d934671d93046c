"""A real search, end to end: one smoke search (in-process, local Ray) checked from many sides,
then two tiny searches with the same seed. CPU only, real MNIST subsets."""

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
import torch
from helpers_search import MAX_EPOCHS, NUM_SAMPLES, run_search
from ray import tune

from mnist_net.engine import evaluate
from mnist_net.model import Net
from mnist_net.runtime import autocast_dtype
from tuner.settings import SMOKE_POINTS
from tuner.space import BATCH_SIZES, LR_RANGE, MOMENTUM_RANGE, PARAMS, SEED_CONFIG

pytestmark = pytest.mark.slow

SUMMARY_FILES = ["best_config.json", "trials.csv", "trial_epochs.csv", "study.db", "optimization_history.png",
                 "param_importances.png", "parallel_coordinate.png", "search_settings.json", "retrain.json",
                 "best_curves.png", "seed_curves.png", "best_model.pt", "test_predictions.npz"]


@pytest.fixture(scope="module")
def smoke(searched):
    """The session's one smoke search with its confirm stage (tests/conftest.py), checked from many
    sides here (helpers_search.MAX_EPOCHS explains why ASHA stops a trial in it on any CPU)."""
    return searched


@pytest.fixture(scope="module")
def trials(smoke) -> pd.DataFrame:
    return pd.read_csv(smoke.folder / "trials.csv")


@pytest.fixture(scope="module")
def epochs(smoke) -> pd.DataFrame:
    return pd.read_csv(smoke.folder / "trial_epochs.csv")


@pytest.fixture(scope="module")
def best(smoke) -> dict:
    return json.loads((smoke.folder / "best_config.json").read_text())


def test_search_exits_zero_and_writes_every_file(smoke):
    assert smoke.code == 0
    assert (smoke.out / "best_config.json").is_file()
    missing = [f for f in SUMMARY_FILES if not (smoke.folder / f).is_file()]
    assert missing == []
    # the stable copy in --out is byte for byte the summary folder's
    assert (smoke.out / "best_config.json").read_bytes() == (smoke.folder / "best_config.json").read_bytes()
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "best_curves",
                 "seed_curves"):
        png = (smoke.folder / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name


def test_trials_table_has_one_row_per_trial_seed_config_first(trials, epochs):
    assert list(trials["trial"]) == list(range(1, NUM_SAMPLES + 1))
    assert trials["trial_id"].is_unique
    first = trials.iloc[0]
    assert {p: first[p] for p in PARAMS} == SEED_CONFIG
    assert [{p: row[p] for p in PARAMS} for _, row in trials.iloc[1:3].iterrows()] == SMOKE_POINTS
    assert trials["lr"].between(*LR_RANGE).all()
    assert trials["momentum"].between(*MOMENTUM_RANGE).all()
    assert trials["batch_size"].isin(BATCH_SIZES).all()
    assert trials[list(PARAMS)].drop_duplicates().shape[0] == NUM_SAMPLES  # distinct suggestions
    assert set(trials["status"]) <= {"finished", "stopped"}
    assert ((trials["status"] == "finished") == (trials["epochs_run"] == MAX_EPOCHS)).all()
    assert (trials["stopped_early"] == (trials["status"] == "stopped")).all()
    assert trials["error"].isna().all()
    # where each trial trained: this one node's CPU, in the precision "auto" gives it (bf16 where native)
    here = "bf16" if autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16 else "fp32"
    assert trials["node"].nunique() == 1 and (trials["precision"] == here).all()
    assert trials["device"].str.startswith("cpu (").all()
    # every per-trial number agrees with the per-epoch table it summarises
    for row in trials.itertuples():
        mine = epochs[epochs["trial_id"] == row.trial_id]
        assert list(mine["epoch"]) == list(range(1, row.epochs_run + 1))
        assert mine["val_acc"].between(0, 100).all() and mine["val_loss"].gt(0).all()
        assert row.best_val_acc == mine["val_acc"].max()
        assert row.last_val_acc == mine["val_acc"].iloc[-1]
        assert mine.loc[mine["val_acc"].idxmax(), "epoch"] == row.best_epoch
        assert row.wall_time_s > 0
    assert set(epochs["trial_id"]) == set(trials["trial_id"])


def test_asha_stopped_a_trial_early(trials, epochs):
    """Why this holds on every CPU (bf16 or fp32 only): async ASHA (grace 1, reduction factor 2,
    max_t 3) stops a trial whose val_acc at epochs 1 or 2 is below the median of those recorded
    there before it. The smoke preset runs, after the seed's config (at chance after one 512-image
    epoch: one step), a config that reaches 20-30 % after it and one that stays at chance (one
    step at lr 0.001). Two trials at a time: trial 3, the non-learner, starts only after trial 1
    or 2 has ended, so both have recorded epoch 1 before it reports (unless one ran all 3 epochs
    before the other ran one, on 512 images each); the median of (chance, learner) is above
    chance, and trial 3 is stopped at epoch 1.
    """
    row3 = trials.iloc[2]
    assert (row3["status"], row3["epochs_run"]) == ("stopped", 1), trials[["trial", "status", "epochs_run"]]
    stopped = trials[trials["status"] == "stopped"]
    assert len(stopped) >= 1, trials[["trial", "status", "epochs_run"]]
    assert (stopped["epochs_run"] < MAX_EPOCHS).all()
    for row in stopped.itertuples():
        # it stopped at a rung, below the median of earlier reports there, hence below the best
        rung = row.epochs_run
        assert rung in (1, 2)
        at_rung = epochs[epochs["epoch"] == rung].set_index("trial_id")["val_acc"]
        others = at_rung.drop(row.trial_id)
        assert at_rung[row.trial_id] < others.max()


def test_best_config_keeps_the_searchs_best_trial_as_proxy_best(smoke, trials, best):
    ok = trials[trials["status"].isin(["finished", "stopped"])]
    top = ok.loc[ok["best_val_acc"].idxmax()]
    proxy = best["proxy_best"]
    assert proxy["config"] == {p: top[p] for p in PARAMS}
    assert isinstance(proxy["config"]["batch_size"], int)
    assert (proxy["val_acc"], proxy["epoch"], proxy["trial_id"]) == (top["best_val_acc"], top["best_epoch"],
                                                                     top["trial_id"])
    assert proxy["val_acc"] == trials["best_val_acc"].max()
    assert (best["metric"], best["mode"]) == ("val_acc", "max")
    assert best["seed_config"] == SEED_CONFIG
    assert best["seed_config_val_acc"] == trials.iloc[0]["best_val_acc"]
    storage = str(smoke.out / "ray")
    assert best["experiment"] == {"name": "smoke", "storage": storage, "ray_path": f"{storage}/smoke",
                                  "summary_dir": "smoke"}
    s = best["search"]
    assert (s["num_samples"], s["max_epochs"], s["train_size"], s["eval_size"], s["fidelity_mode"]) == \
        (NUM_SAMPLES, MAX_EPOCHS, 512, 500, "smoke")
    assert (s["time_budget_s"], s["budget_plan"], s["stopped_by_budget"], s["checkpoint_every"]) == \
        (None, None, False, None)
    assert (s["grace_period"], s["reduction_factor"], s["trials"]) == (1, 2, NUM_SAMPLES)
    assert s["status_counts"] == trials["status"].value_counts().to_dict()
    assert "2 trials at once" in s["plan"] and s["wall_time_s"] > 0
    assert best["seed"] == 0
    p = best["provenance"]
    assert dt.datetime.fromisoformat(p["time"]).tzinfo is not None
    assert {"torch", "ray", "optuna", "python"} <= set(p["versions"])
    assert p["versions"]["ray"] == ray.__version__
    assert "git_commit" in p and p["hardware"]["cpu_count"] >= 1
    saved = json.loads((smoke.folder / "search_settings.json").read_text())
    assert {k: s[k] for k in saved} == saved


def test_optuna_study_holds_every_trial(smoke, trials, epochs):
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{smoke.folder / 'study.db'}")
    assert len(study.trials) == NUM_SAMPLES
    for t, row in zip(study.trials, trials.itertuples(), strict=True):
        assert t.params == {p: getattr(row, p) for p in PARAMS}
        assert t.user_attrs["ray_trial_id"] == row.trial_id
        assert t.user_attrs["status"] == row.status and t.user_attrs["epochs_run"] == row.epochs_run
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.value == row.last_val_acc  # what OptunaSearch saw: the last report
        mine = epochs[epochs["trial_id"] == row.trial_id]
        assert t.intermediate_values == dict(zip(mine["epoch"], mine["val_acc"], strict=True))
    assert study.best_value == trials["last_val_acc"].max()


def test_confirm_stage_confirms_the_top_configs_and_names_the_winner(smoke, trials, best):
    report = json.loads((smoke.folder / "retrain.json").read_text())
    assert (report["epochs"], report["seeds"], report["recipe"]) == (1, [1], {
        "seeds": 1, "epochs": 1, "train_size": 1024, "train_split": "train"})
    assert Path(report["source"]) == smoke.folder / "trials.csv"
    labels = [c["label"] for c in report["candidates"]]
    assert labels[-1] == "seed_config" and len(labels) == 3  # the smoke preset's --confirm-top 2
    ok = trials[trials["status"].isin(["finished", "stopped"])].sort_values("best_val_acc", ascending=False)
    searched = [c for c in report["candidates"] if c["label"] != "seed_config"]
    assert [c["proxy_val_acc"] for c in searched] == sorted(c["proxy_val_acc"] for c in searched)[::-1]
    assert searched[0]["config"] == {p: ok.iloc[0][p] for p in PARAMS} or ok.iloc[0]["trial"] == 1
    for c in report["candidates"]:
        assert len(c["test_acc"]) == len(c["val_acc"]) == 1 and 0 < c["test_acc"][0] <= 100
        assert [e["epoch"] for e in c["epochs_history"][0]] == [1] and "val_acc" in c["epochs_history"][0][0]
    means = {c["label"]: c["val_acc_mean"] for c in report["candidates"]}
    assert report["winner"]["label"] == max(means, key=means.get)  # chosen on val, never test
    assert best["config"] == report["winner"]["config"] and best["confirmed"]["winner"] == report["winner"]["label"]
    assert best["confirmed"]["verdict"] == report["comparison"]["verdict"]
    assert report["comparison"]["outcome"] in ("better", "worse", "better_on_every_seed", "worse_on_every_seed",
                                                "disagree", "no_difference")
    rank = report["ranking"]
    assert rank["labels"] == [c["label"] for c in report["candidates"] if c["proxy_val_acc"] is not None]
    assert -1 <= rank["tau"] <= 1 and best["confirmed"]["kendall_tau"] == rank["tau"]
    assert "versions" in report["provenance"]
    runs = sorted(p.name for p in (smoke.folder / "runs").iterdir())
    assert len([r for r in runs if r.endswith(".json")]) == 3  # every (config, seed) run, saved as it ended


def test_best_model_is_the_confirmed_winner_and_scores_what_retrain_json_says(smoke, splits):
    state = torch.load(smoke.folder / "best_model.pt", weights_only=True)
    model = Net()
    model.load_state_dict(state)  # strict: every key and shape
    model = model.to(memory_format=torch.channels_last)  # as trained (TrainConfig.channels_last)
    report = json.loads((smoke.folder / "retrain.json").read_text())
    winner = next(c for c in report["candidates"] if c["label"] == report["winner"]["label"])
    stats = evaluate(model, splits["test"], amp_dtype=autocast_dtype(torch.device("cpu"), "auto"),
                     channels_last=True)
    assert math.isclose(stats.acc, winner["test_acc"][0], abs_tol=0.015)  # within one image


def test_ray_experiment_is_restorable(smoke):
    assert tune.Tuner.can_restore(str(smoke.out / "ray" / "smoke"))


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(argv, capfd) -> str:
    def started(*args, **kwargs):
        raise AssertionError("ray.init was called")  # these are refused before Ray starts

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(ray, "init", started)
        run_search(argv)
    err = capfd.readouterr().err  # fd-level: Ray's own logging too, had Ray started
    assert info.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_same_name_without_resume_is_refused_and_changes_nothing(smoke, capfd):
    before = fingerprint(smoke.out)
    assert "best_config.json" in before and "smoke/trials.csv" in before
    err = one_line_error(smoke.argv, capfd)
    assert "experiment 'smoke' already exists" in err and "--resume" in err
    assert fingerprint(smoke.out) == before


def test_resume_of_an_unknown_name_is_refused(smoke, capfd):
    before = fingerprint(smoke.out)
    err = one_line_error(["--resume", "--name", "smoke2", "--out", str(smoke.out)], capfd)
    assert "nothing to resume" in err and "'smoke2'" in err
    assert fingerprint(smoke.out) == before


def test_same_seed_suggests_the_same_configs(tmp_path, trials, local_ray):
    """Two tiny searches, seed 7, one trial at a time: the same configs in the same order (and,
    single-threaded CPU training being deterministic, the same accuracies)."""
    argv = ["--smoke-test", "--no-retrain", "--max-concurrent", "1", "--num-samples", "4", "--max-epochs", "1",
            "--train-size", "256", "--eval-size", "200", "--seed", "7", "--name", "rep"]
    tables = []
    for run in ("a", "b"):
        assert run_search(argv + ["--out", str(tmp_path / run)]) == 0
        assert ray.is_initialized()  # the caller's Ray (local_ray): used, and left running
        tables.append(pd.read_csv(tmp_path / run / "rep" / "trials.csv"))
    a, b = tables
    columns = ["trial", *PARAMS, "best_val_acc", "epochs_run", "status"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    assert len(a) == 4 and {p: a.iloc[0][p] for p in PARAMS} == SEED_CONFIG
    # the seed matters: seed 0 (the smoke search) suggested another config after the fixed three
    assert a.loc[3, "lr"] != trials.loc[3, "lr"]


def test_a_search_stopped_by_its_time_budget_publishes_what_finished(tmp_path, capfd, local_ray):
    """--smoke-test with --time-budget: the budget is only the search's hard stop (Ray's time_budget_s; 20 s,
    about the smallest that shows it: the first trial ends ~6 s into the search on 2 idle cores). A thousand
    1-epoch trials cannot finish in 20 s: Ray stops the search, which publishes the trials that finished, exits 0
    and is not taken for an interrupted one."""
    out = tmp_path / "results"
    argv = ["--smoke-test", "--no-retrain", "--num-samples", "1000", "--max-epochs", "1", "--train-size", "256",
            "--eval-size", "200", "--time-budget", "20s", "--name", "cut", "--out", str(out)]
    assert run_search(argv) == 0
    assert "search stopped by its time budget" in capfd.readouterr().err
    best = json.loads((out / "cut" / "best_config.json").read_text())
    s = best["search"]
    assert (s["stopped_by_budget"], s["fidelity_mode"], s["time_budget_s"]) == (True, "smoke", 20)
    assert 0 < s["budget_plan"]["search_time_budget_s"] < 20
    trials = pd.read_csv(out / "cut" / "trials.csv")
    assert 1 <= len(trials) < 1000 and s["trials"] == len(trials)
    assert set(trials["status"]) <= {"finished", "budget_stopped"} and trials["error"].isna().all()
    finished = trials[trials["status"] == "finished"]
    assert len(finished) >= 1 and (finished["epochs_run"] == 1).all()
    assert best["trial_id"] in set(finished["trial_id"])  # the best among the finished ones
    assert (out / "best_config.json").read_bytes() == (out / "cut" / "best_config.json").read_bytes()


def test_a_search_on_a_callers_ray_refuses_another_address(local_ray, tmp_path, capfd):
    """A Ray this process runs is used as it is (the tests above); --address elsewhere is refused in one line."""
    err = one_line_error(["--address", "127.0.0.1:1", "--out", str(tmp_path)], capfd)
    assert "this process already runs Ray" in err and ray.is_initialized()

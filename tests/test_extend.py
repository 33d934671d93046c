"""`tuner.search --extend NAME`: bad input is refused in one line before anything is written; a real
extension of a smoke search warm-starts Optuna with its parent's trials and picks the best of both."""

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import ray

from tuner import extend, search
from tuner.settings import SearchSettings
from tuner.space import CHANCE_ACC, PARAMS, SEED_CONFIG

PARENT_SETTINGS = SearchSettings(num_samples=3, max_epochs=1, train_size=256, eval_size=200, seed=0,
                                 confirm_seeds=1, confirm_epochs=1, confirm_train_size=1024, fidelity_mode="smoke")
TRIALS = pd.DataFrame([
    {"trial": 1, "trial_id": "a", **SEED_CONFIG, "best_val_acc": 40.0, "best_epoch": 1, "last_val_acc": 40.0,
     "epochs_run": 1, "stopped_early": False, "status": "finished"},
    {"trial": 2, "trial_id": "b", "lr": 0.05, "momentum": 0.8, "batch_size": 64, "best_val_acc": 70.0,
     "best_epoch": 1, "last_val_acc": 70.0, "epochs_run": 1, "stopped_early": False, "status": "finished"},
    {"trial": 3, "trial_id": "c", "lr": 0.19, "momentum": 0.98, "batch_size": 32, "best_val_acc": 10.0,
     "best_epoch": 1, "last_val_acc": 10.0, "epochs_run": 1, "stopped_early": False, "status": "diverged"},
    {"trial": 4, "trial_id": "d", "lr": 0.002, "momentum": 0.6, "batch_size": 1024, "best_val_acc": None,
     "best_epoch": None, "last_val_acc": None, "epochs_run": 0, "stopped_early": False, "status": "errored"},
])


def finished_search(out: Path, name: str = "p", space=True, trials: pd.DataFrame = TRIALS) -> Path:
    """The three files a finished search leaves that --extend reads."""
    folder = out / name
    folder.mkdir(parents=True)
    PARENT_SETTINGS.save(folder / "search_settings.json")
    trials.to_csv(folder / "trials.csv", index=False)
    best = {"config": {"lr": 0.05, "momentum": 0.8, "batch_size": 64}, "val_acc": 70.0,
            "seed_config_val_acc": 40.0, **({"space": extend.space_record()} if space else {})}
    (folder / "best_config.json").write_text(json.dumps(best))
    return folder


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capfd) -> str:
    def started(*args, **kwargs):
        raise AssertionError("ray.init was called")  # refused before Ray starts

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(ray, "init", started)
        search.main(argv)
    err = capfd.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("case, argv, words", [
    ("unknown", ["--extend", "nope"], "'nope': "),
    ("unfinished", ["--extend", "half"], "--resume --name half"),
    ("no results", ["--extend", "broken"], "did not finish"),
    ("path", ["--extend", "../p"], "is not a search name"),
    ("space", ["--extend", "other"], "different space"),
    ("outside", ["--extend", "old_outside"], "outside tuner/space.py's ranges"),
    ("fidelity", ["--extend", "p", "--max-epochs", "4"], "--max-epochs: an extension keeps 'p'"),
    ("two", ["--extend", "p", "--train-size", "512", "--seed", "3"], "--seed, --train-size"),
    ("smoke", ["--extend", "p", "--smoke-test"], "--smoke-test"),
    ("resume", ["--extend", "p", "--resume"], "pick one"),
])
def test_bad_extend_is_refused_and_writes_nothing(case, argv, words, tmp_path, capfd):
    out = tmp_path / "results"
    finished_search(out)
    other = finished_search(out, "other")
    (other / "best_config.json").write_text(json.dumps({"seed_config_val_acc": 1.0, "space": {"lr": [0, 1]}}))
    outside = TRIALS.assign(lr=[0.01, 0.5, 0.1, 0.01])  # lr 0.5: above today's range
    finished_search(out, "old_outside", space=False, trials=outside)
    (out / "broken").mkdir()
    (out / "broken" / "trials.csv").write_text("trial\n")
    (out / "ray" / "half").mkdir(parents=True)
    (out / "ray" / "half" / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    before = fingerprint(out)
    err = refused([*argv, "--out", str(out), "--no-retrain"], capfd)
    assert words in err
    assert fingerprint(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["p", "other", "old_outside", "broken", "ray"])


def test_unknown_parent_creates_no_out_folder(tmp_path, capfd):
    err = refused(["--extend", "p", "--out", str(tmp_path / "new")], capfd)
    assert "does not exist" in err and not (tmp_path / "new").exists()


def args(*argv: str):
    return search.build_parser().parse_args(list(argv))


def test_extension_keeps_the_fidelity_and_warm_starts_from_finished_trials(tmp_path):
    out = tmp_path / "results"
    finished_search(out)
    asked = args("--extend", "p", "--num-samples", "5", "--max-epochs", "1", "--max-concurrent", "1")
    ext = extend.requested(asked, out, str(out / "ray"))
    assert ext.settings == SearchSettings(**{**PARENT_SETTINGS.to_dict(), "num_samples": 5, "max_concurrent": 1})
    assert ext.space == "recorded"
    points, rewards = ext.warm_start()
    # errored trial d is left out; diverged trial c reports chance, as OptunaSearch saw it
    assert points == [SEED_CONFIG, {"lr": 0.05, "momentum": 0.8, "batch_size": 64},
                      {"lr": 0.19, "momentum": 0.98, "batch_size": 32}]
    assert rewards == [40.0, 70.0, CHANCE_ACC]
    assert all(type(p["batch_size"]) is int for p in points)
    default = extend.requested(args("--extend", "p"), out, str(out / "ray"))
    assert default.settings.num_samples == PARENT_SETTINGS.num_samples


def test_a_parent_without_a_recorded_space_is_accepted_when_its_trials_fit(tmp_path):
    out = tmp_path / "results"
    finished_search(out, space=False)
    ext = extend.requested(args("--extend", "p"), out, str(out / "ray"))
    assert ext.space.startswith("not recorded")


@pytest.mark.slow
def test_extend_a_smoke_search(searched, tmp_path, local_ray):
    """The session's smoke search as the parent (its summary folder, all --extend reads), then 2 more
    trials warm-started from it: Optuna's study in the extension starts with the parent's trials and
    their rewards; best_config.json is the best of the parent's and the extension's trials."""
    out = tmp_path / "results"
    shutil.copytree(searched.folder, out / "p", ignore=shutil.ignore_patterns("runs", "*.pt", "*.npz"))
    base = ["--out", str(out), "--no-retrain", "--max-concurrent", "1"]
    assert search.main(["--extend", "p", "--num-samples", "2", "--name", "x", *base]) == 0
    parent, child = (pd.read_csv(out / n / "trials.csv") for n in ("p", "x"))
    n = len(parent)
    assert n == len(searched.trials) and len(child) == 2
    # the seed's config is not rerun: its baseline comes from the parent
    assert {p: parent.iloc[0][p] for p in PARAMS} == SEED_CONFIG
    assert not any({p: r[p] for p in PARAMS} == SEED_CONFIG for _, r in child.iterrows())

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(out / "ray" / "x"))
    trials = searcher._ot_study.trials
    told = parent[parent["status"] != "errored"]  # the parent's trials TPE is told, with their rewards
    assert len(trials) == len(told) + 2  # then the 2 it suggested
    for t, (_, row) in zip(trials[:len(told)], told.iterrows(), strict=True):
        assert t.params == {"lr": row.lr, "momentum": row.momentum, "batch_size": row.batch_size}
        assert t.value == (CHANCE_ACC if row.status == "diverged" else row.last_val_acc)

    best = json.loads((out / "best_config.json").read_text())
    assert best == json.loads((out / "x" / "best_config.json").read_text())
    assert best["extends"] == "p" and best["trials_with_parents"] == n + 2 and best["parent_space"] == "recorded"
    both = pd.concat([parent.assign(experiment="p"), child.assign(experiment="x")], ignore_index=True)
    ok = both[both["status"].isin(["finished", "stopped"])]
    top = ok.loc[ok["best_val_acc"].idxmax()]
    assert best["val_acc"] == top.best_val_acc and best["best_experiment"] == top.experiment
    assert best["seed_config_val_acc"] == parent.iloc[0].best_val_acc
    assert json.loads((out / "x" / "extends.json").read_text())["extends"] == "p"
    settings = json.loads((out / "x" / "search_settings.json").read_text())
    # the parent's settings, but for what an extension may change (its trial count, its concurrency)
    assert settings == {**json.loads((out / "p" / "search_settings.json").read_text()), "num_samples": 2,
                        "max_concurrent": 1}


def test_an_extension_of_an_extension_warm_starts_from_the_whole_lineage(tmp_path):
    out = tmp_path / "results"
    finished_search(out)
    child = TRIALS.iloc[[1]].assign(trial_id="e", lr=0.03, last_val_acc=75.0, best_val_acc=75.0)
    finished_search(out, "x", trials=child)
    extend.Extension(parent="p", parent_best={}, trials=TRIALS, settings=PARENT_SETTINGS, space="recorded").save(
        out / "x")
    ext = extend.requested(args("--extend", "x"), out, str(out / "ray"))
    assert list(ext.trials["experiment"]) == ["p"] * 4 + ["x"]
    assert ext.warm_start()[1] == [40.0, 70.0, CHANCE_ACC, 75.0]
    # a --resume of the extension finds its parent again from extends.json
    again = extend.of_resumed(out, "x", PARENT_SETTINGS)
    assert again.parent == "p" and len(again.trials) == 4
    assert extend.of_resumed(out, "p", PARENT_SETTINGS) is None  # not an extension

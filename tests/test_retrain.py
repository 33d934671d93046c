"""`tuner.retrain` on its own: a hand-written best_config.json at the seed's 60k recipe, and an existing
search's top K from its trials.csv (winner chosen on val, verdict on test), on 1,024-image subsets.
The runs are Ray tasks on the tests' shared local Ray (tests/conftest.py), which the stage reuses and leaves running."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from mnist_net.data import DEFAULT_DATA_DIR
from mnist_net.model import Net
from tuner import retrain, review
from tuner.space import SEED_CONFIG

pytestmark = pytest.mark.slow

BEST = {"lr": 0.02, "momentum": 0.9, "batch_size": 256}
OTHER = {"lr": 0.05, "momentum": 0.9, "batch_size": 32}


def test_config_at_the_seeds_60k_recipe(tmp_path, splits, local_ray):
    config = tmp_path / "results" / "best_config.json"
    config.parent.mkdir()
    text = json.dumps({"config": BEST, "val_acc": 97.5, "experiment": {"summary_dir": "elsewhere"}})
    config.write_text(text)
    out = tmp_path / "retrained"
    assert retrain.main(["--config", str(config), "--smoke-test", "--train-split", "train+val", "--out", str(out)]) == 0
    assert ray.is_initialized()  # the caller's Ray: reused, not shut down
    assert sorted(p.name for p in out.iterdir()) == ["best_curves.png", "best_model.pt", "retrain.json", "runs",
                                                     "seed_curves.png", "test_predictions.npz"]
    assert config.read_text() == text and not (config.parent / "elsewhere").exists()  # --out wins
    report = json.loads((out / "retrain.json").read_text())
    assert (report["epochs"], report["seeds"], report["source"]) == (1, [1], str(config))
    assert report["best"]["config"] == BEST and report["seed_config"]["config"] == SEED_CONFIG
    assert report["winner"]["label"] == "best" and report["ranking"] == {}
    for label in ("best", "seed_config"):
        r = report[label]
        assert len(r["test_acc"]) == 1 and 0 < r["test_acc"][0] <= 100 and r["val_acc"] == [None]
        (history,) = r["epochs_history"]
        # trained on train+val (the 60k), so the per-epoch curve is on test, as the seed logged it
        assert [e["epoch"] for e in history] == [1] and "test_acc" in history[0] and "val_acc" not in history[0]
    assert report["best"]["test_acc"] != report["seed_config"]["test_acc"]  # two different runs
    assert report["provenance"]["hardware"]["cpu_count"] >= 1 and report["best"]["device"] == ["cpu"]
    check_statistics(report, out, splits["test"].labels.numpy(), "train+val")
    model = Net()
    model.load_state_dict(torch.load(out / "best_model.pt", weights_only=True))  # strict; CPU tensors
    torch.manual_seed(1)  # seed 1's initial weights: the model was trained away from them
    assert not torch.equal(model.fc2.weight, Net().fc2.weight)


def check_statistics(report: dict, out: Path, labels: np.ndarray, split: str) -> None:
    """The comparison recomputed from the saved predictions agrees with retrain.json."""
    assert report["budget"]["train_split"] == split and report["budget"]["train_images"] == 1024
    preds = np.load(out / "test_predictions.npz")
    best, seed = preds[report["best"]["label"]][0] == labels, preds["seed_config"][0] == labels
    c = report["comparison"]
    # the predictions score exactly what the stage reports as test accuracy
    assert c["acc_best"] == pytest.approx(report["best"]["test_acc"], abs=1e-9)
    assert c["acc_seed_config"] == pytest.approx(report["seed_config"]["test_acc"], abs=1e-9)
    (m,) = c["mcnemar"]
    assert (m["b"], m["c"]) == (int(np.sum(best & ~seed)), int(np.sum(~best & seed))) and m["b"] + m["c"] > 0
    assert c["ci_method"].startswith("paired bootstrap")  # one seed
    assert c["verdict"].endswith("at 1 epoch on 1,024 images (1/1172 of the seed's 20 × 60k), 1 seed")
    rev = review.Review(folder=out, best={}, trials=None, epochs=None, retrain=report)  # what the notebook shows
    assert review.verdict(rev).splitlines() == [c["verdict"], *report["seed_recipe_lines"]]
    assert report["seed_recipe_lines"][-1].endswith("--full-recipe")  # 1 epoch on 1,024: below the seed's recipe


def write_search(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [(SEED_CONFIG, 60.0, "finished"), (BEST, 95.0, "finished"), (OTHER, 96.0, "stopped"),
            ({"lr": 0.001, "momentum": 0.5, "batch_size": 1024}, 20.0, "stopped")]
    pd.DataFrame([{"trial": i + 1, "trial_id": f"t{i + 1}", **cfg, "best_val_acc": acc, "status": status}
                  for i, (cfg, acc, status) in enumerate(rows)]).to_csv(folder / "trials.csv", index=False)


def test_search_top_k_then_more_seeds_reuse_the_saved_runs_then_the_full_recipe(tmp_path, splits, local_ray, capfd):
    write_search(tmp_path / "results" / "s")
    argv = ["--search", "s", "--results", str(tmp_path / "results"), "--top", "2", "--smoke-test"]
    assert retrain.main(argv) == 0
    folder = tmp_path / "results" / "s"
    report = json.loads((folder / "retrain.json").read_text())
    assert [c["label"] for c in report["candidates"]] == ["trial 3", "trial 2", "seed_config"]
    assert [c["proxy_val_acc"] for c in report["candidates"]] == [96.0, 95.0, 60.0]
    means = {c["label"]: c["val_acc_mean"] for c in report["candidates"]}
    assert report["winner"]["label"] == max(means, key=means.get)
    assert report["ranking"]["configs"] == 3 and report["source"] == str(folder / "trials.csv")
    check_statistics(report, folder, splits["test"].labels.numpy(), "train")
    saved = {p.name: p.stat().st_mtime_ns for p in (folder / "runs").iterdir()}
    assert len(saved) == 9  # 3 configs x 1 seed x (.json, .npy, .pt)

    assert retrain.main([*argv, "--seeds", "2", "--overwrite"]) == 0  # seed 1 is read back, seed 2 trained
    again = json.loads((folder / "retrain.json").read_text())
    assert again["seeds"] == [1, 2] and len(again["comparison"]["mcnemar"]) == 2
    for old, new in zip(report["candidates"], again["candidates"], strict=True):
        assert new["test_acc"][0] == old["test_acc"][0]
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "runs").iterdir()}
    assert {k: after[k] for k in saved} == saved and len(after) == 18
    check_full_recipe(tmp_path / "results", capfd)


def check_full_recipe(results: Path, capfd) -> None:
    """--full-recipe on a confirmed search: its best (retrain.json) against the seed's config on train+val, in
    NAME/full-recipe, the time predicted from a calibration here before any run (sizes cut by --smoke-test)."""
    confirmed = json.loads((results / "s" / "retrain.json").read_text())
    capfd.readouterr()
    argv = ["--search", "s", "--results", str(results), "--full-recipe", "--smoke-test", "--seeds", "2",
            "--time-budget", "30m"]
    assert retrain.main(argv) == 0
    err = capfd.readouterr().err
    full = json.loads((results / "s" / "full-recipe" / "retrain.json").read_text())
    assert full["recipe"] == {"seeds": 2, "epochs": 1, "train_size": 1024, "train_split": "train+val"}
    assert [c["label"] for c in full["candidates"]] == [confirmed["best"]["label"], "seed_config"]
    assert full["best"]["config"] == confirmed["best"]["config"] and full["source"].endswith("s/retrain.json")
    assert " here for 2 configs x 2 seed(s)" in err
    assert err.index("predicted ") < err.index("confirm: 2 configs x 2 seed(s)")  # said before the runs start
    # below the seed's recipe, the report names the command that measures there, with its predicted time
    assert f"python -m tuner.retrain --search s --results {results} --full-recipe" in err
    assert full["full_recipe"]["predicted_s"] > 0


def test_a_deadline_drops_the_last_seeds_whole_when_the_runs_are_slower_than_predicted(tmp_path, local_ray):
    """run_all with a Deadline one second away: when the first run ends, the rest would end past it, so seed 2's
    runs are cancelled (all configs alike) and the report has seed 1 only; seed 1 is never dropped."""
    from tuner.confirm.recipe import Deadline, Recipe
    from tuner.confirm.report import Candidate
    from tuner.confirm.runs import RunStore, run_all
    from tuner.confirm.stage import place_runs
    from tuner.settings import Throughput
    from tuner.space import BATCH_SIZES

    cands = [Candidate("best", BEST), Candidate("seed_config", dict(SEED_CONFIG))]
    recipe = Recipe(2, 1, 512)
    deadline = Deadline(time.monotonic() + 1, Throughput({b: 1e3 for b in BATCH_SIZES}, 1e3))
    data = str(DEFAULT_DATA_DIR)
    runs = run_all(cands, recipe, data, place_runs(4, None, 1), RunStore(tmp_path / "runs"), deadline=deadline)
    assert {k: [r["seed"] for r in v] for k, v in runs.items()} == {"best": [1], "seed_config": [1]}
    roomy = Deadline(time.monotonic() + 3600, Throughput({b: 100.0 for b in BATCH_SIZES}, 1000.0))
    again = run_all(cands, recipe, data, place_runs(4, None, 1), RunStore(tmp_path / "runs"), deadline=roomy)
    assert [r["seed"] for r in again["best"]] == [1, 2]  # seed 1 read back, seed 2 trained


@pytest.mark.parametrize("argv, words", [
    (["--search", "s", "--train-split", "train+val"], "leaves no val to choose among"),
    (["--search", "nothing"], "cannot read"),
    (["--search", "s", "--top", "0"], "--top"),
])
def test_bad_input_is_one_line(argv, words, tmp_path, capfd):
    write_search(tmp_path / "s")
    with pytest.raises(SystemExit) as info:
        retrain.main([*argv, "--results", str(tmp_path), "--smoke-test"])
    err = capfd.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "s" / "retrain.json").exists()


def test_retrain_refuses_to_overwrite_a_retrain_json(tmp_path, capfd):
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"config": BEST, "experiment": {"summary_dir": "s"}}))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "retrain.json").write_text("the search's own")
    with pytest.raises(SystemExit) as info:
        retrain.main(["--config", str(config), "--smoke-test"])  # default --out: the summary folder
    assert info.value.code == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "retrain.json exists" in err and "--overwrite" in err
    assert (tmp_path / "s" / "retrain.json").read_text() == "the search's own"


def test_retrain_on_a_gpu_share_without_cuda_fails_in_one_line(tmp_path, capfd, monkeypatch):
    """Ray gives each run a (fake) GPU share; this torch sees no CUDA: a clear error, not CPU."""
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"config": BEST}))
    # conftest hides real GPUs; Ray needs as many ids as GPUs, and an id no machine has keeps the
    # runs' torch CUDA-less even on a GPU box (tests/test_gpu_placement.py does the same)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        with pytest.raises(SystemExit) as info:
            retrain.main(["--config", str(config), "--smoke-test", "--out", str(tmp_path / "out")])
    finally:
        ray.shutdown()
    assert info.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert "a confirm run failed" in err and "no CUDA" in err
    assert not (tmp_path / "out" / "retrain.json").exists()


# Last in the module, like the test above: it shuts down the module's Ray to let the stage start its own.
@pytest.mark.parametrize("callers_ray", [False, True])
def test_ctrl_c_exits_130_in_one_line_and_shuts_down_only_its_own_ray(callers_ray, tmp_path, capfd, monkeypatch):
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"config": BEST}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    if callers_ray:
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    on_ray = []

    def interrupted(job, plan, predicted_s=None):  # Ctrl-C while the runs train; nothing is trained here
        on_ray.append(ray.is_initialized())
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain, "execute", interrupted)
    try:
        code = retrain.main(["--config", str(config), "--smoke-test", "--out", str(tmp_path / "out")])
    except KeyboardInterrupt:  # the traceback this test guards against: a failure here, not the end of pytest
        code = None
    finally:
        still_up = ray.is_initialized()
        ray.shutdown()
    assert code == 130 and on_ray == [True]
    assert still_up is callers_ray  # the stage's own Ray is shut down; the caller's is left running
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted: the runs already saved in {(tmp_path / 'out').resolve()}"
                                            "/runs are reused when the same command is run again")
    assert not (tmp_path / "out" / "retrain.json").exists()


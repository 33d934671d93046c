"""`tuner.retrain` from a results folder: a hand-written best_config.json, retrained next to the
seed's config on a 1,024-image subset of the 60k, then scored once on the full test split. The runs
are Ray tasks on a small in-process Ray, which the retrain reuses and leaves running."""

import json
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from mnist_net.model import Net
from tuner import retrain, review
from tuner.space import SEED_CONFIG

pytestmark = pytest.mark.slow

BEST = {"lr": 0.02, "momentum": 0.9, "batch_size": 256}


def test_retrain_smoke_from_a_best_config(tmp_path, splits):
    config = tmp_path / "results" / "best_config.json"
    config.parent.mkdir()
    text = json.dumps({"config": BEST, "val_acc": 97.5, "experiment": {"summary_dir": "elsewhere"}})
    config.write_text(text)
    out = tmp_path / "retrained"

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert retrain.main(["--config", str(config), "--smoke-test", "--out", str(out)]) == 0
        assert ray.is_initialized()  # the caller's Ray: reused, not shut down
    finally:
        ray.shutdown()

    assert sorted(p.name for p in out.iterdir()) == ["best_curves.png", "best_model.pt", "retrain.json",
                                                     "seed_curves.png", "test_predictions.npz"]
    assert config.read_text() == text and not (config.parent / "elsewhere").exists()  # --out wins
    report = json.loads((out / "retrain.json").read_text())
    assert (report["epochs"], report["seeds"], report["source"]) == (1, [1], str(config))
    assert report["best"]["config"] == BEST
    assert report["seed_config"]["config"] == SEED_CONFIG  # the default when the file has none
    for label in ("best", "seed_config"):
        r = report[label]
        assert len(r["test_acc"]) == 1 and len(r["test_loss"]) == 1
        assert 0 < r["test_acc"][0] <= 100 and r["test_loss"][0] > 0
        assert r["test_acc_mean"] == r["test_acc"][0] and r["test_acc_std"] == 0.0
        assert r["diverged"] == [False] and len(r["seconds"]) == 1
        (history,) = r["epochs_history"]
        assert [e["epoch"] for e in history] == [1]
        # trained on train+val (the 60k), so the per-epoch curve is on test, not val
        assert "test_acc" in history[0] and "val_acc" not in history[0]
        assert history[0]["lr"] == r["config"]["lr"]
    assert report["best"]["test_acc"] != report["seed_config"]["test_acc"]  # two different runs
    assert "versions" in report["provenance"] and report["provenance"]["hardware"]["device"] == "cpu"
    assert report["best"]["device"] == ["cpu"] and report["seed_config"]["device"] == ["cpu"]
    check_statistics(report, out, splits["test"].labels.numpy())

    for name in ("best_curves.png", "seed_curves.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000

    model = Net()
    model.load_state_dict(torch.load(out / "best_model.pt", weights_only=True))  # strict
    torch.manual_seed(1)  # seed 1's initial weights: the model was trained away from them
    assert not torch.equal(model.fc2.weight, Net().fc2.weight)


def check_statistics(report: dict, out: Path, labels: np.ndarray) -> None:
    """The comparison recomputed from the saved predictions agrees with retrain.json."""
    assert report["budget"] == {"epochs": 1, "train_images": 1024, "train_split": "train+val",
                                "test_images": 10_000, "seeds": 1}
    preds = np.load(out / "test_predictions.npz")
    assert preds["best"].shape == preds["seed_config"].shape == (1, 10_000)
    best, seed = preds["best"][0] == labels, preds["seed_config"][0] == labels
    c = report["comparison"]
    # the predictions score exactly what the retrain reports as test accuracy
    assert c["acc_best"] == pytest.approx(report["best"]["test_acc"], abs=1e-9)
    assert c["acc_seed_config"] == pytest.approx(report["seed_config"]["test_acc"], abs=1e-9)
    (m,) = c["mcnemar"]
    assert (m["b"], m["c"]) == (int(np.sum(best & ~seed)), int(np.sum(~best & seed))) and m["b"] + m["c"] > 0
    assert c["ci_method"].startswith("paired bootstrap")  # one seed
    assert c["ci_low_pp"] <= c["mean_diff_pp"] <= c["ci_high_pp"]
    assert c["verdict"].endswith("at 1 epoch on 1,024 images, 1 seed")
    # what the notebook shows
    rev = review.Review(folder=out, best={}, trials=None, epochs=None, retrain=report)
    assert review.verdict(rev) == c["verdict"]
    table = review.comparison_table(rev)
    assert list(table["seed"]) == [1, "mean"] and table["mcnemar_p"][0] == m["pvalue"]
    assert table["diff_pp"][1] == c["mean_diff_pp"]
    old = review.Review(folder=out, best={}, trials=None, epochs=None, retrain={"seeds": [1]})
    assert review.comparison_table(old) is None and "no paired comparison" in review.verdict(old)


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
    assert not ray.is_initialized()  # refused before Ray started


def test_retrain_on_a_gpu_share_without_cuda_fails_in_one_line(tmp_path, capfd, monkeypatch):
    """Ray gives each run a (fake) GPU share; this torch sees no CUDA: a clear error, not CPU."""
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"config": BEST}))
    # conftest hides real GPUs; Ray needs as many ids as GPUs, and an id no machine has keeps the
    # runs' torch CUDA-less even on a GPU box (tests/test_gpu_placement.py does the same)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        with pytest.raises(SystemExit) as info:
            retrain.main(["--config", str(config), "--smoke-test", "--out", str(tmp_path / "out")])
    finally:
        ray.shutdown()
    assert info.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert "a retrain run failed" in err and "no CUDA" in err
    assert not (tmp_path / "out" / "retrain.json").exists()

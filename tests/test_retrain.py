"""`tuner.retrain` from a results folder: a hand-written best_config.json, retrained next to the
seed's config on a 1,024-image subset of the 60k, then scored once on the full test split."""

import json

import pytest
import torch

from mnist_net.model import Net
from tuner import retrain
from tuner.space import SEED_CONFIG

pytestmark = pytest.mark.slow

BEST = {"lr": 0.02, "momentum": 0.9, "batch_size": 256}


def test_retrain_smoke_from_a_best_config(tmp_path):
    config = tmp_path / "results" / "best_config.json"
    config.parent.mkdir()
    text = json.dumps({"config": BEST, "val_acc": 97.5, "experiment": {"summary_dir": "elsewhere"}})
    config.write_text(text)
    out = tmp_path / "retrained"

    assert retrain.main(["--config", str(config), "--smoke-test", "--out", str(out)]) == 0

    assert sorted(p.name for p in out.iterdir()) == ["best_curves.png", "best_model.pt", "retrain.json",
                                                     "seed_curves.png"]
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

    for name in ("best_curves.png", "seed_curves.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000

    model = Net()
    model.load_state_dict(torch.load(out / "best_model.pt", weights_only=True))  # strict
    torch.manual_seed(1)  # seed 1's initial weights: the model was trained away from them
    assert not torch.equal(model.fc2.weight, Net().fc2.weight)

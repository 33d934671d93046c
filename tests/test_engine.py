import io
import math

import pytest
import torch
import torch.nn.functional as F

from mnist_net.augment import MEAN, STD
from mnist_net.config import TrainConfig
from mnist_net.engine import (
    CHANCE_ACC,
    DIVERGED_SCORES,
    EpochRecord,
    EpochStats,
    EvalStats,
    build_training,
    evaluate,
    fit,
)

CPU = torch.device("cpu")
# Tiny but real: 256 training images, 16 steps an epoch; fp32 NCHW for exact reproducibility.
CFG = TrainConfig(lr=0.03, batch_size=16, epochs=2, train_split="train", precision="fp32",
                  channels_last=False, seed=1)


def snapshot(training) -> dict:
    """What a checkpoint holds, round-tripped through torch.save as the tuner does."""
    buffer = io.BytesIO()
    torch.save(training.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture(scope="module")
def run(small):
    """One 2-epoch fit; the callback records each epoch and checkpoints after epoch 1."""
    train, val = small("train", 256), small("val", 200)
    training = build_training(CFG, CPU)
    before = evaluate(training.model, train)
    calls, checkpoints = [], {}

    def callback(record, t):
        calls.append((record, t))
        checkpoints[record.epoch] = snapshot(t)

    history = fit(CFG, train, val, device=CPU, training=training, callback=callback)
    return {"train": train, "val": val, "training": training, "history": history,
            "before": before, "calls": calls, "checkpoints": checkpoints}


def test_training_lowers_loss_and_beats_chance(run):
    history = run["history"]
    assert not history.diverged
    first, last = history.epochs
    assert last.train_loss < first.train_loss
    after = evaluate(run["training"].model, run["train"])
    assert after.loss < run["before"].loss - 0.1
    assert last.val_acc > 25  # chance is 10%
    assert math.isfinite(last.val_loss)


def test_callback_once_per_epoch_with_the_record(run):
    calls, history = run["calls"], run["history"]
    assert [record.epoch for record, _ in calls] == [1, 2]
    assert [record for record, _ in calls] == history.epochs
    assert all(t is run["training"] for _, t in calls)
    for record in history.epochs:
        assert set(record.to_dict()) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                                         "epoch_seconds", "images_per_s", "eval_seconds", "diverged"}
        assert record.lr == CFG.lr and record.diverged is False and record.eval_seconds > 0


def test_evaluate_matches_a_hand_computation(run):
    model, data = run["training"].model, run["val"]
    got = evaluate(model, data, batch_size=64)  # 200 = 3 full batches + 8: the tail counts too
    model.eval()
    with torch.no_grad():
        out = model((data.images.float() / 255 - MEAN) / STD)
    want_loss = F.nll_loss(out, data.labels, reduction="sum").item() / len(data)
    want_acc = 100.0 * (out.argmax(1) == data.labels).sum().item() / len(data)
    assert got.loss == pytest.approx(want_loss, rel=1e-5)
    assert got.acc == pytest.approx(want_acc)


def test_resume_from_a_checkpoint_matches_a_straight_run(run):
    training = build_training(CFG, CPU)
    training.load_state_dict(run["checkpoints"][1])
    history = fit(CFG, run["train"], run["val"], device=CPU, training=training, start_epoch=1)
    assert [r.epoch for r in history.epochs] == [2]
    straight = run["training"].model.state_dict()
    resumed = training.model.state_dict()
    assert all(torch.allclose(resumed[k], straight[k], rtol=1e-5, atol=1e-7) for k in straight)
    assert history.epochs[0].train_loss == pytest.approx(run["history"].epochs[1].train_loss)
    assert training.scheduler.state_dict() == run["training"].scheduler.state_dict()
    # ...and the checkpoint really was mid-run, not the final weights.
    assert not torch.allclose(run["checkpoints"][1]["model"]["fc1.weight"], straight["fc1.weight"])


# 256 images: the loss goes non-finite inside the epoch. 64 images (2 steps): the last
# step's loss is still finite (~1e30) but it leaves NaN weights behind.
@pytest.mark.parametrize("n_images", [256, 64])
def test_huge_lr_diverges_cleanly(small, n_images):
    cfg = CFG.replace(lr=1e6, batch_size=32, epochs=3)
    records = []
    history = fit(cfg, small("train", n_images), small("val", 100), device=CPU,
                  callback=lambda record, _t: records.append(record))
    assert history.diverged is True
    assert len(history.epochs) == 1 and records == history.epochs
    record = history.epochs[0]
    assert record.diverged is True and record.val_acc == CHANCE_ACC
    assert math.isnan(record.val_loss)
    # 256: training diverged, so nothing was evaluated and no eval time is written
    assert ("eval_seconds" in record.to_dict()) == (n_images == 64)


def test_a_record_writes_only_what_was_measured():
    """to_dict is the JSON shape of s5_metrics.json and the confirm runs: the other split's keys
    (and eval_seconds, when nothing was evaluated) are left out, in the order fit always wrote."""
    stats = EpochStats(loss=0.5, acc=90.0, seconds=2.0, images_per_s=100.0)
    val = EpochRecord.of(3, 0.01, stats, "val", EvalStats(0.2, 95.0), eval_seconds=0.5)
    assert (val.eval_split, val.scores, val.diverged) == ("val", EvalStats(0.2, 95.0), False)
    assert val.to_dict() == {"epoch": 3, "lr": 0.01, "train_loss": 0.5, "train_acc": 90.0, "epoch_seconds": 2.0,
                             "images_per_s": 100.0, "eval_seconds": 0.5, "val_loss": 0.2, "val_acc": 95.0,
                             "diverged": False}
    assert list(val.to_dict()) == ["epoch", "lr", "train_loss", "train_acc", "epoch_seconds", "images_per_s",
                                   "eval_seconds", "val_loss", "val_acc", "diverged"]
    test = EpochRecord.of(3, 0.01, stats, "test", DIVERGED_SCORES, eval_seconds=None)
    assert test.diverged and test.eval_split == "test" and test.scores.acc == CHANCE_ACC
    assert list(test.to_dict()) == ["epoch", "lr", "train_loss", "train_acc", "epoch_seconds", "images_per_s",
                                    "test_loss", "test_acc", "diverged"]


def test_build_training_keeps_the_cpu_sgd_and_offers_compile_modes():
    training = build_training(CFG, CPU)
    group = training.optimizer.param_groups[0]
    assert not group["fused"] and training.forward is training.model  # CPU: the default SGD, eager
    compiled = build_training(CFG.replace(compile=True, compile_mode="max-autotune-no-cudagraphs"), CPU)
    assert compiled.forward is not compiled.model  # built lazily: nothing is compiled until called
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        CFG.replace(compile_mode="fastest")

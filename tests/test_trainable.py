"""The trial's checkpoints: what they hold, where a restore puts it, when they are made; and
saved weights that load on a machine without a GPU."""

import dataclasses
import warnings

import pytest
import torch
from ray import tune

from mnist_net import train as train_cli
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR
from mnist_net.engine import EpochRecord, EvalStats, build_training, fit
from tuner.run import trainable
from tuner.run.trainable import AUTO_CHECKPOINT_RATIO, CHECKPOINT_FILE, CheckpointPolicy
from tuner.space import REPORTED, SEED_CONFIG

CPU = torch.device("cpu")
CFG = TrainConfig(epochs=2, train_split="train", train_size=256, eval_size=100, batch_size=64, seed=3)


class Interrupt(Exception):
    pass


def checkpoint_after_first_epoch(small, folder) -> None:
    """Train CFG for one epoch and checkpoint it as the trainable does, then stop."""
    def stop(record, training):
        trainable.save_state(str(folder), training, record.epoch, CFG)
        raise Interrupt

    with pytest.raises(Interrupt):
        fit(CFG, small("train", 256, 3), small("val", 100, 3), device=CPU, callback=stop)


def test_a_restored_run_continues_bit_identically(small, tmp_path):
    checkpoint_after_first_epoch(small, tmp_path)
    uninterrupted = build_training(CFG, CPU)
    fit(CFG, small("train", 256, 3), small("val", 100, 3), device=CPU, training=uninterrupted)

    resumed = build_training(CFG, CPU)
    torch.manual_seed(12345)  # whatever ran in between: the checkpoint's RNG state comes back
    start = trainable.restore(resumed, tune.Checkpoint.from_directory(str(tmp_path)))
    assert start == 1
    fit(CFG, small("train", 256, 3), small("val", 100, 3), device=CPU, training=resumed, start_epoch=start)
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.scheduler.state_dict() == uninterrupted.scheduler.state_dict()


def test_restore_loads_on_the_cpu_and_lets_load_state_dict_place_the_model(small, tmp_path):
    """On a GPU trial the old restore mapped the whole checkpoint to the model's device, and
    torch.set_rng_state refused the RNG state turned CUDA tensor. A model on "meta" (a device
    that is not the CPU, present on every machine) stands in for the GPU."""
    checkpoint_after_first_epoch(small, tmp_path)
    state = trainable.load_checkpoint_state(str(tmp_path / CHECKPOINT_FILE))
    rng = state["torch_rng"]
    assert (rng.device.type, rng.dtype) == ("cpu", torch.uint8)
    assert all(v.device.type == "cpu" for v in state["model"].values())

    elsewhere = build_training(CFG, torch.device("meta"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta parameters is a no-op, and says so
        assert trainable.restore(elsewhere, tune.Checkpoint.from_directory(str(tmp_path))) == 1
    assert torch.equal(torch.get_rng_state(), rng)
    # the weights and the momentum stayed on the model's device
    assert {p.device.type for p in elsewhere.model.parameters()} == {"meta"}
    buffers = [s["momentum_buffer"] for s in elsewhere.optimizer.state.values()]
    assert buffers and {b.device.type for b in buffers} == {"meta"}

    # what the old restore did: map_location = the model's device
    mapped = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True, map_location=torch.device("meta"))
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
        torch.set_rng_state(mapped["torch_rng"])


# --- when checkpoints are made ----------------------------------------------------------------

def due_epochs(policy: CheckpointPolicy, epoch_seconds: float, save_seconds: float) -> list[int]:
    """The epochs `policy` checkpoints when each epoch takes epoch_seconds and a save save_seconds."""
    now, due = 0.0, []
    policy.since = now
    for epoch in range(1, policy.last_epoch + 1):
        now += epoch_seconds
        if policy.due(epoch, now):
            due.append(epoch)
            now += save_seconds
            policy.saved(save_seconds, now)
    return due


def test_every_n_epochs_and_always_the_last():
    assert due_epochs(CheckpointPolicy(2, last_epoch=3), 1.0, 0.1) == [2, 3]
    assert due_epochs(CheckpointPolicy(1, last_epoch=3), 1.0, 0.1) == [1, 2, 3]
    assert due_epochs(CheckpointPolicy(5, last_epoch=12), 1.0, 0.1) == [5, 10, 12]


def test_auto_checkpoints_the_first_epoch_then_keeps_saves_under_five_percent():
    # CPU: epochs of seconds, a save of 0.05 s -> every epoch
    assert due_epochs(CheckpointPolicy(None, last_epoch=5), 3.0, 0.05) == [1, 2, 3, 4, 5]
    # GPU: 0.125 s epochs, a 0.0625 s save -> 1.25 s of training between saves: every 10th epoch
    due = due_epochs(CheckpointPolicy(None, last_epoch=25), 0.125, 0.0625)
    assert due == [1, 11, 21, 25]
    saves, training = len(due) - 2, (21 - 1) * 0.125  # the first and last are kept whatever they cost
    assert saves * 0.0625 <= training / AUTO_CHECKPOINT_RATIO


def test_every_reported_metric_is_a_field_of_the_epoch_record():
    """train_s5's report reads each REPORTED name off fit's EpochRecord."""
    assert set(REPORTED) <= {f.name for f in dataclasses.fields(EpochRecord)}


# --- saved weights ----------------------------------------------------------------------------

def test_saved_weights_are_cpu_tensors(small, tmp_path):
    """mnist_net.train's s5_model.pt (the retrain's best_model.pt: tests/test_retrain.py)."""
    training = build_training(CFG.replace(epochs=1), CPU)
    history = fit(CFG.replace(epochs=1), small("train", 128, 3), small("val", 100, 3), device=CPU,
                  training=training)
    result = train_cli.RunResult(CFG, training, history, EvalStats(0.1, 97.0), 1.0)
    train_cli.write_outputs(tmp_path, result, CPU)
    # no map_location: what a CPU-only machine does with the README's one-liner
    state = torch.load(tmp_path / "s5_model.pt", weights_only=True, map_location=None)
    assert state.keys() == training.model.state_dict().keys()
    assert {v.device.type for v in state.values()} == {"cpu"}


@pytest.mark.slow
def test_a_trial_checkpoints_the_epochs_its_setting_asks_for(tmp_path, local_ray):
    """A real 3-epoch trial in Tune: checkpoint_every=2 keeps epochs 2 and 3; auto has epoch 1. Last in the
    module: the local Ray goes on to tests/test_trial_failures.py."""
    base = CFG.replace(epochs=3, train_size=128, eval_size=100)
    epochs = {every: checkpointed_epochs(base, every, tmp_path) for every in (2, None)}
    assert epochs[2] == [2, 3]
    assert epochs[None][0] == 1 and epochs[None][-1] == 3


def checkpointed_epochs(base: TrainConfig, every: int | None, storage) -> list[int]:
    fn = tune.with_parameters(trainable.train_s5, base=base, data_dir=str(DEFAULT_DATA_DIR),
                              checkpoint_every=every)
    grid = tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space=dict(SEED_CONFIG),
                      run_config=tune.RunConfig(name=f"every-{every}", storage_path=str(storage), verbose=0,
                                                checkpoint_config=tune.CheckpointConfig(num_to_keep=None))).fit()
    result = grid[0]
    assert result.error is None and result.metrics["training_iteration"] == 3
    m = result.metrics  # what ASHA ranks by: val_acc, less a loss term below its resolution
    assert m["val_score"] == pytest.approx(m["val_acc"] - 1e-4 * m["val_loss"]) and m["val_score"] < m["val_acc"]
    epochs = []
    for checkpoint, metrics in result.best_checkpoints:
        with checkpoint.as_directory() as folder:
            state = trainable.load_checkpoint_state(f"{folder}/{CHECKPOINT_FILE}")
        assert state["epoch"] == metrics["training_iteration"]
        epochs.append(state["epoch"])
    return sorted(epochs)


# --- what a trial reports --------------------------------------------------------------------

"""Issue 15's GPU defects that a CPU can show: a mocked GPU (capability, free memory), a fake CUDA
tensor, a slow first step per input shape (cuDNN's autotuning), no Ray started."""

import time

import pytest
import torch

from mnist_net import engine, runtime
from mnist_net.config import TrainConfig
from mnist_net.model import Net
from tuner import worker
from tuner.plan import placement, search_plan
from tuner.run import trainable

CUDA = torch.device("cuda")


# --- 3: calibration times warm models --------------------------------------------------------

FIRST_SHAPE_S = 2.0  # what cuDNN's autotuning and CUDA's lazy init cost the first step of a shape


@pytest.fixture
def slow_first_step_per_shape(monkeypatch):
    """Net.forward sleeps the first time it sees an input shape, as cudnn.benchmark's search does
    (its cache is per process and shape, whichever model)."""
    seen, forward = set(), Net.forward

    def slow(self, x):
        if tuple(x.shape) not in seen:
            seen.add(tuple(x.shape))
            time.sleep(FIRST_SHAPE_S)
        return forward(self, x)

    monkeypatch.setattr(Net, "forward", slow)


def test_calibration_times_no_first_step_of_a_shape(small, slow_first_step_per_shape, monkeypatch):
    monkeypatch.setattr(search_plan, "CALIBRATION_IMAGES", 0)  # time 2 steps: well under a second here
    batch_size = 64
    speed = search_plan.measure_train(TrainConfig(batch_size=batch_size, precision="fp32"),
                                    small("train", 512), torch.device("cpu"))
    timed_images = search_plan.TIMED_STEPS["cpu"] * batch_size
    # the timed slice took less than one first step would: the warm-up absorbed it
    assert timed_images / speed < FIRST_SHAPE_S


# --- 4: checkpoints hold CPU tensors ---------------------------------------------------------

class FakeCuda(torch.Tensor):
    """A tensor that says it lives on a GPU; .cpu() gives a plain CPU tensor, as a real one would.
    torch.load(weights_only=True) refuses it, as a machine without a GPU refuses a CUDA tensor."""

    @property
    def device(self):
        return CUDA

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def on_fake_gpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().as_subclass(FakeCuda)
    if isinstance(obj, dict):
        return {k: on_fake_gpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [on_fake_gpu(v) for v in obj]
    return obj


def test_a_gpu_trials_checkpoint_loads_plainly_without_a_gpu(small, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=1, batch_size=64, train_size=128, eval_size=64, train_split="train", precision="fp32")
    training = engine.build_training(cfg, torch.device("cpu"))
    engine.fit(cfg, small("train", 128), small("val", 64), device=torch.device("cpu"), training=training)
    gpu_state = on_fake_gpu(training.state_dict())
    monkeypatch.setattr(training, "state_dict", lambda: gpu_state)
    trainable.save_state(str(tmp_path), training, 1, cfg)
    state = torch.load(tmp_path / trainable.CHECKPOINT_FILE, weights_only=True)  # no map_location
    tensors = list(state["model"].values()) + [state["torch_rng"]]
    assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)


# --- 5: a resumed optimizer keeps this device's kernel choice --------------------------------

def test_a_cpu_checkpoint_resumed_with_fused_sgd_stays_fused():
    cfg = TrainConfig(precision="fp32")
    cpu_run = engine.build_training(cfg, torch.device("cpu"))
    assert cpu_run.optimizer.param_groups[0]["fused"] is None  # the CPU's default SGD
    gpu_like = engine.build_training(cfg, torch.device("cpu"))
    for group in gpu_like.optimizer.param_groups:  # as build_training makes it on CUDA
        group["fused"] = True
    gpu_like.load_state_dict(cpu_run.state_dict())
    assert gpu_like.optimizer.param_groups[0]["fused"] is True
    assert gpu_like.optimizer.param_groups[0]["lr"] == cfg.lr  # the rest still comes from the state


# --- 9: fp16 with loss scaling on pre-Ampere GPUs --------------------------------------------

@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((6, 1), None)])
def test_auto_precision_on_cuda_by_compute_capability(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert runtime.autocast_dtype(CUDA, "auto") == dtype


def test_fp16_needs_fp16_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    with pytest.raises(ValueError, match="fp16 requested"):
        runtime.autocast_dtype(CUDA, "fp16")
    assert TrainConfig(precision="fp16").precision == "fp16"


def test_fp16_trains_through_the_scaler_and_resume_keeps_its_scale(small):
    cfg = TrainConfig(precision="fp32")
    training = engine.build_training(cfg, torch.device("cpu"))
    training.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    gen = torch.Generator().manual_seed(0)
    stats = engine.train_epoch(training.forward, training.optimizer, small("train", 128), batch_size=32,
                               generator=gen, scaler=training.scaler)
    assert stats.loss > 0 and training.scaler.get_scale() == 2.0**14  # 4 clean steps, each doubling
    resumed = engine.build_training(cfg, torch.device("cpu"))
    resumed.scaler = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(engine.cpu_state(training.state_dict()))
    assert resumed.scaler.get_scale() == 2.0**14


# --- 10: memory --------------------------------------------------------------------------------

GB = 10**9


def test_the_plan_caps_trials_per_gpu_by_its_free_memory():
    free_24gb_card = {"GPU": 1, "CPU": 32, placement.GPU_FREE_KEY: 22 * GB}
    p = placement.place([free_24gb_card], gpus_per_trial=1 / 16)
    assert p.concurrent == 7 and p.gpu_per_trial == pytest.approx(1 / 7)  # 22 x 0.9 / 2.5 GB
    assert "GPU memory holds 7" in p.describe()
    assert placement.place([{"GPU": 1, "CPU": 32}], gpus_per_trial=1 / 16).concurrent == 16  # not measured
    big = placement.place([{"GPU": 1, "CPU": 8, placement.GPU_FREE_KEY: 140 * GB}])
    assert (big.gpu_per_trial, big.concurrent) == (0.25, 4)


def test_the_chunk_shrinks_to_the_trials_part_of_gpu_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * GB, 24 * GB))
    assert engine.gpu_chunk_images(CUDA, 1.0) == 65536  # a whole epoch fits
    quarter = engine.gpu_chunk_images(CUDA, 1 / 16)  # 24/16 GB x 0.5 / 26 kB
    assert quarter == int(24 * GB / 16 * 0.5 // engine.CHUNK_BYTES_PER_IMAGE) < 60_000
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * GB, 24 * GB))
    assert engine.gpu_chunk_images(CUDA, 1.0) == int(GB * 0.5 // engine.CHUNK_BYTES_PER_IMAGE)
    assert engine.gpu_chunk_images(torch.device("cpu")) is None


def test_a_smaller_chunk_trains_the_same_batches(small):
    data, cfg = small("train", 256), TrainConfig(precision="fp32")
    losses = []
    for chunk in (None, 64):
        training = engine.build_training(cfg, torch.device("cpu"))
        stats = engine.train_epoch(training.forward, training.optimizer, data, batch_size=32,
                                   generator=torch.Generator().manual_seed(3), chunk=chunk)
        losses.append(stats.loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_cuda_out_of_memory_is_one_line_naming_gpus_per_trial():
    err = worker.explain_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n"
                                                    "GPU 0 has a total capacity of 23.6 GiB ..."), 0.0625)
    text = str(err)
    assert "\n" not in text and "--gpus-per-trial 0.125" in text and "16 trial(s) per GPU" in text
    assert isinstance(err, ValueError)


# --- 6: RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES --------------------------------------------

@pytest.mark.parametrize("gpu_id, visible, index", [("3", None, 3), ("3", "", 3), ("91", "90,91", 1),
                                                    (7, "5, 7", 1)])
def test_rays_gpu_id_to_torchs_index(gpu_id, visible, index):
    assert worker.gpu_index(gpu_id, visible) == index


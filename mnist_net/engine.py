"""Train and evaluate steps that return numbers, and the `fit` loop around them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mnist_net.config import TrainConfig
from mnist_net.data import CHUNK_IMAGES, Split, batches, eval_split_name
from mnist_net.model import Net
from mnist_net.runtime import autocast, autocast_dtype

EVAL_BATCH = 1000  # on a GPU: few, large launches
# On a CPU, 250 images' activations stay in cache: 20-28% less CPU time per image than 1000, in
# three runs on EPYC (native bf16 and emulated AVX2; bench/RESULTS.md, cpu_options).
CPU_EVAL_BATCH = 250
CHANCE_ACC = 10.0  # what a diverged run scores: 1 in 10 digits
DIVERGENCE_CHECK_EVERY = 16  # batches between host syncs that look for a non-finite loss
# GPU bytes one image of an augmentation chunk can hold at its peak, reasoned, not measured:
# float pixels (3,136) + affine_grid's base grid (28x28x3 floats: 9,408) and sampling grid
# (6,272) + grid_sample's output (3,136) + a channels_last copy (3,136) + the uint8 gather.
CHUNK_BYTES_PER_IMAGE = 26_000
CHUNK_MEMORY_FRACTION = 0.5  # of the run's memory share; the rest: context, weights, activations


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean of per-batch nll losses, as the seed logged
    acc: float  # percent
    seconds: float
    images_per_s: float
    diverged: bool = False


@dataclass(frozen=True)
class EvalStats:
    loss: float  # summed nll / N, as the seed's test()
    acc: float  # percent


DIVERGED_SCORES = EvalStats(loss=float("nan"), acc=CHANCE_ACC)  # a diverged epoch's, not evaluated


@dataclass
class Training:
    """What an epoch mutates; the tuner checkpoints exactly this."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    forward: nn.Module  # the model, or its torch.compile wrapper
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast only (bf16 and fp32 need none)

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()  # the loss scale it has learnt
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load a saved state; the optimizer keeps this device's kernel choice (DEVICE_KEYS)."""
        self.model.load_state_dict(state["model"])
        kept = [{k: g[k] for k in DEVICE_KEYS if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, keys in zip(self.optimizer.param_groups, kept, strict=True):
            group.update(keys)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


# Optimizer.load_state_dict restores every param-group key, these too: a CPU checkpoint (fused
# off) resumed on a GPU would run foreach SGD there, and a GPU one fused SGD on a CPU.
DEVICE_KEYS = ("fused", "foreach", "capturable", "differentiable")


def cpu_state(obj):
    """`obj` (nested dicts/lists of tensors) with every tensor copied to the CPU: a checkpoint
    that loads on a machine without a GPU, with torch.load(..., weights_only=True)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


@dataclass(frozen=True)
class EpochRecord:
    """One epoch as fit reports it. Only the evaluated split's scores are set: val when training
    on train, test on train+val (data.eval_split_name); the other split's stay None."""

    epoch: int
    lr: float  # the lr this epoch trained with
    train_loss: float
    train_acc: float
    epoch_seconds: float  # training only
    images_per_s: float
    eval_seconds: float | None  # None: training diverged, so nothing was evaluated
    val_loss: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None
    diverged: bool

    @classmethod
    def of(cls, epoch: int, lr: float, train: EpochStats, split: str, scores: EvalStats,
           eval_seconds: float | None) -> EpochRecord:
        """The record of an epoch scored `scores` on `split` ("val" or "test"); a non-finite
        eval loss (DIVERGED_SCORES) marks it diverged."""
        val, test = (scores, None) if split == "val" else (None, scores)
        return cls(epoch=epoch, lr=lr, train_loss=train.loss, train_acc=train.acc,
                   epoch_seconds=train.seconds, images_per_s=train.images_per_s, eval_seconds=eval_seconds,
                   val_loss=val.loss if val else None, val_acc=val.acc if val else None,
                   test_loss=test.loss if test else None, test_acc=test.acc if test else None,
                   diverged=not math.isfinite(scores.loss))

    @property
    def eval_split(self) -> str:
        return "val" if self.val_acc is not None else "test"

    @property
    def scores(self) -> EvalStats:
        """Loss and accuracy on eval_split (nan and CHANCE_ACC once diverged)."""
        if self.eval_split == "val":
            return EvalStats(self.val_loss, self.val_acc)
        return EvalStats(self.test_loss, self.test_acc)

    def to_dict(self) -> dict:
        """The JSON record: only what was measured (the None fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    diverged: bool = False


def build_training(cfg: TrainConfig, device: torch.device) -> Training:
    torch.manual_seed(cfg.seed)  # same seed -> same initial weights
    model = Net().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    on_cuda = device.type == "cuda"
    if on_cuda:
        # Fixed input shapes (two per epoch at most): let cuDNN time its algorithms once.
        torch.backends.cudnn.benchmark = True
    # The fused SGD is one kernel for all parameters on a GPU (the default, foreach, is several).
    # On this CPU it measured no faster than the default (bench/RESULTS.md), so the CPU keeps
    # the default and its numerics.
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                fused=True if on_cuda else None)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.gamma)
    forward = model
    if cfg.compile:
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        forward = torch.compile(model, mode=mode)
    # fp16's narrow range underflows small gradients: the scaler multiplies the loss up and skips
    # steps whose gradients overflowed.
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype(device, cfg.precision) == torch.float16 else None
    return Training(model, optimizer, scheduler, forward, scaler)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Split, *,
                batch_size: int, generator: torch.Generator, augment: bool = True,
                amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                scaler: torch.amp.GradScaler | None = None, chunk: int | None = None) -> EpochStats:
    """One pass over `data` in shuffled batches; stops early on a non-finite loss.

    scaler: fp16's loss scaling (Training.scaler). chunk: images augmented per call (None = the
    device's default; gpu_chunk_images caps it by GPU memory); the batches do not depend on it.

    On a CPU the loss is checked every DIVERGENCE_CHECK_EVERY batches (free there); on a GPU the
    check would block the host and starve the GPU of queued work, so it runs once, at the end.
    """
    model.train()
    device = data.labels.device
    check_every = DIVERGENCE_CHECK_EVERY if device.type == "cpu" else 0
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = n_batches = 0
    start = time.perf_counter()
    for x, y in batches(data, batch_size, generator=generator, augment=augment,
                        channels_last=channels_last, chunk=chunk):
        with autocast(device, amp_dtype):
            out = model(x)
        loss = F.nll_loss(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss_sum += loss.detach()
        correct += (out.argmax(1) == y).sum()
        seen, n_batches = seen + len(y), n_batches + 1
        if check_every and n_batches % check_every == 0 and not torch.isfinite(loss_sum):
            break
    mean_loss = float(loss_sum) / max(n_batches, 1)  # float() syncs the device
    seconds = time.perf_counter() - start
    return EpochStats(loss=mean_loss, acc=100.0 * int(correct) / max(seen, 1), seconds=seconds,
                      images_per_s=seen / seconds, diverged=not math.isfinite(mean_loss))


def gpu_chunk_images(device: torch.device, memory_share: float = 1.0) -> int | None:
    """Images per augmentation chunk that fit this run's part of the GPU's memory: the smaller of
    the free memory and `memory_share` (its GPU share: K trials on a GPU each get 1/K) of the
    total, half of it, at CHUNK_BYTES_PER_IMAGE; at most the whole epoch. None off CUDA."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    budget = min(free, total * memory_share) * CHUNK_MEMORY_FRACTION
    return max(1, min(CHUNK_IMAGES["cuda"], int(budget // CHUNK_BYTES_PER_IMAGE)))


def eval_batch(device: torch.device) -> int:
    return CPU_EVAL_BATCH if device.type == "cpu" else EVAL_BATCH


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, *, batch_size: int | None = None,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> EvalStats:
    """Loss and accuracy over `data`; batch_size None = eval_batch(device)."""
    model.eval()
    device = data.labels.device
    batch_size = batch_size or eval_batch(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches(data, batch_size, channels_last=channels_last):
        with autocast(device, amp_dtype):
            out = model(x)
        loss_sum += F.nll_loss(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    n = max(len(data), 1)
    return EvalStats(loss=float(loss_sum) / n, acc=100.0 * int(correct) / n)


@torch.no_grad()
def predict(model: nn.Module, data: Split, *, batch_size: int | None = None,
            channels_last: bool = False) -> torch.Tensor:
    """Predicted digit for every image of `data`, in order."""
    model.eval()
    batch_size = batch_size or eval_batch(data.labels.device)
    return torch.cat([model(x).argmax(1) for x, _ in batches(data, batch_size, channels_last=channels_last)])


EpochCallback = Callable[[EpochRecord, Training], None]


def fit(cfg: TrainConfig, train: Split, evals: Split, *, device: torch.device,
        training: Training | None = None, start_epoch: int = 0,
        callback: EpochCallback | None = None, memory_share: float = 1.0) -> History:
    """Train for cfg.epochs (from start_epoch), evaluating each epoch; stops on divergence.

    memory_share: the part of the GPU's memory this run may use (its Ray GPU share).

    Each epoch's randomness comes from (seed, epoch), so a run resumed at epoch k draws
    the same batches and augmentations as an uninterrupted one.
    """
    training = training or build_training(cfg, device)
    amp = autocast_dtype(device, cfg.precision)
    name = eval_split_name(cfg.train_split)
    chunk = gpu_chunk_images(device, memory_share)
    history = History()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
        lr = training.optimizer.param_groups[0]["lr"]
        stats = train_epoch(training.forward, training.optimizer, train, batch_size=cfg.batch_size,
                            generator=gen, augment=cfg.augment, amp_dtype=amp,
                            channels_last=cfg.channels_last, scaler=training.scaler, chunk=chunk)
        training.scheduler.step()
        scores, eval_seconds = DIVERGED_SCORES, None
        if not stats.diverged:
            eval_start = time.perf_counter()
            scores = evaluate(training.forward, evals, amp_dtype=amp, channels_last=cfg.channels_last)
            eval_seconds = time.perf_counter() - eval_start
        if not math.isfinite(scores.loss):  # the last steps can leave non-finite weights behind a finite loss
            scores = DIVERGED_SCORES
        record = EpochRecord.of(epoch, lr, stats, name, scores, eval_seconds)
        history.epochs.append(record)
        if callback is not None:
            callback(record, training)
        if record.diverged:
            history.diverged = True
            break
    return history

"""MNIST splits kept as uint8 tensors on the training device, served as batches by index.

train = first 50,000 of MNIST's training file, val = last 10,000, test = the 10,000
test images. Tuning selects on val; only final evaluations touch test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_net.augment import MEAN, STD, affine_params, warp
from mnist_net.download import ensure_mnist

N_TRAIN, N_VAL, N_TEST = 50_000, 10_000, 10_000  # MNIST's 60k training file = train + val; its test file
DATA_DIR = os.environ.get("MNIST_DATA_DIR", "~/.cache/mnist-s5")  # as given: a leading ~ is each machine's home
DEFAULT_DATA_DIR = Path(DATA_DIR).expanduser()
# Images prepared per batched call. A GPU takes a whole epoch at once (60k images: ~0.6 GB of
# float pixels and sampling grid; a few calls instead of ~100 launches per step). On a CPU calls
# are cheap and the working set must stay in cache: per 10k augmented images, one thread took
# 0.12 CPU-s in chunks of 512, 0.20 in chunks of 4096, 0.16 batch by batch (bench/RESULTS.md).
CHUNK_IMAGES = {"cuda": 1 << 16, "cpu": 512}


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, size: int | None, seed: int) -> Split:
        """A fixed, seeded random subset (the whole split when size is None or too big)."""
        if size is None or size >= len(self):
            return self
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:size].to(self.labels.device)
        return Split(self.images[idx], self.labels[idx])


def load_splits(data_dir: str | Path = DEFAULT_DATA_DIR) -> dict[str, Split]:
    """{"train", "val", "train+val", "test"} on the CPU, acquiring MNIST if needed."""
    from torchvision.datasets import MNIST

    root = ensure_mnist(data_dir).parent.parent
    full = MNIST(str(root), train=True, download=False)
    test = MNIST(str(root), train=False, download=False)
    images, labels = full.data.unsqueeze(1), full.targets
    return {
        "train": Split(images[:N_TRAIN], labels[:N_TRAIN]),
        "val": Split(images[N_TRAIN:], labels[N_TRAIN:]),
        "train+val": Split(images, labels),
        "test": Split(test.data.unsqueeze(1), test.targets),
    }


def eval_split_name(train_split: str) -> str:
    """Per-epoch metrics come from val when training on train, else from test (curves only)."""
    return "val" if train_split == "train" else "test"


def chunk_images(device: torch.device, batch_size: int, wanted: int | None = None) -> int:
    """Images prepared per call (`wanted`, else the device's CHUNK_IMAGES), rounded down to whole
    batches, at least one, so that every batch comes out of a single chunk."""
    wanted = wanted or CHUNK_IMAGES.get(device.type, CHUNK_IMAGES["cpu"])
    return max(batch_size, wanted // batch_size * batch_size)


def batches(split: Split, batch_size: int, *, generator: torch.Generator | None = None,
            augment: bool = False, channels_last: bool = False, chunk: int | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches; shuffled and augmented when a generator is given.

    The whole pass's order and augmentation parameters are drawn up front, in that order, so
    the batches depend only on the generator's seed, never on `chunk`. Then `chunk` images at a
    time (default chunk_images) are gathered, converted, warped and normalised in a few large
    calls, and batches are sliced out of them: on a GPU this replaces a hundred small kernel
    launches per step with a few per chunk.
    """
    n, device = len(split), split.labels.device
    order = theta = None
    if generator is not None:
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    if augment:
        draw_on = generator.device if generator is not None else device
        theta = affine_params(n, generator, draw_on).to(device)  # (n, 2, 3)
    step = chunk_images(device, batch_size, chunk)
    for first in range(0, n, step):
        part = slice(first, first + step)
        if order is None:
            images, labels = split.images[part], split.labels[part]
        else:
            images, labels = split.images[order[part]], split.labels[order[part]]
        x = images.float().div_(255.0)
        if theta is not None:
            x = warp(x, theta[part])
        x = x.sub_(MEAN).div_(STD)  # == (x - MEAN) / STD, in place on our own copy
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for start in range(0, len(labels), batch_size):
            yield x[start:start + batch_size], labels[start:start + batch_size]

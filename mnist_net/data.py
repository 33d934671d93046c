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

from mnist_net.augment import augment_batch, normalize
from mnist_net.download import ensure_mnist

N_TRAIN = 50_000
DEFAULT_DATA_DIR = Path(os.environ.get("MNIST_DATA_DIR", "~/.cache/mnist-s5")).expanduser()


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


def batches(split: Split, batch_size: int, *, generator: torch.Generator | None = None,
            augment: bool = False, channels_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches; shuffled and augmented when a generator is given."""
    n = len(split)
    if generator is not None:
        order = torch.randperm(n, generator=generator, device=generator.device)
        order = order.to(split.labels.device)
    else:
        order = torch.arange(n, device=split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = split.images[idx].float().div_(255.0)
        if augment:
            x = augment_batch(x, generator)
        x = normalize(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, split.labels[idx]

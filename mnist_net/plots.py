"""The seed's figures. Each function returns the figure and saves a PNG when given a path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from mnist_net import files
from mnist_net.engine import EpochRecord


def save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return fig


def curves(epochs: Sequence[EpochRecord | Mapping], path: str | Path | None = None, title: str = "") -> Figure:
    """The seed's 2x2: train loss, train acc, eval (test or val) loss, eval acc per epoch.

    epochs: fit's records (History.epochs) or their JSON dicts (a metrics or run file's)."""
    epochs = [e if isinstance(e, Mapping) else e.to_dict() for e in epochs]
    eval_name = "val" if any("val_acc" in e for e in epochs) else "test"
    fig, axs = plt.subplots(2, 2, figsize=(15, 10))
    panels = [("train_loss", "Training Loss"), ("train_acc", "Training Accuracy"),
              (f"{eval_name}_loss", f"{eval_name.title()} Loss"),
              (f"{eval_name}_acc", f"{eval_name.title()} Accuracy")]
    x = [e["epoch"] for e in epochs]
    for ax, (key, label) in zip(axs.flat, panels, strict=True):
        ax.plot(x, [e.get(key, float("nan")) for e in epochs], marker="o")
        ax.set_title(label)
        ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    return save(fig, path)


def sample_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path | None = None,
                rows: int = 3, cols: int = 4) -> Figure:
    """The seed's first picture: a rows x cols grid of images titled with their labels."""
    fig = plt.figure(figsize=(cols * 2, rows * 2))
    for i in range(min(rows * cols, len(labels))):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i].squeeze(0).cpu().numpy(), cmap="gray")
        ax.set_title(str(int(labels[i])))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save(fig, path)


def misclassified(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                  path: str | Path | None = None, rows: int = 3, cols: int = 6) -> Figure:
    """A grid of the images the model got wrong, titled 'true -> predicted'."""
    wrong = (predictions.cpu() != labels.cpu()).nonzero().flatten()[: rows * cols]
    fig = plt.figure(figsize=(cols * 2, rows * 2.2))
    for i, idx in enumerate(wrong.tolist()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[idx].squeeze(0).cpu().numpy(), cmap="gray")
        ax.set_title(f"{int(labels[idx])} -> {int(predictions[idx])}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{len(wrong)} misclassified shown of {int((predictions.cpu() != labels.cpu()).sum())}")
    fig.tight_layout()
    return save(fig, path)

"""The ERA Session 5 network: four 3x3 convs (32/64/128/256), two max-pools, FC 4096->50->10."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The seed's torchinfo call used an unbatched single-channel image; keeping it
# makes our summary table read exactly like the seed's.
SUMMARY_INPUT_SIZE = (1, 28, 28)
N_PARAMS = 593_200


class Net(nn.Module):
    """S5 network; returns log-probabilities over the 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3)
        self.fc1 = nn.Linear(4096, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # (B, 32, 26, 26)
        x = F.relu(F.max_pool2d(self.conv2(x), 2))  # (B, 64, 12, 12)
        x = F.relu(self.conv3(x))  # (B, 128, 10, 10)
        x = F.relu(F.max_pool2d(self.conv4(x), 2))  # (B, 256, 4, 4)
        # reshape, not view: a channels_last tensor is not viewable as (B, 4096),
        # and reshape keeps the logical NCHW order the seed's view() used.
        x = x.reshape(-1, 4096)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


def summary(model: nn.Module | None = None, verbose: int = 0):
    """torchinfo summary in the seed's layout (input/output shape, params, params %)."""
    from torchinfo import summary as torchinfo_summary

    return torchinfo_summary(
        model if model is not None else Net(),
        input_size=SUMMARY_INPUT_SIZE,
        col_names=("input_size", "output_size", "num_params", "params_percent"),
        verbose=verbose,
    )

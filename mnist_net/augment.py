"""The seed's training augmentation, applied to a whole batch on its device.

Seed (per PIL image): RandomApply([CenterCrop(22)], p=0.1) -> Resize(28) ->
RandomRotation(+-15 deg, fill=0) -> ToTensor -> Normalize(0.1307, 0.3081).
Here each image gets its own crop coin and angle, folded into one affine matrix and
resampled once with grid_sample (bilinear; the seed's rotation was nearest).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081
CROP_P, CROP_SIZE, DEGREES = 0.1, 22, 15.0


def affine_params(n: int, generator: torch.Generator, device: torch.device,
                  crop_p: float = CROP_P, crop_size: int = CROP_SIZE,
                  degrees: float = DEGREES) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates, one random draw per image."""
    crop = torch.rand(n, generator=generator, device=device) < crop_p
    angle = (torch.rand(n, generator=generator, device=device) * 2 - 1) * math.radians(degrees)
    # Center-crop to 22 then resize to 28 == sample the central 22/28 of the image.
    scale = torch.where(crop, crop_size / 28.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x: (B, 1, 28, 28) float in [0, 1], theta: (B, 2, 3) -> x resampled through theta."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # padding zeros == the seed's fill=0 (black), applied before normalisation.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

"""The ERA Session 5 MNIST network, its data and its training steps. Knows nothing of tuning."""

import os

# Idle OpenMP threads sleep instead of spinning. On a shared or oversubscribed CPU, spinning
# made training 1.5-10x slower (bench/RESULTS.md); it must be set before torch loads libgomp,
# so it lives here, ahead of every torch import in the package. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mnist_net.config import TrainConfig  # noqa: E402
from mnist_net.model import N_PARAMS, Net, summary  # noqa: E402

__all__ = ["N_PARAMS", "Net", "TrainConfig", "summary"]

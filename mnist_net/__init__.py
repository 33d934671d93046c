"""The ERA Session 5 MNIST network, its data and its training steps. Knows nothing of tuning."""

from mnist_net.config import TrainConfig
from mnist_net.model import N_PARAMS, Net, summary

__all__ = ["N_PARAMS", "Net", "TrainConfig", "summary"]

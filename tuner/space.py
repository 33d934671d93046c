"""The one place for the search space, the metric and its mode."""

from __future__ import annotations

from mnist_net.engine import CHANCE_ACC  # noqa: F401  (what a diverged trial scores; the tuner reads it here)

METRIC = "val_acc"  # percent correct on the 10k val split (never test)
MODE = "max"
TIME_ATTR = "training_iteration"  # one iteration == one epoch

LR_RANGE = (1e-3, 0.2)  # log-uniform
MOMENTUM_RANGE = (0.5, 0.99)
BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
PARAMS = ("lr", "momentum", "batch_size")

# The seed's recipe is always trial 1, so the baseline is in every search.
SEED_CONFIG = {"lr": 0.01, "momentum": 0.9, "batch_size": 512}


def param_space() -> dict:
    from ray import tune  # here, so that reading results (the notebook) never imports Ray

    return {
        "lr": tune.loguniform(*LR_RANGE),
        "momentum": tune.uniform(*MOMENTUM_RANGE),
        "batch_size": tune.choice(list(BATCH_SIZES)),
    }


def space_record() -> dict:
    """The same space as JSON, recorded in best_config.json so that --extend can compare spaces."""
    return {"lr": {"loguniform": list(LR_RANGE)}, "momentum": {"uniform": list(MOMENTUM_RANGE)},
            "batch_size": {"choice": list(BATCH_SIZES)}}


def optuna_distributions() -> dict:
    """The same space as Optuna distributions, to rebuild a study from finished trials."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {
        "lr": FloatDistribution(*LR_RANGE, log=True),
        "momentum": FloatDistribution(*MOMENTUM_RANGE),
        "batch_size": CategoricalDistribution(list(BATCH_SIZES)),
    }

"""The search space is one table (tuner.space.SPACE): Ray's space, the JSON record in best_config.json
and Optuna's distributions are all read from it, and say the same."""

from optuna.distributions import CategoricalDistribution, FloatDistribution
from ray.tune.search.sample import Categorical, Float

from tuner import space

# What every committed best_config.json records: a change here makes --extend refuse older searches.
RECORD = {"lr": {"loguniform": [0.001, 0.2]}, "momentum": {"uniform": [0.5, 0.99]},
          "batch_size": {"choice": [32, 64, 128, 256, 512, 1024]}}


def test_the_record_is_the_one_saved_searches_hold():
    assert space.space_record() == RECORD
    assert space.PARAMS == tuple(RECORD)
    assert (space.LR_RANGE, space.MOMENTUM_RANGE, space.BATCH_SIZES) == tuple(
        tuple(next(iter(r.values()))) for r in RECORD.values())


def test_optuna_distributions_match_the_record():
    dists = space.optuna_distributions()
    assert list(dists) == list(RECORD)
    assert dists["lr"] == FloatDistribution(0.001, 0.2, log=True)
    assert dists["momentum"] == FloatDistribution(0.5, 0.99, log=False)
    assert dists["batch_size"] == CategoricalDistribution([32, 64, 128, 256, 512, 1024])


def test_rays_space_matches_the_record():
    ray_space = space.param_space()
    assert list(ray_space) == list(RECORD)
    for name, kind in (("lr", "LogUniform"), ("momentum", "Uniform")):
        dim = ray_space[name]
        assert isinstance(dim, Float) and [dim.lower, dim.upper] == RECORD[name][kind.lower()]
        assert type(dim.get_sampler()).__name__ == f"_{kind}"
    assert isinstance(ray_space["batch_size"], Categorical)
    assert ray_space["batch_size"].categories == RECORD["batch_size"]["choice"]
    assert space.SEED_CONFIG["batch_size"] in space.BATCH_SIZES

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


# --- what ASHA ranks by ----------------------------------------------------------------------

def rung_decisions(scores: list[float]) -> list[str]:
    """Ray's own async-ASHA bracket (max_t 4, grace 1, halving): the decision for each trial's
    first-rung score, reported in this order."""
    from types import SimpleNamespace

    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(min_t=1, max_t=4, reduction_factor=2, s=0)
    return [bracket.on_result(SimpleNamespace(trial_id=str(i)), 1, s) for i, s in enumerate(scores)]


def test_trials_tied_at_chance_are_stopped_by_their_loss():
    """Six trials still at the majority class (10.1 %) after epoch 1, one that learns. By val_acc
    alone ASHA stops none of them (none is strictly below the cutoff); by val_score it stops
    those whose loss is above the median of the rung so far, as it would on distinct scores."""
    accs = [10.1, 10.1, 10.1, 93.0, 10.1, 10.1, 10.1]
    losses = [2.3011, 2.3020, 2.3034, 0.21, 2.3040, 2.3001, 2.3050]
    assert set(rung_decisions(accs)) == {"CONTINUE"}
    decided = rung_decisions([space.val_score(a, v) for a, v in zip(accs, losses, strict=True)])
    assert decided[3] == "CONTINUE" and decided.count("STOP") >= 3, decided
    assert [d for d, v in zip(decided, losses, strict=True) if v == 2.3050] == ["STOP"]


def test_the_loss_term_never_reorders_different_accuracies():
    worst, best = space.val_score(50.01, float("nan")), space.val_score(50.0, 0.0)
    assert worst > best  # 0.01 pp (one image in 10,000) outweighs any loss
    assert space.val_score(10.0, float("inf")) == space.val_score(10.0, 1e9) == 10.0 - 10 * space.LOSS_WEIGHT


def test_contains_checks_every_param_against_the_table():
    import pandas as pd

    inside = pd.DataFrame({"lr": [1e-3, 0.2], "momentum": [0.5, 0.99], "batch_size": [32, 1024]})
    assert space.contains(inside)
    for param, outside in (("lr", 0.3), ("momentum", 0.4), ("batch_size", 48)):
        assert not space.contains(inside.assign(**{param: [inside[param][0], outside]})), param

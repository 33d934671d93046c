"""tuner.confirm.stats on constructed predictions: known discordant counts, checked against scipy directly."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from tuner.confirm import stats

N = 10_000


def paired(b: int, c: int, both: int, n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correctness arrays where exactly b images only A gets right, c only B, `both` both."""
    kinds = np.array([1] * b + [2] * c + [3] * both + [0] * (n - b - c - both))
    np.random.default_rng(seed).shuffle(kinds)
    return (kinds == 1) | (kinds == 3), (kinds == 2) | (kinds == 3)


def test_mcnemar_counts_discordant_images_and_matches_scipy_binomtest():
    a, b = paired(b=30, c=12, both=9_800)
    m = stats.mcnemar(a, b)
    assert (m["b"], m["c"]) == (30, 12)
    assert m["pvalue"] == pytest.approx(sp.binomtest(30, 42, 0.5).pvalue, rel=1e-12)
    assert 0.005 < m["pvalue"] < 0.01  # two-sided exact: 30 of 42 discordant
    assert m["diff_pp"] == pytest.approx(100 * (30 - 12) / N)
    assert m["diff_pp"] == pytest.approx(100 * (a.mean() - b.mean()))


def test_mcnemar_is_symmetric_and_one_when_nothing_differs():
    a, b = paired(b=5, c=40, both=9_000)
    ab, ba = stats.mcnemar(a, b), stats.mcnemar(b, a)
    assert (ab["b"], ab["c"]) == (ba["c"], ba["b"]) and ab["pvalue"] == pytest.approx(ba["pvalue"])
    same = stats.mcnemar(a, a)
    assert (same["b"], same["c"], same["pvalue"], same["diff_pp"]) == (0, 0, 1.0, 0.0)


def test_mcnemar_rejects_arrays_of_different_length():
    with pytest.raises(ValueError, match="differ in length"):
        stats.mcnemar(np.ones(10, bool), np.ones(9, bool))


def test_paired_t_ci_is_scipy_ttest_rel_interval():
    best, seed = [99.10, 98.95, 99.20], [98.40, 98.55, 98.30]
    low, high = stats.paired_t_ci(best, seed)
    ci = sp.ttest_rel(best, seed).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high))
    diffs = np.subtract(best, seed)
    half = sp.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)  # the textbook interval
    assert (low, high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert all(map(math.isnan, stats.paired_t_ci([99.0, 98.0], [98.5, 97.5])))  # no spread: no interval


def test_bootstrap_ci_covers_the_difference_and_is_reproducible():
    # 1,000 images keep it quick (a percentile bootstrap of 10k images takes ~1 s on 2 cores)
    a, b = paired(b=20, c=5, both=950, n=1_000)
    low, high = stats.bootstrap_ci(a, b)
    assert low < 1.5 < high  # the observed difference, 100 * (20 - 5) / 1k
    assert low > 0  # 20 vs 5 discordant: clearly better
    # scipy's percentile bootstrap of the per-image differences, the paired statistic
    ref = sp.bootstrap((a.astype(float) - b.astype(float),), lambda d, axis: 100 * d.mean(axis),
                       vectorized=True, n_resamples=stats.BOOTSTRAP_RESAMPLES, method="percentile",
                       random_state=stats.BOOTSTRAP_SEED)
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=1e-9)
    assert stats.bootstrap_ci(a, b) == (low, high)  # fixed random_state
    assert stats.bootstrap_ci(a, a) == (0.0, 0.0)


def test_compare_picks_the_method_by_seed_count():
    one = stats.compare(*map(list, zip(paired(20, 5, 950, n=1_000))))  # 1k images: quick
    assert one["ci_method"].startswith("paired bootstrap") and one["mcnemar"][0]["b"] == 20
    assert one["mean_diff_pp"] == pytest.approx(1.5) and one["ci_low_pp"] > 0
    runs = [paired(60 + 10 * s, 20, 9_800, seed=s) for s in range(3)]
    three = stats.compare([r[0] for r in runs], [r[1] for r in runs])
    assert three["ci_method"].startswith("paired t")
    assert [m["b"] for m in three["mcnemar"]] == [60, 70, 80]
    ci = sp.ttest_rel(three["acc_best"], three["acc_seed_config"]).confidence_interval()
    assert (three["ci_low_pp"], three["ci_high_pp"]) == pytest.approx((ci.low, ci.high))
    assert three["diff_pp"] == pytest.approx([0.4, 0.5, 0.6])
    # two seeds that differ by exactly the same amount: the t interval has no width, so the images decide
    same = [paired(7, 2, 980, n=1_000, seed=s) for s in range(2)]
    pooled = stats.compare([r[0] for r in same], [r[1] for r in same])
    assert "all seeds pooled" in pooled["ci_method"]
    assert pooled["ci_low_pp"] < 0.5 < pooled["ci_high_pp"] and pooled["ci_low_pp"] > 0


def comparison(low, high, mean, pvalues, diffs=None, method="paired t over seeds (scipy.stats.ttest_rel)"):
    diffs = diffs if diffs is not None else [mean] * len(pvalues)
    return {"ci_low_pp": low, "ci_high_pp": high, "mean_diff_pp": mean, "confidence": 0.95, "ci_method": method,
            "diff_pp": diffs, "mcnemar": [{"pvalue": p, "diff_pp": d} for p, d in zip(pvalues, diffs, strict=True)]}


def built(gains: list[tuple[int, int]]) -> dict:
    """stats.compare on constructed predictions: per seed, (b, c) discordant images."""
    runs = [paired(b, c, 9_700, seed=s) for s, (b, c) in enumerate(gains)]
    return stats.compare([r[0] for r in runs], [r[1] for r in runs])


def test_outcome_better_across_seeds_needs_a_t_interval_that_excludes_zero():
    c = built([(60, 20), (70, 20), (80, 20)])  # +0.4, +0.5, +0.6 pp: t over 3 seeds excludes 0
    assert c["ci_low_pp"] > 0 and stats.outcome(c) == "better"
    line = stats.verdict(c, 4, 50_000, ("the confirmed winner (trial 7)", "the seed's config"))
    assert line.startswith("the confirmed winner (trial 7) beats the seed's config by 0.50 pp on test across seeds")
    assert line.endswith("at 4 epochs on 50k images (1/6 of the seed's 20 × 60k), 3 seeds")
    worse = built([(20, 60), (20, 70), (20, 80)])
    assert stats.outcome(worse) == "worse"
    assert stats.verdict(worse, 4, 50_000).startswith("the seed's config beats best by 0.50 pp on test across seeds")


def test_outcome_every_seed_but_too_few_says_how_many_seeds_would_decide():
    # the case: +1.49 and +1.94 pp on 2 seeds, McNemar p < 1e-20 each; t over 2 seeds (1 df) includes 0
    c = built([(200, 51), (230, 36)])
    assert c["ci_low_pp"] < 0 < c["ci_high_pp"]
    assert stats.outcome(c) == "better_on_every_seed"
    need = stats.seeds_to_decide(c["diff_pp"])
    diffs = np.array(c["diff_pp"])
    # the smallest n whose t interval, with this mean and spread, excludes 0; checked against scipy
    assert sp.t.ppf(0.975, need - 1) * diffs.std(ddof=1) / math.sqrt(need) < diffs.mean()
    assert sp.t.ppf(0.975, need - 2) * diffs.std(ddof=1) / math.sqrt(need - 1) >= diffs.mean()
    line = stats.verdict(c, 2, 60_000)
    assert line.startswith("best beats the seed's config on every seed (+1.49, +1.94 pp per seed, McNemar p < 0.001")
    assert f"but 2 seeds are too few to generalise: about {need} seeds would decide it (--seeds {need})" in line
    one = built([(200, 51)])  # one seed: no spread known
    assert stats.outcome(one) == "better_on_every_seed" and stats.seeds_to_decide(one["diff_pp"]) is None
    assert "1 seed is too few to generalise: --seeds 3 or more would give an interval" in stats.verdict(one, 2, 60_000)
    assert stats.outcome(built([(51, 200), (36, 230)])) == "worse_on_every_seed"


def test_outcome_seeds_disagree_when_significant_both_ways():
    c = built([(200, 50), (50, 200), (60, 60)])
    assert stats.outcome(c) == "disagree"
    line = stats.verdict(c, 4, 50_000)
    assert line.startswith("the seeds disagree: best - the seed's config +1.50, -1.50, +0.00 pp per seed")
    assert "neither config is better" in line


def test_outcome_no_difference():
    c = built([(30, 25), (28, 30), (31, 27)])
    assert stats.outcome(c) == "no_difference"
    assert stats.verdict(c, 20, 60_000).startswith("no significant difference on test (best - the seed's config ")
    # one significant seed and two that are not: no claim either way
    assert stats.outcome(comparison(-0.1, 0.9, 0.4, [0.001, 0.4, 0.3], [1.0, 0.1, 0.1])) == "no_difference"
    # a bootstrap interval (one seed) never speaks "across seeds", even when it excludes 0
    one = comparison(0.1, 0.5, 0.3, [0.2], method="paired bootstrap over test images")
    assert stats.outcome(one) == "no_difference"


def test_verdict_formats_p_values_and_budget():
    line = stats.verdict(comparison(-0.29, 0.54, 0.13, [0.57, 0.3], [0.3, -0.04]), 1, 1024)
    assert line == ("no significant difference on test (best - the seed's config +0.13 pp, 95 % CI -0.29 to 0.54, "
                    "McNemar p = 0.57, 0.3 per seed) at 1 epoch on 1,024 images (1/1172 of the seed's 20 × 60k), "
                    "2 seeds")


def test_scope_names_the_recipe_against_the_seeds():
    assert stats.scope(4, 5_000) == "at 4 epochs on 5k images (1/60 of the seed's 20 × 60k)"
    assert stats.scope(20, 60_000) == "at 20 epochs on 60k images (the seed's recipe)"
    assert stats.scope(20, 50_000) == "at 20 epochs on 50k images (83 % of the seed's 20 × 60k)"
    assert stats.scope(20, 30_000) == "at 20 epochs on 30k images (1/2 of the seed's 20 × 60k)"


def test_seeds_too_dispersed_for_a_t_interval_get_none_that_passes_100_pp():
    # the run: 3 seeds of a starved seed config, +42.4, +30.1, +74.8 pp; a t interval reaches ~130 pp
    runs = [paired(b, c, 100, n=1_000, seed=s) for s, (b, c) in enumerate([(440, 16), (310, 9), (750, 2)])]
    c = stats.compare([r[0] for r in runs], [r[1] for r in runs])
    t = sp.ttest_rel(c["acc_best"], c["acc_seed_config"]).confidence_interval()
    assert t.high > 100  # what the old verdict printed as the interval
    assert -100 <= c["ci_low_pp"] <= c["ci_high_pp"] <= 100
    assert c["dispersed_t_pp"] == pytest.approx([t.low, t.high], abs=0.01)
    assert "too dispersed for a t interval across seeds" in c["ci_method"]
    assert stats.outcome(c) == "better_on_every_seed"  # per-seed McNemar, no claim across seeds
    line = stats.verdict(c, 4, 5_000)
    assert "the seeds are too dispersed for an interval across seeds (a t interval would pass ±100 pp)" in line
    assert "CI" not in line and line.endswith("(1/60 of the seed's 20 × 60k), 3 seeds")
    within = built([(60, 20), (70, 20), (80, 20)])
    assert within["dispersed_t_pp"] is None and within["ci_method"].startswith("paired t")


def test_kendall_tau_is_scipy_and_nan_below_two_configs():
    proxy, confirmed = [98.9, 98.8, 98.7, 73.2], [99.0, 99.1, 98.6, 99.2]
    got = stats.kendall_tau(proxy, confirmed)
    ref = sp.kendalltau(proxy, confirmed)
    assert (got["tau"], got["pvalue"], got["configs"]) == pytest.approx((ref.statistic, ref.pvalue, 4))
    assert stats.kendall_tau([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])["tau"] == pytest.approx(1.0)
    assert math.isnan(stats.kendall_tau([1.0], [2.0])["tau"])

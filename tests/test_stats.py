"""tuner.stats on constructed predictions: known discordant counts, checked against scipy directly."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from tuner import stats

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
    a, b = paired(b=200, c=50, both=9_500)
    low, high = stats.bootstrap_ci(a, b)
    assert low < 1.5 < high  # the observed difference, 100 * (200 - 50) / 10k
    assert low > 0  # 200 vs 50 discordant: clearly better
    ref = sp.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis: 100 * (x.mean(axis) - y.mean(axis)),
                       paired=True, vectorized=True, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                       random_state=stats.BOOTSTRAP_SEED)
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=1e-9)
    assert stats.bootstrap_ci(a, b) == (low, high)  # fixed random_state
    assert stats.bootstrap_ci(a, a) == (0.0, 0.0)


def test_compare_picks_the_method_by_seed_count():
    one = stats.compare(*map(list, zip(paired(200, 50, 9_500))))
    assert one["ci_method"].startswith("paired bootstrap") and one["mcnemar"][0]["b"] == 200
    assert one["mean_diff_pp"] == pytest.approx(1.5) and one["ci_low_pp"] > 0
    runs = [paired(60 + 10 * s, 20, 9_800, seed=s) for s in range(3)]
    three = stats.compare([r[0] for r in runs], [r[1] for r in runs])
    assert three["ci_method"].startswith("paired t")
    assert [m["b"] for m in three["mcnemar"]] == [60, 70, 80]
    ci = sp.ttest_rel(three["acc_best"], three["acc_seed_config"]).confidence_interval()
    assert (three["ci_low_pp"], three["ci_high_pp"]) == pytest.approx((ci.low, ci.high))
    assert three["diff_pp"] == pytest.approx([0.4, 0.5, 0.6])
    # two seeds that differ by exactly the same amount: the t interval has no width, so the images decide
    same = [paired(70, 20, 9_800, seed=s) for s in range(2)]
    pooled = stats.compare([r[0] for r in same], [r[1] for r in same])
    assert "all seeds pooled" in pooled["ci_method"]
    assert pooled["ci_low_pp"] < 0.5 < pooled["ci_high_pp"] and pooled["ci_low_pp"] > 0


def comparison(low, high, mean, pvalues):
    return {"ci_low_pp": low, "ci_high_pp": high, "mean_diff_pp": mean, "confidence": 0.95,
            "mcnemar": [{"pvalue": p} for p in pvalues]}


def test_verdict_lines():
    assert stats.verdict(comparison(1.2, 2.4, 1.8, [1e-5, 2e-4, 1e-6]), 2, 60_000) == (
        "best beats the seed's config by 1.80 pp on test (95 % CI 1.20–2.40, McNemar p < 0.001 for each "
        "seed) at 2 epochs on 60k images, 3 seeds")
    assert stats.verdict(comparison(-0.5, -0.1, -0.3, [0.02]), 20, 60_000) == (
        "the seed's config beats best by 0.30 pp on test (95 % CI 0.10–0.50, McNemar p = 0.02) at 20 epochs "
        "on 60k images, 1 seed")
    line = stats.verdict(comparison(-0.29, 0.54, 0.13, [0.57, 0.3]), 1, 1024)
    assert line == ("no significant difference on test (best - seed's config +0.13 pp, 95 % CI -0.29 to 0.54, "
                    "McNemar p = 0.57, 0.3 per seed) at 1 epoch on 1,024 images, 2 seeds")

"""Paired statistics for "is the best config better than the seed's?": both models of a seed see the same 10k test
images, so McNemar's exact test per seed (Dietterich 1998) on the images exactly one gets right, and a 95 % confidence
interval for the mean accuracy difference across seeds. scipy does the distributions; this module counts and formats."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from mnist_net.config import TrainConfig
from mnist_net.data import N_TRAIN, N_VAL

CONFIDENCE = 0.95
ALPHA = 0.05  # per-seed McNemar level
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # a fixed random_state: the same predictions give the same interval
MAX_SEEDS_SUGGESTED = 50
BOUND_PP = 100.0  # an accuracy difference lies in [-100, 100] pp: a t interval past that is no interval
SEED_RECIPE = (TrainConfig.epochs, N_TRAIN + N_VAL)  # the seed's own: 20 epochs on the 60k of train+val


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test: b = images only A gets right, c = only B; p two-sided (1 when b + c = 0)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"predictions differ in length: {correct_a.shape} vs {correct_b.shape}")
    b, c = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    return {"b": b, "c": c, "pvalue": float(p), "diff_pp": 100.0 * (b - c) / max(len(correct_a), 1)}


def paired_t_ci(acc_a: list[float], acc_b: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """t interval for the mean of the per-seed differences acc_a - acc_b (needs >= 2 seeds)."""
    if len(acc_a) < 2:
        raise ValueError("a paired t interval needs at least 2 seeds")
    if np.ptp(np.subtract(acc_a, acc_b)) == 0:  # no spread between seeds: no t interval (scipy: nan)
        return math.nan, math.nan
    ci = stats.ttest_rel(acc_a, acc_b).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def bootstrap_ci(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = CONFIDENCE,
                 method: str = "percentile") -> tuple[float, float]:
    """Paired bootstrap over the test images of the accuracy difference A - B, in pp: a percentile bootstrap of
    the per-image differences (A right - B right), the same statistic as resampling the pairs. Not BCa: its
    jackknife costs n^2 (11 s for 3 seeds' 30k images on 2 cores, 2.6 s so), and on the 21 committed
    comparisons (20k-40k images) both intervals agree within 0.01 pp (docs/confirm.md; `method` "BCa" for
    bench/bootstrap_methods.py's comparison)."""
    # int8: resampling moves an eighth of float64's bytes (the interval is the same: the sums are small integers)
    d = np.asarray(correct_a, np.int8) - np.asarray(correct_b, np.int8)
    if not d.any():  # every resample gives 0: scipy would warn of degenerate data
        return 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((d,), lambda x, axis: 100.0 * np.mean(x, axis=axis), vectorized=True,
                              confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES, batch=1000,
                              method=method, random_state=BOOTSTRAP_SEED)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare(correct_best: list[np.ndarray], correct_seed: list[np.ndarray]) -> dict:
    """Per-seed McNemar and the CI of the mean best - seed difference (pp); correct_*[i]: seed i's right/wrong array."""
    per_seed = [mcnemar(a, b) for a, b in zip(correct_best, correct_seed, strict=True)]
    acc_best = [100.0 * float(np.mean(a)) for a in correct_best]
    acc_seed = [100.0 * float(np.mean(b)) for b in correct_seed]
    low = high = math.nan
    dispersed = None
    if len(per_seed) >= 2:
        method = "paired t over seeds (scipy.stats.ttest_rel)"
        low, high = paired_t_ci(acc_best, acc_seed)
        if max(-low, high) > BOUND_PP:  # seeds spread so wide the t interval leaves the possible range
            dispersed, low, high = [round(low, 2), round(high, 2)], math.nan, math.nan
    if not math.isfinite(low):  # one seed, seeds that all differ by the same amount, or too dispersed ones
        method = (f"paired bootstrap over test images{' of all seeds pooled' if len(per_seed) > 1 else ''} "
                  f"(scipy.stats.bootstrap, percentile, {BOOTSTRAP_RESAMPLES} resamples, random_state {BOOTSTRAP_SEED})"
                  + (f"; the seeds are too dispersed for a t interval across seeds ({dispersed[0]:.2f} to "
                     f"{dispersed[1]:.2f} pp)" if dispersed else ""))
        low, high = bootstrap_ci(np.concatenate(correct_best), np.concatenate(correct_seed))
    return {"diff_pp": [s["diff_pp"] for s in per_seed],
            "mean_diff_pp": float(np.mean([s["diff_pp"] for s in per_seed])),
            "ci_low_pp": low, "ci_high_pp": high, "confidence": CONFIDENCE, "ci_method": method,
            "dispersed_t_pp": dispersed,  # the t interval that reached past +-100 pp, or None
            "mcnemar": per_seed, "acc_best": acc_best, "acc_seed_config": acc_seed}


def _interval(low: float, high: float) -> str:
    return f"{low:.2f}–{high:.2f}" if low >= 0 else f"{low:.2f} to {high:.2f}"  # "-0.29–0.54" misreads


def outcome(comparison: dict) -> str:
    """Which of the four outcomes (A = first config, B = second); only a t interval over seeds speaks for new seeds."""
    low, high = comparison["ci_low_pp"], comparison["ci_high_pp"]
    if comparison.get("ci_method", "").startswith("paired t") and math.isfinite(low):
        if low > 0:
            return "better"
        if high < 0:
            return "worse"
    tests = comparison["mcnemar"]
    up = sum(m["pvalue"] < ALPHA and m["diff_pp"] > 0 for m in tests)
    down = sum(m["pvalue"] < ALPHA and m["diff_pp"] < 0 for m in tests)
    if up and down:
        return "disagree"
    if up == len(tests):
        return "better_on_every_seed"
    if down == len(tests):
        return "worse_on_every_seed"
    return "no_difference"


def seeds_to_decide(diffs: list[float], confidence: float = CONFIDENCE) -> int | None:
    """Fewest seeds whose t interval would exclude 0 at this mean and spread; None if the spread is unknown (< 2)."""
    if len(diffs) < 2 or np.ptp(diffs) == 0:
        return None
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    for n in range(len(diffs) + 1, MAX_SEEDS_SUGGESTED + 1):
        if stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) < mean:
            return n
    return None


def kendall_tau(proxy: list[float], confirmed: list[float]) -> dict:
    """How well the search's proxy ranked the confirmed configs: Kendall's tau (scipy), its p; nan below 2."""
    tau, p = stats.kendalltau(proxy, confirmed) if len(proxy) >= 2 else (math.nan, math.nan)
    return {"tau": float(tau), "pvalue": float(p), "configs": len(proxy)}


def _per_seed(comparison: dict) -> str:
    return ", ".join(f"{d:+.2f}" for d in comparison["diff_pp"]) + " pp"  # A - B


def scope(epochs: int, train_images: int) -> str:
    """Where a verdict holds, beside the seed's recipe: 'at 4 epochs on 5k images (1/60 of the seed's 20 x 60k)'."""
    def images(n: int) -> str:
        return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"  # 60k, 1,024

    (seed_epochs, seed_images), share = SEED_RECIPE, epochs * train_images / (SEED_RECIPE[0] * SEED_RECIPE[1])
    at = f"at {epochs} epoch{'s' * (epochs != 1)} on {images(train_images)} images"
    if (epochs, train_images) == SEED_RECIPE:
        return f"{at} (the seed's recipe)"
    part = f"1/{round(1 / share)}" if share <= 0.5 else f"{share:.0%}".replace("%", " %")
    return f"{at} ({part} of the seed's {seed_epochs} × {images(seed_images)})"


def verdict(comparison: dict, epochs: int, train_images: int,
            names: tuple[str, str] = ("best", "the seed's config")) -> str:
    """One line: which of the four outcomes, by how much, the numbers behind it, and at which budget."""
    low, high, mean = comparison["ci_low_pp"], comparison["ci_high_pp"], comparison["mean_diff_pp"]
    (a, b), seeds = names, len(comparison["mcnemar"])
    pct = int(round(100 * comparison["confidence"]))
    ps = [m["pvalue"] for m in comparison["mcnemar"]]
    p = ("McNemar p < 0.001" + (" for each seed" if seeds > 1 else "") if all(x < 0.001 for x in ps)
         else "McNemar p = " + ", ".join(f"{x:.2g}" for x in ps) + (" per seed" if seeds > 1 else ""))
    at = f"{scope(epochs, train_images)}, {seeds} seed{'s' * (seeds != 1)}"
    kind = outcome(comparison)
    if kind in ("better", "worse"):
        up, down, by, lo, hi = (a, b, mean, low, high) if kind == "better" else (b, a, -mean, -high, -low)
        return f"{up} beats {down} by {by:.2f} pp on test across seeds ({pct} % CI {_interval(lo, hi)}, {p}) {at}"
    if kind in ("better_on_every_seed", "worse_on_every_seed"):
        winner, loser = (a, b) if kind == "better_on_every_seed" else (b, a)
        head = f"{winner} beats {loser} on every seed ({_per_seed(comparison)} per seed, {p})"
        if comparison.get("dispersed_t_pp"):
            return (f"{head}, but the seeds are too dispersed for an interval across seeds (a t interval "
                    f"would pass ±{BOUND_PP:.0f} pp); {at}")
        need = seeds_to_decide(comparison["diff_pp"])
        decide = (f"about {need} seeds would decide it (--seeds {need})" if need else
                  f"--seeds {max(3, seeds + 1)} or more would give an interval across seeds")
        return f"{head}, but {seeds} seed{'s are' if seeds != 1 else ' is'} too few to generalise: {decide}; {at}"
    if kind == "disagree":
        return (f"the seeds disagree: {a} - {b} {_per_seed(comparison)} per seed ({p}), significant both ways; "
                f"neither config is better {at}")
    return f"no significant difference on test ({a} - {b} {mean:+.2f} pp, {pct} % CI {_interval(low, high)}, {p}) {at}"

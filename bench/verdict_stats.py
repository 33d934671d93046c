"""Paired statistics for bench/gpu_verdict.py without scipy (gpu.sh needs torch + torchvision only).

The same tests as tuner.confirm.stats, which uses scipy: McNemar's exact test per seed on the test images
only one model gets right, and a paired t interval over seeds for the mean accuracy difference.
tests/test_bench.py checks both against scipy.
"""

from __future__ import annotations

import math
import statistics

# Student's t, two-sided 95 % (the 0.975 quantile), by degrees of freedom: 1-29, then the normal.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045)


def mcnemar(correct_a: list[bool], correct_b: list[bool]) -> dict:
    """Exact two-sided McNemar: b = images only A gets right, c = only B; p = 1 when b + c = 0."""
    b = sum(1 for x, y in zip(correct_a, correct_b, strict=True) if x and not y)
    c = sum(1 for x, y in zip(correct_a, correct_b, strict=True) if y and not x)
    n = b + c
    if n == 0:
        p = 1.0
    else:  # binomial(n, 1/2) tail at min(b, c), doubled; exact integers, then one division
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    return {"b": b, "c": c, "pvalue": p, "diff_pp": 100.0 * (b - c) / max(len(correct_a), 1)}


def paired_t_ci(acc_a: list[float], acc_b: list[float]) -> tuple[float, float]:
    """95 % t interval of the mean per-seed difference acc_a - acc_b (nan with < 2 seeds or no spread)."""
    diffs = [a - b for a, b in zip(acc_a, acc_b, strict=True)]
    if len(diffs) < 2 or max(diffs) == min(diffs):
        return math.nan, math.nan
    df = len(diffs) - 1
    t = T975[df - 1] if df <= len(T975) else 1.960
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs))
    mean = statistics.fmean(diffs)
    return mean - half, mean + half


def verdict(acc_a: list[float], acc_b: list[float], per_seed: list[dict], names=("best", "seed config")) -> str:
    """One line: the mean difference, its CI over seeds, the seeds' McNemar p, and what it means."""
    low, high = paired_t_ci(acc_a, acc_b)
    mean = statistics.fmean(a - b for a, b in zip(acc_a, acc_b, strict=True))
    ps = ", ".join(f"{s['pvalue']:.3g}" for s in per_seed)
    if not math.isfinite(low):
        meaning = "no interval (fewer than 2 seeds, or no spread): no verdict"
    elif low > 0:
        meaning = f"{names[0]} is better"
    elif high < 0:
        meaning = f"{names[1]} is better"
    else:
        meaning = "no significant difference"
    return (f"{names[0]} - {names[1]}: {mean:+.3f} pp over {len(acc_a)} seed(s), 95% CI "
            f"[{low:+.3f}, {high:+.3f}] pp (paired t over seeds); McNemar p per seed: {ps} -> {meaning}")

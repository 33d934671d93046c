"""BCa against percentile bootstrap intervals on every committed test_predictions.npz (docs/confirm.md):
each config's pooled per-image differences against the seed's config, both methods, and their time.

    python bench/bootstrap_methods.py [--results results] [--images N]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from mnist_net.data import DEFAULT_DATA_DIR, load_splits
from tuner.confirm.stats import bootstrap_ci


def interval(best: np.ndarray, seed: np.ndarray, method: str) -> tuple[float, float, float]:
    """(low, high, seconds) of the confirm stage's bootstrap interval of best - seed by `method`."""
    start = time.perf_counter()
    low, high = bootstrap_ci(best, seed, method=method)
    return low, high, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="folder searched (default %(default)s)")
    p.add_argument("--images", type=int, default=10_000, help="first N test images of each seed (default %(default)s)")
    args = p.parse_args(argv)
    labels = load_splits(DEFAULT_DATA_DIR)["test"].labels.numpy()[:args.images]
    worst = 0.0
    for path in sorted(args.results.rglob("test_predictions.npz")):
        preds = np.load(path)
        seed = np.concatenate([row[:args.images] == labels for row in preds["seed_config"]])
        for label in (k for k in preds if k != "seed_config"):
            best = np.concatenate([row[:args.images] == labels for row in preds[label]])
            bca, pct = interval(best, seed, "BCa"), interval(best, seed, "percentile")
            worst = max(worst, abs(bca[0] - pct[0]), abs(bca[1] - pct[1]))
            print(f"{path.parent}  {label}: n={best.size:,}  BCa {bca[0]:.3f} to {bca[1]:.3f} ({bca[2]:.1f} s)  "
                  f"percentile {pct[0]:.3f} to {pct[1]:.3f} ({pct[2]:.1f} s)")
    print(f"largest difference between the two methods' bounds: {worst:.3f} pp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

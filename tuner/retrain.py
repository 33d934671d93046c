"""Retrain the best config and the seed's config on all 60k images; compare them on test.

`python -m tuner.retrain --config results/best_config.json`. Test is read here and only
here: each config is trained with the same seeds and epochs, then evaluated once.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from mnist_net import files, plots
from mnist_net.cli import Parser, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, load_splits
from mnist_net.download import DataUnavailable
from mnist_net.runtime import pick_device, provenance
from mnist_net.train import RunResult, train_and_test
from tuner.space import PARAMS, SEED_CONFIG

SMOKE = {"seeds": 1, "epochs": 1, "train_size": 1024}


def build_parser() -> Parser:
    p = Parser(prog="python -m tuner.retrain", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("results/best_config.json"),
                   help="the search's best_config.json")
    p.add_argument("--seeds", type=positive_int, default=3, help="train seeds 1..N for each config")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs per run (the seed's 20)")
    p.add_argument("--train-size", type=positive_int, help="subset of the 60k (default: all; for tests)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--out", type=Path, help="output folder (default: the search's summary folder)")
    p.add_argument("--smoke-test", action="store_true", help=f"tiny preset for tests: {SMOKE}")
    return p


def read_best(path: Path) -> dict:
    """The best_config.json a search wrote, checked; ValueError says what is wrong."""
    data = files.read_json(path, str(path), missing_hint="; run `python -m tuner.search` first",
                           invalid_hint="; rerun the search or fix the file")
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or any(p not in config for p in PARAMS):
        raise ValueError(f"{path} has no \"config\" with {list(PARAMS)}; is it a best_config.json?")
    # Both configs are checked here, before any training: a bad seed_config must not
    # surface as a traceback after the best config's runs.
    for key, params in (("config", config), ("seed_config", data.get("seed_config", SEED_CONFIG))):
        if not isinstance(params, dict) or sorted(params) != sorted(PARAMS):
            # only the searched hyperparameters: an "epochs" or "train_split" here would
            # silently override the retrain's own settings
            raise ValueError(f"{path}: \"{key}\" must hold exactly {list(PARAMS)}, got "
                             f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
        try:
            TrainConfig.from_dict(params)  # wrong types or values fail here
        except ValueError as err:
            raise ValueError(f"{path}: \"{key}\": {err}") from None
    experiment = data.get("experiment", {})
    if not (isinstance(experiment, dict) and isinstance(experiment.get("summary_dir", "."), str)):
        raise ValueError(f"{path}: \"experiment\" must be an object with a \"summary_dir\" string")
    return data


def compare(best: dict, seeds: int, epochs: int, train_size: int | None, splits, device
            ) -> dict[str, list[RunResult]]:
    runs = {}
    for label, params in (("best", best["config"]), ("seed_config", best.get("seed_config", SEED_CONFIG))):
        runs[label] = []
        for seed in range(1, seeds + 1):
            cfg = TrainConfig.from_dict(dict(params), TrainConfig(
                epochs=epochs, seed=seed, train_split="train+val", train_size=train_size))
            say(f"retrain {label} {params} seed {seed}")
            runs[label].append(train_and_test(cfg, splits, device))
    return runs


def summarize(runs: dict[str, list[RunResult]], epochs: int, source: Path, device) -> dict:
    out = {"epochs": epochs, "seeds": [r.config.seed for r in runs["best"]], "source": str(source)}
    for label, results in runs.items():
        accs = [r.test.acc for r in results]
        out[label] = {
            "config": {p: getattr(results[0].config, p) for p in PARAMS},
            "test_acc": accs, "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_loss": [r.test.loss for r in results], "diverged": [r.history.diverged for r in results],
            "seconds": [round(r.seconds, 1) for r in results],
            "epochs_history": [r.history.epochs for r in results],
        }
    out["provenance"] = provenance(device)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.epochs = SMOKE["seeds"], SMOKE["epochs"]
        args.train_size = args.train_size or SMOKE["train_size"]
    try:
        best = read_best(args.config)
        summary = args.config.parent / best.get("experiment", {}).get("summary_dir", ".")
        out = files.prepare_out_dir(args.out or summary)
        device = pick_device("auto")
        splits = load_splits(args.data_dir)
    except (ValueError, DataUnavailable) as err:
        parser.fail(str(err))
    runs = compare(best, args.seeds, args.epochs, args.train_size, splits, device)
    report = summarize(runs, args.epochs, args.config, device)
    files.write_json(out / "retrain.json", report)
    plots.curves(runs["best"][0].history.epochs, out / "best_curves.png", title="best config")
    plots.curves(runs["seed_config"][0].history.epochs, out / "seed_curves.png", title="seed config")
    with files.atomic_path(out / "best_model.pt") as tmp:
        torch.save(runs["best"][0].training.model.state_dict(), tmp)
    b, s = report["best"], report["seed_config"]
    say(f"test accuracy over seeds {report['seeds']}: best {b['test_acc_mean']:.2f} ± {b['test_acc_std']:.2f}%, "
        f"seed config {s['test_acc_mean']:.2f} ± {s['test_acc_std']:.2f}% -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

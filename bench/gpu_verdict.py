"""GPU check of the search's answer (bench/gpu.sh, first section): given configs at the seed's full
recipe, several seeds each, and the paired verdict of the retrain.

Reads results/best_config.json (its "config" and "seed_config") unless --configs names another;
each config trains on all 60k training images with TrainConfig's defaults (the seed's recipe:
20 epochs, StepLR after 15, augmentation) and seeds 1..--seeds, and is scored once on the 10k
test images. Runs go in pairs (seed 1 of both, then seed 2, ...) and no pair starts once the time
left is below what the last pair took, so a cut-short run still gives a paired verdict over the
seeds it finished. Needs torch + torchvision only (bench.verdict_stats, not scipy). MNIST must be
under --data-dir (IDX files, .gz or not: bench/README.md says how to bring them); random data
would make the verdict meaningless, so it refuses to run without them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from bench import common, gpu_paths, verdict_stats  # gpu_paths first: its filelock stub
from mnist_net import files
from mnist_net.cli import Parser, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import Split
from mnist_net.engine import build_training, fit, predict
from mnist_net.runtime import autocast, autocast_dtype, pick_device
from tuner.space import PARAMS  # the search space's names only: tuner.space imports no Ray

DEFAULT_CONFIGS = common.REPO_ROOT / "results" / "best_config.json"
DEFAULT_OUT = common.REPO_ROOT / "bench" / "gpu-results"
QUICK = {"seeds": 2, "epochs": 1, "train_images": 512, "test_images": 500}


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def _idx_split(paths: dict[str, Path], kind: str) -> Split:
    images = torch.from_numpy(gpu_paths.read_idx(paths[f"{kind}-images-idx3-ubyte"]).copy())
    labels = torch.from_numpy(gpu_paths.read_idx(paths[f"{kind}-labels-idx1-ubyte"]).astype("int64"))
    return Split(images.unsqueeze(1), labels)


def load_mnist(data_dir: Path) -> tuple[Split, Split]:
    """(all 60k training images, the 10k test images) from IDX files; ValueError if missing."""
    for raw in (data_dir / "MNIST" / "raw", data_dir):
        paths = {stem: next((p for p in (raw / stem, raw / f"{stem}.gz") if p.is_file()), None)
                 for stem in IDX_FILES}
        if all(paths.values()):
            return _idx_split(paths, "train"), _idx_split(paths, "t10k")
    raise ValueError(f"no MNIST IDX files (train-*, t10k-*) under {data_dir} or {data_dir}/MNIST/raw; "
                     "see bench/README.md, 'GPU verdict', for how to bring them")


def read_configs(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text())
    found = {"best": data.get("config"), "seed_config": data.get("seed_config", TrainConfig().to_dict())}
    return {name: {k: cfg[k] for k in PARAMS} for name, cfg in found.items()}


def run_one(params: dict, seed: int, args, train: Split, test: Split, device: torch.device) -> dict:
    """Train one config with one seed at the recipe; its test predictions, right or wrong."""
    cfg = TrainConfig(**params, seed=seed, epochs=args.epochs, train_size=args.train_images)
    data = train.subset(cfg.train_size, seed).to(device)
    start = time.perf_counter()
    training = build_training(cfg, device)
    one_image = Split(test.images[:1], test.labels[:1]).to(device)  # fit's per-epoch eval: ~free
    history = fit(cfg, data, one_image, device=device, training=training)
    with autocast(device, autocast_dtype(device, cfg.precision)):
        preds = predict(training.forward, test.to(device), channels_last=cfg.channels_last)
    correct = (preds.cpu() == test.labels).tolist()
    return {"seed": seed, "acc": 100.0 * sum(correct) / len(correct), "seconds": time.perf_counter() - start,
            "diverged": history.diverged, "correct": correct}


def run_pairs(args, configs: dict[str, dict], train: Split, test: Split, device: torch.device) -> dict:
    """Seed by seed, both configs; stops starting pairs when the last one would not fit the budget."""
    t0, runs, notes = time.perf_counter(), {name: [] for name in configs}, []
    last_pair_s = 0.0
    for seed in range(1, args.seeds + 1):
        left = args.budget_s - (time.perf_counter() - t0)
        if left < last_pair_s:
            notes.append(f"seeds {seed}..{args.seeds} skipped: {left:.0f} s of the {args.budget_s} s budget "
                         f"left, the last pair took {last_pair_s:.0f} s")
            break
        pair_start = time.perf_counter()
        for name, params in configs.items():
            runs[name].append(run_one(params, seed, args, train, test, device))
            say(f"{name} {params} seed {seed}: test {runs[name][-1]['acc']:.2f}% in {runs[name][-1]['seconds']:.0f} s")
        last_pair_s = time.perf_counter() - pair_start
    return {"runs": runs, "notes": notes, "wall_s": time.perf_counter() - t0}


def report(args, configs: dict[str, dict], done: dict, device: torch.device) -> dict:
    best, seed = done["runs"]["best"], done["runs"]["seed_config"]
    per_seed = [verdict_stats.mcnemar(a["correct"], b["correct"]) for a, b in zip(best, seed, strict=True)]
    acc_best, acc_seed = [r["acc"] for r in best], [r["acc"] for r in seed]
    low, high = verdict_stats.paired_t_ci(acc_best, acc_seed)
    strip = {name: [{k: v for k, v in r.items() if k != "correct"} for r in rs] for name, rs in done["runs"].items()}
    return {"configs": configs, "recipe": {"epochs": args.epochs, "train_images": args.train_images or 60_000,
                                           "seeds": len(best)},
            "runs": strip, "mcnemar": per_seed, "ci_low_pp": low, "ci_high_pp": high,
            "verdict": verdict_stats.verdict(acc_best, acc_seed, per_seed) if best else "no run finished",
            "notes": done["notes"], "wall_s": done["wall_s"], "machine": common.machine(device)}


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.gpu_verdict", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke check")
    p.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS,
                   help="a best_config.json: its \"config\" against its \"seed_config\"")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("MNIST_DATA_DIR", "~/.cache/mnist-s5")).expanduser(),
                   help="folder with the four MNIST IDX files (torchvision layout or flat, .gz or not)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or DEFAULT_OUT),
                   help="folder for gpu_verdict.json (default $OUT, else bench/gpu-results)")
    p.add_argument("--seeds", type=positive_int, default=5, help=f"seeds per config (--quick: {QUICK['seeds']})")
    p.add_argument("--epochs", type=positive_int, default=TrainConfig().epochs,
                   help=f"epochs per run, the seed's recipe (--quick: {QUICK['epochs']})")
    p.add_argument("--train-images", type=positive_int,
                   help=f"train on a subset (default: all 60k; --quick: {QUICK['train_images']})")
    p.add_argument("--test-images", type=positive_int,
                   help=f"score on the first N test images (default: all 10k; --quick: {QUICK['test_images']})")
    p.add_argument("--budget-s", type=positive_int, default=150, help="start no pair of runs past this")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check of the code path")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.apply_quick(parser, args, QUICK)
    try:
        device = pick_device(args.device)
        configs = read_configs(args.configs)
        train, test = load_mnist(args.data_dir)
        test = Split(test.images[:args.test_images], test.labels[:args.test_images])  # None: all
        out = files.prepare_out_dir(args.out)
    except (ValueError, OSError, KeyError, TypeError) as err:
        parser.fail(f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err))
    say(f"gpu_verdict on {device}: {configs} x {args.seeds} seeds, {args.epochs} epochs, budget {args.budget_s} s")
    result = report(args, configs, run_pairs(args, configs, train, test, device), device)
    files.write_json(out / "gpu_verdict.json", result)
    say(result["verdict"])
    say(f"wrote gpu_verdict.json to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

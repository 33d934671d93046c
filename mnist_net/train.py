"""Train the S5 network: `python -m mnist_net.train` reproduces the seed's recipe.

Writes s5_model.pt (state_dict), s5_metrics.json (config, per-epoch metrics, final
test result, provenance) and s5_curves.png (the seed's 2x2) to --out.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm  # the text bar: works in terminals and notebooks without ipywidgets

from mnist_net import cli, files, plots
from mnist_net.cli import Parser, non_negative_int, positive_float, positive_int, say, unit_float
from mnist_net.config import TrainConfig, load_config_file
from mnist_net.data import DEFAULT_DATA_DIR, Split, eval_split_name, load_splits
from mnist_net.download import DataUnavailable
from mnist_net.engine import EpochRecord, EvalStats, History, Training, build_training, evaluate, fit
from mnist_net.runtime import autocast_dtype, pick_device, provenance

SMOKE = {"epochs": 2, "train_size": 2048, "eval_size": 1000}
DEFAULTS = TrainConfig()


@dataclass
class RunResult:
    config: TrainConfig
    training: Training
    history: History
    test: EvalStats
    seconds: float


def train_and_test(cfg: TrainConfig, splits: dict[str, Split], device: torch.device,
                   progress: bool = True) -> RunResult:
    """Fit on cfg.train_split, then evaluate once on the full test split."""
    train = splits[cfg.train_split].subset(cfg.train_size, cfg.seed).to(device)
    evals = splits[eval_split_name(cfg.train_split)].subset(cfg.eval_size, cfg.seed).to(device)
    bar = tqdm(total=cfg.epochs, desc=f"seed {cfg.seed}", unit="epoch", disable=not progress)

    def report(record: EpochRecord, _training: Training) -> None:
        bar.update(1)
        bar.write(format_epoch(record))

    start = time.perf_counter()
    training = build_training(cfg, device)
    history = fit(cfg, train, evals, device=device, training=training, callback=report)
    bar.close()
    last = history.epochs[-1]
    if last.eval_split == "test" and cfg.eval_size is None and not history.diverged:
        test = last.scores  # the last epoch already scored all of test
    else:
        amp = autocast_dtype(device, cfg.precision)
        test = evaluate(training.forward, splits["test"].to(device), amp_dtype=amp,
                        channels_last=cfg.channels_last)
    return RunResult(cfg, training, history, test, time.perf_counter() - start)


def format_epoch(r: EpochRecord) -> str:
    return (f"epoch {r.epoch:>3}  lr {r.lr:.4g}  train loss {r.train_loss:.4f} "
            f"acc {r.train_acc:.2f}%  {r.eval_split} loss {r.scores.loss:.4f} "
            f"acc {r.scores.acc:.2f}%  {r.epoch_seconds:.1f}s {r.images_per_s:.0f} img/s")


def build_parser() -> Parser:
    p = Parser(prog="python -m mnist_net.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="JSON config (a mapping of TrainConfig fields, "
                   "or the tuner's best_config.json); flags given here override it")
    p.add_argument("--lr", type=positive_float, help=f"learning rate (default {DEFAULTS.lr})")
    p.add_argument("--momentum", type=unit_float, help=f"SGD momentum (default {DEFAULTS.momentum})")
    p.add_argument("--batch-size", type=positive_int, help=f"default {DEFAULTS.batch_size}")
    p.add_argument("--epochs", type=positive_int, help=f"default {DEFAULTS.epochs}")
    p.add_argument("--step-size", type=positive_int,
                   help="decay the lr 10x after this many epochs (default: --decay-fraction of --epochs)")
    p.add_argument("--decay-fraction", type=positive_float,
                   help=f"decay the lr after this fraction of the epochs (default {DEFAULTS.decay_fraction}: "
                   "15 of 20, the seed's StepLR)")
    p.add_argument("--train-size", type=positive_int,
                   help="train on a fixed seeded subset of this many images (default: all)")
    p.add_argument("--eval-size", type=positive_int,
                   help="per-epoch evaluation subset size (default: all); the final test uses all")
    p.add_argument("--train-split", choices=["train", "train+val"],
                   help="train+val = all 60k with per-epoch test curves, as the seed; "
                   "train = first 50k with per-epoch val metrics (default train+val)")
    p.add_argument("--seed", type=non_negative_int, help=f"default {DEFAULTS.seed}")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto = bf16 autocast where the hardware has bf16 units, fp16 with loss scaling "
                   "on pre-Ampere GPUs (V100, T4), else fp32 (default auto)")
    p.add_argument("--no-augment", action="store_true", help="disable training augmentation")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (= --compile-mode default)")
    cli.add_compile_mode(p)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--smoke-test", action="store_true",
                   help=f"tiny preset for tests: {SMOKE} unless given explicitly")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --smoke-test preset < --config file < explicit flags."""
    base = TrainConfig().replace(**SMOKE) if args.smoke_test else TrainConfig()
    if args.config is not None:
        base = load_config_file(args.config, base)
    flags = {"lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size,
             "epochs": args.epochs, "step_size": args.step_size,
             "decay_fraction": args.decay_fraction, "train_size": args.train_size, "eval_size": args.eval_size,
             "train_split": args.train_split, "seed": args.seed, "device": args.device,
             "precision": args.precision}
    changes = {k: v for k, v in flags.items() if v is not None}
    if args.no_augment:
        changes["augment"] = False
    if args.no_channels_last:
        changes["channels_last"] = False
    if args.compile:
        changes["compile"] = True
    changes.update(cli.compile_changes(args))  # --compile-mode wins over --compile
    return base.replace(**changes)


def write_outputs(out: Path, result: RunResult, device: torch.device) -> dict:
    metrics = {"config": result.config.to_dict(), "epochs": [e.to_dict() for e in result.history.epochs],
               "diverged": result.history.diverged,
               "test": {"loss": result.test.loss, "acc": result.test.acc},
               "seconds": result.seconds, "provenance": provenance(device)}
    with files.atomic_path(out / "s5_model.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in result.training.model.state_dict().items()}, tmp)
    files.write_json(out / "s5_metrics.json", metrics)
    plots.curves(result.history.epochs, out / "s5_curves.png", title="S5 network")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        device = pick_device(cfg.device)
        autocast_dtype(device, cfg.precision)
        out = files.prepare_out_dir(args.out)
        splits = load_splits(args.data_dir)
    except (ValueError, DataUnavailable) as err:
        parser.fail(str(err))
    say(f"training on {device} ({cfg.train_split}, {cfg.epochs} epochs, lr {cfg.lr}, "
        f"momentum {cfg.momentum}, batch {cfg.batch_size}) -> {out}")
    result = train_and_test(cfg, splits, device)
    write_outputs(out, result, device)
    status = "DIVERGED" if result.history.diverged else "done"
    say(f"{status}: test loss {result.test.loss:.4f}, test acc {result.test.acc:.2f}% "
        f"in {result.seconds:.0f}s; wrote s5_model.pt, s5_metrics.json, s5_curves.png to {out}")
    return 1 if result.history.diverged else 0


if __name__ == "__main__":
    raise SystemExit(main())

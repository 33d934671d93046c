"""Retrain the best config and the seed's config on all 60k images; compare them on test.

`python -m tuner.retrain --config results/best_config.json`. Test is read here and only
here: each config is trained with the same seeds and epochs, then evaluated once. Every
run (config x seed) is a Ray task on the cluster's resources, all submitted at once; the
comparison is paired (McNemar per seed, a 95 % CI over seeds: tuner.stats).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from mnist_net import files, plots
from mnist_net.cli import Parser, non_negative_float, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, load_splits
from mnist_net.download import DataUnavailable
from mnist_net.engine import predict
from mnist_net.runtime import autocast, autocast_dtype, provenance
from mnist_net.train import train_and_test
from tuner import cluster, resources, stats
from tuner.space import PARAMS, SEED_CONFIG

SMOKE = {"seeds": 1, "epochs": 1, "train_size": 1024}
LABELS = ("best", "seed_config")
OUTPUTS = ("retrain.json", "best_curves.png", "seed_curves.png", "best_model.pt", "test_predictions.npz")


def build_parser() -> Parser:
    p = Parser(prog="python -m tuner.retrain", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("results/best_config.json"),
                   help="the search's best_config.json")
    p.add_argument("--seeds", type=positive_int, default=3, help="train seeds 1..N for each config")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs per run (the seed's 20)")
    p.add_argument("--train-size", type=positive_int, help="subset of the 60k (default: all; for tests)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder (on every node)")
    p.add_argument("--out", type=Path, help="output folder (default: the search's summary folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a retrain.json already in the output folder (default: refuse)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="existing Ray cluster host:port (default $RAY_ADDRESS; none = start a local Ray)")
    p.add_argument("--gpus-per-run", type=non_negative_float,
                   help="GPU share per run, as the search's --gpus-per-trial (default: planned)")
    p.add_argument("--cpus-per-run", type=positive_int, help="CPUs per run (default: planned)")
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


def run_one(params: dict, seed: int, epochs: int, train_size: int | None, data_dir: str, cpus: int,
            keep_model: bool) -> dict:
    """One retrain run, as a Ray task: train on train+val, score the full test split once.

    Returns plain data only (numbers, a uint8 array of test predictions, CPU tensors).
    """
    device = resources.worker_device(cpus)
    splits = resources.worker_splits(data_dir)
    cfg = TrainConfig.from_dict(dict(params), TrainConfig(
        epochs=epochs, seed=seed, train_split="train+val", train_size=train_size))
    result = train_and_test(cfg, splits, device, progress=False)
    # Under the same autocast as the test score, so the predictions give the same accuracy.
    with autocast(device, autocast_dtype(device, cfg.precision)):
        preds = predict(result.training.forward, splits["test"].to(device), channels_last=cfg.channels_last)
    out = {"seed": seed, "config": {p: getattr(cfg, p) for p in PARAMS},
           "test_acc": result.test.acc, "test_loss": result.test.loss, "diverged": result.history.diverged,
           "seconds": result.seconds, "epochs_history": result.history.epochs,
           "predictions": preds.to(torch.uint8).cpu().numpy(), "device": str(device), "host": os.uname().nodename}
    if keep_model:  # CPU tensors: best_model.pt must load on a machine without a GPU
        out["state_dict"] = {k: v.detach().cpu() for k, v in result.training.model.state_dict().items()}
    return out


def run_all(best: dict, seeds: int, epochs: int, train_size: int | None, data_dir: str,
            plan: resources.Plan) -> dict[str, list[dict]]:
    """Submit every (config, seed) run at once; Ray runs as many in parallel as fit."""
    import ray

    from tuner.retrain import run_one as by_name  # not __main__'s copy: workers import it by name

    task = ray.remote(by_name)
    refs, names = {}, {}
    for label, params in zip(LABELS, (best["config"], best.get("seed_config", SEED_CONFIG)), strict=True):
        for seed in range(1, seeds + 1):
            ref = task.options(num_cpus=plan.cpu_per_trial, num_gpus=plan.gpu_per_trial,
                               name=f"retrain-{label}-seed{seed}").remote(
                dict(params), seed, epochs, train_size, data_dir, plan.cpu_per_trial,
                label == "best" and seed == 1)
            refs[(label, seed)], names[ref] = ref, f"{label} {params} seed {seed}"
    say(f"retrain: {len(refs)} runs ({seeds} seeds x 2 configs, {epochs} epochs) as Ray tasks; {plan.describe()}")
    pending = list(refs.values())
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            r = ray.get(done[0])
            say(f"retrain {names[done[0]]}: test acc {r['test_acc']:.2f}% in {r['seconds']:.0f}s on {r['device']}")
    except BaseException:  # a failed run or Ctrl-C: the other runs are no longer wanted
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return {label: [ray.get(refs[(label, s)]) for s in range(1, seeds + 1)] for label in LABELS}


def summarize(runs: dict[str, list[dict]], epochs: int, source: Path, test_labels: np.ndarray,
              train_images: int) -> dict:
    out = {"epochs": epochs, "seeds": [r["seed"] for r in runs["best"]], "source": str(source)}
    for label, results in runs.items():
        accs = [r["test_acc"] for r in results]
        out[label] = {
            "config": results[0]["config"],
            "test_acc": accs, "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_loss": [r["test_loss"] for r in results], "diverged": [r["diverged"] for r in results],
            "seconds": [round(r["seconds"], 1) for r in results],
            "epochs_history": [r["epochs_history"] for r in results],
            "device": [r["device"] for r in results], "host": [r["host"] for r in results],
        }
    correct = {label: [r["predictions"] == test_labels for r in runs[label]] for label in LABELS}
    comparison = stats.compare(correct["best"], correct["seed_config"])
    comparison["verdict"] = stats.verdict(comparison, epochs, train_images)
    out["comparison"] = comparison
    out["budget"] = {"epochs": epochs, "train_images": train_images, "train_split": "train+val",
                     "test_images": len(test_labels), "seeds": len(out["seeds"])}
    out["provenance"] = provenance(torch.device(runs["best"][0]["device"]))
    return out


def output_dir(args, best: dict) -> Path:
    """--out, or the search's summary folder; an existing retrain.json is kept unless --overwrite."""
    summary = args.config.parent / best.get("experiment", {}).get("summary_dir", ".")
    target = Path(args.out or summary).expanduser()
    if (target / "retrain.json").exists() and not args.overwrite:
        raise ValueError(f"{target / 'retrain.json'} exists; pass a new --out (or --overwrite to replace it)")
    return files.prepare_out_dir(target)


def write_outputs(out: Path, runs: dict[str, list[dict]], report: dict) -> None:
    files.write_json(out / "retrain.json", report)
    plots.curves(runs["best"][0]["epochs_history"], out / "best_curves.png", title="best config")
    plots.curves(runs["seed_config"][0]["epochs_history"], out / "seed_curves.png", title="seed config")
    with files.atomic_path(out / "best_model.pt") as tmp:
        torch.save(runs["best"][0]["state_dict"], tmp)
    buf = io.BytesIO()  # to recompute the statistics: predictions[label][seed - 1, image]
    np.savez_compressed(buf, **{label: np.stack([r["predictions"] for r in runs[label]]) for label in LABELS})
    files.write_bytes(out / "test_predictions.npz", buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.epochs = SMOKE["seeds"], SMOKE["epochs"]
        args.train_size = args.train_size or SMOKE["train_size"]
    try:
        best = read_best(args.config)
        out = output_dir(args, best)
        data_dir = str(Path(args.data_dir).expanduser().resolve())  # tasks run in other folders
        splits = load_splits(data_dir)  # fails here, once, if MNIST is missing
    except (ValueError, DataUnavailable) as err:
        parser.fail(str(err))
    train_images = min(args.train_size or len(splits["train+val"]), len(splits["train+val"]))
    runs = connected_runs(parser, args, best, data_dir)
    report = summarize(runs, args.epochs, args.config, splits["test"].labels.numpy(), train_images)
    write_outputs(out, runs, report)
    b, s = report["best"], report["seed_config"]
    say(f"test accuracy over seeds {report['seeds']}: best {b['test_acc_mean']:.2f} ± {b['test_acc_std']:.2f}%, "
        f"seed config {s['test_acc_mean']:.2f} ± {s['test_acc_std']:.2f}% -> {out}")
    say(report["comparison"]["verdict"])
    return 0


def connected_runs(parser: Parser, args, best: dict, data_dir: str) -> dict[str, list[dict]]:
    """The runs on Ray: reuse the caller's connection (the search's), else connect and disconnect."""
    import ray

    own = not ray.is_initialized()
    try:
        if own:
            cluster.connect(args.address)
        plan = resources.plan(resources.alive_nodes(), args.gpus_per_run, args.cpus_per_run)
        return run_all(best, args.seeds, args.epochs, args.train_size, data_dir, plan)
    except ray.exceptions.RayTaskError as err:  # first: Ray makes it an instance of its cause's class
        if isinstance(err.cause, ValueError):  # e.g. a GPU share but a torch build without CUDA
            parser.fail(f"a retrain run failed: {err.cause}")
        raise
    except (ValueError, ConnectionError) as err:
        parser.fail(str(err))
    finally:
        if own:
            cluster.disconnect()


if __name__ == "__main__":
    sys.exit(main())

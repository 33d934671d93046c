"""Which proxy ranks configs as the confirm stage does? (issue 14, item 4)

The same configs (the committed search's confirmed top 3, the seed's config, and the best of each
other batch size) are trained under proxy designs that spend the same images per trial on average
over the space's batch sizes, differently per batch size:
- today: every trial trains `--epochs` x `--train-size` images (the committed 20-minute plan);
- equal-steps: every trial makes the same number of optimizer steps (images grow with the batch);
- step-floor: today's images, but no fewer than the steps a batch-256 trial makes (so batch 512 and
  1024 get 2x and 4x the images, the smaller batches 0.6x).
Each is scored as the search scores a trial: the last epoch's val_acc on `--eval-size` val images.
The reference is the confirm stage's ranking (its recipe and 3 seeds, scored on the whole val
split); Kendall's tau of each design's ranking against it, per proxy seed and on the mean.

`python -m bench.proxy_study` (75 minutes on 2 cores shared with other jobs, at the defaults). Runs are cached in
`--out`/runs, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from scipy import stats

from mnist_net import files
from mnist_net.cli import Parser, positive_int
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR
from mnist_net.runtime import provenance
from tuner.confirm.recipe import Recipe
from tuner.confirm.runs import RunStore
from tuner.space import BATCH_SIZES

ROOT = Path(__file__).resolve().parent.parent
SEARCH = ROOT / "results" / "s5-20261202-141304"
# Its confirmed top 3 (batch 64), the seed's config (trial 1), and the best of batch 32, 128, 256,
# 512 and 1024 (ASHA stopped the last three at chance after 1-2 epochs).
TRIALS = (21, 29, 17, 1, 7, 28, 3, 9, 2)
FLOOR_BATCH = 256


def images_per_epoch(design: str, batch: int, base: int) -> int:
    """Train images per epoch for `design`; each averages `base` over the space's batch sizes."""
    if design == "today":
        return base
    if design == "equal-steps":
        return round(base * batch / statistics.fmean(BATCH_SIZES))
    if design == "step-floor":
        mean = statistics.fmean(max(1, b / FLOOR_BATCH) for b in BATCH_SIZES)
        return round(base * max(1, batch / FLOOR_BATCH) / mean)
    raise ValueError(f"unknown design {design!r}")


DESIGNS = ("today", "equal-steps", "step-floor")

_SPLITS: dict = {}


def _train(job: dict) -> dict:
    """One run in a worker process (one torch thread): fit, then the last epoch's val_acc."""
    import torch

    from mnist_net.data import load_splits
    from mnist_net.engine import fit

    torch.set_num_threads(1)
    splits = _SPLITS.setdefault("s", load_splits(job["data_dir"]))
    cfg = TrainConfig(**job["config"], epochs=job["epochs"], train_size=job["train_size"], seed=job["seed"],
                      eval_size=job["eval_size"], train_split="train", device="cpu")
    start = time.perf_counter()
    history = fit(cfg, splits["train"].subset(cfg.train_size, cfg.seed), splits["val"].subset(cfg.eval_size, cfg.seed),
                  device=torch.device("cpu"))
    return {**job, "val_acc": history.epochs[-1].val_acc, "seconds": round(time.perf_counter() - start, 1)}


def jobs(configs: dict[int, dict], args) -> list[dict]:
    """Every (role, config, seed) run: the designs' proxy runs, then the reference's."""
    out = []
    for trial, config in configs.items():
        for design in DESIGNS:
            size = images_per_epoch(design, config["batch_size"], args.train_size)
            out += [{"role": design, "trial": trial, "config": config, "epochs": args.epochs, "train_size": size,
                     "eval_size": args.eval_size, "seed": s} for s in range(1, args.proxy_seeds + 1)]
        out += [{"role": "reference", "trial": trial, "config": config, "epochs": args.ref_epochs,
                 "train_size": args.ref_train_size, "eval_size": None, "seed": s}
                for s in range(1, args.ref_seeds + 1)]
    return out


def key(job: dict) -> str:
    c = job["config"]
    return (f"{job['role']}-lr{c['lr']:.6g}_m{c['momentum']:.6g}_b{c['batch_size']}-{job['epochs']}ep-"
            f"{job['train_size']}-eval{job['eval_size'] or 'all'}-seed{job['seed']}")


def run_all(todo: list[dict], out: Path, workers: int) -> list[dict]:
    """Train what is not cached in out/runs, `workers` processes at once; each run saved as it ends."""
    runs, missing = [], []
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for job in todo:
        path = out / "runs" / f"{key(job)}.json"
        if path.exists():
            runs.append(json.loads(path.read_text()))
        elif not reused(job, runs):
            missing.append(job)
    with ProcessPoolExecutor(workers) as pool:
        for n, future in enumerate(as_completed([pool.submit(_train, j) for j in missing]), 1):
            run = future.result()
            files.write_json(out / "runs" / f"{key(run)}.json", run)
            print(f"{n}/{len(missing)} {run['role']} trial {run['trial']} seed {run['seed']}: "
                  f"{run['train_size']} img/epoch, val {run['val_acc']:.2f} % in {run['seconds']} s", flush=True)
            runs.append(run)
    return runs


def reused(job: dict, runs: list[dict]) -> bool:
    """A reference run the search's confirm stage already made (its RunStore file, same recipe and seed:
    last-epoch val_acc on the whole val split) is read, not trained again."""
    if job["role"] != "reference" or job["eval_size"] is not None:
        return False
    recipe = Recipe(seeds=job["seed"], epochs=job["epochs"], train_size=job["train_size"])
    path = RunStore(Path(job["search"]) / "runs").path(job["config"], job["seed"], recipe, ".json")
    if not path.is_file():
        return False
    runs.append({**job, "val_acc": json.loads(path.read_text())["val_acc"], "seconds": None, "from": str(path)})
    return True


def scores(runs: list[dict], role: str, seed: int | None = None) -> dict[int, float]:
    """Per trial: its val_acc for `seed`, or the mean over seeds."""
    chosen = [r for r in runs if r["role"] == role and (seed is None or r["seed"] == seed)]
    return {t: statistics.fmean(r["val_acc"] for r in chosen if r["trial"] == t)
            for t in dict.fromkeys(r["trial"] for r in chosen)}


def tau(a: dict[int, float], b: dict[int, float]) -> float:
    trials = sorted(a)
    return round(float(stats.kendalltau([a[t] for t in trials], [b[t] for t in trials]).statistic), 3)


def analyse(runs: list[dict], args) -> dict:
    ref = scores(runs, "reference")
    return {design: {"tau_mean": tau(scores(runs, design), ref),
                     "tau_per_seed": [tau(scores(runs, design, s), ref) for s in range(1, args.proxy_seeds + 1)],
                     "top_pick": max(scores(runs, design).items(), key=lambda kv: kv[1])[0]}
            for design in DESIGNS} | {"reference_top": max(ref.items(), key=lambda kv: kv[1])[0]}


def table(runs: list[dict], configs: dict[int, dict], result: dict) -> str:
    roles = (*DESIGNS, "reference")
    lines = ["| trial | lr | momentum | batch | " + " | ".join(roles) + " |", "|" + "---|" * (4 + len(roles))]
    for t, c in configs.items():
        cells = [f"{scores(runs, role)[t]:.2f}" for role in roles]
        lines.append(f"| {t} | {c['lr']:.4g} | {c['momentum']:.3f} | {c['batch_size']} | " + " | ".join(cells) + " |")
    lines.append("| Kendall τ vs reference (mean; per seed) | | | | " + " | ".join(
        f"{result[d]['tau_mean']:+.2f} ({', '.join(f'{x:+.2f}' for x in result[d]['tau_per_seed'])})"
        for d in DESIGNS) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.proxy_study", description=__doc__.splitlines()[0])
    p.add_argument("--search", type=Path, default=SEARCH, help="the search whose trials.csv gives the configs")
    p.add_argument("--trials", default=",".join(map(str, TRIALS)), help="trial numbers to study")
    p.add_argument("--epochs", type=positive_int, default=4, help="proxy epochs per trial")
    p.add_argument("--train-size", type=positive_int, default=7700, help="proxy images per epoch, mean over batches")
    p.add_argument("--eval-size", type=positive_int, default=5000, help="val images a proxy run is scored on")
    p.add_argument("--proxy-seeds", type=positive_int, default=1,
                   help="seeds per proxy design (the search's trials have one)")
    p.add_argument("--ref-epochs", type=positive_int, default=4, help="the confirm recipe's epochs")
    p.add_argument("--ref-train-size", type=positive_int, default=10_000, help="the confirm recipe's images")
    p.add_argument("--ref-seeds", type=positive_int, default=3, help="the confirm recipe's seeds")
    p.add_argument("--workers", type=positive_int, default=2, help="runs at once, one thread each")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "proxy-study", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes: 3 trials, 1 epoch, 256 images, 1 seed")
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.epochs, args.train_size, args.eval_size = "21,1,2", 1, 256, 500
        args.proxy_seeds = args.ref_seeds = args.ref_epochs = 1
        args.ref_train_size = 256
    with open(args.search / "trials.csv", newline="") as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    wanted = [int(t) for t in args.trials.split(",")]
    if missing := [t for t in wanted if t not in rows]:
        p.error(f"trials {missing} are not in {args.search / 'trials.csv'}")
    configs = {t: {"lr": float(rows[t]["lr"]), "momentum": float(rows[t]["momentum"]),
                   "batch_size": int(rows[t]["batch_size"])} for t in wanted}
    todo = [{**j, "data_dir": str(Path(args.data_dir).expanduser().resolve()), "search": str(args.search)}
            for j in jobs(configs, args)]
    out = files.prepare_out_dir(args.out)
    runs = run_all(todo, out, args.workers)
    result = analyse(runs, args)
    report = {"designs": {d: {str(b): images_per_epoch(d, b, args.train_size) for b in BATCH_SIZES} for d in DESIGNS},
              "result": result, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
              "provenance": provenance()}
    files.write_json(out / "proxy_study.json", report)
    files.write_text(out / "proxy_study.md", table(runs, configs, result) + "\n")
    print(table(runs, configs, result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

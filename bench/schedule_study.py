"""Does the lr decay point change how short trials rank configs? (issue 11, the scaled StepLR)

The same few configs are trained at 4 and at 8 epochs, each with the decay scaled to the budget
(TrainConfig's default: decay after 3/4 of the epochs) and with the seed's fixed step of 15 epochs
(which never fires in a short trial). Every run uses the same train subset, seed and val subset, so
the columns differ only by schedule and budget. Read the table and the rank correlations: the
reference ranking is the 8-epoch scaled one, the closest here to the 20-epoch recipe.

`python -m bench.schedule_study` (about 20 minutes on 2 cores at the defaults).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from scipy import stats

from mnist_net import files
from mnist_net.cli import Parser, positive_int
from mnist_net.config import TrainConfig
from mnist_net.data import load_splits
from mnist_net.engine import fit
from mnist_net.runtime import pick_device, provenance

# The seed's config, the committed CPU search's winner, and two from other corners of the space.
CONFIGS = {"seed": (0.01, 0.9, 512), "cpu-best": (0.0388, 0.875, 32),
           "mid": (0.05, 0.8, 128), "low-lr": (0.003, 0.9, 64)}
SCHEDULES = {"scaled": None, "fixed-15": 15}  # step_size None = decay_fraction of the epochs


def run_one(cfg: TrainConfig, splits, device) -> dict:
    train = splits["train"].subset(cfg.train_size, cfg.seed).to(device)
    val = splits["val"].subset(cfg.eval_size, cfg.seed).to(device)
    start = time.perf_counter()
    history = fit(cfg, train, val, device=device)
    last = history.epochs[-1]
    return {"val_acc": last.val_acc, "val_loss": last.val_loss,
            "seconds": round(time.perf_counter() - start, 1)}


def table(rows: list[dict]) -> str:
    head = "| config | lr | momentum | batch | " + " | ".join(
        f"{e} ep {s}" for e, s in itertools.product((4, 8), SCHEDULES)) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(SCHEDULES))]
    for name, (lr, m, b) in CONFIGS.items():
        cells = [f"{r['val_acc']:.2f}" for r in rows if r["config"] == name]
        lines.append(f"| {name} | {lr} | {m} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rank_agreement(rows: list[dict]) -> dict:
    """Kendall's tau of each column's ranking against the 8-epoch scaled one."""
    col = {(r["epochs"], r["schedule"]): [x["val_acc"] for x in rows
                                          if (x["epochs"], x["schedule"]) == (r["epochs"], r["schedule"])]
           for r in rows}
    ref = col[(8, "scaled")]
    return {f"{e}ep-{s}": round(float(stats.kendalltau(v, ref).statistic), 3) for (e, s), v in col.items()}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.schedule_study", description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=positive_int, default=5000, help="train images per run")
    p.add_argument("--eval-size", type=positive_int, default=5000, help="val images scored")
    p.add_argument("--seed", type=positive_int, default=1, help="the one seed every run uses")
    p.add_argument("--out", type=Path, default=Path("bench/schedule-study"), help="output folder")
    args = p.parse_args(argv)
    out = files.prepare_out_dir(args.out)
    device = pick_device("cpu")
    splits = load_splits()
    rows = []
    for name, (lr, m, b) in CONFIGS.items():
        for epochs, (sched, step) in itertools.product((4, 8), SCHEDULES.items()):
            cfg = TrainConfig(lr=lr, momentum=m, batch_size=b, epochs=epochs, step_size=step,
                              train_split="train", train_size=args.train_size, eval_size=args.eval_size,
                              seed=args.seed, device="cpu")
            rows.append({"config": name, "epochs": epochs, "schedule": sched,
                         "decay_after": cfg.lr_step_size, **run_one(cfg, splits, device)})
            print(rows[-1], flush=True)
    report = {"rows": rows, "kendall_tau_vs_8ep_scaled": rank_agreement(rows),
              "train_size": args.train_size, "eval_size": args.eval_size, "seed": args.seed,
              "provenance": provenance(device)}
    files.write_json(out / "schedule_study.json", report)
    files.write_text(out / "schedule_study.md", table(rows) + "\n\nKendall tau vs 8-epoch scaled: "
                     + str(report["kendall_tau_vs_8ep_scaled"]) + "\n")
    print(table(rows))
    print(report["kendall_tau_vs_8ep_scaled"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""gpu_bench's report: the markdown tables, the targets and which default each section informs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import common
from mnist_net import files

# Benchmark targets from issue 9, on one H200 (not tests).
TARGETS = {"epoch_s_at_batch_512": 0.1, "epoch_s_at_batch_32": 0.5, "k_trials_vs_one": 4.0}
CHECKPOINT_SHARE = 0.05  # a checkpoint schedule that keeps saving under 5% of training time


def write(out: Path, result: dict) -> None:
    files.write_json(out / "gpu_bench.json", result)
    files.write_text(out / "gpu_bench.md", markdown(result))


def best_epoch(result: dict, batch: int) -> dict | None:
    rows = [e for e in result["epochs"] if e["batch"] == batch and e["path"] != "seed recipe"]
    return min(rows, key=lambda e: e["median_s"]) if rows else None


def k_ratios(result: dict) -> dict[int, tuple[int, float]]:
    """batch -> (K with the highest aggregate images/s, its ratio to K = 1)."""
    best = {}
    for batch in sorted({p["batch"] for p in result["procs"]}):
        rows = [p for p in result["procs"] if p["batch"] == batch]
        one = next((p["aggregate_images_per_s"] for p in rows if p["k"] == 1), math.nan)
        top = max(rows, key=lambda p: p["aggregate_images_per_s"])
        best[batch] = (top["k"], top["aggregate_images_per_s"] / one)
    return best


def target_lines(result: dict) -> list[str]:
    lines = []
    for batch, key in ((512, "epoch_s_at_batch_512"), (32, "epoch_s_at_batch_32")):
        e, goal = best_epoch(result, batch), TARGETS[key]
        if e is None:
            lines.append(f"60k epoch at batch {batch} <= {goal} s: not measured")
        else:
            verdict = "MET" if e["median_s"] * 60_000 / e["images"] <= goal else "MISSED"
            lines.append(f"60k epoch at batch {batch} <= {goal} s: {verdict} "
                         f"({e['median_s']:.3f} s for {e['images']} images, {e['path']} {e['precision']})")
    goal = TARGETS["k_trials_vs_one"]
    for batch, (k, ratio) in k_ratios(result).items():
        lines.append(f"K trials per GPU >= {goal}x one trial at batch {batch}: "
                     f"{'MET' if ratio >= goal else 'MISSED'} (best K={k}: {ratio:.2f}x)")
    return lines


def informs(result: dict) -> list[str]:
    """One line per default a section informs, with what this run says about it."""
    lines = []
    for batch in sorted({e["batch"] for e in result["epochs"] if e["path"] != "seed recipe"}):
        rows = {(e["path"], e["precision"]): e["median_s"] for e in result["epochs"] if e["batch"] == batch}
        eager = min((s for (p, _), s in rows.items() if p == "eager"), default=math.nan)
        best = best_epoch(result, batch)
        lines.append(f"engine defaults (path/precision), batch {batch}: fastest {best['path']} "
                     f"{best['precision']} {best['median_s']:.3f} s, {eager / best['median_s']:.2f}x "
                     "the best eager")
    ckpt = result.get("checkpoint") or {}
    if ckpt:
        for batch in (32, 512):
            e = best_epoch(result, batch)
            if e is not None:
                every = max(1, math.ceil(ckpt["to_cpu_s"] / (CHECKPOINT_SHARE * e["median_s"])))
                lines.append(f"checkpoint_every auto rule: a save costs {ckpt['to_cpu_s']:.3f} s = "
                             f"{ckpt['to_cpu_s'] / e['median_s']:.0%} of a batch-{batch} epoch; under "
                             f"{CHECKPOINT_SHARE:.0%} needs a checkpoint every {every} epoch(s)")
    for batch, (k, ratio) in k_ratios(result).items():
        lines.append(f"tuner DEFAULT_GPU_SHARE, batch {batch}: best aggregate at K={k} "
                     f"({ratio:.2f}x one trial) -> share 1/{k} = {1 / k:.3g}")
    return lines


def markdown(result: dict) -> str:
    machine = result["machine"]
    seed = next((e["median_s"] for e in result["epochs"] if e["path"] == "seed recipe"), math.nan)
    rows = [[e["path"], e["precision"], e["batch"], e["images"], f"{e['median_s']:.3f}",
             f"{e['images_per_s']:.0f}", f"{seed / e['median_s']:.1f}x" if math.isfinite(seed) else "",
             f"{e.get('warmup_s', math.nan):.1f}"] for e in result["epochs"]]
    parts = [f"# gpu_bench — {machine.get('gpu', machine['device'])}", "",
             f"- data: {result['data']}", f"- command: `{result['command']}`",
             f"- machine: {json.dumps(machine)}", "",
             "## 1. Training epoch (60k images unless stated)", "",
             common.md_table(["path", "precision", "batch", "images", "s/epoch (median)", "img/s",
                              "vs seed recipe", "warm-up s"], rows)]
    ckpt = result.get("checkpoint")
    if ckpt:
        parts += ["", "## 2. Checkpoint (model + optimizer + scheduler, torch.save to a local file)", "",
                  common.md_table(["bytes", "save as on device s", "copy to CPU + save s"],
                                  [[ckpt["bytes"], f"{ckpt['as_is_s']:.4f}", f"{ckpt['to_cpu_s']:.4f}"]])]
    if result["procs"]:
        ones = {p["batch"]: p["aggregate_images_per_s"] for p in result["procs"] if p["k"] == 1}
        prow = [[p["batch"], p["k"], p["images"], f"{p['wall_s']:.2f}", f"{p['aggregate_images_per_s']:.0f}",
                 f"{p['aggregate_images_per_s'] / ones[p['batch']]:.2f}x" if p["batch"] in ones else "",
                 f"{common.median(p['per_process_images_per_s']):.0f}"] for p in result["procs"]]
        parts += ["", "## 3. K training processes on one device (eager, TrainConfig defaults)", "",
                  common.md_table(["batch", "K", "images (all)", "wall s", "aggregate img/s", "vs K=1",
                                   "median per-process img/s"], prow)]
    parts += ["", "## Targets (benchmark, one H200)", "", *[f"- {t}" for t in target_lines(result)],
              "", "## Defaults these figures inform", "", *[f"- {t}" for t in informs(result)],
              "", "## Notes", "", *[f"- {n}" for n in result["notes"]],
              f"- total wall {result['wall_s']:.0f} s"]
    return "\n".join(parts) + "\n"

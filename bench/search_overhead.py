"""Search overhead: a small real search's wall time against its trials' own compute.

Runs `tuner.search` in-process (CPU, --no-retrain) twice: trials packed as planned
(one CPU each) and one trial at a time (all CPUs). For each it reports the search's
wall time, the summed train+eval seconds the trials measured themselves, Ray's overhead
as a share of that compute, the per-trial start cost, and peak RSS of a trial and of
the driver. Target (issue): overhead <= 15% of the trials' compute in a CPU search.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench.common import add_record_args, append_result, command_line, machine, md_table, wants_record

FULL = {"num_samples": 8, "max_epochs": 2, "train_size": 2000, "eval_size": 1000}
QUICK = {"num_samples": 2, "max_epochs": 1, "train_size": 256, "eval_size": 200}


def run_search(out: Path, name: str, sizes: dict, extra: list[str]) -> dict:
    from tuner import search


    argv = ["--no-retrain", "--out", str(out), "--name", name, "--seed", "0", "--gpus-per-trial", "0"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()] + extra
    start = time.perf_counter()
    code = search.main(argv)
    total = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"search {name} exited {code}")
    best = json.loads((out / name / "best_config.json").read_text())
    trials = pd.read_csv(out / name / "trials.csv")
    epochs = pd.read_csv(out / name / "trial_epochs.csv")
    compute = float((epochs["epoch_seconds"] + epochs["eval_seconds"].fillna(0)).sum())
    fit_wall = best["search"]["wall_time_s"]
    concurrent = int(best["search"]["plan"].split(";")[-1].split()[0])
    in_trials = float(trials["wall_time_s"].sum())  # Ray's time_total_s: setup + epochs + reporting
    return {
        "name": name, "trials": len(trials), "concurrent": concurrent, "command_s": total,
        "fit_wall_s": fit_wall, "compute_s": compute,
        "overhead_pct": 100 * (fit_wall * concurrent - compute) / compute,
        "start_cost_s": max(0.0, fit_wall * concurrent - in_trials) / len(trials),
        "in_trial_overhead_s": (in_trials - compute) / len(trials),
        "trial_peak_rss_mb": float(epochs["peak_rss_mb"].max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_overhead", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_record_args(parser)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    facts = machine(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="s5-overhead-") as tmp:
        runs = [run_search(Path(tmp), "packed", sizes, []),
                run_search(Path(tmp), "serial", sizes, ["--max-concurrent=1", "--cpus-per-trial=2"])]
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [[r["name"], r["trials"], r["concurrent"], f"{r['command_s']:.1f}", f"{r['fit_wall_s']:.1f}",
             f"{r['compute_s']:.1f}", f"{r['overhead_pct']:.0f}%", f"{r['start_cost_s']:.2f}",
             f"{r['in_trial_overhead_s']:.2f}", f"{r['trial_peak_rss_mb']:.0f}"] for r in runs]
    table = md_table(["run", "trials", "at once", "command s", "Tuner.fit s", "trial compute s",
                      "overhead", "start cost s/trial", "setup+report s/trial", "trial peak RSS MB"], rows)
    speedup = runs[1]["fit_wall_s"] / runs[0]["fit_wall_s"]
    body = (f"sizes: {sizes}\n\n{table}\n\npacked vs one-at-a-time wall time: {speedup:.2f}x; "
            f"driver peak RSS {driver_rss:.0f} MB (bench process, which hosts the driver)")
    print(body)
    if wants_record(args):
        append_result(args.results, "search overhead", command_line("bench.search_overhead", argv), facts, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

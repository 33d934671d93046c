"""Peak memory (RSS) of one training process: the seed's recipe vs mnist_net's fast path.

Each path trains --images images in a fresh Python process (so one path's allocations cannot
inflate the other's peak) that reports, from getrusage: its RSS after imports, its own peak RSS,
and the peak of its largest child (the seed's DataLoader workers; forked, so much of their RSS is
pages shared with the parent: do not add the two). The fast path keeps all of MNIST (uint8, about
55 MB) in the process and has no workers; the seed path's workers each hold a copy-on-write view
of torchvision's MNIST tensors and build their batches with PIL.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision import datasets

from bench import common
from mnist_net.cli import Parser, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, N_TRAIN, load_splits
from mnist_net.download import ensure_mnist
from mnist_net.engine import build_training, train_epoch
from mnist_net.runtime import autocast_dtype, pick_device

IMAGES = 2048  # 4 batches of 512: the peak is reached within the first few batches
QUICK = {"images": 256, "batch_size": 128}
PATHS = ("seed", "fast")
CHILD_TIMEOUT_S = 900
MARK = "MEMORY_RESULT "


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def current_mb() -> float:
    try:
        import psutil
    except ImportError:
        return peak_mb(resource.RUSAGE_SELF)  # the peak so far: an upper bound on the current RSS
    return psutil.Process().memory_info().rss / 2**20


def child(path: str, args: argparse.Namespace) -> dict:
    """Runs in the fresh process (everything already imported): baseline, train, peaks."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = current_mb()
    if path == "seed":
        root = ensure_mnist(args.data_dir).parent.parent
        dataset = datasets.MNIST(root=str(root), train=True, transform=common.seed_transform())
        data = Subset(dataset, common.subset_indices(N_TRAIN, args.images, seed=0))
        model, optimizer = common.seed_model(1, device)
        images, _ = common.seed_train(model, optimizer, common.seed_loader(data, args.batch_size), device)
    else:
        cfg = TrainConfig(batch_size=args.batch_size, train_split="train", device=str(device))
        train = load_splits(args.data_dir)["train"].subset(args.images, seed=0).to(device)
        training = build_training(cfg, device)
        train_epoch(training.forward, training.optimizer, train, batch_size=args.batch_size,
                            generator=torch.Generator(device=device).manual_seed(1),
                            amp_dtype=autocast_dtype(device, cfg.precision),
                            channels_last=cfg.channels_last)
        images = len(train)
    return {"path": path, "images": images, "baseline_mb": baseline,
            "peak_mb": peak_mb(resource.RUSAGE_SELF),
            "largest_child_peak_mb": peak_mb(resource.RUSAGE_CHILDREN)}


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Run `child` for each path in its own fresh interpreter (argument lists, no shell).

    The two run side by side: a process's peak RSS does not depend on what else runs.
    """
    procs = {}
    for path in PATHS:
        cmd = [sys.executable, "-m", "bench.memory", "--child", path, "--images", str(args.images),
               "--batch-size", str(args.batch_size), "--device", args.device,
               "--data-dir", str(args.data_dir)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        procs[path] = subprocess.Popen(cmd, cwd=common.REPO_ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for path, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            lines = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
            if proc.returncode != 0 or not lines:
                tail = (stderr.strip().splitlines() or ["no output"])[-5:]
                raise RuntimeError(f"memory child for {path} failed (exit {proc.returncode}): "
                                   + " | ".join(tail))
            results[path] = json.loads(lines[-1][len(MARK):])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=positive_int, default=IMAGES,
                   help=f"images each path trains (--quick: {QUICK['images']})")
    p.add_argument("--batch-size", type=positive_int, default=common.SEED_BATCH,
                   help=f"the seed's batch size (--quick: {QUICK['batch_size']})")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    common.add_record_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child(args.child, args)), flush=True)
        return 0
    common.apply_quick(parser, args, QUICK)
    device = common.device_from_args(parser, args)
    args.device = str(device)
    facts = common.machine(device)
    say(f"memory on {device}: {args.images} images, batch {args.batch_size}, one fresh process "
        f"per path; load average {facts['load_avg_1_5_15']}")
    results = measure(args)
    rows = []
    for path, r in results.items():
        rows.append([path, r["images"], f"{r['baseline_mb']:.0f}", f"{r['peak_mb']:.0f}",
                     f"{r['peak_mb'] - r['baseline_mb']:.0f}",
                     f"{r['largest_child_peak_mb']:.0f}" if path == "seed" else "no workers"])
    text = common.md_table(["path", "images", "RSS after imports MB", "peak RSS MB",
                            "peak - baseline MB", "largest worker peak MB"], rows)
    ratio = results["fast"]["peak_mb"] / results["seed"]["peak_mb"]
    body = "\n".join([text, "", f"fast path peak RSS / seed path peak RSS (main process): {ratio:.2f}",
                      f"- batch {args.batch_size}; RSS via getrusage ru_maxrss"])
    print(body, flush=True)
    if common.wants_record(args):
        common.append_result(args.results, "memory", common.command_line("bench.memory", argv), facts, body)
        say(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

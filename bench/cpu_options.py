"""CPU options for the fast path (issue 10 item 4): threads, channels_last, precision, eval batch.

Times engine.train_epoch and engine.evaluate on fixed MNIST slices and reports, per option,
CPU seconds per 1,000 images (time.process_time over all threads) beside wall images/s. The CPU
seconds barely move when other jobs share the machine, so they compare options fairly there;
wall images/s does not. Reading them:
- threads: with 2 threads, CPU-s per image above the 1-thread figure is parallel overhead, so
  2 trials x 1 thread would train (that ratio) x more images per second than 1 trial x 2 threads,
  on cores that are otherwise idle.
- channels_last, precision, eval batch: lower CPU-s per image is faster, full stop.
Run it once natively and once as `ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.cpu_options
--precisions fp32` to see what an AVX2-only CPU's oneDNN path does; the ISA is recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from bench import common
from mnist_net.cli import Parser, positive_int, say
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, Split, load_splits
from mnist_net.engine import build_training, evaluate, train_epoch
from mnist_net.runtime import autocast_dtype, cpu_has_bf16

QUICK = {"images": 64, "eval_images": 200, "repeats": 1, "batches": "32", "eval_batches": "100"}


def time_train(data: Split, warm: Split, batch_size: int, precision: str,
               channels_last: bool) -> tuple[float, float]:
    """(CPU-s per 1k images, wall images/s) of one train_epoch over `data`, after a warm-up."""
    cfg = TrainConfig(batch_size=batch_size, precision=precision, channels_last=channels_last, device="cpu")
    training = build_training(cfg, torch.device("cpu"))
    amp = autocast_dtype(torch.device("cpu"), precision)

    def epoch(split: Split, seed: int) -> None:
        train_epoch(training.forward, training.optimizer, split, batch_size=batch_size,
                    generator=torch.Generator().manual_seed(seed), amp_dtype=amp, channels_last=channels_last)

    epoch(warm, 0)
    cpu, wall = time.process_time(), time.perf_counter()
    epoch(data, 1)
    return (time.process_time() - cpu) / len(data) * 1000, len(data) / (time.perf_counter() - wall)


def time_eval(data: Split, batch_size: int, precision: str) -> float:
    training = build_training(TrainConfig(device="cpu"), torch.device("cpu"))
    amp = autocast_dtype(torch.device("cpu"), precision)
    evaluate(training.forward, Split(data.images[:batch_size], data.labels[:batch_size]),
             batch_size=batch_size, amp_dtype=amp, channels_last=True)
    cpu = time.process_time()
    evaluate(training.forward, data, batch_size=batch_size, amp_dtype=amp, channels_last=True)
    return (time.process_time() - cpu) / len(data) * 1000


def measure(args) -> tuple[list[list], list[list]]:
    splits = load_splits(args.data_dir)
    data = splits["train"].subset(args.images, seed=0)
    val = splits["val"].subset(args.eval_images, seed=0)
    train_rows, eval_rows = {}, {}
    for _ in range(args.repeats):  # options take turns, so a load change hits them all
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (int(b) for b in args.batches.split(",")):
                warm = splits["train"].subset(batch + len(data) % batch, seed=1)
                for precision in args.precisions.split(","):
                    for cl in (True, False):
                        cpu, wall = time_train(data, warm, batch, precision, cl)
                        train_rows.setdefault((threads, batch, precision, cl), []).append((cpu, wall))
        torch.set_num_threads(1)
        for batch in (int(b) for b in args.eval_batches.split(",")):
            for precision in args.precisions.split(","):
                eval_rows.setdefault((batch, precision), []).append(time_eval(val, batch, precision))
    train = [[t, b, p, "channels_last" if cl else "NCHW", f"{common.median([c for c, _ in v]):.2f}",
              f"{common.median([w for _, w in v]):.0f}"] for (t, b, p, cl), v in train_rows.items()]
    evals = [[b, p, f"{common.median(v):.3f}"] for (b, p), v in eval_rows.items()]
    return train, evals


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.cpu_options", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=positive_int, default=1024,
                   help=f"training images per measurement (--quick: {QUICK['images']})")
    p.add_argument("--eval-images", type=positive_int, default=4000,
                   help=f"val images per eval (--quick: {QUICK['eval_images']})")
    p.add_argument("--repeats", type=positive_int, default=2,
                   help=f"rounds; medians reported (--quick: {QUICK['repeats']})")
    p.add_argument("--batches", default="128,512", help=f"training batch sizes (--quick: {QUICK['batches']})")
    p.add_argument("--eval-batches", default="250,1000,4000",
                   help=f"eval batch sizes (--quick: {QUICK['eval_batches']})")
    p.add_argument("--precisions", default="fp32,bf16" if cpu_has_bf16() else "fp32",
                   help="fp32 and/or bf16 (bf16 only where the CPU has it)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    common.add_record_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, device = common.parse(parser, argv, QUICK)
    if device.type != "cpu":
        parser.fail("cpu_options measures the CPU; use --device cpu")
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"}:
        parser.fail(f"--precisions takes fp32 and/or bf16, got {args.precisions!r}")
    if "bf16" in precisions and not cpu_has_bf16():
        parser.fail("--precisions bf16: this CPU has no bf16 units")
    try:
        sizes = [int(b) for b in f"{args.batches},{args.eval_batches}".split(",")]
    except ValueError:
        sizes = [0]
    if min(sizes) < 1:
        parser.fail("--batches and --eval-batches list positive integers")
    facts = common.machine(device)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native (no ONEDNN_MAX_CPU_ISA)")
    say(f"cpu_options: oneDNN ISA {isa}; load average {facts['load_avg_1_5_15']}")
    train, evals = measure(args)
    body = "\n".join([
        f"oneDNN ISA: {isa}; CPU bf16 units: {cpu_has_bf16()}", "",
        common.md_table(["threads", "batch", "precision", "layout", "CPU-s per 1k images", "wall img/s"],
                        train), "",
        common.md_table(["eval batch", "precision", "CPU-s per 1k images (1 thread)"], evals), "",
        f"- {args.images} training / {args.eval_images} val images, {args.repeats} rounds; load average "
        f"at end {common.load_average()} (CPU-s hold on a shared machine, wall img/s do not)"])
    print(body, flush=True)
    if common.wants_record(args):
        common.append_result(args.results, f"cpu_options ({isa})",
                             common.command_line("bench.cpu_options", argv), facts, body)
        say(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

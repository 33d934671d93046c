"""Training throughput (images/s): the seed's recipe vs mnist_net's fast path, option by option.

seed      torchvision MNIST + the seed's PIL transforms, DataLoader(512, shuffle, 2 workers),
          fp32 NCHW, the seed's plain train loop.
fast      mnist_net.engine.train_epoch on a device-resident uint8 Split (batched augmentation),
          fp32 NCHW; then + channels_last; then + bf16 autocast (where the hardware has bf16);
          then + torch.compile (--compile only).

Each measurement trains --images images; every variant is warmed up once first, and the
variants take turns, round by round (the starting variant rotates), so a load change on a shared
machine hits all of them. Reported: the median images/s of each, its ratio to the seed's median,
and each option's step ratio and share of the total gain (its log-ratio over the total's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from bench import common
from mnist_net.cli import Parser, positive_int, say
from mnist_net.data import DEFAULT_DATA_DIR, N_TRAIN, Split, load_splits
from mnist_net.download import ensure_mnist
from mnist_net.engine import train_epoch
from mnist_net.model import Net
from mnist_net.runtime import autocast_dtype

IMAGES, REPEATS = 3072, 5  # full run: ~5 min on 2 busy EPYC cores (the seed path dominates)
QUICK = {"images": 128, "repeats": 1, "batch_size": 64}


@dataclass
class Variant:
    key: str
    change: str  # what this variant adds to the previous one
    measure: Callable[[int], tuple[int, float]]  # round -> (images, seconds)
    samples: list[float]


def seed_variant(data_dir: Path, indices: list[int], batch_size: int,
                 device: torch.device) -> Callable[[int], tuple[int, float]]:
    from torchvision import datasets

    root = ensure_mnist(data_dir).parent.parent
    dataset = datasets.MNIST(root=str(root), train=True, transform=common.seed_transform())
    model, optimizer = common.seed_model(0, device)
    # Warm-up: one batch, so allocator and oneDNN start-up are not timed.
    common.seed_train(model, optimizer, common.seed_loader(Subset(dataset, indices[:batch_size]),
                                                           batch_size), device)

    def measure(round_: int) -> tuple[int, float]:
        loader = common.seed_loader(Subset(dataset, indices), batch_size, seed=round_)
        return common.seed_train(model, optimizer, loader, device)

    return measure


def fast_variant(data: Split, warm: Split, batch_size: int, device: torch.device, *,
                 channels_last: bool, amp: torch.dtype | None,
                 compile_: bool) -> Callable[[int], tuple[int, float]]:
    torch.manual_seed(0)  # the seed variant's initial weights too
    model = Net().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=common.SEED_LR, momentum=common.SEED_MOMENTUM)
    forward = torch.compile(model) if compile_ else model

    def run(split: Split, round_: int) -> tuple[int, float]:
        gen = torch.Generator(device=device).manual_seed(round_)
        stats = train_epoch(forward, optimizer, split, batch_size=batch_size, generator=gen,
                            amp_dtype=amp, channels_last=channels_last)
        return len(split), stats.seconds

    run(warm, -1)  # warm-up; `warm` holds both batch shapes a measurement sees (compile traces both)
    return lambda round_: run(data, round_)


def build_variants(args, device: torch.device, batch_size: int) -> tuple[list[Variant], list[str]]:
    splits = load_splits(args.data_dir)
    train = splits["train"]
    indices = common.subset_indices(N_TRAIN, args.images, seed=0)
    data = train.subset(args.images, seed=0).to(device)
    warm_size = batch_size + len(data) % batch_size
    warm = train.subset(warm_size, seed=1).to(device)
    notes = []
    variants = [Variant("seed", "torchvision MNIST + PIL transforms, DataLoader(2 workers), fp32 NCHW",
                        seed_variant(args.data_dir, indices, batch_size, device), [])]
    fast = dict(data=data, warm=warm, batch_size=batch_size, device=device)
    variants.append(Variant("fast fp32", "device-resident uint8 split, batched augmentation",
                            fast_variant(**fast, channels_last=False, amp=None, compile_=False), []))
    variants.append(Variant("+ channels_last", "channels_last model and batches",
                            fast_variant(**fast, channels_last=True, amp=None, compile_=False), []))
    try:
        amp = autocast_dtype(device, "bf16")
    except ValueError as err:
        amp = None
        notes.append(f"bf16 variant skipped: {err}")
    if amp is not None:
        variants.append(Variant("+ bf16", "bf16 autocast",
                                fast_variant(**fast, channels_last=True, amp=amp, compile_=False), []))
    if args.compile:
        variants.append(Variant("+ compile", "torch.compile",
                                fast_variant(**fast, channels_last=True, amp=amp, compile_=True), []))
    elif device.type == "cpu":
        notes.append("torch.compile variant not run (off by default on CPU; --compile adds it)")
    return variants, notes


def run_rounds(variants: list[Variant], repeats: int) -> None:
    for round_ in range(repeats):
        shift = round_ % len(variants)
        for v in variants[shift:] + variants[:shift]:
            images, seconds = v.measure(round_)
            v.samples.append(images / seconds)
            say(f"round {round_ + 1}/{repeats}  {v.key:<16} {images / seconds:8.1f} img/s")


def table(variants: list[Variant]) -> tuple[str, dict]:
    """Markdown table + summary.

    vs seed = ratio of medians; paired vs seed = median over rounds of the ratio within a round;
    share of gain = log(step ratio) / log(total ratio of medians).
    """
    base = common.median(variants[0].samples)
    total = common.median(variants[-1].samples) / base
    rows, summary, prev = [], {}, base
    for v in variants:
        med = common.median(v.samples)
        step = med / prev
        share = (f"{100 * math.log(step) / math.log(total):.0f}%"
                 if v is not variants[0] and total > 0 and abs(math.log(total)) > 1e-9 else "")
        # Same-round pairs cancel most of a shared machine's load swings.
        paired = common.median([s / b for s, b in zip(v.samples, variants[0].samples, strict=True)])
        rows.append([v.key, v.change, f"{med:.1f}", f"{min(v.samples):.1f}–{max(v.samples):.1f}",
                     f"{med / base:.2f}x", f"{paired:.2f}x", "" if v is variants[0] else f"{step:.2f}x",
                     share])
        summary[v.key] = {"median_images_per_s": med, "samples": v.samples, "vs_seed": med / base,
                          "paired_vs_seed": paired}
        prev = med
    headers = ["variant", "adds", "median img/s", "min–max", "vs seed", "paired vs seed", "step",
               "share of gain"]
    return common.md_table(headers, rows), summary


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.train_speed", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=positive_int, default=IMAGES,
                   help=f"images trained per measurement (--quick: {QUICK['images']})")
    p.add_argument("--repeats", type=positive_int, default=REPEATS,
                   help=f"rounds over all variants; medians are reported (--quick: {QUICK['repeats']})")
    p.add_argument("--batch-size", type=positive_int, default=common.SEED_BATCH,
                   help=f"the seed's batch size (--quick: {QUICK['batch_size']})")
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant (slow to build on CPU)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST folder")
    common.add_record_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, device = common.parse(parser, argv, QUICK)
    facts = common.machine(device)
    say(f"train_speed on {device}: {args.images} images x {args.repeats} rounds, "
               f"batch {args.batch_size}; load average {facts['load_avg_1_5_15']}")
    variants, notes = build_variants(args, device, args.batch_size)
    run_rounds(variants, args.repeats)
    text, summary = table(variants)
    fast_default = "+ bf16" if "+ bf16" in summary else "+ channels_last"
    ratio, paired = summary[fast_default]["vs_seed"], summary[fast_default]["paired_vs_seed"]
    verdict = (f"fast path as TrainConfig defaults run it here ({fast_default}): {ratio:.2f}x the seed "
               f"recipe by medians, {paired:.2f}x paired by round "
               f"({'meets' if min(ratio, paired) >= 3 else 'misses'} the >= 3x target)")
    body = "\n".join([text, "", verdict, *[f"- {n}" for n in notes],
                      f"- {args.images} images per measurement, batch {args.batch_size}, "
                      f"{args.repeats} rounds; load average at end {common.load_average()}"])
    print(body, flush=True)
    if common.wants_record(args):
        common.append_result(args.results, "train_speed", common.command_line("bench.train_speed", argv),
                             facts, body)
        say(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

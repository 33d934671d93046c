"""GPU benchmark, one go (bench/gpu.sh, at most 8 minutes): what the GPU defaults should be.

1. epochs      a 60k-image training epoch at batch 32/128/512/1024 in fp32, TF32 and bf16, on the
               eager path (engine.train_epoch) and the graphed one (whole step as a CUDA graph,
               CUDA only; bench/gpu_paths.py)                       -> engine defaults
2. checkpoint  torch.save of model + optimizer + scheduler state vs the epoch time
                                                                    -> checkpoint_every's auto rule
3. procs       K = 1, 2, 4, 8, 16 training processes on one GPU at batch 32, 128 and 512:
               aggregate images/s and its ratio to K = 1 (bench/gpu_procs.py)
                                                                    -> tuner DEFAULT_GPU_SHARE
4. seed        the seed recipe's epoch (PIL transforms, 2-worker DataLoader, fp32) at batch 512,
               the reference for "x times the seed"
5. compile     torch.compile(mode="reduce-overhead") at batch 32 and 512 in bf16, if time is left

Needs only torch, torchvision (with the numpy and pillow they bring) and mnist_net modules that
import nothing else (mnist_net.download imports filelock, a torch dependency; a stub stands in if
it is missing, since nothing here downloads). MNIST is read from IDX files (.gz or not) under
--data-dir; without them random uint8 data of MNIST's shape is used (times the same, learns
nothing, and is said so). gpu_bench.json and gpu_bench.md in --out are rewritten after every
measurement, so a run cut short keeps what it measured; --budget-s stops starting new work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from bench import common, gpu_paths, gpu_procs, gpu_report
from mnist_net import files
from mnist_net.cli import Parser, positive_int, say
from mnist_net.data import Split
from mnist_net.runtime import cpu_has_bf16, pick_device

DEFAULT_OUT = common.REPO_ROOT / "bench" / "gpu-results"
BUDGET_S = 420  # gpu.sh kills at 470 s; the last section started may still need a minute
QUICK = {"images": 256, "batches": "32,64", "repeats": 1, "procs": "1,2", "proc_batches": "32",
         "proc_seconds": 0.3}
# Least time left to start each kind of work (seconds); the sizes are first guesses, as no GPU
# run has been made yet: a 60k epoch at batch 32 in eager mode, one K run over three batch sizes
# (process start-up included), one compile (graph capture, Inductor build).
RESERVE_S = {"epoch": 15, "procs": 45, "seed": 40, "compile": 100}


class InMemoryMNIST(Dataset):
    """torchvision MNIST's __getitem__ over in-memory tensors: a PIL 'L' image through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i, 0].numpy())), int(self.labels[i])


class Run:
    """The result being built, its deadline, and the rewrite after every measurement."""

    def __init__(self, args, device: torch.device, source: str, argv) -> None:
        self.args, self.device, self.t0 = args, device, time.perf_counter()
        self.result = {"command": common.command_line("bench.gpu_bench", argv),
                       "machine": common.machine(device), "data": source, "targets": gpu_report.TARGETS,
                       "epochs": [], "checkpoint": {}, "procs": [], "notes": list(gpu_paths.NOTES),
                       "wall_s": 0.0}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def fits(self, kind: str, what: str) -> bool:
        if self.left() >= RESERVE_S[kind]:
            return True
        self.result["notes"].append(f"{what} skipped: {self.left():.0f} s of the {self.args.budget_s} s "
                                    f"budget left, {RESERVE_S[kind]} s needed")
        return False

    def save(self, line: str | None = None) -> None:
        if line:
            say(line)
        self.result["wall_s"] = time.perf_counter() - self.t0
        gpu_report.write(self.args.out, self.result)


def time_epochs(run: Run, data: Split, batch_size: int, precision: str, path: str,
                compile_mode: str | None = None) -> None:
    """Warm up (every batch shape an epoch has), then time --repeats full epochs."""
    device, args = run.device, run.args
    amp = gpu_paths.set_precision(device, precision)
    training = gpu_paths.new_training(batch_size, device, compile_mode=compile_mode)
    warm_n = min(len(data), 2 * batch_size + len(data) % batch_size)
    warm = Split(data.images[:warm_n], data.labels[:warm_n])
    start = time.perf_counter()
    if path == "graphed":
        step = gpu_paths.GraphedStep(training, batch_size, amp, device)
        epoch = step.epoch
    else:
        def epoch(split: Split, seed: int) -> tuple[float, float]:
            return gpu_paths.eager_epoch(training, split, batch_size, amp, seed)
    epoch(warm, 0)
    warm_s = time.perf_counter() - start
    timed = [epoch(data, r + 1) for r in range(args.repeats)]
    seconds = [s for s, _ in timed]
    median_s = common.median(seconds)
    run.result["epochs"].append({"path": path, "precision": precision, "batch": batch_size,
                                 "images": len(data), "seconds": seconds, "median_s": median_s,
                                 "images_per_s": len(data) / median_s, "last_loss": timed[-1][1],
                                 "warmup_s": warm_s})
    run.save(f"{path:>26} {precision:>4} batch {batch_size:>4}: {median_s:.3f} s/epoch")


def section_epochs(run: Run, data: Split, batch_sizes: list[int], precisions: list[str]) -> None:
    paths = ["eager", "graphed"] if run.device.type == "cuda" else ["eager"]
    if run.device.type != "cuda":
        run.result["notes"].append("graphed path not run: CUDA graphs need a CUDA device")
    for batch_size in batch_sizes:
        for precision in precisions:
            for path in paths:
                if not run.fits("epoch", f"{path} {precision} batch {batch_size}"):
                    return
                try:
                    time_epochs(run, data, batch_size, precision, path)
                except Exception as err:  # e.g. a capture error: the other paths still count
                    run.result["notes"].append(f"{path} {precision} batch {batch_size} failed: "
                                               f"{type(err).__name__}: {str(err)[:300]}")
                    run.save()


def section_checkpoint(run: Run, data: Split) -> None:
    batch_size = min(512, len(data))
    training = gpu_paths.new_training(batch_size, run.device)
    one_step = Split(data.images[:batch_size], data.labels[:batch_size])
    gpu_paths.eager_epoch(training, one_step, batch_size, None, seed=0)  # momentum buffers exist now
    run.result["checkpoint"] = gpu_paths.checkpoint_cost(training, repeats=5)
    run.save(f"checkpoint: {run.result['checkpoint']}")


def section_procs(run: Run) -> None:
    args = run.args
    batch_sizes = [int(b) for b in args.proc_batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for k in [int(k) for k in args.procs.split(",")]:
            if not run.fits("procs", f"K={k}"):
                return
            try:
                gpu_procs.run_procs(k, batch_sizes, run.result["procs"], device=str(run.device),
                                    data_dir=args.data_dir, seconds=args.proc_seconds, tmp=Path(tmp))
            except RuntimeError as err:  # e.g. out of memory at a large K: keep the smaller Ks
                run.result["notes"].append(f"K={k}: {err}"[:400])
            run.save(f"K={k}: done")


def section_seed(run: Run, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    """One full epoch of the seed's recipe, loader start-up included (it restarts every epoch)."""
    if not run.fits("seed", "seed recipe"):
        return
    gpu_paths.set_precision(run.device, "fp32")
    dataset = InMemoryMNIST(images, labels, common.seed_transform())
    model, optimizer = common.seed_model(0, run.device)
    warm = torch.utils.data.Subset(dataset, range(min(len(dataset), 2 * batch_size)))
    common.seed_train(model, optimizer, common.seed_loader(warm, batch_size), run.device)  # CUDA init
    start = time.perf_counter()
    seen, _ = common.seed_train(model, optimizer, common.seed_loader(dataset, batch_size, seed=1),
                                run.device, untimed_fetches=0)
    seconds = time.perf_counter() - start
    run.result["epochs"].append({"path": "seed recipe", "precision": "fp32", "batch": batch_size,
                                 "images": seen, "seconds": [seconds], "median_s": seconds,
                                 "images_per_s": seen / seconds})
    run.save(f"seed recipe batch {batch_size}: {seconds:.2f} s/epoch")


def section_compile(run: Run, data: Split, precision: str) -> None:
    for batch_size in (32, 512):
        if not run.fits("compile", f"compile reduce-overhead batch {batch_size}"):
            return
        try:
            time_epochs(run, data, batch_size, precision, "compiled reduce-overhead",
                        compile_mode="reduce-overhead")
        except Exception as err:  # a missing compiler toolchain must not lose the rest
            run.result["notes"].append(f"compile batch {batch_size} failed: {type(err).__name__}: "
                                       f"{str(err)[:300]}")
            run.save()


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke check")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("MNIST_DATA_DIR", "~/.cache/mnist-s5")).expanduser(),
                   help="folder with MNIST IDX files (torchvision layout or flat); random data if none")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or DEFAULT_OUT),
                   help="folder for gpu_bench.json and gpu_bench.md (default $OUT, else bench/gpu-results)")
    p.add_argument("--images", type=positive_int, default=gpu_paths.N_IMAGES,
                   help=f"images per timed epoch (--quick: {QUICK['images']})")
    p.add_argument("--batches", default="32,128,512,1024", help=f"epoch batch sizes (--quick: {QUICK['batches']})")
    p.add_argument("--repeats", type=positive_int, default=2,
                   help=f"timed epochs per variant, median kept (--quick: {QUICK['repeats']})")
    p.add_argument("--procs", default="1,2,4,8,16", help=f"process counts K (--quick: {QUICK['procs']})")
    p.add_argument("--proc-batches", default="32,128,512",
                   help=f"batch sizes of the K-process runs (--quick: {QUICK['proc_batches']})")
    p.add_argument("--proc-seconds", type=float, default=4.0,
                   help=f"seconds each K-process run trains (--quick: {QUICK['proc_seconds']})")
    p.add_argument("--no-compile", action="store_true", help="skip section 5 (torch.compile)")
    p.add_argument("--budget-s", type=positive_int, default=BUDGET_S,
                   help="start no new measurement once less than its reserve is left of this")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, no compile: a smoke check of every code path (use with --device cpu)")
    return p


def parse(argv) -> tuple[argparse.Namespace, torch.device]:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.apply_quick(parser, args, QUICK)
    try:
        device = pick_device(args.device)
        args.out = files.prepare_out_dir(args.out)
    except ValueError as err:
        parser.fail(str(err))
    for name in ("batches", "procs", "proc_batches"):
        text = getattr(args, name)
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            parser.fail(f"--{name.replace('_', '-')} must list positive integers, got {text!r}")
    return args, device


def main(argv: list[str] | None = None) -> int:
    args, device = parse(argv)
    images, labels, source = gpu_paths.load_train(args.data_dir)
    say(f"gpu_bench on {device}: {source}; budget {args.budget_s} s")
    run = Run(args, device, source, argv)
    n = min(args.images, len(labels))
    data = Split(images[:n], labels[:n]).to(device)
    precisions = list(gpu_paths.PRECISIONS)
    if device.type != "cuda":  # TF32 is a CUDA mode; bf16 only where the CPU has it natively
        precisions = ["fp32"] + (["bf16"] if cpu_has_bf16() else [])
    section_epochs(run, data, [int(b) for b in args.batches.split(",")], precisions)
    section_checkpoint(run, data)
    section_procs(run)
    section_seed(run, images[:n], labels[:n], 512 if not args.quick else 64)
    if args.quick or args.no_compile:
        run.result["notes"].append("compile section not run (--quick or --no-compile)")
    else:
        section_compile(run, data, precisions[-1])
    run.save()
    print(gpu_report.markdown(run.result), flush=True)
    for line in gpu_report.informs(run.result):
        say(line)
    say(f"wrote gpu_bench.json and gpu_bench.md to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

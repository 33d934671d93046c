"""GPU benchmark, one go (bench/gpu.sh): seed recipe vs fast path epoch time, and K trials per GPU.

1. Time per full 60k-image training epoch: the seed's recipe (PIL transforms in a 2-worker
   DataLoader, fp32, per-batch loss.item()) vs mnist_net's fast path (device-resident uint8 data,
   batched augmentation) in fp32 NCHW, fp32 channels_last, bf16 channels_last, and that compiled.
2. K training processes sharing the GPU (the tuner's packing of trials): each trains the fast
   path (channels_last, bf16 where supported) on a fixed number of images, all starting together;
   aggregate images/s and its ratio to K=1.

Needs only torch, torchvision (with the numpy and pillow they bring) and mnist_net modules that
import nothing else (mnist_net.download imports filelock, a dependency of torch itself; should
it be missing, a stub that fails on use stands in, since nothing here downloads). MNIST is read
from IDX files (.gz or not) under --data-dir; without them the benchmark uses random uint8 data of
MNIST's shape, which times the same but learns nothing, and says so. Results: gpu_bench.json and
gpu_bench.md in --out, rewritten after every section so a run cut short keeps what it measured.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads libgomp).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

NOTES: list[str] = []
try:
    import filelock  # noqa: F401
except ImportError:  # only mnist_net.download's ensure_mnist uses it, and nothing here calls that
    _stub = types.ModuleType("filelock")

    class _NoFileLock:
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("filelock is not installed; gpu_bench never downloads MNIST")

    _stub.FileLock = _NoFileLock
    sys.modules["filelock"] = _stub
    NOTES.append("filelock not installed: stubbed (unused here)")

from bench import common  # noqa: E402
from mnist_net import files  # noqa: E402
from mnist_net.cli import Parser, positive_int, say  # noqa: E402
from mnist_net.config import TrainConfig  # noqa: E402
from mnist_net.data import Split  # noqa: E402
from mnist_net.engine import build_training, train_epoch  # noqa: E402
from mnist_net.model import Net  # noqa: E402
from mnist_net.runtime import autocast_dtype, pick_device  # noqa: E402

N_IMAGES = 60_000  # MNIST's training file: the seed trained on all of it each epoch
EPOCH_REPEATS = 3  # timed fast-path epochs per variant (each well under a second on a GPU)
PROCS = (1, 2, 4, 8)
PROC_IMAGES = 300_000  # 5 epochs per process: seconds of GPU work per process at K=8
BUDGET_S = 240  # stop starting new sections after this; gpu.sh kills the run at 290 s
COMPILE_RESERVE_S = 100  # compile is last and only starts with this much budget left
QUICK = {"images": 256, "proc_images": 128, "batch_size": 64, "epoch_repeats": 1, "procs": "1,2"}
MARK = "GPU_BENCH "
DEFAULT_OUT = common.REPO_ROOT / "bench" / "gpu-results"


# ---------------------------------------------------------------- data


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_train(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """MNIST's 60k training images (N, 1, 28, 28) uint8 and labels, or random data of that shape."""
    for raw in (data_dir / "MNIST" / "raw", data_dir):
        found = {}
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            for candidate in (raw / name, raw / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == 2:
            images = torch.from_numpy(_read_idx(found["train-images-idx3-ubyte"]).copy()).unsqueeze(1)
            labels = torch.from_numpy(_read_idx(found["train-labels-idx1-ubyte"]).astype(np.int64))
            return images, labels, f"MNIST from {raw}"
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (N_IMAGES,), generator=gen)
    return images, labels, (f"RANDOM uint8 data of MNIST's shape (no MNIST IDX files under {data_dir}): "
                            "timings hold, accuracies mean nothing")


class InMemoryMNIST(Dataset):
    """torchvision MNIST's __getitem__ over in-memory tensors: a PIL 'L' image through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i, 0].numpy())  # 2-D uint8 -> mode "L"
        return self.transform(img), int(self.labels[i])


# ---------------------------------------------------------------- section 1: epoch times


def time_seed_epoch(images, labels, batch_size: int, device: torch.device) -> dict:
    """One full epoch of the seed's recipe, loader start-up included (it restarts every epoch)."""
    dataset = InMemoryMNIST(images, labels, common.seed_transform())
    model, optimizer = common.seed_model(0, device)
    warm = torch.utils.data.Subset(dataset, range(2 * batch_size))
    common.seed_train(model, optimizer, common.seed_loader(warm, batch_size), device)  # CUDA/cuDNN init
    start = time.perf_counter()
    seen, _ = common.seed_train(model, optimizer, common.seed_loader(dataset, batch_size, seed=1), device,
                                untimed_fetches=0)
    seconds = time.perf_counter() - start
    return {"path": "seed recipe (PIL + DataLoader, fp32)", "images": seen, "seconds": [seconds],
            "median_s": seconds, "images_per_s": seen / seconds}


def time_fast_epochs(data: Split, warm: Split, batch_size: int, device: torch.device, *,
                     channels_last: bool, amp: torch.dtype | None, compile_: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    model = Net().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=common.SEED_LR, momentum=common.SEED_MOMENTUM)
    forward = torch.compile(model) if compile_ else model

    def epoch(split: Split, seed: int) -> float:
        gen = torch.Generator(device=device).manual_seed(seed)
        return train_epoch(forward, optimizer, split, batch_size=batch_size, generator=gen,
                           amp_dtype=amp, channels_last=channels_last).seconds

    warm_s = epoch(warm, 0)  # both batch shapes an epoch sees; compile traces both here
    seconds = [epoch(data, r + 1) for r in range(repeats)]
    median_s = common.median(seconds)
    return {"images": len(data), "seconds": seconds, "median_s": median_s,
            "images_per_s": len(data) / median_s, "warmup_s": warm_s}


# ---------------------------------------------------------------- section 2: K processes


def worker(args) -> None:
    """One of K processes: set up, say READY, wait for GO, train, report."""
    device = pick_device(args.device)
    images, labels, _ = load_train(args.data_dir)
    n = min(args.proc_images, len(labels))
    data = Split(images[:n], labels[:n]).to(device)
    warm = Split(images[:args.batch_size], labels[:args.batch_size]).to(device)
    cfg = TrainConfig(batch_size=args.batch_size, device=str(device))  # channels_last, precision auto
    training = build_training(cfg, device)
    amp = autocast_dtype(device, cfg.precision)

    def epoch(split: Split, seed: int) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        train_epoch(training.forward, training.optimizer, split, batch_size=cfg.batch_size,
                    generator=gen, amp_dtype=amp, channels_last=cfg.channels_last)

    epoch(warm, 0)
    print(MARK + "READY", flush=True)
    sys.stdin.readline()  # GO
    start = time.perf_counter()
    done = 0
    while done < args.proc_images:
        epoch(data, done + 1)
        done += len(data)
    seconds = time.perf_counter() - start
    print(MARK + json.dumps({"images": done, "seconds": seconds}), flush=True)


def _wait_for(proc: subprocess.Popen, err_path: Path) -> str:
    """The next line the worker prints with MARK; raise with its stderr if it dies first."""
    for line in proc.stdout:
        if line.startswith(MARK):
            return line[len(MARK):].strip()
    proc.wait()
    tail = err_path.read_text(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"worker exited {proc.returncode}: " + " | ".join(tail))


def run_procs(k: int, args, tmp: Path) -> dict:
    """K workers start training together; aggregate images/s over the parent's wall clock."""
    cmd = [sys.executable, "-m", "bench.gpu_bench", "--worker", "--device", args.device,
           "--data-dir", str(args.data_dir), "--proc-images", str(args.proc_images),
           "--batch-size", str(args.batch_size)]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // k)))
    procs, errs = [], []
    try:
        for i in range(k):
            errs.append(tmp / f"worker-{k}-{i}.err")
            with open(errs[-1], "w") as err:
                procs.append(subprocess.Popen(cmd, cwd=common.REPO_ROOT, env=env, text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err))
        for proc, err in zip(procs, errs, strict=True):
            _wait_for(proc, err)  # READY
        start = time.perf_counter()
        for proc in procs:
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        reports = [json.loads(_wait_for(proc, err)) for proc, err in zip(procs, errs, strict=True)]
        wall = time.perf_counter() - start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    total = sum(r["images"] for r in reports)
    return {"k": k, "images": total, "wall_s": wall, "aggregate_images_per_s": total / wall,
            "per_process_images_per_s": [r["images"] / r["seconds"] for r in reports]}


# ---------------------------------------------------------------- report


def report(out: Path, result: dict) -> str:
    seed = result["epochs"][0]["median_s"] if result["epochs"] else math.nan
    rows = [[e["path"], e["images"], f"{e['median_s']:.2f}", f"{e['images_per_s']:.0f}",
             f"{seed / e['median_s']:.2f}x"] for e in result["epochs"]]
    parts = [f"# gpu_bench — {result['machine'].get('gpu', result['machine']['device'])}", "",
             f"- data: {result['data']}", f"- command: `{result['command']}`",
             f"- machine: {json.dumps(result['machine'])}", "",
             "## Time per training epoch", "",
             common.md_table(["path", "epoch images", "s/epoch (median)", "img/s", "speed-up vs seed"], rows)]
    if result["procs"]:
        base = result["procs"][0]["aggregate_images_per_s"]
        prow = [[p["k"], p["images"], f"{p['wall_s']:.2f}", f"{p['aggregate_images_per_s']:.0f}",
                 f"{p['aggregate_images_per_s'] / base:.2f}x",
                 f"{common.median(p['per_process_images_per_s']):.0f}"] for p in result["procs"]]
        parts += ["", "## K training processes on one device (fast path, TrainConfig defaults)", "",
                  common.md_table(["K", "images (all)", "wall s", "aggregate img/s", "vs K=1",
                                   "median per-process img/s"], prow)]
    parts += ["", *[f"- {n}" for n in result["notes"]], f"- total wall {result['wall_s']:.0f} s"]
    text = "\n".join(parts) + "\n"
    files.write_json(out / "gpu_bench.json", result)
    files.write_text(out / "gpu_bench.md", text)
    return text


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke check")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("MNIST_DATA_DIR", "~/.cache/mnist-s5")).expanduser(),
                   help="folder with MNIST IDX files (torchvision layout or flat); random data if none")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or DEFAULT_OUT),
                   help="folder for gpu_bench.json and gpu_bench.md (default $OUT, else bench/gpu-results)")
    p.add_argument("--images", type=positive_int, default=N_IMAGES,
                   help=f"images per timed epoch (--quick: {QUICK['images']})")
    p.add_argument("--batch-size", type=positive_int, default=common.SEED_BATCH,
                   help=f"the seed's batch size (--quick: {QUICK['batch_size']})")
    p.add_argument("--epoch-repeats", type=positive_int, default=EPOCH_REPEATS,
                   help=f"timed fast-path epochs per variant (--quick: {QUICK['epoch_repeats']})")
    p.add_argument("--procs", default=",".join(map(str, PROCS)),
                   help=f"comma-separated process counts K (--quick: {QUICK['procs']})")
    p.add_argument("--proc-images", type=positive_int, default=PROC_IMAGES,
                   help=f"images each of the K processes trains (--quick: {QUICK['proc_images']})")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--budget-s", type=positive_int, default=BUDGET_S,
                   help="start no new section after this many seconds")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, no compile: a smoke check (use with --device cpu)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.apply_quick(parser, args, QUICK)
    try:
        device = pick_device(args.device)
        procs = [int(k) for k in args.procs.split(",")]
        if not procs or min(procs) < 1:
            raise ValueError
    except ValueError as err:
        parser.fail(str(err) or f"--procs must list positive integers, got {args.procs!r}")
    args.device = str(device)
    if args.worker:
        worker(args)
        return 0
    out = files.prepare_out_dir(args.out)
    t0 = time.perf_counter()
    images, labels, source = load_train(args.data_dir)
    say(f"gpu_bench on {device}: {source}")
    result = {"command": common.command_line("bench.gpu_bench", argv), "machine": common.machine(device),
              "data": source, "epochs": [], "procs": [], "notes": list(NOTES), "wall_s": 0.0}
    n = min(args.images, len(labels))
    images, labels = images[:n], labels[:n]
    data = Split(images, labels).to(device)
    warm_n = args.batch_size + n % args.batch_size  # both batch shapes an epoch of n images sees
    warm = Split(images[:warm_n], labels[:warm_n]).to(device)

    def save(line: str) -> None:
        say(line)
        result["wall_s"] = time.perf_counter() - t0
        report(out, result)

    result["epochs"].append(time_seed_epoch(images, labels, args.batch_size, device))
    save(f"seed recipe: {result['epochs'][-1]['median_s']:.2f} s/epoch")
    try:
        bf16 = autocast_dtype(device, "bf16")
    except ValueError as err:
        bf16 = None
        result["notes"].append(f"bf16 variants skipped: {err}")
    variants = [("fast fp32 NCHW", False, None, False), ("fast fp32 channels_last", True, None, False)]
    if bf16 is not None:
        variants.append(("fast bf16 channels_last", True, bf16, False))
    for name, cl, amp, _ in variants:
        entry = time_fast_epochs(data, warm, args.batch_size, device, channels_last=cl, amp=amp,
                                 compile_=False, repeats=args.epoch_repeats)
        result["epochs"].append({"path": name, **entry})
        save(f"{name}: {entry['median_s']:.3f} s/epoch")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for k in procs:
            if time.perf_counter() - t0 > args.budget_s:
                result["notes"].append(f"K={k} skipped: past the {args.budget_s} s budget")
                continue
            result["procs"].append(run_procs(k, args, Path(tmp)))
            save(f"K={k}: {result['procs'][-1]['aggregate_images_per_s']:.0f} img/s aggregate")
    left = args.budget_s - (time.perf_counter() - t0)
    if args.quick or args.no_compile:
        result["notes"].append("compile variant not run (--quick or --no-compile)")
    elif left < COMPILE_RESERVE_S:
        result["notes"].append(f"compile variant skipped: {left:.0f} s of budget left, "
                               f"{COMPILE_RESERVE_S} s reserved for it")
    else:
        name = f"fast {'bf16' if bf16 else 'fp32'} channels_last + compile"
        try:
            entry = time_fast_epochs(data, warm, args.batch_size, device, channels_last=True, amp=bf16,
                                     compile_=True, repeats=args.epoch_repeats)
            result["epochs"].append({"path": name, **entry})
            save(f"{name}: {entry['median_s']:.3f} s/epoch (compile warm-up {entry['warmup_s']:.0f} s)")
        except Exception as err:  # a missing compiler toolchain must not lose the rest
            result["notes"].append(f"compile variant failed: {type(err).__name__}: {str(err)[:300]}")
    result["wall_s"] = time.perf_counter() - t0
    print(report(out, result), flush=True)
    say(f"wrote gpu_bench.json and gpu_bench.md to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

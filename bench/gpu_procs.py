"""gpu_bench section 3: K training processes sharing one device (the tuner packing K trials per GPU).

Each worker (`python -m bench.gpu_procs ...`, started by run_procs) trains the engine's eager path
with TrainConfig defaults (channels_last, bf16 where native) at each batch size in turn: set up and
warm up, say READY, wait for GO, train slices of SLICE_STEPS steps until --seconds have passed,
report its images and seconds. The parent starts all K together, once per batch size, and times
them on its own clock: aggregate images/s = all images / wall time from GO to the last report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import common, gpu_paths
from mnist_net.data import Split
from mnist_net.runtime import autocast_dtype, pick_device

MARK = "GPU_PROCS "
SLICE_STEPS = 16  # steps per train_epoch call: the worker looks at the clock (and syncs) between calls


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--batches")
    p.add_argument("--seconds", type=float)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    images, labels, _ = gpu_paths.load_train(args.data_dir)
    amp = autocast_dtype(device, "auto")  # TrainConfig's default precision
    for batch_size in (int(b) for b in args.batches.split(",")):
        n = min(SLICE_STEPS * batch_size, len(labels))
        data = Split(images[:n], labels[:n]).to(device)
        training = gpu_paths.new_training(batch_size, device)
        gpu_paths.eager_epoch(training, data, batch_size, amp, seed=0)  # warm-up: cuDNN, allocator
        print(MARK + "READY", flush=True)
        sys.stdin.readline()  # GO
        start, done, slice_ = time.perf_counter(), 0, 0
        while time.perf_counter() - start < args.seconds:
            slice_ += 1
            gpu_paths.eager_epoch(training, data, batch_size, amp, seed=slice_)
            done += n
        print(MARK + json.dumps({"images": done, "seconds": time.perf_counter() - start}), flush=True)


def _next_line(proc: subprocess.Popen, err_path: Path) -> str:
    """The worker's next MARK line; raises with its stderr's tail if it dies first."""
    for line in proc.stdout:
        if line.startswith(MARK):
            return line[len(MARK):].strip()
    proc.wait()
    tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"a worker exited {proc.returncode}: " + " | ".join(tail))


def run_procs(k: int, batch_sizes: list[int], rows: list[dict], *, device: str, data_dir: Path,
              seconds: float, tmp: Path) -> None:
    """K workers, all batch sizes in turn: appends one row per batch size to `rows` as it goes
    (a failure at a later batch size keeps the earlier rows)."""
    cmd = [sys.executable, "-m", "bench.gpu_procs", "--device", device, "--data-dir", str(data_dir),
           "--batches", ",".join(map(str, batch_sizes)), "--seconds", str(seconds)]
    # The CPUs are shared out too: K processes x all cores' threads would oversubscribe them.
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // k)))
    procs, errs = [], []
    try:
        for i in range(k):
            errs.append(tmp / f"worker-{k}-{i}.err")
            with open(errs[-1], "w") as err:
                procs.append(subprocess.Popen(cmd, cwd=common.REPO_ROOT, env=env, text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err))
        for batch_size in batch_sizes:
            for proc, err in zip(procs, errs, strict=True):
                _next_line(proc, err)  # READY
            start = time.perf_counter()
            for proc in procs:
                proc.stdin.write("GO\n")
                proc.stdin.flush()
            reports = [json.loads(_next_line(proc, err)) for proc, err in zip(procs, errs, strict=True)]
            wall = time.perf_counter() - start
            total = sum(r["images"] for r in reports)
            rows.append({"k": k, "batch": batch_size, "images": total, "wall_s": wall,
                         "aggregate_images_per_s": total / wall,
                         "per_process_images_per_s": [r["images"] / r["seconds"] for r in reports]})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    worker(sys.argv[1:])

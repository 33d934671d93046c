"""What the benchmarks share: the seed's data recipe and train loop, machine facts, result files.

Imports only torch, torchvision and stdlib-only parts of mnist_net, so that gpu_bench (which must
run where neither ray nor optuna is installed) can use it too.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from mnist_net import files
from mnist_net.runtime import cpu_has_bf16, cpu_model, git_commit, pick_device

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_HEADER = ("# Benchmark results\n\nAppended by `python -m bench.<name>` (full runs; `--quick` "
                  "only with `--record`). Newest last. See bench/README.md for how to read them.\n")

# The seed's recipe (ERA Session 5): SGD(lr=0.01, momentum=0.9), batch 512, two loader workers.
SEED_LR, SEED_MOMENTUM, SEED_BATCH, SEED_WORKERS = 0.01, 0.9, 512, 2


def seed_transform() -> transforms.Compose:
    """The seed's training transforms, verbatim (PIL image in, normalised tensor out)."""
    return transforms.Compose([
        transforms.RandomApply([transforms.CenterCrop(22)], p=0.1),
        transforms.Resize((28, 28)),
        transforms.RandomRotation((-15., 15.), fill=0),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])


def seed_loader(dataset: Dataset, batch_size: int = SEED_BATCH, *, seed: int = 0,
                num_workers: int = SEED_WORKERS) -> DataLoader:
    """The seed's DataLoader (shuffle, 2 workers, no pinning); `seed` fixes order and augmentation."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      pin_memory=False, generator=torch.Generator().manual_seed(seed))


def seed_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: torch.Tensor,
              target: torch.Tensor, device: torch.device) -> tuple[float, int]:
    """One step of the seed's train loop, less its tqdm bar: (loss, correct)."""
    data, target = data.to(device), target.to(device)
    optimizer.zero_grad()
    output = model(data)
    loss = F.nll_loss(output, target)
    loss.backward()
    optimizer.step()
    # The seed read loss.item() and counted correct predictions every batch (a host sync on GPU).
    return loss.item(), int(output.argmax(dim=1).eq(target).sum().item())


def seed_train(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
               device: torch.device, *, untimed_fetches: int = 1) -> tuple[int, float]:
    """One pass of the seed's loop over `loader` -> (images trained in the timed part, seconds).

    The clock starts once the first `untimed_fetches` batches have *arrived* (the workers' fork
    and start-up is excluded; those batches are still trained inside the timed part).
    """
    model.train()
    it = iter(loader)
    pending = [next(it) for _ in range(untimed_fetches)]
    start = time.perf_counter()
    seen = 0
    for data, target in itertools.chain(pending, it):
        seed_step(model, optimizer, data, target, device)
        seen += len(target)
    synchronize(device)
    return seen, time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_model(seed: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Net + the seed's SGD, with the same initial weights build_training gives for `seed`."""
    from mnist_net.model import Net

    torch.manual_seed(seed)
    model = Net().to(device)
    return model, torch.optim.SGD(model.parameters(), lr=SEED_LR, momentum=SEED_MOMENTUM)


def subset_indices(n: int, size: int, seed: int) -> list[int]:
    """The indices Split.subset(size, seed) takes from a split of n images, for a torch Subset."""
    if size >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist()


def machine(device: torch.device) -> dict[str, object]:
    """Facts a timing needs beside it; call at the start of a run (the load average is then)."""
    import torchvision

    info: dict[str, object] = {
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_bf16_used": cpu_has_bf16(),
        "load_avg_1_5_15": load_average(),
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (a busy shared machine shows here)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return [round(x, 2) for x in load]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def add_record_args(parser: argparse.ArgumentParser, default_device: str = "cpu") -> None:
    """--quick, --record/--no-record, --results, --device: the flags every CPU benchmark shares."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke check; not recorded unless --record")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--record", action="store_true",
                       help="append to the results file even with --quick")
    group.add_argument("--no-record", action="store_true",
                       help="do not append a full run to the results file")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="markdown file results are appended to")
    parser.add_argument("--device", default=default_device, help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")


def apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace, quick: dict) -> None:
    """With --quick, swap in the quick sizes for every flag left at its default (an explicit flag wins)."""
    if args.quick:
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)


def device_from_args(parser, args: argparse.Namespace) -> torch.device:
    """--device resolved (a bad one fails in one line) and --threads applied."""
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.fail(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def parse(parser, argv: list[str] | None, quick: dict) -> tuple[argparse.Namespace, torch.device]:
    """Every CPU benchmark's start: parse argv, apply the --quick sizes, resolve --device."""
    args = parser.parse_args(argv)
    apply_quick(parser, args, quick)
    return args, device_from_args(parser, args)


def wants_record(args: argparse.Namespace) -> bool:
    return args.record or not (args.quick or args.no_record)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


def append_result(path: Path, title: str, command: str, facts: dict[str, object], body: str) -> None:
    """Append one dated section to the results file; the rewrite is atomic and file-locked."""
    from filelock import FileLock  # a torch dependency; imported here so gpu_bench never needs it

    stamp = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load = facts.get("load_avg_1_5_15")
    section = "\n".join([
        f"## {title} — started {facts.get('started')}, finished {stamp}",
        "",
        f"- command: `{command}`",
        f"- machine: {facts.get('cpu')}, {facts.get('cores')} cores, load average (1/5/15 min) "
        f"at start {load}; torch threads {facts.get('torch_threads')}, "
        f"OMP_WAIT_POLICY={facts.get('OMP_WAIT_POLICY')}; device {facts.get('device')}",
        f"- versions: torch {facts.get('torch')}, torchvision {facts.get('torchvision')}, "
        f"python {facts.get('python')}; commit {facts.get('git_commit')}",
        "",
        body.strip(),
        "",
    ])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        old = path.read_text() if path.exists() else RESULTS_HEADER
        files.write_text(path, old.rstrip("\n") + "\n\n" + section)

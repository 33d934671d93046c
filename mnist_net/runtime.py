"""Device, precision, seeding and provenance: chosen once here, passed down everywhere."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

PACKAGES = ("torch", "torchvision", "torchinfo", "numpy", "ray", "optuna", "mnist-s5-tuner")


def pick_device(name: str = "auto") -> torch.device:
    """Resolve "auto" to cuda > mps > cpu; an explicit name must be usable here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    return device


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX); else bf16 is slower.

    S5_CPU_BF16=0 in the environment answers False whatever the CPU: runs as an AVX2-only CPU
    would (fp32 under precision "auto"), e.g. to check the test suite's CPU path on any machine.
    """
    if os.environ.get("S5_CPU_BF16", "").strip() == "0":
        return False
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """'AMD EPYC', 'Intel(R) Xeon(R) ...': the first 'model name' of /proc/cpuinfo, else the arch."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def cuda_has_native_bf16(capability: tuple[int, int]) -> bool:
    """bf16 tensor cores exist from compute capability 8.0 (Ampere) on. Older GPUs (V100 7.0,
    T4 7.5) emulate bf16, which torch.cuda.is_bf16_supported() counts, and run it slower than fp32."""
    return tuple(capability) >= (8, 0)


def cuda_has_fast_fp16(capability: tuple[int, int]) -> bool:
    """fp16 tensor cores exist from compute capability 7.0 (Volta: V100; Turing: T4) on."""
    return tuple(capability) >= (7, 0)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for this device, or None for plain fp32.

    "auto": bf16 where native (CUDA >= 8.0, CPUs with AVX512-BF16/AMX); fp16 on CUDA 7.x (V100,
    T4: fp16 tensor cores but no bf16 ones; Training adds the GradScaler fp16 needs); else fp32.
    """
    if precision == "fp32":
        return None
    if precision == "fp16" or (precision == "auto" and device.type == "cuda"):
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
        if precision == "auto" and cuda_has_native_bf16(capability):
            return torch.bfloat16
        if cuda_has_fast_fp16(capability):
            return torch.float16
        if precision == "fp16":
            raise ValueError(f"fp16 requested but {device.type} here has no fp16 tensor cores "
                             "(CUDA compute capability 7.0 or newer)")
        return None
    if device.type == "cuda":
        supported = cuda_has_native_bf16(torch.cuda.get_device_capability(device))
    elif device.type == "cpu":
        supported = cpu_has_bf16()
    else:
        supported = False
    if precision == "bf16" and not supported:
        raise ValueError(f"bf16 requested but {device.type} here has no native bf16 support")
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    found["python"] = platform.python_version()
    return found


def git_commit() -> str | None:
    """The commit of the checkout this code runs from (not of the current directory)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def hardware(device: torch.device | None = None) -> dict[str, object]:
    info: dict[str, object] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        # what the CPU offers, not what S5_CPU_BF16 makes the code use: figures name their CPU class
        "cpu_bf16": "avx512_bf16" in _cpuinfo() or "amx_bf16" in _cpuinfo(),
        "cpu_bf16_used": cpu_has_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if device is not None:
        info["device"] = str(device)
    return info


def provenance(device: torch.device | None = None) -> dict[str, object]:
    """What produced a result: versions, commit, hardware and time."""
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_commit": git_commit(),
        "hardware": hardware(device),
    }

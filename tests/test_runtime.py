"""Precision choices that depend on the hardware, checked without that hardware."""

import pytest
import torch

from mnist_net import runtime

CPU = torch.device("cpu")


@pytest.mark.parametrize("capability, native", [
    ((6, 1), False),  # P100-class: no bf16
    ((7, 0), False),  # V100: is_bf16_supported() says True (emulated), slower than fp32
    ((7, 5), False),  # T4: the same
    ((8, 0), True),  # A100
    ((8, 6), True),
    ((9, 0), True),  # H100/H200
    ((12, 0), True),
])
def test_bf16_only_where_the_gpu_has_it_natively(capability, native):
    assert runtime.cuda_has_native_bf16(capability) is native


def test_s5_cpu_bf16_0_runs_as_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setenv("S5_CPU_BF16", "0")
    assert runtime.cpu_has_bf16() is False
    assert runtime.autocast_dtype(CPU, "auto") is None
    with pytest.raises(ValueError, match="bf16 requested but cpu here has no native bf16 support"):
        runtime.autocast_dtype(CPU, "bf16")
    monkeypatch.setenv("S5_CPU_BF16", "1")  # anything else: what the CPU has
    monkeypatch.setattr(runtime, "Path", lambda _: FakeCpuinfo("flags : avx2 avx512_bf16"))
    assert runtime.cpu_has_bf16() is True
    assert runtime.autocast_dtype(CPU, "auto") == torch.bfloat16


class FakeCpuinfo:
    def __init__(self, text: str):
        self.text = text

    def read_text(self) -> str:
        return self.text

"""--precision: one choice for training and evaluation, native bfloat16 only (CUDA faked)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from squadft.errors import ConfigError
from squadft.evaluate import inference
from squadft.runtime.precision import autocast, autocast_dtype, resolve_precision
from squadft.train import loop

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def fake_gpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool) -> None:
    """A visible CUDA GPU; native_bf16=False is a V100 or T4, which (like the real
    torch.cuda.is_bf16_supported there) reports bfloat16 support only when emulation counts."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        if not torch.cuda.is_available():
            return False
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_auto_is_fp16_and_bf16_is_refused_without_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_gpu(monkeypatch, native_bf16=False)  # V100: bf16 only emulated
    assert torch.cuda.is_bf16_supported()  # the default question says yes...
    assert resolve_precision("auto", CUDA) == "fp16"  # ...but auto must not pick it
    assert resolve_precision("auto", "cuda:0") == "fp16"
    with pytest.raises(ConfigError, match="bf16.*fp16"):
        resolve_precision("bf16", CUDA)
    assert resolve_precision("fp16", CUDA) == "fp16"
    assert resolve_precision("fp32", CUDA) == "fp32"

    # training and evaluation decide alike: one resolver, used by both
    assert loop.resolve_precision is inference.resolve_precision is resolve_precision
    assert autocast_dtype(resolve_precision("auto", CUDA)) is torch.float16


def test_auto_is_bf16_with_native_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, native_bf16=True)  # A100, H100
    assert resolve_precision("auto", CUDA) == "bf16"
    assert resolve_precision("bf16", CUDA) == "bf16"
    assert autocast_dtype(resolve_precision("auto", CUDA)) is torch.bfloat16


def test_cpu_auto_stays_fp32_and_explicit_choices_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_gpu(monkeypatch, native_bf16=True)  # a GPU in the machine does not matter for CPU
    assert resolve_precision("auto", CPU) == "fp32"
    assert autocast_dtype(resolve_precision("auto", CPU)) is None
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, CPU) == name
    with pytest.raises(ConfigError, match="auto, fp32, bf16 or fp16"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError):
        resolve_precision("half", CPU)


def test_autocast_dtypes() -> None:
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    with pytest.raises(ConfigError):
        autocast_dtype("auto")  # resolve first
    assert isinstance(autocast("fp32", CPU), nullcontext)
    with autocast("bf16", CPU):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype is torch.bfloat16

"""The one place that decides the numeric precision of training and evaluation.

`resolve_precision` turns --precision (auto, fp32, bf16, fp16) into the precision a device
actually runs, and training (squadft.train.loop) and evaluation (squadft.evaluate.inference)
both call it, so a run evaluates in the precision it trained in.

auto: bf16 on GPUs with native bfloat16 (compute capability 8.0+: A100, H100, L4...; ROCm),
fp16 on older CUDA GPUs (V100, T4), with loss scaling in training, and fp32 on the CPU.
`torch.cuda.is_bf16_supported()` alone answers True on a V100 or T4 too, because by default
it counts bfloat16 that is merely emulated (correct results, no tensor-core speed), so it is
asked with including_emulation=False.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from squadft.config import PRECISIONS
from squadft.errors import ConfigError

_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (emulation does not count).

    On CUDA this asks about the current device, which torch.cuda.set_device has made this
    rank's GPU (squadft.runtime.distributed.setup_distributed).
    """
    if device.type != "cuda":
        return False
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"fp32", "bf16" or "fp16": what `precision` means on `device`.

    Raises ConfigError for an unknown name, or for bf16 on a CUDA GPU without native bfloat16.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16 (got {precision!r})")
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if precision == "bf16" and cuda and not native_bf16(device):
        raise ConfigError("--precision bf16: this GPU has no native bfloat16 (compute "
                          "capability below 8.0, e.g. V100 or T4); use --precision fp16 "
                          "or auto")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    try:
        return _AUTOCAST_DTYPES[precision]
    except KeyError:
        raise ConfigError(f"not a resolved precision: {precision!r}") from None


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""Where the process runs: peak memory, and mixed precision for inference."""

from __future__ import annotations

import functools
import logging
import re
import resource
from pathlib import Path

import torch

from caption.config import PRECISIONS
from caption.errors import ParameterError


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by PyTorch on CUDA; the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 in hardware (AVX512-BF16 or AMX), read from its flags (Linux).
    oneDNN runs bf16 on any AVX-512 CPU, but by emulation, which is slower than fp32: never assume it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference, or None for fp32.

    ``auto``: bf16 on CUDA (fp16 where bf16 is not supported); fp32 on a CPU. bf16 autocast on a CPU with
    native bf16 (AMX) captioned 1.30x faster end to end, but changed 23% of Flickr8k dev captions and 32% of
    COCO dev captions and cost 0.007 CIDEr on each (``scripts/bench_cpu.py``), beyond what a default may
    change; ask for it with ``bf16``. ``fp32`` turns mixed precision off on CUDA too."""
    if precision not in PRECISIONS:
        raise ParameterError("precision", precision, f"choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        if not cpu_has_native_bf16():
            _warn_emulated_bf16()
        return torch.bfloat16
    return None


@functools.cache
def _warn_emulated_bf16() -> None:
    logging.getLogger(__name__).warning(
        "precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so it is emulated and slower "
        "than fp32; use --precision fp32 (or auto)")


def inference_autocast(device: torch.device, precision: str = "auto"):
    """The mixed precision ``inference_dtype`` chooses, as an autocast context (disabled for fp32)."""
    dtype = inference_dtype(device, precision)
    if dtype is None:
        return torch.autocast("cuda" if device.type == "cuda" else "cpu", enabled=False)
    return torch.autocast(device.type, dtype=dtype)

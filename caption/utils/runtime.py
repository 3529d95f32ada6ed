"""Process-level tuning for CPU inference and training.

glibc hands large freed blocks straight back to the kernel, so every forward pass of a CNN on the CPU
page-faults its activations in again; on a 2-core machine that doubled the encoder's time (17.6 vs 37
images/s, batch 64, measured with scripts/bench_caption.py's encoder). Keeping freed memory in the heap
fixes it, but glibc reads these settings only at start-up, so the ``caption`` command re-executes itself
once with them set.
"""

from __future__ import annotations

import os
import platform
import resource
import sys

import torch

MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_TOP_PAD_": str(1 << 30),
}
_MARKER = "CAPTION_MALLOC_TUNED"


def reexec_with_malloc_tuning() -> None:
    """Restart this Python process once with the glibc settings above (Linux only; opt out:
    CAPTION_MALLOC_TUNED=0)."""
    if platform.system() != "Linux" or os.environ.get(_MARKER) is not None or not sys.argv or not sys.argv[0]:
        return
    if platform.libc_ver()[0] != "glibc":
        return
    env = dict(os.environ, **{k: os.environ.get(k, v) for k, v in MALLOC_SETTINGS.items()}, **{_MARKER: "1"})
    argv = [sys.executable, *sys.orig_argv[1:]] if hasattr(sys, "orig_argv") else [sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by PyTorch on CUDA; the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cuda_autocast(device: torch.device):
    """Mixed precision for inference on CUDA (bf16 where supported, else fp16); CPUs stay in fp32."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

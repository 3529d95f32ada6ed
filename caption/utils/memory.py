"""glibc's heap, set for tensor work when ``caption`` is imported (Linux with glibc; opt out with
``CAPTION_MALLOC_TUNING=0``).

By default glibc serves every block over 32 MB with its own ``mmap`` and unmaps it when freed, so every
forward pass of a CNN on the CPU page-faults its activations in again (1.85 million minor faults for 128
images through the Lite2 model; the plain-Python API ran at about half the speed of the ``caption``
command, which used to re-execute itself with the equivalent environment variables). ``mallopt`` applies
at once, so this needs no restart: blocks up to ``_KEEP`` come from the heap, and as much freed memory is
kept at its top. Threads other than the main one allocate from arenas of 64 MB heaps, which keep blocks
below that size (the web demo's batches); capping glibc at one arena would keep larger ones too, but it
serialises the threads' allocations: the demo served 16 concurrent requests at 5.2 requests/s with it,
9.3 without (7.4 with glibc's defaults), so it is not done.

What it costs: freed memory up to ``_KEEP`` stays with the process instead of going back to the kernel, so
the resident size stays near its peak (the demo under load, 12 rounds of 24 users: 1,673 -> 1,754 MB,
61 MB of growth after the warm-up; with glibc's defaults 1,497 -> 1,660 MB, 89 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT = "CAPTION_MALLOC_TUNING"
_KEEP = 1 << 30  # bytes: blocks up to this from the heap, and this much free memory kept at its top
_TOP_PAD = 64 << 20  # bytes asked of the kernel beyond each growth, so the heap grows in few steps

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

_tuned = False


def tune_malloc() -> bool:
    """Apply the settings above once; True if they are in effect (False off glibc, or opted out)."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get(OPT_OUT, "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, _KEEP), (_M_TRIM_THRESHOLD, _KEEP), (_M_TOP_PAD, _TOP_PAD))
    _tuned = all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
    return _tuned


def malloc_tuned() -> bool:
    """Whether ``tune_malloc`` is in effect in this process."""
    return _tuned

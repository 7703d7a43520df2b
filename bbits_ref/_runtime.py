"""Process-level speed settings that the command line and the benchmarks opt into.

A training step allocates and frees tens of MB of temporaries (im2col matrices, gradients).
By default glibc returns such large blocks to the operating system at once and takes them back
on the next step, page fault by page fault: about 4,000 faults and 12 ms per LeNet-5 step on the
development machines.  :func:`keep_freed_memory` asks glibc to serve blocks up to 32 MB from
its heap and keep freed memory for reuse.  It changes nothing on other C libraries, and the
library never calls it on import: only ``bbits-ref train``/``sweep`` and ``benchmarks/`` do.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024      # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc malloc for repeated large temporaries; True when it took effect."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def blas_override_note() -> str | None:
    """A note when OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set, else None.

    Some machines set them for old OpenBLAS builds; with the OpenBLAS that current numpy wheels
    bundle they can make float32 matmuls many times slower (a LeNet-5 step 7x slower on the
    development machines).  bbits_ref does not change the environment; it says so.
    """
    found = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if not found:
        return None
    setting = " ".join(f"{k}={v}" for k, v in found.items())
    return (f"note: {setting} is set; with a recent OpenBLAS this can make training several "
            f"times slower. If yours is recent, run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
            f"bbits-ref ...")

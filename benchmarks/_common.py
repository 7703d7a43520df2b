"""Shared helpers for the benchmark scripts: clean BLAS environment, timing, machine facts."""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

# Some machines set these for old OpenBLAS builds; they slow a current numpy's sgemm by up to
# 100x.  Benchmarks re-run themselves once without them (never change them in tests or CI).
_BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_blas_env(argv: list[str]) -> dict:
    """Re-exec the script without the OpenBLAS overrides (unless --keep-blas-env); return them."""
    found = {k: os.environ[k] for k in _BLAS_OVERRIDES if k in os.environ}
    if found and "--keep-blas-env" not in argv and not os.environ.get("BBITS_BENCH_REEXEC"):
        env = {k: v for k, v in os.environ.items() if k not in _BLAS_OVERRIDES}
        env["BBITS_BENCH_REEXEC"] = ",".join(f"{k}={v}" for k, v in found.items())
        os.execve(sys.executable, [sys.executable, *argv], env)
    removed = os.environ.get("BBITS_BENCH_REEXEC", "")
    return dict(kv.split("=", 1) for kv in removed.split(",") if kv)


def blas_info() -> dict:
    """Which BLAS numpy uses and with how many threads (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return {"library": p.get("internal_api"), "version": p.get("version"),
                    "threads": p.get("num_threads"), "kernel": p.get("architecture")}
    except ImportError:
        pass
    return {"library": "unknown (pip install threadpoolctl for details)",
            "threads": os.cpu_count()}


def wall_times(fn, repeats: int, warmup: int = 3) -> list[float]:
    """Wall time of each of ``repeats`` calls of ``fn()``, in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    return 1000.0 * float(np.median(wall_times(fn, repeats, warmup)))


def machine() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}


def blas_threads() -> int:
    """NumPy's BLAS thread count (threadpoolctl; 2 when it is not installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 2
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return int(pools[0]["num_threads"]) if pools else 2


def limit_threads(threads: int):
    """Limit NumPy's BLAS to ``threads`` (returns the threadpoolctl context, or None)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")

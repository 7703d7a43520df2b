"""Compiled CPU kernels for the quantizer's elementwise chain (optional: needs numba).

:mod:`.quantizer` computes x_q = A2 + z4·(e4 + z8·(e8 + …)) and the closed-form gradients of
docs/method.md §2.6 from about 25 elementwise steps per value.  As torch operations these are ~25
passes over memory and ~25 Python-level calls per block.  The kernels here do every step of one
value in registers, in one pass over the tensor, with exactly the same IEEE operations in the
same order (a division by the step, not a multiplication by its inverse; no fused multiply-add;
ties rounded to even by ``rint``), so their results are bit-for-bit those of the torch operations
(tests/test_torch_kernels.py holds them to it).  On the CPU they make the quantizer several
times faster; other devices keep the torch operations.

numba is optional (extra ``torch``).  Without it, or with ``BBITS_REF_KERNELS=0`` in the
environment, or after :func:`set_enabled` ``(False)``, :mod:`.quantizer` uses the torch operations.
Each kernel is compiled on first use for its depth (how many chain gates are on), clip mode and
dtype (and the pooling kernel for its window size): about half a second each, once per
process; nothing is written to disk.
"""
from __future__ import annotations

import functools
import os

import numpy as np

try:                                        # optional: the torch operations are the fallback
    import numba
except ImportError:                         # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = ["available", "enabled", "set_enabled", "forward_kernel", "backward_kernel",
           "pool_forward_kernel", "pool_scatter_kernel"]

_enabled = os.environ.get("BBITS_REF_KERNELS", "1").strip() not in ("0", "false", "no", "off")


def available() -> bool:
    """True when numba is installed (the kernels can be compiled)."""
    return numba is not None


def enabled() -> bool:
    """True when the quantizer uses the kernels on the CPU: numba is installed, and neither
    ``BBITS_REF_KERNELS=0`` nor :func:`set_enabled` ``(False)`` turned them off."""
    return _enabled and numba is not None


def set_enabled(flag: bool) -> bool:
    """Use the kernels (True, if numba is installed) or the torch operations (False) from now
    on; returns the previous setting.  Both give the same values bit for bit."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


# The kernels are built per (depth, official clip): both are frozen into the compiled code, so
# the branches on them vanish and the loop vectorises (with a run-time depth it does not: several
# times slower).  Scalars arrive as NumPy scalars of x's dtype, so every operation stays in it;
# the steps and gates as tuples of them, passed by value: read from arrays inside the loop, they
# might alias an output (for the compiler), which stops it from vectorising.

def _chain(depth: int, official: bool):
    """The per-value body shared by the kernels: (x_c, inside, tails t0…t4)."""

    @numba.njit(inline="always")
    def body(v, lo, hl, hi, zero, s, g):
        s0, s1, s2, s3, s4 = s
        g1, g2, g3, g4 = g
        if official:                        # hi − relu(hi − lo − relu(x − lo)), both relus as caps
            a = v - lo
            if a < zero:
                a = zero
            if a > hl:
                a = hl
            b = hl - a
            inside = (a if a < b else b) > zero     # min(a, b) > 0: both relus active
            xc = hi - b
        else:                               # clamp(x, lo, hi); NaN stays NaN, as in torch.clamp
            xc = v
            if xc < lo:
                xc = lo
            if xc > hi:
                xc = hi
            inside = (v > lo) and (v < hi)
        t0 = np.rint(xc / s0) * s0
        t1 = t2 = t3 = t4 = zero
        if depth >= 1:                      # residuals left to right: x_c − A2 − e4 − …
            r = xc - t0
            t1 = np.rint(r / s1) * s1
            if depth >= 2:
                r = r - t1
                t2 = np.rint(r / s2) * s2
                if depth >= 3:
                    r = r - t2
                    t3 = np.rint(r / s3) * s3
                    if depth >= 4:
                        r = r - t3
                        t4 = np.rint(r / s4) * s4
                        t3 = t3 + g4 * t4     # the gated sums, innermost first
                    t2 = t2 + g3 * t3
                t1 = t1 + g2 * t2
            t0 = t0 + g1 * t1
        return xc, inside, t0, t1, t2, t3, t4

    return body


@functools.cache
def forward_kernel(depth: int, official: bool):
    """``kernel(x, out, lo, hl, hi, zero, steps, gates)``: out = the ungated x_q of the 1-d x.

    ``steps`` = (s2, …, s32) and ``gates`` = (z4, …, z32) as tuples, and ``lo``, ``hl`` = hi − lo,
    ``hi`` and ``zero``, all NumPy scalars of x's dtype.  ``depth``: how many chain gates
    are on (the residuals beyond are not computed).
    """
    body = _chain(depth, official)

    @numba.njit(nogil=True, boundscheck=False)
    def kernel(x, out, lo, hl, hi, zero, s, g):
        for i in range(x.size):
            out[i] = body(x[i], lo, hl, hi, zero, s, g)[2]

    return kernel


@functools.cache
def backward_kernel(depth: int, official: bool):
    """``kernel(x, gz, grad_x, beta_term, tail0, tails, lo, hl, hi, zero, one, steps, gates,
    want_grad_x)``.

    For the 1-d block x and incoming gz = g·z2: grad_x = gz·1[lo < x < hi] (if
    ``want_grad_x``), beta_term = t0 − x_c·inside, tail0 = t0 (the ungated x_q) and
    ``tails[k − 1]`` = t_k for k = 1…depth (a (depth, n) array), where t_k = e_k + z·t_{k+1}
    are the gated partial sums.  The sums over them (dot products with gz) are the caller's.
    """
    body = _chain(depth, official)

    @numba.njit(nogil=True, boundscheck=False)
    def kernel(x, gz, grad_x, beta_term, tail0, tails, lo, hl, hi, zero, one, s, g,
               want_grad_x):
        for i in range(x.size):
            xc, inside, t0, t1, t2, t3, t4 = body(x[i], lo, hl, hi, zero, s, g)
            mask = one if inside else zero
            if want_grad_x:
                grad_x[i] = gz[i] * mask
            beta_term[i] = t0 - xc * mask
            tail0[i] = t0
            if depth >= 1:
                tails[0, i] = t1
            if depth >= 2:
                tails[1, i] = t2
            if depth >= 3:
                tails[2, i] = t3
            if depth >= 4:
                tails[3, i] = t4

    return kernel


@functools.cache
def pool_forward_kernel(depth: int, official: bool, k: int):
    """``kernel(x, out, index, winners, lo, hl, hi, zero, steps, gates)``: k×k max-pooling
    (stride k) of the ungated x_q, for x, out, index, winners in (N, H, W, C) order.

    out = each window's maximum of x_q, index (int32) = the H×W-plane offset (h·W + w) of its FIRST
    maximum in row-major order (a later value wins only if greater, or NaN: as
    ``torch.max_pool2d``), winners = x at that offset (the backward's closed forms run on them).
    x_q itself is never stored.  The loop runs along C innermost (contiguous for a channels-last
    tensor), the k×k window unrolled inside it.
    """
    body = _chain(depth, official)

    @numba.njit(nogil=True, boundscheck=False)
    def kernel(x, out, index, winners, lo, hl, hi, zero, s, g):
        width = x.shape[2]
        for n in range(out.shape[0]):
            for i in range(out.shape[1]):
                for j in range(out.shape[2]):
                    corner = i * k * width + j * k
                    for c in range(out.shape[3]):
                        v = x[n, i * k, j * k, c]
                        best = body(v, lo, hl, hi, zero, s, g)[2]
                        at, won = np.int32(corner), v
                        for di in range(k):
                            for dj in range(k):
                                if di == 0 and dj == 0:
                                    continue
                                v = x[n, i * k + di, j * k + dj, c]
                                q = body(v, lo, hl, hi, zero, s, g)[2]
                                wins = q > best or q != q
                                best = q if wins else best
                                at = np.int32(corner + di * width + dj) if wins else at
                                won = v if wins else won
                        out[n, i, j, c] = best
                        index[n, i, j, c] = at
                        winners[n, i, j, c] = won

    return kernel


@functools.cache
def pool_scatter_kernel():
    """``kernel(grad_out, index, k, grad_x, zero)``: the backward of k×k max-pooling.

    grad_x (N, H, W, C) = zero + grad_out (N, Ho, Wo, C) at each window's winner (``index``,
    its H×W-plane offset), ``zero`` elsewhere: the values of a zero fill followed by adding
    the gradients in (as ``max_pool2d_with_indices_backward``), each written once.
    """

    @numba.njit(nogil=True, boundscheck=False)
    def kernel(grad_out, index, k, grad_x, zero):
        n_images, _, width, channels = grad_x.shape
        for n in range(n_images):
            for i in range(grad_out.shape[1]):
                for j in range(grad_out.shape[2]):
                    for di in range(k):
                        for dj in range(k):
                            h, w = i * k + di, j * k + dj
                            offset = h * width + w
                            for c in range(channels):     # zero + g, as a zero fill
                                g = zero + grad_out[n, i, j, c]   # and an add would (−0 → +0)
                                grad_x[n, h, w, c] = g if index[n, i, j, c] == offset else zero

    return kernel

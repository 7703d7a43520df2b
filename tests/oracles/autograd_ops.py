"""HIPS-autograd versions of the primitives in ``bbits_ref.autograd.ops``, written from the math.

These are the third gradient oracle (after finite differences and the projection check): the
forward is written differently from the engine's (conv2d as a sum over kernel offsets of shifted
slices instead of im2col, pools by stacking the window taps, log-softmax via logsumexp, matmul as a
broadcast product and sum) and autograd derives the gradient, so a shared mistake is unlikely.
Every function takes autograd.numpy arrays in the primitive's argument order and the same static
keywords.  Conventions that the math alone does not fix are taken from docs/method.md and PyTorch:
``maximum`` sends ties to ``y`` (relu'(0) = 0), ``clip`` has zero gradient on the bounds,
``round_ste`` is round-half-to-even with the identity gradient.
"""
from __future__ import annotations

import autograd.numpy as anp
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.scipy.special import logsumexp


def _pair(v):
    return (int(v), int(v)) if onp.isscalar(v) else (int(v[0]), int(v[1]))


@primitive
def round_ste(x):
    """round(x), half to even; its VJP is the identity (straight-through estimator)."""
    return onp.round(x)


defvjp(round_ste, lambda ans, x: lambda g: g)


def clip(x, lo=None, hi=None):
    """lo where x ≤ lo, hi where x ≥ hi, else x: on a bound the output is constant (gradient 0)."""
    z = x
    if lo is not None:
        z = anp.where(x > lo, z, lo)
    if hi is not None:
        z = anp.where(x < hi, z, hi)
    return z


def transpose(x, axes=None):
    """z = x with its axes permuted; negative axes are made positive first, because autograd's own
    transpose VJP inverts the permutation with argsort(axes), which is wrong for negative axes."""
    return anp.transpose(x, None if axes is None else tuple(a % x.ndim for a in axes))


def matmul(a, b):
    """z[..., n, m] = Σ_k a[..., n, k]·b[..., k, m]; a 1-D operand is a row (a) or column (b)."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    z = anp.sum(a2[..., :, :, None] * b2[..., None, :, :], axis=-2)
    if b.ndim == 1:
        z = z[..., 0]
    if a.ndim == 1:
        z = z[..., 0, :] if b.ndim > 1 else z[..., 0]
    return z


def _pad_hw(x, ph, pw):
    """Zero-pad the two spatial axes by concatenating zero blocks (autograd sees only slicing)."""
    if ph:
        zeros = anp.zeros(x.shape[:2] + (ph, x.shape[3]))
        x = anp.concatenate([zeros, x, zeros], axis=2)
    if pw:
        zeros = anp.zeros(x.shape[:3] + (pw,))
        x = anp.concatenate([zeros, x, zeros], axis=3)
    return x


def _taps(x, kh, kw, sh, sw):
    """The kernel offsets (i, j) and the strided slice x[:, :, i + sh·ho, j + sw·wo] of each."""
    ho = (x.shape[2] - kh) // sh + 1
    wo = (x.shape[3] - kw) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def conv2d(x, w, stride=1, padding=0):
    """z[n, o, h, v] = Σ_{c,i,j} w[o, c, i, j]·x_pad[n, c, s·h + i, s·v + j]."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    kh, kw = w.shape[2:]
    return sum(anp.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
               for i, j, patch in _taps(_pad_hw(x, ph, pw), kh, kw, sh, sw))


def _pool_stack(x, kernel_size, stride):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    return anp.stack([patch for _, _, patch in _taps(x, kh, kw, sh, sw)], axis=-1)


def max_pool2d(x, kernel_size=2, stride=None):
    """Maximum over the kh·kw taps of each window."""
    return anp.max(_pool_stack(x, kernel_size, stride), axis=-1)


def avg_pool2d(x, kernel_size=2, stride=None):
    """Mean over the kh·kw taps of each window."""
    return anp.mean(_pool_stack(x, kernel_size, stride), axis=-1)


def log_softmax(x, axis=-1):
    """x − log Σ exp(x) along axis."""
    return x - logsumexp(x, axis=axis, keepdims=True)


def cross_entropy(logits, labels):
    """−mean_n (logits[n, yₙ] − logsumexp(logits[n]))."""
    picked = logits[onp.arange(len(labels)), labels]
    return -anp.mean(picked - logsumexp(logits, axis=1))


ORACLES = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y,
    "neg": lambda x: -x,
    "power": lambda x, y: x ** y,
    "exp": anp.exp,
    "log": anp.log,
    "absolute": anp.abs,
    # masks times values rather than anp.where, whose VJP does not unbroadcast
    "maximum": lambda x, y: x * (x > y) + y * (x <= y),
    "where": lambda c, x, y: x * c + y * ~c,
    "clip": clip,
    "sigmoid": lambda x: 0.5 * (anp.tanh(0.5 * x) + 1.0),
    "log_sigmoid": lambda x: -anp.logaddexp(0.0, -x),
    "softplus": lambda x: anp.logaddexp(0.0, x),
    "round_ste": round_ste,
    "reduce_sum": lambda x, axis=None, keepdims=False: anp.sum(x, axis=axis, keepdims=keepdims),
    "mean": lambda x, axis=None, keepdims=False: anp.mean(x, axis=axis, keepdims=keepdims),
    "reduce_max": lambda x, axis=None, keepdims=False: anp.max(x, axis=axis, keepdims=keepdims),
    "reshape": lambda x, shape: anp.reshape(x, shape),
    "transpose": transpose,
    "broadcast_to": lambda x, shape: x + anp.zeros(shape),
    "getitem": lambda x, index: x[index],
    "concatenate": lambda *xs, axis=0: anp.concatenate(xs, axis=axis),
    "stack": lambda *xs, axis=0: anp.stack(xs, axis=axis),
    "matmul": matmul,
    "conv2d": conv2d,
    "max_pool2d": max_pool2d,
    "avg_pool2d": avg_pool2d,
    "log_softmax": log_softmax,
    "cross_entropy": cross_entropy,
}

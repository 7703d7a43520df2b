"""HIPS-autograd oracle for the Bayesian Bits quantizer primitive ``bb_quantize`` (docs/method.md §2.2–2.6).

Written from the formulas of docs/method.md with ``autograd.numpy``, independently of bbits_ref: the
official two-ReLU clip (relu'(0) = 0), chained step sizes, residuals formed left to right,
round-half-to-even with an identity (straight-through) gradient, and the official convention
that a gate exactly 0 skips its residual and every higher one.  Autograd then differentiates the
formula literally; the fused primitive's closed-form gradients must agree with it.

``ORACLES["bb_quantize"]`` takes the primitive's positional arrays
``(x, beta, z2, z4, z8, z16, z32)`` (z2 already shaped to broadcast against x) and its static
keywords ``signed`` and ``clip``.
"""
import autograd.numpy as anp
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

EPS = 1e-7


@primitive
def round_ste(u):
    """Round half to even; the straight-through estimator makes its VJP the identity."""
    return onp.round(u)


defvjp(round_ste, lambda ans, u: lambda g: g)


def relu(t):
    """max(t, 0) with relu'(0) = 0 (PyTorch's convention; anp.maximum would split ties 50/50)."""
    return anp.where(t > 0, t, 0.0)


def clip_official(x, lo, hi):
    """hi − relu(hi − lo − relu(x − lo)), the official code's clip (§2.2, §2.3a)."""
    return hi - relu(hi - lo - relu(x - lo))


def clip_numpy(x, lo, hi):
    """The textbook clip; the bounds count as clipped and receive the gradient there."""
    return anp.where(x <= lo, lo, anp.where(x >= hi, hi, x))


def bb_quantize(x, beta, z2, z4, z8, z16, z32, signed, clip="official"):
    """x_q = z2·(A2 + z4·(e4 + z8·(e8 + z16·(e16 + z32·e32)))) (§2.4–2.5)."""
    dtype = onp.asarray(getval(x)).dtype
    hi = (1 - EPS) * beta
    lo = -hi if signed else onp.zeros((), dtype)
    x_c = (clip_official if clip == "official" else clip_numpy)(x, lo, hi)
    alpha = -beta if signed else onp.zeros((), dtype)
    s = [(beta - alpha) / 3.0]
    for n_bits in (2, 4, 8, 16):          # s_{2b} = s_b / (2^b + 1)
        s.append(s[-1] / (2.0 ** n_bits + 1))
    gates = [z4, z8, z16, z32]
    depth = 0
    while depth < 4 and onp.all(onp.asarray(getval(gates[depth])) != 0):
        depth += 1
    parts = [s[0] * round_ste(x_c / s[0])]
    residual = x_c
    for k in range(1, depth + 1):
        residual = residual - parts[-1]
        parts.append(s[k] * round_ste(residual / s[k]))
    inner = parts[depth]
    for k in range(depth - 1, -1, -1):
        inner = parts[k] + gates[k] * inner
    return z2 * inner


ORACLES = {"bb_quantize": bb_quantize}

"""HIPS-autograd oracles for the LSQ and PACT primitives (docs/method.md §13).

Written from the papers' formulas with ``autograd.numpy``, independently of bbits_ref:

* LSQ uses the paper's gradient-scale trick literally: s' = s·g + (s − s·g) held constant, so the
  forward sees s and the gradient of s is multiplied by g; rounding is straight-through.
* PACT uses the paper's clip y = 0.5·(|x| − |x − α| + α) and passes the gradient straight through
  the quantization of y (y_q = y + a constant), which gives ∂y_q/∂α = 1[x ≥ α].

Each oracle takes the primitive's positional arrays and its static keywords.
"""
import autograd.numpy as anp
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.tracer import getval


@primitive
def round_ste(u):
    """Round half to even; the straight-through estimator makes its VJP the identity."""
    return onp.round(u)


defvjp(round_ste, lambda ans, u: lambda g: g)


def _clip_between(t, lo, hi):
    """min(max(t, lo), hi) whose gradient is 1 strictly inside and 0 at and beyond the bounds."""
    return anp.where(t <= lo, lo, anp.where(t >= hi, hi, t))


def lsq_quantize(v, s, bits, signed, grad_scale):
    """v̂ = s'·R(clip(v/s', −Q_N, Q_P)) with s' = s carrying the gradient scale g (Esser et al.)."""
    q_n, q_p = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    scaled = s * grad_scale
    s_prime = scaled + (getval(s) - getval(scaled))    # value s, gradient g·(gradient of s)
    return round_ste(_clip_between(v / s_prime, -q_n, q_p)) * s_prime


def pact_quantize(x, alpha, bits):
    """y = 0.5·(|x| − |x − α| + α); y_q = y + (R(y·n/α)·α/n − y) held constant (Choi et al.)."""
    n = 2 ** bits - 1
    y = 0.5 * (anp.abs(x) - anp.abs(x - alpha) + alpha)
    y0, a0 = getval(y), getval(alpha)
    return y + (onp.round(y0 * n / a0) * a0 / n - y0)


ORACLES = {"lsq_quantize": lsq_quantize, "pact_quantize": pact_quantize}

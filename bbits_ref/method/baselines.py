"""Two learned-range fixed-bit baselines named in the rebuttal: LSQ and PACT (docs/method.md §13).

Neither learns a bit width or prunes: each learns one number per tensor that places a fixed
b-bit grid, where Bayesian Bits learns β *and* gates that choose the grid (§2).

**LSQ** (learned step size quantization, Esser et al. 2020), for weights and activations::

    signed:   Q_N = 2^(b−1),  Q_P = 2^(b−1) − 1        unsigned: Q_N = 0,  Q_P = 2^b − 1
    v̂ = s·R(clip(v/s, −Q_N, Q_P))                      2^b levels: −Q_N·s … Q_P·s
    ∂v̂/∂v = 1[−Q_N < v/s < Q_P]                        straight through the rounding
    ∂v̂/∂s = R(v/s) − v/s inside,  −Q_N below,  Q_P above, and s's gradient is multiplied by
    g = 1/√(n·Q_P)  (n: elements of a weight tensor, features per example of an activation)

The signed grid has one more negative level than positive; a Bayesian Bits b-bit grid has
2^b − 1 levels, symmetric about 0 (§2.3).  The ∂v̂/∂s rule is the straight-through derivative of
the forward, so finite differences with frozen rounding offsets check it (with g = 1).  The scale
g is not a derivative of anything: the paper writes it as s' = s·g in the forward with a
gradient-only trick; :func:`lsq_quantize` applies it inside the rule for ∂/∂s.

**PACT** (parameterized clipping activation, Choi et al. 2018), for post-ReLU activations::

    y = clip(x, 0, α),   y_q = R(y·n/α)·α/n,   n = 2^k − 1         2^k levels: 0, α/n, …, α
    ∂y_q/∂x = 1[0 ≤ x < α],   ∂y_q/∂α = 1[x ≥ α]

PACT's α rule passes the gradient straight through the whole quantizer (∂y_q/∂y = 1), so it
drops the rounding error's dependence on α: it equals the derivative of the forward only where
that error is 0 (x on the grid, or clipped).  α starts at :data:`PACT_ALPHA_INIT` and carries an
L2 penalty (``BBConfig.pact_alpha_decay``, added to the loss by the trainer).

**DoReFa weights** (the weights of PACT's networks)::

    w_q = 2·quantize_k(tanh(w)/(2·max|tanh(w)|) + 1/2) − 1,  quantize_k(r) = R(n·r)/n

2^k levels in [−1, 1], symmetric and without a 0.  :func:`dorefa_weights` is a composite of
engine primitives (sigmoid, absolute, reduce_max, div, round_ste, ...), each gradient-checked.
PACT's networks have batch norm after every layer, which absorbs the scale of [−1, 1] weights;
LeNet-5 has none, and with weights of magnitude 1 its pre-activations saturate α = 10 and its
logits run to the thousands (it stays at chance).  So the quantizer modules multiply the DoReFa
weights by a constant, max|w| at initialisation (:data:`DOREFA_SCALES`; our addition, not a
learned parameter, and it changes neither the levels' count nor the BOPs).

R rounds half to even with the straight-through estimator, as everywhere in bbits_ref.
Notebook: ``notebooks/08_pareto_and_ablations.ipynb`` ("LSQ and PACT").
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor, register, ste_round
from bbits_ref.autograd.gradcheck_cases import GradCase, register_case

__all__ = ["BASELINE_QUANTIZERS", "PACT_ALPHA_INIT", "DOREFA_SCALES", "lsq_levels",
           "lsq_grad_scale", "lsq_init_step", "lsq_quantize", "pact_quantize", "dorefa_weights"]

#: The quantizers a model can use (``BBConfig.quantizer``): the method and the two baselines.
BASELINE_QUANTIZERS = ("bayesian_bits", "lsq", "pact")

#: PACT's initial clip level α: large, so that training starts (almost) unclipped.
PACT_ALPHA_INIT = 10.0

#: How a network scales its DoReFa weights (``BBConfig.dorefa_scale``): "init_max" multiplies
#: them by max|w| of the weight tensor at initialisation, a constant, so that the quantized
#: network starts on the float network's scale; "none" keeps the paper's [−1, 1].
DOREFA_SCALES = ("init_max", "none")


# --------------------------------------------------------------------------- checks

def _check_bits(bits) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or not 1 <= bits <= 32:
        raise ValueError(f"bits must be a whole number from 1 to 32; got {bits!r}")
    return int(bits)


def _check_positive_scalar(name: str, what: str, value) -> float:
    arr = np.asarray(value.data if isinstance(value, Tensor) else value)
    if arr.size != 1:
        raise ValueError(f"{name} ({what}) must be a scalar, one per tensor; got shape {arr.shape}")
    v = float(arr.reshape(()))
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} ({what}) must be finite and > 0; got {v}")
    return v


def _as_float_tensor(x, name: str) -> Tensor:
    x = x if isinstance(x, Tensor) else Tensor(np.asarray(x, dtype=np.float64)
                                                if np.asarray(x).dtype.kind != "f" else x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} needs a float32/float64 tensor; got {x.dtype}")
    return x


# --------------------------------------------------------------------------- LSQ

def lsq_levels(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)``: the grid is the integers −Q_N … Q_P times s (2^bits levels)."""
    bits = _check_bits(bits)
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def lsq_grad_scale(n: int, bits: int, signed: bool) -> float:
    """g = 1/√(n·Q_P): ``n`` = a weight tensor's elements, or an activation's features per example.

    A 1-bit signed grid has Q_P = 0; its scale is taken with Q_P = 1 so that it stays finite.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of elements or features) must be a whole number ≥ 1; "
                         f"got {n!r}")
    q_p = max(lsq_levels(bits, signed)[1], 1)
    return 1.0 / math.sqrt(int(n) * q_p)


def lsq_init_step(v, bits: int, signed: bool) -> float:
    """s = 2·mean|v|/√Q_P, from the first tensor the quantizer sees (a batch, for activations)."""
    arr = np.asarray(v.data if isinstance(v, Tensor) else v, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("lsq_init_step needs a non-empty tensor to take mean|v| from")
    q_p = max(lsq_levels(bits, signed)[1], 1)
    return 2.0 * float(np.mean(np.abs(arr))) / math.sqrt(q_p)


class _LSQSaved(NamedTuple):
    inside: np.ndarray      # 1[−Q_N < v/s < Q_P]: ∂v̂/∂v
    step_slope: np.ndarray  # ∂v̂/∂s: R(v/s) − v/s inside, −Q_N or Q_P outside


def _lsq_forward(v, s, *, bits, signed, grad_scale):
    q_n, q_p = lsq_levels(bits, signed)
    s = np.asarray(s, dtype=v.dtype).reshape(())
    ratio = v / s
    inside = (ratio > -q_n) & (ratio < q_p)
    levels = ste_round(np.clip(ratio, -q_n, q_p))
    ratio *= inside
    return levels * s, _LSQSaved(inside, levels - ratio)


def _lsq_vjp_v(g, out, saved, v, s, **static):
    return g * saved.inside


def _lsq_vjp_s(g, out, saved, v, s, *, grad_scale, **static):
    total = float(np.sum(g * saved.step_slope, dtype=np.float64)) * grad_scale
    return np.full(np.shape(s), total, dtype=g.dtype)


LSQ_QUANTIZE = register(
    "lsq_quantize",
    "v̂ = s·R(clip(v/s, −Q_N, Q_P));  v̄ = g·1[−Q_N < v/s < Q_P], "
    "s̄ = grad_scale·Σ g·(R(v/s) − v/s inside, −Q_N below, Q_P above) (§13)",
    _lsq_forward, _lsq_vjp_v, _lsq_vjp_s, saves=True)


def lsq_quantize(v, s, *, bits: int, signed: bool, grad_scale: float = 1.0) -> Tensor:
    """LSQ quantization of a Tensor (§13), one fused engine primitive.

    Parameters
    ----------
    v : Tensor, a weight tensor or an activation.
    s : scalar Tensor, the learned step size s > 0 (start from :func:`lsq_init_step`).
    bits : grid of 2^bits levels.
    signed : True for weights (−Q_N … Q_P), False for post-ReLU activations (0 … 2^bits − 1).
    grad_scale : g multiplying s's gradient (:func:`lsq_grad_scale`); 1 gives the plain
        straight-through derivative.

    Returns a Tensor of v's shape and dtype.
    """
    _check_bits(bits)
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be True (weights) or False (post-ReLU activations); "
                        f"got {signed!r}")
    if not (isinstance(grad_scale, (int, float, np.floating)) and math.isfinite(grad_scale)
            and grad_scale > 0):
        raise ValueError(f"grad_scale must be a finite number > 0 (1/sqrt(n·Q_P), see "
                         f"lsq_grad_scale); got {grad_scale!r}")
    _check_positive_scalar("s", "the LSQ step size", s)
    v = _as_float_tensor(v, "lsq_quantize")
    return LSQ_QUANTIZE(v, s, bits=int(bits), signed=bool(signed), grad_scale=float(grad_scale))


# --------------------------------------------------------------------------- PACT

class _PACTSaved(NamedTuple):
    pass_x: np.ndarray      # 1[0 ≤ x < α]: ∂y_q/∂x
    above: np.ndarray       # 1[x ≥ α]: ∂y_q/∂α


def _pact_forward(x, alpha, *, bits):
    n = 2 ** bits - 1
    alpha = np.asarray(alpha, dtype=x.dtype).reshape(())
    above = x >= alpha
    pass_x = (x >= 0) & ~above
    y = np.clip(x, 0, alpha)
    step = alpha / x.dtype.type(n)
    return ste_round(y / step) * step, _PACTSaved(pass_x, above)


def _pact_vjp_x(g, out, saved, x, alpha, **static):
    return g * saved.pass_x


def _pact_vjp_alpha(g, out, saved, x, alpha, **static):
    total = float(np.sum(g * saved.above, dtype=np.float64))
    return np.full(np.shape(alpha), total, dtype=g.dtype)


PACT_QUANTIZE = register(
    "pact_quantize",
    "y_q = R(clip(x, 0, α)·n/α)·α/n, n = 2^k − 1;  x̄ = g·1[0 ≤ x < α], ᾱ = Σ g·1[x ≥ α] (§13)",
    _pact_forward, _pact_vjp_x, _pact_vjp_alpha, saves=True)


def pact_quantize(x, alpha, *, bits: int) -> Tensor:
    """PACT: clip an activation to [0, α] and round it to a ``bits``-bit grid (§13).

    ``alpha`` is the learned scalar clip level α > 0 (start at :data:`PACT_ALPHA_INIT`).
    Returns a Tensor of x's shape and dtype with values in {0, α/n, …, α}, n = 2^bits − 1.
    """
    _check_bits(bits)
    _check_positive_scalar("alpha", "the PACT clip level", alpha)
    x = _as_float_tensor(x, "pact_quantize")
    return PACT_QUANTIZE(x, alpha, bits=int(bits))


# --------------------------------------------------------------------------- DoReFa weights

def dorefa_weights(w, *, bits: int) -> Tensor:
    """DoReFa weight quantization (§13): 2^bits levels in [−1, 1], straight-through rounding.

    ``w_q = 2·R(n·r)/n − 1`` with ``r = tanh(w)/(2·max|tanh(w)|) + 1/2`` and n = 2^bits − 1.
    Written with engine primitives (tanh as 2σ(2w) − 1), so autograd differentiates it
    literally; the gradient reaches the largest |w| through the max too.
    """
    n = float(2 ** _check_bits(bits) - 1)
    w = _as_float_tensor(w, "dorefa_weights")
    t = ops.sub(ops.mul(ops.sigmoid(ops.mul(w, 2.0)), 2.0), 1.0)          # tanh(w)
    peak = ops.reduce_max(ops.absolute(t))
    if not float(peak.data) > 0:
        raise ValueError("dorefa_weights needs a weight tensor with a non-zero value "
                         "(it divides by max|tanh(w)|); got all zeros")
    r = ops.add(ops.div(t, ops.mul(peak, 2.0)), 0.5)
    return ops.sub(ops.mul(ops.div(ops.round_ste(ops.mul(r, n)), n), 2.0), 1.0)


# --------------------------------------------------------------------------- gradient-check cases

def _away_from(values: np.ndarray, bounds, gap: float) -> np.ndarray:
    """``values`` with every element closer than ``gap`` to a bound pushed to ``bound ± gap``."""
    values = values.copy()
    for bound in bounds:
        near = np.abs(values - bound) < gap
        values[near] = bound + np.where(values[near] >= bound, gap, -gap)
    return values


def _lsq_case(rng: np.random.Generator, shape: tuple, broadcast: bool) -> GradCase:
    """v spans the grid and beyond (both clip paths of ∂/∂s), > 1e−3·s from the clip bounds.

    g = 1: finite differences see the forward only, which g does not change; the scale is
    checked against the oracle and against g·(∂v̂/∂s) in ``tests/test_baselines.py``.
    """
    shape = tuple(int(d) for d in shape) or (3,)
    signed = bool(rng.integers(2))
    bits = int(rng.choice([2, 3, 4, 8]))
    q_n, q_p = lsq_levels(bits, signed)
    s = rng.uniform(0.05, 0.5)
    ratio = _away_from(rng.uniform(-q_n - 2, q_p + 2, shape), (-q_n, q_p), 1e-3)
    return GradCase((ratio * s, np.asarray(s)),
                    {"bits": bits, "signed": signed, "grad_scale": 1.0}, (0, 1))


def _pact_case(rng: np.random.Generator, shape: tuple, broadcast: bool) -> GradCase:
    """x below 0, above α, and inside on grid points.

    On the grid the rounding error is 0, so PACT's α rule (which ignores that error's dependence
    on α) is the derivative of the forward there and finite differences can check it; elsewhere
    the rule is checked against the oracle in ``tests/test_baselines.py``.
    """
    shape = tuple(int(d) for d in shape) or (3,)
    bits = int(rng.choice([2, 3, 4, 8]))
    n = 2 ** bits - 1
    alpha = rng.uniform(0.5, 3.0)
    where = rng.integers(0, 3, shape)
    grid = alpha * rng.integers(1, n, shape) / n if n > 1 else np.full(shape, -0.3)
    x = np.select([where == 0, where == 1], [-rng.uniform(0.01, 1.0, shape),
                                             alpha + rng.uniform(0.01, 1.0, shape)], grid)
    return GradCase((x, np.asarray(alpha)), {"bits": bits}, (0, 1))


register_case("lsq_quantize", _lsq_case)
register_case("pact_quantize", _pact_case)

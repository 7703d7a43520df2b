"""The Bayesian Bits quantizer: clip, chained step sizes, gated residual decomposition (docs/method.md §2).

For a tensor x with learned range β > 0 (§2.1–2.5)::

    hi = (1 − ε)·β,   lo = −hi (signed) or 0 (unsigned),   ε = 1e−7
    x_c = hi − relu(hi − lo − relu(x − lo))                  the official two-ReLU clip
    s2 = (β − α)/3  (α = −β or 0),   s4 = s2/5,  s8 = s4/17,  s16 = s8/257,  s32 = s16/65537
    A2  = s2·R(x_c/s2)
    e4  = s4·R((x_c − A2)/s4)
    e8  = s8·R((x_c − A2 − e4)/s8)          … residuals formed left to right, up to e32
    x_q = z2 ⊙ (A2 + z4·(e4 + z8·(e8 + z16·(e16 + z32·e32))))

R is round-half-to-even with the straight-through estimator (identity gradient).  The arithmetic
follows the official code literally, so that this module is the bit-exact ground truth of
§2.3a; ``clip="numpy"`` swaps in ``np.clip`` (same values except, rarely, at exact rounding
ties, where the ReLU form moves x_c by a few ulps of hi and flips the rounded value).

Two implementations of the same function:

* :func:`bb_quantize` calls one fused engine primitive, ``"bb_quantize"``, whose vector-Jacobian
  products are the closed forms of §2.6.  This is what the layers use: the activation
  after conv1 of LeNet-5 has 2.4M values per step, too many for a chain of ~25 engine ops.
* :func:`bb_quantize_composite` writes the formula with engine primitives only (``maximum``,
  ``sub``, ``div``, ``round_ste``, ``mul``, ``add``), so autograd runs through it literally.  The
  tests use it to cross-check the fused primitive; notebooks use it to show where gradients go.

Gradients of the fused primitive (§2.6), with ``inside = 1[lo < x < hi]``::

    ∂L/∂x   = g·z2·inside                          residuals add nothing: ∂e_k/∂x_c = 1 − 1 = 0
    ∂L/∂β   = Σ g·(x_q − z2·x_c·inside)/β          = Σ g·((x_q − z2·x_c)/β + z2·∂x_c/∂β)
    ∂L/∂z2  = g·(A2 + z4·(e4 + …))                 summed over the non-channel axes by the engine
    ∂L/∂z4  = Σ g·z2·(e4 + z8·(e8 + …)),   ∂L/∂z8 = Σ g·z2·z4·(e8 + …),   …

The β form uses ∂x_c/∂β = (1 − ε) where x_c = hi and −(1 − ε) where x_c = lo (signed), so that
z2·β·∂x_c/∂β cancels z2·x_c exactly at the saturated elements.  ``inside`` is taken from the
literal ReLU masks, ``(x − lo > 0) & (hi − lo − relu(x − lo) > 0)``, which is what the chain rule
of the official formula with relu'(0) = 0 gives.  The bounds themselves count as saturated (the
many exact zeros after a ReLU get no gradient).  In one float corner this differs from the
textbook ``x < hi``: a signed x a few ulps below hi whose ``x − lo`` rounds up to ``hi − lo``.
The official clip returns x_c = hi there, and its gradient is that of a saturated element (0 for
x, 1 − ε for β).  We follow the official chain rule.

A gate whose value is exactly 0 switches its residual and every higher one off.  As in the
official code, they are then not computed at all, so the gradient with respect to that gate
value is 0 rather than e_b + … (§2.5; forward values are identical either way).

Other bit widths (e.g. 2, 3, 4, 6, 8, or a 1-bit first stage) are an option of
:mod:`bbits_ref.method.decomposition` (§2.8); this module is the doubling chain only.

Notebook: ``notebooks/02_quantization_decomposition.ipynb``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.gradcheck_cases import GradCase, register_case
from bbits_ref.autograd.engine import Tensor, register, ste_round
from bbits_ref.method.constants import BIT_WIDTHS, CLIP_EPS, CLIP_MODES
# s_{2b} = s_b / (2^b + 1): the divisors that turn s2 into s4, s8, s16, s32 (§2.3)
from bbits_ref.method.constants import STEP_DIVISORS as _STEP_DIVISORS

__all__ = ["BIT_WIDTHS", "CLIP_EPS", "CLIP_MODES", "check_bits", "init_range", "clip_range",
           "step_sizes", "decompose", "quantize_direct", "bb_quantize", "fixed_quantize",
           "bb_quantize_composite", "gated_chain", "gates_for_bits"]

GATE_NAMES = ("z4", "z8", "z16", "z32")


# --------------------------------------------------------------------------- checks

def check_bits(bits) -> int:
    """Return ``bits`` if it is one of :data:`BIT_WIDTHS`, else raise ``ValueError``."""
    if isinstance(bits, (bool, np.bool_)) or bits not in BIT_WIDTHS:
        raise ValueError(f"bits must be one of {BIT_WIDTHS} (the Bayesian Bits bit widths); "
                         f"got {bits!r}")
    return int(bits)


def _check_clip(clip) -> None:
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be 'official' (the two-ReLU clip of the official code, "
                         f"bit-exact) or 'numpy' (np.clip); got {clip!r}")


def _check_beta(beta) -> None:
    b = np.asarray(beta)
    if b.size != 1:
        raise ValueError(f"beta (the learned clipping range) must be a scalar; got shape {b.shape}")
    if not (np.isfinite(b).all() and float(b.reshape(())) > 0):
        raise ValueError(
            f"beta (the learned clipping range) must be finite and > 0; got {float(b.reshape(()))}. "
            "Initialise it lazily from the first tensor the quantizer sees (init_range: "
            "beta = max(max(x), 0)); a tensor without positive values gives beta = 0, which "
            "cannot be quantized.")


def _scalar(value, dtype=None) -> np.ndarray:
    """A 0-d array of ``dtype`` (default: the value's own float dtype, float64 for numbers)."""
    arr = np.asarray(value.data if isinstance(value, Tensor) else value)
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    return arr.astype(dtype, copy=False).reshape(())


def _float_array(x) -> np.ndarray:
    arr = np.asarray(x.data if isinstance(x, Tensor) else x)
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


# --------------------------------------------------------------------------- range and grid

def init_range(x) -> tuple[float, bool]:
    """Lazy, data-dependent range init (§2.1): ``beta = max(max(x), 0)``, ``signed = min(x) < 0``.

    Weights are initialised from themselves; activations from the first forward (two images in
    the official driver).  Note that β = max(x), not max|x|: an asymmetric signed tensor has its
    negative tail below −max(x) clipped from the start.
    """
    arr = _float_array(x)
    if arr.size == 0:
        raise ValueError("init_range needs a non-empty tensor to take its min and max from")
    return max(float(arr.max()), 0.0), bool(arr.min() < 0)


def clip_range(beta, signed: bool) -> tuple:
    """``(lo, hi)`` with ``hi = (1 − ε)·β`` and ``lo = −hi`` if signed else 0 (§2.2).

    The (1 − ε) keeps the top of the signed range at hi/s2 = 1.5·(1 − ε), which rounds to 1
    instead of to the out-of-range level 2 (§2.4).  Computed in beta's dtype.
    """
    beta = _scalar(beta)
    hi = beta.dtype.type(1 - CLIP_EPS) * beta[()]
    lo = -hi if signed else beta.dtype.type(0)
    return lo, hi


def step_sizes(beta, signed: bool) -> tuple:
    """``(s2, s4, s8, s16, s32)``: ``s2 = (β − α)/3``, then chained ``s_{2b} = s_b/(2^b + 1)`` (§2.3).

    α = −β for signed tensors, 0 for unsigned ones.  Since (2^b − 1)(2^b + 1) = 2^{2b} − 1,
    s_b = (β − α)/(2^b − 1) is the step of an ordinary b-bit grid on the same range.  The chain
    (s4 = s2/5, not s2/85 for s8) is the official arithmetic, needed for bit-exact parity.
    """
    beta = _scalar(beta)[()]
    alpha = -beta if signed else beta.dtype.type(0)
    steps = [(beta - alpha) / beta.dtype.type(3)]
    for divisor in _STEP_DIVISORS:
        steps.append(steps[-1] / beta.dtype.type(divisor))
    return tuple(steps)


# --------------------------------------------------------------------------- NumPy building blocks

def _clip(x: np.ndarray, lo, hi, clip: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x_c, inside)``: the clipped tensor and the mask where ∂x_c/∂x = 1 (§2.2).

    ``"official"`` computes hi − relu(hi − lo − relu(x − lo)) in place, and ``inside`` from the
    two ReLUs' own masks (relu'(0) = 0), exactly what the chain rule of that formula gives.
    """
    if clip == "official":
        x_c = np.asarray(np.subtract(x, lo))  # asarray: a 0-d input gives a scalar, not writable
        inside = x_c > 0                      # relu(x − lo) is active
        np.maximum(x_c, 0, out=x_c)
        np.subtract(hi - lo, x_c, out=x_c)    # (hi − lo) − relu(x − lo), left to right
        inside &= x_c > 0                     # the outer relu is active: below hi
        np.maximum(x_c, 0, out=x_c)
        np.subtract(hi, x_c, out=x_c)
        return x_c, inside
    return np.clip(x, lo, hi), (x > lo) & (x < hi)


def _residuals(x_c: np.ndarray, steps, depth: int, round_fn) -> list:
    """``[A2, e4, …]`` up to ``depth`` residuals (§2.4), with the official arithmetic.

    ``e_{2b} = s_{2b}·R(r/s_{2b})`` where the residual ``r = x_c − A2 − e4 − …`` is formed left
    to right.  ``round_fn`` is :func:`~bbits_ref.autograd.engine.ste_round` in the primitive (so that
    :func:`~bbits_ref.autograd.engine.frozen_rounding` sees every rounding) and ``np.round`` elsewhere.
    """
    parts = [round_fn(x_c / steps[0])]
    parts[0] *= steps[0]                      # A2
    if depth == 0:
        return parts
    residual = np.subtract(x_c, parts[0])
    scaled = np.empty_like(residual)
    for level in range(1, depth + 1):
        if level > 1:
            residual -= parts[-1]
        np.divide(residual, steps[level], out=scaled)
        e = round_fn(scaled)
        e *= steps[level]
        parts.append(e)
    return parts


def _clipped(x, beta, signed: bool, clip: str) -> tuple[np.ndarray, tuple]:
    """``(x_c, steps)`` for the NumPy helpers below, in x's float dtype."""
    _check_clip(clip)
    _check_beta(beta)
    arr = _float_array(x)
    beta = _scalar(beta, arr.dtype)
    x_c, _ = _clip(arr, *clip_range(beta, signed), clip)
    return x_c, step_sizes(beta, signed)


def decompose(x, beta, signed: bool, clip: str = "official") -> dict:
    """The ungated decomposition of §2.4 as NumPy arrays (plain rounding, no gradients).

    Returns ``{"x_c", "A2", "e4", "e8", "e16", "e32"}``: ``A2 + e4 + … + e_b`` is the b-bit
    quantization of ``x`` (§2.4: equal to ``s_b·round(x_c/s_b)`` except at exact ties).
    """
    x_c, steps = _clipped(x, beta, signed, clip)
    parts = _residuals(x_c, steps, 4, np.round)
    return dict(x_c=x_c, **dict(zip(("A2", "e4", "e8", "e16", "e32"), parts)))


def quantize_direct(x, beta, bits: int, signed: bool, clip: str = "official") -> np.ndarray:
    """A plain b-bit grid quantizer on the same range: ``s_b·round(x_c/s_b)`` (§2.3, §2.7)."""
    index = BIT_WIDTHS.index(check_bits(bits))
    x_c, steps = _clipped(x, beta, signed, clip)
    return steps[index] * np.round(x_c / steps[index])


def gates_for_bits(bits: int) -> tuple:
    """The deterministic ``(z4, z8, z16, z32)`` that select bit width ``bits`` (§2.7)."""
    index = BIT_WIDTHS.index(check_bits(bits))
    return tuple(1.0 if level <= index else 0.0 for level in range(1, 5))


# --------------------------------------------------------------------------- the fused primitive

# Elements per block.  The forward runs the ~20 elementwise steps on one block at a time, so the
# intermediates stay in the L2 cache: 2.5x faster than whole-tensor steps on the 2.4M-value
# activation after conv1 of LeNet-5, and no value changes (every step is elementwise).
_BLOCK = 1 << 16


def _blocks(n: int):
    return (slice(i, min(i + _BLOCK, n)) for i in range(0, n, _BLOCK))


def _active_depth(gates) -> int:
    """How many residuals are computed: the chain stops at the first gate that is exactly 0."""
    depth = 0
    for z in gates:
        if z == 0:
            break
        depth += 1
    return depth


def _is_one(z2: np.ndarray) -> bool:
    return z2.size == 1 and bool(z2.reshape(()) == 1)


class _Saved(NamedTuple):
    """What the backward of ``bb_quantize`` needs, all flat arrays of x's size."""

    inside: np.ndarray          # 1[lo < x < hi] from the ReLU masks: ∂x_c/∂x
    tails: list                 # tails[k] = e_k + z_{2k}·(…); tails[0] = A2 + z4·(…)
    range_slope: np.ndarray     # tails[0] − x_c·inside, so that β·∂x_q/∂β = z2·range_slope


def _bb_forward(x, beta, z2, z4, z8, z16, z32, *, signed, clip="official"):
    dt = x.dtype.type                           # float32 stays float32: scalars follow x
    beta = _scalar(beta, x.dtype)
    gates = [dt(np.asarray(z).reshape(())) for z in (z4, z8, z16, z32)]
    lo, hi = clip_range(beta, signed)
    steps = step_sizes(beta, signed)
    depth = _active_depth(gates)
    flat = np.ascontiguousarray(x).reshape(-1)
    saved = _Saved(np.empty(flat.shape, dtype=bool),
                   [np.empty_like(flat) for _ in range(depth + 1)], np.empty_like(flat))
    for block in _blocks(flat.size):
        x_c, saved.inside[block] = _clip(flat[block], lo, hi, clip)
        parts = _residuals(x_c, steps, depth, ste_round)
        tails = [t[block] for t in saved.tails]
        tails[depth][...] = parts[depth]
        for level in range(depth - 1, -1, -1):  # innermost first: e_k + z_{2k}·tail
            np.multiply(tails[level + 1], gates[level], out=tails[level])
            tails[level] += parts[level]
        x_c *= saved.inside[block]
        np.subtract(tails[0], x_c, out=saved.range_slope[block])
    x_q = saved.tails[0].reshape(x.shape)
    if not _is_one(z2):
        x_q = x_q * np.asarray(z2, dtype=x.dtype)
    return x_q, saved


def _g_z2(g: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """g·z2 as a flat array (z2 broadcasts over the channel axis)."""
    gz = g if _is_one(z2) else g * z2.astype(g.dtype, copy=False)
    return np.ascontiguousarray(gz).reshape(-1)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a·b of two flat arrays, block by block (no full-size temporary).

    Pairwise sums within a block (as ``np.sum``), block totals added in float64.
    """
    return sum(float(np.sum(a[s] * b[s])) for s in _blocks(a.size))


def _bb_vjp_x(g, x_q, saved, x, beta, z2, *gates, **static):
    dx = np.multiply(g, saved.inside.reshape(g.shape))
    return dx if _is_one(z2) else dx * z2.astype(g.dtype, copy=False)


def _bb_vjp_beta(g, x_q, saved, x, beta, z2, *gates, **static):
    # Σ g·(x_q − z2·x_c·inside)/β = Σ g·((x_q − z2·x_c)/β + z2·∂x_c/∂β), module docstring
    total = _dot(_g_z2(g, z2), saved.range_slope) / float(_scalar(beta))
    return np.full(np.shape(beta), total, dtype=g.dtype)


def _bb_vjp_z2(g, x_q, saved, x, beta, z2, *gates, **static):
    return g * saved.tails[0].reshape(g.shape)   # the engine sums it over the non-channel axes


def _make_gate_vjp(level: int):
    """VJP for z_{2^(level+1)}: Σ g·z2·z4···z_{b/2}·(e_b + z_{2b}·(…)), 0 past a gate that is 0."""
    def vjp(g, x_q, saved, x, beta, z2, *gates, **static):
        shape = np.shape(gates[level - 1])
        if level >= len(saved.tails):   # not computed: a gate at or below this one is exactly 0
            return np.zeros(shape, dtype=g.dtype)
        lower = np.prod([float(np.asarray(z).reshape(())) for z in gates[:level - 1]])
        return np.full(shape, lower * _dot(_g_z2(g, z2), saved.tails[level]), dtype=g.dtype)
    vjp.__name__ = f"_bb_vjp_{GATE_NAMES[level - 1]}"
    return vjp


BB_QUANTIZE = register(
    "bb_quantize",
    "x_q = z2·(A2 + z4·(e4 + z8·(e8 + z16·(e16 + z32·e32)))) of x_c = clip(x) (§2.2–2.5);  "
    "x̄ = g·z2·1[lo<x<hi], β̄ = Σ g·(x_q − z2·x_c·1[lo<x<hi])/β, z̄2 = g·(A2 + …), "
    "z̄_b = Σ g·z2·z4···z_{b/2}·(e_b + …) (§2.6)",
    _bb_forward, _bb_vjp_x, _bb_vjp_beta, _bb_vjp_z2,
    *(_make_gate_vjp(level) for level in range(1, 5)), saves=True)


# --------------------------------------------------------------------------- Tensor entry points

def _prepare(x, beta, z2, gates, signed, clip, channel_axis):
    """Validate the inputs of :func:`bb_quantize` and put them in the primitive's form.

    Returns ``(x, beta, z2, gates)`` where z2 is None or reshaped to broadcast over
    ``channel_axis``, and every gate that is None becomes 0.0.
    """
    _check_clip(clip)
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be True (weights, range [-beta, beta]) or False "
                        f"(post-ReLU activations, range [0, beta]); got {signed!r}")
    x = x if isinstance(x, Tensor) else Tensor(_float_array(x))
    if x.dtype.kind != "f":
        raise TypeError(f"bb_quantize needs a float32/float64 tensor; got {x.dtype}")
    _check_beta(beta.data if isinstance(beta, Tensor) else beta)
    prepared = []
    for name, z in zip(GATE_NAMES, gates):
        if z is None:
            prepared.append(0.0)
            continue
        value = np.asarray(z.data if isinstance(z, Tensor) else z)
        if value.size != 1:
            raise ValueError(f"gate {name} must be a scalar (one gate per tensor, §1); got "
                             f"shape {value.shape}")
        _check_gate_values(name, value)
        if isinstance(z, Tensor) and z.shape != ():
            z = ops.reshape(z, shape=())
        prepared.append(z)
    if z2 is not None:
        value = np.asarray(z2.data if isinstance(z2, Tensor) else z2)
        _check_gate_values("z2", value)
        if value.ndim > 0:
            if x.ndim == 0 or not -x.ndim <= channel_axis < x.ndim:
                raise ValueError(f"channel_axis={channel_axis} is not an axis of x with shape "
                                 f"{x.shape}")
            n_channels = x.shape[channel_axis]
            if value.shape != (n_channels,):
                raise ValueError(
                    f"z2 (the pruning gates) must have one value per channel, shape "
                    f"({n_channels},) for x of shape {x.shape} with channel_axis={channel_axis}; "
                    f"got shape {value.shape}")
            shape = [1] * x.ndim
            shape[channel_axis] = n_channels
            z2 = ops.reshape(z2, shape=tuple(shape)) if isinstance(z2, Tensor) \
                else value.reshape(shape)
    return x, beta, z2, prepared


def _check_gate_values(name: str, value: np.ndarray) -> None:
    value = np.asarray(value, dtype=np.float64)
    if not np.all((value >= 0) & (value <= 1)):      # also catches NaN
        bad = value[~((value >= 0) & (value <= 1))].ravel()[0]
        raise ValueError(f"gate {name} must lie in [0, 1] (a hard-concrete sample, or 0/1 in eval "
                         f"mode); got {bad}")


def bb_quantize(x, beta, z2=None, z4=None, z8=None, z16=None, z32=None, *, signed: bool,
                clip: str = "official", channel_axis: int = 0) -> Tensor:
    """Bayesian Bits quantization of a Tensor (§2.2–2.6), as one fused engine primitive.

    Parameters
    ----------
    x : Tensor
        A weight tensor (channels on ``channel_axis``) or an activation of any shape.
    beta : Tensor
        Scalar learned range β > 0 (initialise it with :func:`init_range`).
    z2 : Tensor, optional
        Pruning gates, shape ``(C,)`` with ``C = x.shape[channel_axis]`` (weights only);
        None means no pruning (z2 = 1).
    z4, z8, z16, z32 : scalar Tensors or numbers, optional
        Bit-width gates in [0, 1]; None or exactly 0 means off (and every higher gate with it).
    signed : bool
        True for weights (range [−β, β]), False for post-ReLU activations ([0, β]).
    clip : ``"official"`` (bit-exact, default) or ``"numpy"`` (np.clip; see the module docstring).

    Returns
    -------
    Tensor x_q of x's shape and dtype (float32 in, float32 out).
    """
    x, beta, z2, gates = _prepare(x, beta, z2, (z4, z8, z16, z32), signed, clip, channel_axis)
    return BB_QUANTIZE(x, beta, 1.0 if z2 is None else z2, *gates, signed=bool(signed), clip=clip)


def fixed_quantize(x, beta, bits: int, *, signed: bool, clip: str = "official") -> Tensor:
    """A fixed ``bits``-bit quantizer: :func:`bb_quantize` with constant 0/1 gates (§2.7).

    Its values equal :func:`quantize_direct` (up to float rounding of the sum of residuals),
    and its β gradient is the straight-through gradient of a direct ``bits``-bit quantizer.
    """
    return bb_quantize(x, beta, None, *gates_for_bits(bits), signed=signed, clip=clip)


def bb_quantize_composite(x, beta, z2=None, z4=None, z8=None, z16=None, z32=None, *,
                          signed: bool, clip: str = "official", channel_axis: int = 0) -> Tensor:
    """:func:`bb_quantize` written with engine primitives only, literally the official formula.

    Same arguments and (bit-identical) forward values; autograd runs through every step, so the
    gradients are those of the straight-through chain rule (relu'(0) = 0, R' = 1).  Slow: for
    tests and teaching.  Unlike the fused primitive, mixed dtypes follow the engine's promotion
    (a float64 gate makes a float32 tensor's output float64).
    """
    x, beta, z2, gates = _prepare(x, beta, z2, (z4, z8, z16, z32), signed, clip, channel_axis)
    beta = beta if isinstance(beta, Tensor) else Tensor(_scalar(beta, x.dtype))
    hi = ops.mul(beta, 1 - CLIP_EPS)
    lo = ops.neg(hi) if signed else Tensor(np.zeros((), dtype=x.dtype))
    if clip == "official":
        x_c = ops.sub(hi, ops.relu(ops.sub(ops.sub(hi, lo), ops.relu(ops.sub(x, lo)))))
    else:   # maximum sends ties to its second argument: the bounds count as clipped
        x_c = ops.minimum(ops.maximum(x, lo), hi)
    alpha = ops.neg(beta) if signed else Tensor(np.zeros((), dtype=x.dtype))
    steps = [ops.div(ops.sub(beta, alpha), 3.0)]
    for divisor in _STEP_DIVISORS:
        steps.append(ops.div(steps[-1], float(divisor)))
    depth = _active_depth([np.asarray(z.data if isinstance(z, Tensor) else z) for z in gates])
    first = ops.mul(ops.round_ste(ops.div(x_c, steps[0])), steps[0])
    return gated_chain(x_c, first, steps, gates, depth, z2)


def gated_chain(x_c, first, steps, gates, depth: int, z2=None):
    """The gated residual chain on engine ops (§2.4–§2.5), from the first stage ``first``.

    Stage k ≥ 1 rounds what the earlier stages left, left to right:
    e_k = s_k·R((x_c − A_0 − e_1 − … − e_{k−1})/s_k), up to stage ``depth``; then
    x_q = z2·(A_0 + z_1·(e_1 + z_2·(e_2 + …))).  Shared by :func:`bb_quantize_composite` and
    :func:`bbits_ref.method.decomposition.chain_quantize_composite`.
    """
    parts = [first]
    residual = x_c
    for level in range(1, depth + 1):
        residual = ops.sub(residual, parts[-1])
        parts.append(ops.mul(ops.round_ste(ops.div(residual, steps[level])), steps[level]))
    inner = parts[depth]
    for level in range(depth - 1, -1, -1):
        inner = ops.add(parts[level], ops.mul(gates[level], inner))
    return inner if z2 is None else ops.mul(z2, inner)


# --------------------------------------------------------------------------- gradient-check case

def _gradcheck_case(rng: np.random.Generator, shape: tuple, broadcast: bool) -> GradCase:
    """Inputs for ``python -m bbits_ref.autograd.gradcheck bb_quantize`` (float64, rounding frozen there).

    β ~ U(0.5, 2); x spans the range and beyond (saturated elements exercise the clip path of
    ∂/∂β) but stays > 1e−3·β away from the bounds; gates are fractional, in (0.05, 0.95).
    """
    shape = tuple(int(d) for d in shape) or (3,)
    signed = bool(rng.integers(2))
    beta = rng.uniform(0.5, 2.0)
    lo_rel = -1.0 if signed else 0.0
    x_rel = rng.uniform(lo_rel - 0.5, 1.5, shape)
    for bound in (lo_rel, 1.0):               # push values off the clip bounds
        near = np.abs(x_rel - bound) < 2e-3
        x_rel[near] = bound + np.where(x_rel[near] >= bound, 2e-3, -2e-3)
    z2_shape = (shape[0],) + (1,) * (len(shape) - 1)
    if broadcast and rng.random() < 0.5:
        z2_shape = ()
    z2 = rng.uniform(0.05, 0.95, z2_shape)
    gates = tuple(rng.uniform(0.05, 0.95, ()) for _ in GATE_NAMES)
    return GradCase((x_rel * beta, np.asarray(beta), z2) + gates,
                {"signed": signed, "clip": "official" if rng.random() < 0.75 else "numpy"},
                (0, 1, 2, 3, 4, 5, 6))


register_case("bb_quantize", _gradcheck_case)

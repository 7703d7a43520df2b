"""Residual decompositions over any increasing bit widths, beside doubling (docs/method.md §2.8).

Bayesian Bits refines a 2-bit value to 4, 8, 16 and 32 bits (§2.4).  This module runs the same
residual recipe over any strictly increasing tuple of bit widths ``(b_0, b_1, …, b_n)``, e.g.
``(2, 3, 4, 6, 8)``, optionally starting with a 1-bit stage::

    x_c = clip(x)                                      the official clip of §2.2
    A_{b0} = s_{b0}·R(x_c/s_{b0})                      the first stage: direct quantization
    e_{bk} = s_{bk}·R((x_c − A_{b0} − e_{b1} − … − e_{b(k−1)})/s_{bk})   formed left to right
    A_{bk} = A_{b(k−1)} + e_{bk}
    x_q = z2 ⊙ (A_{b0} + z_{b1}·(e_{b1} + z_{b2}·(e_{b2} + …)))      the gated output (§2.5)

**Steps.**  Stage b uses the step of a direct b-bit grid on the range, s_b = (β − α)/(2^b − 1)
(α = −β signed, 0 unsigned).  For b in (2, 4, 8, 16, 32) it is computed by the official chain
s2 = (β − α)/3, s_{2b} = s_b/(2^b + 1) (§2.3), bit for bit as :func:`quantizer.step_sizes`;
for any other b ≥ 2 by one division, (β − α)/(2^b − 1).

**The 1-bit stage.**  A 1-bit grid has two levels.  A signed Bayesian Bits grid is symmetric
(2^b − 1 levels, §2.4), which at one bit leaves the single level 0, so the first stage has to be
asymmetric: levels ``{−s1, 0}`` (signed) or ``{0, s1}`` (unsigned).  s1 is chosen so that the
1-bit levels lie on the 2-bit grid, which makes the 2-bit stage take over exactly (A_2 of the
chain ``(1, 2, …)`` is direct 2-bit quantization):

* unsigned: s1 = (β − α)/(2^1 − 1) = β, the ordinary 1-bit step; ``A_1 = s1·R(x_c/s1)`` ∈ {0, β}
  (x_c ≤ (1 − ε)β < β, so the index is 0 or 1).  β = 3·s2 = (2^b − 1)·s_b lies on every grid.
* signed: s1 = s2 = 2β/3, the outermost negative level of the ternary 2-bit grid;
  ``A_1 = s1·R(min(x_c, 0)/s1)`` ∈ {−s1, 0}: positive values go to 0, and
  min(x_c, 0)/s1 ≥ −1.5·(1 − ε) rounds to −1 at worst (the ε of §2.2 at work once more).
  −2β/3 lies on the b-bit grid iff b is even (s2/s_b = (2^b − 1)/3).  The alternative s1 = β
  was rejected: β/s_b = (2^b − 1)/2 is never a whole number, so no later signed stage could
  return to a direct grid.

Through the straight-through estimator the signed 1-bit stage passes gradient to x only where
x_c < 0 (the min is a clip of the 1-bit stage's own range); a later stage with gate z passes
z·1[x_c > 0] more, so unlike the doubling chain (§2.6) fractional gates scale ∂x_q/∂x there.

**When the residual sum equals direct quantization.**  ``A_{bk} = s_{bk}·R(x_c/s_{bk})`` (off
exact ties) holds when every earlier step is a whole multiple of s_{bk}, because then
A_{b(k−1)} is a whole multiple of s_{bk} and adding a whole number commutes with rounding; when
one is not, it fails on part of the data (measured by :func:`direct_mismatch`).  For b, b' ≥ 1,
s_b/s_{b'} = (2^{b'} − 1)/(2^b − 1) is a whole number iff b divides b' (:func:`grids_nest`).  So
2 → 4 → 8 nests, 2 → 6 and 3 → 6 nest, 2 → 3 and 4 → 6 do not (:func:`equality_report`; the
signed 1-bit stage counts as 2 here).  Where the equality breaks, A_b lies on the b-bit grid
shifted by A_{b_prev}: still within s_b/2 of x_c, but it takes more distinct values than the
b-bit grid has, so it is not a b-bit quantizer any more (:func:`direct_mismatch` measures it).

**The default is doubling**: ``bit_widths=(2, 4, 8, 16, 32)`` (and any prefix of it) returns
exactly :func:`quantizer.decompose` (bit for bit); the general code path uses the same
arithmetic (left-to-right residuals, chained doubling steps) and is tested to agree with it.

Notebook: ``notebooks/02_quantization_decomposition.ipynb`` (section "Why doubling?").
"""
from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor
from bbits_ref.method.constants import BIT_WIDTHS, CLIP_EPS, STEP_DIVISORS
from bbits_ref.method.quantizer import (_check_beta, _check_clip, _check_gate_values, _clip,
                                        _float_array, _prepare, _scalar, clip_range, decompose,
                                        gated_chain, quantize_direct)

__all__ = ["DOUBLING", "MAX_BITS", "check_bit_widths", "stage_step_sizes", "grids_nest",
           "decompose_chain", "cumulative", "quantize_direct_bits", "grid_levels",
           "StageEquality", "equality_report", "Mismatch", "direct_mismatch",
           "chain_quantize_composite", "residual_tensor_count", "cost_summary"]

DOUBLING = BIT_WIDTHS        # (2, 4, 8, 16, 32): the official chain and the default here
MAX_BITS = 32


# --------------------------------------------------------------------------- checks

def check_bit_widths(bit_widths) -> tuple:
    """Return ``bit_widths`` as a tuple of ints after checking it is a valid chain, else raise.

    Valid: a non-empty, strictly increasing sequence of whole numbers in 1…32, where 1 may
    only come first (a 1-bit stage refines nothing).  Every error is one line.
    """
    if isinstance(bit_widths, (str, bytes)) or not hasattr(bit_widths, "__iter__"):
        raise ValueError(f"bit_widths must be a sequence of whole numbers such as (2, 3, 4, 6, 8); "
                         f"got {bit_widths!r}")
    widths = tuple(bit_widths)
    if not widths:
        raise ValueError("bit_widths must hold at least one bit width, e.g. (2, 4, 8); got ()")
    for b in widths:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)):
            raise ValueError(f"bit_widths must be whole numbers (int); got {b!r} in {widths!r}")
        if not 1 <= b <= MAX_BITS:
            raise ValueError(f"every bit width must lie in 1…{MAX_BITS}; got {int(b)} in "
                             f"{widths!r}")
    widths = tuple(int(b) for b in widths)
    if 1 in widths[1:]:
        raise ValueError(f"a 1-bit stage can only come first (it is the coarsest grid); got "
                         f"{widths!r}. Put 1 at the start or remove it.")
    if any(b >= b_next for b, b_next in zip(widths, widths[1:])):
        raise ValueError(f"bit_widths must be strictly increasing (each stage refines the "
                         f"previous one); got {widths!r}. Sort them and drop duplicates.")
    return widths


def _check_signed(signed) -> bool:
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be True (weights, range [-beta, beta]) or False "
                        f"(post-ReLU activations, range [0, beta]); got {signed!r}")
    return bool(signed)


def _is_doubling_prefix(widths: tuple) -> bool:
    return widths == DOUBLING[:len(widths)]


# --------------------------------------------------------------------------- steps and grids

def _steps(width, widths: tuple, signed: bool, divide) -> list:
    """[s_b for b in widths] from the range width β − α; ``divide(a, n)`` divides by a constant.

    Written once for NumPy scalars and for Tensors: the official chain for the doubling widths
    (bit for bit as :func:`quantizer.step_sizes`), one division by 2^b − 1 otherwise, and
    s1 = s2 (signed) or β − α (unsigned) for the 1-bit stage.
    """
    chain = {2: divide(width, 3)}
    for b, divisor in zip(DOUBLING, STEP_DIVISORS):
        chain[2 * b] = divide(chain[b], divisor)
    steps = []
    for b in widths:
        if b == 1:
            steps.append(chain[2] if signed else width)
        elif b in chain:
            steps.append(chain[b])
        else:
            steps.append(divide(width, 2 ** b - 1))
    return steps


def _numpy_width(beta, signed: bool):
    beta = _scalar(beta)[()]
    alpha = -beta if signed else beta.dtype.type(0)
    return beta - alpha


def _numpy_divide(a, n):
    return a / a.dtype.type(n)


def stage_step_sizes(beta, bit_widths=DOUBLING, *, signed: bool) -> tuple:
    """``(s_{b0}, s_{b1}, …)``: the step of each stage, in the dtype of ``beta`` (module docstring).

    s_b = (β − α)/(2^b − 1) for b ≥ 2 (the chained official arithmetic for 2, 4, 8, 16, 32);
    s1 = 2β/3 (signed) or β (unsigned).  In float32 the divisor 2^b − 1 is itself rounded for
    b > 24.
    """
    widths = check_bit_widths(bit_widths)
    _check_beta(beta)
    signed = _check_signed(signed)
    return tuple(_steps(_numpy_width(beta, signed), widths, signed, _numpy_divide))


def grids_nest(bits: int, finer: int, *, signed: bool = True) -> bool:
    """Whether every level of the ``bits``-bit grid is a level of the ``finer``-bit grid.

    For b ≥ 2 this holds iff b divides b': s_b/s_{b'} = (2^{b'} − 1)/(2^b − 1) is whole iff
    b | b' (if b' = m·b, 2^{b'} − 1 = (2^b − 1)(1 + 2^b + … + 2^{(m−1)b}); if b' = q·b + r with
    0 < r < b, 2^{b'} − 1 leaves the remainder 2^r − 1 ≠ 0 on division by 2^b − 1).  The signed
    1-bit grid {−2β/3, 0} is the 2-bit one's lower half, so it nests iff 2 | b'; the unsigned
    {0, β} nests in every grid.
    """
    check_bit_widths((bits, finer))
    effective = 2 if (bits == 1 and _check_signed(signed)) else bits
    return finer % effective == 0


def _step_ratio(bits: int, finer: int, signed: bool) -> Fraction:
    """s_b/s_{b'} as an exact fraction (s1 = s2 for a signed 1-bit stage)."""
    effective = 2 if (bits == 1 and signed) else bits
    return Fraction(2 ** finer - 1, 2 ** effective - 1)


def grid_levels(beta, bits: int, *, signed: bool) -> np.ndarray:
    """The levels a direct ``bits``-bit quantizer can output on the range, ascending (b ≤ 16).

    k·s_b for k = −(2^{b−1} − 1) … 2^{b−1} − 1 (signed: 2^b − 1 levels, §2.4) or k = 0 … 2^b − 1
    (unsigned: 2^b levels); at one bit {−s1, 0} or {0, s1}.  Computed as k·s_b in float64.
    """
    (bits,) = check_bit_widths((bits,))
    if bits > 16:
        raise ValueError(f"grid_levels lists at most 2^16 levels (bits ≤ 16); got bits={bits}. "
                         f"Use stage_step_sizes for the step of a finer grid.")
    signed = _check_signed(signed)
    (step,) = stage_step_sizes(np.float64(_scalar(beta)), (bits,), signed=signed)
    if bits == 1:
        k = np.array([-1.0, 0.0]) if signed else np.array([0.0, 1.0])
    elif signed:
        half = 2 ** (bits - 1) - 1
        k = np.arange(-half, half + 1, dtype=np.float64)
    else:
        k = np.arange(0, 2 ** bits, dtype=np.float64)
    return k * step


# --------------------------------------------------------------------------- NumPy decomposition

def _stage_names(widths: tuple) -> list:
    return [f"A{widths[0]}"] + [f"e{b}" for b in widths[1:]]


def _first_stage(x_c, step, first: int, signed: bool, minimum, divide, multiply, round_fn):
    """A_{b0}: s·R(x_c/s), or s1·R(min(x_c, 0)/s1) for a signed 1-bit stage."""
    u = minimum(x_c, 0.0) if (first == 1 and signed) else x_c
    return multiply(round_fn(divide(u, step)), step)


def decompose_chain(x, beta, bit_widths=DOUBLING, *, signed: bool, clip: str = "official") -> dict:
    """The ungated decomposition over ``bit_widths`` as NumPy arrays (plain rounding).

    Returns ``{"x_c", "A{b0}", "e{b1}", …}``, e.g. ``{"x_c", "A2", "e3", "e4", "e6", "e8"}``
    for ``(2, 3, 4, 6, 8)``.  For the doubling chain (the default) or a prefix of it, this is
    :func:`quantizer.decompose` (its arrays, bit for bit).
    """
    widths = check_bit_widths(bit_widths)
    signed = _check_signed(signed)
    if _is_doubling_prefix(widths):
        full = decompose(x, beta, signed, clip=clip)
        return {k: full[k] for k in ["x_c"] + _stage_names(widths)}
    return _decompose_general(x, beta, widths, signed, clip)


def _decompose_general(x, beta, widths: tuple, signed: bool, clip: str) -> dict:
    """The general path (also valid for doubling; the tests check it against ``decompose``)."""
    _check_clip(clip)
    _check_beta(beta)
    arr = _float_array(x)
    beta = _scalar(beta, arr.dtype)
    x_c, _ = _clip(arr, *clip_range(beta, signed), clip)
    steps = _steps(_numpy_width(beta, signed), widths, signed, _numpy_divide)
    parts = [_first_stage(x_c, steps[0], widths[0], signed, np.minimum, np.divide, np.multiply,
                          np.round)]
    residual = x_c
    for step in steps[1:]:
        residual = residual - parts[-1]            # left to right: x_c − A_{b0} − e_{b1} − …
        parts.append(np.round(residual / step) * step)
    return dict(x_c=x_c, **dict(zip(_stage_names(widths), parts)))


def cumulative(parts: dict) -> dict:
    """``{b: A_b}`` from the output of :func:`decompose_chain`, summed left to right."""
    names = [k for k in parts if k != "x_c"]
    if not names or not names[0].startswith("A"):
        raise ValueError(f"cumulative needs the dict of decompose_chain (x_c, A…, e…); got keys "
                         f"{sorted(parts)}")
    out = {int(names[0][1:]): parts[names[0]]}
    total = parts[names[0]]
    for name in names[1:]:
        total = total + parts[name]
        out[int(name[1:])] = total
    return out


def quantize_direct_bits(x, beta, bits: int, *, signed: bool, clip: str = "official") -> np.ndarray:
    """A direct ``bits``-bit quantizer on the range, for any width 1…32: s_b·R(x_c/s_b).

    For 2, 4, 8, 16, 32 this is :func:`quantizer.quantize_direct` (bit for bit); at one bit it
    is the 1-bit stage of the module docstring (signed: s1·R(min(x_c, 0)/s1)).
    """
    (bits,) = check_bit_widths((bits,))
    signed = _check_signed(signed)
    if bits in DOUBLING:
        return quantize_direct(x, beta, bits, signed, clip=clip)
    return _decompose_general(x, beta, (bits,), signed, clip)[f"A{bits}"]


# --------------------------------------------------------------------------- equality with direct

class StageEquality(NamedTuple):
    """One stage of :func:`equality_report`.

    ``nests``: the previous stage's grid is a subset of this one (b_prev | b);
    ``equals_direct``: A_b = direct b-bit quantization (off exact ties), true when every earlier
    stage's grid nests in this one (and, as the tests measure, false otherwise);
    ``step_ratio``: s_{b_prev}/s_b as an exact fraction.
    """

    bits: int
    previous: int | None
    step_ratio: Fraction | None
    nests: bool
    equals_direct: bool

    def describe(self) -> str:
        """One line, e.g. ``2 → 3: s2/s3 = 7/3, grids do not nest; A3 ≠ direct 3-bit``."""
        if self.previous is None:
            return f"{self.bits}-bit first stage: A{self.bits} = direct {self.bits}-bit"
        nest = "grids nest" if self.nests else "grids do not nest"
        eq = "=" if self.equals_direct else "≠"
        return (f"{self.previous} → {self.bits}: s{self.previous}/s{self.bits} = "
                f"{self.step_ratio}, {nest}; A{self.bits} {eq} direct {self.bits}-bit")


def equality_report(bit_widths=DOUBLING, *, signed: bool | None = None) -> tuple:
    """Per stage: do consecutive grids nest, and does A_b equal direct b-bit quantization?

    Pure arithmetic on the widths (no data; :func:`direct_mismatch` measures on data).
    ``signed`` matters only for a 1-bit first stage (signed {−2β/3, 0} nests iff the finer
    width is even) and must then be given.
    """
    widths = check_bit_widths(bit_widths)
    if widths[0] == 1 and signed is None:
        raise ValueError("a chain with a 1-bit stage needs signed=True or signed=False: the "
                         "signed 1-bit grid {-2β/3, 0} nests only in even widths, the unsigned "
                         "{0, β} in all")
    signed = True if signed is None else _check_signed(signed)
    rows = [StageEquality(widths[0], None, None, True, True)]
    for k in range(1, len(widths)):
        b_prev, b = widths[k - 1], widths[k]
        rows.append(StageEquality(
            b, b_prev, _step_ratio(b_prev, b, signed), grids_nest(b_prev, b, signed=signed),
            all(grids_nest(earlier, b, signed=signed) for earlier in widths[:k])))
    return tuple(rows)


class Mismatch(NamedTuple):
    """How far the residual sum A_b is from direct b-bit quantization, over some data.

    ``worst_steps`` = max |A_b − direct_b|/s_b; ``fraction`` of the elements that differ by more
    than 10⁻³·s_b; ``levels`` / ``direct_levels``: distinct values of A_b / of direct_b.
    """

    bits: int
    worst_steps: float
    fraction: float
    levels: int
    direct_levels: int


def _count_levels(values: np.ndarray, step) -> int:
    """Distinct values, told apart at 10⁻⁶ of a step (the residual sum carries a few ulps)."""
    return int(np.unique(np.round(np.asarray(values, np.float64) / float(step), 6)).size)


def direct_mismatch(x, beta, bit_widths=DOUBLING, *, signed: bool, clip: str = "official") -> dict:
    """``{b: Mismatch}``: the residual sum of the chain against direct quantization on ``x``.

    Where the grids nest (:func:`equality_report`), ``worst_steps`` is a few ulps; where they do
    not, A_b − direct_b is f·s_b or (f − 1)·s_b with f the offset of A_{b_prev} on the b-bit
    lattice, so the worst is (q − 1)/q of a step for offsets in q-ths (2/3 of s3 for (2, 3),
    4/5 of s6 for (4, 6)).  A value on an exact rounding tie can differ by a whole step either
    way (an ulp of error in A_{b_prev} decides the tie), so measure on data without ties.
    """
    widths = check_bit_widths(bit_widths)
    signed = _check_signed(signed)
    sums = cumulative(decompose_chain(x, beta, widths, signed=signed, clip=clip))
    steps = stage_step_sizes(np.float64(_scalar(beta)), widths, signed=signed)
    out = {}
    for b, step in zip(widths, steps):
        direct = quantize_direct_bits(x, beta, b, signed=signed, clip=clip)
        gap = np.abs(np.asarray(sums[b], np.float64) - direct) / float(step)
        out[b] = Mismatch(b, float(gap.max(initial=0.0)), float(np.mean(gap > 1e-3)),
                          _count_levels(sums[b], step), _count_levels(direct, step))
    return out


# --------------------------------------------------------------------------- gated, differentiable

def chain_quantize_composite(x, beta, gates=None, z2=None, *, bit_widths=DOUBLING, signed: bool,
                             clip: str = "official", channel_axis: int = 0) -> Tensor:
    """x_q = z2 ⊙ (A_{b0} + z_{b1}·(e_{b1} + z_{b2}·(e_{b2} + …))) with engine primitives only.

    Parameters
    ----------
    x, beta, z2, signed, clip, channel_axis : as :func:`quantizer.bb_quantize`.
    gates : sequence of ``len(bit_widths) − 1`` gates in [0, 1] (scalar Tensors or numbers), one
        per residual; None means every residual off.  A gate exactly 0 switches its residual and
        every later one off and they are not computed (the official convention of §2.5).
    bit_widths : the chain (default doubling, where the forward equals
        :func:`quantizer.bb_quantize_composite` bit for bit).

    Built from registered primitives (``maximum``, ``sub``, ``div``, ``round_ste``, ``mul``,
    ``add``, ``neg``), so its gradients are those of the straight-through chain rule and follow
    from checked rules.  Slow (one engine op per step and stage): for tests and teaching.
    """
    widths = check_bit_widths(bit_widths)
    n_gates = len(widths) - 1
    gates = (0.0,) * n_gates if gates is None else tuple(gates)
    if len(gates) != n_gates:
        raise ValueError(f"bit_widths {widths} has {n_gates} residual(s), so gates needs "
                         f"{n_gates} value(s) (one per residual, e.g. z{widths[-1]}); got "
                         f"{len(gates)}")
    x, beta, z2, _ = _prepare(x, beta, z2, (), signed, clip, channel_axis)
    prepared = []
    for b, z in zip(widths[1:], gates):
        value = np.asarray(z.data if isinstance(z, Tensor) else z)
        if value.size != 1:
            raise ValueError(f"gate z{b} must be a scalar (one gate per tensor); got shape "
                             f"{value.shape}")
        _check_gate_values(f"z{b}", value)
        if isinstance(z, Tensor) and z.shape != ():
            z = ops.reshape(z, shape=())
        prepared.append(z)
    beta = beta if isinstance(beta, Tensor) else Tensor(_scalar(beta, x.dtype))
    hi = ops.mul(beta, 1 - CLIP_EPS)
    lo = ops.neg(hi) if signed else Tensor(np.zeros((), dtype=x.dtype))
    if clip == "official":
        x_c = ops.sub(hi, ops.relu(ops.sub(ops.sub(hi, lo), ops.relu(ops.sub(x, lo)))))
    else:
        x_c = ops.minimum(ops.maximum(x, lo), hi)
    alpha = ops.neg(beta) if signed else Tensor(np.zeros((), dtype=x.dtype))
    steps = _steps(ops.sub(beta, alpha), widths, signed, lambda a, n: ops.div(a, float(n)))
    depth = 0
    for z in prepared:                  # stop at the first gate that is exactly 0
        if np.asarray(z.data if isinstance(z, Tensor) else z) == 0:
            break
        depth += 1
    first = _first_stage(x_c, steps[0], widths[0], signed, ops.minimum, ops.div, ops.mul,
                         ops.round_ste)
    return gated_chain(x_c, first, steps, prepared, depth, z2)


# --------------------------------------------------------------------------- cost

def residual_tensor_count(bit_widths=DOUBLING) -> int:
    """How many residual tensors e_b a forward pass computes to offer ``bit_widths``: n − 1.

    4 for doubling from 2 bits (e4 … e32); 31 to offer every width 1…32 (plus the base A_1:
    32 tensors of x's size).
    """
    return len(check_bit_widths(bit_widths)) - 1


def cost_summary(bit_widths=DOUBLING) -> dict:
    """What offering ``bit_widths`` costs one quantizer, counted in tensors of x's size.

    "Cost" counts full-size tensors and passes over x in one forward pass with every gate on:
    the base A_{b0} plus one residual per further width, each made by one rounding pass (a
    division, a rounding and a multiplication over x; residuals also a subtraction).  A
    backward pass keeps about one tensor per stage as well (the fused primitive saves one tail
    per stage), so memory grows the same way.  ``gates`` counts the bit-width gates (z2, the
    pruning gate, comes on top); ``vs_doubling`` = tensors / 5, the doubling chain's count.
    """
    widths = check_bit_widths(bit_widths)
    n = len(widths)
    return {"bit_widths": widths, "base_tensors": 1, "residual_tensors": n - 1, "tensors": n,
            "rounding_passes": n, "gates": n - 1, "vs_doubling": n / len(DOUBLING)}

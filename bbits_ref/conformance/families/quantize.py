"""The ``quantize/…`` cases (docs/method.md §2): the gated quantizer in training mode.

Signed and unsigned, every bit width with 0/1 gates, fractional gates, a gate exactly 0 (the
official convention, §2.5), per-channel z2, the §11.4 golden vectors, and exact rounding ties
(``quantize/ties/…``).  Random values sit on the 16-bit grid plus an offset of at most 0.4 steps,
so no value is within 0.1·s16 of a rounding tie at any level up to 16 bits (far more than float32
noise).  Tie cases use ranges whose step sizes are powers of two and keep only values whose
clipped value is exact with both clip formulas in float32 and float64: their ties are exact in
every implementation, so the checker needs **no tie allowance** (§2.3a, second option).  Values
are also planted on grid points, at ±β and 0 and beyond the range; not at ±hi = ±(1 − 1e−7)β
itself, which differs between float32 and float64 by ~1e−8·β.  Tolerances: x_q 1e−6·β; grad_x
1e−6·max|g|; grad_beta 1e−6·Σ|g|; gate gradients 1e−6·β·Σ|g|.
"""
from __future__ import annotations

import math

import numpy as np

from bbits_ref.conformance.families._common import f32, f32s
from bbits_ref.conformance.protocol import Case
from bbits_ref.method.quantizer import BIT_WIDTHS, decompose, gates_for_bits, step_sizes

__all__ = ["cases"]

_BITS_INDEX = {b: i for i, b in enumerate(BIT_WIDTHS)}


def _levels(bits: int, signed: bool) -> int:
    """Largest integer level of a b-bit grid: 2^(b−1) − 1 signed, 2^b − 1 unsigned (§2.4)."""
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def _quantize_values(rng, beta: float, signed: bool, bits: int, n_random: int) -> np.ndarray:
    """Random values away from every rounding tie up to 16 bits, plus planted special values.

    Random: s16·(k + f) with integer k and |f| ≤ 0.4.  Every grid up to 16 bits is a subset of
    the 16-bit grid and every tie of a coarser grid is a tie of the 16-bit grid (the step ratios
    2^b + 1 are odd), so each value is at least 0.1·s16 away from a tie at every level.
    Planted: grid points of the ``bits`` grid (including the extreme levels), 0, ±β, beyond.
    """
    steps = step_sizes(beta, signed)
    s16, s_b = steps[3], steps[_BITS_INDEX[bits]]
    low = (-1.4 if signed else -0.4) * beta
    k = rng.integers(math.floor(low / s16), math.ceil(1.4 * beta / s16), n_random)
    random = s16 * (k + rng.uniform(-0.4, 0.4, n_random))
    top = _levels(bits, signed)
    grid = s_b * np.array([1, top, top // 2 + 1, int(rng.integers(0, top + 1))], dtype=np.float64)
    planted = [0.0, beta, 1.5 * beta, 3.0 * beta, *grid]
    if signed:
        planted += [-beta, -2.0 * beta, *(-grid)]
    else:
        planted += [-0.3 * beta, -beta]
    return f32(np.concatenate([planted, random]))


def _quantize_tolerances(beta: float, grad_out: np.ndarray) -> tuple[float, float, dict]:
    """Per-output tolerances of a quantize case (module docstring), scaled by β and grad_out."""
    g_sum = float(np.abs(grad_out).sum())
    gate_tol = [1e-6 * beta * g_sum, 1e-6]
    tol = {"x_q": [1e-6 * beta, 0.0], "grad_x": [1e-6 * float(np.abs(grad_out).max()), 0.0],
           "grad_beta": [1e-6 * g_sum, 1e-6], "grad_z2": gate_tol}
    tol.update({f"grad_z{b}": gate_tol for b in (4, 8, 16, 32)})
    return 0.0, 0.0, tol


def _quantize_case(name, rng, *, beta, signed, gates, z2=None, x=None, channels=4,
                   note="", section="§2.2–2.6") -> Case:
    """A quantize case; ``x`` defaults to :func:`_quantize_values` shaped (channels, …)."""
    beta = f32s(beta)
    if x is None:
        # grid points planted at the case's width, at most 16 bits: a 32-bit grid point can lie
        # within s32/2 ≈ 1e−10·β of a coarser tie, which float32 cannot resolve
        bits = min(BIT_WIDTHS[sum(1 for z in gates if z not in (None, 0.0))], 16)
        planted = _quantize_values(rng, beta, signed, bits, 0).size
        n = channels * 3 * 2 * 2 * 2 - planted         # fill (C, 3, 2, 2, 2): a small conv weight
        x = _quantize_values(rng, beta, signed, bits, n).reshape(channels, 3, 2, 2, 2)
    grad_out = f32(rng.standard_normal(np.shape(x)))
    atol, rtol, tol = _quantize_tolerances(beta, grad_out)
    inputs = {"x": f32(x), "beta": beta,
              "z2": None if z2 is None else f32(z2),
              **{f"z{b}": (None if z is None else f32s(z)) for b, z in zip((4, 8, 16, 32), gates)},
              "signed": bool(signed), "grad_out": grad_out}
    return Case(name, "quantize", inputs, atol, rtol, note, section, tol)


def cases(rng) -> list:
    """The quantize cases, then the tie cases, drawn from ``rng`` (expected values not set)."""
    cases = []
    z2_signed = [1.0, 0.75, 0.0, 0.3]
    for signed in (True, False):
        kind = "signed" if signed else "unsigned"
        for bits in BIT_WIDTHS:
            gates = list(gates_for_bits(bits))
            if signed:
                # gates that are off are passed as exactly 0 (gradient 0), with pruning gates
                cases.append(_quantize_case(
                    f"quantize/{kind}/{bits}bit", rng, beta=0.8, signed=True, gates=gates,
                    z2=z2_signed,
                    note=f"{bits}-bit grid via 0/1 gates (off gates passed as 0.0: gradient 0); "
                         "z2 per output channel, one channel pruned (z2 = 0)"))
            else:
                gates = [z if z else None for z in gates]
                cases.append(_quantize_case(
                    f"quantize/{kind}/{bits}bit", rng, beta=2.5, signed=False, gates=gates,
                    note=f"{bits}-bit unsigned grid via 0/1 gates (off gates passed as None: "
                         "gradient None); no z2"))
    cases += [
        _quantize_case("quantize/signed/fractional", rng, beta=1.25, signed=True,
                       gates=[0.7, 0.45, 0.8, 0.3], z2=[0.9, 0.35, 1.0, 0.6],
                       note="fractional gates and pruning gates (training-mode samples)"),
        _quantize_case("quantize/unsigned/fractional", rng, beta=0.6, signed=False,
                       gates=[0.55, 0.85, 0.65, 0.4],
                       note="fractional gates, no z2"),
        _quantize_case("quantize/signed/fractional_8bit", rng, beta=0.3, signed=True,
                       gates=[0.6, 0.9, 0.0, None], z2=[0.2, 0.95, 0.5, 0.7],
                       note="fractional z4, z8; z16 exactly 0 (gradient 0), z32 None"),
        _quantize_case("quantize/zero_gate/z8_zero", rng, beta=1.0, signed=True,
                       gates=[0.7, 0.0, 0.5, 0.9], z2=[0.8, 1.0, 0.4, 0.6],
                       note="official convention (§2.5): z8 is exactly 0, so e8, e16 and "
                            "e32 are not computed and the gradients for z8, z16 and z32 are 0 "
                            "(not e8 + …)"),
        _quantize_case("quantize/zero_gate/z4_zero", rng, beta=1.7, signed=False,
                       gates=[0.0, 0.6, 0.6, 0.6],
                       note="z4 exactly 0: 2-bit output, gradients for z4…z32 all 0 (§2.5)"),
    ]
    golden_x = [-1.3, -0.5, -0.1, 0.0, 0.07, 0.26, 0.49, 1.2, 2.0]
    for signed, (z4, z8) in [(True, (0, 0)), (True, (1, 0)), (True, (1, 1)), (True, (0.5, 0.8)),
                             (False, (0, 0)), (False, (1, 1))]:
        kind = "signed" if signed else "unsigned"
        cases.append(_quantize_case(
            f"quantize/golden/{kind}_z4_{z4:g}_z8_{z8:g}".replace(".", "p"), rng, beta=1.0,
            signed=signed, gates=[float(z4), float(z8), None, None], x=golden_x,
            note="the golden vector of §11.4 (β = 1, no z2)", section="§11.4"))
    cases += _tie_cases(rng)
    return cases


def _exact_ties(values: np.ndarray, beta: float, signed: bool) -> np.ndarray:
    """The values whose clipped value is exactly the value itself in float32 and float64, with
    the ReLU-form clip and with np.clip: their rounding ties are exact in every formula."""
    keep = np.ones(values.shape, dtype=bool)
    for dtype in (np.float64, np.float32):
        for clip in ("official", "numpy"):
            x = values.astype(dtype)
            x_c = decompose(x, dtype(beta), signed, clip)["x_c"]
            keep &= (x_c == x) & (x.astype(np.float64) == values)
    return values[keep]


def _tie_cases(rng) -> list:
    """Exact rounding ties (§2.3a): β chosen so that s_b is a power of two."""
    cases = []
    ties = [  # (signed, bits at which the values tie, gates, label)
        (False, 2, [None, None, None, None], "unsigned_2bit"),
        (False, 4, [1.0, 0.0, None, None], "unsigned_4bit"),
        (False, 4, [0.5, None, None, None], "unsigned_4bit_fractional"),
        (False, 8, [1.0, 1.0, 0.0, None], "unsigned_8bit"),
        (False, 16, [1.0, 1.0, 1.0, 0.0], "unsigned_16bit"),
        (True, 2, [None, None, None, None], "signed_2bit"),
        (True, 4, [1.0, 0.0, 0.0, 0.0], "signed_4bit"),
        (True, 8, [1.0, 1.0, 0.0, 0.0], "signed_8bit"),
    ]
    for signed, bits, gates, label in ties:
        step = 2.0 ** -bits                            # s_b, a power of two
        beta = step * (2 ** bits - 1) / (2 if signed else 1)
        top = _levels(bits, signed)
        j = np.arange(-top - 1 if signed else 0, top)
        if j.size > 48:
            j = np.sort(rng.choice(j, 48, replace=False))
        exact = _exact_ties(step * (j + 0.5), beta, signed)
        if exact.size < 2:
            raise RuntimeError(f"tie case {label}: no exact ties survived")
        plain = f32(rng.uniform(-beta if signed else 0.0, beta, 6))
        x = np.concatenate([exact, plain])
        cases.append(_quantize_case(
            f"quantize/ties/{label}", rng, beta=beta, signed=signed, gates=gates, x=x,
            note=f"{exact.size} values exactly halfway between two {bits}-bit levels "
                 f"(s{bits} = 2^-{bits}): round half to even.  The ties are exact in float32 "
                 "and float64 and with either clip formula, so no tie allowance is applied "
                 "(§2.3a)", section="§2.3a, §2.4"))
    return cases

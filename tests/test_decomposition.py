"""Tests of decompositions beyond doubling (bbits_ref/method/decomposition.py; docs/method.md §2.8).

* doubling (the default) is bit for bit ``quantizer.decompose``, on random and tie-planted data;
* where the widths divide (2 → 4 → 8, 3 → 6, 2 → 6) the residual sum is direct quantization,
  where they do not (2 → 3, 4 → 6, the chain (2, 3, 4, 6, 8)) it is not, by a measured amount;
* the 1-bit stage takes exactly the values {−s1, 0} / {0, s1};
* the gated composite: forward against the NumPy decomposition and ``bb_quantize_composite``,
  gradients against finite differences (rounding frozen) and a HIPS-autograd oracle.
"""
import warnings
from fractions import Fraction

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import bbits_ref.method.decomposition as dc
from bbits_ref.autograd.engine import Tensor
from bbits_ref.autograd.gradcheck import check_grads
from bbits_ref.method.decomposition import (DOUBLING, chain_quantize_composite, check_bit_widths,
                                            cost_summary, cumulative, decompose_chain,
                                            direct_mismatch, equality_report, grid_levels,
                                            grids_nest, quantize_direct_bits,
                                            residual_tensor_count, stage_step_sizes)
from bbits_ref.method.quantizer import (bb_quantize_composite, clip_range, decompose,
                                        quantize_direct, step_sizes)
from oracles.quantizer_oracle import EPS, clip_numpy, clip_official, round_ste

CHAIN = (2, 3, 4, 6, 8)


# --------------------------------------------------------------------------- helpers

def tie_planted(rng, beta, signed, dtype=np.float64, n=400):
    """Random values plus exact rounding ties of the 2-, 4- and 8-bit grids, bounds and zeros."""
    lo, hi = clip_range(dtype(beta), signed)
    x = rng.uniform(-1.3 * beta if signed else -0.3 * beta, 1.3 * beta, n).astype(dtype)
    steps = step_sizes(dtype(beta), signed)
    k = np.arange(-3, 4) if signed else np.arange(0, 7)
    ties = np.concatenate([(k + dtype(0.5)) * s for s in steps[:3]]).astype(dtype)
    return np.concatenate([x, ties, np.array([lo, hi, 0.0, -0.0, beta, -beta], dtype)])


def signed_data(signed, n=100_001, beta=1.0):
    """Dense random values over the whole range and beyond: every level and every offset of
    the grids up to 8 bits is reached, and no value sits on an exact rounding tie (a regular
    sweep would: there an ulp of float error in A_b can flip a rounding by a whole step)."""
    rng = np.random.default_rng(n)
    return rng.uniform(-1.2 * beta if signed else -0.2 * beta, 1.2 * beta, n)


def nested_numpy(parts, gates, z2=1.0):
    """z2·(A + z·(e + z·(…))) from NumPy parts, in the composite's order (innermost first)."""
    values = [v for k, v in parts.items() if k != "x_c"]
    depth = next((i for i, z in enumerate(gates) if z == 0), len(gates))
    inner = values[depth]
    for level in range(depth - 1, -1, -1):
        inner = values[level] + gates[level] * inner
    return z2 * inner


def run(fn, x, beta, gates, z2, g, **kw):
    """Forward and backward; gradients for x, beta, z2 and every gate (0 where unused)."""
    xt = Tensor(np.asarray(x, np.float64), requires_grad=True)
    bt = Tensor(np.asarray(beta, np.float64), requires_grad=True)
    zt = None if z2 is None else Tensor(np.asarray(z2, np.float64), requires_grad=True)
    gt = [Tensor(np.asarray(z, np.float64), requires_grad=True) for z in gates]
    out = fn(xt, bt, gt, zt, **kw)
    out.backward(np.asarray(g, np.float64))
    grad = lambda t: np.zeros_like(t.data) if t.grad is None else t.grad
    grads = {"x": grad(xt), "beta": grad(bt), **{f"gate{i}": grad(t) for i, t in enumerate(gt)}}
    if zt is not None:
        grads["z2"] = grad(zt)
    return out.data, grads


# --------------------------------------------------------------------------- HIPS oracle

def oracle_chain(x, beta, z2, *gates, widths, signed, clip="official"):
    """The chain written independently with autograd.numpy (straight-through rounding)."""
    hi = (1 - EPS) * beta
    lo = -hi if signed else 0.0 * beta
    x_c = (clip_official if clip == "official" else clip_numpy)(x, lo, hi)
    span = 2.0 * beta if signed else beta
    doubling = {2: span / 3.0}
    for b in (2, 4, 8, 16):
        doubling[2 * b] = doubling[b] / (2.0 ** b + 1)
    steps = [(doubling[2] if signed else span) if b == 1
             else doubling.get(b, span / (2.0 ** b - 1)) for b in widths]
    depth = 0
    while depth < len(gates) and np.all(np.asarray(autograd.tracer.getval(gates[depth])) != 0):
        depth += 1
    first = anp.where(x_c < 0, x_c, 0.0) if (widths[0] == 1 and signed) else x_c
    parts = [steps[0] * round_ste(first / steps[0])]
    residual = x_c
    for k in range(1, depth + 1):
        residual = residual - parts[-1]
        parts.append(steps[k] * round_ste(residual / steps[k]))
    inner = parts[depth]
    for k in range(depth - 1, -1, -1):
        inner = parts[k] + gates[k] * inner
    return z2 * inner


def oracle_grads(x, beta, z2b, gates, g, **kw):
    args = [np.asarray(a, np.float64) for a in (x, beta, z2b, *gates)]
    f = lambda *a: anp.sum(g * oracle_chain(*a, **kw))
    names = ["x", "beta", "z2"] + [f"gate{i}" for i in range(len(gates))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Output seems independent of input")
        return oracle_chain(*args, **kw), {n: autograd.grad(f, i)(*args)
                                           for i, n in enumerate(names)}


# --------------------------------------------------------------------------- doubling: bit-exact

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("signed", [True, False])
def test_doubling_is_quantizer_decompose_bit_for_bit(signed, dtype):
    rng = np.random.default_rng(1)
    for beta in (0.37, 1.0, 2.9):
        x = tie_planted(rng, beta, signed, dtype)
        want = decompose(x, dtype(beta), signed)
        got = decompose_chain(x, dtype(beta), signed=signed)              # the default
        assert DOUBLING == (2, 4, 8, 16, 32) and list(got) == list(want)
        general = dc._decompose_general(x, dtype(beta), DOUBLING, signed, "official")
        for key in want:
            assert got[key].dtype == dtype
            np.testing.assert_array_equal(got[key], want[key])
            np.testing.assert_array_equal(general[key], want[key])    # the general path too
        prefix = decompose_chain(x, dtype(beta), (2, 4, 8), signed=signed)
        assert list(prefix) == ["x_c", "A2", "e4", "e8"]
        assert all(np.array_equal(prefix[k], want[k]) for k in prefix)


def test_steps_of_the_doubling_widths_are_the_official_chain():
    for signed in (True, False):
        for dtype in (np.float64, np.float32):
            assert stage_step_sizes(dtype(1.7), signed=signed) == step_sizes(dtype(1.7), signed)
        steps = stage_step_sizes(1.7, CHAIN, signed=signed)
        span = 3.4 if signed else 1.7
        for b, s in zip(CHAIN, steps):
            assert s == pytest.approx(span / (2 ** b - 1), rel=1e-15)
        assert steps[1] == span / 7 and steps[2] == step_sizes(1.7, signed)[1]


def test_direct_quantization_for_any_width():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1.5, 1.5, 1000)
    for b in DOUBLING:
        np.testing.assert_array_equal(quantize_direct_bits(x, 1.1, b, signed=True),
                                      quantize_direct(x, 1.1, b, True))
    x_c = np.clip(x, *clip_range(1.1, True))
    q6 = quantize_direct_bits(x, 1.1, 6, signed=True)
    np.testing.assert_array_equal(np.unique(np.round(q6 / (2.2 / 63))), np.arange(-31, 32))
    assert np.abs(q6 - x_c).max() <= 2.2 / 63 / 2 * (1 + 1e-12)


# --------------------------------------------------------------------------- equality where b | b'

@pytest.mark.parametrize("widths", [(2, 4, 8), (3, 6), (2, 6), (1, 2, 4, 8), (2, 3, 6)])
@pytest.mark.parametrize("signed", [True, False])
def test_residual_sum_equals_direct_where_the_widths_divide(widths, signed):
    """(2, 3, 6): A3 is off the 3-bit grid, yet A6 is direct again (2 | 6 and 3 | 6)."""
    rows = equality_report(widths, signed=signed)
    mismatch = direct_mismatch(signed_data(signed, beta=1.3), 1.3, widths, signed=signed)
    for row in rows:
        m = mismatch[row.bits]
        if row.equals_direct:
            assert m.worst_steps < 1e-9 and m.fraction == 0.0, (widths, m)
            want = (2 ** row.bits - 1 if signed else 2 ** row.bits) if row.bits > 1 else 2
            assert m.levels == m.direct_levels == want, (widths, m)
        else:
            assert widths == (2, 3, 6) and row.bits == 3 and m.worst_steps > 0.5
    assert rows[-1].equals_direct


def test_the_general_path_on_doubling_widths_also_equals_direct():
    x = signed_data(True, 20_001)
    parts = dc._decompose_general(x, 0.8, (2, 4, 8), True, "official")
    for b, a in cumulative(parts).items():
        np.testing.assert_allclose(a, quantize_direct(x, 0.8, b, True), rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- mismatch where b ∤ b'

@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("pair, worst", [((2, 3), Fraction(2, 3)), ((4, 6), Fraction(4, 5))])
def test_residual_sum_misses_direct_where_the_widths_do_not_divide(pair, worst, signed):
    """A_b' − direct_b' ∈ {f, f − 1}·s_b' with f the offset of A_b on the finer grid:
    s2/s3 = 7/3 gives offsets in thirds (worst 2/3 of a step), s4/s6 = 21/5 in fifths (4/5)."""
    row = equality_report(pair)[1]
    m = direct_mismatch(signed_data(signed), 1.0, pair, signed=signed)[pair[1]]
    assert not row.nests and not row.equals_direct
    assert row.step_ratio.denominator == worst.denominator
    assert m.worst_steps == pytest.approx(float(worst), abs=1e-9)
    assert 0.25 < m.fraction < 0.95
    assert m.levels > m.direct_levels == (2 ** pair[1] - 1 if signed else 2 ** pair[1])


@pytest.mark.parametrize("signed", [True, False])
def test_the_2_3_4_6_8_chain_leaves_the_direct_grid_after_2_bits(signed):
    x = signed_data(signed)
    mismatch = direct_mismatch(x, 1.0, CHAIN, signed=signed)
    assert [r.equals_direct for r in equality_report(CHAIN)] == [True, False, False, False, False]
    assert mismatch[2].worst_steps == 0
    for b, worst in zip((3, 4, 6, 8), (Fraction(2, 3), Fraction(6, 7), Fraction(4, 5),
                                       Fraction(20, 21))):
        m = mismatch[b]
        assert m.worst_steps == pytest.approx(float(worst), abs=1e-9), (b, m)
        assert m.levels > m.direct_levels, (b, m)      # not a b-bit quantizer any more
    # …yet every stage stays within half of its own step of x_c
    parts = decompose_chain(x, 1.0, CHAIN, signed=signed)
    for b, s in zip(CHAIN, stage_step_sizes(1.0, CHAIN, signed=signed)):
        assert np.abs(cumulative(parts)[b] - parts["x_c"]).max() <= s / 2 * (1 + 1e-9)


def test_grids_nest_iff_b_divides_b_prime():
    """Checked against the grids themselves: every level of the b-bit grid on the b'-bit one."""
    for b in range(2, 9):
        for b_prime in range(b + 1, 13):
            coarse, fine = (grid_levels(1.0, k, signed=True) for k in (b, b_prime))
            on_grid = np.all(np.min(np.abs(coarse[:, None] - fine[None, :]), axis=1) < 1e-12)
            assert grids_nest(b, b_prime) == bool(on_grid) == (b_prime % b == 0), (b, b_prime)
            assert ((2 ** b_prime - 1) % (2 ** b - 1) == 0) == (b_prime % b == 0)
    assert [grids_nest(*p) for p in ((2, 4), (4, 8), (2, 6), (3, 6), (2, 3), (4, 6))] == \
        [True, True, True, True, False, False]


def test_equality_report_rows():
    rows = equality_report()
    assert [r.bits for r in rows] == list(DOUBLING) and all(r.equals_direct for r in rows)
    assert [r.step_ratio for r in rows[1:]] == [5, 17, 257, 65537]     # the official divisors
    assert rows[1].describe() == "2 → 4: s2/s4 = 5, grids nest; A4 = direct 4-bit"
    assert equality_report((4, 6))[1].describe() == \
        "4 → 6: s4/s6 = 21/5, grids do not nest; A6 ≠ direct 6-bit"
    one_three = equality_report((1, 3), signed=True)[1], equality_report((1, 3), signed=False)[1]
    assert [r.nests for r in one_three] == [False, True]
    assert [r.step_ratio for r in one_three] == [Fraction(7, 3), 7]


# --------------------------------------------------------------------------- the 1-bit stage

@pytest.mark.parametrize("signed", [True, False])
def test_the_one_bit_stage_takes_exactly_two_values(signed):
    beta = 1.7
    x = np.concatenate([signed_data(signed, 10_001, beta), clip_range(beta, signed)])
    (s1,) = stage_step_sizes(beta, (1,), signed=signed)
    assert s1 == (2 * beta / 3 if signed else beta)
    a1 = decompose_chain(x, beta, (1, 2, 4), signed=signed)["A1"]
    want = [-s1, 0.0] if signed else [0.0, s1]
    np.testing.assert_array_equal(np.unique(a1), want)
    np.testing.assert_array_equal(grid_levels(beta, 1, signed=signed), want)
    x_c = np.clip(x, *clip_range(beta, signed))
    if signed:      # nearest of the two levels; the bottom of the range −(1 − ε)β → −s1, not −2·s1
        np.testing.assert_array_equal(a1 == -s1, x_c < -s1 / 2)
        assert decompose_chain(np.array([-5.0]), beta, (1, 2), signed=True)["A1"][0] == -s1
    else:
        np.testing.assert_array_equal(a1 == s1, x_c > s1 / 2)
    np.testing.assert_array_equal(quantize_direct_bits(x, beta, 1, signed=signed), a1)
    # the 2-bit stage takes over: A1 + e2 is direct 2-bit quantization, ternary when signed
    a2 = cumulative(decompose_chain(x, beta, (1, 2), signed=signed))[2]
    s2 = step_sizes(beta, signed)[0]
    np.testing.assert_allclose(a2, quantize_direct(x, beta, 2, signed), rtol=0, atol=1e-14)
    assert np.unique(np.round(a2 / s2)).size == (3 if signed else 4)


# --------------------------------------------------------------------------- cost

def test_residual_tensor_counts_and_cost():
    assert residual_tensor_count() == 4                       # e4, e8, e16, e32
    assert residual_tensor_count(range(1, 33)) == 31          # every width: + A1 = 32 tensors
    assert residual_tensor_count(range(2, 9)) == 6
    assert residual_tensor_count(CHAIN) == 4 and residual_tensor_count((8,)) == 0
    every = cost_summary(range(1, 33))
    assert every["tensors"] == every["rounding_passes"] == 32 and every["residual_tensors"] == 31
    assert every["vs_doubling"] == 32 / 5 and every["gates"] == 31
    assert cost_summary()["tensors"] == 5 and cost_summary()["bit_widths"] == DOUBLING
    # a forward pass really computes that many stage tensors
    parts = decompose_chain(np.linspace(0, 1, 7), 1.0, range(1, 33), signed=False)
    assert len(parts) - 1 == every["tensors"]


# --------------------------------------------------------------------------- gated composite

@pytest.mark.parametrize("signed", [True, False])
def test_composite_on_doubling_is_bb_quantize_composite(signed):
    rng = np.random.default_rng(4)
    x = tie_planted(rng, 1.3, signed, n=63).reshape(6, -1)
    z2 = rng.uniform(0.05, 0.95, 6)
    g = rng.standard_normal(x.shape)
    for gates in (tuple(rng.uniform(0.05, 0.95, 4)), (1.0, 1.0, 0.6, 0.0)):
        got_q, got = run(lambda x, b, gt, z, **kw: chain_quantize_composite(
            x, b, gt, z, signed=signed), x, 1.3, gates, z2, g)
        want_q, want = run(lambda x, b, gt, z, **kw: bb_quantize_composite(
            x, b, z, *gt, signed=signed), x, 1.3, gates, z2, g)
        np.testing.assert_array_equal(got_q, want_q)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-13,
                                       err_msg=name)


@pytest.mark.parametrize("widths", [CHAIN, (1, 2, 4, 8), (1, 3, 6)])
@pytest.mark.parametrize("signed", [True, False])
def test_composite_forward_is_the_numpy_decomposition(widths, signed):
    rng = np.random.default_rng(5)
    x = np.concatenate([signed_data(signed, 301), tie_planted(rng, 0.9, signed, n=50)])
    parts = decompose_chain(x, 0.9, widths, signed=signed)
    sums = cumulative(parts)
    n = len(widths) - 1
    for on in range(n + 1):                           # 0/1 gates select A_b
        gates = [1.0] * on + [0.0] * (n - on)
        x_q = chain_quantize_composite(Tensor(x), 0.9, gates, bit_widths=widths,
                                       signed=signed).data
        np.testing.assert_array_equal(x_q, nested_numpy(parts, gates))
        np.testing.assert_allclose(x_q, sums[widths[on]], rtol=0, atol=1e-14)
    gates = list(rng.uniform(0.05, 0.95, n))          # fractional gates blend the stages
    x_q = chain_quantize_composite(Tensor(x), 0.9, gates, bit_widths=widths, signed=signed).data
    np.testing.assert_array_equal(x_q, nested_numpy(parts, gates))


def chain_case(rng, signed, shape=(3, 4)):
    """x away from the clip bounds and (for the 1-bit min) from 0, fractional gates."""
    beta = rng.uniform(0.5, 2.0)
    x = rng.uniform(-1.4 if signed else -0.4, 1.4, shape) * beta
    near = (np.abs(np.abs(x) - beta) < 1e-2 * beta) | (np.abs(x) < 1e-2 * beta)
    x[near] += 3e-2 * beta
    return x, beta, rng.uniform(0.05, 0.95, shape[0])


@pytest.mark.parametrize("clip", ["official", "numpy"])
@pytest.mark.parametrize("widths", [CHAIN, (1, 2, 4, 8), (1, 3, 6)])
@pytest.mark.parametrize("signed", [True, False])
def test_composite_gradients_match_finite_differences_and_the_oracle(widths, signed, clip):
    rng = np.random.default_rng(6)
    x, beta, z2 = chain_case(rng, signed)
    gates = list(rng.uniform(0.05, 0.95, len(widths) - 1))

    def f(x, b, z2, *gates):
        return chain_quantize_composite(x, b, gates, z2, bit_widths=widths, signed=signed,
                                        clip=clip)

    res = check_grads(f, x, np.asarray(beta), z2, *gates, atol=1e-8)
    assert res, str(res)
    g = rng.standard_normal(x.shape)
    got_q, got = run(lambda x, b, gt, z, **kw: chain_quantize_composite(
        x, b, gt, z, bit_widths=widths, signed=signed, clip=clip), x, beta, gates, z2, g)
    want_q, want = oracle_grads(x, beta, z2.reshape(-1, 1), gates, g, widths=widths,
                                signed=signed, clip=clip)
    np.testing.assert_array_equal(got_q, want_q)
    for name in want:
        np.testing.assert_allclose(np.reshape(got[name], np.shape(want[name])), want[name],
                                   rtol=1e-11, atol=1e-12, err_msg=name)


def test_x_gradient_of_the_signed_one_bit_chain_is_scaled_by_the_gate():
    """The 1-bit min passes no gradient where x_c > 0, so there a later gate z scales it."""
    x = np.array([-0.9, -0.2, 0.3, 0.8, 1.5])
    xt = Tensor(x, requires_grad=True)
    chain_quantize_composite(xt, 1.0, [0.4], bit_widths=(1, 2), signed=True).sum().backward()
    np.testing.assert_allclose(xt.grad, [1.0, 1.0, 0.4, 0.4, 0.0])


def test_a_zero_gate_stops_the_chain_and_gets_no_gradient():
    x = np.linspace(-1.1, 1.1, 23)
    gates = [0.7, 0.0, 0.5, 0.9]
    out, grads = run(lambda x, b, gt, z, **kw: chain_quantize_composite(
        x, b, gt, z, bit_widths=CHAIN, signed=True), x, 1.0, gates, None, np.ones_like(x))
    parts = decompose_chain(x, 1.0, CHAIN, signed=True)
    np.testing.assert_array_equal(out, parts["A2"] + 0.7 * parts["e3"])
    assert grads["gate1"] == grads["gate2"] == grads["gate3"] == 0 and grads["gate0"] != 0


def test_float32_in_float32_out():
    x = np.linspace(-1, 1, 9, dtype=np.float32)
    out = chain_quantize_composite(Tensor(x), np.float32(0.8), [1.0, 1.0], bit_widths=(2, 3, 6),
                                   signed=True)
    assert out.dtype == np.float32
    parts = decompose_chain(x, np.float32(0.8), (2, 3, 6), signed=True)
    assert all(v.dtype == np.float32 for v in parts.values())
    np.testing.assert_array_equal(out.data, nested_numpy(parts, [1.0, 1.0]))


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("widths, says", [
    ((2, 2, 4), "strictly increasing"),
    ((4, 2), "strictly increasing"),
    ((0, 2), "must lie in 1…32; got 0"),
    ((2, 33), "must lie in 1…32; got 33"),
    ((2, 1, 4), "1-bit stage can only come first"),
    ((), "at least one bit width"),
    ((2, 4.0), "whole numbers (int); got 4.0"),
    ((True, 2), "whole numbers (int); got True"),
    ("248", "a sequence of whole numbers"),
    (8, "a sequence of whole numbers"),
])
def test_bad_bit_widths(widths, says):
    with pytest.raises(ValueError) as info:
        check_bit_widths(widths)
    assert says in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="bit"):
        decompose_chain(np.zeros(3), 1.0, widths, signed=True)


@pytest.mark.parametrize("call, error, says", [
    (lambda: decompose_chain(np.ones(3), float("nan"), CHAIN, signed=True), ValueError,
     "finite and > 0; got nan"),
    (lambda: decompose_chain(np.ones(3), 0.0, CHAIN, signed=True), ValueError, "> 0; got 0.0"),
    (lambda: decompose_chain(np.ones(3), 1.0, signed=True), None, None),
    (lambda: decompose_chain(np.ones(3), 1.0, CHAIN, signed="yes"), TypeError, "signed must be"),
    (lambda: decompose_chain(np.ones(3), 1.0, CHAIN, signed=True, clip="torch"), ValueError,
     "clip must be"),
    (lambda: chain_quantize_composite(np.ones(3), 1.0, [1.0], bit_widths=CHAIN, signed=True),
     ValueError, "has 4 residual(s), so gates needs 4 value(s)"),
    (lambda: chain_quantize_composite(np.ones(3), 1.0, [1.0, 1.5], bit_widths=(2, 3, 4),
                                      signed=True), ValueError, "gate z4 must lie in [0, 1]"),
    (lambda: chain_quantize_composite(np.ones(3), 1.0, [np.ones(2)], bit_widths=(2, 3),
                                      signed=True), ValueError, "gate z3 must be a scalar"),
    (lambda: equality_report((1, 2)), ValueError, "needs signed=True or signed=False"),
    (lambda: grid_levels(1.0, 20, signed=True), ValueError, "bits ≤ 16"),
    (lambda: cumulative({"x_c": 1.0}), ValueError, "the dict of decompose_chain"),
])
def test_errors_are_one_line(call, error, says):
    if error is None:
        call()
        return
    with pytest.raises(error) as info:
        call()
    assert says in str(info.value) and "\n" not in str(info.value)

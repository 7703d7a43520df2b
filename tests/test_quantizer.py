"""Tests of the Bayesian Bits quantizer (bbits_ref/quantizer.py; docs/method.md §2, §11).

Three independent references for the fused primitive ``bb_quantize``:
  * the closed forms of §2.6, written out here by hand from :func:`decompose`;
  * central finite differences with the rounding offsets frozen (``check_grads``);
  * the literal formula differentiated by autograd: the engine composite
    ``bb_quantize_composite`` and the HIPS-autograd oracle in tests/oracles/quantizer_oracle.py.

Exact rounding ties (a value exactly halfway between two grid points) have measure zero; the
decomposition property holds everywhere else (§2.4), so the property tests leave out the
values that lie within a small distance of a tie at the bit width being checked.
"""
import warnings

import autograd
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

import bbits_ref.method.quantizer as qz
from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import PRIMITIVES, Primitive, Tensor
from bbits_ref.autograd.gradcheck import check_grads, check_primitive, make_case
from bbits_ref.method.quantizer import (BIT_WIDTHS, CLIP_EPS, bb_quantize, bb_quantize_composite,
                                 check_bits, clip_range, decompose, fixed_quantize, init_range,
                                 quantize_direct, step_sizes)
from oracles.quantizer_oracle import ORACLES

oracle_bb_quantize = ORACLES["bb_quantize"]
GATES = ("z4", "z8", "z16", "z32")
K = 1 - CLIP_EPS


# --------------------------------------------------------------------------- helpers

def level_of(values, step):
    """Grid index of quantized values (exact for values on the grid)."""
    return np.round(np.asarray(values) / step)


def cumulative(d):
    """[A2, A4, A8, A16, A32] from the residuals of :func:`decompose`, summed left to right."""
    out = [d["A2"]]
    for name in ("e4", "e8", "e16", "e32"):
        out.append(out[-1] + d[name])
    return out


def tie_distance(x_c, step):
    """Distance of x_c/step from the nearest .5 tie (0 on a tie)."""
    u = np.asarray(x_c) / step
    return np.abs(u - np.floor(u) - 0.5)


def run(fn, x, beta, z2, gates, g, signed, clip="official", dtype=np.float64):
    """Forward and backward of ``fn``; returns (x_q, grads dict) in ``dtype``."""
    xt = Tensor(np.asarray(x, dtype), requires_grad=True)
    bt = Tensor(np.asarray(beta, dtype), requires_grad=True)
    zt = None if z2 is None else Tensor(np.asarray(z2, dtype), requires_grad=True)
    gt = [Tensor(np.asarray(z, dtype), requires_grad=True) for z in gates]
    out = fn(xt, bt, zt, *gt, signed=signed, clip=clip)
    out.backward(np.asarray(g, dtype))
    grad = lambda t: np.zeros_like(t.data) if t.grad is None else t.grad  # noqa: E731
    # (a gate that the function skipped, or never used, got no gradient: 0)
    grads = {"x": grad(xt), "beta": grad(bt), **{n: grad(t) for n, t in zip(GATES, gt)}}
    if zt is not None:
        grads["z2"] = grad(zt)
    return out.data, grads


def weight_case(rng, signed, shape=(4, 3, 5), beta=None):
    """A weight-like tensor with values in range, saturated, on both bounds and exact zeros."""
    beta = rng.uniform(0.5, 2.0) if beta is None else beta
    lo, hi = clip_range(beta, signed)
    x = rng.uniform(-1.4 * beta if signed else -0.5 * beta, 1.4 * beta, shape)
    flat = x.reshape(-1)
    flat[:4] = [lo, hi, 0.0, -0.0]
    return x, beta


def by_hand(x, beta, z2, gates, g, signed):
    """The closed forms of §2.6 from the NumPy decomposition (z2 of shape (C,))."""
    d = decompose(x, beta, signed)
    lo, hi = clip_range(beta, signed)
    z2b = np.asarray(z2).reshape((-1,) + (1,) * (x.ndim - 1))
    parts = [d["A2"], d["e4"], d["e8"], d["e16"], d["e32"]]
    tails = [parts[4]]                              # e32, e16 + z32·e32, …, A2 + z4·(…)
    for level in range(3, -1, -1):
        tails.insert(0, parts[level] + gates[level] * tails[0])
    x_q = z2b * tails[0]
    inside = (x > lo) & (x < hi)
    dxc_dbeta = K * (x >= hi) - (K * (x <= lo) if signed else 0.0)
    grads = {"x": g * z2b * inside,
             "beta": np.sum(g * ((x_q - z2b * d["x_c"]) / beta + z2b * dxc_dbeta)),
             "z2": np.sum(g * tails[0], axis=tuple(range(1, x.ndim)))}
    lower = 1.0
    for level, name in enumerate(GATES, start=1):
        grads[name] = np.sum(g * z2b * tails[level]) * lower
        lower *= gates[level - 1]
    return x_q, grads


def oracle_run(x, beta, z2b, gates, g, signed, clip="official"):
    """Forward and all VJPs of the HIPS-autograd oracle (z2b already broadcastable)."""
    args = [np.asarray(a, np.float64) for a in (x, beta, z2b, *gates)]
    f = lambda *a: np.sum(g * oracle_bb_quantize(*a, signed=signed, clip=clip))  # noqa: E731
    value = oracle_bb_quantize(*args, signed=signed, clip=clip)
    names = ["x", "beta", "z2", *GATES]
    with warnings.catch_warnings():     # a gate that is exactly 0 leaves the output independent
        warnings.filterwarnings("ignore", "Output seems independent of input")
        return value, {n: autograd.grad(f, i)(*args) for i, n in enumerate(names)}


def assert_grads_close(got, want, rtol=1e-12, atol=1e-13, names=None):
    for name in names or want:
        np.testing.assert_allclose(np.asarray(got[name]).reshape(np.shape(want[name])),
                                   want[name], rtol=rtol, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- range and grid

@pytest.mark.parametrize("signed", [True, False])
def test_step_sizes_are_chained_and_are_the_b_bit_grid(signed):
    beta = 1.7
    steps = step_sizes(beta, signed)
    width = 2 * beta if signed else beta
    assert steps[0] == width / 3
    for s, s_next, divisor in zip(steps, steps[1:], (5, 17, 257, 65537)):
        assert s_next == s / divisor                     # chained, bit for bit
    for s, bits in zip(steps, BIT_WIDTHS):               # = the ordinary b-bit step (§2.3)
        assert s == pytest.approx(width / (2.0 ** bits - 1), rel=1e-14)
    assert all(s.dtype == np.float32 for s in step_sizes(np.float32(1.7), signed))


def test_clip_range_and_init_range():
    lo, hi = clip_range(2.0, True)
    assert hi == 2.0 * (1 - 1e-7) and lo == -hi
    lo, hi = clip_range(np.float32(2.0), False)
    assert lo == 0 and hi.dtype == np.float32 and hi < 2.0
    assert init_range(np.array([-0.2, 0.5, 0.1])) == (0.5, True)
    assert init_range(np.array([0.0, 0.3])) == (0.3, False)        # post-ReLU: unsigned
    assert init_range(np.array([-1.0, -2.0])) == (0.0, True)       # β = max(max(x), 0)
    assert init_range(Tensor(np.array([1.5, -3.0]))) == (1.5, True)  # β = max(x), not max|x|


# --------------------------------------------------------------------------- decomposition

@given(data=st.data(), signed=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]))
def test_decomposition_equals_direct_quantization(data, signed, dtype):
    """A_{2b} = s_{2b}·round(x_c/s_{2b}) for b in {2, 4, 8, 16} (§2.4), off exact ties.

    Values within 1e-9 (float64) or 1e-3 (float32) of a rounding tie are left out.  float32
    is checked up to 8 bits: at 16 bits x_c/s16 reaches 65535, where float32 resolves
    fractions only to ~4e-3, so the two formulas legitimately round differently near ties.
    """
    beta = data.draw(st.floats(0.05, 20.0))
    low = -1.5 if signed else -0.5
    x = data.draw(arrays(np.float64, st.integers(1, 40),
                         elements=st.floats(low * beta, 1.5 * beta)))
    x, beta = x.astype(dtype), dtype(beta)
    d = decompose(x, beta, signed)
    tol = 1e-9 if dtype == np.float64 else 1e-3
    bit_widths = (2, 4, 8, 16) if dtype == np.float64 else (2, 4, 8)
    for bits, a in zip(bit_widths, cumulative(d)):
        step = step_sizes(beta, signed)[BIT_WIDTHS.index(bits)]
        direct = quantize_direct(x, beta, bits, signed)
        keep = tie_distance(d["x_c"], step) > tol
        np.testing.assert_array_equal(level_of(a, step)[keep], level_of(direct, step)[keep])
        # same grid point; the sum of rounded residuals may differ from it by a few ulps
        np.testing.assert_allclose(a[keep], direct[keep], rtol=0,
                                   atol=8 * np.finfo(dtype).eps * beta)


@pytest.mark.parametrize("signed", [True, False])
def test_level_counts_match_the_table(signed):
    """Reachable integer levels (§2.4): signed 2-bit is ternary, 4-bit is −7…7, …"""
    beta = 1.3
    x = np.linspace(-1.2 * beta if signed else -0.2 * beta, 1.2 * beta, 400_001)
    for bits, a in zip((2, 4, 8, 16), cumulative(decompose(x, beta, signed))):
        step = step_sizes(beta, signed)[BIT_WIDTHS.index(bits)]
        levels = np.unique(level_of(a, step))
        half = 2 ** (bits - 1) - 1
        want = np.arange(-half, half + 1) if signed else np.arange(0, 2 ** bits)
        np.testing.assert_array_equal(levels, want)
    if not signed:
        assert cumulative(decompose(np.array([2 * beta]), beta, False))[1][0] == pytest.approx(
            beta, rel=1e-15)    # the unsigned top level is β itself


# --------------------------------------------------------------------------- golden vectors

X_GOLDEN = [-1.3, -0.5, -0.1, 0, 0.07, 0.26, 0.49, 1.2, 2.0]
GOLDEN = [  # §11.4: β = 1, z2 = 1; (signed, z4, z8, x_q, ∂x_q/∂β, ∂x_q/∂x)
    (True, 0, 0, [-2 / 3, -2 / 3, 0, 0, 0, 0, 2 / 3, 2 / 3, 2 / 3],
     [-0.666667, -0.166667, 0.1, 0, -0.07, -0.26, 0.176667, 0.666667, 0.666667], None),
    (True, 1, 0, [-0.933333, -0.533333, -0.133333, 0, 0.133333, 0.266667, 0.533333, 0.933333,
                  0.933333], None, None),
    (True, 1, 1, [-0.996078, -0.501961, -0.101961, 0, 0.070588, 0.258824, 0.486275, 0.996078,
                  0.996078], None, None),
    (True, 0.5, 0.8, [-0.825098, -0.587451, -0.054118, 0, 0.041569, 0.130196, 0.581176,
                      0.825098, 0.825098], None, None),
    (False, 0, 0, [0, 0, 0, 0, 0, 1 / 3, 1 / 3, 1, 1], None, [0, 0, 0, 0, 1, 1, 1, 0, 0]),
    (False, 1, 1, [0, 0, 0, 0, 0.070588, 0.258824, 0.490196, 1, 1], None, None),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("signed, z4, z8, want_q, want_dbeta, want_dx", GOLDEN)
def test_golden_vectors(signed, z4, z8, want_q, want_dbeta, want_dx, dtype):
    x = np.array(X_GOLDEN, dtype)
    n = len(x)
    dbeta, dx = np.zeros(n), np.zeros(n)
    for i in range(n):                       # one backward per element: ∂x_q[i]/∂β
        xt = Tensor(x, requires_grad=True)
        bt = Tensor(np.array(1.0, dtype), requires_grad=True)
        out = bb_quantize(xt, bt, None, z4, z8, signed=signed)
        out.backward(np.eye(n, dtype=dtype)[i])
        dbeta[i], dx[i] = bt.grad, xt.grad[i]
    np.testing.assert_allclose(out.data, want_q, atol=1e-6)
    if want_dbeta is not None:
        np.testing.assert_allclose(dbeta, want_dbeta, atol=1e-6)
    if want_dx is not None:
        np.testing.assert_allclose(dx, want_dx, atol=0)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("signed", [True, False])
def test_closed_form_gradients_by_hand(signed):
    """dx = z2·1[lo<x<hi], the β formula and the gate gradients of §2.6 (float64)."""
    rng = np.random.default_rng(3)
    x, beta = weight_case(rng, signed)
    z2 = rng.uniform(0.05, 0.95, x.shape[0])
    gates = tuple(rng.uniform(0.05, 0.95, 4))
    g = rng.standard_normal(x.shape)
    want_q, want = by_hand(x, beta, z2, gates, g, signed)
    got_q, got = run(bb_quantize, x, beta, z2, gates, g, signed)
    np.testing.assert_allclose(got_q, want_q, rtol=1e-13, atol=1e-15)
    assert_grads_close(got, want)
    assert set(np.unique(got["x"] / (g * z2.reshape(-1, 1, 1)))) == {0.0, 1.0}
    assert got["beta"] != pytest.approx(np.sum(g * (want_q - z2.reshape(-1, 1, 1) * x) / beta))


@pytest.mark.parametrize("clip", ["official", "numpy"])
@pytest.mark.parametrize("signed", [True, False])
def test_gradients_match_finite_differences(signed, clip):
    """Engine gradient = central differences of the function with rounding frozen."""
    rng = np.random.default_rng(11)
    beta = rng.uniform(0.5, 2.0)
    x = rng.uniform(-1.4 if signed else -0.4, 1.4, (3, 2, 2)) * beta
    x[np.abs(np.abs(x) - beta) < 1e-2 * beta] *= 0.9       # keep clear of the kinks
    z2 = rng.uniform(0.05, 0.95, 3)
    gates = list(rng.uniform(0.05, 0.95, 4))
    f = lambda x, b, z2, z4, z8, z16, z32: bb_quantize(  # noqa: E731
        x, b, z2, z4, z8, z16, z32, signed=signed, clip=clip)
    res = check_grads(f, x, np.asarray(beta), z2, *gates, atol=1e-8)
    assert res, str(res)


def literal_corner(dtype):
    """A signed x just below hi whose x − lo rounds up to hi − lo: the official clip saturates it."""
    for beta in np.linspace(0.5, 2.5, 41).astype(dtype):
        lo, hi = clip_range(beta, True)
        x = np.nextafter(hi, dtype(-np.inf))
        if not ((hi - lo) - (x - lo) > 0):
            return x, beta
    raise AssertionError("no corner case found")


def tricky_inputs(rng, signed, dtype=np.float64):
    """Bounds, exact zeros, exact 2-bit rounding ties, grid points and the float corner."""
    x, beta = weight_case(rng, signed, shape=(4, 6), beta=dtype(1.3))
    x = x.astype(dtype)
    s2 = step_sizes(beta, signed)[0]
    x[1, :3] = np.array([0.5, 1.5, -0.5 if signed else 2.5], dtype) * s2    # ties
    x[2, :2] = np.array([1.0, -1.0 if signed else 2.0], dtype) * s2         # grid points
    if signed:
        x[3, 0], beta = literal_corner(dtype)
        x[3, 1] = np.nextafter(-x[3, 0], dtype(np.inf))     # the mirror image above lo
    return x, beta


@pytest.mark.parametrize("clip", ["official", "numpy"])
@pytest.mark.parametrize("signed", [True, False])
def test_fused_matches_composite_and_autograd_oracle(signed, clip):
    """Forward bit-identical to the literal formula; gradients equal to ~1e-12 (float64)."""
    rng = np.random.default_rng(5)
    for trial in range(3):
        x, beta = tricky_inputs(rng, signed)
        z2 = rng.uniform(0.05, 0.95, x.shape[0])
        gates = tuple(rng.uniform(0.05, 0.95, 4)) if trial else (1.0, 1.0, 0.7, 0.0)
        g = rng.standard_normal(x.shape)
        fused_q, fused = run(bb_quantize, x, beta, z2, gates, g, signed, clip)
        comp_q, comp = run(bb_quantize_composite, x, beta, z2, gates, g, signed, clip)
        np.testing.assert_array_equal(fused_q, comp_q)
        assert_grads_close(fused, comp)
        orc_q, orc = oracle_run(x, beta, z2.reshape(-1, 1), gates, g, signed, clip)
        np.testing.assert_array_equal(fused_q, orc_q)
        assert_grads_close(fused, orc)


@given(seed=st.integers(0, 2 ** 32 - 1), signed=st.booleans(),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       n_on=st.integers(0, 4))
def test_fused_matches_composite_property(seed, signed, shape, n_on):
    """Random shapes, β, gates (the first ``n_on`` fractional, the rest exactly 0)."""
    rng = np.random.default_rng(seed)
    beta = rng.uniform(0.1, 5.0)
    x = rng.uniform(-1.3, 1.3, shape) * beta
    z2 = rng.uniform(0, 1, shape[0])
    gates = tuple(rng.uniform(0.01, 1.0, 4) * (np.arange(4) < n_on))
    g = rng.standard_normal(shape)
    fused_q, fused = run(bb_quantize, x, beta, z2, gates, g, signed)
    comp_q, comp = run(bb_quantize_composite, x, beta, z2, gates, g, signed)
    np.testing.assert_array_equal(fused_q, comp_q)
    assert_grads_close(fused, comp, rtol=1e-11, atol=1e-12)


def test_blockwise_forward_changes_nothing(monkeypatch):
    """The primitive works block by block (for speed); tiny blocks must give the same results."""
    rng = np.random.default_rng(8)
    x, beta = tricky_inputs(rng, True)
    z2 = rng.uniform(0.05, 0.95, x.shape[0])
    gates = tuple(rng.uniform(0.05, 0.95, 4))
    g = rng.standard_normal(x.shape)
    whole = run(bb_quantize, x, beta, z2, gates, g, True)
    monkeypatch.setattr(qz, "_BLOCK", 7)              # 24 elements: 4 blocks, the last short
    blocked = run(bb_quantize, x, beta, z2, gates, g, True)
    np.testing.assert_array_equal(whole[0], blocked[0])
    assert_grads_close(blocked[1], whole[1], rtol=1e-14, atol=1e-15)
    f = lambda *a: bb_quantize(*a, signed=True)  # noqa: E731
    assert check_grads(f, x * 0.9, np.asarray(beta), z2, *gates, method="projection")


def test_float_corner_on_the_upper_bound_follows_the_official_chain_rule():
    """x < hi, but the official clip computes x − lo = hi − lo and returns x_c = hi.

    The chain rule of the official formula (relu'(0) = 0) treats it as saturated: ∂x_q/∂x = 0
    and ∂x_c/∂β = 1 − ε, unlike the textbook 1[lo < x < hi].  The fused rule follows the code.
    """
    for dtype in (np.float64, np.float32):
        x, beta = literal_corner(dtype)
        lo, hi = clip_range(beta, True)
        assert lo < x < hi
        q, grads = run(bb_quantize, np.array([x]), beta, None, (1.0, 1.0), [1.0], True,
                       dtype=dtype)
        assert grads["x"][0] == 0
        assert decompose(np.array([x]), beta, True)["x_c"][0] == hi
        assert grads["beta"] == pytest.approx((q[0] - hi) / beta + K, rel=1e-6)   # x_c = hi


# --------------------------------------------------------------------------- gate exactly 0

@pytest.mark.parametrize("signed", [True, False])
def test_gate_exactly_zero_has_zero_gradient_and_same_forward(signed):
    """Official convention (§2.5): z8 = 0 skips e8…e32, so ∂/∂z8 = 0, not z2·z4·Σg·e8."""
    rng = np.random.default_rng(7)
    x, beta = weight_case(rng, signed, shape=(3, 8))
    z2 = rng.uniform(0.05, 0.95, 3)
    g = rng.standard_normal(x.shape)
    gates = (0.6, 0.0, 0.4, 0.9)
    q, grads = run(bb_quantize, x, beta, z2, gates, g, signed)
    d = decompose(x, beta, signed)
    z2b = z2[:, None]
    np.testing.assert_array_equal(q, z2b * (d["A2"] + 0.6 * d["e4"]))
    assert grads["z8"] == 0 and grads["z16"] == 0 and grads["z32"] == 0
    full = z2b * 0.6 * (d["e8"] + 0.4 * (d["e16"] + 0.9 * d["e32"]))
    assert abs(np.sum(g * full)) > 1e-3       # the gradient the convention switches off
    none_off = bb_quantize(Tensor(x), beta, z2, 0.6, None, 0.4, 0.9, signed=signed)
    np.testing.assert_array_equal(q, none_off.data)
    _, comp = run(bb_quantize_composite, x, beta, z2, gates, g, signed)
    _, orc = oracle_run(x, beta, z2b, gates, g, signed)
    assert_grads_close(grads, comp)
    assert_grads_close(grads, orc)


# --------------------------------------------------------------------------- eval mode

def direct_ste(x, beta, bits, signed):
    """A plain b-bit STE quantizer written with engine ops: s_b·R(clip(x)/s_b)."""
    hi = beta * K
    lo = -hi if signed else Tensor(np.zeros(()))
    x_c = ops.minimum(ops.maximum(x, lo), hi)
    step = (beta * 2 if signed else beta) / (2.0 ** bits - 1)
    return (x_c / step).round_ste() * step


@pytest.mark.parametrize("bits", BIT_WIDTHS)
@pytest.mark.parametrize("signed", [True, False])
def test_fixed_gates_reproduce_direct_quantization(bits, signed):
    """0/1 gates = a plain k-bit quantizer (§2.7), and the same β and x gradients."""
    rng = np.random.default_rng(bits)
    x, beta = weight_case(rng, signed, shape=(500,))
    q = fixed_quantize(Tensor(x), Tensor(np.asarray(beta)), bits, signed=signed).data
    direct = quantize_direct(x, beta, bits, signed)
    step = step_sizes(beta, signed)[BIT_WIDTHS.index(bits)]
    np.testing.assert_array_equal(level_of(q, step), level_of(direct, step))
    np.testing.assert_allclose(q, direct, rtol=0, atol=8 * np.finfo(float).eps * beta)
    g = rng.standard_normal(x.shape)
    grads = []
    for fn in (lambda x, b: fixed_quantize(x, b, bits, signed=signed),
               lambda x, b: direct_ste(x, b, bits, signed)):
        xt, bt = Tensor(x, requires_grad=True), Tensor(np.asarray(beta), requires_grad=True)
        fn(xt, bt).backward(g)
        grads.append((bt.grad, xt.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- clip option, dtype

@pytest.mark.parametrize("signed", [True, False])
def test_numpy_clip_differs_only_at_exact_ties(signed):
    """clip="numpy" gives the same values except, possibly, on exact rounding ties (§2.3a).

    The ReLU clip moves an in-range x_c by a few ulps of hi; only on an exact tie does that flip
    the rounded value, by one step of the bit width in use.
    """
    rng = np.random.default_rng(2)
    beta = 1.3
    lo, hi = clip_range(beta, signed)
    steps = step_sizes(beta, signed)
    x = rng.uniform(-1.3 if signed else -0.3, 1.3, 20_000) * beta
    ties = (rng.integers(-2 if signed else 0, 3, 5_000) + 0.5) * steps[0]   # ties at every width
    n_differ = 0
    for bits in BIT_WIDTHS:
        step = steps[BIT_WIDTHS.index(bits)]
        away = tie_distance(np.clip(x, lo, hi), step) > 1e-9
        q = {c: fixed_quantize(Tensor(np.concatenate([x, ties])), beta, bits, signed=signed,
                               clip=c).data for c in ("official", "numpy")}
        np.testing.assert_array_equal(q["official"][:x.size][away], q["numpy"][:x.size][away])
        diff = np.abs(q["official"] - q["numpy"])[x.size:]
        assert np.all((diff == 0) | (np.abs(diff - step) < 1e-15 * beta)), bits  # one step at most
        n_differ += np.count_nonzero(diff)
    q = {c: bb_quantize(Tensor(x), beta, None, 0.3, 0.7, signed=signed, clip=c).data
         for c in ("official", "numpy")}
    away = tie_distance(np.clip(x, lo, hi), steps[2]) > 1e-9
    np.testing.assert_array_equal(q["official"][away], q["numpy"][away])
    if not signed:
        assert n_differ > 0, "the planted ties should show the documented difference"


def test_float32_in_float32_out():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    xt = Tensor(x, requires_grad=True)
    bt = Tensor(np.float32(1.5), requires_grad=True)
    z2 = Tensor(np.full(4, 0.9, np.float32), requires_grad=True)
    z4 = Tensor(np.float64(0.7), requires_grad=True)            # a float64 gate does not promote
    out = bb_quantize(xt, bt, z2, z4, 0.5, signed=True)
    assert out.dtype == np.float32
    out.backward(np.ones_like(x))
    assert xt.grad.dtype == bt.grad.dtype == z2.grad.dtype == np.float32
    assert z4.grad.dtype == np.float64
    comp = bb_quantize_composite(Tensor(x), bt.detach(), z2.detach(), np.float32(0.7),
                                 np.float32(0.5), signed=True)
    np.testing.assert_array_equal(out.data, comp.data)                # bit-exact in float32 too
    assert fixed_quantize(Tensor(x), 1.5, 8, signed=True).dtype == np.float32
    assert quantize_direct(x, np.float32(1.5), 4, True).dtype == np.float32
    assert decompose(x, 1.5, True)["e8"].dtype == np.float32


def test_channel_axis_and_activations_without_z2():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 3, 4))
    z2 = np.array([0.0, 1.0, 0.5])
    q = bb_quantize(Tensor(x), 1.0, z2, 1.0, signed=True, channel_axis=1).data
    plain = bb_quantize(Tensor(x), 1.0, None, 1.0, signed=True).data
    np.testing.assert_array_equal(q, plain * z2[None, :, None])
    assert np.all(q[:, 0] == 0)                                  # a pruned channel


# --------------------------------------------------------------------------- gradcheck registration

def test_registered_gradcheck_case_passes_and_covers_both_ranges():
    assert "bb_quantize" in PRIMITIVES
    assert check_primitive("bb_quantize", seed=0)
    signed = {make_case("bb_quantize", np.random.default_rng(s), (3, 2)).static["signed"]
              for s in range(8)}
    assert signed == {True, False}
    case = make_case("bb_quantize", np.random.default_rng(0), (3, 2))
    x, beta, z2, *gates = case.args
    assert all(0.05 < float(z) < 0.95 for z in gates) and 0.5 <= beta <= 2.0
    lo, hi = clip_range(beta, case.static["signed"])
    assert np.min(np.abs(x - hi)) > 1e-3 * beta and np.min(np.abs(x - lo)) > 1e-3 * beta


def test_gradient_check_catches_a_wrong_beta_rule():
    """Dropping the clip (PACT) term from ∂/∂β must be caught: the checks can fail."""
    fused = PRIMITIVES["bb_quantize"]

    def lsq_only(g, x_q, saved, x, beta, z2, *gates, **static):   # Σ g·(x_q − z2·x_c)/β
        return np.sum(g * (x_q - z2 * np.clip(x, -beta, beta))) / beta

    wrong = Primitive("bb_quantize_wrong", fused.math, fused.forward,
                      (fused.vjps[0], lsq_only) + fused.vjps[2:], saves=True)  # not registered
    x = np.array([-1.5, -0.3, 0.2, 0.7, 1.8])
    for prim, ok in ((fused, True), (wrong, False)):
        f = lambda x, b: prim(x, b, 1.0, 0.5, 0.0, 0.0, 0.0, signed=True)  # noqa: E731
        assert bool(check_grads(f, x, np.asarray(1.0))) is ok


# --------------------------------------------------------------------------- bad input

def test_bad_bits():
    for bits in (0, 3, 64, True, "8"):
        with pytest.raises(ValueError, match=r"bits must be one of \(2, 4, 8, 16, 32\)"):
            check_bits(bits)
    with pytest.raises(ValueError, match="bits must be one of"):
        fixed_quantize(Tensor(np.ones(3)), 1.0, 6, signed=True)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_direct(np.ones(3), 1.0, 1, True)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match=r"beta .* must be finite and > 0.*init_range"):
        bb_quantize(Tensor(np.ones(3)), Tensor(np.array(beta)), signed=False)
    with pytest.raises(ValueError, match="must be finite and > 0"):
        decompose(np.ones(3), beta, False)
    with pytest.raises(ValueError, match="beta .* must be a scalar"):
        bb_quantize(Tensor(np.ones(3)), np.ones(2), signed=False)


def test_bad_gates():
    x = Tensor(np.ones((3, 2)))
    for value in (1.2, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"gate z8 must lie in \[0, 1\]"):
            bb_quantize(x, 1.0, None, 1.0, value, signed=True)
    with pytest.raises(ValueError, match=r"gate z2 must lie in \[0, 1\]"):
        bb_quantize(x, 1.0, np.array([1.0, 2.0, 0.5]), signed=True)
    with pytest.raises(ValueError, match=r"z2 .* one value per channel, shape \(3,\).* got shape \(2,\)"):
        bb_quantize(x, 1.0, np.array([1.0, 0.5]), signed=True)
    with pytest.raises(ValueError, match=r"z2 .* shape \(2,\)"):
        bb_quantize(x, 1.0, np.ones(3), signed=True, channel_axis=1)
    with pytest.raises(ValueError, match="gate z4 must be a scalar"):
        bb_quantize(x, 1.0, None, Tensor(np.array([0.5, 0.5])), signed=True)
    with pytest.raises(ValueError, match="channel_axis=2 is not an axis"):
        bb_quantize(x, 1.0, np.ones(3), signed=True, channel_axis=2)


def test_bad_clip_and_signed():
    with pytest.raises(ValueError, match="clip must be 'official'"):
        bb_quantize(Tensor(np.ones(3)), 1.0, signed=True, clip="pact")
    with pytest.raises(ValueError, match="clip must be 'official'"):
        decompose(np.ones(3), 1.0, True, clip="torch")
    with pytest.raises(TypeError, match="signed must be True"):
        bb_quantize(Tensor(np.ones(3)), 1.0, signed="yes")
    with pytest.raises(ValueError, match="non-empty"):
        init_range(np.array([]))


@pytest.mark.parametrize("clip", ["official", "numpy"])
def test_numpy_helpers_accept_a_plain_number(clip):
    """A student's `decompose(0.3, …)` works on a Python float, like on a 1-element array."""
    parts = decompose(0.3, 1.0, True, clip=clip)
    ones = decompose(np.array([0.3]), 1.0, True, clip=clip)
    for key, value in parts.items():
        assert np.shape(value) == () and value == ones[key][0]
    assert quantize_direct(0.3, 1.0, 4, True, clip=clip) == quantize_direct(np.array([0.3]), 1.0, 4,
                                                                          True, clip=clip)[0]

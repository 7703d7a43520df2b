"""Tests for bbits_ref.method.gates: hard-concrete and Gumbel-softmax gates, the gate chain (docs/method.md §3)."""
import math

import numpy as np
import pytest
from autograd import elementwise_grad
from hypothesis import given
from hypothesis import strategies as st

from bbits_ref import Tensor, default_dtype
from bbits_ref.method.gates import (HARD_CUT_LOGIT, NOISE_CLAMP, Gate, GumbelSoftmax, HardConcrete,
                             chain_gates, make_gate, uniform_noise)
from bbits_ref.autograd.gradcheck import check_grads
from oracles import gates_oracle as oracle

HC = HardConcrete()
PHIS = np.array([-6.0, -2.0, -0.935, 0.0, 2.0, 6.0])


def grad_of(fn, x):
    """Engine gradient of sum(fn(x)) with respect to x (float64)."""
    t = Tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    out = fn(t)
    out.backward(np.ones(out.shape))
    return t.grad


# --------------------------------------------------------------------------- §3.3, §3.4 golden values

@pytest.mark.parametrize("phi, printed", [(6.0, "0.99950"), (0.0, "0.8318"), (-2.0, "0.4010"),
                                          (-6.0, "0.01211")])
def test_prob_nonzero_matches_the_spec_reference_values(phi, printed):
    pi = HC.prob_nonzero(np.float64(phi)).item()
    decimals = len(printed.split(".")[1])
    assert abs(pi - float(printed)) <= 0.5 * 10.0 ** -decimals


def test_prob_offset_threshold_logit_and_deterministic_rule():
    assert HC.prob_offset == pytest.approx(-1.598597, abs=1e-6)
    t = HC.threshold_logit()
    assert t == pytest.approx(-0.935303, abs=1e-6)
    assert HC.prob_zero(np.float64(t)).item() == pytest.approx(0.34, abs=1e-12)
    assert HC.prob_nonzero(np.float64(t)).item() == pytest.approx(0.66, abs=1e-12)
    just = np.array([t - 1e-6, t + 1e-6, -6.0, -2.0, 0.0, 6.0])
    np.testing.assert_array_equal(HC.deterministic(just), [0, 1, 0, 0, 1, 1])
    # The code's rule is on P(z = 0), not the L0 paper's hard-sigmoid of the mean: at φ = −0.9 the
    # L0 rule gives clamp(sigmoid(−0.9)·1.2 − 0.1, 0, 1) = 0.26 (a fractional gate), ours gives 1.
    assert HC.deterministic(np.array(-0.9)) == 1.0


def test_prob_zero_and_prob_one_are_consistent():
    pz, pnz = HC.prob_zero(PHIS).data, HC.prob_nonzero(PHIS).data
    np.testing.assert_allclose(pz + pnz, 1.0, rtol=0, atol=1e-15)
    p1 = HC.prob_one(PHIS).data
    assert np.all(p1 < pnz)
    assert HC.prob_one(np.float64(6.0)).item() == pytest.approx(0.988, abs=5e-4)   # §3.1
    gs = GumbelSoftmax()
    np.testing.assert_allclose(gs.prob_zero(PHIS).data + gs.prob_nonzero(PHIS).data, 1.0)


def test_gumbel_softmax_threshold_and_init():
    gs = GumbelSoftmax()
    assert gs.threshold_logit() == 0.0
    np.testing.assert_array_equal(gs.deterministic(np.array([-1e-9, 0.0, 1e-9])), [0, 0, 1])
    # init_logit 7.6 gives about the hard concrete's π(6) (§3.7).
    assert gs.prob_nonzero(gs.init_logit).item() == pytest.approx(
        HC.prob_nonzero(HC.init_logit).item(), abs=1e-4)


# --------------------------------------------------------------------------- Monte Carlo

N_MC = 200_000


def mc_check(hits: np.ndarray, p: np.ndarray):
    """Frequencies within 4 standard errors of p (plus a floor for p ≈ 0 or 1)."""
    freq = hits.mean(axis=-1)
    se = np.sqrt(p * (1 - p) / hits.shape[-1])
    assert np.all(np.abs(freq - p) <= 4 * se + 1e-5), (freq, p, se)


def test_hard_concrete_monte_carlo_matches_prob_nonzero_and_prob_one():
    rng = np.random.default_rng(1)
    phi = np.broadcast_to(PHIS[:, None], (len(PHIS), N_MC)).copy()
    z = HC.sample(phi, uniform_noise(rng, phi.shape)).data
    assert z.min() >= 0.0 and z.max() <= 1.0
    mc_check(z != 0, HC.prob_nonzero(PHIS).data)
    mc_check(z == 1, HC.prob_one(PHIS).data)
    # At the decision boundary P(z > 0) = 0.66 (§11.3).
    assert abs((z[2] != 0).mean() - 0.66) < 4 * math.sqrt(0.66 * 0.34 / N_MC) + 5e-4


@pytest.mark.parametrize("temperature", [2 / 3, 0.1, 3.0])
def test_gumbel_softmax_monte_carlo_p_above_half_is_sigmoid_at_any_temperature(temperature):
    rng = np.random.default_rng(2)
    phi = np.broadcast_to(PHIS[:, None], (len(PHIS), N_MC)).copy()
    u = uniform_noise(rng, phi.shape)
    soft = GumbelSoftmax(temperature).sample(phi, u).data
    mc_check(soft > 0.5, GumbelSoftmax().prob_nonzero(PHIS).data)
    hard = GumbelSoftmax(temperature, straight_through=True).sample(phi, u).data
    np.testing.assert_array_equal(hard, (soft > 0.5).astype(float))


def test_hard_concrete_cdf_and_pdf_agree_with_point_masses_and_samples():
    phi = 0.7
    assert HC.cdf(0.0, phi) == pytest.approx(HC.prob_zero(np.float64(phi)).item(), rel=1e-12)
    assert HC.cdf(1 - 1e-12, phi) == pytest.approx(1 - HC.prob_one(np.float64(phi)).item(),
                                                    rel=1e-9)
    assert HC.cdf(1.0, phi) == 1.0 and HC.cdf(-0.1, phi) == 0.0
    zs = np.linspace(0, 1, 200_001)
    mass = np.trapezoid(HC.pdf(zs, phi), zs)
    assert mass == pytest.approx(HC.cdf(1 - 1e-12, phi) - HC.cdf(0.0, phi), rel=1e-5)
    z = HC.sample(np.full(N_MC, phi), uniform_noise(np.random.default_rng(3), N_MC)).data
    for q in (0.25, 0.5, 0.9):
        p = HC.cdf(q, phi)
        assert abs((z <= q).mean() - p) <= 4 * math.sqrt(p * (1 - p) / N_MC)


# --------------------------------------------------------------------------- gradients

def test_hard_concrete_sample_gradient_matches_finite_differences_and_formula():
    # u chosen so every sample is strictly inside (0, 1): the smooth branch.
    phi = np.array([-1.0, 0.0, 0.5, 2.0])
    u = np.array([0.7, 0.4, 0.3, 0.1])
    z = HC.sample(phi, u).data
    assert np.all((z > 0.05) & (z < 0.95))
    assert check_grads(lambda p: HC.sample(p, u), phi)
    s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + phi) / HC.temperature))
    formula = (HC.zeta - HC.gamma) * s * (1 - s) / HC.temperature
    np.testing.assert_allclose(grad_of(lambda p: HC.sample(p, u), phi), formula, rtol=1e-12)


def test_clamped_hard_concrete_samples_have_zero_gradient():
    phi = np.array([6.0, 6.0, -6.0, -6.0])
    u = np.array([0.9, 0.5, 0.1, 0.5])
    z = HC.sample(phi, u).data
    np.testing.assert_array_equal(z, [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad_of(lambda p: HC.sample(p, u), phi), 0.0)
    assert check_grads(lambda p: HC.sample(p, u), phi)


def test_gumbel_softmax_gradients_soft_and_straight_through():
    phi = np.array([-2.0, -0.3, 0.4, 3.0])
    u = np.array([0.8, 0.45, 0.2, 0.3])
    soft, st_gate = GumbelSoftmax(0.5), GumbelSoftmax(0.5, straight_through=True)
    assert check_grads(lambda p: soft.sample(p, u), phi)
    assert check_grads(lambda p: st_gate.sample(p, u), phi)     # FD with the rounding frozen
    z = soft.sample(phi, u).data
    g_soft = grad_of(lambda p: soft.sample(p, u), phi)
    np.testing.assert_allclose(g_soft, z * (1 - z) / 0.5, rtol=1e-12)
    np.testing.assert_array_equal(grad_of(lambda p: st_gate.sample(p, u), phi), g_soft)
    np.testing.assert_array_equal(st_gate.sample(phi, u).data, (z > 0.5).astype(float))


@pytest.mark.parametrize("gate", [HC, GumbelSoftmax()], ids=["hc", "gs"])
def test_prob_nonzero_gradient_is_pi_one_minus_pi(gate):
    pi = gate.prob_nonzero(PHIS).data
    np.testing.assert_allclose(grad_of(gate.prob_nonzero, PHIS), pi * (1 - pi), rtol=1e-10)
    assert check_grads(gate.prob_nonzero, PHIS)


# --------------------------------------------------------------------------- HIPS-autograd oracle

@given(phi=st.lists(st.floats(-8, 8), min_size=1, max_size=6),
       seed=st.integers(0, 2**31 - 1))
def test_gates_against_the_autograd_oracle(phi, seed):
    phi = np.array(phi)
    u = uniform_noise(np.random.default_rng(seed), phi.shape)
    cases = [
        (HC.prob_nonzero, oracle.hc_prob_nonzero),
        (lambda p: HC.sample(p, u), lambda p: oracle.hc_sample(p, u)),
        (GumbelSoftmax().prob_nonzero, oracle.gs_prob_nonzero),
        (lambda p: GumbelSoftmax().sample(p, u), lambda p: oracle.gs_sample(p, u)),
    ]
    for ours, theirs in cases:
        np.testing.assert_allclose(ours(phi).data, theirs(phi), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad_of(ours, phi), elementwise_grad(theirs)(phi),
                                   rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------- chain_gates

def test_chain_hard_cut_at_exactly_minus_two_cuts_that_gate_and_all_higher():
    u = np.full(4, 0.5)
    logits = Tensor(np.array([6.0, HARD_CUT_LOGIT, 6.0, 6.0]), requires_grad=True)
    gates = chain_gates(HC, logits, u, training=True)
    assert isinstance(gates[0], Tensor) and gates[1:] == [None, None, None]
    gates = chain_gates(HC, np.array([6.0, -1.99, 6.0, -2.5]), u, training=True)
    assert all(isinstance(g, Tensor) for g in gates[:3]) and gates[3] is None
    gates = chain_gates(HC, np.array([HARD_CUT_LOGIT, 6.0, 6.0, 6.0]), u, training=False)
    assert gates == [None, None, None, None]
    # Without the cut every gate is sampled.
    gates = chain_gates(HC, np.array([6.0, -2.0, -6.0, 6.0]), u, training=True, hard_cut=False)
    assert all(isinstance(g, Tensor) for g in gates)


def test_chain_training_samples_keep_the_graph_to_the_chain_logits():
    logits = Tensor(np.array([1.0, 0.5, -1.5, 6.0]), requires_grad=True)
    u = np.array([0.6, 0.5, 0.7, 0.2])
    gates = chain_gates(HC, logits, u, training=True)
    for g, phi, ui in zip(gates, logits.data, u):
        assert g.shape == () and g.item() == pytest.approx(HC.sample(phi, ui).item(), rel=1e-15)
    (gates[0] * gates[1] + gates[2]).backward()
    expected = np.array([1.0, 1.0, 1.0, 0.0]) * np.array(
        [grad_of(lambda p: HC.sample(p, ui), phi) for phi, ui in zip(logits.data, u)])
    expected[0] *= gates[1].item()
    expected[1] *= gates[0].item()
    np.testing.assert_allclose(logits.grad, expected, rtol=1e-12)


def test_chain_eval_is_deterministic_and_stops_after_the_first_zero():
    logits = np.array([6.0, -0.9, -1.0, 6.0])      # z8 = 1 (−0.9 > −0.935), z16 = 0 → z32 None
    for _ in range(2):
        assert chain_gates(HC, logits, None, training=False) == [1.0, 1.0, 0.0, None]
    assert chain_gates(HC, np.array([6.0, 6.0, 6.0, 6.0]), np.full(4, 0.01),
                       training=False) == [1.0] * 4          # eval ignores u


def test_chain_with_gumbel_softmax_gates():
    gs = GumbelSoftmax(straight_through=True)
    logits = np.array([3.0, -0.3, 0.5, -0.3])
    assert chain_gates(gs, logits, None, training=False) == [1.0, 0.0, None, None]
    gates = chain_gates(gs, logits, np.array([0.5, 0.9, 0.5, 0.1]), training=True)
    assert [g.item() for g in gates] == [1.0, 1.0, 1.0, 0.0]   # −0.3 + logit(0.9) > 0
    assert chain_gates(gs, np.array([3.0, -2.0, 3.0, 3.0]), None, training=False)[1:] == [None] * 3


def test_gumbel_softmax_hard_cut_sits_at_the_same_on_probability_as_the_official_one():
    # The official cut φ ≤ −2 on hard-concrete gates is P(z ≠ 0) ≤ 0.401; a Gumbel-softmax gate
    # (P(z = 1) = sigmoid(φ)) is cut at the logit with that probability.
    gs = GumbelSoftmax()
    cut = gs.hard_cut_logit
    np.testing.assert_allclose(1 / (1 + np.exp(-cut)), HC.prob_nonzero(np.float64(-2.0)).data,
                               rtol=1e-12)
    u = np.full(4, 0.5)
    assert chain_gates(gs, np.array([3.0, cut, 3.0, 3.0]), u, training=True)[1:] == [None] * 3
    below = chain_gates(gs, np.array([3.0, cut + 1e-6, 3.0, 3.0]), u, training=True)
    assert all(g is not None for g in below)
    assert HC.hard_cut_logit == -2.0


# --------------------------------------------------------------------------- inputs

def test_uniform_noise_is_clamped_reproducible_and_typed():
    u = uniform_noise(np.random.default_rng(0), (1000,), dtype=np.float32)
    assert u.dtype == np.float32 and u.shape == (1000,)
    assert u.min() >= np.float32(NOISE_CLAMP) and u.max() <= np.float32(1 - NOISE_CLAMP)
    np.testing.assert_array_equal(u, uniform_noise(np.random.default_rng(0), (1000,), np.float32))
    z = HC.sample(np.zeros(3), np.array([0.0, 1.0, 0.5]))       # u = 0 and 1 are clamped, finite
    np.testing.assert_allclose(z.data, [0.0, 1.0, 0.5], rtol=1e-15)


def test_plain_numbers_arrays_and_dtypes_are_accepted():
    assert isinstance(HC.prob_nonzero(6), Tensor) and HC.prob_nonzero(6).dtype == np.float32
    with default_dtype(np.float64):
        assert HC.prob_nonzero(6.0).dtype == np.float64
    assert HC.prob_nonzero(np.float32(6.0)).dtype == np.float32
    assert HC.prob_nonzero(np.array([6, 0])).shape == (2,)
    z32 = HC.sample(np.float32(0.3), np.float64(0.4))
    assert z32.dtype == np.float32
    assert HC.deterministic([6.0, -6.0]).tolist() == [1.0, 0.0]


def test_make_gate():
    assert isinstance(make_gate(), HardConcrete)
    gs = make_gate("gumbel_softmax", temperature=0.5, straight_through=True)
    assert isinstance(gs, GumbelSoftmax) and gs.temperature == 0.5 and gs.straight_through
    assert isinstance(gs, Gate) and HC.name == "hard_concrete" and gs.name == "gumbel_softmax"
    assert HC.init_logit == 6.0 and gs.init_logit == 7.6
    with pytest.raises(ValueError, match="unknown gate kind 'l0'.*gumbel_softmax"):
        make_gate("l0")


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature must be a positive"),
    ({"temperature": -1.0}, "temperature must be a positive"),
    ({"gamma": 0.1}, "gamma < 0 < 1 < zeta"),
    ({"zeta": 0.9}, "gamma < 0 < 1 < zeta"),
    ({"threshold": 1.0}, r"threshold .* \(0, 1\)"),
    ({"threshold": 0.0}, r"threshold .* \(0, 1\)"),
])
def test_bad_hard_concrete_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HardConcrete(**kwargs)


def test_bad_gumbel_softmax_parameters():
    with pytest.raises(ValueError, match="temperature"):
        GumbelSoftmax(temperature=float("nan"))
    with pytest.raises(TypeError, match="straight_through"):
        GumbelSoftmax(straight_through="yes")
    with pytest.raises(ValueError, match="init_logit"):
        GumbelSoftmax(init_logit=float("inf"))


@pytest.mark.parametrize("gate", [HC, GumbelSoftmax()], ids=["hc", "gs"])
def test_bad_noise_and_logits(gate):
    with pytest.raises(ValueError, match=r"u has shape \(3,\).*logits have shape \(2,\)"):
        gate.sample(np.zeros(2), np.full(3, 0.5))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        gate.sample(np.zeros(2), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        gate.sample(np.zeros(2), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="contain NaN"):
        gate.prob_nonzero(np.array([0.0, np.nan]))


def test_bad_chain_inputs():
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        chain_gates(HC, np.zeros(3), np.full(3, 0.5), training=True)
    with pytest.raises(ValueError, match="needs uniform noise"):
        chain_gates(HC, np.zeros(4), None, training=True)
    with pytest.raises(ValueError, match=r"u must have shape \(4,\)"):
        chain_gates(HC, np.zeros(4), np.full(5, 0.5), training=True)
    with pytest.raises(TypeError, match="must be a Gate"):
        chain_gates("hard_concrete", np.zeros(4), None, training=False)


def test_bad_uniform_noise_arguments():
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        uniform_noise(np.random.RandomState(0), 3)
    with pytest.raises(TypeError, match="float32 or float64"):
        uniform_noise(np.random.default_rng(0), 3, dtype=np.int64)

"""Tests for bbits_ref.method.prior: the KL, the code's BOP regularizer and the independent-prior ablation (docs/method.md §4)."""
import numpy as np
import pytest
from autograd import grad
from hypothesis import given
from hypothesis import strategies as st

from bbits_ref import Tensor
from bbits_ref.method.gates import HardConcrete, chain_gates
from bbits_ref.autograd.gradcheck import check_grads
from bbits_ref.method.prior import (autoregressive_kl, bop_regularizer, independent_regularizer,
                             kl_bernoulli, mac_weights, prior_strengths)
from bbits_ref.method.quantizer import bb_quantize
from oracles import gates_oracle as oracle

HC = HardConcrete()
probs = st.floats(1e-6, 1 - 1e-6)


def pi(phi):
    return HC.prob_nonzero(np.float64(phi)).item()


# --------------------------------------------------------------------------- hand computations

def test_bop_regularizer_by_hand_with_simple_probabilities():
    # π2 = (1, 0.5), (π4, π8, π16, π32) = (0.5, 0.5, 0, 0), w = 0.25:
    #   with pruning: 0.25 · mean(1, 0.5) · (2 + 4·0.5 + 8·0.25 + 0 + 0) = 0.25 · 0.75 · 6 = 1.125
    #   without:      1 + 0.25 · (4·0.5 + 8·0.25) = 2.0
    #   const:        mean(π2) · (1 + 0.5 + 0.25) = 1.3125;  1 + 0.5 + 0.25 = 1.75
    pz2, chain = np.array([1.0, 0.5]), np.array([0.5, 0.5, 0.0, 0.0])
    assert bop_regularizer(pz2, chain, 0.25).item() == 1.125
    assert bop_regularizer(None, chain, 0.25).item() == 2.0
    assert bop_regularizer(pz2, chain, 0.25, reg_type="const").item() == 1.3125
    assert bop_regularizer(None, chain, 0.25, reg_type="const").item() == 1.75
    # independent: 0.25 · (2·0.75 + 4·0.5 + 8·0.5) = 1.875;  1 + 0.25 · (2 + 4) = 2.5
    assert independent_regularizer(pz2, chain, 0.25).item() == 1.875
    assert independent_regularizer(None, chain, 0.25).item() == 2.5
    assert independent_regularizer(pz2, chain, 0.25, reg_type="const").item() == 1.75


def test_bop_regularizer_for_the_initial_gate_logits_of_the_spec():
    # Every φ = 6 except the MNIST z16, z32 (−6), w = 1/8 (§3.1): π(6) = 0.99950, π(−6) = 0.01211.
    p6, m6 = pi(6.0), pi(-6.0)
    assert p6 == pytest.approx(0.99950, abs=5e-6) and m6 == pytest.approx(0.01211, abs=5e-6)
    phi2, chain = np.full(5, 6.0), np.array([6.0, 6.0, -6.0, -6.0])
    w = 1 / 8
    by_hand = w * p6 * (2 + 4 * p6 + 8 * p6**2 + 16 * p6**2 * m6 + 32 * p6**2 * m6**2)
    value = bop_regularizer(HC.prob_nonzero(phi2), HC.prob_nonzero(chain), w).item()
    assert value == pytest.approx(by_hand, rel=1e-14)
    assert value == pytest.approx(1.7726, abs=1e-4)      # 0.125 · 0.9995 · 14.188…
    no_prune = 1 + w * (4 * p6 + 8 * p6**2 + 16 * p6**2 * m6 + 32 * p6**2 * m6**2)
    assert bop_regularizer(None, HC.prob_nonzero(chain), w).item() == pytest.approx(no_prune,
                                                                                    rel=1e-14)


def test_regularizer_is_the_approximate_kl_with_lambda_mu_b_w():
    """μ·R_t = mean over channels of Σ_b λ_b Π_{k≤b} π_k with λ = μ·b·w (§4.2–4.4)."""
    rng = np.random.default_rng(0)
    pz2, chain = rng.uniform(0.05, 1, 7), rng.uniform(0.05, 1, 4)
    mu, w = 0.1, 0.3
    per_channel = np.concatenate([pz2[:, None], np.broadcast_to(chain, (7, 4))], axis=1)
    kl = autoregressive_kl(per_channel, prior_strengths(mu, w), exact=False).data
    assert mu * bop_regularizer(pz2, chain, w).item() == pytest.approx(kl.mean(), rel=1e-13)
    kl_act = autoregressive_kl(chain, prior_strengths(mu, w, bits=(4, 8, 16, 32)), exact=False)
    assert mu * (bop_regularizer(None, chain, w).item() - 1) == pytest.approx(kl_act.item(),
                                                                              rel=1e-13)


def test_mac_weights_and_prior_strengths():
    w = mac_weights({"conv1.weight": 460_800, "conv2.weight": 3_276_800, "fc2.weight": 5_120})
    assert w == {"conv1.weight": 0.140625, "conv2.weight": 1.0, "fc2.weight": 0.0015625}
    np.testing.assert_array_equal(prior_strengths(0.1, 0.5), 0.1 * np.array([2, 4, 8, 16, 32]) * 0.5)
    assert prior_strengths(0.0, 1.0, bits=(4, 8)).tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- KL

@given(q=probs, p=probs)
def test_kl_bernoulli_is_nonnegative_and_zero_only_at_q_equals_p(q, p):
    kl = kl_bernoulli(np.float64(q), np.float64(p)).item()
    assert kl >= -1e-15
    assert kl_bernoulli(np.float64(p), np.float64(p)).item() == pytest.approx(0.0, abs=1e-15)
    if abs(q - p) > 1e-3:
        assert kl > 0


def test_kl_bernoulli_handles_deterministic_posteriors():
    q, p = np.array([0.0, 1.0, 0.3]), np.array([0.2, 0.2, 0.2])
    expected = [-np.log(0.8), -np.log(0.2), 0.3 * np.log(0.3 / 0.2) + 0.7 * np.log(0.7 / 0.8)]
    np.testing.assert_allclose(kl_bernoulli(q, p).data, expected, rtol=1e-14)


@given(chain=st.lists(probs, min_size=5, max_size=5),
       lambdas=st.lists(st.floats(1e-3, 20), min_size=5, max_size=5))
def test_autoregressive_kl_exact_minus_approx_is_the_entropy_and_log_terms(chain, lambdas):
    chain, lambdas = np.array(chain), np.array(lambdas)
    exact = autoregressive_kl(chain, lambdas).item()
    approx = autoregressive_kl(chain, lambdas, exact=False).item()
    assert exact >= -1e-12
    on_before = np.concatenate([[1.0], np.cumprod(chain)[:-1]])
    entropy = -(chain * np.log(chain) + (1 - chain) * np.log1p(-chain))
    dropped = np.sum(on_before * (-entropy - (1 - chain) * np.log(-np.expm1(-lambdas))))
    assert exact - approx == pytest.approx(dropped, rel=1e-9, abs=1e-9)


def test_autoregressive_kl_keeps_leading_axes_and_matches_its_definition():
    rng = np.random.default_rng(1)
    chain, lambdas = rng.uniform(0.01, 0.99, (3, 2, 5)), rng.uniform(0.1, 3, 5)
    kl = autoregressive_kl(chain, lambdas)
    assert kl.shape == (3, 2)
    on_before = np.concatenate([np.ones((3, 2, 1)), np.cumprod(chain, -1)[..., :-1]], -1)
    by_def = np.sum(on_before * kl_bernoulli(chain, np.exp(-lambdas)).data, -1)
    np.testing.assert_allclose(kl.data, by_def, rtol=1e-13)


# --------------------------------------------------------------------------- gradients

def reg_of_logits(fn, w, reg_type, prune):
    def f(phi2, chain):
        return fn(HC.prob_nonzero(phi2) if prune else None, HC.prob_nonzero(chain), w,
                  reg_type=reg_type)
    return f


@pytest.mark.parametrize("fn", [bop_regularizer, independent_regularizer])
@pytest.mark.parametrize("reg_type", ["bop", "const"])
@pytest.mark.parametrize("prune", [True, False])
def test_regularizer_gradients_vs_finite_differences_and_autograd(fn, reg_type, prune):
    rng = np.random.default_rng(2)
    phi2, chain, w = rng.uniform(-4, 6, 5), rng.uniform(-4, 6, 4), 0.37
    f = reg_of_logits(fn, w, reg_type, prune)
    assert check_grads(f, phi2, chain, argnums=(0, 1) if prune else (1,))
    t2, tc = Tensor(phi2, requires_grad=True), Tensor(chain, requires_grad=True)
    out = f(t2, tc)
    out.backward()
    ref = getattr(oracle, fn.__name__)
    ref_value = ref(phi2 if prune else None, chain, w, reg_type)
    assert out.item() == pytest.approx(ref_value, rel=1e-13)
    np.testing.assert_allclose(tc.grad, grad(lambda c: ref(phi2 if prune else None, c, w,
                                                           reg_type))(chain), rtol=1e-10)
    if prune:
        np.testing.assert_allclose(t2.grad, grad(lambda p: ref(p, chain, w, reg_type))(phi2),
                                   rtol=1e-10)


def test_bop_and_const_weight_the_same_probabilities_differently():
    chain = HC.prob_nonzero(np.array([1.0, 0.0, -1.0, 2.0]))
    pz2 = HC.prob_nonzero(np.array([0.5, 3.0]))
    bop = bop_regularizer(pz2, chain, 1.0).item()
    const = bop_regularizer(pz2, chain, 1.0, reg_type="const").item()
    c = chain.data
    prods = np.cumprod(np.concatenate([[1.0], c]))
    assert const == pytest.approx(pz2.data.mean() * prods.sum(), rel=1e-14)
    assert bop == pytest.approx(pz2.data.mean() * np.dot([2, 4, 8, 16, 32], prods), rel=1e-14)


@given(chain=st.lists(st.floats(0.01, 0.99), min_size=5, max_size=5),
       lambdas=st.lists(st.floats(0.01, 10), min_size=5, max_size=5))
def test_autoregressive_kl_against_the_autograd_oracle(chain, lambdas):
    chain, lambdas = np.array(chain), np.array(lambdas)
    for exact in (True, False):
        t = Tensor(chain, requires_grad=True)
        out = autoregressive_kl(t, lambdas, exact=exact)
        out.backward()
        ref = lambda c: oracle.autoregressive_kl(c, lambdas, exact)  # noqa: E731
        assert out.item() == pytest.approx(ref(chain), rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(t.grad, grad(ref)(chain), rtol=1e-8, atol=1e-12)


def test_autoregressive_kl_gradient_vs_finite_differences():
    rng = np.random.default_rng(3)
    chain, lambdas = rng.uniform(0.05, 0.95, (2, 5)), rng.uniform(0.1, 4, 5)
    assert check_grads(lambda c: autoregressive_kl(c, lambdas), chain)
    assert check_grads(lambda c: autoregressive_kl(c, lambdas, exact=False), chain)
    assert check_grads(lambda q, p: kl_bernoulli(q, p), chain, rng.uniform(0.05, 0.95, 5))


# --------------------------------------------------------------------------- the ablation

MU, W = 0.1, 1.0
C8 = W * 8                                              # c(8) = w·8


def data_term(z2, gates, weight, target):
    """An L2 data loss on a tiny quantized weight tensor, x_q = bb_quantize(weight, β = 1, gates).

    x_q = z2·(x2 + z4·(ε4 + z8·(ε8 + …))) (§2.4–2.5): z8 reaches the loss only through z4
    (and z2); a gate that is ``None`` (hard cut) drops its residual and everything above it.
    """
    x_q = bb_quantize(weight, Tensor(np.float64(1.0)), z2, *gates, signed=True)
    return ((x_q - target) * (x_q - target)).sum()


def phi8_push(regularizer, phi2, chain_logits, u2, u_chain):
    """(d data/dφ8, d total/dφ8) with total = data + μ·R(π(φ)), gates sampled from u."""
    rng = np.random.default_rng(4)
    weight, target = Tensor(rng.uniform(-1, 1, (3, 5))), rng.uniform(-1, 1, (3, 5))
    t2, tc = Tensor(phi2, requires_grad=True), Tensor(chain_logits, requires_grad=True)
    z2 = HC.sample(t2, u2)
    data = data_term(z2, chain_gates(HC, tc, u_chain, training=True), weight, target)
    reg = regularizer(HC.prob_nonzero(t2), HC.prob_nonzero(tc), W)
    data.backward()
    d_data = 0.0 if tc.grad is None else tc.grad[1]     # None: z4 hard-cut, no path at all
    tc.zero_grad()
    (data + MU * reg).backward()
    return d_data, tc.grad[1]


U_CHAIN_Z4_OFF = np.array([0.05, 0.047, 0.5, 0.5])      # z4 = 0 (clamped), z8 = 0.5 (inside)
U_CHAIN_Z4_ON = np.array([0.95, 0.047, 0.5, 0.5])


def test_the_data_term_reaches_phi8_only_through_z4():
    phi2, chain = np.full(3, 6.0), np.array([0.0, 3.0, -6.0, -6.0])
    u2 = np.full(3, 0.5)
    d_data_on, _ = phi8_push(bop_regularizer, phi2, chain, u2, U_CHAIN_Z4_ON)
    d_data_off, _ = phi8_push(bop_regularizer, phi2, chain, u2, U_CHAIN_Z4_OFF)
    assert abs(d_data_on) > 1e-3          # the test can see a data gradient when z4 = 1
    assert d_data_off == 0.0


@pytest.mark.parametrize("scenario", ["z4 sampled 0", "z2 sampled 0 in every channel"])
def test_independent_prior_pushes_phi8_down_with_full_strength_when_its_parent_is_off(scenario):
    """The issue's ablation: with an independent prior z8 only receives μ·c(8)·π8(1 − π8) > 0,
    the push that lowers its probability, although the data cannot see z8; the autoregressive
    prior scales that push by mean(π2)·π4 (the probability that z8 matters at all)."""
    chain = np.array([0.0, 3.0, -6.0, -6.0])
    if scenario == "z4 sampled 0":
        phi2, u2, u_chain = np.full(3, 6.0), np.full(3, 0.5), U_CHAIN_Z4_OFF
    else:
        phi2, u2, u_chain = np.full(3, -1.0), np.full(3, 0.05), U_CHAIN_Z4_ON
    z2 = HC.sample(phi2, u2).data
    assert np.all(z2 == 0.0) if scenario.startswith("z2") else np.all(z2 == 1.0)
    p2, p4, p8, p16, p32 = (HC.prob_nonzero(phi2).data.mean(), *HC.prob_nonzero(chain).data)
    slope8 = p8 * (1 - p8)                                  # dπ8/dφ8

    d_data, d_indep = phi8_push(independent_regularizer, phi2, chain, u2, u_chain)
    assert d_data == 0.0
    assert d_indep > 0                                      # gradient descent lowers φ8
    assert d_indep == pytest.approx(MU * C8 * slope8, rel=1e-12)

    _, d_auto = phi8_push(bop_regularizer, phi2, chain, u2, u_chain)
    dr_dpi8 = W * p2 * p4 * (8 + 16 * p16 + 32 * p16 * p32)
    assert d_auto == pytest.approx(MU * dr_dpi8 * slope8, rel=1e-12)
    assert 0 < d_auto < d_indep


def test_autoregressive_push_on_phi8_vanishes_as_pi4_goes_to_zero_independent_does_not():
    phi2, u2 = np.full(3, 6.0), np.full(3, 0.5)
    phi4s = np.array([0.0, -1.0, -2.0, -4.0, -8.0, -12.0])   # ≤ −2: z4 and z8 are hard-cut
    pushes = []
    for phi4 in phi4s:
        chain = np.array([phi4, 3.0, -6.0, -6.0])
        _, d_indep = phi8_push(independent_regularizer, phi2, chain, u2, U_CHAIN_Z4_OFF)
        _, d_auto = phi8_push(bop_regularizer, phi2, chain, u2, U_CHAIN_Z4_OFF)
        pushes.append((d_indep, d_auto))
    d_indep, d_auto = np.array(pushes).T
    np.testing.assert_allclose(d_indep, d_indep[0], rtol=1e-12)     # does not care about z4
    pi4 = HC.prob_nonzero(phi4s).data
    np.testing.assert_allclose(d_auto / pi4, d_auto[0] / pi4[0], rtol=1e-12)   # ∝ π4
    assert np.all(np.diff(d_auto) < 0) and d_auto[-1] < 1e-4 * d_indep[-1]


def test_under_the_independent_prior_an_unseen_z8_is_switched_off_for_good():
    """Gradient descent on φ8 while z4 is off (φ4 = −6: π4 = 0.012, hard-cut): the independent
    prior drives φ8 to the hard cut, so z8 can never come back even if z4 does; the
    autoregressive prior leaves it nearly where it was."""
    final = {}
    for name, reg in (("independent", independent_regularizer), ("autoregressive", bop_regularizer)):
        phi8 = 3.0
        for _ in range(300):
            chain = np.array([-6.0, phi8, -6.0, -6.0])
            _, d = phi8_push(reg, np.full(3, 6.0), chain, np.full(3, 0.5), U_CHAIN_Z4_OFF)
            phi8 -= 5.0 * d
        final[name] = phi8
    assert final["independent"] <= -2.0                     # cut for good (§3.5)
    assert final["autoregressive"] > 2.5


# --------------------------------------------------------------------------- bad inputs

def test_bad_regularizer_inputs():
    chain = np.full(4, 0.5)
    with pytest.raises(ValueError, match=r"chain_probs must have shape \(4,\)"):
        bop_regularizer(None, np.full(5, 0.5), 1.0)
    with pytest.raises(ValueError, match=r"prob_z2 must have shape \(C,\)"):
        bop_regularizer(np.full((2, 2), 0.5), chain, 1.0)
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\].*prob_nonzero"):
        bop_regularizer(None, np.array([6.0, 6.0, 6.0, 6.0]), 1.0)
    with pytest.raises(ValueError, match="mac_weight .* positive"):
        independent_regularizer(None, chain, 0.0)
    with pytest.raises(ValueError, match="reg_type must be one of"):
        bop_regularizer(None, chain, 1.0, reg_type="bops")


def test_bad_kl_and_prior_inputs():
    with pytest.raises(ValueError, match="strictly in \\(0, 1\\)"):
        kl_bernoulli(0.5, 1.0)
    with pytest.raises(ValueError, match="probabilities"):
        kl_bernoulli(np.nan, 0.5)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., n\) and lambdas shape \(n,\)"):
        autoregressive_kl(np.full(5, 0.5), np.ones(4))
    with pytest.raises(ValueError, match="> 0 for the exact KL"):
        autoregressive_kl(np.full(5, 0.5), np.zeros(5))
    assert autoregressive_kl(np.full(5, 0.5), np.zeros(5), exact=False).item() == 0.0
    with pytest.raises(ValueError, match="non-empty dict"):
        mac_weights({})
    with pytest.raises(ValueError, match="MAC counts must be positive"):
        mac_weights({"a": 10, "b": 0})
    with pytest.raises(ValueError, match="mu .* non-negative"):
        prior_strengths(-0.1, 1.0)
    with pytest.raises(ValueError, match="bits must be"):
        prior_strengths(0.1, 1.0, bits=(2.5, 4))


# --------------------------------------------------------------------------- the explicit prior

def test_prior_is_autoregressive_with_exp_minus_lambda_and_no_mass_below_an_off_parent():
    from bbits_ref.method.prior import chain_pmf, prior_conditionals
    lam = np.array([0.2, 0.4, 0.8, 1.6, 3.2])
    cond = prior_conditionals(lam)
    np.testing.assert_allclose(cond, np.exp(-lam), rtol=0)
    configs, probs = chain_pmf(cond)
    assert configs.shape == (32, 5) and probs.sum() == pytest.approx(1.0, abs=1e-15)
    prefix = np.all(np.diff(configs, axis=1) <= 0, axis=1)          # 1…1 0…0
    assert np.all(probs[~prefix] == 0.0) and prefix.sum() == 6
    # p(z2 = 1, z4 = 1, z8 = 0) = e^{−λ2}·e^{−λ4}·(1 − e^{−λ8})
    row = np.flatnonzero((configs == [1, 1, 0, 0, 0]).all(axis=1))[0]
    assert probs[row] == pytest.approx(cond[0] * cond[1] * (1 - cond[2]), rel=1e-14)


def test_exact_kl_by_enumeration_equals_the_chain_rule_closed_form():
    # §4.2: KL over all 32 configurations = Σ_b (Π_{k<b} π_k)·KL(Bern(π_b) ‖ Bern(e^{−λ_b})).
    from bbits_ref.method.prior import autoregressive_kl, chain_pmf, prior_conditionals
    rng = np.random.default_rng(4)
    for _ in range(5):
        pi = rng.uniform(0.05, 0.95, 5)
        lam = rng.uniform(0.05, 3.0, 5)
        _, q = chain_pmf(pi)
        _, p = chain_pmf(prior_conditionals(lam))
        on = q > 0
        brute = float(np.sum(q[on] * np.log(q[on] / p[on])))
        closed = float(autoregressive_kl(np.asarray(pi), lam, exact=True).data)
        assert closed == pytest.approx(brute, rel=1e-10)


def test_explicit_prior_rejects_bad_input():
    from bbits_ref.method.prior import chain_configurations, chain_pmf, prior_conditionals
    with pytest.raises(ValueError, match="lambdas"):
        prior_conditionals([-1.0])
    with pytest.raises(ValueError, match="conditionals"):
        chain_pmf([1.5])
    with pytest.raises(ValueError, match="n must be"):
        chain_configurations(0)

"""HIPS-autograd versions of the gate and prior formulas (docs/method.md §3, §4), written from the math.

Independent of :mod:`bbits_ref.method.gates` and :mod:`bbits_ref.method.prior`: the probabilities come from the
CDF of the stretched variable (1 − P(s̄ ≤ 0)) instead of the closed-form offset, the chain products
from exp(cumsum(log π)), the regularizer in its factored form (w · mean π2 · [2 + 4π4 + …]) and the
KL from its entropy form.  autograd derives every gradient.  This module adds no primitive, so it
has no ``ORACLES`` dict.
"""
from __future__ import annotations

import autograd.numpy as anp

TEMP, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def _sig(x):
    return 0.5 * (anp.tanh(0.5 * x) + 1.0)


def hc_prob_nonzero(phi, temp=TEMP, gamma=GAMMA, zeta=ZETA):
    """1 − P(s̄ ≤ 0), with P(s̄ ≤ a) = P(L ≤ temp·logit((a − γ)/(ζ − γ)) − φ), L logistic."""
    a0 = (0.0 - gamma) / (zeta - gamma)
    return 1.0 - _sig(temp * anp.log(a0 / (1.0 - a0)) - phi)


def hc_sample(phi, u, temp=TEMP, gamma=GAMMA, zeta=ZETA):
    """Stretched binary concrete, clamped to [0, 1] (the clamp cuts the gradient)."""
    u = anp.clip(u, 1e-6, 1 - 1e-6)
    s = _sig((anp.log(u / (1.0 - u)) + phi) / temp)
    sbar = gamma + (zeta - gamma) * s
    return anp.where(sbar <= 0.0, 0.0, anp.where(sbar >= 1.0, 1.0, sbar))


def gs_sample(phi, u, temp=TEMP):
    """Binary concrete: sigmoid((φ + logit u)/τ)."""
    u = anp.clip(u, 1e-6, 1 - 1e-6)
    return _sig((phi + anp.log(u) - anp.log1p(-u)) / temp)


def gs_prob_nonzero(phi):
    return _sig(phi)


def _costs(w, reg_type, bits):
    return anp.array([w * b if reg_type == "bop" else 1.0 for b in bits])


def bop_regularizer(phi2, phi_chain, w, reg_type="bop"):
    """Factored form: w·mean(π2)·[2 + 4π4 + 8π4π8 + …] (or 1 + Σ c(b)·Π π without pruning)."""
    pi = hc_prob_nonzero(phi_chain)
    prods = anp.exp(anp.cumsum(anp.log(pi)))                 # π4, π4π8, π4π8π16, π4…π32
    if phi2 is None:
        return 1.0 + anp.sum(_costs(w, reg_type, (4, 8, 16, 32)) * prods)
    c = _costs(w, reg_type, (2, 4, 8, 16, 32))
    return anp.mean(hc_prob_nonzero(phi2)) * (c[0] + anp.sum(c[1:] * prods))


def independent_regularizer(phi2, phi_chain, w, reg_type="bop"):
    pi = hc_prob_nonzero(phi_chain)
    if phi2 is None:
        return 1.0 + anp.sum(_costs(w, reg_type, (4, 8, 16, 32)) * pi)
    c = _costs(w, reg_type, (2, 4, 8, 16, 32))
    return c[0] * anp.mean(hc_prob_nonzero(phi2)) + anp.sum(c[1:] * pi)


def autoregressive_kl(probs, lambdas, exact=True):
    """Σ_b Π_{k<b}π_k·[λ_b π_b − H(π_b) − (1 − π_b)·log(1 − e^{−λ_b})], or Σ λ_b Π_{k≤b} π_k."""
    incl = anp.exp(anp.cumsum(anp.log(probs), axis=-1))
    if not exact:
        return anp.sum(lambdas * incl, axis=-1)
    excl = incl / probs
    entropy = -(probs * anp.log(probs) + (1 - probs) * anp.log(1 - probs))
    kl = lambdas * probs - entropy - (1 - probs) * anp.log(1 - anp.exp(-lambdas))
    return anp.sum(excl * kl, axis=-1)

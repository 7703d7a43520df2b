"""The gate prior: KL divergences and the BOP-weighted regularizer of the official code (docs/method.md §4).

Bayesian Bits puts an autoregressive Bernoulli prior on the gate chain z2 → z4 → … → z32: a gate
can be on only if its parent is, p(z_b = 1 | parent on) = e^{−λ_b}.  With a posterior of the same
structure, q(z_b = 1 | parent on) = π_b, the KL divergence reduces to (§4.2)

    KL = Σ_b (Π_{k<b} π_k) · KL(Bern(π_b) ‖ Bern(e^{−λ_b}))  ≈  Σ_b λ_b · Π_{k≤b} π_k,

and the code uses the right-hand side with λ_b ∝ b·MAC_t/MAC_max (§4.3–4.4): each gate costs
its bit width times the probability that the chain is on up to it.  That product is what makes
the prior *autoregressive*; :func:`independent_regularizer` drops it, for the ablation.

The functions take gate probabilities (``gate.prob_nonzero(logits)``, see :mod:`bbits_ref.method.gates`),
written with engine ops, so the gradient reaches the gate logits.

Notebook: ``notebooks/04_prior.ipynb``.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor, get_default_dtype
from bbits_ref.method.gates import CHAIN_BITS      # (4, 8, 16, 32): the scalar gates of every quantizer
from bbits_ref.method.constants import BIT_WIDTHS, REG_TYPES

__all__ = ["mac_weights", "kl_bernoulli", "autoregressive_kl", "bop_regularizer",
           "independent_regularizer", "prior_strengths", "prior_conditionals", "chain_configurations",
           "chain_pmf", "REG_TYPES", "PRUNED_BITS", "CHAIN_BITS"]

PRUNED_BITS = BIT_WIDTHS          # the gates of a weight tensor with pruning: z2, z4, …, z32


# --------------------------------------------------------------------------- input handling

def _as_probs(x, name: str) -> Tensor:
    """Wrap probabilities as a float Tensor and check they lie in [0, 1]."""
    if isinstance(x, np.ndarray | np.generic):
        x = Tensor(x.astype(get_default_dtype()) if x.dtype.kind in "iub" else x)
    elif not isinstance(x, Tensor):
        x = Tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point; got dtype {x.dtype}")
    d = x.data
    nan = np.isnan(d)
    if nan.any() or (d[~nan] < 0).any() or (d[~nan] > 1).any():
        finite = d[~nan]
        seen = f"[{finite.min()}, {finite.max()}]" if finite.size else "no numbers"
        raise ValueError(f"{name} must be probabilities in [0, 1]; got values in {seen}"
                         f"{' and NaN' if nan.any() else ''}. Pass gate.prob_nonzero(logits), "
                         "not the logits themselves.")
    return x


def _check_mac_weight(mac_weight) -> float:
    if not (isinstance(mac_weight, Real) and math.isfinite(mac_weight) and mac_weight > 0):
        raise ValueError(f"mac_weight is MAC_t / MAC_max and must be a positive number; got "
                         f"{mac_weight!r}. Compute it with mac_weights(macs).")
    return float(mac_weight)


def _gate_costs(mac_weight: float, reg_type: str, bits) -> list:
    """c(b) = w_t·b for ``"bop"`` (the README runs), c(b) = 1 for ``"const"`` (the CLI default)."""
    if reg_type == "bop":
        return [mac_weight * b for b in bits]
    if reg_type == "const":
        return [1.0 for _ in bits]
    raise ValueError(f"reg_type must be one of {REG_TYPES}; got {reg_type!r} "
                     "(the README runs use 'bop')")


def _check_chain(prob_z2, chain_probs):
    chain_probs = _as_probs(chain_probs, "chain_probs")
    if chain_probs.shape != (len(CHAIN_BITS),):
        raise ValueError(f"chain_probs must have shape (4,) for (pi4, pi8, pi16, pi32); got "
                         f"{chain_probs.shape}")
    if prob_z2 is not None:
        prob_z2 = _as_probs(prob_z2, "prob_z2")
        if prob_z2.ndim != 1 or prob_z2.shape[0] == 0:
            raise ValueError(f"prob_z2 must have shape (C,), one pruning probability per output "
                             f"channel; got {prob_z2.shape}. Pass None for a tensor without "
                             "pruning (activations, the last layer's weights).")
    return prob_z2, chain_probs


# --------------------------------------------------------------------------- prior strengths

def mac_weights(macs: dict) -> dict:
    """w_t = MAC_t / MAC_max for every quantizer t (§4.4).

    ``macs`` maps a quantizer name to its MAC count: the layer's MACs for a weight quantizer, the
    summed MACs of the consuming layers for an activation quantizer.
    """
    if not isinstance(macs, dict) or not macs:
        raise ValueError(f"macs must be a non-empty dict {{quantizer name: MAC count}}; got "
                         f"{macs!r}")
    bad = {k: v for k, v in macs.items()
           if not (isinstance(v, Real) and math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"MAC counts must be positive numbers; got {bad}")
    mac_max = max(macs.values())
    return {name: float(m / mac_max) for name, m in macs.items()}


def prior_strengths(mu, mac_weight, bits=PRUNED_BITS) -> np.ndarray:
    """λ_{t,b} = μ·b·w_t for each gate bit width b (§4.4); float64 array of len(bits)."""
    if not (isinstance(mu, Real) and math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu (the regularization strength, --gating-lambda) must be a "
                         f"non-negative number; got {mu!r}")
    mac_weight = _check_mac_weight(mac_weight)
    bits = np.asarray(bits)
    if bits.ndim != 1 or bits.dtype.kind not in "iu" or (bits <= 0).any():
        raise ValueError(f"bits must be a 1-D sequence of positive integers such as "
                         f"{PRUNED_BITS}; got {bits!r}")
    return mu * bits.astype(np.float64) * mac_weight


# --------------------------------------------------------------------------- KL divergences

def _xlogx(t: Tensor) -> Tensor:
    """t·log t with 0·log 0 = 0 (and gradient 0 there, where the true one is −∞)."""
    pos = t.data > 0
    return ops.where(pos, t * ops.log(ops.where(pos, t, 1.0)), 0.0)


def kl_bernoulli(q, p) -> Tensor:
    """KL(Bern(q) ‖ Bern(p)) = q·log(q/p) + (1 − q)·log((1 − q)/(1 − p)), elementwise.

    q may be 0 or 1 (0·log 0 = 0); the prior p must lie strictly inside (0, 1).
    """
    q = _as_probs(q, "q")
    p = _as_probs(p, "p (the prior probability)")
    if (p.data <= 0).any() or (p.data >= 1).any():
        raise ValueError("the prior probability p must lie strictly in (0, 1), otherwise the KL "
                         "is infinite; with p = exp(-lambda) this needs 0 < lambda < ~700")
    one_minus_q = 1.0 - q
    return (_xlogx(q) - q * ops.log(p)) + (_xlogx(one_minus_q) - one_minus_q * ops.log(1.0 - p))


def _chain_products(probs: list) -> list:
    """[π_1, π_1π_2, π_1π_2π_3, …]: the probability that the chain is on up to each gate."""
    products = [probs[0]]
    for p in probs[1:]:            # a loop over the (≤ 5) gates of the chain, each step vectorized
        products.append(products[-1] * p)
    return products


def autoregressive_kl(chain_probs, lambdas, exact: bool = True) -> Tensor:
    """KL between the autoregressive gate posterior and prior, summed over the chain (§4.2).

    exact=True:   Σ_b (Π_{k<b} π_k) · KL(Bern(π_b) ‖ Bern(e^{−λ_b}))
    exact=False:  Σ_b λ_b · Π_{k≤b} π_k   (the entropy and log(1 − e^{−λ}) terms dropped)

    ``chain_probs`` has shape (..., n) (the conditionals π_2, π_4, …, last axis in chain order),
    ``lambdas`` shape (n,).  Returns a Tensor of shape ``chain_probs.shape[:-1]``.
    """
    chain_probs = _as_probs(chain_probs, "chain_probs")
    lambdas = np.asarray(lambdas.data if isinstance(lambdas, Tensor) else lambdas, dtype=float)
    if chain_probs.ndim == 0 or lambdas.shape != chain_probs.shape[-1:]:
        raise ValueError(f"chain_probs must have shape (..., n) and lambdas shape (n,); got "
                         f"{chain_probs.shape} and {lambdas.shape}")
    if not np.isfinite(lambdas).all() or (lambdas < 0).any() or (exact and (lambdas == 0).any()):
        raise ValueError(f"lambdas are prior strengths and must be finite and "
                         f"{'> 0 for the exact KL' if exact else '>= 0'}; got {lambdas}")
    lambdas = lambdas.astype(chain_probs.dtype)
    probs = [chain_probs[..., b] for b in range(lambdas.size)]
    on_through = _chain_products(probs)                           # Π_{k≤b} π_k
    if not exact:
        terms = [float(lam) * prod for lam, prod in zip(lambdas, on_through)]
    else:
        kl = kl_bernoulli(chain_probs, np.exp(-lambdas))            # (..., n)
        on_before = [None] + on_through[:-1]                        # Π_{k<b} π_k (1 for b = first)
        terms = [kl[..., b] if before is None else before * kl[..., b]
                 for b, before in enumerate(on_before)]
    return ops.reduce_sum(ops.stack(*terms, axis=-1), axis=-1)


# --------------------------------------------------------------------------- regularizers

def bop_regularizer(prob_z2, chain_probs, mac_weight, *, reg_type: str = "bop") -> Tensor:
    """The code's per-quantizer regularizer R_t (§4.3), a scalar Tensor.

    With pruning (``prob_z2`` of shape (C,), a weight tensor), c(b) = w_t·b::

        R_t = (1/C) Σ_c [c(2)π_{2,c} + c(4)π_{2,c}π_4 + c(8)π_{2,c}π_4π_8 + c(16)·… + c(32)·…]
            = w_t · mean_c(π_{2,c}) · [2 + 4π_4 + 8π_4π_8 + 16π_4π_8π_16 + 32π_4π_8π_16π_32]

    Without pruning (``prob_z2=None``: activations, the last layer's weights)::

        R_t = 1 + c(4)π_4 + c(8)π_4π_8 + c(16)π_4π_8π_16 + c(32)π_4π_8π_16π_32

    ``reg_type="const"`` sets every c(b) = 1.  The terms of hard-cut gates stay in (§4.3).
    The sums are evaluated in the order written, per channel, then averaged (the code's arithmetic).
    """
    prob_z2, chain_probs = _check_chain(prob_z2, chain_probs)
    mac_weight = _check_mac_weight(mac_weight)
    chain = [chain_probs[i] for i in range(len(CHAIN_BITS))]
    if prob_z2 is None:
        costs = _gate_costs(mac_weight, reg_type, CHAIN_BITS)
        total = 1.0                           # the constant of the code; it has no gradient
        for c, on in zip(costs, _chain_products(chain)):
            total = total + c * on
        return total
    costs = _gate_costs(mac_weight, reg_type, PRUNED_BITS)
    per_channel = None
    for c, on in zip(costs, _chain_products([prob_z2] + chain)):    # on: shape (C,)
        per_channel = c * on if per_channel is None else per_channel + c * on
    return ops.mean(per_channel)


def independent_regularizer(prob_z2, chain_probs, mac_weight, *, reg_type: str = "bop") -> Tensor:
    """Ablation: an independent (non-autoregressive) prior, each gate paying c(b)·π_b alone.

    With pruning:    R_t = c(2)·mean_c(π_{2,c}) + c(4)π_4 + c(8)π_8 + c(16)π_16 + c(32)π_32
    Without pruning: R_t = 1 + c(4)π_4 + c(8)π_8 + c(16)π_16 + c(32)π_32

    Unlike :func:`bop_regularizer`, a gate whose parent is off still pays for being on, so its
    probability is pushed down even though the data cannot see it.
    """
    prob_z2, chain_probs = _check_chain(prob_z2, chain_probs)
    mac_weight = _check_mac_weight(mac_weight)
    chain = [chain_probs[i] for i in range(len(CHAIN_BITS))]
    if prob_z2 is None:
        costs, probs, total = _gate_costs(mac_weight, reg_type, CHAIN_BITS), chain, 1.0
    else:
        costs = _gate_costs(mac_weight, reg_type, PRUNED_BITS)
        probs, total = [ops.mean(prob_z2)] + chain, 0.0
    for c, p in zip(costs, probs):
        total = total + c * p
    return total


# --------------------------------------------------------------------------- the prior, explicitly

def prior_conditionals(lambdas) -> np.ndarray:
    """p(z_b = 1 | parent on) = e^{−λ_b} for every gate of the chain (§4.1)."""
    lam = np.asarray(lambdas, dtype=np.float64)
    if lam.ndim != 1 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError(f"lambdas must be a 1-D array of finite values ≥ 0; got {lambdas!r}")
    return np.exp(-lam)


def chain_configurations(n: int) -> np.ndarray:
    """All 2^n on/off configurations of an n-gate chain, one per row (z2 first)."""
    if not (isinstance(n, int) and 1 <= n <= 16):
        raise ValueError(f"n must be an int between 1 and 16; got {n!r}")
    return ((np.arange(2 ** n)[:, None] >> np.arange(n)[::-1]) & 1).astype(np.int8)


def chain_pmf(conditionals) -> tuple[np.ndarray, np.ndarray]:
    """The autoregressive distribution over gate configurations (§4.1).

    ``conditionals[b]`` is the probability that gate b is on given its parent is on (the prior's
    e^{−λ_b}, or the posterior's π_b); the first gate has no parent.  A gate whose parent is off is
    off with probability 1, so every configuration with a 1 after a 0 has probability 0.

    Returns ``(configs, probs)``: all 2^n configurations (rows) and their probabilities, which sum
    to 1.  The only configurations with mass are the n + 1 "prefixes" (effective bit width 0, 2,
    4, …).
    """
    c = np.asarray(conditionals, dtype=np.float64)
    if c.ndim != 1 or np.any(c < 0) or np.any(c > 1) or not np.all(np.isfinite(c)):
        raise ValueError(f"conditionals must be a 1-D array of probabilities; got {conditionals!r}")
    configs = chain_configurations(len(c))
    parent_on = np.concatenate([np.ones((len(configs), 1), np.int8), configs[:, :-1]], axis=1)
    factor = np.where(parent_on == 1, np.where(configs == 1, c, 1 - c),
                      np.where(configs == 1, 0.0, 1.0))
    return configs, factor.prod(axis=1)


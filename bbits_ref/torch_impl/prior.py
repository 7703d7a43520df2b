"""The regularizer of the official code in PyTorch (docs/method.md §4.3), and the ablation.

For quantizer t with MAC weight w_t = MAC_t / MAC_max and gate costs c(b) = w_t·b
(``reg_type="bop"``) or 1 (``"const"``), with π the gates' probabilities of being non-zero::

    with pruning     R_t = mean_c [c(2)π2 + c(4)π2π4 + c(8)π2π4π8 + c(16)·… + c(32)·…]  (π2 per c)
    without pruning  R_t = 1 + c(4)π4 + c(8)π4π8 + c(16)π4π8π16 + c(32)π4π8π16π32
    independent      each gate pays c(b)·π_b alone (c(2)·mean_c π_{2,c} with pruning; 1 + … without)

The sums run in the order written, as in :mod:`bbits_ref.method.prior`; autograd gives the gradient
with respect to the logits (∂π/∂φ = π(1 − π), then the product rule).
"""
from __future__ import annotations

import math
from numbers import Real

import torch

from bbits_ref.method.constants import BIT_WIDTHS, CHAIN_BITS, PRIOR_KINDS, REG_TYPES
from bbits_ref.torch_impl.gates import _check_gate_kind, _const, prob_nonzero

__all__ = ["PRIOR_KINDS", "REG_TYPES", "bop_regularizer", "independent_regularizer",
           "regularizer"]

PRUNED_BITS = BIT_WIDTHS          # the gates of a weight tensor with pruning: z2, z4, …, z32


def _check_mac_weight(mac_weight) -> float:
    if not (isinstance(mac_weight, Real) and math.isfinite(mac_weight) and mac_weight > 0):
        raise ValueError(f"mac_weight is MAC_t / MAC_max and must be a positive number; got "
                         f"{mac_weight!r}")
    return float(mac_weight)


def _gate_costs(mac_weight: float, reg_type: str, bits, dtype) -> list:
    """c(b) = w_t·b (``"bop"``) or 1 (``"const"``), rounded to ``dtype`` like the reference."""
    if reg_type == "bop":
        return [_const(mac_weight * b, dtype) for b in bits]
    if reg_type == "const":
        return [1.0 for _ in bits]
    raise ValueError(f"reg_type must be one of {REG_TYPES}; got {reg_type!r} "
                     "(the README runs use 'bop')")


def _check_probs(prob_z2, chain_probs):
    if not isinstance(chain_probs, torch.Tensor) or tuple(chain_probs.shape) != (4,):
        raise ValueError(f"chain_probs must be a tensor of shape (4,) for (pi4, pi8, pi16, pi32); "
                         f"got {getattr(chain_probs, 'shape', type(chain_probs).__name__)}")
    if prob_z2 is not None and (not isinstance(prob_z2, torch.Tensor) or prob_z2.ndim != 1
                                or prob_z2.shape[0] == 0):
        raise ValueError(f"prob_z2 must be a tensor of shape (C,), one pruning probability per "
                         f"output channel, or None (no pruning); got "
                         f"{getattr(prob_z2, 'shape', type(prob_z2).__name__)}")
    for name, p in (("chain_probs", chain_probs), ("prob_z2", prob_z2)):
        if p is not None and not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(f"{name} must be probabilities in [0, 1]; pass "
                             "prob_nonzero(logits), not the logits themselves")


def bop_regularizer(prob_z2, chain_probs, mac_weight, *, reg_type: str = "bop") -> torch.Tensor:
    """R_t of the official code (§4.3) from gate probabilities; a 0-d tensor."""
    _check_probs(prob_z2, chain_probs)
    mac_weight = _check_mac_weight(mac_weight)
    dt = chain_probs.dtype
    chain = list(chain_probs.unbind(0))
    if prob_z2 is None:
        total = 1.0                              # the code's constant; it has no gradient
        on = None
        for c, p in zip(_gate_costs(mac_weight, reg_type, CHAIN_BITS, dt), chain):
            on = p if on is None else on * p     # Π_{k≤b} π_k
            total = total + c * on
        return total
    per_channel = on = None
    for c, p in zip(_gate_costs(mac_weight, reg_type, PRUNED_BITS, dt), [prob_z2] + chain):
        on = p if on is None else on * p        # shape (C,)
        per_channel = c * on if per_channel is None else per_channel + c * on
    return per_channel.mean()


def independent_regularizer(prob_z2, chain_probs, mac_weight, *,
                            reg_type: str = "bop") -> torch.Tensor:
    """Ablation: every gate pays c(b)·π_b alone (no autoregressive products)."""
    _check_probs(prob_z2, chain_probs)
    mac_weight = _check_mac_weight(mac_weight)
    dt = chain_probs.dtype
    chain = list(chain_probs.unbind(0))
    if prob_z2 is None:
        costs, probs, total = _gate_costs(mac_weight, reg_type, CHAIN_BITS, dt), chain, 1.0
    else:
        costs = _gate_costs(mac_weight, reg_type, PRUNED_BITS, dt)
        probs, total = [prob_z2.mean()] + chain, 0.0
    for c, p in zip(costs, probs):
        total = total + c * p
    return total


def regularizer(prune_logits, chain_logits, mac_weight, *, prior: str = "autoregressive",
                reg_type: str = "bop", gate: str = "hard_concrete") -> torch.Tensor:
    """R_t from the logits: probabilities from :func:`~.gates.prob_nonzero`, then the prior."""
    if prior not in PRIOR_KINDS:
        raise ValueError(f"prior must be one of {PRIOR_KINDS}; got {prior!r}")
    _check_gate_kind(gate)
    prob_z2 = None if prune_logits is None else prob_nonzero(prune_logits, gate=gate)
    fn = bop_regularizer if prior == "autoregressive" else independent_regularizer
    return fn(prob_z2, prob_nonzero(chain_logits, gate=gate), mac_weight, reg_type=reg_type)

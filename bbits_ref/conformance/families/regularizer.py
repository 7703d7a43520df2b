"""The ``regularizer/…`` cases (docs/method.md §4.3): R_t and its gradient.

Autoregressive prior and the independent ablation, cost c(b) = w_t·b (``"bop"``) or 1
(``"const"``), with and without pruning gates, and the CIFAR-10 initialisation.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.conformance.families._common import f32, f32s
from bbits_ref.conformance.protocol import Case

__all__ = ["cases"]


def cases(rng) -> list:
    """The regularizer cases, drawn from ``rng`` (expected values not set)."""
    cases = []
    prune = f32(np.concatenate([[6.0, -2.0, 0.0, -6.0], rng.normal(1.0, 3.0, 12)]))
    configs = [
        ("autoregressive", "bop", True, [6.0, 1.5, -1.0, -6.0], 460800 / 3276800),
        ("autoregressive", "bop", False, [4.0, 0.3, -2.5, -6.0], 0.16),
        ("autoregressive", "const", True, [2.0, -0.5, 3.0, -3.0], 0.5),
        ("autoregressive", "const", False, [6.0, 6.0, 6.0, 6.0], 1.0),
        ("independent", "bop", True, [6.0, 1.5, -1.0, -6.0], 460800 / 3276800),
        ("independent", "bop", False, [4.0, 0.3, -2.5, -6.0], 0.16),
        ("independent", "const", True, [2.0, -0.5, 3.0, -3.0], 0.5),
        ("independent", "const", False, [6.0, 6.0, -1.0, 6.0], 1.0),
    ]
    for prior, reg_type, pruned, chain, mac in configs:
        label = f"{prior}_{reg_type}_{'pruned' if pruned else 'unpruned'}"
        cases.append(Case(
            f"regularizer/{label}", "regularizer",
            {"prune_logits": prune if pruned else None, "chain_logits": f32(chain),
             "mac_weight": f32s(mac), "prior": prior, "reg_type": reg_type},
            1e-8, 1e-4,
            ("R_t with pruning: mean over channels" if pruned else "R_t without pruning: "
             "includes the constant 1") + f"; {prior} prior, c(b) = "
            + ("w_t·b" if reg_type == "bop" else "1"), "§4.3"))
    cases.append(Case(
        "regularizer/cifar_init", "regularizer",
        {"prune_logits": f32(np.full(128, 6.0)), "chain_logits": f32([6.0] * 4),
         "mac_weight": 1.0, "prior": "autoregressive", "reg_type": "bop"},
        1e-8, 1e-4, "CIFAR-10 initialisation (all logits 6), MAC weight 1", "§4.3"))
    return cases

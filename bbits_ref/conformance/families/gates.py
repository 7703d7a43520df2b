"""The gate cases (docs/method.md §3).

``hard_concrete/…``, ``gumbel_softmax/…`` (§3.2, §3.7): samples from given noise and their
gradients; noise is nudged so that no sample lies within 1e−3 of a kink (the clamp at 0 or 1,
the straight-through step at 0.5).  ``prob_nonzero/…``, ``deterministic_gates/…``,
``chain_gates_eval/…`` (§3.3–3.5): decision threshold ±1e−5…1e−3, the hard cut at φ = −2 and
−1.999.  Test-time gates must match exactly.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.conformance.families._common import away_from_kinks, f32, hc_kinks
from bbits_ref.conformance.protocol import Case
from bbits_ref.method.gates import HardConcrete

__all__ = ["cases", "THRESHOLD_LOGIT"]

#: The φ where the hard-concrete test-time gate flips: P(z = 0) = 0.34 (§3.4).
THRESHOLD_LOGIT = HardConcrete().threshold_logit()

_HC_LOGITS = [-6.0, -2.0, -0.935303, 0.0, 0.5, 2.0, 6.0]
_NOISE = [0.001, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98, 0.999]


def cases(rng) -> list:
    """The gate cases, drawn from ``rng`` (expected values not set)."""
    cases = []
    phi, u = (f32(a) for a in np.meshgrid(_HC_LOGITS, _NOISE, indexing="ij"))
    u = away_from_kinks(rng, phi, u, hc_kinks)
    cases.append(Case("hard_concrete/grid", "hard_concrete",
                      {"logits": phi, "u": u, "grad_out": f32(rng.standard_normal(phi.shape))},
                      1e-6, 1e-5, "logits × noise grid; samples clamped to 0 and 1 (gradient 0) "
                      "and inside; no sample within 1e-3 of the clamp", "§3.2"))
    phi2 = f32(rng.normal(2.0, 3.0, 64))
    u2 = away_from_kinks(rng, phi2, f32(rng.uniform(0.001, 0.999, 64)), hc_kinks)
    cases.append(Case("hard_concrete/pruning_gates", "hard_concrete",
                      {"logits": phi2, "u": u2, "grad_out": f32(rng.standard_normal(64))},
                      1e-6, 1e-5, "one sample per output channel, as for z2", "§3.2"))

    def st_kink(logits, u, tau):
        z = 1 / (1 + np.exp(-(logits + np.log(u) - np.log1p(-u)) / tau))
        return np.abs(z - 0.5)

    for tau, st in [(2 / 3, False), (1.0, False), (2 / 3, True)]:
        phi, u = (f32(a) for a in np.meshgrid(_HC_LOGITS, _NOISE, indexing="ij"))
        if st:
            u = away_from_kinks(rng, phi, u, lambda p, v: st_kink(p, v, tau))
        label = "straight_through" if st else f"plain_tau_{tau:.3g}".replace(".", "p")
        cases.append(Case(
            f"gumbel_softmax/{label}", "gumbel_softmax",
            {"logits": phi, "u": u, "temperature": tau, "straight_through": st,
             "grad_out": f32(rng.standard_normal(phi.shape))},
            1e-6, 1e-5,
            "z = sigmoid((φ + log u − log(1 − u))/τ)" + (
                "; straight-through: forward 1[z > 0.5], gradient of the soft z; no z within "
                "1e-3 of 0.5" if st else ""), "§3.7"))

    probe = f32([-8.0, -6.0, -2.0, -1.0, -0.935303, 0.0, 1.0, 2.0, 6.0, 8.0,
                 *rng.uniform(-10, 10, 10)])
    for gate in ("hard_concrete", "gumbel_softmax"):
        cases.append(Case(f"prob_nonzero/{gate}", "prob_nonzero",
                          {"logits": probe, "gate": gate}, 1e-6, 0.0,
                          "π(φ) = sigmoid(φ + 1.598597)" if gate == "hard_concrete"
                          else "q(z = 1) = sigmoid(φ)", "§3.3" if gate == "hard_concrete"
                          else "§3.7"))

    offsets = np.array([-1e-3, -1e-4, -1e-5, 1e-5, 1e-4, 1e-3])
    near = f32(THRESHOLD_LOGIT + offsets)
    if not np.array_equal(near > THRESHOLD_LOGIT, offsets > 0):
        raise RuntimeError("float32 rounding moved a threshold probe across the threshold")
    hc_logits = np.concatenate([near, f32([-2.0, -1.999, -1.5, -1.2, -1.0, -0.5, 0.0, 6.0, -6.0])])
    cases += [
        Case("deterministic_gates/hard_concrete", "deterministic_gates",
             {"logits": hc_logits, "gate": "hard_concrete"}, 0.0, 0.0,
             f"z = 1[P(z = 0) < 0.34] ⇔ φ > {THRESHOLD_LOGIT:.7f}: probes at ±1e-5, ±1e-4, "
             "±1e-3 around it, the hard-cut values −2 and −1.999, and values between the L0 "
             "rule's and 0.5's thresholds; must match exactly", "§3.4"),
        Case("deterministic_gates/hard_concrete_at_threshold", "deterministic_gates",
             {"logits": f32([-0.935303]), "gate": "hard_concrete"}, 0.0, 0.0,
             "φ = −0.935303 (the rounded threshold of §3.4) lies 3.4e-7 below the exact "
             "threshold: gate 0.  Within float32 noise of the decision; a float32 "
             "implementation that fails only this case is at the limit of its precision", "§3.4"),
        Case("deterministic_gates/gumbel_softmax", "deterministic_gates",
             {"logits": f32([-1e-4, 1e-4, 0.0, -1.0, 1.0, -6.0, 6.0]), "gate": "gumbel_softmax"},
             0.0, 0.0, "z = 1[φ > 0] (φ = 0 gives 0); must match exactly", "§3.7"),
    ]

    t = THRESHOLD_LOGIT
    chains = [
        ("mnist_init", [6, 6, -6, -6], True, "the MNIST initialisation: 8 bits"),
        ("cifar_init", [6, 6, 6, 6], True, "the CIFAR-10 initialisation: 32 bits"),
        ("just_above_threshold", [6, t + 1e-4, 6, 6], True, "φ8 1e-4 above the threshold: on"),
        ("just_below_threshold", [6, t - 1e-4, 6, 6], True,
         "φ8 1e-4 below the threshold: off, and z16, z32 with it despite φ = 6"),
        ("between_thresholds", [6, 6, -1.2, 6], True,
         "φ16 = −1.2: P(z = 0) = 0.40 ≥ 0.34, so off (a 0.5 threshold would keep it on)"),
        ("hard_cut_exact", [6, -2.0, 6, 6], True, "φ8 = −2 exactly: cut (§3.5)"),
        ("hard_cut_just_above", [6, -1.999, 6, 6], True,
         "φ8 = −1.999: not cut, but below the test-time threshold: off"),
        ("first_gate_off", [-3, 6, 6, 6], False, "z4 off switches every gate off (no hard cut)"),
        ("no_hard_cut", [6, 6, -2.5, 6], False, "hard_cut=False: φ16 = −2.5 is simply off"),
    ]
    for label, logits, cut, note in chains:
        cases.append(Case(f"chain_gates_eval/{label}", "chain_gates_eval",
                          {"chain_logits": f32(logits), "hard_cut": cut}, 0.0, 0.0,
                          note + "; must match exactly", "§3.4–3.5"))
    return cases

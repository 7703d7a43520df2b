"""The ``relative_bops/…`` cases (docs/method.md §5): deterministic relative BOPs in percent.

Uniform LeNet-5 and VGG-7 configurations of the §5.1 table, and mixed ones with pruning.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.conformance.protocol import Case
from bbits_ref.conformance.reference import bops_layer_names
from bbits_ref.method.quantizer import gates_for_bits

__all__ = ["cases", "UNIFORM_BOPS"]

#: Uniform (weight bits, activation bits) configurations of the §5.1 table.
UNIFORM_BOPS = [(8, 8), (4, 8), (2, 8), (4, 4), (2, 4), (2, 2), (2, 32)]


def _chain01(bits: int) -> np.ndarray:
    return np.array(gates_for_bits(bits), dtype=np.float64)


def _bops_gates(layers, w_bits, a_bits, keep=None) -> dict:
    """The protocol's ``gates`` dict: per quantizer a 0/1 chain and, for pruned weights, z2."""
    gates = {}
    for i, (name, _, channels) in enumerate(layers):
        last = i == len(layers) - 1
        w = {"chain": _chain01(w_bits[i])}
        if not last:
            w["z2"] = np.ones(channels) if keep is None else keep[i]
            gates[f"{name}.act_quantizer"] = {"chain": _chain01(a_bits[i])}
        gates[f"{name}.weight_quantizer"] = w
    return gates


def _layer_channels(model: str, width: float) -> list:
    """(name, MACs, output channels) per layer."""
    layers = bops_layer_names(model, width)
    if model == "lenet5":
        channels = [32, 64, 512, 10]
    else:
        c1, c2, c3, hidden = (max(1, int(round(c * width))) for c in (128, 256, 512, 1024))
        channels = [c1, c1, c2, c2, c3, c3, hidden, 10]
    return [(n, m, c) for (n, m), c in zip(layers, channels)]


def cases(rng) -> list:
    """The BOPs cases, drawn from ``rng`` (expected values not set)."""
    cases = []
    for model in ("lenet5", "vgg7"):
        layers = _layer_channels(model, 1.0)
        n = len(layers)
        for w, a in UNIFORM_BOPS:
            cases.append(Case(
                f"relative_bops/{model}/uniform_w{w}a{a}", "relative_bops",
                {"model": model, "width": 1.0, "gates": _bops_gates(layers, [w] * n, [a] * n)},
                0.0, 1e-6, f"uniform w{w}/a{a}, no pruning: the §5.1 table (first layer "
                "fed by the 8-bit input)", "§5.1"))
    mixed = [("lenet5", 1.0), ("vgg7", 1.0), ("vgg7", 0.25)]
    for model, width in mixed:
        layers = _layer_channels(model, width)
        n = len(layers)
        w_bits = [int(b) for b in rng.choice([2, 4, 8, 16, 32], n)]
        a_bits = [int(b) for b in rng.choice([2, 4, 8, 16, 32], n)]
        keep = [(rng.random(c) < rng.uniform(0.2, 0.9)).astype(np.float64) for _, _, c in layers]
        for k in keep:
            k[0] = 1.0                                   # at least one channel kept per layer
        label = f"{model}/mixed_pruned" if width == 1.0 else f"{model}_width_0p25/mixed_pruned"
        cases.append(Case(
            f"relative_bops/{label}", "relative_bops",
            {"model": model, "width": width, "gates": _bops_gates(layers, w_bits, a_bits, keep)},
            0.0, 1e-6, f"mixed bit widths w={w_bits}, a={a_bits[:-1]} and pruned channels "
            "(keep_out × keep_in of the previous layer)", "§5"))
    return cases

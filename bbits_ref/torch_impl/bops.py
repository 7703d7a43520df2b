"""Relative BOPs of the torch models (spec §5), with the pure arithmetic of :mod:`bbits_ref.method.bops`.

BOPs are a count, not a numeric kernel: nothing here is worth a second implementation, so the
layer MACs and the formula come from the reference::

    BOPs_l = MAC_l · b_w(l) · b_a(l) · keep_out(l) · keep_in(l)
    relative BOPs (%) = 100 · Σ_l BOPs_l / Σ_l (MAC_l · 32 · 32)

b_w from the weight quantizer's test-time chain (z4, z8, z16, z32); b_a from the previous
layer's activation quantizer (8 for the first layer); keep_out the kept fraction of this
layer's z2, keep_in that of the previous layer (spec §5).
"""
from __future__ import annotations

import numpy as np

from bbits_ref.method import bops as _ref

__all__ = ["layer_macs", "layer_costs", "relative_bops", "model_relative_bops"]


def layer_macs(model: str, width: float = 1.0) -> list[tuple[str, int]]:
    """(layer name, MACs) in network order for ``"lenet5"`` or ``"vgg7"`` (spec §5.1)."""
    if model == "lenet5":
        return _ref.lenet5_layer_macs()
    if model == "vgg7":
        return _ref.vgg7_layer_macs(width)
    raise ValueError(f"model must be 'lenet5' or 'vgg7'; got {model!r}")


def _to_numpy(v):
    if v is None:
        return None
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def _keep_fraction(z2, name: str) -> float:
    """Fraction of output channels whose test-time z2 is 1 (1 without a pruning gate)."""
    if z2 is None:
        return 1.0
    if z2.ndim != 1 or z2.size == 0 or not np.all((z2 == 0) | (z2 == 1)):
        raise ValueError(f"z2 of {name} must be a (C,) array of test-time gates, exactly 0 or 1; "
                         f"got {z2}")
    return float(z2.mean())


def layer_costs(layers: list[tuple[str, int]], gates: dict) -> list:
    """One :class:`bbits_ref.method.bops.LayerCost` per layer from the test-time gates of its quantizers.

    ``gates`` maps quantizer names (``"conv1.weight_quantizer"``, ``"conv1.act_quantizer"``, …)
    to ``{"chain": (4,) 0/1, "z2": (C,) 0/1 or absent}``; a missing quantizer counts 32 bits.
    """
    if not isinstance(gates, dict):
        raise TypeError(f"gates must be a dict {{quantizer name: {{'chain': ..., 'z2': ...}}}}; "
                        f"got {type(gates).__name__}")
    known = {f"{n}.{k}" for n, _ in layers for k in ("weight_quantizer", "act_quantizer")}
    unknown = sorted(set(gates) - known)
    if unknown:
        raise KeyError(f"unknown quantizer name(s) {unknown}; expected names such as "
                       f"{sorted(known)[:3]}")
    costs, a_bits, keep_in = [], _ref.INPUT_BITS, 1.0
    for name, macs in layers:
        w = gates.get(f"{name}.weight_quantizer")
        w_bits = 32 if w is None else _ref.deterministic_bits(_to_numpy(w["chain"]))
        z2 = None if w is None else _to_numpy(w.get("z2"))
        keep_out = _keep_fraction(z2, f"{name}.weight_quantizer")
        costs.append(_ref.LayerCost(name, macs, w_bits, a_bits, keep_out, keep_in))
        a = gates.get(f"{name}.act_quantizer")
        a_bits = 32 if a is None else _ref.deterministic_bits(_to_numpy(a["chain"]))
        keep_in = keep_out
    return costs


def relative_bops(model: str, width: float, gates: dict) -> float:
    """Deterministic relative BOPs in percent for LeNet-5 or VGG-7(width) (spec §5)."""
    return _ref.relative_bops(layer_costs(layer_macs(model, width), gates))


def model_relative_bops(model) -> float:
    """Relative BOPs of a torch :class:`~.models.BBNet` from its current test-time gates."""
    return _ref.relative_bops(layer_costs(model.layer_macs(), model.test_time_gates()))

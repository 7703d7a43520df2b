"""Relative BOPs of the torch models (docs/method.md §5), counted in torch.

For every conv/linear layer l, with the MACs of the architecture's description::

    BOPs_l = MAC_l · b_w(l) · b_a(l) · keep_out(l) · keep_in(l)
    relative BOPs (%) = 100 · Σ_l BOPs_l / Σ_l (MAC_l · 32 · 32)

b_w = 2^n with n = 1 + q4 + q4·(q8 + q8·(q16 + q16·q32)) from the weight quantizer's test-time
chain (z4, z8, z16, z32); b_a the same for the previous layer's activation quantizer (8 bits,
the architecture's ``input_bits``, for the first layer); keep_out the kept fraction of this
layer's z2, keep_in that of the previous layer (§5).  A quantizer that does not exist counts
32 bits.
"""
from __future__ import annotations

import numpy as np
import torch

from bbits_ref.method.architectures import get_architecture
from bbits_ref.method.constants import FULL_PRECISION_BITS

__all__ = ["layer_macs", "deterministic_bits", "layer_bops", "relative_bops",
           "model_relative_bops"]


def layer_macs(model: str, width: float = 1.0) -> list[tuple[str, int]]:
    """(layer name, MACs) in network order for ``"lenet5"`` or ``"vgg7"`` (§5.1)."""
    return get_architecture(model, width).layer_macs()


def _float64(value) -> torch.Tensor:
    """A tensor, NumPy array or number as a float64 CPU tensor (no gradient)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _check01(t: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{what} must hold test-time gates, exactly 0 or 1; got {t.tolist()}")
    return t


def deterministic_bits(chain) -> torch.Tensor:
    """b = 2^(1 + q4 + q4·(q8 + q8·(q16 + q16·q32))) for 0/1 gates (..., 4) (§5); float64."""
    q = _float64(chain)
    if q.ndim == 0 or q.shape[-1] != 4:
        raise ValueError(f"chain must have shape (4,): the test-time gates z4, z8, z16, z32; "
                         f"got shape {tuple(q.shape)}")
    q4, q8, q16, q32 = _check01(q, "chain").unbind(-1)
    return 2.0 ** (1 + q4 + q4 * (q8 + q8 * (q16 + q16 * q32)))


def _keep_fraction(z2, name: str) -> torch.Tensor:
    """Fraction of output channels whose test-time z2 is 1 (1 without a pruning gate)."""
    if z2 is None:
        return torch.ones((), dtype=torch.float64)
    z2 = _float64(z2)
    if z2.ndim != 1 or z2.numel() == 0:
        raise ValueError(f"z2 of {name} must have shape (C,), one test-time gate per output "
                         f"channel; got shape {tuple(z2.shape)}")
    return _check01(z2, f"z2 of {name}").mean()


def layer_bops(layers: list[tuple[str, int]], gates: dict,
               input_bits: int) -> torch.Tensor:
    """BOPs of every layer (float64, shape (L,)) from the test-time gates of its quantizers.

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
    full = torch.tensor(float(FULL_PRECISION_BITS), dtype=torch.float64)
    a_bits = torch.tensor(float(input_bits), dtype=torch.float64)
    keep_in = torch.ones((), dtype=torch.float64)
    bops = []
    for name, macs in layers:
        w = gates.get(f"{name}.weight_quantizer")
        w_bits = full if w is None else deterministic_bits(w["chain"])
        keep_out = _keep_fraction(None if w is None else w.get("z2"), f"{name}.weight_quantizer")
        bops.append(float(macs) * w_bits * a_bits * keep_out * keep_in)   # the order of §5
        a = gates.get(f"{name}.act_quantizer")
        a_bits = full if a is None else deterministic_bits(a["chain"])
        keep_in = keep_out
    return torch.stack(bops)


def _relative(layers: list[tuple[str, int]], bops: torch.Tensor) -> float:
    baseline = sum(m for _, m in layers) * FULL_PRECISION_BITS ** 2     # an exact integer
    return float(100.0 * bops.sum() / baseline)


def relative_bops(model: str, width: float, gates: dict) -> float:
    """Deterministic relative BOPs in percent for LeNet-5 or VGG-7(width) (§5)."""
    arch = get_architecture(model, width)
    layers = arch.layer_macs()
    return _relative(layers, layer_bops(layers, gates, arch.input_bits))


def model_relative_bops(model) -> float:
    """Relative BOPs of a torch :class:`~.models.BBNet` from its current test-time gates."""
    layers = model.architecture.layer_macs()
    return _relative(layers, layer_bops(layers, model.test_time_gates(),
                                        model.architecture.input_bits))

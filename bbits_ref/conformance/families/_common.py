"""Helpers shared by the case families: float32-representable inputs, noise away from kinks."""
from __future__ import annotations

import numpy as np

from bbits_ref.method.gates import HC_GAMMA, HC_TEMPERATURE, HC_ZETA

__all__ = ["f32", "f32s", "away_from_kinks", "hc_kinks"]


def f32(values) -> np.ndarray:
    """Round to the nearest float32 and back, so float32 and float64 adapters see equal inputs."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


def f32s(value: float) -> float:
    """:func:`f32` of one number, as a Python float."""
    return float(np.float32(value))


def _hc_stretched(logits, u) -> np.ndarray:
    """s̄ = sigmoid((log u − log(1 − u) + φ)/β)·(ζ − γ) + γ before the clamp (§3.2)."""
    s = 1 / (1 + np.exp(-(np.log(u) - np.log1p(-u) + logits) / HC_TEMPERATURE))
    return s * (HC_ZETA - HC_GAMMA) + HC_GAMMA


def hc_kinks(logits, u) -> np.ndarray:
    """Distance of each hard-concrete sample (before the clamp) from the clamp at 0 or 1."""
    bar = _hc_stretched(logits, u)
    return np.minimum(np.abs(bar), np.abs(bar - 1))


def away_from_kinks(rng, logits, u, kink_distance) -> np.ndarray:
    """Round the noise to float32 and redraw it where a sample is within 1e−3 of a kink.

    ``kink_distance(logits, u)`` returns the distance of each sample from its nearest kink.
    """
    u = f32(u)
    for _ in range(200):
        bad = kink_distance(logits, u) < 1e-3
        if not bad.any():
            return u
        u = np.where(bad, f32(rng.uniform(0.001, 0.999, u.shape)), u)
    raise RuntimeError("could not draw noise away from the kinks")

"""The ``lenet5_step/…`` case (docs/method.md §7.1): one LeNet-5 training forward and backward.

Fixed parameters, a batch of 8 embedded MNIST images and fixed gate noise; the loss is the mean
cross-entropy + μ·Σ_t R_t (autoregressive, bop) with the hard cut on.
"""
from __future__ import annotations

import math

import numpy as np

from bbits_ref.conformance.families._common import away_from_kinks, f32, f32s, hc_kinks
from bbits_ref.conformance.protocol import SEED, Case
from bbits_ref.method.quantizer import step_sizes

__all__ = ["cases", "lenet5_fixture", "LENET5_CHAINS", "push_off_ties", "set_mixed_gates"]

#: Chain logits (φ4, φ8, φ16, φ32) of the LeNet-5 case: activations at most 4 bits (so float32
#: activations rarely round differently), fractional gates, and the hard cut at φ = −2 exactly
#: (conv2.act, cut) next to φ = −1.999 (conv2.weight, sampled).
LENET5_CHAINS = {
    "conv1.weight_quantizer": [6.0, 1.0, -6.0, -6.0],
    "conv1.act_quantizer": [1.5, -6.0, -6.0, -6.0],
    "conv2.weight_quantizer": [6.0, -1.999, -6.0, -6.0],
    "conv2.act_quantizer": [6.0, -2.0, -6.0, -6.0],
    "fc1.weight_quantizer": [3.0, 6.0, -6.0, -6.0],
    "fc1.act_quantizer": [0.0, -2.5, -6.0, -6.0],
    "fc2.weight_quantizer": [6.0, 0.0, -6.0, -6.0],
}


def push_off_ties(w: np.ndarray, beta: float, signed: bool) -> np.ndarray:
    """Move weights to at most 0.4 steps of the 8-bit grid from a grid point (saturated ones
    stay), so no weight is within 0.1·s8 of a rounding tie at 2, 4 or 8 bits."""
    s8 = step_sizes(beta, signed)[2]
    k = np.round(w / s8)
    moved = s8 * (k + np.clip(w / s8 - k, -0.4, 0.4))
    return np.where(np.abs(w) >= 0.999 * beta, w, moved)


def set_mixed_gates(model, params: dict, rng: np.random.Generator) -> None:
    """Give ``params`` (a LeNet-5 state dict) the mixed gates of :data:`LENET5_CHAINS`, random
    pruning logits drawn from ``rng`` (quantizer by quantizer, in model order), and weights moved
    off rounding ties with their ranges re-set to max(w).  Used by the single step and by the
    ``mixed_gates`` trajectory, so both start from the same kind of network."""
    for name, q in model.quantizers():
        params[f"{name}.gate_logits"] = f32(LENET5_CHAINS[name])
        if q.prune_logits is not None:
            params[f"{name}.prune_logits"] = f32(rng.normal(1.5, 2.5, q.prune_logits.shape))
        if q.kind == "weight":
            layer = name.split(".")[0]
            w = push_off_ties(params[f"{layer}.weight"], params[f"{name}.beta"], q.signed)
            params[f"{layer}.weight"] = f32(w)
            params[f"{name}.beta"] = f32(params[f"{layer}.weight"].max())


def lenet5_fixture(seed: int = SEED) -> dict:
    """Inputs of the ``lenet5_step`` case: params, x (8 images), y, noise, mu.

    A LeNet-5 (float64, seeded) is initialised on 2 embedded MNIST training images (§7.3);
    its chain and pruning logits are then set to mixed values (:data:`LENET5_CHAINS`), its
    weights moved off rounding ties, and the gate noise drawn away from the hard-concrete
    clamp.  Every array is float32-representable.  The batch is 8 other training images.
    """
    from bbits_ref.datasets import load_embedded_mnist, normalize_mnist
    from bbits_ref.method.models import lenet5

    rng = np.random.default_rng(seed)
    data = load_embedded_mnist()
    images = normalize_mnist(data.x_train[:10]).astype(np.float64)
    model = lenet5(rng=rng, dtype=np.float64)
    model.initialize(images[:2], rng)
    params = {k: (f32(v) if v.dtype.kind == "f" else v) for k, v in model.state_dict().items()}
    set_mixed_gates(model, params, rng)
    noise = model.sample_noise(rng)
    for name, q in model.quantizers():
        for key, logit_key in (("prune", "prune_logits"), ("chain", "gate_logits")):
            if key in noise[name]:
                noise[name][key] = away_from_kinks(rng, params[f"{name}.{logit_key}"],
                                                    noise[name][key], hc_kinks)
    # φ8 = −1.999 is sampled (not cut): put its sample in the middle of (0, 1)
    phi = float(params["conv2.weight_quantizer.gate_logits"][1])
    noise["conv2.weight_quantizer"]["chain"][1] = f32s(1 / (1 + math.exp(phi)))
    return {"params": params, "x": images[2:10], "y": data.y_train[2:10].astype(np.int64),
            "noise": noise, "mu": 0.1}


def cases() -> list:
    """The LeNet-5 case (its inputs come from :func:`lenet5_fixture`, with its own seed)."""
    inputs = lenet5_fixture()
    return [Case(
        "lenet5_step/mixed_gates", "lenet5_step", inputs, 0.0, 2e-3,
        "LeNet-5, batch 8, μ = 0.1: mean CE + μ·Σ R_t (autoregressive, bop), hard cut on: "
        "conv2.act φ8 = −2 exactly is cut (regularizer gradient only), conv2.weight φ8 = −1.999 "
        "is sampled.  Errors relative to each output's max |value|: logits 1e-4, loss 1e-5, "
        "gradients 2e-3, range (β) gradients 1e-2: a β gradient sums g·(x_q − x_c)/β over a "
        "whole tensor, and an activation that rounds the other way in float32 moves it by "
        "g·s/β (the float32 reference is within 1e-5 everywhere)", "§7.1, §4.3",
        {"logits": [0.0, 1e-4], "loss": [0.0, 1e-5], "grads/*.beta": [0.0, 1e-2]})]

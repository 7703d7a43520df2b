"""Stochastic gates in PyTorch: hard concrete (official) and Gumbel-softmax (docs/method.md §3).

The formulas of :mod:`bbits_ref.method.gates`, written again in torch (only the constants are
shared, from :mod:`bbits_ref.method.constants`) and vectorised over all the gates of a tensor::

    hard concrete  s = sigmoid((log u − log(1 − u) + φ)/τ),  z = min(1, max(0, s·(ζ − γ) + γ))
                   π(φ) = P(z ≠ 0) = sigmoid(φ − τ·log(−γ/ζ)),  test time: 1[P(z = 0) < 0.34]
    Gumbel-softmax z = sigmoid((φ + log u − log(1 − u))/τ)  (straight-through: 1[z > 0.5] forward)
                   q(z = 1) = sigmoid(φ),  test time: 1[φ > 0]

with τ = 2/3, γ = −0.1, ζ = 1.1.  The uniform noise u is given (a NumPy array or a tensor, as
drawn by the models' ``sample_noise``) or drawn from a ``torch.Generator`` with
:func:`uniform_noise`; it is clamped to [1e−6, 1 − 1e−6] in the logits' dtype, as in the
reference.  Constants are rounded to the logits' dtype first, so float32 runs the same
arithmetic as the float32 reference.  A clamped hard-concrete gate gets no gradient (the
gradient passes strictly inside (0, 1), like the reference's ``ops.clip``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from bbits_ref.method.constants import (GATE_KINDS, HARD_CUT_LOGIT, HC_GAMMA, HC_TEMPERATURE,
                                        HC_THRESHOLD, HC_ZETA, NOISE_CLAMP)
from bbits_ref.torch_impl.quantizer import round_ste

__all__ = ["GATE_KINDS", "uniform_noise", "as_noise", "hard_concrete_sample",
           "gumbel_softmax_sample", "sample", "prob_nonzero", "prob_zero", "deterministic_gates",
           "chain_gates", "chain_gates_eval"]

# τ·log(−γ/ζ) = −1.598597: π(φ) = sigmoid(φ − offset)
HC_PROB_OFFSET = HC_TEMPERATURE * math.log(-HC_GAMMA / HC_ZETA)
# The chain's hard cut (§3.5): φ ≤ −2 for hard concrete.  A Gumbel-softmax gate is cut at
# the logit with the same on-probability, sigmoid(φ) = π(−2) = 0.401: φ = −0.401403.
HARD_CUT_LOGITS = {"hard_concrete": HARD_CUT_LOGIT,
                   "gumbel_softmax": HARD_CUT_LOGIT - HC_PROB_OFFSET}


def _const(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (as the reference's engine does with Python numbers)."""
    return float(np.dtype(str(dtype).removeprefix("torch.")).type(value))


def _check_logits(logits, name: str = "gate logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point; got dtype {logits.dtype}")
    if bool(torch.isnan(logits).any()):
        raise ValueError(f"{name} contain NaN; check the optimizer step that produced them "
                         "(a NaN loss or learning rate)")
    return logits


def _check_gate_kind(gate: str) -> None:
    if gate not in GATE_KINDS:
        raise ValueError(f"gate must be one of {GATE_KINDS}; got {gate!r}")


def _check_temperature(temperature) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r} "
                         f"(the code uses {HC_TEMPERATURE:.6f} = 2/3)")
    return float(temperature)


# --------------------------------------------------------------------------- noise

def uniform_noise(shape, generator: torch.Generator | None = None, *, dtype=torch.float64,
                  device=None) -> torch.Tensor:
    """u ~ U(0, 1) clamped to [1e−6, 1 − 1e−6] (§3.2), from an explicit ``torch.Generator``.

    ``device`` defaults to the generator's device (CPU without one).
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}. "
                        "Create one with torch.Generator().manual_seed(seed).")
    if device is None and generator is not None:
        device = generator.device
    u = torch.rand(tuple(shape), generator=generator, dtype=dtype, device=device)
    return u.clamp_(NOISE_CLAMP, 1 - NOISE_CLAMP)


def as_noise(u, logits: torch.Tensor) -> torch.Tensor:
    """The uniform noise as a tensor like ``logits`` (dtype, device), checked and clamped."""
    if not isinstance(u, torch.Tensor):
        arr = np.asarray(u)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"uniform noise u must be numeric; got dtype {arr.dtype}")
        u = torch.as_tensor(arr)
    if tuple(u.shape) != tuple(logits.shape):
        raise ValueError(f"uniform noise u has shape {tuple(u.shape)} but the gate logits have "
                         f"shape {tuple(logits.shape)}; draw one u per gate, e.g. "
                         f"uniform_noise({tuple(logits.shape)}, generator)")
    u = u.to(device=logits.device, dtype=logits.dtype)
    bad = torch.isnan(u) | (u < 0) | (u > 1)
    if bool(bad.any()):
        raise ValueError(f"uniform noise u must lie in [0, 1] (it is clamped to [{NOISE_CLAMP}, "
                         f"1 − {NOISE_CLAMP}]); got values such as {u[bad][:3].tolist()}")
    return u.clamp(_const(NOISE_CLAMP, u.dtype), _const(1 - NOISE_CLAMP, u.dtype))


def _logistic_noise(u, logits, generator) -> torch.Tensor:
    """log u − log(1 − u): the given noise, or fresh noise from ``generator``."""
    if u is None:
        u = uniform_noise(logits.shape, generator, dtype=logits.dtype, device=logits.device)
    else:
        u = as_noise(u, logits)
    return torch.log(u) - torch.log(1 - u)


# --------------------------------------------------------------------------- samples

def hard_concrete_sample(logits: torch.Tensor, u=None, *, generator=None,
                         temperature: float = HC_TEMPERATURE) -> torch.Tensor:
    """z = clip(sigmoid((log u − log(1−u) + φ)/τ)·(ζ − γ) + γ, 0, 1)   (§3.2).

    ∂z/∂φ = (ζ − γ)·s(1 − s)/τ strictly inside (0, 1), 0 where the sample is clamped.
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    return _HardConcrete.apply(logits, _logistic_noise(u, logits, generator), temperature)


class _HardConcrete(torch.autograd.Function):
    """The hard-concrete sample as one node of the graph (a training step samples ~10 gate
    tensors; autograd through their ~8 small operations each costs more than the rest of a
    small quantizer).  Forward and backward are the operations autograd would run, in its
    order, so values and gradients are the same."""

    @staticmethod
    def forward(ctx, logits, noise, temperature):
        dt = logits.dtype
        s = torch.sigmoid((noise.detach() + logits.detach()) / _const(temperature, dt))
        stretched = s * _const(HC_ZETA - HC_GAMMA, dt) + _const(HC_GAMMA, dt)
        inside = (stretched > 0) & (stretched < 1)
        ctx.temperature = temperature
        ctx.save_for_backward(s, inside)
        return torch.where(inside, stretched, stretched.clamp(0, 1))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        s, inside = ctx.saved_tensors
        dt = s.dtype
        g = torch.where(inside, g, g.new_zeros(())) * _const(HC_ZETA - HC_GAMMA, dt)
        g = g * (1 - s) * s                               # sigmoid's derivative s(1 − s)
        return g / _const(ctx.temperature, dt), None, None


def gumbel_softmax_sample(logits: torch.Tensor, u=None, *, generator=None,
                          temperature: float = HC_TEMPERATURE,
                          straight_through: bool = False) -> torch.Tensor:
    """z = sigmoid((φ + log u − log(1−u))/τ) (§3.7).

    Straight-through: the forward is 1[z > 0.5], the gradient that of the soft z.
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    if not isinstance(straight_through, bool):
        raise TypeError(f"straight_through must be True or False; got {straight_through!r}")
    z = torch.sigmoid((logits + _logistic_noise(u, logits, generator))
                      / _const(temperature, logits.dtype))
    # For z in (0, 1) round-half-to-even is 1[z > 0.5]; round_ste keeps the soft z's gradient.
    return round_ste(z) if straight_through else z


def sample(logits: torch.Tensor, u=None, *, gate: str = "hard_concrete", generator=None,
           **options) -> torch.Tensor:
    """A training-time sample of the ``gate`` family ("hard_concrete" or "gumbel_softmax")."""
    _check_gate_kind(gate)
    fn = hard_concrete_sample if gate == "hard_concrete" else gumbel_softmax_sample
    return fn(logits, u, generator=generator, **options)


# --------------------------------------------------------------------------- probabilities

def prob_nonzero(logits: torch.Tensor, *, gate: str = "hard_concrete") -> torch.Tensor:
    """q(z ≠ 0): sigmoid(φ + 1.598597) (hard concrete, §3.3) or sigmoid(φ) (§3.7)."""
    _check_gate_kind(gate)
    logits = _check_logits(logits)
    if gate == "hard_concrete":
        return torch.sigmoid(logits - _const(HC_PROB_OFFSET, logits.dtype))
    return torch.sigmoid(logits)


def prob_zero(logits: torch.Tensor, *, gate: str = "hard_concrete") -> torch.Tensor:
    """q(z = 0): sigmoid(−1.598597 − φ) (hard concrete) or sigmoid(−φ)."""
    _check_gate_kind(gate)
    logits = _check_logits(logits)
    if gate == "hard_concrete":
        return torch.sigmoid(_const(HC_PROB_OFFSET, logits.dtype) - logits)
    return torch.sigmoid(-logits)


def deterministic_gates(logits: torch.Tensor, *, gate: str = "hard_concrete",
                        threshold: float = HC_THRESHOLD) -> torch.Tensor:
    """Test-time 0/1 gates (no gradient): 1[P(z = 0) < 0.34] (§3.4) or 1[φ > 0] (§3.7).

    The hard-concrete rule is evaluated as the reference does it, P(z = 0) in the logits'
    dtype compared with 0.34 rounded to that dtype, so both agree right at the boundary
    φ = −0.935303.
    """
    _check_gate_kind(gate)
    logits = _check_logits(logits).detach()
    if gate == "hard_concrete":
        p_zero = prob_zero(logits, gate=gate)
        return (p_zero < _const(threshold, logits.dtype)).to(logits.dtype)
    return (logits > 0).to(logits.dtype)


# --------------------------------------------------------------------------- the chain

def _check_chain_logits(chain_logits) -> torch.Tensor:
    chain_logits = _check_logits(chain_logits, "chain logits")
    if tuple(chain_logits.shape) != (4,):
        raise ValueError(f"chain_logits must have shape (4,) for (phi4, phi8, phi16, phi32); got "
                         f"{tuple(chain_logits.shape)}")
    return chain_logits


def chain_gates(chain_logits: torch.Tensor, u=None, *, training: bool, hard_cut: bool = True,
                gate: str = "hard_concrete", generator=None, threshold: float = HC_THRESHOLD,
                **options) -> list:
    """z4, z8, z16, z32 of one quantizer, visited in order with the hard cut (§3.5).

    Returns four entries: ``None`` for a gate that is off for good (φ ≤ −2 with ``hard_cut``,
    or above a gate that is 0 at test time), a 0-d tensor sample that keeps the graph to
    ``chain_logits`` (training; the four are sampled in one vectorised call), or a Python
    0.0 / 1.0 (evaluation).  Same semantics as :func:`bbits_ref.method.gates.chain_gates`.
    ``options`` (temperature, straight_through) go to the sample, ``threshold`` to the
    test-time rule.
    """
    chain_logits = _check_chain_logits(chain_logits)
    phis = chain_logits.detach().tolist()
    if training:
        if u is None and generator is None:
            raise ValueError("training=True samples the gates and needs uniform noise u of shape "
                             "(4,) or a torch.Generator")
        samples = sample(chain_logits, u, gate=gate, generator=generator, **options)
    else:
        values = deterministic_gates(chain_logits, gate=gate, threshold=threshold).tolist()
    cut = HARD_CUT_LOGITS[gate]
    gates: list = [None] * 4
    for i in range(4):                 # each gate depends on whether the previous one was cut
        if hard_cut and phis[i] <= cut:
            break
        if training:
            gates[i] = samples[i]
        else:
            gates[i] = float(values[i])
            if gates[i] == 0.0:
                break
    return gates


def chain_gates_eval(chain_logits: torch.Tensor, *, hard_cut: bool = True,
                     gate: str = "hard_concrete", threshold: float = HC_THRESHOLD) -> torch.Tensor:
    """Test-time (z4, z8, z16, z32) as a 0/1 tensor, hard cut applied (§3.4–3.5)."""
    values = chain_gates(chain_logits, training=False, hard_cut=hard_cut, gate=gate,
                         threshold=threshold)
    return torch.tensor([0.0 if v is None else v for v in values], dtype=chain_logits.dtype,
                        device=chain_logits.device)

"""Deliberately wrong adapters: what the conformance suite must catch.

Each mutant is the reference adapter with one classic implementation mistake.  The tests assert
that each one fails exactly the cases that exercise its mistake (and passes the rest), which
shows the suite can fail on a real bug.  Notebook ``09_validating_fast_implementations.ipynb`` runs them to show
what a failing report looks like.

* :class:`WrongDenominator`: step sizes s_{2b} = s_b/(2^b − 1) instead of s_b/(2^b + 1)
  (docs/method.md §2.3–2.4: the residual takes 2^b + 1 values, so the denominator is 2^b + 1).
* :class:`HalfThreshold`: test-time gates 1[P(z = 0) < 0.5] instead of 0.34 (§3.4).
* :class:`OwnNoise`: gates sampled from the adapter's own random numbers, ignoring the given
  noise (§3.2: randomness must be explicit so that implementations can be compared).
* :class:`NoStraightThrough`: rounding with gradient 0 instead of the straight-through
  estimator (§2.6): no gradient reaches x, and β gets only x_q/β.  Only ``quantize`` is
  mutated.

Three mistakes of a training loop, which the trajectory cases (``lenet5_train/…``, §7.3) exist
for:

* :class:`RegularizerPerExample`: μ·Σ_t R_t divided by the batch size, as if μ weighted the
  regularizer once per example (§4.2–4.3: it is added once to the *mean* cross-entropy).
* :class:`SwappedMacs`: the MAC counts of conv1 and conv2 swapped when the BOP weights
  w_t = MAC_t / MAC_max are assigned (§4.4), so conv1's weight gates, conv2's and the
  activation gates that feed them get each other's cost.
* :class:`AdamEpsBeforeBiasCorrection`: Adam as in PyTorch 1.1, ε added to √v before the bias
  correction (step lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)·m/(√v + ε)) instead of after it as in PyTorch
  ≥ 1.5 (lr/(1 − β₁ᵗ)·m/(√v/√(1 − β₂ᵗ) + ε)), the update the suite expects.  Only training
  is affected.

:class:`CrashesAndHangs` is wrong in another way: it ends its process and hangs, which the
checker must survive (each call runs in a child process with a time limit).  It is not in
:data:`MUTANTS`, whose members the notebook runs without a time limit.
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np

from bbits_ref.autograd.optim import Adam
from bbits_ref.conformance.reference import ReferenceAdapter
from bbits_ref.method import quantizer
from bbits_ref.method.gates import HardConcrete

__all__ = ["WrongDenominator", "HalfThreshold", "OwnNoise", "NoStraightThrough",
           "RegularizerPerExample", "SwappedMacs", "AdamEpsBeforeBiasCorrection", "MUTANTS",
           "CrashesAndHangs"]


@contextlib.contextmanager
def _step_divisors(divisors):
    """Temporarily replace the chained step divisors (5, 17, 257, 65537) of the quantizer."""
    saved = quantizer._STEP_DIVISORS
    quantizer._STEP_DIVISORS = tuple(divisors)
    try:
        yield
    finally:
        quantizer._STEP_DIVISORS = saved


class WrongDenominator(ReferenceAdapter):
    """s4 = s2/3, s8 = s4/15, s16 = s8/255, s32 = s16/65535: denominators 2^b − 1."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "mutant: denominator 2^b - 1"

    def quantize(self, *args, **kwargs):
        with _step_divisors((3, 15, 255, 65535)):
            return super().quantize(*args, **kwargs)

    def lenet5_step(self, *args, **kwargs):
        with _step_divisors((3, 15, 255, 65535)):
            return super().lenet5_step(*args, **kwargs)

    def lenet5_train(self, *args, **kwargs):
        with _step_divisors((3, 15, 255, 65535)):
            return super().lenet5_train(*args, **kwargs)


class HalfThreshold(ReferenceAdapter):
    """Hard-concrete test-time gate 1[P(z = 0) < 0.5] (⇔ φ > −1.5986) instead of 0.34."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "mutant: test threshold 0.5"

    def _test_time_gate(self, kind: str):
        if kind == "hard_concrete":
            return HardConcrete(threshold=0.5)
        return super()._test_time_gate(kind)


class OwnNoise(ReferenceAdapter):
    """Ignores the given uniform noise and draws its own (a fixed seed: the mistake is not
    randomness, it is not using the caller's noise)."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        self.name = "mutant: gates sampled from own noise"
        self.rng = np.random.default_rng(seed)

    def _own(self, u):
        return self.rng.uniform(1e-6, 1 - 1e-6, np.shape(u))

    def hard_concrete(self, logits, u, *, grad_out):
        return super().hard_concrete(logits, self._own(u), grad_out=grad_out)

    def gumbel_softmax(self, logits, u, *, temperature, straight_through, grad_out):
        return super().gumbel_softmax(logits, self._own(u), temperature=temperature,
                                      straight_through=straight_through, grad_out=grad_out)

    def lenet5_step(self, params, x, y, noise, *, mu):
        own = {q: {k: self._own(v) for k, v in parts.items()} for q, parts in noise.items()}
        return super().lenet5_step(params, x, y, own, mu=mu)

    def lenet5_train(self, params, x, y, noise, **hyper):
        own = {q: {k: self._own(v) for k, v in parts.items()} for q, parts in noise.items()}
        return super().lenet5_train(params, x, y, own, **hyper)


class NoStraightThrough(ReferenceAdapter):
    """Rounding with its true gradient 0: ∂x_q/∂x = 0 and ∂x_q/∂β = x_q/β (steps ∝ β)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "mutant: no straight-through estimator"

    def quantize(self, x, beta, z2, z4, z8, z16, z32, *, signed, grad_out):
        out = super().quantize(x, beta, z2, z4, z8, z16, z32, signed=signed, grad_out=grad_out)
        g = np.asarray(grad_out, dtype=np.float64)
        out["grad_x"] = np.zeros_like(out["grad_x"])
        out["grad_beta"] = np.asarray(np.sum(g * out["x_q"]) / float(beta))
        return out


class RegularizerPerExample(ReferenceAdapter):
    """Loss = mean CE + μ·Σ_t R_t / N (N = batch size) instead of mean CE + μ·Σ_t R_t."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "mutant: regularizer scaled per example"

    def _loss(self, model, logits, y, mu):
        return super()._loss(model, logits, y, float(mu) / np.shape(y)[0])


class SwappedMacs(ReferenceAdapter):
    """conv1 and conv2 swap their MAC counts in the BOP weights of the regularizer (§4.4)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "mutant: conv1 and conv2 MAC counts swapped"

    def _lenet5(self, params):
        model = super()._lenet5(params)
        macs = dict(model.layer_macs())
        macs["conv1"], macs["conv2"] = macs["conv2"], macs["conv1"]
        top = max(macs.values())
        consumer = {"conv1": "conv2", "conv2": "fc1", "fc1": "fc2"}   # who reads each output
        for name, q in model.quantizers():
            layer, kind = name.split(".")
            q.mac_weight = macs[layer if kind == "weight_quantizer" else consumer[layer]] / top
        return model


class AdamEpsBeforeBiasCorrection(ReferenceAdapter):
    """PyTorch 1.1's Adam: ε added to √v before the bias correction (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "mutant: Adam epsilon before the bias correction (PyTorch 1.1)"

    def _optimizer(self, groups, **hyper):
        return Adam(groups, eps_placement="before_bias_correction", **hyper)


#: The mutants by short name.
MUTANTS = {"wrong_denominator": WrongDenominator, "half_threshold": HalfThreshold,
           "own_noise": OwnNoise, "no_straight_through": NoStraightThrough,
           "regularizer_per_example": RegularizerPerExample, "swapped_macs": SwappedMacs,
           "adam_eps_before_bias_correction": AdamEpsBeforeBiasCorrection}


class CrashesAndHangs(ReferenceAdapter):
    """The reference, except that ``hard_concrete`` ends the process (``os._exit(3)``, as a
    crashing C or CUDA extension would) and ``regularizer`` hangs for ``hang_seconds`` on 128
    pruning gates (the case ``regularizer/cifar_init``)."""

    def __init__(self, hang_seconds: float = 600.0) -> None:
        super().__init__()
        self.name = "misbehaving: exits in hard_concrete, hangs on 128 pruning gates"
        self.hang_seconds = hang_seconds

    def hard_concrete(self, logits, u, *, grad_out):
        os._exit(3)

    def regularizer(self, prune_logits, chain_logits, mac_weight, *, prior, reg_type):
        if prune_logits is not None and np.size(prune_logits) == 128:
            time.sleep(self.hang_seconds)
        return super().regularizer(prune_logits, chain_logits, mac_weight, prior=prior,
                                   reg_type=reg_type)

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

:class:`CrashesAndHangs` is wrong in another way: it ends its process and hangs, which the
checker must survive (each call runs in a child process with a time limit).  It is not in
:data:`MUTANTS`, whose members the notebook runs without a time limit.
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np

from bbits_ref.method import quantizer
from bbits_ref.method.gates import HardConcrete
from bbits_ref.conformance.reference import ReferenceAdapter

__all__ = ["WrongDenominator", "HalfThreshold", "OwnNoise", "NoStraightThrough", "MUTANTS",
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


#: The mutants by short name.
MUTANTS = {"wrong_denominator": WrongDenominator, "half_threshold": HalfThreshold,
           "own_noise": OwnNoise, "no_straight_through": NoStraightThrough}


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

"""Stochastic gates: hard concrete (the official code) and Gumbel-softmax (the rebuttal variant).

A Bayesian Bits quantizer multiplies each residual by a binary gate z_b ∈ {0, 1}.  During
training z_b is a reparameterised relaxed sample, so the loss is differentiable in the gate logit
φ_b; at test time the gate is a deterministic 0/1 decision.  Everything here is written with the
primitives of :mod:`bbits_ref.autograd.ops`, so gradients flow from a sample (or a probability) back to
the logits without any gradient rule of its own.

* :class:`HardConcrete`: the L0 paper's stretched and clamped binary concrete (docs/method.md §3.2–3.4),
  the default and the only gate of the official code.
* :class:`GumbelSoftmax`: the binary concrete / relaxed Bernoulli of §3.7, optionally
  straight-through.
* :func:`chain_gates`: the ordered visit of z4 → z8 → z16 → z32 with the code's hard cut at
  φ ≤ −2 (§3.5).

Randomness is explicit: ``sample`` takes the uniform noise ``u`` (draw it with
:func:`uniform_noise`), so two implementations fed the same ``u`` must give the same ``z``.

Notebook: ``notebooks/03_gates.ipynb``.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor, get_default_dtype
# τ (code: `hc_beta`), γ and ζ (`hc_gamma`, `hc_zeta`), the test-time threshold on P(z = 0)
# (`hc_thres`), the φ ≤ −2 hard cut (§3.5), the clamp of u (L0 repo), the chain gates
from bbits_ref.method.constants import (CHAIN_BITS, HARD_CUT_LOGIT, HC_GAMMA, HC_TEMPERATURE,
                                        HC_THRESHOLD, HC_ZETA, NOISE_CLAMP)

__all__ = [
    "HC_TEMPERATURE", "HC_GAMMA", "HC_ZETA", "HC_THRESHOLD", "HARD_CUT_LOGIT", "NOISE_CLAMP",
    "uniform_noise", "Gate", "HardConcrete", "GumbelSoftmax", "make_gate", "chain_gates",
]


# --------------------------------------------------------------------------- input handling

def uniform_noise(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    """Uniform noise u ~ U(0, 1) clamped to [1e−6, 1 − 1e−6], the input of every gate sample.

    The clamp keeps log u − log(1 − u) finite (the L0 repository does the same; §3.2).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}. "
                        "Create one with np.random.default_rng(seed).")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    u = rng.random(shape, dtype=dtype)
    return np.clip(u, NOISE_CLAMP, 1 - NOISE_CLAMP).astype(dtype, copy=False)


def _as_logits(logits, name: str = "gate logits") -> Tensor:
    """Wrap numbers/arrays as a Tensor (ints become the default float dtype); reject NaN."""
    if isinstance(logits, np.ndarray | np.generic):
        arr = np.asarray(logits)
        logits = Tensor(arr.astype(get_default_dtype()) if arr.dtype.kind in "iub" else arr)
    elif not isinstance(logits, Tensor):
        logits = Tensor(logits)          # Python numbers and lists take the default dtype
    if logits.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point; got dtype {logits.dtype}")
    if np.isnan(logits.data).any():
        raise ValueError(f"{name} contain NaN; check the optimizer step that produced them "
                         "(a NaN loss or learning rate)")
    return logits


def _logits_float64(logits) -> np.ndarray:
    """Logits as a float64 array for the NumPy plotting helpers (Python numbers stay exact)."""
    return np.asarray(_as_logits(logits).data if isinstance(logits, Tensor) else logits,
                      dtype=np.float64)


def _logistic_noise(u, logits: Tensor) -> np.ndarray:
    """log u − log(1 − u) for the clamped noise u, in the logits' dtype (no gradient)."""
    u = np.asarray(u.data if isinstance(u, Tensor) else u)
    if u.shape != logits.shape:
        raise ValueError(f"uniform noise u has shape {u.shape} but the gate logits have shape "
                         f"{logits.shape}; draw one u per gate, e.g. "
                         f"uniform_noise(rng, {logits.shape})")
    if u.dtype.kind not in "fiu":
        raise TypeError(f"uniform noise u must be numeric; got dtype {u.dtype}")
    if np.isnan(u).any() or (u < 0).any() or (u > 1).any():
        bad = u[np.isnan(u) | (u < 0) | (u > 1)].ravel()[:3]
        raise ValueError(f"uniform noise u must lie in [0, 1] (it is clamped to "
                         f"[{NOISE_CLAMP}, 1 − {NOISE_CLAMP}]); got values such as {bad}. "
                         "Draw it with uniform_noise(rng, shape).")
    u = np.clip(u.astype(logits.dtype), NOISE_CLAMP, 1 - NOISE_CLAMP)
    return np.log(u) - np.log(1 - u)


def _check_temperature(temperature) -> float:
    if not (isinstance(temperature, int | float) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r} "
                         f"(the code uses {HC_TEMPERATURE:.6f} = 2/3)")
    return float(temperature)


# --------------------------------------------------------------------------- gates

class Gate:
    """Interface of a stochastic binary gate parameterised by a logit φ.

    ``sample(φ, u)``   relaxed, reparameterised sample (a Tensor with φ's shape, training);
    ``prob_nonzero(φ)`` q(z ≠ 0), the probability the regularizer uses (a Tensor);
    ``prob_zero(φ)``    q(z = 0) = 1 − prob_nonzero(φ);
    ``deterministic(φ)`` the test-time 0/1 gate (a float ndarray, no gradient);
    ``threshold_logit()`` the φ at which the test-time decision flips;
    ``hard_cut_logit``   the φ at or below which the hard cut switches a chain gate off (§3.5).
    """

    name: str = "gate"
    init_logit: float = 6.0
    hard_cut_logit: float = HARD_CUT_LOGIT      # the official φ ≤ −2 (§3.5)

    def sample(self, logits, u) -> Tensor:
        raise NotImplementedError

    def prob_nonzero(self, logits) -> Tensor:
        raise NotImplementedError

    def prob_zero(self, logits) -> Tensor:
        raise NotImplementedError

    def deterministic(self, logits) -> np.ndarray:
        raise NotImplementedError

    def threshold_logit(self) -> float:
        raise NotImplementedError


class HardConcrete(Gate):
    """Hard-concrete gate of the L0 paper, as in the official code (§3.2–3.4).

    Sample (training), with L = log u − log(1 − u)::

        s = sigmoid((L + φ) / τ),   s̄ = s·(ζ − γ) + γ,   z = min(1, max(0, s̄))
        ∂z/∂φ = (ζ − γ)·s(1 − s)/τ  if 0 < s̄ < 1, else 0

    Probability of a non-zero gate (the regularizer's π, §3.3)::

        π(φ) = P(z ≠ 0) = sigmoid(φ − τ·log(−γ/ζ)) = sigmoid(φ + 1.598597)

    Test-time gate (§3.4): z = 1 iff P(z = 0) < t (t = 0.34) ⇔ φ > −0.935303.
    """

    name = "hard_concrete"
    init_logit = 6.0

    def __init__(self, temperature: float = HC_TEMPERATURE, gamma: float = HC_GAMMA,
                 zeta: float = HC_ZETA, threshold: float = HC_THRESHOLD) -> None:
        self.temperature = _check_temperature(temperature)
        if not (isinstance(gamma, int | float) and isinstance(zeta, int | float)
                and gamma < 0 < 1 < zeta and math.isfinite(gamma) and math.isfinite(zeta)):
            raise ValueError(f"the stretch limits must satisfy gamma < 0 < 1 < zeta; got "
                             f"gamma={gamma!r}, zeta={zeta!r} (the code uses -0.1 and 1.1)")
        if not (isinstance(threshold, int | float) and 0 < threshold < 1):
            raise ValueError(f"threshold is a probability of z = 0 and must lie in (0, 1); got "
                             f"{threshold!r} (the code uses 0.34)")
        self.gamma, self.zeta, self.threshold = float(gamma), float(zeta), float(threshold)
        # τ·log(−γ/ζ) = −1.598597 for the defaults: P(z ≠ 0) = sigmoid(φ − offset).
        self.prob_offset = self.temperature * math.log(-self.gamma / self.zeta)

    def __repr__(self) -> str:
        return (f"HardConcrete(temperature={self.temperature:.6g}, gamma={self.gamma}, "
                f"zeta={self.zeta}, threshold={self.threshold})")

    def sample(self, logits, u) -> Tensor:
        """z = clip(sigmoid((log u − log(1−u) + φ)/τ)·(ζ − γ) + γ, 0, 1); u clamped to [1e−6, 1−1e−6]."""
        logits = _as_logits(logits)
        s = ops.sigmoid((_logistic_noise(u, logits) + logits) / self.temperature)
        # ops.clip passes the gradient only strictly inside (0, 1): a clamped gate gets none.
        return ops.clip(s * (self.zeta - self.gamma) + self.gamma, lo=0.0, hi=1.0)

    def prob_nonzero(self, logits) -> Tensor:
        """π(φ) = P(z ≠ 0) = sigmoid(φ − τ·log(−γ/ζ))   (§3.3, code `hc_prob_pos`)."""
        return ops.sigmoid(_as_logits(logits) - self.prob_offset)

    def prob_zero(self, logits) -> Tensor:
        """P(z = 0) = sigmoid(τ·log(−γ/ζ) − φ) = 1 − π(φ)."""
        return ops.sigmoid(self.prob_offset - _as_logits(logits))

    def prob_one(self, logits) -> Tensor:
        """P(z = 1) = P(s̄ ≥ 1) = sigmoid(φ − τ·log((1 − γ)/(ζ − 1)))  (≈ 0.988 at φ = 6)."""
        return ops.sigmoid(_as_logits(logits)
                           - self.temperature * math.log((1 - self.gamma) / (self.zeta - 1)))

    def deterministic(self, logits) -> np.ndarray:
        """Test-time gate 1[P(z = 0) < threshold]   (§3.4, code `get_gates` eval branch)."""
        p_zero = self.prob_zero(_as_logits(logits).detach()).data
        return (p_zero < self.threshold).astype(p_zero.dtype)

    def threshold_logit(self) -> float:
        """φ where P(z = 0) = threshold: τ·log(−γ/ζ) + log((1 − t)/t) = −0.935303 by default."""
        return self.prob_offset + math.log((1 - self.threshold) / self.threshold)

    # -- the distribution of z, for plots (NumPy, no gradient)
    def cdf(self, z, logits) -> np.ndarray:
        """P(Z ≤ z) for z in [0, 1): P(z=0) + the continuous part; 1 at z ≥ 1.

        P(Z ≤ z) = sigmoid(τ·logit((z − γ)/(ζ − γ)) − φ) for 0 ≤ z < 1.
        """
        z, phi = np.broadcast_arrays(np.asarray(z, dtype=np.float64),
                                     _logits_float64(logits))
        a = np.clip((z - self.gamma) / (self.zeta - self.gamma), 1e-300, 1.0)
        with np.errstate(divide="ignore"):
            x = self.temperature * (np.log(a) - np.log1p(-a)) - phi
        inside = 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700)))
        return np.where(z < 0, 0.0, np.where(z >= 1, 1.0, inside))

    def pdf(self, z, logits) -> np.ndarray:
        """Density of the continuous part of Z on (0, 1) (the point masses at 0 and 1 excluded).

        d/dz CDF = σ(x)(1 − σ(x))·τ / (a(1 − a)(ζ − γ)),  a = (z − γ)/(ζ − γ),  x = τ·logit(a) − φ.
        """
        z, phi = np.broadcast_arrays(np.asarray(z, dtype=np.float64),
                                     _logits_float64(logits))
        a = np.clip((z - self.gamma) / (self.zeta - self.gamma), 1e-12, 1 - 1e-12)
        x = self.temperature * (np.log(a) - np.log1p(-a)) - phi
        sig = 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700)))
        dens = sig * (1 - sig) * self.temperature / (a * (1 - a) * (self.zeta - self.gamma))
        return np.where((z > 0) & (z < 1), dens, 0.0)


class GumbelSoftmax(Gate):
    """Binary concrete (relaxed Bernoulli) gate, the rebuttal's alternative (§3.7).

    Sample: z = sigmoid((φ + log u − log(1 − u))/τ) ∈ (0, 1), no stretch, no clamp.
    Straight-through variant: forward 1[z > 0.5], backward the gradient of the soft z.
    q(z = 1) = sigmoid(φ), and P(z > 0.5) = sigmoid(φ) exactly at any τ; test time: 1[φ > 0].
    ``init_logit`` 7.6 matches the hard concrete's π(6) ≈ 0.9995 (the rebuttal gives none).
    """

    name = "gumbel_softmax"
    # The official code cuts hard-concrete gates at φ ≤ −2, where P(z ≠ 0) = 0.401.  This gate
    # is cut at the logit with that same on-probability, sigmoid(φ) = 0.401: φ = −0.401403.
    hard_cut_logit = HARD_CUT_LOGIT - HC_TEMPERATURE * math.log(-HC_GAMMA / HC_ZETA)

    def __init__(self, temperature: float = HC_TEMPERATURE, straight_through: bool = False,
                 init_logit: float = 7.6) -> None:
        self.temperature = _check_temperature(temperature)
        if not isinstance(straight_through, bool):
            raise TypeError(f"straight_through must be True or False; got {straight_through!r}")
        if not (isinstance(init_logit, int | float) and math.isfinite(init_logit)):
            raise ValueError(f"init_logit must be a finite number; got {init_logit!r}")
        self.straight_through = straight_through
        self.init_logit = float(init_logit)

    def __repr__(self) -> str:
        return (f"GumbelSoftmax(temperature={self.temperature:.6g}, "
                f"straight_through={self.straight_through}, init_logit={self.init_logit})")

    def sample(self, logits, u) -> Tensor:
        """z = sigmoid((φ + log u − log(1−u))/τ); straight-through: round_ste(z) = 1[z > 0.5]."""
        logits = _as_logits(logits)
        z = ops.sigmoid((logits + _logistic_noise(u, logits)) / self.temperature)
        if self.straight_through:
            # For z in (0, 1), round-half-to-even is exactly 1[z > 0.5], and round_ste passes the
            # gradient of the soft z unchanged: the straight-through estimator in one primitive.
            z = ops.round_ste(z)
        return z

    def prob_nonzero(self, logits) -> Tensor:
        """q(z = 1) = sigmoid(φ)."""
        return ops.sigmoid(_as_logits(logits))

    def prob_zero(self, logits) -> Tensor:
        """q(z = 0) = sigmoid(−φ)."""
        return ops.sigmoid(-_as_logits(logits))

    def deterministic(self, logits) -> np.ndarray:
        """Test-time gate 1[sigmoid(φ) > 0.5] = 1[φ > 0]."""
        phi = _as_logits(logits).data
        return (phi > 0).astype(phi.dtype)

    def threshold_logit(self) -> float:
        return 0.0


_GATES = {"hard_concrete": HardConcrete, "gumbel_softmax": GumbelSoftmax}


#: The gate distributions a quantizer can use.
GATE_KINDS = tuple(_GATES)


def gate_option_names(kind: str) -> tuple:
    """The keyword options the gate ``kind`` accepts (its constructor's parameters)."""
    if kind not in _GATES:
        raise ValueError(f"unknown gate kind {kind!r}; choose one of {sorted(_GATES)}")
    return tuple(inspect.signature(_GATES[kind]).parameters)


def make_gate(kind: str = "hard_concrete", **kwargs) -> Gate:
    """Build a gate by name: ``"hard_concrete"`` (the code) or ``"gumbel_softmax"`` (§3.7)."""
    if kind not in _GATES:
        raise ValueError(f"unknown gate kind {kind!r}; choose one of {sorted(_GATES)}")
    return _GATES[kind](**kwargs)


# --------------------------------------------------------------------------- the chain

def chain_gates(gate: Gate, chain_logits, u, *, training: bool, hard_cut: bool = True) -> list:
    """The gates z4, z8, z16, z32 of one quantizer, visited in order (§3.5).

    Parameters
    ----------
    gate : the gate family (its ``sample`` and ``deterministic``).
    chain_logits : Tensor of shape (4,): (φ4, φ8, φ16, φ32).
    u : uniform noise of shape (4,) when training; ignored (may be None) in eval.
    training : sample (True) or take the deterministic test-time gates (False).
    hard_cut : the code's rule: if φ_b ≤ ``gate.hard_cut_logit`` (−2 for hard concrete), z_b and
        every higher gate are the constant 0.

    Returns
    -------
    A list of 4 entries: ``None`` for a gate that is off for good (cut, or above a gate that is
    0 in eval), a scalar Tensor sample that keeps the graph to ``chain_logits`` (training), or a
    float 0.0 / 1.0 (eval).  ``None`` means "not computed": the residual is dropped, no gradient.
    """
    if not isinstance(gate, Gate):
        raise TypeError(f"gate must be a Gate (see make_gate); got {type(gate).__name__}")
    chain_logits = _as_logits(chain_logits, "chain logits")
    if chain_logits.shape != (len(CHAIN_BITS),):
        raise ValueError(f"chain_logits must have shape (4,) for (phi4, phi8, phi16, phi32); "
                         f"got {chain_logits.shape}")
    if training:
        if u is None:
            raise ValueError("training=True samples the gates and needs uniform noise u of shape "
                             "(4,); draw it with uniform_noise(rng, (4,))")
        u = np.asarray(u.data if isinstance(u, Tensor) else u)
        if u.shape != (len(CHAIN_BITS),):
            raise ValueError(f"u must have shape (4,), one value per gate of the chain; got "
                             f"{u.shape}")
    gates: list = [None] * len(CHAIN_BITS)
    # A loop over the four gates of the chain: each one depends on whether the previous was cut.
    for i in range(len(CHAIN_BITS)):
        phi = chain_logits.data[i]
        if hard_cut and phi <= gate.hard_cut_logit:
            break
        if training:
            gates[i] = gate.sample(chain_logits[i], u[i])
        else:
            gates[i] = float(gate.deterministic(phi))
            if gates[i] == 0.0:
                break
    return gates

"""Bayesian Bits quantizers as modules, and the quantized layers built from them (docs/method.md §1, §3, §6).

* :class:`BBQuantizer` — one quantizer: a learned range β (created lazily from the first tensor
  it sees, §2.1), the chain gate logits (φ4, φ8, φ16, φ32) and, for weight tensors with
  pruning, one pruning logit φ2 per output channel.  In training it samples one gate value per
  gate per forward pass from uniform noise it is given (§3.2); in evaluation it uses the
  deterministic test-time gates (§3.4).
* :class:`LSQQuantizer`, :class:`PACTQuantizer`, :class:`DoReFaQuantizer` — the fixed-bit
  baselines LSQ and PACT (§13), with the same interface (``BBConfig.quantizer``).
* :class:`QConv2d`, :class:`QLinear` — conv / linear with a weight quantizer, optional ReLU and an
  activation quantizer after the ReLU (§6).  Biases are neither quantized nor gated.
* :class:`QConv2dBN`, :class:`QLinearBN` — the same with batch norm folded into the quantized
  weight and corrected by batch statistics from a second, full-precision pass (§6).

Configuration (gate type, presets, ablations) is one :class:`BBConfig`.  Notebook:
``notebooks/06_lenet5_mnist.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from bbits_ref.method import bops
from bbits_ref.autograd import ops
from bbits_ref.method import prior
from bbits_ref.method import gates as gates_mod
from bbits_ref._errors import UsageError
from bbits_ref.autograd.engine import Tensor
from bbits_ref.autograd.nn import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Module, Parameter, as_generator
from bbits_ref.method.baselines import (BASELINE_QUANTIZERS, DOREFA_SCALES, PACT_ALPHA_INIT,
                                        dorefa_weights, lsq_grad_scale, lsq_init_step,
                                        lsq_quantize, pact_quantize)
from bbits_ref.method.quantizer import CLIP_MODES, bb_quantize, check_bits, gates_for_bits, init_range

__all__ = ["BBConfig", "GATE_PRESETS", "BBQuantizer", "LSQQuantizer", "PACTQuantizer",
           "DoReFaQuantizer", "QConv2d", "QLinear", "QConv2dBN", "QLinearBN", "QuantizedLayer"]

#: Initial chain logits (φ4, φ8, φ16, φ32) of the official README runs (§3.1).
GATE_PRESETS = {
    "mnist": (6.0, 6.0, -6.0, -6.0),      # at most 8 bits: z16, z32 start (and stay) cut
    "cifar10": (6.0, 6.0, 6.0, 6.0),
    "imagenet": (6.0, 6.0, 6.0, -6.0),
}
PRIOR_KINDS = ("autoregressive", "independent")
REG_TYPES = prior.REG_TYPES          # a module-level name: inside BBConfig, `prior` is a field


def _is_finite_number(value) -> bool:
    return (isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
            and bool(np.isfinite(value)))


@dataclass(frozen=True)
class BBConfig:
    """Everything that decides how a model quantizes and prunes.

    Defaults reproduce the official code (hard-concrete gates, hard cut at φ ≤ −2, the
    ReLU-form clip, the autoregressive BOP-weighted prior, pruning on).

    Attributes
    ----------
    gate : "hard_concrete" (official) or "gumbel_softmax" (§3.7).
    gate_options : keyword arguments for the gate (temperature, straight_through, ...).
    chain_init : initial (φ4, φ8, φ16, φ32), hard-concrete scale; a preset name from
        :data:`GATE_PRESETS` is accepted.  For Gumbel-softmax gates the logits are shifted by
        +1.598597 so the initial P(z = 1) equals the hard-concrete P(z ≠ 0) (§3.7).
    prune_init : initial φ2 for every output channel (6.0 in the official code).
    hard_cut : the official φ ≤ −2 hard cut of z4…z32 (§3.5).
    clip : "official" (ReLU form, bit-exact) or "numpy" (np.clip), §2.3a.
    pruning : False gives the *quantization-only* ablation (z2 ≡ 1).
    learn_bits : False gives the *pruning-only* ablation: bit widths fixed at ``weight_bits`` /
        ``act_bits``, only z2 is learned.
    quantize : False gives a full-precision network (no quantizers at all).
    weight_bits, act_bits : fixed bit widths for ``learn_bits=False``; with ``pruning=False`` too,
        this is the *uniform fixed-bit* baseline.
    prior : "autoregressive" (official) or "independent" (ablation, §4).
    reg_type : "bop" (README runs) or "const" (every gate costs 1).
    ste : True (the method): the rounding passes the incoming gradient straight through to the
        quantized tensor (§2.6).  False is a "break it" ablation: the quantized tensor gets the
        rounding's true derivative, zero almost everywhere, so no gradient reaches the weights
        (or earlier layers) through a quantizer; the ranges and gates keep their gradients.
    quantizer : "bayesian_bits" (the method), or a learned-range fixed-bit baseline (§13):
        "lsq" (weights and activations with a learned step size s) or "pact" (activations
        clipped at a learned α, weights DoReFa).  The baselines need fixed bits without gates:
        ``learn_bits=False``, ``pruning=False``, ``weight_bits`` and ``act_bits`` set.
    io_bits : "8 in/out" (§13): the first and last layers' weights and the last layer's input
        activation at this width, the other quantizers at ``weight_bits`` / ``act_bits``; needs
        fixed bit widths.  The network input counts as 8 bits in the BOPs either way (§5).
    pact_alpha_decay : λ of PACT's L2 penalty ½·λ·Σ α² on the clip levels, added to the loss
        at every step whatever μ is (fixed-bit baselines train with μ = 0).
    dorefa_scale : "init_max" (default): PACT networks multiply their DoReFa weights by the
        constant max|w| at initialisation (networks without batch norm need it, §13);
        "none": the paper's weights in [−1, 1].
    """

    # ``metadata`` describes the command-line flag (bbits_ref/cli/options.py derives it from here).
    gate: str = field(default="hard_concrete", metadata={
        "help": "gate distribution", "choices": gates_mod.GATE_KINDS})
    gate_options: dict = field(default_factory=dict, metadata={"cli": False})
    chain_init: tuple | str = field(default="mnist", metadata={
        "help": "initial gate logits (default: the dataset's)", "flag": "--gate-preset",
        "choices": tuple(GATE_PRESETS)})
    prune_init: float = field(default=6.0, metadata={"help": "initial pruning logit φ2"})
    hard_cut: bool = field(default=True, metadata={"help": "the official φ ≤ −2 hard cut"})
    clip: str = field(default="official", metadata={
        "help": "clip formula: official (bit-exact ReLU form) or numpy", "choices": CLIP_MODES})
    pruning: bool = field(default=True, metadata={"cli": False})
    learn_bits: bool = field(default=True, metadata={"cli": False})
    quantize: bool = field(default=True, metadata={"cli": False})
    weight_bits: int | None = field(default=None, metadata={"cli": False})
    act_bits: int | None = field(default=None, metadata={"cli": False})
    prior: str = field(default="autoregressive", metadata={
        "help": "prior over the gates", "choices": PRIOR_KINDS})
    reg_type: str = field(default="bop", metadata={
        "help": "bop: gates cost their BOPs; const: every gate costs 1",
        "choices": REG_TYPES})
    ste: bool = field(default=True, metadata={
        "help": "the straight-through estimator: the rounding passes the gradient on to the "
                "quantized tensor (switched off, no gradient reaches the weights through their "
                "quantizers: a 'break it' ablation)"})
    quantizer: str = field(default="bayesian_bits", metadata={
        "help": "bayesian_bits (the method), or a fixed-bit baseline with a learned range: lsq "
                "(learned step size) or pact (learned activation clip, DoReFa weights); the "
                "baselines need --fixed-bits W/A", "choices": BASELINE_QUANTIZERS})
    io_bits: int | None = field(default=None, metadata={
        "help": "bits of the first and last layers' weights and of the last layer's input "
                "('8 in/out'); needs fixed bit widths"})
    pact_alpha_decay: float = field(default=2e-4, metadata={
        "help": "λ of PACT's L2 penalty ½·λ·Σα² on its clip levels"})
    dorefa_scale: str = field(default="init_max", metadata={
        "help": "pact: DoReFa weights times max|w| at initialisation (init_max), or in [-1, 1] "
                "as in the paper (none)", "choices": DOREFA_SCALES})

    def __post_init__(self) -> None:
        if isinstance(self.chain_init, str):
            if self.chain_init not in GATE_PRESETS:
                raise UsageError(f"unknown gate preset {self.chain_init!r}; choose one of "
                                 f"{sorted(GATE_PRESETS)} or give four logits (φ4, φ8, φ16, φ32)")
        elif (not isinstance(self.chain_init, (tuple, list)) or len(self.chain_init) != 4
              or not all(_is_finite_number(v) for v in self.chain_init)):
            raise UsageError(f"chain_init needs four finite logits (φ4, φ8, φ16, φ32); got "
                             f"{self.chain_init!r}", setting="chain_init")
        if not _is_finite_number(self.prune_init):
            raise UsageError(f"prune_init must be a finite number; got {self.prune_init!r}",
                             setting="prune_init")
        for name in ("hard_cut", "pruning", "learn_bits", "quantize", "ste"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false; got {getattr(self, name)!r}",
                                 setting=name)
        for name, value, choices in (("gate", self.gate, gates_mod.GATE_KINDS),
                                     ("prior", self.prior, PRIOR_KINDS),
                                     ("reg_type", self.reg_type, REG_TYPES),
                                     ("clip", self.clip, CLIP_MODES)):
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}; got {value!r}",
                                 setting=name)
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if bits is not None:
                try:
                    check_bits(bits)
                except (TypeError, ValueError) as exc:
                    raise UsageError(f"{name}: {exc}") from None
        if self.quantize and not self.learn_bits:
            for name in ("weight_bits", "act_bits"):
                if getattr(self, name) is None:
                    raise UsageError(f"learn_bits=False needs fixed bit widths: set {name}")
        self._check_baseline_settings()
        accepted = gates_mod.gate_option_names(self.gate)
        unknown = sorted(set(self.gate_options) - set(accepted))
        if unknown:
            hint = (" (straight-through applies to Gumbel-softmax gates: add gate='gumbel_softmax')"
                    if "straight_through" in unknown else "")
            raise UsageError(f"{self.gate} gates take the options {', '.join(accepted)}; got "
                             f"{', '.join(unknown)}{hint}")
        try:
            gates_mod.make_gate(self.gate, **self.gate_options)   # validates the option values
        except (TypeError, ValueError) as exc:
            raise UsageError(f"invalid {self.gate} gate option: {exc}") from None

    def _check_baseline_settings(self) -> None:
        """``quantizer``, ``io_bits``, ``dorefa_scale`` and ``pact_alpha_decay`` (§13)."""
        if self.quantizer not in BASELINE_QUANTIZERS:
            raise UsageError(f"quantizer must be one of {', '.join(BASELINE_QUANTIZERS)}; got "
                             f"{self.quantizer!r}", setting="quantizer")
        fixed = self.quantize and not self.learn_bits
        if self.quantizer != "bayesian_bits" and not (fixed and not self.pruning):
            raise UsageError(f"the {self.quantizer} quantizer trains fixed bit widths without "
                             "gates: add --fixed-bits W/A, e.g. --fixed-bits 4/4 "
                             "(learn_bits=False, pruning=False, weight_bits and act_bits set)",
                             setting="quantizer")
        if self.io_bits is not None:
            try:
                check_bits(self.io_bits)
            except (TypeError, ValueError) as exc:     # "bits must be one of …; got …"
                raise UsageError(f"io_{exc}", setting="io_bits") from None
            if not fixed:
                raise UsageError("io_bits sets the bits of the first and last layers, so it needs "
                                 "fixed bit widths: add --fixed-bits W/A (or --prune-only W/A)",
                                 setting="io_bits")
        if self.dorefa_scale not in DOREFA_SCALES:
            raise UsageError(f"dorefa_scale must be one of {', '.join(DOREFA_SCALES)}; got "
                             f"{self.dorefa_scale!r}", setting="dorefa_scale")
        if not _is_finite_number(self.pact_alpha_decay) or self.pact_alpha_decay < 0:
            raise UsageError(f"pact_alpha_decay must be a finite number ≥ 0; got "
                             f"{self.pact_alpha_decay!r}", setting="pact_alpha_decay")

    @property
    def chain_logits(self) -> np.ndarray:
        """Initial (φ4, φ8, φ16, φ32) on the scale of the configured gate."""
        base = np.array(GATE_PRESETS[self.chain_init] if isinstance(self.chain_init, str)
                        else self.chain_init, dtype=np.float64)
        return base + self._logit_shift()

    @property
    def prune_logit(self) -> float:
        return float(self.prune_init + self._logit_shift())

    def _logit_shift(self) -> float:
        if self.gate != "gumbel_softmax":
            return 0.0
        return -gates_mod.HardConcrete().prob_offset                   # +1.598597

    def with_(self, **changes) -> "BBConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)


def _fixed_chain(bits: int) -> np.ndarray:
    """0/1 chain gates (z4, z8, z16, z32) that select ``bits`` (§2.7)."""
    return np.array(gates_for_bits(bits))


class BBQuantizer(Module):
    """One Bayesian Bits quantizer for a weight tensor or an activation (§1–§3).

    Parameters
    ----------
    kind : "weight" or "activation" (only changes names in readouts; signedness comes from data).
    channels : number of output channels for a pruning gate z2 (weights), or None (no pruning).
    config : :class:`BBConfig`.
    fixed_bits : the bit width used when ``config.learn_bits`` is False.

    Parameters created: ``beta`` (range, lazily at the first forward), ``gate_logits`` (φ4, φ8,
    φ16, φ32; shape (4,)), ``prune_logits`` (φ2, shape (channels,), only with pruning).
    """

    #: True: the quantizer learns a range parameter, kept in ``beta`` and created lazily.
    has_range = True

    def __init__(self, kind: str, channels: int | None, config: BBConfig,
                 fixed_bits: int | None = None, dtype=np.float32) -> None:
        super().__init__()
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation'; got {kind!r}")
        self.kind, self.config, self.dtype = kind, config, np.dtype(dtype)
        self.gate = gates_mod.make_gate(config.gate, **config.gate_options)
        self.beta: Parameter | None = None
        # -1: not initialised yet, 0: unsigned (α = 0), 1: signed (α = −β); a buffer so that
        # checkpoints carry it (§2.1).
        self.register_buffer("signed_flag", np.array(-1, dtype=np.int8))
        self.fixed_bits = fixed_bits
        self.mac_weight = 1.0           # MAC_t / MAC_max, set by the model (§4.4)
        self.noise: dict | None = None  # uniform noise for the next training forward
        self.fixed_gates = False        # True: deterministic gates in training too (fine-tuning)
        self.gate_logits = (Parameter(config.chain_logits.astype(dtype)) if config.learn_bits
                            else None)
        pruned = channels is not None and config.pruning
        self.channels = channels
        self.prune_logits = (Parameter(np.full(channels, config.prune_logit, dtype=dtype))
                             if pruned else None)

    # -- noise
    def sample_noise(self, rng: np.random.Generator) -> dict:
        """Uniform noise for one training forward: ``{"prune": (C,), "chain": (4,)}``.

        Drawn in this order (prune first) from ``rng``; noise for gates that end up hard-cut is
        drawn too but unused, so every implementation can be fed the same arrays.
        """
        out = {}
        if self.prune_logits is not None:
            out["prune"] = gates_mod.uniform_noise(rng, self.prune_logits.shape)
        if self.gate_logits is not None:
            out["chain"] = gates_mod.uniform_noise(rng, (4,))
        return out

    # -- range
    def initialize_range(self, x: np.ndarray) -> None:
        """β ← max(max(x), 0) and signed ← min(x) < 0, from the first tensor seen (§2.1)."""
        x = np.asarray(x)
        beta, signed = init_range(x)
        if not beta > 0:
            raise ValueError(f"{self.kind} quantizer: the first tensor it saw has max {beta}, so "
                             "its range β would be 0. Initialise with data that has positive "
                             "values (e.g. two training images).")
        if x.dtype.kind == "f":     # β follows the tensor it quantizes (e.g. after to_dtype())
            self.dtype = x.dtype
        self.beta = Parameter(np.array(beta, dtype=self.dtype))
        self.signed_flag = np.array(int(signed), dtype=np.int8)

    @property
    def signed(self) -> bool | None:
        """True for a signed range [−β, β] (weights), False for [0, β]; None before init."""
        flag = int(self.signed_flag)
        return None if flag < 0 else bool(flag)

    # -- gates
    def gate_values(self) -> tuple:
        """(z2, z4, z8, z16, z32) for the next forward: samples in training, 0/1 in evaluation.

        With ``fixed_gates`` (fixed-gate fine-tuning) the test-time 0/1 gates are used in
        training as well.
        """
        sample = self.training and not self.fixed_gates
        z2 = None
        if self.prune_logits is not None:
            if sample:
                z2 = self.gate.sample(self.prune_logits, self._noise("prune"))
            else:
                z2 = self.gate.deterministic(self.prune_logits.data)
        if self.gate_logits is None:
            chain = [float(v) or None for v in _fixed_chain(self.fixed_bits)]
        else:
            chain = gates_mod.chain_gates(self.gate, self.gate_logits,
                                          self._noise("chain") if sample else None,
                                          training=sample, hard_cut=self.config.hard_cut)
        return (z2, *chain)

    def _noise(self, key: str) -> np.ndarray:
        if self.noise is None or key not in self.noise:
            raise RuntimeError(
                "a training forward samples gates and needs their uniform noise: call the model "
                "with rng= (a numpy Generator) or noise= (from model.sample_noise(rng))")
        return self.noise[key]

    def forward(self, x: Tensor) -> Tensor:
        if self.beta is None:
            self.initialize_range(x.data)
        z = self.gate_values()
        if not self.config.ste:             # "break it": round's true derivative, 0 almost everywhere
            x = Tensor(x.data)
        return bb_quantize(x, self.beta, *z, signed=self.signed, clip=self.config.clip)

    # -- prior
    def chain_probs(self) -> Tensor:
        """q(z_b ≠ 0 | z_{b/2} = 1) for b = 4…32, differentiable in the logits (§3.3)."""
        if self.gate_logits is None:
            return Tensor(_fixed_chain(self.fixed_bits).astype(self.dtype))
        return self.gate.prob_nonzero(self.gate_logits)

    def range_penalty(self) -> Tensor | None:
        """A penalty on the range parameter that the loss carries whatever μ is; None here
        (PACT's clip levels have one, :meth:`PACTQuantizer.alpha_penalty`)."""
        return None

    def prune_probs(self) -> Tensor | None:
        return None if self.prune_logits is None else self.gate.prob_nonzero(self.prune_logits)

    def regularizer(self) -> Tensor:
        """R_t of §4.3 (or the independent-prior ablation), weighted by ``mac_weight``."""
        fn = (prior.bop_regularizer if self.config.prior == "autoregressive"
              else prior.independent_regularizer)
        return fn(self.prune_probs(), self.chain_probs(), self.mac_weight,
                  reg_type=self.config.reg_type)

    # -- deterministic view (no gradients)
    def deterministic_chain(self) -> np.ndarray:
        """Test-time (z4, z8, z16, z32) as 0/1, with the hard cut applied (§3.4–§3.5)."""
        if self.gate_logits is None:
            return _fixed_chain(self.fixed_bits)
        vals = gates_mod.chain_gates(self.gate, self.gate_logits, None, training=False,
                                     hard_cut=self.config.hard_cut)
        return np.array([0.0 if v is None else v for v in vals])   # eval gates are floats

    def kept_channels(self) -> np.ndarray | None:
        """Boolean mask of the output channels whose test-time z2 is 1 (None: no pruning gate)."""
        if self.prune_logits is None:
            return None
        return self.gate.deterministic(self.prune_logits.data).astype(bool)

    def extra_repr(self) -> str:
        beta = "lazy" if self.beta is None else f"{float(self.beta.data):.4g}"
        return f"{self.kind}, channels={self.channels}, beta={beta}, gate={self.config.gate}"


class LSQQuantizer(BBQuantizer):
    """LSQ (§13): a fixed ``fixed_bits``-bit grid placed by a learned step size s per tensor.

    Weights are signed (levels −2^(b−1) … 2^(b−1) − 1), activations (post-ReLU) unsigned
    (0 … 2^b − 1), always 2^b levels.  s starts at 2·mean|v|/√Q_P of the first tensor seen (two
    training images, for activations) and lives in the ``beta`` slot, the quantizer's learned
    range parameter: it joins the "ranges" learning-rate group, checkpoints and readouts as β
    does.  :attr:`step_size` names it.  Its gradient is scaled by g = 1/√(n·Q_P), n = the
    weight tensor's elements or the activation's features per example.  Fixed bits only: no
    gates, no pruning (the bit width is read from the fixed 0/1 chain, as for a uniform
    Bayesian Bits baseline).
    """

    @property
    def step_size(self) -> Parameter | None:
        return self.beta

    def initialize_range(self, x: np.ndarray) -> None:
        """s ← 2·mean|x|/√Q_P and signed ← (this is a weight quantizer)."""
        x = np.asarray(x)
        signed = self.kind == "weight"
        step = lsq_init_step(x, self.fixed_bits, signed)
        if not step > 0:
            raise ValueError(f"LSQ {self.kind} quantizer: the first tensor it saw is all zeros, "
                             "so its step size s = 2·mean|x|/√Q_P would be 0. Initialise it "
                             "with data that has non-zero values (e.g. two training images).")
        if x.dtype.kind == "f":
            self.dtype = x.dtype
        self.beta = Parameter(np.array(step, dtype=self.dtype))
        self.signed_flag = np.array(int(signed), dtype=np.int8)

    def forward(self, x: Tensor) -> Tensor:
        if self.beta is None:
            self.initialize_range(x.data)
        n = x.data.size if self.kind == "weight" else x.data.size // max(x.shape[0], 1)
        scale = lsq_grad_scale(max(n, 1), self.fixed_bits, self.signed)
        if not self.config.ste:
            x = Tensor(x.data)
        return lsq_quantize(x, self.beta, bits=self.fixed_bits, signed=self.signed,
                            grad_scale=scale)

    def extra_repr(self) -> str:
        s = "lazy" if self.beta is None else f"{float(self.beta.data):.4g}"
        return f"LSQ {self.kind}, bits={self.fixed_bits}, step_size={s}"


class PACTQuantizer(BBQuantizer):
    """PACT (§13) for a post-ReLU activation: clip at a learned α, then a fixed b-bit grid.

    α starts at :data:`~bbits_ref.method.baselines.PACT_ALPHA_INIT` (10) and lives in the
    ``beta`` slot (the "ranges" group, checkpoints, readouts); :attr:`clip_level` names it.
    :meth:`alpha_penalty` is its L2 penalty ½·λ·α², λ = ``config.pact_alpha_decay``.
    """

    def __init__(self, kind: str, channels, config: BBConfig, fixed_bits=None,
                 dtype=np.float32) -> None:
        if kind != "activation":
            raise ValueError("PACT quantizes activations; its networks quantize weights with "
                             f"DoReFaQuantizer (got kind={kind!r})")
        super().__init__(kind, channels, config, fixed_bits, dtype)

    @property
    def clip_level(self) -> Parameter | None:
        return self.beta

    def initialize_range(self, x: np.ndarray) -> None:
        """α ← 10 (PACT's large start), unsigned; ``x`` only gives the dtype."""
        x = np.asarray(x)
        if x.dtype.kind == "f":
            self.dtype = x.dtype
        self.beta = Parameter(np.array(PACT_ALPHA_INIT, dtype=self.dtype))
        self.signed_flag = np.array(0, dtype=np.int8)

    def forward(self, x: Tensor) -> Tensor:
        if self.beta is None:
            self.initialize_range(x.data)
        if not self.config.ste:
            x = Tensor(x.data)
        return pact_quantize(x, self.beta, bits=self.fixed_bits)

    def alpha_penalty(self) -> Tensor:
        """½·λ·α² (differentiable in α)."""
        return self.beta * self.beta * (0.5 * self.config.pact_alpha_decay)

    def range_penalty(self) -> Tensor | None:
        return None if self.beta is None else self.alpha_penalty()

    def extra_repr(self) -> str:
        a = "lazy" if self.beta is None else f"{float(self.beta.data):.4g}"
        return f"PACT activation, bits={self.fixed_bits}, alpha={a}"


class DoReFaQuantizer(BBQuantizer):
    """DoReFa weights (§13), the weight quantizer of PACT networks: nothing is learned.

    2^b levels in [−1, 1] from tanh(w)/max|tanh(w)|, times the constant buffer ``weight_scale``
    (``config.dorefa_scale``: max|w| of the first weight tensor seen, or 1).  No range parameter:
    ``beta`` stays None.
    """

    has_range = False

    def __init__(self, kind: str, channels, config: BBConfig, fixed_bits=None,
                 dtype=np.float32) -> None:
        if kind != "weight":
            raise ValueError(f"DoReFa quantizes weights; PACT networks quantize activations with "
                             f"PACTQuantizer (got kind={kind!r})")
        super().__init__(kind, channels, config, fixed_bits, dtype)
        self.signed_flag = np.array(1, dtype=np.int8)
        self.register_buffer("weight_scale", np.array(0.0, dtype=dtype))   # 0: not set yet

    def initialize_range(self, x: np.ndarray) -> None:
        """``weight_scale`` ← max|x| ("init_max") or 1 ("none"); DoReFa learns no range."""
        x = np.asarray(x)
        scale = float(np.max(np.abs(x))) if self.config.dorefa_scale == "init_max" else 1.0
        if not scale > 0:
            raise ValueError("DoReFa weight quantizer: the weight tensor is all zeros, so its "
                             "scale max|w| would be 0; initialise the weights first")
        self.weight_scale = np.array(scale, dtype=x.dtype if x.dtype.kind == "f" else self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not float(self.weight_scale) > 0:
            self.initialize_range(x.data)
        if not self.config.ste:
            x = Tensor(x.data)
        w_q = dorefa_weights(x, bits=self.fixed_bits)
        scale = float(self.weight_scale)
        return w_q if scale == 1.0 else w_q * scale

    def extra_repr(self) -> str:
        return f"DoReFa weight, bits={self.fixed_bits}, scale={float(self.weight_scale):.4g}"


#: ``BBConfig.quantizer`` -> (weight quantizer class, activation quantizer class).
QUANTIZER_CLASSES = {"bayesian_bits": (BBQuantizer, BBQuantizer),
                     "lsq": (LSQQuantizer, LSQQuantizer),
                     "pact": (DoReFaQuantizer, PACTQuantizer)}


class QuantizedLayer(Module):
    """Shared machinery of the quantized conv/linear layers: quantizers, MACs, noise."""

    weight_quantizer: BBQuantizer | None
    act_quantizer: BBQuantizer | None
    macs: int = 0

    def _make_quantizers(self, out_channels, config, prune, act_quant, dtype):
        if not config.quantize:
            self.weight_quantizer = self.act_quantizer = None
            return
        weight_cls, act_cls = QUANTIZER_CLASSES[config.quantizer]
        self.weight_quantizer = weight_cls("weight", out_channels if prune else None, config,
                                           config.weight_bits, dtype)
        self.act_quantizer = (act_cls("activation", None, config, config.act_bits, dtype)
                              if act_quant else None)

    def quantize_weight(self, w: Tensor) -> Tensor:
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def finish(self, y: Tensor) -> Tensor:
        """ReLU, then the activation quantizer (§6: quantize after the nonlinearity)."""
        if self.relu:
            y = ops.relu(y)
        return y if self.act_quantizer is None else self.act_quantizer(y)


class QConv2d(QuantizedLayer):
    """Conv2d → (+bias) → ReLU → activation quantizer, with a BB weight quantizer (§6)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, rng,
                 config: BBConfig, relu=True, act_quant=True, prune=True, bias=True,
                 dtype=np.float32) -> None:
        super().__init__()
        conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias,
                      rng=as_generator(rng), dtype=dtype)
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, stride, padding
        self.relu = relu
        self._make_quantizers(out_channels, config, prune, act_quant, dtype)

    def out_shape(self, in_shape: tuple) -> tuple:
        """(C, H, W) → (C_out, H_out, W_out); also records the layer's MACs (§4.4)."""
        hw = bops.conv_output_hw(in_shape[1:], self.kernel_size, self.stride, self.padding)
        self.macs = bops.conv_macs(in_shape[0], self.out_channels, self.kernel_size, hw)
        return (self.out_channels, *hw)

    def forward(self, x: Tensor) -> Tensor:
        y = ops.conv2d(x, self.quantize_weight(self.weight), stride=self.stride,
                       padding=self.padding)
        if self.bias is not None:
            y = y + ops.reshape(self.bias, shape=(-1, 1, 1))
        return self.finish(y)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class QLinear(QuantizedLayer):
    """Linear → (+bias) → [ReLU → activation quantizer], with a BB weight quantizer (§6)."""

    def __init__(self, in_features, out_features, *, rng, config: BBConfig, relu=True,
                 act_quant=True, prune=True, bias=True, dtype=np.float32) -> None:
        super().__init__()
        lin = Linear(in_features, out_features, bias, rng=as_generator(rng), dtype=dtype)
        self.weight, self.bias = lin.weight, lin.bias
        self.in_features, self.out_features = in_features, out_features
        self.relu = relu
        self._make_quantizers(out_features, config, prune, act_quant, dtype)

    def out_shape(self, in_shape: tuple) -> tuple:
        """(in_features,) → (out_features,); also records the layer's MACs (§4.4)."""
        self.macs = bops.linear_macs(self.in_features, self.out_features)
        return (self.out_features,)

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(ops.linear(x, self.quantize_weight(self.weight), self.bias))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class _FoldedBN(QuantizedLayer):
    """Batch norm folded into the quantized weight, corrected by batch statistics (§6).

    With the batch norm's scale and shift (``bn.weight``, ``bn.bias``; written in words, since γ
    and β name the hard-concrete stretch limit and the quantizer's range in this package):

    Training: y = op(x, Q(W·scale/σ_run))·(σ_run/σ_B) + (shift − scale·m_B/σ_B), where the batch
    mean m_B and σ_B (biased variance + eps) come from a second, full-precision op with the raw W,
    and the running statistics are updated with the unbiased variance (momentum 0.1).
    Evaluation: y = op(x, Q(W·scale/σ_run)) + (shift − scale·m_run/σ_run).
    The layer has no bias of its own; the folded shift is neither quantized nor gated.
    """

    bn: BatchNorm1d | BatchNorm2d

    def _op(self, x, w):
        raise NotImplementedError

    def _bshape(self, v):
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        sigma_run = np.sqrt(bn.running_var + bn.eps).astype(self.weight.dtype)
        scale = bn.weight / Tensor(sigma_run)                      # γ / σ_run, per channel
        w_fold = self.weight * ops.reshape(scale, shape=(-1,) + (1,) * (self.weight.ndim - 1))
        y = self._op(x, self.quantize_weight(w_fold))
        if self.training:
            y_fp = self._op(x, self.weight)
            mean, var = bn.batch_stats(y_fp)
            n = y_fp.size // bn.num_features
            bn.update_running_stats(mean.data.reshape(-1), var.data.reshape(-1), n)
            sigma_b = (var + bn.eps) ** 0.5
            y = y * (Tensor(self._bshape(sigma_run)) / sigma_b) + (
                self._bshape(bn.bias) - self._bshape(bn.weight) * mean / sigma_b)
        else:
            shift = bn.bias.data - bn.weight.data * bn.running_mean / sigma_run
            y = y + self._bshape(Tensor(shift.astype(self.weight.dtype)))
        return self.finish(y)


class QConv2dBN(_FoldedBN):
    """Conv2d (no bias) with folded BatchNorm2d → ReLU → activation quantizer (VGG-7 blocks)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, *, rng,
                 config: BBConfig, relu=True, act_quant=True, prune=True,
                 dtype=np.float32) -> None:
        super().__init__()
        conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False,
                      rng=as_generator(rng), dtype=dtype)
        self.weight = conv.weight
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, stride, padding
        self.bn = BatchNorm2d(out_channels, dtype=dtype)
        self.relu = relu
        self._make_quantizers(out_channels, config, prune, act_quant, dtype)

    out_shape = QConv2d.out_shape

    def _op(self, x, w):
        return ops.conv2d(x, w, stride=self.stride, padding=self.padding)

    def _bshape(self, v):
        return ops.reshape(v, shape=(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bn"


class QLinearBN(_FoldedBN):
    """Linear (no bias) with folded BatchNorm1d → ReLU → activation quantizer (VGG-7 fc1)."""

    def __init__(self, in_features, out_features, *, rng, config: BBConfig, relu=True,
                 act_quant=True, prune=True, dtype=np.float32) -> None:
        super().__init__()
        lin = Linear(in_features, out_features, bias=False, rng=as_generator(rng), dtype=dtype)
        self.weight = lin.weight
        self.in_features, self.out_features = in_features, out_features
        self.bn = BatchNorm1d(out_features, dtype=dtype)
        self.relu = relu
        self._make_quantizers(out_features, config, prune, act_quant, dtype)

    out_shape = QLinear.out_shape

    def _op(self, x, w):
        return ops.linear(x, w)

    def _bshape(self, v):
        return ops.reshape(v, shape=(1, -1))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bn"


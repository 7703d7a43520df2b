"""What a trained (or training) Bayesian Bits model has decided, as numbers.

One readout API that plots, widgets, notebooks and the command line all consume:

* :func:`quantizer_readout` — for one quantizer: its gate probabilities, the distribution of
  its effective bit width P(b) for b in {0, 2, 4, 8, 16, 32}, E_q[bit width] and its log2, the
  deterministic (test-time) bit width and the kept channels;
* :func:`model_readout` — all of those for a model plus its relative BOPs, deterministic
  (the official metric, docs/method.md §5) and expected (our documented addition); ``print()`` it.

Gates that the official hard cut has switched off (φ ≤ −2, §3.5) are constant zeros, so
their probability counts as 0 here; the regularizer still uses the closed form (§4.3).
Notebook: ``notebooks/00_tour.ipynb`` ("how to read the readout table").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bbits_ref.method import bops
from bbits_ref.method.layers import BBQuantizer

__all__ = ["BIT_CHOICES", "QuantizerReadout", "ModelReadout", "quantizer_readout",
           "model_readout", "effective_chain_probs"]

#: The effective bit widths a quantizer can end up with (0 = pruned).
BIT_CHOICES = (0, 2, 4, 8, 16, 32)


def effective_chain_probs(q: BBQuantizer) -> np.ndarray:
    """q(z_b ≠ 0 | z_{b/2} = 1) for b = 4…32, with hard-cut gates (and all above them) at 0."""
    probs = np.asarray(q.chain_probs().data, dtype=np.float64).copy()
    if q.gate_logits is not None and q.config.hard_cut:
        cut = np.asarray(q.gate_logits.data) <= q.gate.hard_cut_logit
        if cut.any():
            probs[int(np.argmax(cut)):] = 0.0
    return probs


@dataclass
class QuantizerReadout:
    """The state of one quantizer (see the module docstring)."""

    name: str
    kind: str
    signed: bool | None
    beta: float | None
    channels: int | None           # output channels with a pruning gate (None: no pruning)
    kept_channels: int | None      # channels whose test-time z2 is 1
    prune_probs: np.ndarray | None  # P(z2_c ≠ 0) per channel
    chain_probs: np.ndarray        # (π4, π8, π16, π32), hard-cut gates at 0
    bit_probs: dict                # P(effective bit width = b), b in BIT_CHOICES
    expected_bits: float           # E_q[bit width], pruned channels counting 0 bits
    deterministic_bits: int        # test-time bit width of the kept channels (§5)

    @property
    def log2_expected_bits(self) -> float:
        return float(np.log2(self.expected_bits)) if self.expected_bits > 0 else float("-inf")

    @property
    def kept_fraction(self) -> float:
        return 1.0 if self.channels is None else self.kept_channels / self.channels


def quantizer_readout(name: str, q: BBQuantizer) -> QuantizerReadout:
    """Read one quantizer's gates (no gradients are recorded)."""
    chain = effective_chain_probs(q)
    given_on = bops.bit_width_distribution(chain)            # P(b | z2 = 1)
    prune = None if q.prune_logits is None else np.asarray(q.prune_probs().data, np.float64)
    p_on = 1.0 if prune is None else float(prune.mean())
    bit_probs = {0: 1.0 - p_on, **{b: p_on * given_on[b] for b in bops.BIT_WIDTHS}}
    kept = q.kept_channels()
    return QuantizerReadout(
        name=name, kind=q.kind, signed=q.signed,
        beta=None if q.beta is None else float(q.beta.data),
        channels=None if kept is None else int(kept.size),
        kept_channels=None if kept is None else int(kept.sum()),
        prune_probs=prune, chain_probs=chain, bit_probs=bit_probs,
        expected_bits=float(sum(b * p for b, p in bit_probs.items())),
        deterministic_bits=int(bops.deterministic_bits(q.deterministic_chain())))


@dataclass
class ModelReadout:
    """Readouts of every quantizer plus the per-layer BOP costs of a model."""

    model_name: str
    quantizers: list
    layers: list = field(default_factory=list)           # deterministic LayerCost per layer
    expected_layers: list = field(default_factory=list)  # expected LayerCost per layer

    @property
    def relative_bops(self) -> float:
        """Deterministic relative BOPs in percent (the official metric, §5)."""
        return bops.relative_bops(self.layers)

    @property
    def expected_relative_bops(self) -> float:
        """Expected relative BOPs in percent under the gate distribution (an addition, §5)."""
        return bops.relative_bops(self.expected_layers)

    def by_name(self, name: str) -> QuantizerReadout:
        for r in self.quantizers:
            if r.name == name:
                return r
        raise KeyError(f"no quantizer named {name!r}; have {[r.name for r in self.quantizers]}")

    def to_dict(self) -> dict:
        """JSON-friendly summary (what ``summary.json`` and the CLI print)."""
        return {
            "model": self.model_name,
            "relative_bops": self.relative_bops,
            "expected_relative_bops": self.expected_relative_bops,
            "quantizers": {r.name: {
                "kind": r.kind, "bits": r.deterministic_bits, "expected_bits": r.expected_bits,
                "kept_channels": r.kept_channels, "channels": r.channels,
                "chain_probs": [float(p) for p in r.chain_probs],
                "beta": r.beta} for r in self.quantizers},
            "layers": [{"name": c.name, "macs": c.macs, "w_bits": c.w_bits, "a_bits": c.a_bits,
                        "keep_out": c.keep_out, "keep_in": c.keep_in} for c in self.layers],
        }

    def __str__(self) -> str:
        head = (f"{'quantizer':<22} {'bits':>4} {'E[bits]':>7} {'kept':>9} "
                f"{'π4':>6} {'π8':>6} {'π16':>6} {'π32':>6}")
        lines = [f"Bayesian Bits readout: {self.model_name}", head, "-" * len(head)]
        for r in self.quantizers:
            kept = "-" if r.channels is None else f"{r.kept_channels}/{r.channels}"
            pis = " ".join(f"{p:6.3f}" for p in r.chain_probs)
            lines.append(f"{r.name:<22} {r.deterministic_bits:>4} {r.expected_bits:>7.2f} "
                         f"{kept:>9} {pis}")
        lines.append("")
        lines.append(bops.format_bops_table(self.layers))
        lines.append(f"relative BOPs (deterministic, official): {self.relative_bops:.4f}%   "
                     f"expected under q (addition): {self.expected_relative_bops:.4f}%")
        return "\n".join(lines)


def model_readout(model) -> ModelReadout:
    """Readout of a :class:`~bbits_ref.method.models.BBNet` (works before the ranges are initialised).

    BOPs follow §5: the first layer's input counts as 8 bits, a layer's activation bits
    are those of the previous layer's output quantizer, keep ratios include the previous
    layer's pruned channels, and layers without quantizers count 32 bits.
    """
    reads = [quantizer_readout(n, q) for n, q in model.quantizers()]
    by_name = {r.name: r for r in reads}
    layers, expected = [], []
    prev = None        # (act readout or None, weight readout or None) of the previous layer
    for name, layer in model.quantized_layers():
        w = by_name.get(f"{name}.weight_quantizer")
        a = by_name.get(f"{name}.act_quantizer")
        if prev is None:
            a_det = a_exp = bops.INPUT_BITS
            in_det = in_exp = None
        else:
            pa, pw = prev
            a_det = 32 if pa is None else pa.deterministic_bits
            a_exp = 32 if pa is None else _expected_given_on(pa)
            in_det = None if pw is None or pw.channels is None else pw.kept_fraction
            in_exp = None if pw is None or pw.prune_probs is None else float(pw.prune_probs.mean())
        w_det = 32 if w is None else w.deterministic_bits
        w_exp = 32 if w is None else _expected_given_on(w)
        out_det = None if w is None or w.channels is None else w.kept_fraction
        out_exp = None if w is None or w.prune_probs is None else float(w.prune_probs.mean())
        layers.append(bops.LayerCost(name, layer.macs, w_det, a_det,
                                     1.0 if out_det is None else out_det,
                                     1.0 if in_det is None else in_det))
        expected.append(bops.LayerCost(name, layer.macs, w_exp, a_exp,
                                       1.0 if out_exp is None else out_exp,
                                       1.0 if in_exp is None else in_exp))
        prev = (a, w)
    return ModelReadout(model.name, reads, layers, expected)


def _expected_given_on(r: QuantizerReadout) -> float:
    """E[b | z2 = 1]: the expected width of the channels that are kept."""
    return bops.expected_bits(r.chain_probs)

"""Counting bit operations (BOPs), the cost metric of Bayesian Bits (docs/method.md §4.4, §5).

For every conv/linear layer l (§5)::

    BOPs_l = MAC_l · b_w(l) · b_a(l) · keep_out(l) · keep_in(l)
    relative BOPs (%) = 100 · Σ_l BOPs_l / Σ_l (MAC_l · 32 · 32)

* b_w(l): bit width of layer l's weights (the z4…z32 chain; z2 is *not* part of it).
* b_a(l): bit width of the activation that *feeds* layer l, i.e. layer l−1's output quantizer.
  The network input is not quantized but counted as 8 bits.
* keep_out(l): fraction of layer l's output channels whose pruning gate z2 is on (1 for the last
  layer, which has no z2); keep_in(l): the same fraction for layer l−1 (1 for the first layer).
  For LeNet-5's fc1, whose 1024 inputs are conv2's 64 channels × 16 positions, keep_in is conv2's
  channel fraction.

The official code only reports this deterministic count (gates from the test-time rule, §3.4).
:func:`expected_layer_cost` adds an *expected* count for monitoring; it is our addition, not official.

This module is plain NumPy arithmetic: nothing here needs gradients (the differentiable proxy is the
regularizer in :mod:`bbits_ref.method.prior`, §4.3).

Notebook: ``notebooks/05_bops.ipynb``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from bbits_ref.method import architectures
from bbits_ref.method.architectures import vgg7_widths   # noqa: F401  (VGG-7's widths, re-exported)
# the widths a quantizer can select (§1), the 8-bit input and the 32-bit baseline (§5)
from bbits_ref.method.constants import BIT_WIDTHS, FULL_PRECISION_BITS, INPUT_BITS


# --------------------------------------------------------------------------- validation helpers

def _check_count(value, what: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` as a Python int, or raise: counts (MACs, channels, sizes) are whole numbers."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a whole number (int); got {value!r} of type "
                        f"{type(value).__name__}. Pass e.g. int(x).")
    value = int(value)
    lowest = 0 if allow_zero else 1
    if value < lowest:
        raise ValueError(f"{what} must be >= {lowest}; got {value}. MACs, channel counts and "
                         f"sizes cannot be negative.")
    return value


def _pair(value, what: str) -> tuple[int, int]:
    """An int or a pair of ints -> a pair (like PyTorch's kernel_size / stride arguments)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what} must be an int or a pair (h, w); got {value!r}")
        return _check_count(value[0], what, allow_zero=True), _check_count(value[1], what,
                                                                           allow_zero=True)
    v = _check_count(value, what, allow_zero=True)
    return v, v


def _check_fraction(value, what: str) -> float:
    """A probability or a kept fraction: a finite number in [0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number in [0, 1]; got {value!r}") from None
    if not 0.0 <= value <= 1.0:   # also rejects NaN
        raise ValueError(f"{what} must lie in [0, 1] (it is a fraction of channels or a "
                         f"probability); got {value}")
    return value


def _check_bits_value(value, what: str, *, deterministic: bool) -> float:
    """A bit width. Deterministic widths must be one of BIT_WIDTHS; expected widths lie in (0, 32]."""
    try:
        bits = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of bits; got {value!r}") from None
    if deterministic:
        if bits not in BIT_WIDTHS:
            raise ValueError(f"{what} must be one of the Bayesian Bits widths {BIT_WIDTHS}; got "
                             f"{value!r}. Use deterministic_bits(chain_gates01) to get the width "
                             f"from 0/1 gates, or pass chain probabilities for an expected width.")
        return int(bits)
    if not 0.0 < bits <= FULL_PRECISION_BITS:
        raise ValueError(f"{what} must lie in (0, {FULL_PRECISION_BITS}] bits; got {value!r}")
    return bits


def _as_array(values, what: str) -> np.ndarray:
    """Array-like (lists may hold None = gate off, or Tensors) -> float64 ndarray."""
    values = getattr(values, "data", values)            # a bbits_ref Tensor
    if isinstance(values, (list, tuple)):
        # chain_gates() returns None for a hard-cut gate: that gate is constant 0 (§3.5)
        values = [0.0 if v is None else np.asarray(getattr(v, "data", v), dtype=np.float64)
                  for v in values]
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be array-like of numbers; got {values!r}") from None


def _check_chain(values, what: str) -> np.ndarray:
    """The four chain values (for z4, z8, z16, z32) along the last axis, each in [0, 1]."""
    chain = _as_array(values, what)
    if chain.ndim == 0 or chain.shape[-1] != 4:
        raise ValueError(f"{what} must have shape (4,) (or (..., 4)): one value for each of the "
                         f"gates z4, z8, z16, z32; got shape {chain.shape}")
    if not np.all((chain >= 0.0) & (chain <= 1.0)):   # also rejects NaN
        raise ValueError(f"{what} must lie in [0, 1]; got {chain}")
    return chain


# --------------------------------------------------------------------------- MACs (§4.4)

def conv_output_hw(in_hw, kernel, stride=1, padding=0) -> tuple:
    """Spatial output size of a conv or pooling window: H_out = ⌊(H + 2p − k)/s⌋ + 1 (per axis).

    Also used for max-pooling (kernel 2, stride 2). No dilation, as in the models of §7.
    """
    (h, w), (kh, kw) = _pair(in_hw, "in_hw"), _pair(kernel, "kernel")
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1:
        raise ValueError(f"kernel and stride must be >= 1; got kernel={kernel!r}, stride={stride!r}")
    out = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    if min(out) < 1:
        raise ValueError(f"a {kh}x{kw} window (padding {padding}) does not fit into an input of "
                         f"size {h}x{w}: output would be {out}. Check the input size and the layers.")
    return out


def conv_macs(c_in, c_out, kernel, out_hw, groups=1) -> int:
    """MACs of a conv layer (§4.4): C_out · H_out · W_out · k_h · k_w · C_in / groups.

    Biases are ignored, as in the official MAC counter.
    """
    c_in, c_out = _check_count(c_in, "c_in"), _check_count(c_out, "c_out")
    groups = _check_count(groups, "groups")
    (kh, kw), (h_out, w_out) = _pair(kernel, "kernel"), _pair(out_hw, "out_hw")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both c_in={c_in} and c_out={c_out}")
    return c_out * h_out * w_out * kh * kw * (c_in // groups)


def linear_macs(n_in, n_out) -> int:
    """MACs of a linear layer (§4.4): in · out (bias ignored)."""
    return _check_count(n_in, "n_in") * _check_count(n_out, "n_out")


def lenet5_layer_macs() -> list[tuple[str, int]]:
    """(name, MACs) of LeNet-5 on 1×28×28 MNIST inputs, in network order (§7.1, §5.1).

    conv 1→32 5×5 → pool 2 → conv 32→64 5×5 → pool 2 → flatten 64·4·4 → fc 1024→512 → fc 512→10,
    as described by :func:`bbits_ref.method.architectures.lenet5`.
    """
    return architectures.lenet5().layer_macs()


def vgg7_layer_macs(width: float = 1.0) -> list[tuple[str, int]]:
    """(name, MACs) of VGG-7 on 3×32×32 CIFAR-10 inputs, in network order (§7.2, §5.1).

    Six 3×3 convs with padding 1 (128, 128, pool, 256, 256, pool, 512, 512, pool), then
    fc (C·4·4)→1024 and fc 1024→10. ``width`` scales every hidden channel count and the fc1 width
    (:func:`vgg7_widths`); the 3 input channels and the 10 classes stay fixed.  The layers are
    those of :func:`bbits_ref.method.architectures.vgg7`.
    """
    return architectures.vgg7(width).layer_macs()


LENET5_LAYERS: list[tuple[str, int]] = lenet5_layer_macs()
VGG7_LAYERS: list[tuple[str, int]] = vgg7_layer_macs(1.0)


# --------------------------------------------------------------------------- per-layer cost (§5)

@dataclass
class LayerCost:
    """Cost of one conv/linear layer (§5): BOPs = MAC · b_w · b_a · keep_out · keep_in.

    ``w_bits``: the weight bit width (one of 2, 4, 8, 16, 32) or an expected width E[b_w].
    ``a_bits``: the width of the activation that *feeds* this layer (8 for the first layer).
    ``keep_out``: fraction of this layer's output channels kept (1 for the last layer).
    ``keep_in``: fraction of the previous layer's output channels kept (1 for the first layer).
    Any positive width up to 32 is accepted here (the uniform baselines of §5.1 include 1-bit
    weights); use :func:`deterministic_layer_cost` to insist on Bayesian Bits widths.
    """
    name: str
    macs: int
    w_bits: float
    a_bits: float
    keep_out: float = 1.0
    keep_in: float = 1.0

    def __post_init__(self) -> None:
        self.macs = _check_count(self.macs, f"macs of layer {self.name!r}", allow_zero=True)
        self.w_bits = _check_bits_value(self.w_bits, f"w_bits of layer {self.name!r}",
                                        deterministic=False)
        self.a_bits = _check_bits_value(self.a_bits, f"a_bits of layer {self.name!r}",
                                        deterministic=False)
        self.keep_out = _check_fraction(self.keep_out, f"keep_out of layer {self.name!r}")
        self.keep_in = _check_fraction(self.keep_in, f"keep_in of layer {self.name!r}")

    @property
    def keep(self) -> float:
        """keep(l) = keep_out · keep_in (§5)."""
        return self.keep_out * self.keep_in

    @property
    def bops(self) -> float:
        """BOPs_l = MAC_l · b_w · b_a · keep_out · keep_in (§5)."""
        return self.macs * self.w_bits * self.a_bits * self.keep_out * self.keep_in

    @property
    def baseline_bops(self) -> int:
        """MAC_l · 32 · 32: the full-precision cost of this layer (an exact integer)."""
        return self.macs * FULL_PRECISION_BITS * FULL_PRECISION_BITS


def _check_layers(layers) -> list:
    layers = list(layers)
    if not layers:
        raise ValueError("the layer list is empty: pass one LayerCost per conv/linear layer, in "
                         "network order")
    bad = [type(layer).__name__ for layer in layers if not isinstance(layer, LayerCost)]
    if bad:
        raise TypeError(f"every entry must be a LayerCost; got {bad}. Build them with LayerCost(...), "
                        f"sequential_layer_costs(...) or deterministic_layer_cost(...).")
    return layers


def relative_bops(layers: list[LayerCost]) -> float:
    """Relative BOPs in percent (§5): 100 · Σ_l BOPs_l / Σ_l (MAC_l · 32 · 32)."""
    layers = _check_layers(layers)
    baseline = sum(layer.baseline_bops for layer in layers)   # exact integer arithmetic
    if baseline == 0:
        raise ValueError("all layers have 0 MACs, so relative BOPs are undefined")
    return 100.0 * sum(layer.bops for layer in layers) / baseline


def sequential_layer_costs(layers, w_bits, out_a_bits, keep_out=None,
                           input_bits=INPUT_BITS) -> list[LayerCost]:
    """LayerCosts of a plain chain of layers (LeNet-5, VGG-7), wiring inputs to outputs (§5).

    ``layers``: (name, MACs) pairs in network order; ``w_bits``: one width per layer;
    ``out_a_bits``: the widths of the *output* quantizers of layers 0 … n−2 (the logits are kept in
    full precision and feed nothing, so they are not listed); ``keep_out``: kept fraction of each
    layer's output channels (default all 1; the last layer has no pruning gate, so use 1 there).
    Layer l is fed by ``out_a_bits[l−1]`` (layer 0 by ``input_bits``) and its keep_in is
    ``keep_out[l−1]`` (1 for layer 0).
    """
    layers = list(layers)
    n = len(layers)
    if n == 0:
        raise ValueError("the layer list is empty: pass (name, MACs) pairs in network order")
    w_bits, out_a_bits = list(w_bits), list(out_a_bits)
    keep_out = [1.0] * n if keep_out is None else list(keep_out)
    if len(w_bits) != n or len(keep_out) != n or len(out_a_bits) != n - 1:
        raise ValueError(f"for {n} layers pass {n} w_bits, {n} keep_out and {n - 1} out_a_bits "
                         f"(the logits are not quantized); got {len(w_bits)}, {len(keep_out)} and "
                         f"{len(out_a_bits)}")
    a_bits = [input_bits] + out_a_bits
    keep_in = [1.0] + keep_out[:-1]
    return [LayerCost(name, macs, w_bits[i], a_bits[i], keep_out[i], keep_in[i])
            for i, (name, macs) in enumerate(layers)]


def uniform_relative_bops(macs: list[int], w_bits, a_bits, input_bits=INPUT_BITS) -> float:
    """Relative BOPs (%) of a uniform w_bits/a_bits network without pruning (§5.1 table).

    Every layer uses ``w_bits`` weights; every layer but the first is fed by ``a_bits``
    activations; the first layer is fed by the ``input_bits``-bit input. Integer widths 1…32 are
    accepted, so the 1-bit (binary) baselines of §5.1 can be computed as well.
    """
    macs = list(macs)
    if not macs:
        raise ValueError("macs is empty: pass the MAC count of every layer, e.g. "
                         "[m for _, m in LENET5_LAYERS]")
    if any(isinstance(m, tuple) for m in macs):
        raise TypeError("macs must be a list of MAC counts, not (name, MACs) pairs: pass "
                        "[m for _, m in LENET5_LAYERS]")
    for what, bits in (("w_bits", w_bits), ("a_bits", a_bits), ("input_bits", input_bits)):
        if (isinstance(bits, bool) or not isinstance(bits, numbers.Integral)
                or not 1 <= bits <= FULL_PRECISION_BITS):
            raise ValueError(f"{what} of a uniform configuration must be a whole number of bits "
                             f"in 1…{FULL_PRECISION_BITS}; got {bits!r}")
    layers = [(f"layer{i}", m) for i, m in enumerate(macs)]
    n = len(layers)
    return relative_bops(sequential_layer_costs(layers, [w_bits] * n, [a_bits] * (n - 1),
                                                input_bits=input_bits))


# --------------------------------------------------------------------------- bit widths from gates

def deterministic_bits(chain_gates01):
    """Bit width selected by 0/1 gates (z4, z8, z16, z32) (§5).

        n = 1 + q4 + q4·(q8 + q8·(q16 + q16·q32)),   b = 2**n ∈ {2, 4, 8, 16, 32}

    A gate after an off gate does not count (z8 = 1 with z4 = 0 is still 2 bits). ``None`` entries
    (hard-cut gates from :func:`bbits_ref.method.gates.chain_gates`) count as 0. A shape (..., 4) input
    returns an int array of widths; shape (4,) returns an int.
    """
    q = _check_chain(chain_gates01, "chain_gates01")
    if not np.all((q == 0.0) | (q == 1.0)):
        raise ValueError(f"chain_gates01 must hold deterministic gates, exactly 0 or 1; got {q}. "
                         f"Use the test-time rule (gate.deterministic) first, or expected_bits() "
                         f"for probabilities.")
    q4, q8, q16, q32 = np.moveaxis(q, -1, 0)
    n = 1 + q4 + q4 * (q8 + q8 * (q16 + q16 * q32))   # the code's formula, kept literally
    bits = (2 ** n).astype(np.int64)
    return int(bits) if bits.ndim == 0 else bits


def _width_probs(chain_probs) -> np.ndarray:
    """P(b | z2 = 1) for b = 2, 4, 8, 16, 32 along the last axis."""
    pi = _check_chain(chain_probs, "chain_probs")
    ones = np.ones(pi.shape[:-1] + (1,))
    reach = np.cumprod(np.concatenate([ones, pi], axis=-1), axis=-1)   # P(chain on up to b)
    stop = 1.0 - np.concatenate([pi, 0.0 * ones], axis=-1)             # P(next gate off); 32 is last
    return reach * stop


def bit_width_distribution(chain_probs) -> dict[int, float]:
    """P(effective bit width = b | z2 = 1) from chain probabilities (π4, π8, π16, π32) (§5).

        P(b) = Π_{k≤b} π_k · (1 − π_next),   π_2 = 1 (given z2 = 1),  π_next = 0 after 32

    The five probabilities sum to 1. The π's are the conditional on-probabilities of an
    autoregressive chain (§4.1), e.g. ``gate.prob_nonzero(chain_logits)``.
    """
    probs = _width_probs(chain_probs)
    if probs.ndim != 1:
        raise ValueError(f"chain_probs must have shape (4,); got {probs.shape[:-1] + (4,)}")
    return {b: float(p) for b, p in zip(BIT_WIDTHS, probs)}


def expected_bits(chain_probs) -> float:
    """E[b | z2 = 1] = Σ_b b·P(b) = 2 + 2π4 + 4π4π8 + 8π4π8π16 + 16π4π8π16π32 (§5)."""
    probs = _width_probs(chain_probs)
    if probs.ndim != 1:
        raise ValueError(f"chain_probs must have shape (4,); got {probs.shape[:-1] + (4,)}")
    return float(probs @ np.asarray(BIT_WIDTHS, dtype=np.float64))


def _keep_fraction(values, what: str, *, require01: bool) -> float:
    """Mean over channels of per-channel z2 values (or a single fraction), checked to be in [0, 1]."""
    if values is None:        # no pruning gate (last layer / first layer's input)
        return 1.0
    arr = _as_array(values, what)
    if arr.size == 0 or arr.ndim > 1:
        raise ValueError(f"{what} must be a number or a 1-D array with one value per channel; got "
                         f"shape {arr.shape}")
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise ValueError(f"{what} must lie in [0, 1]; got {arr}")
    if require01 and not np.all((arr == 0.0) | (arr == 1.0)):
        raise ValueError(f"{what} must hold deterministic z2 gates, exactly 0 or 1; got {arr}. "
                         f"Use expected_layer_cost for probabilities.")
    return float(arr.mean())


def _bits_from(chain_or_bits, what: str, *, expected: bool) -> float:
    """A scalar is a deterministic width (e.g. the 8-bit input); a (4,) array is a gate chain."""
    arr = _as_array(chain_or_bits, what)
    if arr.ndim == 0:
        return _check_bits_value(arr, what, deterministic=True)
    return expected_bits(arr) if expected else deterministic_bits(arr)


def deterministic_layer_cost(name, macs, w_chain_gates01, a_chain_gates01_or_bits,
                             out_gates01=None, in_gates01=None) -> LayerCost:
    """The official, deterministic cost of one layer from its test-time 0/1 gates (§5).

    ``w_chain_gates01``: (z4, z8, z16, z32) of the weight quantizer, or its width in BIT_WIDTHS.
    ``a_chain_gates01_or_bits``: the same for the activation quantizer feeding the layer (pass 8
    for the first layer). ``out_gates01``: this layer's z2 (one 0/1 per output channel; None for
    the last layer). ``in_gates01``: the previous layer's z2 (None for the first layer); for a
    linear layer after a flatten, the previous conv's per-channel z2 (§5, LeNet-5 fc1).
    """
    return LayerCost(name, macs,
                     _bits_from(w_chain_gates01, "w_chain_gates01", expected=False),
                     _bits_from(a_chain_gates01_or_bits, "a_chain_gates01_or_bits", expected=False),
                     _keep_fraction(out_gates01, "out_gates01", require01=True),
                     _keep_fraction(in_gates01, "in_gates01", require01=True))


def expected_layer_cost(name, macs, w_chain_probs, a_chain_probs_or_bits, keep_out_prob=1.0,
                        keep_in_prob=1.0) -> LayerCost:
    """Expected cost of one layer: our ADDITION for monitoring, not computed by the official code.

        E[BOPs_l] ≈ MAC_l · E[b_w]·E[keep_out] · E[b_a] · E[keep_in]        (§5)

    with E[b] from :func:`expected_bits`. ``a_chain_probs_or_bits`` is a (4,) array of chain
    probabilities, or a fixed width (8 for the first layer). ``keep_out_prob`` / ``keep_in_prob``:
    one probability per channel (P(z2_c = 1) of this / the previous layer), or their mean.
    The factorisation is exact when all gates are independent; with 0/1 probabilities it
    reproduces :func:`deterministic_layer_cost`.
    """
    return LayerCost(name, macs,
                     _bits_from(w_chain_probs, "w_chain_probs", expected=True),
                     _bits_from(a_chain_probs_or_bits, "a_chain_probs_or_bits", expected=True),
                     _keep_fraction(keep_out_prob, "keep_out_prob", require01=False),
                     _keep_fraction(keep_in_prob, "keep_in_prob", require01=False))


# --------------------------------------------------------------------------- report

def format_bops_table(layers: list[LayerCost]) -> str:
    """A per-layer text table: name, MACs, w bits, a bits, keep, BOPs, share of the total BOPs.

    The last line gives the total and the relative BOPs (§5).
    """
    layers = _check_layers(layers)
    total = sum(layer.bops for layer in layers)
    header = f"{'layer':<10} {'MACs':>13} {'w bits':>7} {'a bits':>7} {'keep':>6} {'BOPs':>17} {'share':>7}"
    lines = [header, "-" * len(header)]
    for layer in layers:
        share = 100.0 * layer.bops / total if total > 0 else 0.0
        lines.append(f"{layer.name:<10} {layer.macs:>13,} {layer.w_bits:>7.3g} {layer.a_bits:>7.3g} "
                     f"{layer.keep:>6.3f} {layer.bops:>17,.0f} {share:>6.2f}%")
    lines.append("-" * len(header))
    lines.append(f"{'total':<10} {sum(layer.macs for layer in layers):>13,} {'':>7} {'':>7} {'':>6} "
                 f"{total:>17,.0f} {100.0 if total > 0 else 0.0:>6.2f}%")
    lines.append(f"relative BOPs: {relative_bops(layers):.4f}% of the 32/32-bit baseline")
    return "\n".join(lines)

"""LeNet-5 and VGG-7 written down once, as data (docs/method.md §4.4, §5.1, §6, §7.1, §7.2).

An :class:`Architecture` is an ordered list of :class:`LayerSpec` s (conv, linear, pool, flatten)
and the input size.  Everything else about a network is derived from it, in one place:

* the shape after every layer, and the MACs of every conv/linear layer (§4.4, §5.1);
* which quantizers exist (§6): a weight quantizer on every conv/linear layer, with pruning
  gates z2 on every layer but the last; an activation quantizer after the ReLU of every layer
  but the last (the logits stay in full precision).  The network input has no quantizer: it is
  counted as ``input_bits`` = 8 bits (§5);
* each quantizer's BOP weight w_t = MAC_t / MAC_max: a weight quantizer's MAC_t is its layer's
  MACs, an activation quantizer's the MACs of the layer that consumes it (§4.4);
* the names and shapes of the parameters and buffers (the state-dict layout both
  implementations use).

The NumPy reference (:mod:`bbits_ref.method.models`), the MAC/BOP tables
(:mod:`bbits_ref.method.bops`) and the PyTorch port (:mod:`bbits_ref.torch_impl`) are all built
from these descriptions.  :class:`BuiltNetwork` holds the bookkeeping that a network built
from a description needs whatever its tensor library (naming the quantizers, feeding them gate
noise, the parameter groups); it touches no tensor.  This module imports nothing from the
engine, so any implementation can use it.

Notebooks: ``06_lenet5_mnist.ipynb`` and ``07_vgg7_cifar10.ipynb``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from bbits_ref.method.constants import INPUT_BITS

__all__ = ["LayerSpec", "QuantizerSpec", "Architecture", "BuiltNetwork", "LAYER_KINDS",
           "lenet5", "vgg7", "vgg7_widths", "get_architecture"]

LAYER_KINDS = ("conv", "linear", "pool", "flatten")
QUANTIZER_ATTRS = ("weight_quantizer", "act_quantizer")   # attribute names on a layer, in order


# --------------------------------------------------------------------------- one layer

@dataclass(frozen=True)
class LayerSpec:
    """One layer of a feed-forward network.

    ``kind`` "conv" or "linear" (a quantized layer), "pool" (k×k max-pooling with stride
    ``stride``) or "flatten".  ``in_size``/``out_size``: channels of a conv, features of a
    linear layer.  ``bias``: the layer has its own bias (False for BN-folded layers).
    ``batch_norm``: BN folded into the quantized weight (§6).  ``relu``: a ReLU after the layer;
    ``act_quant``: an activation quantizer after the ReLU; ``prune``: pruning gates z2 on the
    weight (one per output channel).
    """

    name: str
    kind: str
    in_size: int = 0
    out_size: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    bias: bool = True
    batch_norm: bool = False
    relu: bool = False
    act_quant: bool = False
    prune: bool = False

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name!r}: kind must be one of {LAYER_KINDS}; got "
                             f"{self.kind!r}")
        for what in ("in_size", "out_size", "kernel", "stride", "padding"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"layer {self.name!r}: {what} must be a whole number >= 0; got "
                                 f"{value!r}")
        if self.quantized and min(self.in_size, self.out_size) < 1:
            raise ValueError(f"layer {self.name!r}: a {self.kind} layer needs in_size and "
                             f"out_size >= 1; got {self.in_size} and {self.out_size}")
        if min(self.kernel, self.stride) < 1:
            raise ValueError(f"layer {self.name!r}: kernel and stride must be >= 1")

    @property
    def quantized(self) -> bool:
        """True for the conv/linear layers: the layers with quantizers and MACs."""
        return self.kind in ("conv", "linear")

    def weight_shape(self) -> tuple:
        """(out, in, k, k) for a conv, (out, in) for a linear layer."""
        if self.kind == "conv":
            return (self.out_size, self.in_size, self.kernel, self.kernel)
        return (self.out_size, self.in_size)

    def out_shape(self, in_shape: tuple) -> tuple:
        """The shape of one example after this layer, from its shape before (§4.4)."""
        if self.kind == "flatten":
            return (math.prod(in_shape),)
        expected = 3 if self.kind in ("conv", "pool") else 1
        if len(in_shape) != expected or (self.quantized and in_shape[0] != self.in_size):
            want = f"({self.in_size},)" if self.kind == "linear" else \
                f"({self.in_size or 'C'}, H, W)"
            raise ValueError(f"layer {self.name!r} ({self.kind}) expects inputs of shape {want}; "
                             f"the layers before it give {tuple(in_shape)}. Check in_size.")
        if self.kind == "linear":
            return (self.out_size,)
        pad = self.padding if self.kind == "conv" else 0
        hw = tuple((s + 2 * pad - self.kernel) // self.stride + 1 for s in in_shape[1:])
        if min(hw) < 1:
            raise ValueError(f"layer {self.name!r}: a {self.kernel}x{self.kernel} window does "
                             f"not fit into an input of size {in_shape[1]}x{in_shape[2]}")
        return ((self.out_size if self.kind == "conv" else in_shape[0]), *hw)

    def macs(self, out_shape: tuple) -> int:
        """MACs of a conv (C_out·H_out·W_out·k·k·C_in) or linear (in·out) layer; biases ignored."""
        if self.kind == "conv":
            return self.out_size * out_shape[1] * out_shape[2] * self.kernel ** 2 * self.in_size
        return self.in_size * self.out_size


# --------------------------------------------------------------------------- quantizers

@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer of a network (§6) and its BOP weight (§4.4).

    ``name``: "<layer>.weight_quantizer" or "<layer>.act_quantizer"; ``kind``: "weight" or
    "activation"; ``channels``: the number of pruning gates z2 (None: no pruning);
    ``macs``: MAC_t; ``mac_weight``: w_t = MAC_t / MAC_max.
    """

    name: str
    layer: str
    attr: str
    kind: str
    channels: int | None
    macs: int
    mac_weight: float


# --------------------------------------------------------------------------- the network

@dataclass(frozen=True)
class Architecture:
    """A feed-forward network: ``layers`` applied in order to inputs of ``input_shape``.

    ``family`` and ``width`` say which builder made it (``"lenet5"``, ``"vgg7"``);
    ``gate_preset`` is the initial-gate preset of its experiment (§3.1); ``input_bits`` the
    width the (unquantized) input is counted with in BOPs (§5).  The layers are checked
    against each other when the description is made (a wrong ``in_size`` is an error).
    """

    family: str
    input_shape: tuple
    layers: tuple
    gate_preset: str
    width: float = 1.0
    input_bits: int = INPUT_BITS
    _shapes: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique; got {names}")
        if not any(layer.quantized for layer in self.layers):
            raise ValueError("an architecture needs at least one conv or linear layer")
        shapes, shape = [], tuple(self.input_shape)
        for layer in self.layers:
            shape = layer.out_shape(shape)
            shapes.append(shape)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "_shapes", tuple(shapes))

    @property
    def name(self) -> str:
        """``"lenet5"`` or ``"vgg7(width=0.5)"``: the model's name in readouts and checkpoints."""
        return self.family if self.family != "vgg7" else f"vgg7(width={self.width:g})"

    @property
    def output_shape(self) -> tuple:
        return self._shapes[-1]

    def shapes(self) -> list[tuple[str, tuple]]:
        """(layer name, shape of one example after it) in network order."""
        return [(layer.name, shape) for layer, shape in zip(self.layers, self._shapes)]

    def quantized_layers(self) -> list[LayerSpec]:
        """The conv/linear layers in order: the layers BOPs are counted for."""
        return [layer for layer in self.layers if layer.quantized]

    def layer_macs(self) -> list[tuple[str, int]]:
        """(name, MACs) of every conv/linear layer in network order (§4.4, §5.1)."""
        return [(layer.name, layer.macs(shape)) for layer, shape in zip(self.layers, self._shapes)
                if layer.quantized]

    def quantizers(self) -> list[QuantizerSpec]:
        """Every quantizer in network order (weight before activation), with w_t (§4.4, §6)."""
        macs = self.layer_macs()
        mac_max = max(m for _, m in macs)
        specs = self.quantized_layers()
        out = []
        for i, (layer, (_, own)) in enumerate(zip(specs, macs)):
            channels = layer.out_size if layer.prune else None
            out.append(QuantizerSpec(f"{layer.name}.weight_quantizer", layer.name,
                                     "weight_quantizer", "weight", channels, own, own / mac_max))
            if layer.act_quant:
                if i + 1 == len(specs):
                    raise ValueError(f"layer {layer.name!r} is the last conv/linear layer: its "
                                     "output feeds nothing, so it has no activation quantizer")
                consumer = macs[i + 1][1]
                out.append(QuantizerSpec(f"{layer.name}.act_quantizer", layer.name,
                                         "act_quantizer", "activation", None, consumer,
                                         consumer / mac_max))
        return out

    def state_shapes(self, *, quantize: bool = True, learn_bits: bool = True,
                     pruning: bool = True) -> dict[str, tuple[tuple, str]]:
        """{state-dict name: (shape, role)} of every parameter and buffer, in network order.

        role: "weights" (weights, biases, BN), "gates" (chain and pruning logits), "ranges"
        (β, created lazily at the first forward, §2.1) or "buffer".  The flags are those of
        the model's config (``BBConfig.quantize`` / ``learn_bits`` / ``pruning``).
        """
        out = {}
        for layer in self.quantized_layers():
            n = layer.name
            out[f"{n}.weight"] = (layer.weight_shape(), "weights")
            if layer.bias:
                out[f"{n}.bias"] = ((layer.out_size,), "weights")
            if layer.batch_norm:
                for key in ("weight", "bias"):
                    out[f"{n}.bn.{key}"] = ((layer.out_size,), "weights")
                for key in ("running_mean", "running_var"):
                    out[f"{n}.bn.{key}"] = ((layer.out_size,), "buffer")
                out[f"{n}.bn.num_batches_tracked"] = ((), "buffer")
        if quantize:
            for q in self.quantizers():
                out[f"{q.name}.beta"] = ((), "ranges")
                if learn_bits:
                    out[f"{q.name}.gate_logits"] = ((4,), "gates")
                if pruning and q.channels is not None:
                    out[f"{q.name}.prune_logits"] = ((q.channels,), "gates")
                out[f"{q.name}.signed_flag"] = ((), "buffer")
        return out

    def parameter_counts(self, **flags) -> dict[str, int]:
        """Numbers of network parameters, gate logits and ranges (flags as :meth:`state_shapes`).

        LeNet-5: 582,026 network parameters, 636 gate parameters, 7 ranges (§7.1).
        """
        counts = {"network": 0, "gates": 0, "ranges": 0}
        role_of = {"weights": "network", "gates": "gates", "ranges": "ranges"}
        for shape, role in self.state_shapes(**flags).values():
            if role in role_of:
                counts[role_of[role]] += math.prod(shape)
        return counts

    def check_input(self, shape: tuple) -> None:
        """Raise unless ``shape`` is a batch (N, *input_shape)."""
        if tuple(shape[1:]) != self.input_shape or len(shape) != len(self.input_shape) + 1:
            raise ValueError(f"{self.name} expects inputs of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}); got {tuple(shape)}")


# --------------------------------------------------------------------------- the two networks

def lenet5() -> Architecture:
    """LeNet-5 for 1×28×28 MNIST (§7.1).

    conv 1→32 5×5, ReLU, act q → pool 2 → conv 32→64 5×5, ReLU, act q → pool 2 → flatten
    (64·4·4 = 1024) → fc 1024→512, ReLU, act q → fc 512→10 (logits in full precision; its
    weights are quantized but never pruned).  All layers have biases; no BN.
    """
    hidden = dict(relu=True, act_quant=True, prune=True)
    return Architecture("lenet5", (1, 28, 28), (
        LayerSpec("conv1", "conv", 1, 32, kernel=5, **hidden),
        LayerSpec("pool1", "pool", kernel=2, stride=2),
        LayerSpec("conv2", "conv", 32, 64, kernel=5, **hidden),
        LayerSpec("pool2", "pool", kernel=2, stride=2),
        LayerSpec("flatten", "flatten"),
        LayerSpec("fc1", "linear", 1024, 512, **hidden),
        LayerSpec("fc2", "linear", 512, 10),
    ), gate_preset="mnist")


def vgg7_widths(width: float = 1.0) -> tuple[int, int, int, int]:
    """VGG-7's channel counts (128, 256, 512) and fc1 width (1024), each scaled by ``width``.

    ``max(1, int(round(c * width)))``: ``width`` < 1 gives the small VGG-7s that fit a laptop.
    """
    ok = isinstance(width, numbers.Real) and not isinstance(width, bool)
    if not ok or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive number (1.0 = the paper's VGG-7); "
                         f"got {width!r}")
    c1, c2, c3, hidden = (max(1, int(round(c * width))) for c in (128, 256, 512, 1024))
    return c1, c2, c3, hidden


def vgg7(width: float = 1.0) -> Architecture:
    """VGG-7 for 3×32×32 CIFAR-10 (§7.2), every hidden width scaled by ``width``.

    Six 3×3 convs with padding 1 (128, 128, pool, 256, 256, pool, 512, 512, pool), each with
    BN folded into the quantized weight (§6, no conv bias), ReLU and an activation quantizer;
    flatten (C·4·4) → fc → 1024 (BN-folded, ReLU, act q) → fc 1024→10 (bias, logits in full
    precision, weights never pruned).  The 3 input channels and 10 classes stay fixed.
    """
    c1, c2, c3, hidden = vgg7_widths(width)
    block = dict(bias=False, batch_norm=True, relu=True, act_quant=True, prune=True)

    def conv(name, c_in, c_out):
        return LayerSpec(name, "conv", c_in, c_out, kernel=3, padding=1, **block)

    def pool(name):
        return LayerSpec(name, "pool", kernel=2, stride=2)
    return Architecture("vgg7", (3, 32, 32), (
        conv("conv1", 3, c1), conv("conv2", c1, c1), pool("pool1"),
        conv("conv3", c1, c2), conv("conv4", c2, c2), pool("pool2"),
        conv("conv5", c2, c3), conv("conv6", c3, c3), pool("pool3"),
        LayerSpec("flatten", "flatten"),
        LayerSpec("fc1", "linear", c3 * 16, hidden, **block),
        LayerSpec("fc2", "linear", hidden, 10),
    ), gate_preset="cifar10", width=float(width))


def get_architecture(family: str, width: float = 1.0) -> Architecture:
    """The description of ``"lenet5"`` (``width`` must be 1) or ``"vgg7"`` at ``width``."""
    if family == "lenet5":
        if width != 1.0:
            raise ValueError(f"LeNet-5 has no width multiplier; pass width=1.0, got {width!r}")
        return lenet5()
    if family == "vgg7":
        return vgg7(width)
    raise ValueError(f"model must be 'lenet5' or 'vgg7'; got {family!r}")


# --------------------------------------------------------------------------- built networks

class BuiltNetwork:
    """What every network built from an :class:`Architecture` shares, whatever its tensors.

    A mixin for the reference's and the PyTorch port's ``BBNet``: the subclass sets
    ``self.architecture`` and one attribute per layer (named as in the description), each
    quantized layer holding ``weight_quantizer`` / ``act_quantizer`` (or None).  It provides
    the ``parameters()`` and ``training`` of its module class, and :meth:`_zero` (a 0-d zero
    of its tensor type).  Nothing here computes on tensors.
    """

    architecture: Architecture

    def _set_architecture(self, architecture: Architecture) -> None:
        if not isinstance(architecture, Architecture):
            raise TypeError(f"architecture must be a bbits_ref.method.architectures.Architecture "
                            f"(e.g. architectures.lenet5()); got {type(architecture).__name__}")
        self.architecture = architecture

    @property
    def name(self) -> str:
        return self.architecture.name

    @property
    def input_shape(self) -> tuple:
        return self.architecture.input_shape

    @property
    def output_shape(self) -> tuple:
        return self.architecture.output_shape

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.architecture.layers]

    def layers(self) -> list:
        """(name, module) of every layer in order."""
        return [(n, getattr(self, n)) for n in self.layer_names]

    def quantized_layers(self) -> list:
        """(name, module) of the conv/linear layers in order (the layers BOPs are counted for)."""
        return [(spec.name, getattr(self, spec.name))
                for spec in self.architecture.quantized_layers()]

    def quantizers(self) -> list:
        """Every quantizer by name, in network order (weight before activation)."""
        out = []
        for n, m in self.quantized_layers():
            for attr in QUANTIZER_ATTRS:
                q = getattr(m, attr)
                if q is not None:
                    out.append((f"{n}.{attr}", q))
        return out

    def layer_macs(self) -> list[tuple[str, int]]:
        return self.architecture.layer_macs()

    def _attach_macs(self) -> None:
        """Give every conv/linear layer its MACs and every quantizer w_t = MAC_t / MAC_max."""
        for name, macs in self.architecture.layer_macs():
            getattr(self, name).macs = macs
        for spec in self.architecture.quantizers():
            q = getattr(getattr(self, spec.layer), spec.attr)
            if q is not None:
                q.mac_weight = spec.mac_weight

    def _run_layers(self, x, noise, source, source_hint: str):
        """Apply the layers to ``x``; a training forward first gives every quantizer its noise.

        ``noise``: {quantizer name: noise} (the layout of ``sample_noise``), or None to draw it
        with ``self.sample_noise(source)``; ``source_hint`` names that argument in the error
        raised when both are None.
        """
        quantizers = self.quantizers()
        if self.training and quantizers:
            if noise is None:
                if source is None:
                    raise ValueError(f"a training forward samples the gates: pass {source_hint} "
                                     "or noise= (from model.sample_noise(...)); for evaluation "
                                     "call model.eval() first")
                noise = self.sample_noise(source)
            missing = [n for n, _ in quantizers if n not in noise]
            if missing:
                raise KeyError(f"noise has no entry for quantizer(s) {missing}; draw it with "
                               "model.sample_noise(...)")
            for n, q in quantizers:
                q.noise = noise[n]
        try:
            for _, m in self.layers():
                x = m(x)
        finally:
            for _, q in quantizers:
                q.noise = None
        return x

    @property
    def initialized(self) -> bool:
        """True once every quantizer has its range β (created lazily, §2.1)."""
        return all(q.beta is not None or not getattr(q, "has_range", True)   # DoReFa: no range
                   for _, q in self.quantizers())

    def regularizer(self):
        """Σ_t R_t over every quantizer (§4.3); multiply by μ in the loss."""
        terms = [q.regularizer() for _, q in self.quantizers()]
        if not terms:
            return self._zero()
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def _zero(self):
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list]:
        """The official three groups: weights (incl. biases and BN), gate logits, ranges (§7.3)."""
        if not self.initialized:
            raise RuntimeError("the quantizer ranges are created lazily: call "
                               "model.initialize(two_training_images, ...) before building "
                               "optimizers (docs/method.md §7.3)")
        gates, ranges = [], []
        for _, q in self.quantizers():
            gates += [p for p in (q.gate_logits, q.prune_logits) if p is not None]
            if q.beta is not None:
                ranges.append(q.beta)
        special = {id(p) for p in gates + ranges}
        weights = [p for p in self.parameters() if id(p) not in special]
        return {"weights": weights, "gates": gates, "ranges": ranges}

"""LeNet-5 (MNIST) and VGG-7 (CIFAR-10) with Bayesian Bits quantizers (spec §6–§7).

:class:`BBNet` is a plain sequence of quantized layers, pools and a flatten that also knows
its MACs, its quantizers, the gate noise they need, the regularizer and the three parameter
groups of the official recipe (weights, gate logits, ranges).  Notebooks:
``06_lenet5_mnist.ipynb`` and ``07_vgg7_cifar10.ipynb``.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.method import bops
from bbits_ref.autograd.engine import Tensor, as_tensor, no_grad
from bbits_ref.autograd.nn import Flatten, MaxPool2d, Module, Parameter, as_generator
from bbits_ref.method.layers import BBConfig, BBQuantizer, QConv2d, QConv2dBN, QLinear, QLinearBN, QuantizedLayer

__all__ = ["BBNet", "lenet5", "vgg7", "count_parameters"]


class BBNet(Module):
    """A feed-forward network of quantized layers (spec §6).

    Parameters
    ----------
    layers : list of (name, module) in order: :class:`~bbits_ref.method.layers.QuantizedLayer` s,
        :class:`~bbits_ref.autograd.nn.MaxPool2d` and :class:`~bbits_ref.autograd.nn.Flatten`.
    input_shape : (C, H, W) of one example; used to count MACs (spec §4.4).
    config : the :class:`~bbits_ref.method.layers.BBConfig` the layers were built with.
    """

    def __init__(self, layers: list, input_shape: tuple, config: BBConfig, name: str) -> None:
        super().__init__()
        self.name, self.config, self.input_shape = name, config, tuple(input_shape)
        self.layer_names = [n for n, _ in layers]
        for n, m in layers:
            setattr(self, n, m)
        shape = self.input_shape
        for _, m in layers:                         # shape inference records every layer's MACs
            if isinstance(m, QuantizedLayer):
                shape = m.out_shape(shape)
            elif isinstance(m, MaxPool2d):
                stride = m.kernel_size if m.stride is None else m.stride
                shape = (shape[0], *bops.conv_output_hw(shape[1:], m.kernel_size, stride))
            elif isinstance(m, Flatten):
                shape = (int(np.prod(shape)),)
        self.output_shape = shape
        self._assign_mac_weights()

    # -- structure
    def layers(self) -> list:
        return [(n, getattr(self, n)) for n in self.layer_names]

    def quantized_layers(self) -> list[tuple[str, QuantizedLayer]]:
        """The conv/linear layers in order (the layers that BOPs are counted for)."""
        return [(n, m) for n, m in self.layers() if isinstance(m, QuantizedLayer)]

    def quantizers(self) -> list[tuple[str, BBQuantizer]]:
        """Every quantizer by name, in network order (weight before activation)."""
        out = []
        for n, m in self.quantized_layers():
            for kind in ("weight_quantizer", "act_quantizer"):
                q = getattr(m, kind)
                if q is not None:
                    out.append((f"{n}.{kind}", q))
        return out

    def _assign_mac_weights(self) -> None:
        """w_t = MAC_t / MAC_max: own MACs for weights, the consumer's MACs for activations."""
        qlayers = self.quantized_layers()
        mac_max = max(m.macs for _, m in qlayers)
        for i, (_, m) in enumerate(qlayers):
            if m.weight_quantizer is not None:
                m.weight_quantizer.mac_weight = m.macs / mac_max
            if m.act_quantizer is not None:
                consumer = qlayers[i + 1][1].macs if i + 1 < len(qlayers) else 0
                m.act_quantizer.mac_weight = consumer / mac_max

    # -- noise and forward
    def sample_noise(self, rng: np.random.Generator) -> dict[str, dict]:
        """Uniform noise for one training step, per quantizer name, drawn in network order."""
        rng = as_generator(rng)
        return {name: q.sample_noise(rng) for name, q in self.quantizers()}

    def forward(self, x, noise: dict | None = None, rng: np.random.Generator | None = None):
        """Logits for a batch ``x`` of shape (N, *input_shape).

        In training mode the gates are sampled once per forward pass (shared by the batch,
        spec §3.2) from ``noise`` (as returned by :meth:`sample_noise`), or from fresh noise
        drawn from ``rng``.  In evaluation mode the deterministic gates are used.
        """
        x = as_tensor(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {x.shape}")
        quantizers = self.quantizers()
        if self.training and quantizers:
            if noise is None:
                if rng is None:
                    raise ValueError("a training forward samples the gates: pass rng= (a numpy "
                                     "Generator) or noise= (from model.sample_noise(rng)); for "
                                     "evaluation call model.eval() first")
                noise = self.sample_noise(rng)
            missing = [n for n, _ in quantizers if n not in noise]
            if missing:
                raise KeyError(f"noise has no entry for quantizer(s) {missing}")
            for n, q in quantizers:
                q.noise = noise[n]
        try:
            for _, m in self.layers():
                x = m(x)
        finally:
            for _, q in quantizers:
                q.noise = None
        return x

    def initialize(self, x, rng: np.random.Generator) -> None:
        """Create the lazy ranges with one no-grad training-mode pass (spec §2.1, §7.3).

        The official driver pushes two training images; do this before building optimizers.
        """
        was_training = self.training
        self.train()
        with no_grad():
            self.forward(x, rng=rng)
        self.train(was_training)

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load parameters and buffers, creating lazy ranges that the state provides."""
        for name, q in self.quantizers():
            key = f"{name}.beta"
            if q.beta is None and key in state:
                q.dtype = getattr(self, name.split(".")[0]).weight.dtype   # the model's dtype
                q.beta = Parameter(np.asarray(state[key], dtype=q.dtype))
        super().load_state_dict(state, strict)

    @property
    def initialized(self) -> bool:
        return all(q.beta is not None for _, q in self.quantizers())

    # -- objective and parameter groups
    def regularizer(self) -> Tensor:
        """Σ_t R_t over every quantizer (spec §4.3); multiply by μ in the loss."""
        terms = [q.regularizer() for _, q in self.quantizers()]
        if not terms:
            return Tensor(np.zeros((), dtype=np.float32))
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def parameter_groups(self) -> dict[str, list]:
        """The official three groups: weights (incl. biases and BN), gate logits, ranges (§7.3)."""
        if not self.initialized:
            raise RuntimeError("the quantizer ranges are created lazily: call "
                               "model.initialize(two_training_images, rng) before building "
                               "optimizers (spec §7.3)")
        gates, ranges = [], []
        for _, q in self.quantizers():
            gates += [p for p in (q.gate_logits, q.prune_logits) if p is not None]
            ranges.append(q.beta)
        special = {id(p) for p in gates + ranges}
        weights = [p for p in self.parameters() if id(p) not in special]
        return {"weights": weights, "gates": gates, "ranges": ranges}

    def layer_macs(self) -> list[tuple[str, int]]:
        return [(n, m.macs) for n, m in self.quantized_layers()]

    def extra_repr(self) -> str:
        return f"{self.name}, input {self.input_shape}"


def _config(config: BBConfig | None, preset: str) -> BBConfig:
    if config is None:
        return BBConfig(chain_init=preset)
    if not isinstance(config, BBConfig):
        raise TypeError(f"config must be a BBConfig; got {type(config).__name__}")
    return config


def lenet5(config: BBConfig | None = None, *, rng=0, dtype=np.float32) -> BBNet:
    """LeNet-5 for 1×28×28 MNIST, exactly as spec §7.1.

    conv 1→32 5×5, ReLU, [act q], MaxPool2 → conv 32→64 5×5, ReLU, [act q], MaxPool2 → flatten
    1024 → fc 1024→512, ReLU, [act q] → fc 512→10 (logits full precision; its weights quantized
    but never pruned).  582,026 network parameters and 636 gate parameters.  The default
    config uses the MNIST gate preset (φ16 = φ32 = −6: at most 8 bits).
    """
    cfg = _config(config, "mnist")
    rng = as_generator(rng)
    kw = dict(rng=rng, config=cfg, dtype=dtype)
    layers = [
        ("conv1", QConv2d(1, 32, 5, **kw)), ("pool1", MaxPool2d(2)),
        ("conv2", QConv2d(32, 64, 5, **kw)), ("pool2", MaxPool2d(2)),
        ("flatten", Flatten()),
        ("fc1", QLinear(1024, 512, **kw)),
        ("fc2", QLinear(512, 10, relu=False, act_quant=False, prune=False, **kw)),
    ]
    return BBNet(layers, (1, 28, 28), cfg, "lenet5")


def vgg7(width: float = 1.0, config: BBConfig | None = None, *, rng=0,
         dtype=np.float32) -> BBNet:
    """VGG-7 for 3×32×32 CIFAR-10 as spec §7.2, with BatchNorm folding (spec §6).

    Six 3×3 convs (128, 128, pool, 256, 256, pool, 512, 512, pool), each BN-folded with batch
    statistics correction, ReLU and an activation quantizer; fc 8192→1024 (BN-folded, ReLU,
    act q); fc 1024→10 (bias, logits full precision, weights never pruned).  ``width`` scales
    every hidden channel count and the fc1 width (:func:`bbits_ref.method.bops.vgg7_widths`) for runs
    that must fit a laptop; the MAC table then matches :func:`bbits_ref.method.bops.vgg7_layer_macs`.
    """
    c1, c2, c3, hidden = bops.vgg7_widths(width)
    cfg = _config(config, "cifar10")
    rng = as_generator(rng)
    kw = dict(rng=rng, config=cfg, dtype=dtype)
    layers = [
        ("conv1", QConv2dBN(3, c1, **kw)), ("conv2", QConv2dBN(c1, c1, **kw)),
        ("pool1", MaxPool2d(2)),
        ("conv3", QConv2dBN(c1, c2, **kw)), ("conv4", QConv2dBN(c2, c2, **kw)),
        ("pool2", MaxPool2d(2)),
        ("conv5", QConv2dBN(c2, c3, **kw)), ("conv6", QConv2dBN(c3, c3, **kw)),
        ("pool3", MaxPool2d(2)),
        ("flatten", Flatten()),
        ("fc1", QLinearBN(c3 * 16, hidden, **kw)),
        ("fc2", QLinear(hidden, 10, relu=False, act_quant=False, prune=False, **kw)),
    ]
    return BBNet(layers, (3, 32, 32), cfg, f"vgg7(width={width:g})")


def count_parameters(model: BBNet) -> dict[str, int]:
    """Numbers of network parameters (weights, biases, BN), gate logits and ranges.

    Before :meth:`BBNet.initialize` the lazy ranges do not exist yet and count as 0.
    """
    gates = ranges = 0
    special = set()
    for _, q in model.quantizers():
        for p in (q.gate_logits, q.prune_logits):
            if p is not None:
                gates += p.size
                special.add(id(p))
        if q.beta is not None:
            ranges += q.beta.size
            special.add(id(q.beta))
    network = sum(p.size for p in model.parameters() if id(p) not in special)
    return {"network": int(network), "gates": int(gates), "ranges": int(ranges)}

"""LeNet-5 (MNIST) and VGG-7 (CIFAR-10) with Bayesian Bits quantizers (docs/method.md §6–§7).

:class:`BBNet` builds the layers of an :class:`~bbits_ref.method.architectures.Architecture`
(the one description of each network: shapes, MACs, quantizers, parameter names) and knows its
quantizers, the gate noise they need, the regularizer and the three parameter groups of the
official recipe (weights, gate logits, ranges).  Notebooks: ``06_lenet5_mnist.ipynb`` and
``07_vgg7_cifar10.ipynb``.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.autograd.engine import Tensor, as_tensor, no_grad
from bbits_ref.autograd.nn import Flatten, MaxPool2d, Module, Parameter, as_generator
from bbits_ref.method import architectures
from bbits_ref.method.architectures import Architecture, BuiltNetwork, LayerSpec
from bbits_ref.method.layers import BBConfig, QConv2d, QConv2dBN, QLinear, QLinearBN

__all__ = ["BBNet", "build", "lenet5", "vgg7", "count_parameters", "io_quantizer_names"]


def _make_layer(spec: LayerSpec, kw: dict):
    """The reference module for one layer spec (weights drawn from ``kw["rng"]`` in order)."""
    if spec.kind == "pool":
        return MaxPool2d(spec.kernel, spec.stride)
    if spec.kind == "flatten":
        return Flatten()
    flags = dict(relu=spec.relu, act_quant=spec.act_quant, prune=spec.prune, **kw)
    if spec.kind == "conv":
        if spec.batch_norm:
            return QConv2dBN(spec.in_size, spec.out_size, spec.kernel, spec.stride, spec.padding,
                             **flags)
        return QConv2d(spec.in_size, spec.out_size, spec.kernel, spec.stride, spec.padding,
                       bias=spec.bias, **flags)
    if spec.batch_norm:
        return QLinearBN(spec.in_size, spec.out_size, **flags)
    return QLinear(spec.in_size, spec.out_size, bias=spec.bias, **flags)


class BBNet(BuiltNetwork, Module):
    """A feed-forward network of quantized layers built from an architecture (§6).

    Parameters
    ----------
    architecture : the :class:`~bbits_ref.method.architectures.Architecture` to build.
    config : the :class:`~bbits_ref.method.layers.BBConfig` of every quantizer (default: the
        architecture's gate preset).
    rng : Generator or int seed for the initial weights (PyTorch's default init, in layer order).
    dtype : float32 (default) or float64.
    """

    def __init__(self, architecture: Architecture, config: BBConfig | None = None, *, rng=0,
                 dtype=np.float32) -> None:
        super().__init__()
        self._set_architecture(architecture)
        self.config = _config(config, architecture.gate_preset)
        kw = dict(rng=as_generator(rng), config=self.config, dtype=dtype)
        for spec in architecture.layers:
            setattr(self, spec.name, _make_layer(spec, kw))
        self._attach_macs()
        if self.config.quantize and self.config.io_bits is not None:
            quantizers = dict(self.quantizers())
            for name in io_quantizer_names(architecture):
                quantizers[name].fixed_bits = self.config.io_bits

    def _zero(self) -> Tensor:
        return Tensor(np.zeros((), dtype=np.float32))

    # -- noise and forward
    def sample_noise(self, rng: np.random.Generator) -> dict[str, dict]:
        """Uniform noise for one training step, per quantizer name, drawn in network order."""
        rng = as_generator(rng)
        return {name: q.sample_noise(rng) for name, q in self.quantizers()}

    def forward(self, x, noise: dict | None = None, rng: np.random.Generator | None = None):
        """Logits for a batch ``x`` of shape (N, *input_shape).

        In training mode the gates are sampled once per forward pass (shared by the batch,
        §3.2) from ``noise`` (as returned by :meth:`sample_noise`), or from fresh noise
        drawn from ``rng``.  In evaluation mode the deterministic gates are used.
        """
        x = as_tensor(x)
        self.architecture.check_input(x.shape)
        return self._run_layers(x, noise, rng, "rng= (a numpy Generator)")

    def initialize(self, x, rng: np.random.Generator) -> None:
        """Create the lazy ranges with one no-grad training-mode pass (§2.1, §7.3).

        The official driver pushes two training images; do this before building optimizers.
        """
        was_training = self.training
        self.train()
        with no_grad():
            self.forward(x, rng=rng)
        self.train(was_training)

    def range_penalty(self) -> Tensor | None:
        """PACT's L2 penalty on its clip levels, Σ ½·λ·α² (§13); None without PACT quantizers.

        The trainer adds it to the loss at every step, whatever μ is.
        """
        terms = [p for _, q in self.quantizers() if (p := q.range_penalty()) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load parameters and buffers, creating lazy ranges that the state provides."""
        for name, q in self.quantizers():
            key = f"{name}.beta"
            if q.beta is None and key in state:
                q.dtype = getattr(self, name.split(".")[0]).weight.dtype   # the model's dtype
                q.beta = Parameter(np.asarray(state[key], dtype=q.dtype))
        super().load_state_dict(state, strict)

    def extra_repr(self) -> str:
        return f"{self.name}, input {self.input_shape}"


def io_quantizer_names(architecture: Architecture) -> list[str]:
    """The quantizers that "8 in/out" (``BBConfig.io_bits``, §13) sets: the first and last
    conv/linear layers' weight quantizers and the activation quantizer feeding the last layer."""
    layers = architecture.quantized_layers()
    names = [f"{layers[0].name}.weight_quantizer", f"{layers[-1].name}.weight_quantizer"]
    if len(layers) > 1 and layers[-2].act_quant:
        names.append(f"{layers[-2].name}.act_quantizer")
    return list(dict.fromkeys(names))


def _config(config: BBConfig | None, preset: str) -> BBConfig:
    if config is None:
        return BBConfig(chain_init=preset)
    if not isinstance(config, BBConfig):
        raise TypeError(f"config must be a BBConfig; got {type(config).__name__}")
    return config


def build(architecture: Architecture, config: BBConfig | None = None, *, rng=0,
          dtype=np.float32) -> BBNet:
    """The reference network of any :class:`~bbits_ref.method.architectures.Architecture`."""
    return BBNet(architecture, config, rng=rng, dtype=dtype)


def lenet5(config: BBConfig | None = None, *, rng=0, dtype=np.float32) -> BBNet:
    """LeNet-5 for 1×28×28 MNIST, exactly as §7.1 (:func:`bbits_ref.method.architectures.lenet5`).

    conv 1→32 5×5, ReLU, [act q], MaxPool2 → conv 32→64 5×5, ReLU, [act q], MaxPool2 → flatten
    1024 → fc 1024→512, ReLU, [act q] → fc 512→10 (logits full precision; its weights quantized
    but never pruned).  582,026 network parameters and 636 gate parameters.  The default
    config uses the MNIST gate preset (φ16 = φ32 = −6: at most 8 bits).
    """
    return BBNet(architectures.lenet5(), config, rng=rng, dtype=dtype)


def vgg7(width: float = 1.0, config: BBConfig | None = None, *, rng=0,
         dtype=np.float32) -> BBNet:
    """VGG-7 for 3×32×32 CIFAR-10 as §7.2, with BatchNorm folding (§6).

    Six 3×3 convs (128, 128, pool, 256, 256, pool, 512, 512, pool), each BN-folded with batch
    statistics correction, ReLU and an activation quantizer; fc 8192→1024 (BN-folded, ReLU,
    act q); fc 1024→10 (bias, logits full precision, weights never pruned).  ``width`` scales
    every hidden channel count and the fc1 width
    (:func:`bbits_ref.method.architectures.vgg7_widths`) for runs that must fit a laptop.
    """
    return BBNet(architectures.vgg7(width), config, rng=rng, dtype=dtype)


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

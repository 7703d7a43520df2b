"""LeNet-5 and VGG-7 with Bayesian Bits quantizers as ``torch.nn.Module`` s (docs/method.md §6–§7).

A :class:`BBNet` builds the layers of an :class:`~bbits_ref.method.architectures.Architecture`,
the same description the NumPy reference is built from, so the layer and parameter NAMES are
the reference's (``"conv1.weight"``, ``"conv1.weight_quantizer.beta"``, ``".gate_logits"``,
``".prune_logits"``, ``".signed_flag"``, VGG's ``"conv1.bn.weight"`` …) and weights move both
ways (:mod:`.state`).  Configuration is a :class:`bbits_ref.method.layers.BBConfig`.

* Training mode samples one gate value per gate per forward (§3.2) from the noise it is
  given (``model(x, noise=...)``, the layout of :meth:`BBNet.sample_noise`, NumPy arrays or
  tensors) or draws it from a ``torch.Generator`` (``model(x, generator=g)``).  Evaluation
  mode uses the deterministic test-time gates (§3.4).
* Quantizer ranges are created lazily at the first forward (§2.1): call
  :meth:`BBNet.initialize` with two training images before building optimizers (§7.3).
* ``LeNet5(rng=seed)`` draws its initial weights exactly as the reference's
  ``lenet5(rng=seed)`` does (NumPy, PyTorch's default init distribution, in layer order).
* For speed, without changing any value or input gradient: the ReLU before an (unsigned)
  activation quantizer is folded into the quantizer's own clip; an activation quantizer that
  a max-pooling follows runs fused with it (:func:`~.quantizer.bb_quantize_maxpool`: its
  backward runs on the pooled winners only, so its β and gate gradients are the same sums
  over fewer terms); on the CPU a one-channel input runs its first layer channels-last
  (faster convolution and pooling; that convolution's float rounding may differ).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from bbits_ref.method import architectures
from bbits_ref.method.architectures import Architecture, BuiltNetwork, LayerSpec
from bbits_ref.method.layers import BBConfig
from bbits_ref.torch_impl import bops as _bops
from bbits_ref.torch_impl import gates as gates_mod
from bbits_ref.torch_impl.layers import (NUMPY_DTYPES, MaxPool2d, QConv2d, QConv2dBN, QLinear,
                                         QLinearBN, as_generator)

__all__ = ["BBNet", "LeNet5", "VGG7", "build", "make_layer", "cached_weights"]

_LAYER_CLASSES = {("conv", False): QConv2d, ("conv", True): QConv2dBN,
                  ("linear", False): QLinear, ("linear", True): QLinearBN}


def make_layer(spec: LayerSpec, **kw) -> nn.Module:
    """The torch module of one layer spec (``kw``: rng, config, dtype, device)."""
    if spec.kind == "flatten":
        return nn.Flatten()
    if spec.kind == "pool":
        if spec.stride != spec.kernel:
            raise ValueError(f"layer {spec.name!r}: bbits_ref.torch_impl pools non-overlapping "
                             f"windows only (stride = kernel); got kernel {spec.kernel}, stride "
                             f"{spec.stride}")
        return MaxPool2d(spec.kernel)
    return _LAYER_CLASSES[spec.kind, spec.batch_norm](spec, **kw)


def _config(config, preset: str) -> BBConfig:
    if config is None:
        return BBConfig(chain_init=preset)
    if not isinstance(config, BBConfig):
        raise TypeError(f"config must be a bbits_ref.method.layers.BBConfig; got "
                        f"{type(config).__name__}")
    return config


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in NUMPY_DTYPES:
        raise TypeError(f"dtype must be torch.float32 (default) or torch.float64; got {dtype!r}")
    return dtype


def _cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A one-channel image batch on the CPU stored channels-last (strides (H·W, 1, W, 1)), which
    ``.contiguous(memory_format=...)`` does not do for a single channel.

    The first convolution then runs channels-last (with one input channel oneDNN's
    default-layout kernel is several times slower) and so do its activation quantizer and
    max-pooling (:func:`~.quantizer.bb_quantize_maxpool`); the layer hands on its output in the
    default layout (:meth:`~.layers.QuantizedLayer.finish`).  Same values, up to the float
    rounding of that convolution."""
    if x.ndim != 4 or x.shape[1] != 1 or x.device.type != "cpu":
        return x
    n, c, h, w = x.shape
    out = torch.empty_strided(tuple(x.shape), (h * w, 1, w, 1), dtype=x.dtype)
    return out.copy_(x)


class BBNet(BuiltNetwork, nn.Module):
    """A feed-forward network of quantized layers built from an architecture (§6).

    Parameters
    ----------
    architecture : the :class:`~bbits_ref.method.architectures.Architecture` to build.
    config : :class:`~bbits_ref.method.layers.BBConfig` (default: the architecture's preset).
    rng : NumPy Generator or int seed for the initial weights (drawn as the reference does).
    dtype, device : torch.float32 (default) or torch.float64; any device.
    """

    def __init__(self, architecture: Architecture, config: BBConfig | None = None, *, rng=0,
                 dtype=torch.float32, device=None) -> None:
        super().__init__()
        self._set_architecture(architecture)
        self.config = _config(config, architecture.gate_preset)
        kw = dict(rng=as_generator(rng), config=self.config, dtype=_check_dtype(dtype),
                  device=device)
        for spec in architecture.layers:
            self.add_module(spec.name, make_layer(spec, **kw))
        self._attach_macs()

    def _zero(self) -> torch.Tensor:
        p = next(self.parameters())
        return torch.zeros((), dtype=p.dtype, device=p.device)

    # -- noise and forward
    def sample_noise(self, generator: torch.Generator | None = None) -> dict:
        """Uniform noise for one training step, per quantizer (prune first, then chain).

        The layout of the reference's ``BBNet.sample_noise``, as float64 tensors on the
        model's device drawn from ``generator``.
        """
        out = {}
        for name, q in self.quantizers():
            noise = {}
            if q.prune_logits is not None:
                noise["prune"] = gates_mod.uniform_noise(q.prune_logits.shape, generator,
                                                         device=q.prune_logits.device)
            if q.gate_logits is not None:
                noise["chain"] = gates_mod.uniform_noise((4,), generator,
                                                         device=q.gate_logits.device)
            out[name] = noise
        return out

    def forward(self, x, noise: dict | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits for a batch (N, *input_shape); training mode samples the gates (§3.2)."""
        if not isinstance(x, torch.Tensor):         # a NumPy batch takes the model's dtype
            p = next(self.parameters())
            x = torch.as_tensor(np.asarray(x), dtype=p.dtype, device=p.device)
        self.architecture.check_input(tuple(x.shape))
        return self._run_layers(_cpu_channels_last(x), noise, generator,
                                "generator= (a torch.Generator)")

    def _run_layers(self, x, noise, source, source_hint: str):
        """The reference's loop over the layers, with every conv/linear layer that a max-pooling
        follows running that pooling itself, fused with its activation quantizer (same values
        and input gradients; the quantizer's backward then runs on the pooled winners only)."""
        pairs = [(m, nxt) for (_, m), (_, nxt) in zip(self.layers(), self.layers()[1:])
                 if isinstance(nxt, MaxPool2d) and hasattr(m, "fused_pool")]
        try:
            for m, pool in pairs:
                m.fused_pool, pool.fused = pool.kernel_size, True
            return super()._run_layers(x, noise, source, source_hint)
        finally:
            for m, pool in pairs:
                m.fused_pool, pool.fused = 0, False

    @torch.no_grad()
    def initialize(self, x, noise: dict | None = None,
                   generator: torch.Generator | None = None) -> None:
        """Create the lazy ranges with one no-grad training-mode pass (§2.1, §7.3)."""
        was_training = self.training
        self.train()
        try:
            self.forward(x, noise=noise, generator=generator)
        finally:
            self.train(was_training)

    # -- readouts
    def test_time_gates(self) -> dict:
        """{quantizer name: {"chain": (4,) 0/1, "z2": (C,) 0/1 (weights with pruning)}}."""
        out = {}
        for name, q in self.quantizers():
            entry = {"chain": q.deterministic_chain().cpu().numpy()}
            kept = q.kept_channels()
            if kept is not None:
                entry["z2"] = kept.cpu().numpy().astype(np.float64)
            out[name] = entry
        return out

    def relative_bops(self) -> float:
        """Deterministic relative BOPs in percent (§5)."""
        return _bops.model_relative_bops(self)

    def extra_repr(self) -> str:
        return f"{self.name}, input {self.input_shape}"


@contextmanager
def cached_weights(model: BBNet):
    """Evaluate with every layer's quantized weight computed once, not at every batch.

    In evaluation mode the gates are the deterministic test-time gates and the weights (and a
    folded BN's running statistics) do not change between batches, so each layer's Q(W) is
    the same for every batch: compute it once on entry, reuse it, drop it on exit (the official
    code caches the quantized weights for evaluation in the same way).  Same values as
    quantizing at every batch.  Needs ``model.eval()``; no gradients are recorded.
    """
    if model.training:
        raise RuntimeError("cached_weights is for evaluation, where the gates are deterministic: "
                           "call model.eval() first (training samples new gates every forward)")
    layers = [m for _, m in model.quantized_layers()]
    try:
        with torch.no_grad():
            for m in layers:
                m.cached_weight = None
                m.cached_weight = m.quantized_weight().detach()
        yield model
    finally:
        for m in layers:
            m.cached_weight = None


def build(architecture: Architecture, config: BBConfig | None = None, *, rng=0,
          dtype=torch.float32, device=None) -> BBNet:
    """The torch network of any :class:`~bbits_ref.method.architectures.Architecture`."""
    return BBNet(architecture, config, rng=rng, dtype=dtype, device=device)


class LeNet5(BBNet):
    """LeNet-5 for 1×28×28 MNIST (§7.1), :func:`bbits_ref.method.architectures.lenet5`.

    conv 1→32 5×5, ReLU, act q, pool → conv 32→64 5×5, ReLU, act q, pool → flatten 1024 →
    fc 1024→512, ReLU, act q → fc 512→10 (FP logits; weights quantized, never pruned).
    """

    def __init__(self, config: BBConfig | None = None, *, rng=0, dtype=torch.float32,
                 device=None) -> None:
        super().__init__(architectures.lenet5(), config, rng=rng, dtype=dtype, device=device)


class VGG7(BBNet):
    """VGG-7 for 3×32×32 CIFAR-10 with BN folding (§7.2, §6), from ``architectures.vgg7``.

    ``width`` scales every hidden channel count and the fc1 width (``max(1, round(c·width))``).
    """

    def __init__(self, width: float = 1.0, config: BBConfig | None = None, *, rng=0,
                 dtype=torch.float32, device=None) -> None:
        super().__init__(architectures.vgg7(width), config, rng=rng, dtype=dtype, device=device)

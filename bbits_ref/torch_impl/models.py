"""LeNet-5 and VGG-7 with Bayesian Bits quantizers as ``torch.nn.Module`` s (spec §6–§7).

The structure and the parameter NAMES are those of :mod:`bbits_ref.method.models`, so state dicts map
one to one (``"conv1.weight"``, ``"conv1.weight_quantizer.beta"``, ``".gate_logits"``,
``".prune_logits"``, ``".signed_flag"``, VGG's ``"conv1.bn.weight"`` … ``"num_batches_tracked"``)
and weights move both ways with :func:`to_reference` / :func:`from_reference` (or
:func:`state_dict_to_numpy` / :func:`load_numpy_state`).  Configuration is the reference's
:class:`bbits_ref.method.layers.BBConfig`.

* Training mode samples one gate value per gate per forward (spec §3.2) from the noise it is
  given (``model(x, noise=...)``, the layout of :meth:`bbits_ref.method.models.BBNet.sample_noise`,
  NumPy arrays or tensors) or draws it from a ``torch.Generator`` (``model(x, generator=g)``).
  Evaluation mode uses the deterministic test-time gates (spec §3.4).
* Quantizer ranges are created lazily at the first forward (spec §2.1): call
  :meth:`BBNet.initialize` with two training images before building optimizers (spec §7.3).
* VGG-7 folds batch norm into the quantized weight and corrects it with batch statistics from a
  second, full-precision conv (spec §6).
* ``LeNet5(rng=seed)`` draws its initial weights exactly as ``bbits_ref.method.models.lenet5(rng=seed)``
  does (NumPy, PyTorch's default init distribution), so both start from the same network.
* For speed on the CPU, and without changing any value or gradient: max-pooling is computed
  from strided taps (:class:`MaxPool2d`), and the ReLU before an (unsigned) activation
  quantizer is folded into the quantizer's own clip.
"""
from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from bbits_ref.method import models as _ref_models
from bbits_ref.autograd.nn import as_generator
from bbits_ref.method.layers import BBConfig
from bbits_ref.method.quantizer import gates_for_bits
from bbits_ref.torch_impl import bops as _bops
from bbits_ref.torch_impl import gates as gates_mod
from bbits_ref.torch_impl.prior import bop_regularizer, independent_regularizer
from bbits_ref.torch_impl.quantizer import bb_quantize

__all__ = ["BBQuantizer", "MaxPool2d", "QConv2d", "QLinear", "QConv2dBN", "QLinearBN", "BBNet",
           "LeNet5", "VGG7", "state_dict_to_numpy", "load_numpy_state", "to_reference",
           "from_reference"]

_NP = {torch.float32: np.float32, torch.float64: np.float64}
_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _gate_settings(config: BBConfig) -> tuple[dict, dict]:
    """(sample options, deterministic options) for the configured gate family."""
    opts = dict(config.gate_options)
    sample, det = {}, {}
    if "temperature" in opts:
        sample["temperature"] = opts.pop("temperature")
    if config.gate == "gumbel_softmax":
        sample["straight_through"] = opts.pop("straight_through", False)
        opts.pop("init_logit", None)            # only the reference's gate object uses it
    elif "threshold" in opts:
        det["threshold"] = opts.pop("threshold")
    defaults = {"gamma": gates_mod.HC_GAMMA, "zeta": gates_mod.HC_ZETA}
    unsupported = {k: v for k, v in opts.items() if defaults.get(k) != v}
    if unsupported:
        raise ValueError(f"bbits_ref.torch_impl does not support the gate options "
                         f"{unsupported} (only temperature, threshold, straight_through)")
    return sample, det


# --------------------------------------------------------------------------- the quantizer

class BBQuantizer(nn.Module):
    """One Bayesian Bits quantizer (spec §1–§3): :class:`bbits_ref.method.layers.BBQuantizer` in torch.

    Parameters: ``beta`` (range, created at the first forward), ``gate_logits`` (φ4, φ8, φ16,
    φ32), ``prune_logits`` (φ2 per output channel, weights with pruning only); buffer
    ``signed_flag`` (−1 before init, 0 unsigned, 1 signed).
    """

    def __init__(self, kind: str, channels: int | None, config: BBConfig,
                 fixed_bits: int | None = None, *, dtype=torch.float32, device=None) -> None:
        super().__init__()
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation'; got {kind!r}")
        self.kind, self.config, self.channels, self._dtype = kind, config, channels, dtype
        self.sample_options, self.det_options = _gate_settings(config)
        self.register_parameter("beta", None)
        self.register_buffer("signed_flag", torch.tensor(-1, dtype=torch.int8, device=device))
        self.fixed_bits = fixed_bits
        self.mac_weight = 1.0           # MAC_t / MAC_max, set by the model (spec §4.4)
        self.noise: dict | None = None  # uniform noise for the next training forward
        self.fixed_gates = False        # deterministic gates in training too (fine-tuning)
        if config.learn_bits:
            logits = np.asarray(config.chain_logits, dtype=_NP[dtype])
            self.gate_logits = nn.Parameter(torch.as_tensor(logits, device=device))
        else:
            self.register_parameter("gate_logits", None)
        if channels is not None and config.pruning:
            self.prune_logits = nn.Parameter(torch.full(
                (channels,), float(_NP[dtype](config.prune_logit)), dtype=dtype, device=device))
        else:
            self.register_parameter("prune_logits", None)

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the parameters (follows ``.double()`` / ``.to(dtype)``)."""
        for p in (self.gate_logits, self.prune_logits, self.beta):
            if p is not None:
                return p.dtype
        return self._dtype

    # -- range
    @property
    def signed(self) -> bool | None:
        flag = int(self.signed_flag)
        return None if flag < 0 else bool(flag)

    @torch.no_grad()
    def initialize_range(self, x: torch.Tensor) -> None:
        """β ← max(max(x), 0) and signed ← min(x) < 0, from the first tensor seen (spec §2.1)."""
        beta = max(float(x.max()), 0.0)
        if not beta > 0:
            raise ValueError(f"{self.kind} quantizer: the first tensor it saw has max {beta}, so "
                             "its range β would be 0. Initialise with data that has positive "
                             "values (e.g. two training images).")
        self.beta = nn.Parameter(torch.tensor(beta, dtype=x.dtype, device=x.device))
        self.signed_flag.fill_(int(bool(x.min() < 0)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "beta"           # a lazy range that the state provides is created first
        if self.beta is None and key in state_dict:
            self.beta = nn.Parameter(torch.zeros((), dtype=self.dtype,
                                                 device=self.signed_flag.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- gates
    def _noise(self, key: str):
        if self.noise is None or key not in self.noise:
            raise RuntimeError("a training forward samples gates and needs their uniform noise: "
                               "call the model with generator= (a torch.Generator) or noise= "
                               "(from model.sample_noise(...))")
        return self.noise[key]

    def gate_values(self) -> tuple:
        """(z2, z4, z8, z16, z32): samples in training, 0/1 in evaluation (spec §3)."""
        sample = self.training and not self.fixed_gates
        gate = self.config.gate
        z2 = None
        if self.prune_logits is not None:
            z2 = (gates_mod.sample(self.prune_logits, self._noise("prune"), gate=gate,
                                   **self.sample_options) if sample else
                  gates_mod.deterministic_gates(self.prune_logits, gate=gate, **self.det_options))
        if self.gate_logits is None:
            chain = [v or None for v in gates_for_bits(self.fixed_bits)]
        elif sample:
            chain = gates_mod.chain_gates(self.gate_logits, self._noise("chain"), training=True,
                                          hard_cut=self.config.hard_cut, gate=gate,
                                          **self.sample_options)
        else:
            chain = [v or None for v in self.deterministic_chain().tolist()]
        return (z2, *chain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta is None:
            self.initialize_range(x.detach())
        return bb_quantize(x, self.beta, *self.gate_values(), signed=self.signed,
                           clip=self.config.clip)

    # -- prior
    def chain_probs(self) -> torch.Tensor:
        if self.gate_logits is None:
            return torch.tensor(gates_for_bits(self.fixed_bits), dtype=self.dtype,
                                device=self.signed_flag.device)
        return gates_mod.prob_nonzero(self.gate_logits, gate=self.config.gate)

    def prune_probs(self) -> torch.Tensor | None:
        if self.prune_logits is None:
            return None
        return gates_mod.prob_nonzero(self.prune_logits, gate=self.config.gate)

    def regularizer(self) -> torch.Tensor:
        """R_t of spec §4.3 (or the independent ablation), weighted by ``mac_weight``."""
        fn = (bop_regularizer if self.config.prior == "autoregressive"
              else independent_regularizer)
        return fn(self.prune_probs(), self.chain_probs(), self.mac_weight,
                  reg_type=self.config.reg_type)

    # -- deterministic view
    @torch.no_grad()
    def deterministic_chain(self) -> torch.Tensor:
        """Test-time (z4, z8, z16, z32) as 0/1, hard cut applied (spec §3.4–3.5)."""
        if self.gate_logits is None:
            return torch.tensor(gates_for_bits(self.fixed_bits))
        return gates_mod.chain_gates_eval(self.gate_logits, hard_cut=self.config.hard_cut,
                                          gate=self.config.gate, **self.det_options)

    @torch.no_grad()
    def kept_channels(self) -> torch.Tensor | None:
        """Boolean mask of output channels whose test-time z2 is 1 (None: no pruning gate)."""
        if self.prune_logits is None:
            return None
        return gates_mod.deterministic_gates(self.prune_logits, gate=self.config.gate,
                                             **self.det_options).bool()

    def extra_repr(self) -> str:
        beta = "lazy" if self.beta is None else f"{float(self.beta):.4g}"
        return f"{self.kind}, channels={self.channels}, beta={beta}, gate={self.config.gate}"


# --------------------------------------------------------------------------- layers

def _uniform(rng: np.random.Generator, bound: float, shape, dtype, device) -> nn.Parameter:
    """PyTorch's default init U(−1/√fan_in, 1/√fan_in), drawn as bbits_ref.autograd.nn draws it."""
    data = rng.uniform(-bound, bound, size=shape).astype(_NP[dtype])
    return nn.Parameter(torch.as_tensor(data, device=device))


class QuantizedLayer(nn.Module):
    """Shared machinery: the weight and activation quantizers, ReLU, MACs."""

    macs: int = 0

    def _make_quantizers(self, out_channels, config, prune, act_quant, dtype, device):
        if not config.quantize:
            self.weight_quantizer = self.act_quantizer = None
            return
        kw = dict(dtype=dtype, device=device)
        self.weight_quantizer = BBQuantizer("weight", out_channels if prune else None, config,
                                            config.weight_bits, **kw)
        self.act_quantizer = (BBQuantizer("activation", None, config, config.act_bits, **kw)
                              if act_quant else None)

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """ReLU, then the activation quantizer (spec §6: quantize after the nonlinearity).

        An initialised unsigned quantizer starts with relu(x − 0), so a ReLU right before it
        changes no value and no gradient (its mask is part of the quantizer's): it is skipped.
        """
        q = self.act_quantizer
        if self.relu and (q is None or q.signed is not False):
            y = torch.relu(y)
        return y if q is None else q(y)


class QConv2d(QuantizedLayer):
    """Conv2d (+bias) → ReLU → activation quantizer, with a BB weight quantizer (spec §6)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, rng,
                 config: BBConfig, relu=True, act_quant=True, prune=True, bias=True,
                 dtype=torch.float32, device=None) -> None:
        super().__init__()
        rng = as_generator(rng)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), stride, padding
        bound = 1.0 / np.sqrt(in_channels * kernel_size * kernel_size)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = _uniform(rng, bound, shape, dtype, device)
        if bias:
            self.bias = _uniform(rng, bound, (out_channels,), dtype, device)
        else:
            self.register_parameter("bias", None)
        self.relu = relu
        self._make_quantizers(out_channels, config, prune, act_quant, dtype, device)

    def out_shape(self, in_shape: tuple) -> tuple:
        """(C, H, W) → (C_out, H_out, W_out); records the layer's MACs (spec §4.4)."""
        k, s, p = self.kernel_size[0], self.stride, self.padding
        h = (in_shape[1] + 2 * p - k) // s + 1
        w = (in_shape[2] + 2 * p - k) // s + 1
        self.macs = int(self.out_channels * h * w * k * k * in_shape[0])
        return (self.out_channels, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.quantize_weight(self.weight), self.bias, self.stride, self.padding)
        return self.finish(y)


class QLinear(QuantizedLayer):
    """Linear (+bias) → [ReLU → activation quantizer], with a BB weight quantizer (spec §6)."""

    def __init__(self, in_features, out_features, *, rng, config: BBConfig, relu=True,
                 act_quant=True, prune=True, bias=True, dtype=torch.float32,
                 device=None) -> None:
        super().__init__()
        rng = as_generator(rng)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / np.sqrt(in_features)
        self.weight = _uniform(rng, bound, (out_features, in_features), dtype, device)
        if bias:
            self.bias = _uniform(rng, bound, (out_features,), dtype, device)
        else:
            self.register_parameter("bias", None)
        self.relu = relu
        self._make_quantizers(out_features, config, prune, act_quant, dtype, device)

    def out_shape(self, in_shape: tuple) -> tuple:
        self.macs = int(self.in_features * self.out_features)
        return (self.out_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(F.linear(x, self.quantize_weight(self.weight), self.bias))


class _FoldedBN(QuantizedLayer):
    """Batch norm folded into the quantized weight, corrected by batch statistics (spec §6).

    Training: y = op(x, Q(W·γ/σ_run))·(σ_run/σ_B) + (β_bn − γ·μ_B/σ_B), with μ_B and σ_B
    (biased variance + eps) from a second, full-precision op with the raw W; the running
    statistics take the unbiased variance (momentum 0.1).  Evaluation:
    y = op(x, Q(W·γ/σ_run)) + (β_bn − γ·μ_run/σ_run).  The folded shift is neither quantized
    nor gated.  ``bn`` is a ``torch.nn.BatchNorm`` used only for its parameters and buffers.
    """

    bn: nn.modules.batchnorm._BatchNorm
    _axes: tuple = ()

    def _op(self, x, w):
        raise NotImplementedError

    def _per_channel(self, v):
        return v.reshape((1, -1) + (1,) * (len(self._axes) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        sigma_run = torch.sqrt(bn.running_var + bn.eps)           # a constant (buffer)
        scale = bn.weight / sigma_run                              # γ / σ_run per channel
        w_fold = self.weight * scale.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        y = self._op(x, self.quantize_weight(w_fold))
        if self.training:
            y_fp = self._op(x, self.weight)
            var, mean = torch.var_mean(y_fp, dim=self._axes, correction=0, keepdim=True)
            n = y_fp.numel() // bn.num_features
            with torch.no_grad():
                m = bn.momentum
                unbiased = var.reshape(-1) * (n / max(n - 1, 1))
                bn.running_mean.copy_((1 - m) * bn.running_mean + m * mean.reshape(-1))
                bn.running_var.copy_((1 - m) * bn.running_var + m * unbiased)
                bn.num_batches_tracked.add_(1)
            sigma_b = torch.sqrt(var + bn.eps)
            y = y * (self._per_channel(sigma_run) / sigma_b) + (
                self._per_channel(bn.bias) - self._per_channel(bn.weight) * mean / sigma_b)
        else:
            y = y + self._per_channel(bn.bias - bn.weight * bn.running_mean / sigma_run)
        return self.finish(y)


class QConv2dBN(_FoldedBN):
    """Conv2d (no bias) with folded BatchNorm2d → ReLU → activation quantizer (VGG-7 blocks)."""

    _axes = (0, 2, 3)
    out_shape = QConv2d.out_shape

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, *, rng,
                 config: BBConfig, relu=True, act_quant=True, prune=True, dtype=torch.float32,
                 device=None) -> None:
        super().__init__()
        rng = as_generator(rng)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), stride, padding
        bound = 1.0 / np.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = _uniform(rng, bound, (out_channels, in_channels, kernel_size, kernel_size),
                               dtype, device)
        self.bn = nn.BatchNorm2d(out_channels, dtype=dtype, device=device)
        self.relu = relu
        self._make_quantizers(out_channels, config, prune, act_quant, dtype, device)

    def _op(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding)


class QLinearBN(_FoldedBN):
    """Linear (no bias) with folded BatchNorm1d → ReLU → activation quantizer (VGG-7 fc1)."""

    _axes = (0,)
    out_shape = QLinear.out_shape

    def __init__(self, in_features, out_features, *, rng, config: BBConfig, relu=True,
                 act_quant=True, prune=True, dtype=torch.float32, device=None) -> None:
        super().__init__()
        rng = as_generator(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = _uniform(rng, 1.0 / np.sqrt(in_features), (out_features, in_features),
                               dtype, device)
        self.bn = nn.BatchNorm1d(out_features, dtype=dtype, device=device)
        self.relu = relu
        self._make_quantizers(out_features, config, prune, act_quant, dtype, device)

    def _op(self, x, w):
        return F.linear(x, w)


class _MaxPool(torch.autograd.Function):
    """Non-overlapping k×k max-pooling from k² strided taps; the gradient goes to the first
    maximum of each window in row-major order (as the reference and ``torch.max_pool2d``).
    For finite inputs (quantized activations are)."""

    @staticmethod
    def forward(ctx, x, k):
        ho, wo = x.shape[2] // k, x.shape[3] // k
        taps = [x[:, :, i:i + k * ho:k, j:j + k * wo:k] for i in range(k) for j in range(k)]
        out = taps[0].clone()
        for t in taps[1:]:
            torch.maximum(out, t, out=out)
        ctx.k = k
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        k = ctx.k
        ho, wo = out.shape[2], out.shape[3]
        covered = x.shape[2] == k * ho and x.shape[3] == k * wo
        dx = torch.empty_like(x) if covered else torch.zeros_like(x)
        still_open = torch.ones_like(out)       # windows whose maximum has not been routed yet
        hit = torch.empty_like(out)
        # 0.0/1.0 float masks from arithmetic (out − tap ≥ 0 is 0 exactly where tap is the
        # maximum): several times faster on the CPU than comparisons of strided taps
        for i in range(k):
            for j in range(k):
                tap = x[:, :, i:i + k * ho:k, j:j + k * wo:k]
                torch.sub(out, tap, out=hit).sign_().mul_(still_open)   # open, tap < max
                torch.sub(still_open, hit, out=hit)                     # open, tap = max
                torch.mul(g, hit, out=dx[:, :, i:i + k * ho:k, j:j + k * wo:k])
                still_open.sub_(hit)
        return dx, None


class MaxPool2d(nn.Module):
    """k×k max-pooling with stride k: ``torch.nn.MaxPool2d(k)`` values and gradients, faster
    on the CPU (~1.5x for forward + backward after conv1 of LeNet-5)."""

    def __init__(self, kernel_size: int = 2) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MaxPool.apply(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# --------------------------------------------------------------------------- the network

class BBNet(nn.Module):
    """A feed-forward network of quantized layers, pools and a flatten (spec §6).

    ``arch`` ("lenet5" / "vgg7") and ``width`` say which reference model it mirrors.
    """

    def __init__(self, layers: list, input_shape: tuple, config: BBConfig, arch: str,
                 width: float = 1.0) -> None:
        super().__init__()
        self.config, self.arch, self.width = config, arch, width
        self.input_shape = tuple(input_shape)
        self.layer_names = [n for n, _ in layers]
        for n, m in layers:
            self.add_module(n, m)
        shape = self.input_shape
        for _, m in layers:                       # shape inference records every layer's MACs
            if isinstance(m, QuantizedLayer):
                shape = m.out_shape(shape)
            elif isinstance(m, MaxPool2d):
                k = m.kernel_size
                shape = (shape[0], shape[1] // k, shape[2] // k)
            elif isinstance(m, nn.Flatten):
                shape = (int(np.prod(shape)),)
        self.output_shape = shape
        qlayers = self.quantized_layers()
        mac_max = max(m.macs for _, m in qlayers)
        for i, (_, m) in enumerate(qlayers):      # w_t = MAC_t / MAC_max (spec §4.4)
            if m.weight_quantizer is not None:
                m.weight_quantizer.mac_weight = m.macs / mac_max
            if m.act_quantizer is not None:
                consumer = qlayers[i + 1][1].macs if i + 1 < len(qlayers) else 0
                m.act_quantizer.mac_weight = consumer / mac_max

    # -- structure
    def layers(self) -> list:
        return [(n, getattr(self, n)) for n in self.layer_names]

    def quantized_layers(self) -> list:
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

    def layer_macs(self) -> list[tuple[str, int]]:
        return [(n, m.macs) for n, m in self.quantized_layers()]

    # -- noise and forward
    def sample_noise(self, generator: torch.Generator | None = None) -> dict:
        """Uniform noise for one training step, per quantizer (prune first, then chain).

        The layout of :meth:`bbits_ref.method.models.BBNet.sample_noise`, as tensors on the model's
        device drawn from ``generator``.
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
        """Logits for a batch (N, *input_shape); training mode samples the gates (spec §3.2)."""
        if not isinstance(x, torch.Tensor):         # a NumPy batch takes the model's dtype
            p = next(self.parameters())
            x = torch.as_tensor(np.asarray(x), dtype=p.dtype, device=p.device)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.arch} expects inputs of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}); got {tuple(x.shape)}")
        quantizers = self.quantizers()
        if self.training and quantizers:
            if noise is None:
                if generator is None:
                    raise ValueError("a training forward samples the gates: pass generator= (a "
                                     "torch.Generator) or noise= (from model.sample_noise(...)); "
                                     "for evaluation call model.eval() first")
                noise = self.sample_noise(generator)
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

    @torch.no_grad()
    def initialize(self, x, noise: dict | None = None,
                   generator: torch.Generator | None = None) -> None:
        """Create the lazy ranges with one no-grad training-mode pass (spec §2.1, §7.3)."""
        was_training = self.training
        self.train()
        try:
            self.forward(x, noise=noise, generator=generator)
        finally:
            self.train(was_training)

    @property
    def initialized(self) -> bool:
        return all(q.beta is not None for _, q in self.quantizers())

    # -- objective, groups, readouts
    def regularizer(self) -> torch.Tensor:
        """Σ_t R_t over every quantizer (spec §4.3); multiply by μ in the loss."""
        terms = [q.regularizer() for _, q in self.quantizers()]
        if not terms:
            return torch.zeros(())
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def parameter_groups(self) -> dict[str, list]:
        """The official three groups: weights (incl. biases and BN), gate logits, ranges (§7.3)."""
        if not self.initialized:
            raise RuntimeError("the quantizer ranges are created lazily: call "
                               "model.initialize(two_training_images, ...) before building "
                               "optimizers (spec §7.3)")
        gates, ranges = [], []
        for _, q in self.quantizers():
            gates += [p for p in (q.gate_logits, q.prune_logits) if p is not None]
            ranges.append(q.beta)
        special = {id(p) for p in gates + ranges}
        weights = [p for p in self.parameters() if id(p) not in special]
        return {"weights": weights, "gates": gates, "ranges": ranges}

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
        """Deterministic relative BOPs in percent (spec §5)."""
        return _bops.model_relative_bops(self)

    def extra_repr(self) -> str:
        return f"{self.arch}, width={self.width:g}, input {self.input_shape}"


def _config(config, preset: str) -> BBConfig:
    if config is None:
        return BBConfig(chain_init=preset)
    if not isinstance(config, BBConfig):
        raise TypeError(f"config must be a bbits_ref.method.layers.BBConfig; got {type(config).__name__}")
    return config


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in _NP:
        raise TypeError(f"dtype must be torch.float32 (default) or torch.float64; got {dtype!r}")
    return dtype


class LeNet5(BBNet):
    """LeNet-5 for 1×28×28 MNIST (spec §7.1), as :func:`bbits_ref.method.models.lenet5`.

    conv 1→32 5×5, ReLU, act q, pool → conv 32→64 5×5, ReLU, act q, pool → flatten 1024 →
    fc 1024→512, ReLU, act q → fc 512→10 (FP logits; weights quantized, never pruned).
    """

    def __init__(self, config: BBConfig | None = None, *, rng=0, dtype=torch.float32,
                 device=None) -> None:
        cfg = _config(config, "mnist")
        kw = dict(rng=as_generator(rng), config=cfg, dtype=_check_dtype(dtype), device=device)
        layers = [
            ("conv1", QConv2d(1, 32, 5, **kw)), ("pool1", MaxPool2d(2)),
            ("conv2", QConv2d(32, 64, 5, **kw)), ("pool2", MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", QLinear(1024, 512, **kw)),
            ("fc2", QLinear(512, 10, relu=False, act_quant=False, prune=False, **kw)),
        ]
        super().__init__(layers, (1, 28, 28), cfg, "lenet5")


class VGG7(BBNet):
    """VGG-7 for 3×32×32 CIFAR-10 with BN folding (spec §7.2, §6), as :func:`bbits_ref.method.models.vgg7`.

    ``width`` scales every hidden channel count and the fc1 width (``max(1, round(c·width))``).
    """

    def __init__(self, width: float = 1.0, config: BBConfig | None = None, *, rng=0,
                 dtype=torch.float32, device=None) -> None:
        if not (isinstance(width, (int, float)) and width > 0 and np.isfinite(width)):
            raise ValueError(f"width must be a positive number (1.0 = the paper's VGG-7); "
                             f"got {width!r}")
        cfg = _config(config, "cifar10")
        kw = dict(rng=as_generator(rng), config=cfg, dtype=_check_dtype(dtype), device=device)
        c1, c2, c3, hidden = (max(1, int(round(c * width))) for c in (128, 256, 512, 1024))
        layers = [
            ("conv1", QConv2dBN(3, c1, **kw)), ("conv2", QConv2dBN(c1, c1, **kw)),
            ("pool1", MaxPool2d(2)),
            ("conv3", QConv2dBN(c1, c2, **kw)), ("conv4", QConv2dBN(c2, c2, **kw)),
            ("pool2", MaxPool2d(2)),
            ("conv5", QConv2dBN(c2, c3, **kw)), ("conv6", QConv2dBN(c3, c3, **kw)),
            ("pool3", MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", QLinearBN(c3 * 16, hidden, **kw)),
            ("fc2", QLinear(hidden, 10, relu=False, act_quant=False, prune=False, **kw)),
        ]
        super().__init__(layers, (3, 32, 32), cfg, "vgg7", float(width))


# --------------------------------------------------------------------------- weight transfer

def state_dict_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer as a NumPy array, by the reference's names (copies, on CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: dict, strict: bool = True) -> None:
    """Load a NumPy state dict (e.g. ``bbits_ref`` model ``.state_dict()``) into a torch model.

    Lazy ranges that the state provides are created; values are cast to each parameter's dtype
    and device.  ``strict`` requires the same set of names.
    """
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=strict)


def _np_dtype(model: BBNet):
    return _NP[next(p.dtype for p in model.parameters() if p.is_floating_point())]


def to_reference(model: BBNet):
    """The same network as a :class:`bbits_ref.method.models.BBNet` (same config, dtype, weights, mode)."""
    if not isinstance(model, BBNet):
        raise TypeError(f"to_reference needs a torch_impl BBNet (LeNet5 or VGG7); got "
                        f"{type(model).__name__}")
    dtype = _np_dtype(model)
    if model.arch == "lenet5":
        ref = _ref_models.lenet5(model.config, dtype=dtype)
    else:
        ref = _ref_models.vgg7(model.width, model.config, dtype=dtype)
    ref.load_state_dict(state_dict_to_numpy(model))
    ref.train(model.training)
    return ref


def from_reference(ref_model, *, device=None) -> BBNet:
    """The same network as a torch :class:`BBNet` from a :class:`bbits_ref.method.models.BBNet`."""
    name = getattr(ref_model, "name", None)
    if not isinstance(ref_model, _ref_models.BBNet) or name is None:
        raise TypeError(f"from_reference needs a bbits_ref.method.models.BBNet (lenet5() or vgg7()); "
                        f"got {type(ref_model).__name__}")
    state = ref_model.state_dict()
    dtype = _TORCH[np.dtype(next(v.dtype for v in state.values() if v.dtype.kind == "f"))]
    if name == "lenet5":
        model = LeNet5(ref_model.config, dtype=dtype, device=device)
    else:
        match = re.fullmatch(r"vgg7\(width=([0-9.eE+-]+)\)", name)
        if match is None:
            raise ValueError(f"from_reference knows lenet5 and vgg7 models; got {name!r}")
        model = VGG7(float(match.group(1)), ref_model.config, dtype=dtype, device=device)
    load_numpy_state(model, state)
    model.train(ref_model.training)
    return model

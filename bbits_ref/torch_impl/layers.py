"""Quantized layers in PyTorch: the Bayesian Bits quantizer module and the conv/linear layers.

* :class:`BBQuantizer` — one quantizer (docs/method.md §1–§3): a range β created lazily from the
  first tensor it sees (§2.1), the chain logits (φ4, φ8, φ16, φ32) and, for weights with
  pruning, one φ2 per output channel.  Training samples one value per gate per forward from
  the noise it is given (§3.2); evaluation uses the test-time gates (§3.4).
* :class:`QConv2d`, :class:`QLinear` — a conv / linear layer described by a
  :class:`~bbits_ref.method.architectures.LayerSpec`, with a weight quantizer, optional ReLU and
  an activation quantizer after the ReLU (§6); biases are neither quantized nor gated.
* :class:`QConv2dBN`, :class:`QLinearBN` — the same with batch norm folded into the quantized
  weight and corrected by batch statistics from a second, full-precision pass (§6).
* :class:`MaxPool2d` — non-overlapping max-pooling, faster on the CPU than ``torch``'s.

Configuration is a :class:`bbits_ref.method.layers.BBConfig` (read as data).  Parameter and
buffer names are those of the reference, so state dicts map one to one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from bbits_ref.method.architectures import LayerSpec
from bbits_ref.method.layers import BBConfig
from bbits_ref.torch_impl import gates as gates_mod
from bbits_ref.torch_impl.prior import bop_regularizer, independent_regularizer
from bbits_ref.torch_impl.quantizer import (bb_quantize, bb_quantize_maxpool, gates_for_bits,
                                             max_pool_first)

__all__ = ["BBQuantizer", "QuantizedLayer", "QConv2d", "QLinear", "QConv2dBN", "QLinearBN",
           "MaxPool2d", "as_generator", "NUMPY_DTYPES"]

NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_NP = NUMPY_DTYPES


def as_generator(rng) -> np.random.Generator:
    """A NumPy Generator (returned as is) or one seeded with an int.

    Initial weights are drawn with NumPy, as the reference draws them, so that both
    implementations start from the same network.
    """
    ok = isinstance(rng, (np.random.Generator, int, np.integer)) and not isinstance(rng, bool)
    if not ok:
        raise TypeError(f"rng must be a numpy.random.Generator or an int seed; got {rng!r}. "
                        "Pass rng=np.random.default_rng(0) so initialisation is reproducible.")
    return np.random.default_rng(rng)


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
    """One Bayesian Bits quantizer (§1–§3): :class:`bbits_ref.method.layers.BBQuantizer` in torch.

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
        self.mac_weight = 1.0           # MAC_t / MAC_max, set by the model (§4.4)
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
        """β ← max(max(x), 0) and signed ← min(x) < 0, from the first tensor seen (§2.1)."""
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
        """(z2, z4, z8, z16, z32): samples in training, 0/1 in evaluation (§3)."""
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

    def forward(self, x: torch.Tensor, pool: int = 0) -> torch.Tensor:
        """x_q; with ``pool`` = k, the k×k max-pooling (stride k) of x_q instead, fused where
        it can be (no pruning gate, H and W multiples of k:
        :func:`~.quantizer.bb_quantize_maxpool`)."""
        if self.beta is None:
            self.initialize_range(x.detach())
        z2, *chain = self.gate_values()
        if pool and z2 is None and x.ndim == 4 and not (x.shape[2] % pool or x.shape[3] % pool):
            return bb_quantize_maxpool(x, self.beta, *chain, signed=self.signed,
                                       kernel_size=pool, clip=self.config.clip)
        x_q = bb_quantize(x, self.beta, z2, *chain, signed=self.signed, clip=self.config.clip)
        return _MaxPool.apply(x_q, pool) if pool else x_q

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
        """R_t of §4.3 (or the independent ablation), weighted by ``mac_weight``."""
        fn = (bop_regularizer if self.config.prior == "autoregressive"
              else independent_regularizer)
        return fn(self.prune_probs(), self.chain_probs(), self.mac_weight,
                  reg_type=self.config.reg_type)

    # -- deterministic view
    @torch.no_grad()
    def deterministic_chain(self) -> torch.Tensor:
        """Test-time (z4, z8, z16, z32) as 0/1, hard cut applied (§3.4–3.5)."""
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
    """PyTorch's default init U(−1/√fan_in, 1/√fan_in), drawn with NumPy in float64."""
    data = rng.uniform(-bound, bound, size=shape).astype(_NP[dtype])
    return nn.Parameter(torch.as_tensor(data, device=device))


class QuantizedLayer(nn.Module):
    """A conv/linear layer from its :class:`~bbits_ref.method.architectures.LayerSpec` (§6).

    Parameters ``weight`` (and ``bias`` if ``spec.bias``), drawn from ``rng`` in that order;
    ``bn`` if ``spec.batch_norm``; ``weight_quantizer`` (with pruning gates if ``spec.prune``)
    and ``act_quantizer`` (if ``spec.act_quant``), unless ``config.quantize`` is False.
    ``macs`` is set by the network from the architecture (§4.4).
    """

    macs: int = 0

    def __init__(self, spec: LayerSpec, *, rng: np.random.Generator, config: BBConfig,
                 dtype=torch.float32, device=None) -> None:
        super().__init__()
        self.spec, self.relu = spec, spec.relu
        fan_in = spec.in_size * (spec.kernel ** 2 if spec.kind == "conv" else 1)
        bound = 1.0 / np.sqrt(fan_in)
        self.weight = _uniform(rng, bound, spec.weight_shape(), dtype, device)
        if spec.bias:
            self.bias = _uniform(rng, bound, (spec.out_size,), dtype, device)
        else:
            self.register_parameter("bias", None)
        if spec.batch_norm:
            bn = nn.BatchNorm2d if spec.kind == "conv" else nn.BatchNorm1d
            self.bn = bn(spec.out_size, dtype=dtype, device=device)
        if not config.quantize:
            self.weight_quantizer = self.act_quantizer = None
            return
        kw = dict(dtype=dtype, device=device)
        self.weight_quantizer = BBQuantizer("weight", spec.out_size if spec.prune else None,
                                            config, config.weight_bits, **kw)
        self.act_quantizer = (BBQuantizer("activation", None, config, config.act_bits, **kw)
                              if spec.act_quant else None)

    def _op(self, x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
        raise NotImplementedError

    #: The quantized weight computed once for a whole evaluation (``models.cached_weights``);
    #: None: quantize at every forward.
    cached_weight: torch.Tensor | None = None
    #: k > 0 while the network's forward runs the k×k max-pooling that follows this layer
    #: inside it (fused with the activation quantizer, ``BBNet._run_layers``); 0: no pooling.
    fused_pool: int = 0

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.cached_weight is not None:
            return self.cached_weight
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def quantized_weight(self) -> torch.Tensor:
        """The weight this layer's op uses: Q(W) (the BN-folded layers: Q(W·scale/σ_run))."""
        return self.quantize_weight(self.weight)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """ReLU, then the activation quantizer (§6: quantize after the nonlinearity).

        An initialised unsigned quantizer starts with relu(x − 0), so a ReLU right before it
        changes no value and no gradient (its mask is part of the quantizer's): it is skipped.
        With ``fused_pool`` = k, the max-pooling after the layer follows, fused with the
        quantizer (:meth:`BBQuantizer.forward`).  The output is in the default memory layout
        (a channels-last input, ``models._cpu_channels_last``, stays within the layer).
        """
        q = self.act_quantizer
        if self.relu and (q is None or q.signed is not False):
            y = torch.relu(y)
        if q is None:
            y = _MaxPool.apply(y, self.fused_pool) if self.fused_pool else y
        else:
            y = q(y, pool=self.fused_pool)
        return y.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self._op(x, self.quantize_weight(self.weight), self.bias))

    def extra_repr(self) -> str:
        s = self.spec
        return f"{s.in_size}, {s.out_size}" + (f", kernel_size={s.kernel}" if s.kind == "conv"
                                               else "") + (", bn" if s.batch_norm else "")


class QConv2d(QuantizedLayer):
    """Conv2d (+bias) → ReLU → activation quantizer, with a BB weight quantizer (§6)."""

    def _op(self, x, w, bias=None):
        return F.conv2d(x, w, bias, self.spec.stride, self.spec.padding)


class QLinear(QuantizedLayer):
    """Linear (+bias) → [ReLU → activation quantizer], with a BB weight quantizer (§6)."""

    def _op(self, x, w, bias=None):
        return F.linear(x, w, bias)


class _FoldedBN:
    """Batch norm folded into the quantized weight, corrected by batch statistics (§6).

    With the batch norm's scale and shift (``bn.weight``, ``bn.bias``), in training
    y = op(x, Q(W·scale/σ_run))·(σ_run/σ_B) + (shift − scale·m_B/σ_B), with the batch mean m_B and
    σ_B (biased variance + eps) from a second, full-precision op with the raw W; the running
    statistics take the unbiased variance (momentum 0.1).  Evaluation:
    y = op(x, Q(W·scale/σ_run)) + (shift − scale·m_run/σ_run).  The folded shift is neither quantized
    nor gated.  ``bn`` is a ``torch.nn.BatchNorm`` used only for its parameters and buffers.
    """

    bn: nn.modules.batchnorm._BatchNorm
    _axes: tuple = ()

    def _per_channel(self, v):
        return v.reshape((1, -1) + (1,) * (len(self._axes) - 1))

    def quantized_weight(self) -> torch.Tensor:
        if self.cached_weight is not None:
            return self.cached_weight
        sigma_run = torch.sqrt(self.bn.running_var + self.bn.eps)  # a constant (buffer)
        scale = self.bn.weight / sigma_run                         # γ / σ_run per channel
        w_fold = self.weight * scale.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        return self.quantize_weight(w_fold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        sigma_run = torch.sqrt(bn.running_var + bn.eps)           # a constant (buffer)
        y = self._op(x, self.quantized_weight())
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


class QConv2dBN(_FoldedBN, QConv2d):
    """Conv2d (no bias) with folded BatchNorm2d → ReLU → activation quantizer (VGG-7 blocks)."""

    _axes = (0, 2, 3)


class QLinearBN(_FoldedBN, QLinear):
    """Linear (no bias) with folded BatchNorm1d → ReLU → activation quantizer (VGG-7 fc1)."""

    _axes = (0,)


class _MaxPool(torch.autograd.Function):
    """Non-overlapping k×k max-pooling (:func:`~.quantizer.max_pool_first`); the gradient goes
    to the first maximum of each window in row-major order (as the reference and
    ``torch.max_pool2d``).  The backward scatters the gradient to the winners' indices: one
    pass, no mask per tap."""

    @staticmethod
    def forward(ctx, x, k):
        out, index = max_pool_first(x, k)
        ctx.input_shape = x.shape
        ctx.save_for_backward(index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        index, = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        dx = torch.zeros(ctx.input_shape, dtype=g.dtype, device=g.device)
        dx.view(n, c, h * w).scatter_(2, index.view(n, c, -1), g.reshape(n, c, -1))
        return dx, None


class MaxPool2d(nn.Module):
    """k×k max-pooling with stride k: ``torch.nn.MaxPool2d(k)`` values and gradients, faster
    on the CPU (~2x for forward + backward after conv1 of LeNet-5, one thread)."""

    def __init__(self, kernel_size: int = 2) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.fused = False      # True while the layer before pools (``BBNet._run_layers``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.fused else _MaxPool.apply(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

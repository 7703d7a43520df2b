"""The Bayesian Bits quantizer as one fused ``torch.autograd.Function`` (spec §2.2–2.6).

The same function as :func:`bbits_ref.quantizer.bb_quantize`, with the official arithmetic
(spec §2.3a), written for speed::

    hi = (1 − ε)·β,   lo = −hi (signed) or 0 (unsigned),   ε = 1e−7
    x_c = hi − relu(hi − lo − relu(x − lo))                  the official two-ReLU clip
    s2 = (β − α)/3,  s4 = s2/5,  s8 = s4/17,  s16 = s8/257,  s32 = s16/65537   (chained)
    A2 = s2·R(x_c/s2),  e4 = s4·R((x_c − A2)/s4),  e8 = s8·R((x_c − A2 − e4)/s8), …
    x_q = z2 ⊙ (A2 + z4·(e4 + z8·(e8 + z16·(e16 + z32·e32))))

The scalars (hi, lo, the steps) are computed by the reference's own helpers
(:func:`bbits_ref.quantizer.clip_range`, :func:`~bbits_ref.quantizer.step_sizes`) in the
tensor's dtype, and every elementwise step is one IEEE operation in that dtype, in the
reference's order.  So in float64 the forward values equal the reference bit for bit, and in
float32 they equal the float32 reference.  (An FMA or a reordered residual would change the
value at exact rounding ties, spec §2.3a; none is used.)  A gate that is ``None`` or exactly 0
switches its residual and every higher one off: they are not computed, and the gradient of
that gate value is 0 (the official convention, spec §2.5).

The backward is not autograd through ~25 ops but the closed forms of spec §2.6, with
``inside = 1[lo < x < hi]`` taken from the two ReLU masks (relu'(0) = 0)::

    ∂L/∂x  = g·z2·inside
    ∂L/∂β  = Σ g·z2·(tail0 − x_c·inside) / β          tail0 = A2 + z4·(e4 + …)
    ∂L/∂z2 = Σ_{non-channel axes} g·tail0
    ∂L/∂z_b = z4···z_{b/2} · Σ g·z2·tail_b              tail_b = e_b + z_{2b}·(…)

Sums are float32 dot products per block of 65,536 values, the block totals added in float64
(as the reference does).  :func:`round_ste` is the straight-through rounding on its own.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import quantizer as _ref

__all__ = ["CLIP_EPS", "CLIP_MODES", "GATE_NAMES", "round_ste", "bb_quantize", "fixed_quantize"]

CLIP_EPS = _ref.CLIP_EPS
CLIP_MODES = _ref.CLIP_MODES
GATE_NAMES = ("z4", "z8", "z16", "z32")
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


# --------------------------------------------------------------------------- straight-through round

class _RoundSTE(torch.autograd.Function):
    """R(x) = round half to even (``torch.round``), with an identity gradient (spec §2.6)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties to even; the gradient passes through unchanged."""
    return _RoundSTE.apply(x)


# --------------------------------------------------------------------------- the fused function

def _tensor_scalar(value, np_type) -> float:
    """A 0-d tensor or number as a Python float that is exactly a value of ``np_type``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(()).item()
    return float(np_type(value))


# Elements per block on the CPU.  The ~25 elementwise steps run block by block, so the
# intermediates stay in the cache and no temporary of the tensor's size is allocated: on the
# 2.4M-value activation after conv1 of LeNet-5 this is several times faster than whole-tensor
# steps.  Other devices take the whole tensor as one block (one kernel per step).
_CPU_BLOCK = 1 << 16


def _forward_block(x, lo, hl, hi, steps, gates, depth, clip, inside, tails, slope, scratch):
    """One block of the forward: writes ``inside``, ``tails[0..depth]`` and ``slope`` (views).

    ``hl`` = hi − lo and ``hi`` are 0-d tensors (for scalar − tensor in place); ``scratch``
    holds two float buffers and one bool buffer of at least the block's size.
    """
    n = x.numel()
    x_c, residual, mask = scratch[0][:n], scratch[1][:n], scratch[2][:n]
    if clip == "official":                              # hi − relu(hi − lo − relu(x − lo))
        torch.sub(x, lo, out=x_c)
        torch.gt(x_c, 0, out=inside)                    # relu(x − lo) is active
        x_c.clamp_(min=0)
        torch.sub(hl, x_c, out=x_c)                     # (hi − lo) − relu(x − lo)
        torch.gt(x_c, 0, out=mask)                      # the outer relu is active: below hi
        inside.logical_and_(mask)
        x_c.clamp_(min=0)
        torch.sub(hi, x_c, out=x_c)
    else:
        torch.clamp(x, lo, float(hi), out=x_c)
        torch.gt(x, lo, out=inside)
        torch.lt(x, float(hi), out=mask)
        inside.logical_and_(mask)
    # parts first (A2, e4, …, written into the tails' buffers), then the gated sums
    torch.div(x_c, steps[0], out=tails[0]).round_().mul_(steps[0])            # A2
    if depth:
        torch.sub(x_c, tails[0], out=residual)
        for level in range(1, depth + 1):               # left to right: x_c − A2 − e4 − …
            if level > 1:
                residual.sub_(tails[level - 1])
            torch.div(residual, steps[level], out=tails[level]).round_().mul_(steps[level])
    for level in range(depth - 1, -1, -1):             # tail_k = part_k + z·tail_{k+1}
        z = gates[level]
        if z == 1:
            tails[level].add_(tails[level + 1])
        else:
            tails[level].add_(torch.mul(tails[level + 1], z, out=residual))
    if slope is not None:                               # tail0 − x_c·inside, for ∂/∂β
        torch.sub(tails[0], x_c.mul_(inside), out=slope)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b of two flat tensors: a dot product per CPU block, the block totals added in float64.

    As the reference sums.  On 2.4M float32 values the error is ~1e−9 of Σ|a·b| (one float32
    dot: ~1e−8), which keeps the β and gate gradients within ~1e−7 of the float32 reference.
    """
    size = a.numel()
    if a.device.type != "cpu" or size <= _CPU_BLOCK:
        return torch.dot(a, b)
    parts = [torch.dot(a[i:i + _CPU_BLOCK], b[i:i + _CPU_BLOCK])
             for i in range(0, size, _CPU_BLOCK)]
    return torch.stack(parts).to(torch.float64).sum().to(a.dtype)


class _BBQuantize(torch.autograd.Function):
    """x_q = z2 ⊙ (A2 + z4·(e4 + …)) with the closed-form gradients of spec §2.6."""

    @staticmethod
    def forward(ctx, x, beta, z2b, z4, z8, z16, z32, signed, clip, channel_dims):
        np_type = _NUMPY_DTYPES[x.dtype]
        beta_np = np_type(_tensor_scalar(beta, np_type))
        lo, hi = _ref.clip_range(beta_np, signed)          # the reference's scalar arithmetic
        steps = [float(s) for s in _ref.step_sizes(beta_np, signed)]
        gates = [None if z is None else _tensor_scalar(z, np_type) for z in (z4, z8, z16, z32)]
        depth = 0                                           # residuals computed: stop at a 0 gate
        while depth < 4 and gates[depth] is not None and gates[depth] != 0:
            depth += 1

        flat = x.detach().contiguous().reshape(-1)
        size = flat.numel()
        block = min(size, _CPU_BLOCK) if x.device.type == "cpu" else size
        inside = torch.empty(size, dtype=torch.bool, device=x.device)
        tails = [torch.empty_like(flat) for _ in range(depth + 1)]
        slope = torch.empty_like(flat) if ctx.needs_input_grad[1] else None
        scratch = (torch.empty(block, dtype=x.dtype, device=x.device),
                   torch.empty(block, dtype=x.dtype, device=x.device),
                   torch.empty(block, dtype=torch.bool, device=x.device))
        hl_t = torch.tensor(float(hi - lo), dtype=x.dtype, device=x.device)
        hi_t = torch.tensor(float(hi), dtype=x.dtype, device=x.device)
        for start in range(0, size, max(block, 1)):
            s = slice(start, min(start + block, size))
            _forward_block(flat[s], float(lo), hl_t, hi_t, steps, gates, depth, clip,
                           inside[s], [t[s] for t in tails], None if slope is None else slope[s],
                           scratch)
        del scratch
        tails = [t.reshape(x.shape) for t in tails]
        x_q = tails[0] if z2b is None else tails[0] * z2b
        ctx.gates, ctx.channel_dims = gates, channel_dims
        ctx.save_for_backward(inside.reshape(x.shape), slope, z2b, beta, *tails)
        return x_q

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        inside, range_slope, z2b, beta, *tails = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = g.contiguous()
        gz = g if z2b is None else g * z2b                  # g·z2
        flat = gz.reshape(-1)
        grad_x = grad_beta = grad_z2 = None
        if need[0]:
            grad_x = gz * inside                            # as np.multiply(g, inside)
        if need[1]:
            total = _dot(flat, range_slope.reshape(-1))
            grad_beta = (total / beta.detach()).to(beta.dtype).expand(beta.shape).clone()
        if need[2]:
            grad_z2 = (g * tails[0]).sum(dim=ctx.channel_dims, keepdim=True)
        grad_gates = []
        lower = 1.0                                         # z4···z_{b/2}
        for level in range(1, 5):
            if not need[2 + level]:
                grad_gates.append(None)
            elif level >= len(tails):                       # not computed: a gate ≤ this one is 0
                grad_gates.append(torch.zeros((), dtype=g.dtype, device=g.device))
            else:
                grad_gates.append(lower * _dot(flat, tails[level].reshape(-1)))
            z = ctx.gates[level - 1]
            lower *= 0.0 if z is None else z
        return (grad_x, grad_beta, grad_z2, *grad_gates, None, None, None)


# --------------------------------------------------------------------------- validation

def _check_gate_values(name: str, value: torch.Tensor) -> None:
    ok = (value >= 0) & (value <= 1)                       # also catches NaN
    if not bool(ok.all()):
        bad = value.detach()[~ok].reshape(-1)[0].item()
        raise ValueError(f"gate {name} must lie in [0, 1] (a hard-concrete sample, or 0/1 in eval "
                         f"mode); got {bad}")


def _as_gate(z, name: str, like: torch.Tensor):
    """None, or a 0-d tensor in [0, 1] on x's device (a number becomes a constant tensor)."""
    if z is None:
        return None
    if not isinstance(z, torch.Tensor):
        z = torch.as_tensor(np.asarray(z, dtype=np.float64), dtype=like.dtype, device=like.device)
    if z.numel() != 1:
        raise ValueError(f"gate {name} must be a scalar (one gate per tensor, spec §1); got shape "
                         f"{tuple(z.shape)}")
    _check_gate_values(name, z)
    return z.reshape(())


def _prepare(x, beta, z2, gates, signed, clip, channel_axis):
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be 'official' (the two-ReLU clip of the official code, "
                         f"bit-exact) or 'numpy' (clamp); got {clip!r}")
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be True (weights, range [-beta, beta]) or False "
                        f"(post-ReLU activations, range [0, beta]); got {signed!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}. Convert with "
                        "torch.as_tensor(x, dtype=torch.float32)")
    if x.dtype not in _NUMPY_DTYPES:
        raise TypeError(f"bb_quantize needs a float32 or float64 tensor; got {x.dtype}. "
                        "Use x.float() (or x.double() for exact comparisons)")
    if not isinstance(beta, torch.Tensor):
        beta = torch.as_tensor(np.asarray(beta, dtype=np.float64), dtype=x.dtype,
                               device=x.device)
    if beta.numel() != 1:
        raise ValueError(f"beta (the learned clipping range) must be a scalar; got shape "
                         f"{tuple(beta.shape)}")
    b = beta.detach().reshape(()).item()
    if not (np.isfinite(b) and b > 0):
        raise ValueError(f"beta (the learned clipping range) must be finite and > 0; got {b}. "
                         "Initialise it lazily from the first tensor the quantizer sees "
                         "(beta = max(max(x), 0)).")
    gates = [_as_gate(z, name, x) for name, z in zip(GATE_NAMES, gates)]
    channel_dims = None
    if z2 is not None:
        if not isinstance(z2, torch.Tensor):
            z2 = torch.as_tensor(np.asarray(z2, dtype=np.float64), device=x.device)
        _check_gate_values("z2", z2)
        z2 = z2.to(x.dtype)
        if z2.ndim == 0:
            channel_dims = list(range(x.ndim))
            z2 = z2.reshape((1,) * x.ndim)
        else:
            if x.ndim == 0 or not -x.ndim <= channel_axis < x.ndim:
                raise ValueError(f"channel_axis={channel_axis} is not an axis of x with shape "
                                 f"{tuple(x.shape)}")
            axis = channel_axis % x.ndim
            n_channels = x.shape[axis]
            if tuple(z2.shape) != (n_channels,):
                raise ValueError(
                    f"z2 (the pruning gates) must have one value per channel, shape "
                    f"({n_channels},) for x of shape {tuple(x.shape)} with channel_axis="
                    f"{channel_axis}; got shape {tuple(z2.shape)}")
            shape = [1] * x.ndim
            shape[axis] = n_channels
            z2 = z2.reshape(shape)
            channel_dims = [d for d in range(x.ndim) if d != axis]
    return x, beta, z2, gates, channel_dims


def bb_quantize(x, beta, z2=None, z4=None, z8=None, z16=None, z32=None, *, signed: bool,
                clip: str = "official", channel_axis: int = 0) -> torch.Tensor:
    """Bayesian Bits quantization (spec §2.2–2.6), one fused autograd Function.

    Arguments as :func:`bbits_ref.quantizer.bb_quantize`: ``x`` any shape (float32/float64,
    any device); ``beta`` scalar tensor > 0; ``z2`` ``(C,)`` pruning gates for
    ``C = x.shape[channel_axis]`` (None: no pruning); ``z4…z32`` scalar gates in [0, 1] (None
    or exactly 0: off, with every gate above it); ``signed`` True for weights ([−β, β]),
    False for post-ReLU activations ([0, β]); ``clip`` "official" (default) or "numpy".
    Returns x_q with x's shape, dtype and device.  Gradients reach x, β and every gate that
    requires one.
    """
    x, beta, z2b, gates, channel_dims = _prepare(x, beta, z2, (z4, z8, z16, z32), signed, clip,
                                                 channel_axis)
    return _BBQuantize.apply(x, beta, z2b, *gates, bool(signed), clip, channel_dims)


def fixed_quantize(x, beta, bits: int, *, signed: bool, clip: str = "official") -> torch.Tensor:
    """A fixed ``bits``-bit quantizer: :func:`bb_quantize` with constant 0/1 gates (spec §2.7)."""
    return bb_quantize(x, beta, None, *_ref.gates_for_bits(bits), signed=signed, clip=clip)

"""The Bayesian Bits quantizer as one fused ``torch.autograd.Function`` (docs/method.md §2.2–2.6).

The same function as :func:`bbits_ref.method.quantizer.bb_quantize`, with the official arithmetic
(§2.3a), written for speed::

    hi = (1 − ε)·β,   lo = −hi (signed) or 0 (unsigned),   ε = 1e−7
    x_c = hi − relu(hi − lo − relu(x − lo))                  the official two-ReLU clip
    s2 = (β − α)/3,  s4 = s2/5,  s8 = s4/17,  s16 = s8/257,  s32 = s16/65537   (chained)
    A2 = s2·R(x_c/s2),  e4 = s4·R((x_c − A2)/s4),  e8 = s8·R((x_c − A2 − e4)/s8), …
    x_q = z2 ⊙ (A2 + z4·(e4 + z8·(e8 + z16·(e16 + z32·e32))))

The scalars (hi, lo, the steps) are computed here (:func:`clip_range`, :func:`step_sizes`) as
0-d tensors of the input's dtype, and every elementwise step is one IEEE operation in that
dtype, in the reference's order; only the constants ε and the divisors come from
:mod:`bbits_ref.method.constants`.  So in float64 the forward values equal the reference bit
for bit, and in float32 they equal the float32 reference.  (An FMA or a reordered residual
would change the value at exact rounding ties, §2.3a; none is used.)  A gate that is ``None`` or exactly 0
switches its residual and every higher one off: they are not computed, and the gradient of
that gate value is 0 (the official convention, §2.5).

The backward is not autograd through ~25 ops but the closed forms of §2.6, with
``inside = 1[lo < x < hi]`` taken from the two ReLU masks (relu'(0) = 0); it recomputes the
residuals block by block from x instead of storing them::

    ∂L/∂x  = g·z2·inside
    ∂L/∂β  = Σ g·z2·(tail0 − x_c·inside) / β          tail0 = A2 + z4·(e4 + …)
    ∂L/∂z2 = Σ_{non-channel axes} g·tail0
    ∂L/∂z_b = z4···z_{b/2} · Σ g·z2·tail_b              tail_b = e_b + z_{2b}·(…)

Sums are float32 dot products per block of 65,536 values, the block totals added in float64
(as the reference does): within ~1e−7 of the float32 reference's sums.  :func:`round_ste` is
the straight-through rounding on its own.

On the CPU with numba installed, the elementwise steps of the forward and of each backward block
run as compiled kernels (:mod:`.kernels`: one pass instead of ~25 torch operations), with the
same operations in the same order, so every value and every sum is the same bit for bit; on
other devices, without numba or with ``BBITS_REF_KERNELS=0`` the torch operations run.

:func:`bb_quantize_maxpool` is the quantizer followed by k×k max-pooling in one function: only
each window's winner gets a gradient, so its backward runs on the winners alone.  Both work on
a tensor in its own memory layout (default or channels-last) and keep it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from bbits_ref.method.constants import BIT_WIDTHS, CLIP_EPS, CLIP_MODES, STEP_DIVISORS
from bbits_ref.torch_impl import kernels

__all__ = ["CLIP_EPS", "CLIP_MODES", "GATE_NAMES", "round_ste", "clip_range", "step_sizes",
           "gates_for_bits", "bb_quantize", "bb_quantize_maxpool", "fixed_quantize"]

GATE_NAMES = ("z4", "z8", "z16", "z32")
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


# --------------------------------------------------------------------------- straight-through round

class _RoundSTE(torch.autograd.Function):
    """R(x) = round half to even (``torch.round``), with an identity gradient (§2.6)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties to even; the gradient passes through unchanged."""
    return _RoundSTE.apply(x)


# --------------------------------------------------------------------------- range and grid

def _scalar_beta(beta, dtype: torch.dtype) -> torch.Tensor:
    """β as a 0-d CPU tensor of ``dtype`` (a tensor's value, or a number rounded to dtype)."""
    if isinstance(beta, torch.Tensor):
        return beta.detach().reshape(()).to(device="cpu", dtype=dtype)
    return torch.tensor(float(beta), dtype=dtype)


def clip_range(beta, signed: bool, dtype: torch.dtype = torch.float64) -> tuple:
    """(lo, hi) as 0-d tensors: hi = (1 − ε)·β, lo = −hi (signed) or 0 (§2.2).

    In β's dtype if β is a tensor (else ``dtype``), the two factors rounded to it first.
    """
    beta = _scalar_beta(beta, beta.dtype if isinstance(beta, torch.Tensor) else dtype)
    hi = torch.tensor(1 - CLIP_EPS, dtype=beta.dtype) * beta
    return (-hi if signed else torch.zeros((), dtype=beta.dtype)), hi


def step_sizes(beta, signed: bool, dtype: torch.dtype = torch.float64) -> tuple:
    """(s2, s4, s8, s16, s32) as 0-d tensors: s2 = (β − α)/3, then s_{2b} = s_b/(2^b + 1).

    α = −β (signed) or 0; chained divisions, as the official code (§2.3, §2.3a).
    """
    beta = _scalar_beta(beta, beta.dtype if isinstance(beta, torch.Tensor) else dtype)
    alpha = -beta if signed else torch.zeros((), dtype=beta.dtype)
    steps = [(beta - alpha) / torch.tensor(3.0, dtype=beta.dtype)]
    for divisor in STEP_DIVISORS:
        steps.append(steps[-1] / torch.tensor(float(divisor), dtype=beta.dtype))
    return tuple(steps)


def gates_for_bits(bits: int) -> tuple:
    """The 0/1 gates (z4, z8, z16, z32) that select a fixed width ``bits`` (§2.7)."""
    if isinstance(bits, (bool, np.bool_)) or bits not in BIT_WIDTHS:
        raise ValueError(f"bits must be one of {BIT_WIDTHS} (the Bayesian Bits bit widths); "
                         f"got {bits!r}")
    on = BIT_WIDTHS.index(bits)                     # how many chain gates are on
    return tuple(1.0 if level <= on else 0.0 for level in range(1, len(BIT_WIDTHS)))


# --------------------------------------------------------------------------- the fused function

def _tensor_scalar(value, np_type) -> float:
    """A 0-d tensor or number as a Python float that is exactly a value of ``np_type``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(()).item()
    return float(np_type(value))


# Elements per block on the CPU.  Forward and backward run their ~25 elementwise steps block by
# block, so the intermediates stay in the cache, and nothing of the tensor's size is stored but
# x (kept by the layer before anyway): the backward recomputes the residuals, as the official
# code's gradient checkpointing of the quantizer does (§7.5).  On the 2.4M-value
# activation after conv1 of LeNet-5 this is as fast as storing every residual, with ~40 MB less
# memory.  Other devices take the whole tensor as one block.
_CPU_BLOCK = 1 << 16


class _Plan:
    """Everything a block needs: the scalars in x's dtype, the gates, the scratch buffers."""

    def __init__(self, x, beta, gates, signed, clip):
        np_type = _NUMPY_DTYPES[x.dtype]
        # the scalars as clip_range and step_sizes compute them, in NumPy scalars of x's dtype
        # (the same IEEE operations, without a dozen 0-d tensor operations per quantizer)
        b = np_type(beta.detach().reshape(()).item() if isinstance(beta, torch.Tensor)
                    else float(beta))                       # β rounded to x's dtype
        hi = np_type(1 - CLIP_EPS) * b
        lo = -hi if signed else np_type(0.0)
        steps = [(b - (-b if signed else np_type(0.0))) / np_type(3.0)]
        for divisor in STEP_DIVISORS:
            steps.append(steps[-1] / np_type(divisor))
        self.lo, self.hl, self.clip = float(lo), float(hi - lo), clip
        self.gates = [None if z is None else _tensor_scalar(z, np_type) for z in gates]
        self.depth = 0                                      # residuals computed: stop at a 0 gate
        while (self.depth < 4 and self.gates[self.depth] is not None
               and self.gates[self.depth] != 0):
            self.depth += 1
        self.size = x.numel()
        self.block = max(1, min(self.size, _CPU_BLOCK) if x.device.type == "cpu" else self.size)
        self.like = dict(dtype=x.dtype, device=x.device)
        self.scratch_itemsize = x.element_size()
        self.scratch = None                         # buffers of the block size, made on use
        self.kernel = x.device.type == "cpu" and kernels.enabled()
        if self.kernel:         # the compiled kernels (CPU, numba): the scalars as NumPy values
            official = clip == "official"
            self.forward_kernel = kernels.forward_kernel(self.depth, official)
            self.backward_kernel = kernels.backward_kernel(self.depth, official)
            self.k_scalars = (lo, hi - lo, hi, np_type(0.0))
            self.k_one = np_type(1.0)
            self.k_steps = tuple(np_type(step) for step in steps)
            self.k_gates = tuple(np_type(0.0 if z is None else z) for z in self.gates)
            return

        def const(value):       # 0-d tensors: ~2 µs faster per op than Python scalars, same values
            return torch.as_tensor(value, **self.like)
        self.c_lo, self.c_hl, self.c_hi = const(lo), const(hi - lo), const(hi)
        self.c_zero = const(0.0)
        self.c_steps = [const(step) for step in steps]
        self.c_gates = [None if z is None else const(float(z)) for z in self.gates]

    def release(self) -> None:
        """Free the scratch buffers (between the forward and the backward)."""
        self.scratch = None

    def resize(self, size: int, block: int | None = None) -> None:
        """Work on ``size`` values from now on, in blocks of ``block`` (default: the device's
        block), with fresh scratch buffers."""
        self.size = size
        if block is None:
            block = min(size, _CPU_BLOCK) if self.like["device"].type == "cpu" else size
        self.block = max(1, block)
        self.scratch = None

    def blocks(self):
        return (slice(i, min(i + self.block, self.size)) for i in range(0, self.size, self.block))

    def quantize(self, x, out) -> None:
        """out = the ungated x_q = A2 + z4·(e4 + …) of the 1-d tensor x (a whole tensor): one
        kernel pass on the CPU, else :meth:`run` block by block."""
        if self.kernel:
            self.forward_kernel(x.numpy(), out.numpy(), *self.k_scalars, self.k_steps,
                                self.k_gates)
            return
        for s in self.blocks():
            self.run(x[s], out[s])
        self.release()

    def run_kernel(self, x, gz, grad_x=None, tail0=None):
        """The backward's values for one block by the kernel: writes ∂L/∂x = gz·inside into
        ``grad_x`` and the ungated x_q into ``tail0`` (if given); returns (beta_term, tails)
        with beta_term = tail0 − x_c·inside and tails[k − 1] = tail_k, k = 1…depth (scratch)."""
        n = x.numel()
        if self.scratch is None:
            # each row of tails starts on a 64-byte boundary, as a buffer of its own does: the
            # float32 dot products of the BLAS may depend on the alignment of their operands
            row = -(-self.block * self.scratch_itemsize // 64) * 64 // self.scratch_itemsize
            self.scratch = (torch.empty(self.block, **self.like),            # beta_term
                            torch.empty(self.block, **self.like),            # tail0
                            torch.empty((self.depth, row), **self.like))     # tails 1…depth
        beta_term, t0, tails = (f[..., :n] for f in self.scratch)
        if tail0 is None:
            tail0 = t0
        self.backward_kernel(x.numpy(), gz.numpy(),
                             (beta_term if grad_x is None else grad_x).numpy(),
                             beta_term.numpy(), tail0.numpy(), tails.numpy(),
                             *self.k_scalars, self.k_one, self.k_steps, self.k_gates,
                             grad_x is not None)
        return beta_term, tails

    def run(self, x, tail0=None, masks: bool = False):
        """Quantize one block ``x``: returns (x_c, inside, tails) as scratch views.

        tails[k] = part_k + z_{k+1}·tails[k+1] (tails[0] = A2 + z4·(e4 + …) is the ungated
        x_q), written into ``tail0`` if given; ``inside`` = 1[lo < x < hi] as 0.0/1.0 (float
        masks: comparisons into bool buffers are several times slower on the CPU), or None
        without ``masks``.  Exactly the reference's operations, in its order.
        """
        if self.scratch is None:
            self.scratch = [torch.empty(self.block, **self.like) for _ in range(self.depth + 5)]
        n = x.numel()
        x_c, residual, inside, mask, *rest = (f[:n] for f in self.scratch)
        tails = [rest[0] if tail0 is None else tail0] + rest[1:]
        zero = self.c_zero
        if self.clip == "official":                     # hi − relu(hi − lo − relu(x − lo))
            if self.lo != 0:
                x = torch.sub(x, self.c_lo, out=x_c)
            # (unsigned: x − 0 is x exactly, one step fewer)
            # a = min(relu(x − lo), hi − lo), then b = (hi − lo) − a is exactly
            # relu((hi − lo) − relu(x − lo)): the subtraction is negative exactly when
            # relu(x − lo) > hi − lo, and there the cap makes it +0, as the relu does.
            torch.clamp(x, 0.0, self.hl, out=x_c)      # Python bounds: the faster kernel
            b = torch.sub(self.c_hl, x_c, out=mask if masks else x_c)
            if masks:                                   # both relus active: 0 < a and 0 < b
                torch.minimum(x_c, b, out=inside).gt_(zero)
            torch.sub(self.c_hi, b, out=x_c)
        else:
            torch.clamp(x, self.c_lo, self.c_hi, out=x_c)
            if masks:
                torch.gt(x, self.c_lo, out=inside)
                inside.mul_(torch.lt(x, self.c_hi, out=mask))
        # the parts A2, e4, … (in the tails' buffers), then the gated sums, innermost first
        steps = self.c_steps
        torch.div(x_c, steps[0], out=tails[0]).round_().mul_(steps[0])
        if self.depth:
            torch.sub(x_c, tails[0], out=residual)
            for level in range(1, self.depth + 1):      # left to right: x_c − A2 − e4 − …
                if level > 1:
                    residual.sub_(tails[level - 1])
                torch.div(residual, steps[level], out=tails[level]).round_().mul_(steps[level])
        for level in range(self.depth - 1, -1, -1):
            if self.gates[level] == 1:
                tails[level].add_(tails[level + 1])
            else:
                tails[level].add_(torch.mul(tails[level + 1], self.c_gates[level], out=residual))
        return x_c, (inside if masks else None), tails


def _sum(parts: list, like: torch.Tensor) -> torch.Tensor:
    """Block totals added in float64 (as the reference sums), returned in ``like``'s dtype."""
    return torch.stack(parts).to(torch.float64).sum().to(like.dtype)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format x is dense in: channels-last for a 4-d tensor stored that way (as the
    network keeps its activations on the CPU, :meth:`~.models.BBNet.forward`), else the
    default; the quantizer works on the values in that memory order and keeps the format."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _memory(x: torch.Tensor) -> torch.Tensor:
    """A 1-d view of a tensor dense in :func:`_layout` ``(x)``, in memory order."""
    if _layout(x) is torch.channels_last:
        return x.permute(0, 2, 3, 1).view(-1)
    return x.view(-1)


class _BBQuantize(torch.autograd.Function):
    """x_q = z2 ⊙ (A2 + z4·(e4 + …)) with the closed-form gradients of §2.6.

    The forward stores nothing but x (which the layer before keeps anyway); the backward
    recomputes each block's clip mask and residuals and reduces them at once.  x_q and ∂L/∂x
    keep x's memory format (:func:`_layout`).
    """

    @staticmethod
    def forward(ctx, x, beta, z2b, z4, z8, z16, z32, signed, clip, channel_dims):
        x = x.detach()
        x = x.contiguous(memory_format=_layout(x))
        plan = _Plan(x, beta, (z4, z8, z16, z32), signed, clip)
        flat = _memory(x)
        x_q = torch.empty_like(x)                           # same memory format as x
        plan.quantize(flat, _memory(x_q))
        if z2b is not None:
            x_q = x_q * z2b
        ctx.plan, ctx.channel_dims = plan, channel_dims
        ctx.save_for_backward(x, z2b, beta)
        return x_q

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, z2b, beta = ctx.saved_tensors
        plan, need = ctx.plan, ctx.needs_input_grad
        layout = _layout(x)
        g = g.contiguous(memory_format=layout)
        gz = g if z2b is None else (g * z2b).contiguous(memory_format=layout)   # g·z2
        grad_x = torch.empty_like(x) if need[0] else None  # x's memory format
        tail0 = torch.empty_like(x) if need[2] else None
        grad_beta, grad_gates = _closed_form_grads(
            plan, _memory(x), _memory(gz), beta, None if grad_x is None else _memory(grad_x),
            need[1], None if tail0 is None else _memory(tail0), need[3:7])
        grad_z2 = None
        if need[2]:
            grad_z2 = (g * tail0).sum(dim=ctx.channel_dims, keepdim=True)
        return (grad_x, grad_beta, grad_z2, *grad_gates, None, None, None)


def _closed_form_grads(plan, x_flat, gz_flat, beta, grad_x, want_beta, tail0, want_gates):
    """The closed forms of §2.6 on the flat values ``x_flat`` with incoming ``gz_flat`` = g·z2.

    Writes ∂L/∂x into ``grad_x`` and the ungated x_q into ``tail0`` (flat, or None: not
    wanted); returns (∂L/∂β or None, [∂L/∂z4, …, ∂L/∂z32] with None where not wanted),
    recomputing the residuals block by block.
    """
    plan.resize(x_flat.numel())
    g = gz_flat
    levels = [lv for lv in range(1, 5) if want_gates[lv - 1] and lv <= plan.depth]
    beta_parts, gate_parts = [], {lv: [] for lv in levels}
    for s in plan.blocks():
        gz_s = gz_flat[s]
        if plan.kernel:                                     # the values in one compiled pass
            beta_term, tails = plan.run_kernel(x_flat[s], gz_s,
                                               None if grad_x is None else grad_x[s],
                                               None if tail0 is None else tail0[s])
            if want_beta:
                beta_parts.append(torch.dot(gz_s, beta_term))
            for lv in levels:
                gate_parts[lv].append(torch.dot(gz_s, tails[lv - 1]))
            continue
        x_c, inside, tails = plan.run(x_flat[s], None if tail0 is None else tail0[s],
                                      masks=True)
        if grad_x is not None:                              # g·z2·1[lo < x < hi]
            torch.mul(gz_s, inside, out=grad_x[s])
        if want_beta:                                       # Σ g·z2·(tail0 − x_c·inside)
            x_c.mul_(inside)
            beta_parts.append(torch.dot(gz_s, torch.sub(tails[0], x_c, out=x_c)))
        for lv in levels:                                   # Σ g·z2·tail_b
            gate_parts[lv].append(torch.dot(gz_s, tails[lv]))
    plan.release()
    grad_beta = None
    if want_beta:
        grad_beta = (_sum(beta_parts, g) / beta.detach()).to(beta.dtype)
        grad_beta = grad_beta.expand(beta.shape).clone()
    grad_gates = []
    lower = 1.0                                             # z4···z_{b/2}
    for lv in range(1, 5):
        if not want_gates[lv - 1]:
            grad_gates.append(None)
        elif lv > plan.depth:                               # not computed: a gate ≤ this one is 0
            grad_gates.append(torch.zeros((), dtype=g.dtype, device=g.device))
        else:
            grad_gates.append(lower * _sum(gate_parts[lv], g))
        z = plan.gates[lv - 1]
        lower *= 0.0 if z is None else z
    return grad_beta, grad_gates


def max_pool_first(x: torch.Tensor, k: int) -> tuple:
    """k×k max-pooling with stride k of ``x`` (N, C, H, W), and each window's winner: the index
    in the H×W plane of its FIRST maximum in row-major order (a later value wins only if
    strictly greater), as ``torch.max_pool2d(..., return_indices=True)`` returns them.  For
    finite inputs (quantized activations are).

    Channels-last tensors on the CPU go to ``torch.max_pool2d`` (vectorised over the channels);
    others are pooled from the k² strided taps, faster there than ``torch.max_pool2d``: the
    winner's offset in the window comes from arithmetic (``tap − max > 0``; comparisons of
    strided taps into bool buffers are several times slower on the CPU).
    """
    if _layout(x) is torch.channels_last or x.device.type != "cpu":
        return torch.nn.functional.max_pool2d(x, k, return_indices=True)
    h, w = x.shape[2:]
    ho, wo = h // k, w // k
    offsets = [i * w + j for i in range(k) for j in range(k)]
    taps = [x[:, :, i:i + k * ho:k, j:j + k * wo:k] for i in range(k) for j in range(k)]
    out = taps[0].clone(memory_format=torch.contiguous_format)
    code = torch.zeros_like(out)                # offset of the winner (0: the first tap)
    better = torch.empty_like(out)
    for tap, offset in zip(taps[1:], offsets[1:]):
        # 1[tap > max so far]·offset; offsets increase with the tap, so the running maximum
        # of these is the offset of the last tap that beat every earlier one
        torch.sub(tap, out, out=better).gt_(0).mul_(offset)
        torch.maximum(code, better, out=code)
        torch.maximum(out, tap, out=out)
    corner = (torch.arange(ho, device=x.device) * (k * w)).view(-1, 1) \
        + torch.arange(wo, device=x.device) * k           # each window's top-left index
    return out, code.to(torch.int64).add_(corner)


def _winner_offsets(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The memory offsets in ``x`` (N, C, H, W) of the pooling winners, 1-d in the memory order
    of ``index`` (their offsets in the H×W plane, as ``max_pool2d`` returns them; same memory
    format as x)."""
    n, c, h, w = x.shape
    arange = dict(device=x.device, dtype=torch.int64)
    if _layout(x) is torch.channels_last:                   # offset = n·HWC + i·C + c
        base = (torch.arange(n, **arange) * (h * w * c)).view(n, 1, 1, 1) \
            + torch.arange(c, **arange).view(1, 1, 1, c)
        return torch.mul(index.permute(0, 2, 3, 1), c).add_(base).view(-1)
    base = (torch.arange(n * c, **arange) * (h * w)).view(n, c, 1, 1)   # (n·C + c)·HW + i
    return torch.add(index, base).view(-1)


class _BBQuantizeMaxPool(torch.autograd.Function):
    """maxpool_k(x_q) for x_q = A2 + z4·(e4 + …) (no z2): the quantizer and the pooling after it.

    Forward: x_q block by block, then :func:`max_pool_first`: the maxima and the index of each
    window's FIRST maximum in row-major order, as :class:`~.layers.MaxPool2d`.  Backward: only
    the winners get a gradient, so the closed forms of §2.6 run on the winners' inputs alone
    (1/k² of the values) and ∂L/∂x is scattered to them.  Same values and ∂L/∂x as the
    quantizer followed by the pooling; ∂L/∂β and ∂L/∂z_b are the same sums over fewer (all
    the non-zero) terms.  On the CPU, channels-last tensors pool several times faster; with the
    kernels (:mod:`.kernels`) they are quantized and pooled in one pass that never stores x_q,
    and the backward keeps the winners' inputs (1/k² of x) instead of x.
    """

    @staticmethod
    def forward(ctx, x, beta, z4, z8, z16, z32, signed, clip, k):
        x = x.detach()
        layout = _layout(x)
        x = x.contiguous(memory_format=layout)
        plan = _Plan(x, beta, (z4, z8, z16, z32), signed, clip)
        ctx.plan, ctx.layout, ctx.kernel_size = plan, layout, k
        if plan.kernel and layout is torch.channels_last:
            # one compiled pass: x_q is pooled as it is computed and never stored; the
            # winners' inputs are kept for the backward instead of x.  (¹) int32 offsets, all
            # lanes 32 bits wide: the compiler vectorises twice as wide as with int64
            n, c, h, w = x.shape
            pooled = dict(memory_format=torch.channels_last, device=x.device)
            out = torch.empty((n, c, h // k, w // k), dtype=x.dtype, **pooled)
            index = torch.empty((n, c, h // k, w // k), dtype=torch.int32, **pooled)   # (¹)
            winners = torch.empty_like(out)
            kernel = kernels.pool_forward_kernel(plan.depth, clip == "official", k)
            kernel(_nhwc(x), _nhwc(out), _nhwc(index), _nhwc(winners), *plan.k_scalars,
                   plan.k_steps, plan.k_gates)
            ctx.x_shape = x.shape
            ctx.save_for_backward(winners, beta, index)
            return out
        x_q = torch.empty_like(x)
        plan.quantize(_memory(x), _memory(x_q))
        out, index = max_pool_first(x_q, k)
        del x_q
        ctx.x_shape = None
        ctx.save_for_backward(x, beta, index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        saved, beta, index = ctx.saved_tensors
        plan, need, layout = ctx.plan, ctx.needs_input_grad, ctx.layout
        k = ctx.kernel_size
        if ctx.x_shape is None:                     # x saved: gather the winners' inputs
            x = saved
            winners = _memory(x).index_select(0, _winner_offsets(x, index))   # index's order
        else:
            winners = _memory(saved)
        g = g.contiguous(memory_format=layout)
        grad_w = torch.empty_like(g) if need[0] else None
        grad_beta, grad_gates = _closed_form_grads(
            plan, winners, _memory(g), beta, None if grad_w is None else _memory(grad_w),
            need[1], None, need[2:6])
        grad_x = None
        if grad_w is not None and ctx.x_shape is None:  # to the winners, zero elsewhere
            grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
                grad_w, x, [k, k], [k, k], [0, 0], [1, 1], False, index)
        elif grad_w is not None:        # the same, in one compiled pass without a zero fill
            grad_x = torch.empty(ctx.x_shape, dtype=g.dtype, device=g.device,
                                 memory_format=torch.channels_last)
            kernels.pool_scatter_kernel()(_nhwc(grad_w), _nhwc(index), k, _nhwc(grad_x),
                                          plan.k_scalars[3])
        return (grad_x, grad_beta, *grad_gates, None, None, None)


def _nhwc(x: torch.Tensor):
    """A channels-last CPU tensor (N, C, H, W) as the NumPy array (N, H, W, C) of its memory."""
    return x.permute(0, 2, 3, 1).numpy()


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
        raise ValueError(f"gate {name} must be a scalar (one gate per tensor, docs/method.md "
                         f"§1); got shape {tuple(z.shape)}")
    value = z.detach().reshape(()).item()
    if not 0 <= value <= 1:                                 # also catches NaN
        raise ValueError(f"gate {name} must lie in [0, 1] (a hard-concrete sample, or 0/1 in eval "
                         f"mode); got {value}")
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
    if z2 is None:
        return x, beta, None, gates, None
    if not isinstance(z2, torch.Tensor):
        z2 = torch.as_tensor(np.asarray(z2, dtype=np.float64), device=x.device)
    _check_gate_values("z2", z2)
    z2, channel_dims = _broadcast_z2(z2.to(x.dtype), tuple(x.shape), channel_axis)
    return x, beta, z2, gates, channel_dims


def _broadcast_z2(z2: torch.Tensor, shape: tuple, channel_axis: int):
    """z2 reshaped to broadcast over ``channel_axis`` of a tensor of ``shape``, and the axes
    its gradient is summed over (all of them for a scalar z2)."""
    if z2.ndim == 0:
        return z2.reshape((1,) * len(shape)), list(range(len(shape)))
    try:
        axis = range(len(shape))[channel_axis]
    except IndexError:
        raise ValueError(f"channel_axis={channel_axis} is not an axis of x with shape "
                         f"{shape}") from None
    if tuple(z2.shape) != (shape[axis],):
        raise ValueError(f"z2 (the pruning gates) must have one value per channel, shape "
                         f"({shape[axis]},) for x of shape {shape} with channel_axis="
                         f"{channel_axis}; got shape {tuple(z2.shape)}")
    broadcast = [n if d == axis else 1 for d, n in enumerate(shape)]
    return z2.reshape(broadcast), [d for d in range(len(shape)) if d != axis]


def bb_quantize(x, beta, z2=None, z4=None, z8=None, z16=None, z32=None, *, signed: bool,
                clip: str = "official", channel_axis: int = 0) -> torch.Tensor:
    """Bayesian Bits quantization (§2.2–2.6), one fused autograd Function.

    Arguments as :func:`bbits_ref.method.quantizer.bb_quantize`: ``x`` any shape (float32/float64,
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


def bb_quantize_maxpool(x, beta, z4=None, z8=None, z16=None, z32=None, *, signed: bool,
                        kernel_size: int, clip: str = "official") -> torch.Tensor:
    """k×k max-pooling (stride k) of ``bb_quantize(x, beta, None, z4, …, z32)``, fused.

    ``x`` (N, C, H, W) with H and W multiples of ``kernel_size``; no pruning gate (z2 would
    change which value of a window wins).  Same values, and the same gradient for x, as
    quantizing and then pooling (the gradient goes to the first maximum of each window of
    x_q); the β and gate gradients are the same sums over the non-zero terms only, so they
    agree to float rounding.  Faster: the quantizer's backward runs on the winners alone.
    """
    x, beta, _, gates, _ = _prepare(x, beta, None, (z4, z8, z16, z32), signed, clip, 0)
    k = int(kernel_size)
    if x.ndim != 4 or k < 1 or x.shape[2] % k or x.shape[3] % k:
        raise ValueError(f"bb_quantize_maxpool needs x of shape (N, C, H, W) with H and W "
                         f"multiples of kernel_size={kernel_size}; got shape {tuple(x.shape)}. "
                         "Quantize with bb_quantize and pool separately instead.")
    return _BBQuantizeMaxPool.apply(x, beta, *gates, bool(signed), clip, k)


def fixed_quantize(x, beta, bits: int, *, signed: bool, clip: str = "official") -> torch.Tensor:
    """A fixed ``bits``-bit quantizer: :func:`bb_quantize` with constant 0/1 gates (§2.7)."""
    return bb_quantize(x, beta, None, *gates_for_bits(bits), signed=signed, clip=clip)

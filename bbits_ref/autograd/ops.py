"""The primitive table: every differentiable operation, its VJP and its math, side by side.

Each primitive is registered once with :func:`bbits_ref.autograd.engine.register`; the gradient checks
(:mod:`bbits_ref.autograd.gradcheck`) and the tests iterate over :data:`bbits_ref.autograd.engine.PRIMITIVES`.
Composite operations (``relu``, ``linear``, ``softmax`` ...) are written in terms of primitives
at the bottom of this file and need no gradient rule of their own.

Each primitive is bound here to the name it is registered under (``ops.mul is PRIMITIVES["mul"]``).
Names that would hide a Python builtin take NumPy's or a descriptive name instead: ``power``,
``absolute``, ``reduce_sum``, ``reduce_max``.  :class:`~bbits_ref.autograd.engine.Tensor`'s
operators and methods (``x ** y``, ``abs(x)``, ``x.sum()``, ``x.max()`` ...) call these by name.

Notation in the docstrings: ``g`` is the incoming gradient (same shape as the output ``z``); the
engine unbroadcasts every returned gradient, so rules may return the broadcast shape.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bbits_ref.autograd.engine import Tensor, as_tensor, register, ste_round

# --------------------------------------------------------------------------- elementwise

def _ones_like_g(g, z, s, x, y):
    return g


add = register("add", "z = x + y;  x̄ = g, ȳ = g", np.add, _ones_like_g, _ones_like_g)
sub = register("sub", "z = x − y;  x̄ = g, ȳ = −g", np.subtract,
               _ones_like_g, lambda g, z, s, x, y: -g)
mul = register("mul", "z = x·y;  x̄ = g·y, ȳ = g·x", np.multiply,
               lambda g, z, s, x, y: g * y, lambda g, z, s, x, y: g * x)
div = register("div", "z = x / y;  x̄ = g / y, ȳ = −g·z / y", np.divide,
               lambda g, z, s, x, y: g / y, lambda g, z, s, x, y: -g * z / y)
neg = register("neg", "z = −x;  x̄ = −g", np.negative, lambda g, z, s, x: -g)


def _power_dy(g, z, s, x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return g * z * np.where(x > 0, np.log(np.where(x > 0, x, 1)), 0.0)


power = register("power", "z = x^y;  x̄ = g·y·x^(y−1), ȳ = g·z·log x (x > 0)", np.power,
                 lambda g, z, s, x, y: g * y * np.power(x, y - 1), _power_dy)
exp = register("exp", "z = eˣ;  x̄ = g·z", np.exp, lambda g, z, s, x: g * z)
log = register("log", "z = log x;  x̄ = g / x", np.log, lambda g, z, s, x: g / x)
absolute = register("absolute", "z = |x|;  x̄ = g·sign(x)", np.abs,
                    lambda g, z, s, x: g * np.sign(x))
maximum = register(
    "maximum", "z = max(x, y);  x̄ = g·[x > y], ȳ = g·[x ≤ y] (ties go to y, so relu'(0) = 0)",
    np.maximum, lambda g, z, s, x, y: g * (x > y), lambda g, z, s, x, y: g * (x <= y))
where = register(
    "where", "z = c ? x : y;  x̄ = g·c, ȳ = g·(1 − c)  (c not differentiable)", np.where,
    None, lambda g, z, s, c, x, y: np.where(c, g, 0), lambda g, z, s, c, x, y: np.where(c, 0, g))


def _clip_fwd(x, *, lo=None, hi=None):
    return np.clip(x, lo, hi)


def _clip_vjp(g, z, s, x, *, lo=None, hi=None):
    inside = np.ones(x.shape, dtype=bool)
    if lo is not None:
        inside &= x > lo
    if hi is not None:
        inside &= x < hi
    return g * inside


clip = register("clip", "z = min(max(x, lo), hi);  x̄ = g·[lo < x < hi] (bounds count as clipped)",
                _clip_fwd, _clip_vjp)


def _sigmoid(x):
    e = np.exp(-np.abs(x))          # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


sigmoid = register("sigmoid", "z = 1 / (1 + e⁻ˣ) (stable for any x);  x̄ = g·z·(1 − z)",
                   _sigmoid, lambda g, z, s, x: g * z * (1 - z))


def _softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


log_sigmoid = register("log_sigmoid", "z = log σ(x) = −softplus(−x);  x̄ = g·σ(−x)",
                       lambda x: -_softplus(-x), lambda g, z, s, x: g * _sigmoid(-x))
softplus = register("softplus", "z = log(1 + eˣ) (stable);  x̄ = g·σ(x)",
                    _softplus, lambda g, z, s, x: g * _sigmoid(x))
round_ste = register(
    "round_ste", "z = round(x) (half to even);  x̄ = g (straight-through estimator)",
    ste_round, lambda g, z, s, x: g)

# --------------------------------------------------------------------------- reductions

def _expand(g, x, axis, keepdims):
    """Put back the reduced axes of ``g`` so it broadcasts against ``x``."""
    if axis is None:
        return np.reshape(g, (1,) * x.ndim) if not keepdims else g
    if not keepdims:
        axes = (axis,) if np.isscalar(axis) else tuple(axis)
        g = np.expand_dims(g, tuple(a % x.ndim for a in axes))
    return g


def _count(x, axis):
    if axis is None:
        return x.size
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    return int(np.prod([x.shape[a] for a in axes]))


reduce_sum = register(
    "reduce_sum", "z = Σ_axis x;  x̄ = broadcast(g)",
    lambda x, *, axis=None, keepdims=False: np.sum(x, axis=axis, keepdims=keepdims),
    lambda g, z, s, x, *, axis=None, keepdims=False:
    np.broadcast_to(_expand(g, x, axis, keepdims), x.shape))
mean = register("mean", "z = mean_axis x;  x̄ = broadcast(g) / n",
                lambda x, *, axis=None, keepdims=False: np.mean(x, axis=axis, keepdims=keepdims),
                lambda g, z, s, x, *, axis=None, keepdims=False:
                np.broadcast_to(_expand(g, x, axis, keepdims) / _count(x, axis), x.shape))


def _reduce_max_vjp(g, z, s, x, *, axis=None, keepdims=False):
    zz = _expand(z, x, axis, keepdims)
    hit = x == zz
    return _expand(g, x, axis, keepdims) * hit / hit.sum(axis=axis, keepdims=True)


reduce_max = register(
    "reduce_max", "z = max_axis x;  x̄ = g shared equally by the maxima",
    lambda x, *, axis=None, keepdims=False: np.max(x, axis=axis, keepdims=keepdims),
    _reduce_max_vjp)

# --------------------------------------------------------------------------- shapes

reshape = register("reshape", "z = reshape(x, shape);  x̄ = reshape(g, x.shape)",
                   lambda x, *, shape: np.reshape(x, shape),
                   lambda g, z, s, x, *, shape: np.reshape(g, x.shape))
transpose = register(
    "transpose", "z = transpose(x, axes);  x̄ = transpose(g, argsort(axes))",
    lambda x, *, axes=None: np.transpose(x, axes),
    lambda g, z, s, x, *, axes=None: np.transpose(
        g, None if axes is None else np.argsort([a % x.ndim for a in axes])))
broadcast_to = register(
    "broadcast_to", "z = broadcast_to(x, shape);  x̄ = unbroadcast(g) (done by the engine)",
    lambda x, *, shape: np.broadcast_to(x, shape), lambda g, z, s, x, *, shape: g)


def _is_advanced(index) -> bool:
    idx = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (list, np.ndarray, Tensor)) for i in idx)


def _getitem_vjp(g, z, s, x, *, index):
    out = np.zeros_like(x)
    if _is_advanced(index):
        np.add.at(out, index, g)        # repeated integer indices accumulate
    else:
        out[index] = g
    return out


getitem = register("getitem", "z = x[index];  x̄ = scatter-add of g into zeros at index",
                   lambda x, *, index: x[index], _getitem_vjp)


def _concat_vjp(g, z, s, *xs, axis=0, argnum):
    start = int(np.sum([x.shape[axis] for x in xs[:argnum]], dtype=np.int64))
    return np.take(g, np.arange(start, start + xs[argnum].shape[axis]), axis=axis)


concatenate = register("concatenate", "z = [x₁ ‖ x₂ ‖ …] along axis;  x̄ᵢ = the slice of g",
                       lambda *xs, axis=0: np.concatenate(xs, axis=axis), _concat_vjp,
                       variadic=True)
stack = register("stack", "z = stack(x₁, x₂, …) on a new axis;  x̄ᵢ = g[…, i, …]",
                 lambda *xs, axis=0: np.stack(xs, axis=axis),
                 lambda g, z, s, *xs, axis=0, argnum: np.take(g, argnum, axis=axis),
                 variadic=True)

# --------------------------------------------------------------------------- linear algebra

def _matmul_fwd(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs arrays with at least one dimension; use mul for scalars")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(
            f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
            f"({a.shape[-1]} vs {b.shape[-2 if b.ndim > 1 else 0]})")
    return a @ b


def _T(m):
    return np.swapaxes(m, -1, -2)


def _matmul_da(g, z, s, a, b):
    if b.ndim == 1:                       # z = a @ b has shape a.shape[:-1]
        return g[..., None] * b
    if a.ndim == 1:                       # z = a @ b has shape (..., m)
        return (b @ g[..., None])[..., 0]
    return g @ _T(b)


def _matmul_db(g, z, s, a, b):
    if a.ndim == 1 and b.ndim == 1:
        return g * a
    if a.ndim == 1:
        return a[:, None] * g[..., None, :]
    if b.ndim == 1:
        return (_T(a) @ g[..., None])[..., 0]
    return _T(a) @ g


matmul = register("matmul", "z = a @ b (batched, broadcast);  ā = g @ bᵀ, b̄ = aᵀ @ g",
                  _matmul_fwd, _matmul_da, _matmul_db)

# --------------------------------------------------------------------------- convolution

def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints; got {v!r}")
    return int(v[0]), int(v[1])


def _windows(x, kh, kw, sh, sw):
    """Strided view (N, C, Ho, Wo, kh, kw) of all kh×kw windows; no copy."""
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _tap(a, i, j, sh, sw, ho, wo):
    """The (N, C, Ho, Wo) view of ``a`` seen by kernel tap (i, j): a[:, :, i + sh·h, j + sw·w]."""
    return a[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def _conv2d_fwd(x, w, *, stride=1, padding=0):
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d expects input (N, C, H, W) and weight (C_out, C_in, kh, kw); "
                         f"got {x.shape} and {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: the input has {x.shape[1]} channels but the weight expects "
                         f"{w.shape[1]} (weight shape {w.shape})")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv2d: stride must be ≥ 1 and padding ≥ 0; got {stride}, {padding}")
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ValueError(f"conv2d: kernel {kh}×{kw} is larger than the padded input "
                         f"{h + 2 * ph}×{wd + 2 * pw}")
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(x, kh, kw, sh, sw)                      # (N, C, Ho, Wo, kh, kw), a view
    ho, wo = win.shape[2:4]
    w2 = w.reshape(o, -1)                                  # (C_out, C·kh·kw)
    if ho * wo >= c * kh * kw:
        # Early layers (few channels, many positions): one batched matmul per image gives
        # NCHW directly; cols is (N, C·kh·kw, Ho·Wo).
        cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(n, c * kh * kw, -1)
        return np.matmul(w2, cols).reshape(n, o, ho, wo), cols
    # Deep layers: im2col into one (C·kh·kw) × (N·Ho·Wo) matrix and one large matmul.
    cols = np.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * kh * kw, -1)
    out = (w2 @ cols).reshape(o, n, ho, wo)
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3)), cols


def _channels_first(g):
    """(N, C, H, W) -> contiguous (C, N·H·W), the layout of the large-matmul weight gradient."""
    return np.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(g.shape[1], -1)


def _conv2d_dx(g, z, cols, x, w, *, stride=1, padding=0):
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = g.shape[2:]
    # Work in a (C, H, W, N) layout so that every tap adds blocks whose contiguous inner
    # dimension is the batch, not a short image row.
    w_taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, o)   # (kh·kw·C, C_out)
    g_hwn = np.ascontiguousarray(g.transpose(1, 2, 3, 0)).reshape(o, -1)    # (C_out, Ho·Wo·N)
    dcols = (w_taps @ g_hwn).reshape(kh, kw, c, ho, wo, n)
    dx = np.zeros((c, h + 2 * ph, wd + 2 * pw, n), dtype=g.dtype)
    # col2im: the loop runs over the kh·kw kernel taps only; each step adds a whole
    # (C, Ho, Wo, N) block at once.
    for i in range(kh):
        for j in range(kw):
            dx[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] += dcols[i, j]
    return dx[:, ph:ph + h, pw:pw + wd, :].transpose(3, 0, 1, 2)


def _conv2d_dw(g, z, cols, x, w, *, stride=1, padding=0):
    if cols.ndim == 3:                                     # batched layout (see the forward)
        n, o = g.shape[:2]
        return np.matmul(g.reshape(n, o, -1), cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
    return (_channels_first(g) @ cols.T).reshape(w.shape)


conv2d = register(
    "conv2d", "z[n,o] = Σ_{c,i,j} w[o,c,i,j]·x[n,c,s·h+i,s·w+j] (im2col + matmul);  "
    "w̄ = g·colsᵀ, x̄ = col2im(Wᵀ·g)", _conv2d_fwd, _conv2d_dx, _conv2d_dw, saves=True)

# --------------------------------------------------------------------------- pooling
# Pools loop over the kh·kw window taps (at most a handful); every step works on whole
# (N, C, Ho, Wo) strided views, which is far faster than gathering windows into a copy.

def _pool_geometry(x, kernel_size, stride, name):
    if x.ndim != 4:
        raise ValueError(f"{name} expects input (N, C, H, W); got shape {x.shape}")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"{name}: kernel_size and stride must be ≥ 1; got {kernel_size}, {stride}")
    if kh > x.shape[2] or kw > x.shape[3]:
        raise ValueError(f"{name}: window {kh}×{kw} larger than the input {x.shape[2:]}")
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    return kh, kw, sh, sw, ho, wo


def _taps(kh, kw):
    return [(i, j) for i in range(kh) for j in range(kw)]     # PyTorch's scan order


def _max_pool_fwd(x, *, kernel_size=2, stride=None):
    kh, kw, sh, sw, ho, wo = _pool_geometry(x, kernel_size, stride, "max_pool2d")
    out = None
    for i, j in _taps(kh, kw):
        t = _tap(x, i, j, sh, sw, ho, wo)
        out = t.copy() if out is None else np.maximum(out, t, out=out)
    return out


def _max_pool_vjp(g, z, s, x, *, kernel_size=2, stride=None):
    kh, kw, sh, sw, ho, wo = _pool_geometry(x, kernel_size, stride, "max_pool2d")
    dx = np.zeros_like(x)
    disjoint = sh >= kh and sw >= kw          # each input element in at most one window
    open_ = np.ones(z.shape, dtype=bool)      # windows whose maximum has not been routed yet
    hit = np.empty(z.shape, dtype=bool)
    for i, j in _taps(kh, kw):
        np.equal(_tap(x, i, j, sh, sw, ho, wo), z, out=hit)
        hit &= open_
        if disjoint:
            np.multiply(g, hit, out=_tap(dx, i, j, sh, sw, ho, wo))
        else:
            _tap(dx, i, j, sh, sw, ho, wo)[...] += g * hit
        open_ ^= hit                          # hit ⊆ open_, so this is open_ & ~hit, in place
    return dx


max_pool2d = register(
    "max_pool2d", "z = max over each window;  x̄ = g routed to the first maximum of its window",
    _max_pool_fwd, _max_pool_vjp)


def _avg_pool_fwd(x, *, kernel_size=2, stride=None):
    kh, kw, sh, sw, ho, wo = _pool_geometry(x, kernel_size, stride, "avg_pool2d")
    out = np.zeros((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype)
    for i, j in _taps(kh, kw):
        out += _tap(x, i, j, sh, sw, ho, wo)
    return out / (kh * kw)


def _avg_pool_vjp(g, z, s, x, *, kernel_size=2, stride=None):
    kh, kw, sh, sw, ho, wo = _pool_geometry(x, kernel_size, stride, "avg_pool2d")
    dx = np.zeros_like(x)
    share = g / (kh * kw)
    for i, j in _taps(kh, kw):
        _tap(dx, i, j, sh, sw, ho, wo)[...] += share
    return dx


avg_pool2d = register("avg_pool2d", "z = mean over each window;  x̄ = g / (kh·kw) to every element",
                      _avg_pool_fwd, _avg_pool_vjp)

# --------------------------------------------------------------------------- softmax and loss

def _log_softmax_fwd(x, *, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    sh = x - m
    return sh - np.log(np.sum(np.exp(sh), axis=axis, keepdims=True))


log_softmax = register(
    "log_softmax", "z = x − logΣeˣ along axis;  x̄ = g − eᶻ·Σg",
    _log_softmax_fwd,
    lambda g, z, s, x, *, axis=-1: g - np.exp(z) * np.sum(g, axis=axis, keepdims=True))


def _cross_entropy_fwd(logits, labels):
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits of shape (N, classes); got {logits.shape}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: {logits.shape[0]} rows of logits but labels of shape "
                         f"{labels.shape}; give one integer label per row")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: labels must be integers; got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"cross_entropy: labels must lie in [0, {logits.shape[1]}); got "
                         f"[{labels.min()}, {labels.max()}]")
    logp = _log_softmax_fwd(logits, axis=1)
    rows = np.arange(len(labels))
    return -np.mean(logp[rows, labels]), logp


def _cross_entropy_vjp(g, z, logp, logits, labels):
    p = np.exp(logp)
    p[np.arange(len(labels)), labels] -= 1
    return p * (g / len(labels))


cross_entropy = register(
    "cross_entropy", "z = −mean_n log softmax(x)[n, yₙ];  x̄ = g·(softmax(x) − onehot(y)) / N",
    _cross_entropy_fwd, _cross_entropy_vjp, None, saves=True)


# --------------------------------------------------------------------------- composites
# Written with the primitives above; no gradient rule of their own.

def relu(x):
    """max(x, 0), with relu'(0) = 0 as in PyTorch."""
    return maximum(x, 0.0)


def linear(x, weight, bias=None):
    """x @ weightᵀ + bias, with weight of shape (out, in) as in PyTorch."""
    y = matmul(x, transpose(weight))
    return y if bias is None else add(y, bias)


def softmax(x, axis=-1):
    """e^(log_softmax(x)) along ``axis``."""
    return exp(log_softmax(x, axis=axis))


def square(x):
    """x·x."""
    return mul(x, x)


def sqrt(x):
    """√x as x^0.5."""
    return power(x, 0.5)


def minimum(x, y):
    """min(x, y) = −max(−x, −y)."""
    return neg(maximum(neg(x), neg(y)))


def flatten(x, start_dim=1):
    """Merge the axes from ``start_dim`` on into one."""
    return as_tensor(x).flatten(start_dim)

"""A small reverse-mode autograd engine on NumPy arrays.

The whole engine is this file: a :class:`Tensor` that remembers the primitive that made it,
a table of :class:`Primitive` s (forward function, one vector-Jacobian product per argument and
a one-line math docstring, side by side), an iterative topological sort for ``backward()``, and a
single engine-level :func:`unbroadcast`.  The primitives themselves live in :mod:`bbits_ref.autograd.ops`.

``Tensor``'s operators and methods (``x + y``, ``x.sum()``, ``x[i]`` ...) are declared in the class
below; each one looks up its primitive in :data:`PRIMITIVES` by name when it is called, so this file
does not import ``ops`` (importing :mod:`bbits_ref.autograd` fills the table).

Notebook: ``notebooks/01_autograd_engine.ipynb``.

Conventions
-----------
* dtype is a choice: float32 by default (training), float64 on request (gradient checks and
  reference comparisons), see :func:`default_dtype`.
* Gradients accumulate into ``leaf.grad``; the graph is traversed iteratively, so deep graphs never
  hit Python's recursion limit.
* A rule that returns a gradient that cannot be unbroadcast to its input's shape raises a
  ``ValueError`` naming the primitive.
* Straight-through rounding goes through :func:`ste_round`, which :func:`frozen_rounding` can
  record and replay.  With the rounding offsets frozen, an STE gradient is the *exact* derivative
  of the resulting smooth function, so finite differences can check it.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "Tensor", "Primitive", "PRIMITIVES", "register", "apply", "no_grad", "is_grad_enabled",
    "default_dtype", "get_default_dtype", "set_default_dtype", "as_tensor", "unbroadcast",
    "ste_round", "frozen_rounding", "FLOAT_DTYPES",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_state = threading.local()


def _get(name: str, default):
    return getattr(_state, name, default)


# --------------------------------------------------------------------------- dtype

def _check_float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64; got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(
            f"dtype must be float32 (training) or float64 (gradient checks); got {dt}. "
            "Pass dtype=np.float32 or dtype=np.float64.")
    return dt


def get_default_dtype() -> np.dtype:
    """The dtype given to Python numbers and lists turned into tensors (float32 unless changed)."""
    return _get("dtype", np.dtype(np.float32))


def set_default_dtype(dtype) -> None:
    """Set the default float dtype for this thread (float32 or float64)."""
    _state.dtype = _check_float_dtype(dtype)


@contextlib.contextmanager
def default_dtype(dtype) -> Iterator[None]:
    """``with default_dtype(np.float64): ...`` runs a block with another default float dtype."""
    old = get_default_dtype()
    set_default_dtype(dtype)
    try:
        yield
    finally:
        _state.dtype = old


# --------------------------------------------------------------------------- grad mode

def is_grad_enabled() -> bool:
    return _get("grad_enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run a block without recording the graph (evaluation, optimizer updates)."""
    old = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = old


# --------------------------------------------------------------------------- STE rounding

class _RoundingTape:
    """Records the rounding offsets ``round(u) - u`` of one evaluation and replays them."""

    def __init__(self) -> None:
        self.offsets: list[np.ndarray] = []
        self.replaying = False
        self.position = 0

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if not self.replaying:
            r = np.round(u)
            self.offsets.append(r - u)
            return r
        if self.position >= len(self.offsets):
            raise RuntimeError("frozen_rounding: the replayed function rounds more often than "
                               "the recorded one; it must take the same path at every point")
        off = self.offsets[self.position]
        self.position += 1
        if off.shape != np.shape(u):
            raise RuntimeError("frozen_rounding: a replayed rounding has another shape than the "
                               f"recorded one ({np.shape(u)} vs {off.shape})")
        return u + off


def ste_round(u: np.ndarray) -> np.ndarray:
    """Round half to even, the forward value of every straight-through rounding.

    Inside :func:`frozen_rounding` the offsets are recorded on the first evaluation and replayed
    afterwards, which turns ``round`` into ``u + const`` whose derivative is the STE's 1.
    """
    tape = _get("tape", None)
    if tape is None:
        return np.round(u)
    return tape(u)


@contextlib.contextmanager
def frozen_rounding() -> Iterator[Callable[[], None]]:
    """Record rounding offsets on the first call, then replay them.

    Yields a function ``replay()`` that rewinds the tape; call it before each re-evaluation::

        with frozen_rounding() as replay:
            f0 = f(x)            # records round(u) - u for every ste_round
            replay(); f1 = f(x + h)   # every ste_round now returns u + recorded offset
    """
    tape = _RoundingTape()
    old = _get("tape", None)
    _state.tape = tape

    def replay() -> None:
        tape.replaying = True
        tape.position = 0

    try:
        yield replay
    finally:
        _state.tape = old


# --------------------------------------------------------------------------- primitives

@dataclass(frozen=True, eq=False)
class Primitive:
    """One differentiable operation on arrays.

    ``forward(*arrays, **static)`` returns the output array, or ``(output, saved)`` when
    ``saves=True``.  ``vjps[i](g, out, saved, *arrays, **static)`` returns the gradient for
    argument ``i`` (``None`` marks an argument that is not differentiable, such as labels or a
    condition).  A ``variadic`` primitive (concatenate, stack) has one rule, called with the
    extra keyword ``argnum``.  ``math`` is the one-line docstring: forward and VJP.
    """

    name: str
    math: str
    forward: Callable[..., Any]
    vjps: tuple
    saves: bool = False
    variadic: bool = False

    def vjp_for(self, argnum: int):
        return self.vjps[0] if self.variadic else self.vjps[argnum]

    def __call__(self, *args, **static):
        return apply(self, *args, **static)

    def __repr__(self) -> str:
        return f"<primitive {self.name}: {self.math}>"


PRIMITIVES: dict[str, Primitive] = {}


def register(name: str, math: str, forward: Callable, *vjps: Callable | None,
             saves: bool = False, variadic: bool = False) -> Primitive:
    """Add a primitive to the table that the gradient checks and tests iterate over."""
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name!r} is registered twice")
    if variadic and len(vjps) != 1:
        raise ValueError("a variadic primitive has exactly one VJP rule")
    prim = Primitive(name, math, forward, tuple(vjps), saves=saves, variadic=variadic)
    PRIMITIVES[name] = prim
    return prim


# --------------------------------------------------------------------------- tensors

def as_tensor(x, dtype=None) -> "Tensor":
    """Return ``x`` if it is a Tensor, else wrap it (Python numbers take the default dtype)."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, dtype=dtype)


@dataclass(eq=False)
class _Node:
    prim: Primitive
    inputs: tuple
    saved: Any
    static: dict = field(default_factory=dict)


class Tensor:
    """An ``np.ndarray`` with a gradient and the record of how it was made.

    Parameters
    ----------
    data : array_like
        Floating arrays keep their dtype; Python numbers and lists become the default dtype
        (float32 unless changed with :func:`default_dtype`); integer arrays stay integer (labels,
        indices) but cannot require a gradient.
    requires_grad : bool
        Leaf tensors with ``requires_grad=True`` receive ``.grad`` from :meth:`backward`.
    dtype : optional
        float32 or float64 (anything else raises ``TypeError``).
    """

    __array_priority__ = 100  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False, dtype=None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if dtype is not None:
            arr = np.asarray(data, dtype=_check_float_dtype(dtype))
        elif isinstance(data, (np.ndarray, np.generic)):
            arr = np.asarray(data)
            if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f" and arr.dtype not in FLOAT_DTYPES):
                raise TypeError(f"Tensor data of dtype {arr.dtype} is not supported; use float32 "
                                "or float64 (or an integer array for labels and indices)")
        else:  # Python numbers and lists take the default float dtype
            arr = np.asarray(data, dtype=get_default_dtype())
        if requires_grad and arr.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"only float32/float64 tensors can require a gradient; this one is {arr.dtype}. "
                "Convert it with x.astype(np.float32) first.")
        self.data: np.ndarray = arr
        self.requires_grad = bool(requires_grad)
        self.grad: np.ndarray | None = None
        self._node: _Node | None = None

    # -- array-like views
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    T = property(lambda self: self.transpose())

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def prim(self) -> Primitive | None:
        """The primitive that made this tensor (``None`` for a leaf)."""
        return None if self._node is None else self._node.prim

    @property
    def parents(self) -> tuple:
        """The tensors this one was computed from (empty for a leaf)."""
        return () if self._node is None else self._node.inputs

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        how = f", prim={self.prim.name}" if self._node else ""
        rg = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=8)}{rg}{how})"

    def detach(self) -> "Tensor":
        """A new leaf sharing the data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> "Tensor":
        """A copy as a new leaf in another float dtype (not differentiable)."""
        return Tensor(self.data.astype(_check_float_dtype(dtype)))

    def zero_grad(self) -> None:
        self.grad = None

    # -- operators: each delegates to the primitive of that name (see bbits_ref.autograd.ops)
    def __add__(self, other) -> "Tensor":
        """``self + other`` (primitive ``add``)."""
        return _call("add", self, other)

    def __radd__(self, other) -> "Tensor":
        """``other + self`` (primitive ``add``)."""
        return _call("add", other, self)

    def __sub__(self, other) -> "Tensor":
        """``self - other`` (primitive ``sub``)."""
        return _call("sub", self, other)

    def __rsub__(self, other) -> "Tensor":
        """``other - self`` (primitive ``sub``)."""
        return _call("sub", other, self)

    def __mul__(self, other) -> "Tensor":
        """``self * other`` (primitive ``mul``)."""
        return _call("mul", self, other)

    def __rmul__(self, other) -> "Tensor":
        """``other * self`` (primitive ``mul``)."""
        return _call("mul", other, self)

    def __truediv__(self, other) -> "Tensor":
        """``self / other`` (primitive ``div``)."""
        return _call("div", self, other)

    def __rtruediv__(self, other) -> "Tensor":
        """``other / self`` (primitive ``div``)."""
        return _call("div", other, self)

    def __pow__(self, other) -> "Tensor":
        """``self ** other`` (primitive ``power``)."""
        return _call("power", self, other)

    def __rpow__(self, other) -> "Tensor":
        """``other ** self`` (primitive ``power``)."""
        return _call("power", other, self)

    def __matmul__(self, other) -> "Tensor":
        """``self @ other`` (primitive ``matmul``)."""
        return _call("matmul", self, other)

    def __rmatmul__(self, other) -> "Tensor":
        """``other @ self`` (primitive ``matmul``)."""
        return _call("matmul", other, self)

    def __neg__(self) -> "Tensor":
        """``-self`` (primitive ``neg``)."""
        return _call("neg", self)

    def __abs__(self) -> "Tensor":
        """``abs(self)`` (primitive ``absolute``)."""
        return _call("absolute", self)

    def __getitem__(self, index) -> "Tensor":
        """``self[index]``, basic or integer-array indexing (primitive ``getitem``)."""
        return _call("getitem", self, index=index.data if isinstance(index, Tensor) else index)

    # comparisons are not differentiable: they give plain boolean arrays
    def __lt__(self, other) -> np.ndarray:
        """``self < other`` as a boolean ndarray."""
        return self.data < _data(other)

    def __le__(self, other) -> np.ndarray:
        """``self <= other`` as a boolean ndarray."""
        return self.data <= _data(other)

    def __gt__(self, other) -> np.ndarray:
        """``self > other`` as a boolean ndarray."""
        return self.data > _data(other)

    def __ge__(self, other) -> np.ndarray:
        """``self >= other`` as a boolean ndarray."""
        return self.data >= _data(other)

    # -- elementwise functions
    def exp(self) -> "Tensor":
        """eˣ (primitive ``exp``)."""
        return _call("exp", self)

    def log(self) -> "Tensor":
        """Natural logarithm (primitive ``log``)."""
        return _call("log", self)

    def abs(self) -> "Tensor":
        """|x| (primitive ``absolute``)."""
        return _call("absolute", self)

    def sigmoid(self) -> "Tensor":
        """1 / (1 + e⁻ˣ), stable for any x (primitive ``sigmoid``)."""
        return _call("sigmoid", self)

    def log_sigmoid(self) -> "Tensor":
        """log σ(x), stable for any x (primitive ``log_sigmoid``)."""
        return _call("log_sigmoid", self)

    def softplus(self) -> "Tensor":
        """log(1 + eˣ), stable for any x (primitive ``softplus``)."""
        return _call("softplus", self)

    def round_ste(self) -> "Tensor":
        """Round half to even with a straight-through gradient (primitive ``round_ste``)."""
        return _call("round_ste", self)

    def relu(self) -> "Tensor":
        """max(x, 0) with relu'(0) = 0 as in PyTorch (primitive ``maximum``)."""
        return _call("maximum", self, 0.0)

    def clip(self, lo=None, hi=None) -> "Tensor":
        """min(max(x, lo), hi); either bound may be None (primitive ``clip``)."""
        return _call("clip", self, lo=lo, hi=hi)

    # -- reductions
    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Sum over ``axis`` (all axes by default) (primitive ``reduce_sum``)."""
        return _call("reduce_sum", self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Mean over ``axis`` (all axes by default) (primitive ``mean``)."""
        return _call("mean", self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Maximum over ``axis``; tied maxima share the gradient (primitive ``reduce_max``)."""
        return _call("reduce_max", self, axis=axis, keepdims=keepdims)

    # -- shapes
    def reshape(self, *shape) -> "Tensor":
        """``x.reshape(2, 3)`` or ``x.reshape((2, 3))`` (primitive ``reshape``)."""
        return _call("reshape", self, shape=_dims(shape))

    def transpose(self, *axes) -> "Tensor":
        """Reverse the axes, or permute them as given (primitive ``transpose``)."""
        return _call("transpose", self, axes=_dims(axes) or None)

    def broadcast_to(self, shape) -> "Tensor":
        """Broadcast to ``shape``; the gradient is summed back (primitive ``broadcast_to``)."""
        return _call("broadcast_to", self, shape=tuple(shape))

    def flatten(self, start_dim: int = 1) -> "Tensor":
        """Merge the axes from ``start_dim`` on into one (primitive ``reshape``)."""
        return _call("reshape", self, shape=self.shape[:start_dim] + (-1,))

    # -- backward
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) · grad into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a scalar (one-element) tensor; a non-scalar needs it.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require a gradient: no input "
                               "of the computation had requires_grad=True (or it ran in no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() without a gradient needs a scalar; this tensor has shape "
                    f"{self.shape}. Reduce it first (e.g. .sum()) or pass grad= of that shape.")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(grad): grad has shape {grad.shape}, the tensor "
                                 f"{self.shape}")
        order = _toposort(self)
        grads: dict[int, np.ndarray] = {id(self): grad}
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            node = t._node
            if node is None:
                t.grad = g.copy() if t.grad is None else t.grad + g
                continue
            arrays = [x.data for x in node.inputs]
            for i, x in enumerate(node.inputs):
                if not x.requires_grad:
                    continue
                rule = node.prim.vjp_for(i)
                if rule is None:
                    continue
                static = dict(node.static, argnum=i) if node.prim.variadic else node.static
                gi = rule(g, t.data, node.saved, *arrays, **static)
                gi = unbroadcast(np.asarray(gi), x.shape, node.prim.name, i)
                if gi.dtype != x.dtype:
                    gi = gi.astype(x.dtype)
                prev = grads.get(id(x))
                grads[id(x)] = gi if prev is None else prev + gi


def _call(name: str, *args, **static) -> Tensor:
    """Apply the registered primitive ``name``: how Tensor's operators reach :mod:`.ops`."""
    prim = PRIMITIVES.get(name)
    if prim is None:
        raise RuntimeError(f"primitive {name!r} is not registered, so this Tensor operation has no "
                           "rule; import bbits_ref.autograd (which registers every primitive) "
                           "before using tensors")
    return apply(prim, *args, **static)


def _data(x):
    """The array behind a Tensor, or ``x`` itself."""
    return x.data if isinstance(x, Tensor) else x


def _dims(args: tuple) -> tuple:
    """``f(2, 3)`` and ``f((2, 3))`` both give ``(2, 3)``: a shape or axes given either way."""
    return tuple(args[0]) if len(args) == 1 and not np.isscalar(args[0]) else tuple(args)


def _toposort(root: Tensor) -> list:
    """Tensors that ``root`` depends on (and that require grad), parents before children."""
    order: list = []
    seen: set[int] = set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        for p in t.parents:
            if p.requires_grad and id(p) not in seen:
                stack.append((p, False))
    return order


def unbroadcast(g: np.ndarray, shape: tuple, prim: str = "?", argnum: int = 0) -> np.ndarray:
    """Sum ``g`` over the axes that broadcasting added or stretched, to give ``shape``.

    The one place in the engine that handles broadcasting: rules return gradients of the
    broadcast shape and this reduces them.  Anything that cannot be reduced to ``shape`` is a
    wrong rule and raises ``ValueError`` naming the primitive.
    """
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    ok = extra >= 0 and all(gs == s or s == 1 for gs, s in zip(g.shape[extra:], shape))
    if not ok:
        raise ValueError(
            f"primitive {prim!r} returned a gradient of shape {g.shape} for argument {argnum} "
            f"of shape {shape}; a vector-Jacobian product must have its input's shape")
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


# --------------------------------------------------------------------------- apply

def _result_dtype(tensors: Sequence[Tensor]) -> np.dtype:
    floats = [t.dtype for t in tensors if t.dtype in FLOAT_DTYPES]
    if not floats:
        return get_default_dtype()
    return np.result_type(*floats)


def apply(prim: Primitive, *args, **static) -> Tensor:
    """Run a primitive on tensors (or numbers) and record it in the graph.

    Python numbers take the dtype of the float tensors they meet, so ``x * 2`` stays float32.
    Differentiable arguments must be float32/float64: an integer tensor raises ``TypeError``.
    """
    tensors = [a for a in args if isinstance(a, Tensor)]
    dt = _result_dtype(tensors)
    ins = []
    for i, a in enumerate(args):
        diff = prim.vjp_for(i) is not None
        if isinstance(a, Tensor):
            t = a
        elif diff and not isinstance(a, np.ndarray):
            t = Tensor(np.asarray(a, dtype=dt))   # a Python number follows the tensors' dtype
        else:
            t = Tensor(np.asarray(a))
        if diff and t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"primitive {prim.name!r}: argument {i} must be a float32/float64 tensor, got "
                f"{t.dtype}. Integer tensors are only for labels and indices; convert with "
                ".astype(np.float32).")
        ins.append(t)
    arrays = [t.data for t in ins]
    try:
        res = prim.forward(*arrays, **static)
    except ValueError as exc:
        if prim.name in str(exc):
            raise
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"{prim.name}: {exc} (input shapes {shapes})") from exc
    out_data, saved = res if prim.saves else (res, None)
    needs = is_grad_enabled() and any(
        t.requires_grad and prim.vjp_for(i) is not None for i, t in enumerate(ins))
    out = Tensor.__new__(Tensor)
    out.data = np.asarray(out_data)
    out.requires_grad = needs
    out.grad = None
    out._node = _Node(prim, tuple(ins), saved, static) if needs else None
    return out


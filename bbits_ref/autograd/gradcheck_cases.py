"""Gradient-check inputs for every primitive: the table that the checks and tests iterate over.

:func:`make_case` builds valid float64 inputs for a primitive around a shape (broadcasting
included); primitives registered outside :mod:`bbits_ref.autograd.ops` add theirs with
:func:`register_case`.  Used by :mod:`bbits_ref.autograd.gradcheck` and the test suite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["GradCase", "make_case", "register_case", "CASE_SHAPES"]


@dataclass
class GradCase:
    """Gradient-check inputs for one primitive: positional arrays, static keywords, and the
    indices of the differentiable arguments (``argnums``)."""

    args: tuple
    static: dict
    argnums: tuple


def _broadcastable_shape(rng, shape, broadcast):
    """A shape that broadcasts against ``shape``: some axes set to 1, maybe fewer leading axes."""
    if not broadcast or not shape:
        return tuple(shape)
    s = [1 if rng.random() < 0.5 else d for d in shape]
    drop = rng.integers(0, len(s) + 1)
    return tuple(s[drop:])


def _away(rng, shape, lo=0.2, hi=2.0):
    """Values with |x| in [lo, hi] and a random sign (away from kinks and poles)."""
    return rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)


def make_case(name: str, rng: np.random.Generator, shape: tuple = (2, 3),
              broadcast: bool = False) -> GradCase:
    """Valid float64 inputs for primitive ``name`` built around ``shape``.

    Inputs stay away from kinks, poles and ties (|x| ≥ 0.2 for ``absolute``, positive bases for
    ``log`` and ``power``, distinct values for ``reduce_max``), so finite differences are
    meaningful.
    Spatial primitives (conv2d, pools) and losses choose their own small shapes.
    """
    shape = tuple(int(d) for d in shape) or (3,)
    normal = lambda s: rng.standard_normal(s)  # noqa: E731
    y_shape = _broadcastable_shape(rng, shape, broadcast)
    ew2 = lambda x, y: GradCase((x, y), {}, (0, 1))  # noqa: E731
    if name in ("add", "sub", "mul"):
        return ew2(normal(shape), normal(y_shape))
    if name == "div":
        return ew2(normal(shape), _away(rng, y_shape, 0.5))
    if name == "power":
        return ew2(rng.uniform(0.5, 2.0, shape), rng.uniform(-2, 2, y_shape))
    if name in ("neg", "exp", "sigmoid", "log_sigmoid", "softplus", "round_ste"):
        return GradCase((3 * normal(shape),), {}, (0,))
    if name == "log":
        return GradCase((rng.uniform(0.3, 3.0, shape),), {}, (0,))
    if name == "absolute":
        return GradCase((_away(rng, shape),), {}, (0,))
    if name == "maximum":
        y = normal(y_shape)
        return ew2(np.broadcast_to(y, shape) + _away(rng, shape), y)
    if name == "where":
        return GradCase((rng.random(y_shape) < 0.5, normal(shape),
                         normal(_broadcastable_shape(rng, shape, broadcast))),
                        {}, (1, 2))
    if name == "clip":
        x = _away(rng, shape, 0.05, 1.5) + 0.5 * rng.choice([-1.0, 1.0], shape)
        return GradCase((x,), {"lo": -0.5, "hi": 0.5}, (0,))
    if name in ("reduce_sum", "mean", "reduce_max"):
        axis = None if rng.random() < 0.3 else int(rng.integers(-len(shape), len(shape)))
        return GradCase((normal(shape),), {"axis": axis, "keepdims": bool(rng.random() < 0.5)}, (0,))
    if name == "reshape":
        return GradCase((normal(shape),), {"shape": (-1,) + (1,) * int(rng.integers(0, 2))}, (0,))
    if name == "transpose":
        return GradCase((normal(shape),), {"axes": tuple(rng.permutation(len(shape)).tolist())}, (0,))
    if name == "broadcast_to":
        return GradCase((normal(_broadcastable_shape(rng, shape, True)),), {"shape": shape}, (0,))
    if name == "getitem":
        if rng.random() < 0.5:
            index = (slice(None, None, 2),) + (slice(1, None),) * (len(shape) > 1)
        else:
            index = (rng.integers(0, shape[0], size=4),)     # repeats accumulate
        return GradCase((normal(shape),), {"index": index}, (0,))
    if name in ("concatenate", "stack"):
        k = int(rng.integers(2, 4))
        axis = int(rng.integers(0, len(shape) + (name == "stack")))
        if name == "concatenate":
            xs = tuple(normal(shape[:axis] + (int(rng.integers(1, 4)),) + shape[axis + 1:])
                       for _ in range(k))
        else:
            xs = tuple(normal(shape) for _ in range(k))
        return GradCase(xs, {"axis": axis}, tuple(range(k)))
    if name == "matmul":
        n, k, m = (int(rng.integers(1, 5)) for _ in range(3))
        kind = rng.integers(0, 4)
        batch = tuple(shape[:-2])
        a_shape = {0: batch + (n, k), 1: (k,), 2: batch + (n, k),
                   3: _broadcastable_shape(rng, batch, broadcast) + (n, k)}[kind]
        b_shape = {0: _broadcastable_shape(rng, batch, broadcast) + (k, m), 1: batch + (k, m),
                   2: (k,), 3: batch + (k, m)}[kind]
        return ew2(normal(a_shape), normal(b_shape))
    if name == "conv2d":
        n, c, o = (int(rng.integers(1, 4)) for _ in range(3))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        h, w = int(rng.integers(kh, 8)), int(rng.integers(kw, 8))
        static = {"stride": int(rng.integers(1, 3)), "padding": int(rng.integers(0, 2))}
        return GradCase((normal((n, c, h, w)), normal((o, c, kh, kw))), static, (0, 1))
    if name in ("max_pool2d", "avg_pool2d"):
        k = int(rng.integers(1, 4))
        stride = int(rng.integers(1, k + 1))
        h, w = int(rng.integers(k, 8)), int(rng.integers(k, 8))
        x = normal((int(rng.integers(1, 3)), int(rng.integers(1, 3)), h, w))
        return GradCase((x,), {"kernel_size": k, "stride": stride}, (0,))
    if name == "log_softmax":
        return GradCase((2 * normal(shape),), {"axis": int(rng.integers(-len(shape), len(shape)))}, (0,))
    if name == "cross_entropy":
        n, k = int(rng.integers(1, 6)), int(rng.integers(2, 6))
        return GradCase((2 * normal((n, k)), rng.integers(0, k, size=n)), {}, (0,))
    extra = _EXTRA_CASES.get(name)
    if extra is not None:
        return extra(rng, shape, broadcast)
    raise KeyError(f"no gradient-check case for primitive {name!r}: add one to make_case")


# Primitives registered by other modules (e.g. the Bayesian Bits quantizer) add their case here.
_EXTRA_CASES: dict[str, Callable[[np.random.Generator, tuple, bool], GradCase]] = {}


def register_case(name: str, maker: Callable[[np.random.Generator, tuple, bool], GradCase]) -> None:
    """Give a primitive defined outside :mod:`bbits_ref.autograd.ops` its gradient-check inputs."""
    _EXTRA_CASES[name] = maker


CASE_SHAPES = [((3,), False), ((2, 3), False), ((2, 3), True), ((2, 1, 4), True), ((3, 2, 4), False)]

"""Gradient checking that students can call themselves (float64).

Two checks, both comparing the engine's reverse-mode gradient with central differences:

* :func:`check_grads` with ``method="fd"`` perturbs every element of every input (exact, costly);
* ``method="projection"`` perturbs all inputs at once along one random direction d and compares
  the directional derivative with ⟨∇, d⟩ (the random-projection or dot-product check: one
  backward and two forwards, cheap even for conv-sized tensors).

Functions with straight-through rounding are checked with their rounding offsets frozen
(:func:`bbits_ref.engine.frozen_rounding`): then the STE gradient is the exact derivative of the
function being differenced.

``python -m bbits_ref.gradcheck`` checks every registered primitive on several shapes
(broadcasting included), prints one line per primitive with its worst error, and exits non-zero on
any failure.  Notebook: ``notebooks/01_autograd_engine.ipynb``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import ops  # noqa: F401  (registers the primitives)
from .engine import PRIMITIVES, Tensor, frozen_rounding

__all__ = ["GradCheckResult", "check_grads", "make_case", "check_primitive", "Case",
           "CASE_SHAPES", "main"]


@dataclass
class GradCheckResult:
    """Outcome of a gradient check: worst absolute and relative error, and whether it passed."""

    ok: bool
    max_abs_err: float
    max_rel_err: float
    method: str
    details: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"{verdict}: {self.method} check, max abs err {self.max_abs_err:.2e}, "
                f"max rel err {self.max_rel_err:.2e}")


def _evaluate(f, arrays, static):
    out = f(*[Tensor(a) for a in arrays], **static)
    return np.asarray(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def check_grads(f: Callable, *inputs, argnums: Sequence[int] | None = None,
                static: dict | None = None, method: str = "fd", eps: float = 1e-6,
                rtol: float = 1e-5, atol: float = 1e-7, rng: np.random.Generator | None = None,
                n_directions: int = 3) -> GradCheckResult:
    """Compare the engine's gradient of ``f`` with central finite differences.

    Parameters
    ----------
    f : callable
        Takes Tensors (and the keywords in ``static``) and returns a Tensor of any shape.  A
        non-scalar output is reduced as ``L = Σ v ⊙ f(x)`` with a fixed random ``v``.
    inputs : arrays
        Converted to float64 (integer arrays such as labels are passed through unchanged).
    argnums : which inputs to check (default: every floating input).
    method : ``"fd"`` (every element) or ``"projection"`` (``n_directions`` random directions).
    eps, rtol, atol : step and tolerance; an entry passes if |engine − numeric| ≤ atol + rtol·|numeric|.
    rng : the Generator for ``v`` and the directions (default: seed 0, so checks are repeatable).

    Returns
    -------
    GradCheckResult, truthy when the check passed.
    """
    if method not in ("fd", "projection"):
        raise ValueError(f"method must be 'fd' or 'projection'; got {method!r}")
    static = static or {}
    rng = np.random.default_rng(0) if rng is None else rng
    arrays = [np.asarray(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
              for a in inputs]
    if argnums is None:
        argnums = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    argnums = list(argnums)
    for i in argnums:
        if arrays[i].dtype != np.float64:
            raise TypeError(f"input {i} is {arrays[i].dtype}; gradient checks need float inputs")

    with frozen_rounding() as replay:
        ts = [Tensor(a, requires_grad=(i in argnums)) for i, a in enumerate(arrays)]
        out = f(*ts, **static)
        v = rng.standard_normal(out.shape)
        if out.requires_grad:
            out.backward(v)
        engine = [ts[i].grad if ts[i].grad is not None else np.zeros_like(arrays[i])
                  for i in argnums]

        def loss(arrs):
            replay()
            return float(np.sum(v * _evaluate(f, arrs, static)))

        pairs = []  # (engine value, numeric value)
        if method == "fd":
            for k, i in enumerate(argnums):
                num = np.zeros_like(arrays[i])
                flat = num.reshape(-1)
                for j in range(arrays[i].size):
                    plus = [a.copy() if m == i else a for m, a in enumerate(arrays)]
                    minus = [a.copy() if m == i else a for m, a in enumerate(arrays)]
                    plus[i].reshape(-1)[j] += eps
                    minus[i].reshape(-1)[j] -= eps
                    flat[j] = (loss(plus) - loss(minus)) / (2 * eps)
                pairs.append((engine[k].ravel(), num.ravel()))
        else:
            for _ in range(n_directions):
                dirs = {i: rng.standard_normal(arrays[i].shape) for i in argnums}
                plus = [a + eps * dirs[m] if m in dirs else a for m, a in enumerate(arrays)]
                minus = [a - eps * dirs[m] if m in dirs else a for m, a in enumerate(arrays)]
                num = (loss(plus) - loss(minus)) / (2 * eps)
                ana = float(np.sum([np.sum(engine[k] * dirs[i]) for k, i in enumerate(argnums)]))
                pairs.append((np.array([ana]), np.array([num])))

    ana = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
    num = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0)
    err = np.abs(ana - num)
    ok = bool(np.all(err <= atol + rtol * np.abs(num)))
    max_abs = float(err.max(initial=0.0))
    max_rel = float((err / np.maximum(np.abs(num), atol)).max(initial=0.0))
    return GradCheckResult(ok, max_abs, max_rel, method)


# --------------------------------------------------------------------------- primitive cases

@dataclass
class Case:
    """Inputs for one primitive: positional arrays, static keywords, differentiable argnums."""

    args: tuple
    static: dict
    argnums: tuple


def _bshape(rng, shape, broadcast):
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
              broadcast: bool = False) -> Case:
    """Valid float64 inputs for primitive ``name`` built around ``shape``.

    Inputs stay away from kinks, poles and ties (|x| ≥ 0.2 for ``abs``, positive bases for
    ``log`` and ``pow``, distinct values for ``max``), so finite differences are meaningful.
    Spatial primitives (conv2d, pools) and losses choose their own small shapes.
    """
    shape = tuple(int(d) for d in shape) or (3,)
    normal = lambda s: rng.standard_normal(s)  # noqa: E731
    y_shape = _bshape(rng, shape, broadcast)
    ew2 = lambda x, y: Case((x, y), {}, (0, 1))  # noqa: E731
    if name in ("add", "sub", "mul"):
        return ew2(normal(shape), normal(y_shape))
    if name == "div":
        return ew2(normal(shape), _away(rng, y_shape, 0.5))
    if name == "pow":
        return ew2(rng.uniform(0.5, 2.0, shape), rng.uniform(-2, 2, y_shape))
    if name in ("neg", "exp", "sigmoid", "log_sigmoid", "softplus", "round_ste"):
        return Case((3 * normal(shape),), {}, (0,))
    if name == "log":
        return Case((rng.uniform(0.3, 3.0, shape),), {}, (0,))
    if name == "abs":
        return Case((_away(rng, shape),), {}, (0,))
    if name == "maximum":
        y = normal(y_shape)
        return ew2(np.broadcast_to(y, shape) + _away(rng, shape), y)
    if name == "where":
        return Case((rng.random(y_shape) < 0.5, normal(shape), normal(_bshape(rng, shape, broadcast))),
                    {}, (1, 2))
    if name == "clip":
        x = _away(rng, shape, 0.05, 1.5) + 0.5 * rng.choice([-1.0, 1.0], shape)
        return Case((x,), {"lo": -0.5, "hi": 0.5}, (0,))
    if name in ("sum", "mean", "max"):
        axis = None if rng.random() < 0.3 else int(rng.integers(-len(shape), len(shape)))
        return Case((normal(shape),), {"axis": axis, "keepdims": bool(rng.random() < 0.5)}, (0,))
    if name == "reshape":
        return Case((normal(shape),), {"shape": (-1,) + (1,) * int(rng.integers(0, 2))}, (0,))
    if name == "transpose":
        return Case((normal(shape),), {"axes": tuple(rng.permutation(len(shape)).tolist())}, (0,))
    if name == "broadcast_to":
        return Case((normal(_bshape(rng, shape, True)),), {"shape": shape}, (0,))
    if name == "getitem":
        if rng.random() < 0.5:
            index = (slice(None, None, 2),) + (slice(1, None),) * (len(shape) > 1)
        else:
            index = (rng.integers(0, shape[0], size=4),)     # repeats accumulate
        return Case((normal(shape),), {"index": index}, (0,))
    if name in ("concatenate", "stack"):
        k = int(rng.integers(2, 4))
        axis = int(rng.integers(0, len(shape) + (name == "stack")))
        if name == "concatenate":
            xs = tuple(normal(shape[:axis] + (int(rng.integers(1, 4)),) + shape[axis + 1:])
                       for _ in range(k))
        else:
            xs = tuple(normal(shape) for _ in range(k))
        return Case(xs, {"axis": axis}, tuple(range(k)))
    if name == "matmul":
        n, k, m = (int(rng.integers(1, 5)) for _ in range(3))
        kind = rng.integers(0, 4)
        batch = tuple(shape[:-2])
        a_shape = {0: batch + (n, k), 1: (k,), 2: batch + (n, k), 3: _bshape(rng, batch, broadcast) + (n, k)}[kind]
        b_shape = {0: _bshape(rng, batch, broadcast) + (k, m), 1: batch + (k, m), 2: (k,), 3: batch + (k, m)}[kind]
        return ew2(normal(a_shape), normal(b_shape))
    if name == "conv2d":
        n, c, o = (int(rng.integers(1, 4)) for _ in range(3))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        h, w = int(rng.integers(kh, 8)), int(rng.integers(kw, 8))
        static = {"stride": int(rng.integers(1, 3)), "padding": int(rng.integers(0, 2))}
        return Case((normal((n, c, h, w)), normal((o, c, kh, kw))), static, (0, 1))
    if name in ("max_pool2d", "avg_pool2d"):
        k = int(rng.integers(1, 4))
        stride = int(rng.integers(1, k + 1))
        h, w = int(rng.integers(k, 8)), int(rng.integers(k, 8))
        x = normal((int(rng.integers(1, 3)), int(rng.integers(1, 3)), h, w))
        return Case((x,), {"kernel_size": k, "stride": stride}, (0,))
    if name == "log_softmax":
        return Case((2 * normal(shape),), {"axis": int(rng.integers(-len(shape), len(shape)))}, (0,))
    if name == "cross_entropy":
        n, k = int(rng.integers(1, 6)), int(rng.integers(2, 6))
        return Case((2 * normal((n, k)), rng.integers(0, k, size=n)), {}, (0,))
    extra = _EXTRA_CASES.get(name)
    if extra is not None:
        return extra(rng, shape, broadcast)
    raise KeyError(f"no gradient-check case for primitive {name!r}: add one to make_case")


# Primitives registered by other modules (e.g. the Bayesian Bits quantizer) add their case here.
_EXTRA_CASES: dict[str, Callable[[np.random.Generator, tuple, bool], Case]] = {}


def register_case(name: str, maker: Callable[[np.random.Generator, tuple, bool], Case]) -> None:
    """Give a primitive defined outside :mod:`bbits_ref.ops` its gradient-check inputs."""
    _EXTRA_CASES[name] = maker


CASE_SHAPES = [((3,), False), ((2, 3), False), ((2, 3), True), ((2, 1, 4), True), ((3, 2, 4), False)]


def check_primitive(name: str, seed: int = 0, shapes=CASE_SHAPES, method: str = "fd",
                    rtol: float = 1e-5, atol: float = 1e-7) -> GradCheckResult:
    """Check one registered primitive on several shapes; the worst case is reported."""
    prim = PRIMITIVES[name]
    rng = np.random.default_rng(seed)
    worst = GradCheckResult(True, 0.0, 0.0, method)
    for shape, bc in shapes:
        case = make_case(name, rng, shape, bc)
        res = check_grads(lambda *a, **kw: prim(*a, **kw), *case.args, argnums=case.argnums,
                          static=case.static, method=method, rng=rng, rtol=rtol, atol=atol)
        worst = GradCheckResult(worst.ok and res.ok, max(worst.max_abs_err, res.max_abs_err),
                                max(worst.max_rel_err, res.max_rel_err), method)
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    """Check every registered primitive; one line each; exit status 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m bbits_ref.gradcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("fd", "projection"), default="fd")
    parser.add_argument("names", nargs="*", help="primitives to check (default: all)")
    args = parser.parse_args(argv)
    import bbits_ref  # noqa: F401  (registers every primitive, including the quantizer's)
    names = args.names or sorted(PRIMITIVES)
    unknown = [n for n in names if n not in PRIMITIVES]
    if unknown:
        parser.error(f"unknown primitive(s): {', '.join(unknown)}")
    failed = 0
    for name in names:
        res = check_primitive(name, seed=args.seed, method=args.method)
        failed += not res.ok
        print(f"{name:14s} {'ok    ' if res.ok else 'FAILED'} max abs err {res.max_abs_err:.1e}  "
              f"max rel err {res.max_rel_err:.1e}  [{len(CASE_SHAPES)} shapes, {args.method}]")
    print(f"{len(names) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

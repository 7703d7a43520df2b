"""Gradient checking that students can call themselves (float64).

Two checks, both comparing the engine's reverse-mode gradient with central differences:

* :func:`check_grads` with ``method="fd"`` perturbs every element of every input (exact, costly);
* ``method="projection"`` perturbs all inputs at once along one random direction d and compares
  the directional derivative with ⟨∇, d⟩ (the random-projection or dot-product check: one
  backward and two forwards, cheap even for conv-sized tensors).

Functions with straight-through rounding are checked with their rounding offsets frozen
(:func:`bbits_ref.autograd.engine.frozen_rounding`): then the STE gradient is the exact derivative of the
function being differenced.

``python -m bbits_ref.autograd.gradcheck`` checks every registered primitive on several shapes
(broadcasting included), prints one line per primitive with its worst error, and exits non-zero on
any failure.  Notebook: ``notebooks/01_autograd_engine.ipynb``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bbits_ref.autograd import ops  # noqa: F401  (registers the primitives)
from bbits_ref.autograd.gradcheck_cases import CASE_SHAPES, GradCase, make_case, register_case
from bbits_ref.autograd.engine import PRIMITIVES, Tensor, frozen_rounding

__all__ = ["GradCheckResult", "check_grads", "make_case", "register_case", "check_primitive",
           "GradCase", "CASE_SHAPES", "main"]


@dataclass
class GradCheckResult:
    """Outcome of a gradient check: worst absolute and relative error, and whether it passed."""

    ok: bool
    max_abs_err: float
    max_rel_err: float
    method: str

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
    """Check every registered primitive; one line each; exit status 1 on any failure.

    "Every" includes primitives registered outside this package (the quantizer's
    ``bb_quantize``): importing any ``bbits_ref`` module first runs ``bbits_ref/__init__.py``,
    which imports them all, so this lower layer never has to import a higher one.
    """
    parser = argparse.ArgumentParser(prog="python -m bbits_ref.autograd.gradcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("fd", "projection"), default="fd")
    parser.add_argument("names", nargs="*", help="primitives to check (default: all)")
    args = parser.parse_args(argv)
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

"""Run an adapter on the conformance suite and report, case by case, how far it is off.

For every output of every case (spec of the metric)::

    worst abs = max |actual − expected|
    worst rel = worst abs / max(max |expected|, tiny)       (relative to the output's largest value)
    pass      ⇔ worst abs ≤ atol + rtol · max(max |expected|, tiny)

A case passes when all its outputs pass.  A protocol method the adapter does not have (or that
raises ``NotImplementedError``) makes the case *skipped*, never failed.  An exception in the
adapter fails the case and the report shows it.  An output whose expected value is ``None``
(the gradient of an absent gate) accepts ``None`` or zeros.
"""
from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np

from bbits_ref.conformance.suite import METHODS, SCHEMA_VERSION, Case, Suite, load, run_case

__all__ = ["OutputResult", "CaseResult", "Report", "check", "compare", "load_adapter",
           "AdapterImportError"]

TINY = np.finfo(np.float64).tiny
PASS, FAIL, SKIP = "pass", "FAIL", "skipped"


@dataclass
class OutputResult:
    """The comparison of one output of one case."""

    name: str
    ok: bool
    worst_abs: float = 0.0
    worst_rel: float = 0.0
    message: str = ""


@dataclass
class CaseResult:
    """The verdict of one case: ``"pass"``, ``"FAIL"`` or ``"skipped"``."""

    name: str
    method: str
    verdict: str
    outputs: list = field(default_factory=list)
    message: str = ""

    @property
    def worst_abs(self) -> float:
        return max((o.worst_abs for o in self.outputs), default=float("nan"))

    @property
    def worst_rel(self) -> float:
        return max((o.worst_rel for o in self.outputs), default=float("nan"))


@dataclass
class Report:
    """All case results of one check, printable as a table with a summary line."""

    adapter_name: str
    suite_version: str
    created_by: str
    results: list

    def _names(self, verdict: str) -> list:
        return [r.name for r in self.results if r.verdict == verdict]

    @property
    def passed(self) -> list:
        return self._names(PASS)

    @property
    def failed(self) -> list:
        return self._names(FAIL)

    @property
    def skipped(self) -> list:
        return self._names(SKIP)

    @property
    def ok(self) -> bool:
        """True when no case failed (skipped cases do not count against an adapter)."""
        return not self.failed

    @property
    def summary(self) -> str:
        return f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.results] + [4])
        lines = [f"Bayesian Bits conformance: {self.adapter_name}",
                 f"suite {self.suite_version} (schema {SCHEMA_VERSION}, {self.created_by}); "
                 "rounding ties are exact in every formula, no tie allowance (spec §2.3a)",
                 f"{'case':<{width}}  {'worst abs':>10}  {'worst rel':>10}  verdict",
                 "-" * (width + 35)]
        for r in self.results:
            if r.verdict == SKIP:
                lines.append(f"{r.name:<{width}}  {'-':>10}  {'-':>10}  skipped ({r.message})")
                continue
            verdict = r.verdict if not r.message else f"{r.verdict} ({r.message})"
            lines.append(f"{r.name:<{width}}  {r.worst_abs:>10.3e}  {r.worst_rel:>10.3e}  "
                         f"{verdict}")
        bad = [(r, o) for r in self.results for o in r.outputs if not o.ok]
        if bad:
            lines += ["", "failed outputs:"]
            lines += [f"  {r.name} :: {o.name}: {o.message}" for r, o in bad]
        lines += ["", self.summary]
        return "\n".join(lines)


# --------------------------------------------------------------------------- comparison

def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):                # a torch tensor slipped through: be helpful
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def compare(name: str, actual, expected, atol: float, rtol: float) -> OutputResult:
    """Compare one output (see the module docstring for the metric)."""
    if expected is None:
        if actual is None:
            return OutputResult(name, True)
        try:
            zero = not np.any(_as_array(actual))
        except (TypeError, ValueError):
            zero = False
        return OutputResult(name, zero, message="" if zero else
                            "expected None (no such gate), got a non-zero value")
    if actual is None:
        return OutputResult(name, False, float("inf"), float("inf"),
                            "missing: the adapter returned None or no such output")
    try:
        a = _as_array(actual)
    except (TypeError, ValueError) as exc:
        return OutputResult(name, False, float("inf"), float("inf"),
                            f"not convertible to a float array ({exc})")
    b = expected
    if a.shape != b.shape:
        if a.size == b.size == 1:
            a = a.reshape(b.shape)
        else:
            return OutputResult(name, False, float("inf"), float("inf"),
                                f"shape {a.shape}, expected {b.shape}")
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, TINY)
    if not np.all(np.isfinite(a)):
        return OutputResult(name, False, float("inf"), float("inf"), "contains NaN or inf")
    diff = np.abs(a - b)
    worst = float(diff.max()) if diff.size else 0.0
    limit = atol + rtol * scale
    ok = worst <= limit
    message = ""
    if not ok:
        where = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
        message = (f"max|a-b| = {worst:.3e} > atol {atol:.1e} + rtol {rtol:.1e} x {scale:.3e}"
                   f"; worst at index {tuple(int(i) for i in where)}: got {a[where]:.9g}, "
                   f"expected {b[where]:.9g}")
    return OutputResult(name, ok, worst, worst / scale, message)


def _check_case(adapter, case: Case) -> CaseResult:
    fn = getattr(adapter, case.method, None)
    if not callable(fn):
        return CaseResult(case.name, case.method, SKIP, message="not implemented")
    try:
        actual = run_case(adapter, case)
    except NotImplementedError as exc:
        return CaseResult(case.name, case.method, SKIP,
                          message=f"not implemented{': ' + str(exc) if str(exc) else ''}")
    except Exception as exc:                    # report the adapter's error, keep checking
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return CaseResult(case.name, case.method, FAIL,
                          message=f"error: {type(exc).__name__}: {exc} "
                                  f"[{last.filename}:{last.lineno}]")
    outputs = [compare(key, actual.get(key), expected, *case.tolerance(key))
               for key, expected in case.expected.items()]
    return CaseResult(case.name, case.method, PASS if all(o.ok for o in outputs) else FAIL,
                      outputs)


def check(suite, adapter, select=None) -> Report:
    """Run ``adapter`` on every case of ``suite`` (a directory or a loaded :class:`Suite`).

    ``select``: optional fnmatch patterns (e.g. ``["quantize/*"]``); only matching cases run.
    """
    suite = suite if isinstance(suite, Suite) else load(suite)
    cases = suite.cases
    if select:
        patterns = [select] if isinstance(select, str) else list(select)
        cases = [c for c in cases if any(fnmatchcase(c.name, p) for p in patterns)]
        if not cases:
            raise ValueError(f"no case matches {patterns}; case names look like "
                             f"{suite.cases[0].name!r}")
    results = [_check_case(adapter, case) for case in cases]
    name = getattr(adapter, "name", None) or type(adapter).__name__
    return Report(str(name), suite.suite_version, suite.manifest.get("created_by", "?"), results)


# --------------------------------------------------------------------------- --impl

class AdapterImportError(ImportError):
    """``--impl MODULE:ATTR`` could not be resolved to an adapter."""


def load_adapter(spec: str):
    """Resolve ``"MODULE:ATTR"`` to an adapter: an instance, or a class instantiated with no
    arguments (e.g. ``bbits_ref.conformance.reference:adapter``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AdapterImportError(f"--impl takes MODULE:ATTR, e.g. "
                                 f"bbits_ref.conformance.reference:adapter; got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterImportError(f"cannot import module {module_name!r} named in --impl "
                                 f"{spec!r}: {exc}.  Is it installed or on PYTHONPATH?") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise AdapterImportError(f"module {module_name!r} has no attribute {attr!r} "
                                     f"(--impl {spec!r}): {exc}") from exc
        except Exception as exc:            # e.g. a lazily built adapter that needs a setting
            raise AdapterImportError(f"building the adapter {spec} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise AdapterImportError(f"{spec} is a class; it must be constructible with no "
                                     f"arguments to serve as an adapter "
                                     f"({type(exc).__name__}: {exc})") from exc
    if not any(callable(getattr(obj, m, None)) for m in METHODS):
        raise AdapterImportError(f"{spec} resolved to {obj!r}, which has none of the protocol "
                                 "methods (quantize, hard_concrete, …); see "
                                 "bbits_ref.conformance for the protocol")
    return obj

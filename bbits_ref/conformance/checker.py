"""Run an adapter on the conformance suite and report, case by case, how far it is off.

For every output of every case::

    worst abs = max |actual − expected|
    worst rel = worst abs / max(max |expected|, tiny)       (relative to the output's largest value)
    pass      ⇔ worst abs ≤ atol + rtol · max(max |expected|, tiny)

A case passes when all its outputs pass.  An output whose expected value is ``None`` (the
gradient of an absent gate) accepts ``None`` or zeros.  A protocol method the adapter does not
have (or that raises ``NotImplementedError``) makes the case *skipped*, never failed.

:func:`check` runs the adapter in a child process (:mod:`bbits_ref.conformance.worker`): an
adapter that raises, ends its process, hangs past ``timeout`` or returns the wrong type makes
*its* case "ERROR" (could not run) and the check goes on.  The suite is loaded and validated
before the adapter starts.  :func:`check_in_process` calls the adapter in this process, with no
isolation and no time limit: for adapters that cannot be sent to a child (defined in a notebook
cell) and for debugging.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np

from bbits_ref._errors import UsageError
from bbits_ref.conformance.protocol import Suite
from bbits_ref.conformance.report import ERROR, FAIL, PASS, SKIP, CaseResult, OutputResult, Report
from bbits_ref.conformance.storage import load, suite_digest
from bbits_ref.conformance.worker import (DEFAULT_TIMEOUT, STARTUP_TIMEOUT, AdapterProcess,
                                          Outcome, Unconvertible, run_call)

__all__ = ["check", "check_in_process", "compare", "select_cases"]

TINY = np.finfo(np.float64).tiny


def compare(name: str, actual, expected, atol: float, rtol: float) -> OutputResult:
    """Compare one output (see the module docstring for the metric)."""
    if isinstance(actual, Unconvertible):
        return OutputResult(name, False, float("inf"), float("inf"), str(actual))
    if expected is None:
        if actual is None:
            return OutputResult(name, True)
        zero = not np.any(np.asarray(actual, dtype=np.float64))
        return OutputResult(name, zero, message="" if zero else
                            "expected None (no such gate), got a non-zero value")
    if actual is None:
        return OutputResult(name, False, float("inf"), float("inf"),
                            "missing: the adapter returned None or no such output")
    a = np.asarray(actual, dtype=np.float64)
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
    atol_a = np.asarray(atol, dtype=np.float64)
    if atol_a.ndim == 1:                        # one atol per index of the first axis
        if b.ndim == 0 or atol_a.size != b.shape[0]:
            return OutputResult(name, False, float("inf"), float("inf"),
                                f"the case gives {atol_a.size} tolerances for an output of "
                                f"shape {b.shape}: the suite is inconsistent")
        atol_a = atol_a.reshape((-1,) + (1,) * (b.ndim - 1))
    limit = atol_a + rtol * scale
    over = diff - limit
    ok = bool(np.all(over <= 0))
    message = ""
    if not ok:
        where = np.unravel_index(int(np.argmax(over)), diff.shape) if diff.ndim else ()
        lim = float(np.broadcast_to(limit, diff.shape)[where])
        message = (f"|a-b| = {float(diff[where]):.3e} > tolerance {lim:.1e} (atol + rtol "
                   f"{rtol:.1e} x {scale:.3e}) at index {tuple(int(i) for i in where)}: got "
                   f"{a[where]:.9g}, expected {b[where]:.9g}; max|a-b| = {worst:.3e}")
    return OutputResult(name, ok, worst, worst / scale, message)


def _verdict(case, outcome: Outcome) -> CaseResult:
    seconds = outcome.seconds
    if outcome.status == "skipped":
        return CaseResult(case.name, case.method, SKIP, message=outcome.message, seconds=seconds)
    if outcome.status == "error":
        return CaseResult(case.name, case.method, ERROR, message=outcome.message, seconds=seconds)
    outputs = [compare(key, outcome.outputs.get(key), expected, *case.tolerance(key))
               for key, expected in case.expected.items()]
    return CaseResult(case.name, case.method, PASS if all(o.ok for o in outputs) else FAIL,
                      outputs, seconds=seconds)


def select_cases(suite: Suite, select=None) -> list:
    """The cases whose id matches one of the fnmatch patterns ``select`` (all when None)."""
    if not select:
        return list(suite.cases)
    patterns = [select] if isinstance(select, str) else list(select)
    cases = [c for c in suite.cases if any(fnmatchcase(c.name, p) for p in patterns)]
    if not cases:
        raise UsageError(f"no case matches {patterns}; case ids look like "
                         f"{suite.cases[0].name!r} (patterns such as 'quantize/*')")
    return cases


def _report(suite: Suite, name: str, results: list) -> Report:
    return Report(str(name), suite.suite_version, suite.manifest.get("created_by", "?"), results,
                  suite_digest((c.name, e["case_sha256"])
                               for c, e in zip(suite.cases, suite.manifest["cases"])))


def _run_all(cases, run) -> list:
    return [_verdict(case, run(case.method, case.inputs)) for case in cases]


def check(suite, adapter, select=None, *, timeout: float = DEFAULT_TIMEOUT,
          startup_timeout: float = STARTUP_TIMEOUT) -> Report:
    """Run ``adapter`` on the cases of ``suite`` (a directory or a loaded :class:`Suite`), each
    call in a child process with a time limit of ``timeout`` seconds.

    ``adapter``: ``"MODULE:ATTR"``, or an object whose class the child can import (it is
    pickled).  ``select``: optional fnmatch patterns (e.g. ``["quantize/*"]``).  Raises
    :class:`~bbits_ref.conformance.storage.SuiteError` for a bad suite and
    :class:`~bbits_ref.conformance.worker.AdapterImportError` for an adapter that cannot be
    built, both before any case runs; everything the adapter does while running a case ends up
    in the report.
    """
    suite = suite if isinstance(suite, Suite) else load(suite)
    cases = select_cases(suite, select)
    with AdapterProcess(adapter, timeout=timeout, startup_timeout=startup_timeout) as process:
        results = _run_all(cases, process.run)
        return _report(suite, process.name, results)


def check_in_process(suite, adapter, select=None) -> Report:
    """:func:`check` without the child process: the adapter runs here, with no time limit, and an
    adapter that ends the process ends the caller.  For adapters defined in a notebook cell
    (which a child process cannot import) and for debugging with breakpoints."""
    suite = suite if isinstance(suite, Suite) else load(suite)
    cases = select_cases(suite, select)
    results = _run_all(cases, lambda method, inputs: run_call(adapter, method, inputs))
    name = getattr(adapter, "name", None) or type(adapter).__name__
    return _report(suite, name, results)

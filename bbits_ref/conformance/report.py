"""The result of a check: per output, per case, and for the whole run; as text, JSON or JUnit XML.

A case is ``"pass"``, ``"FAIL"`` (an output is off), ``"ERROR"`` (it could not run: the adapter
raised, ended its process, hung past the time limit or returned something unreadable) or
``"skipped"`` (the adapter lacks the method or raised ``NotImplementedError``).  A report is
:attr:`Report.ok` when nothing failed and nothing errored.  :meth:`Report.write_json` and
:meth:`Report.write_junit` write files for CI, atomically.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from bbits_ref._files import atomic_write_bytes, write_json
from bbits_ref.conformance.protocol import SCHEMA_VERSION

__all__ = ["OutputResult", "CaseResult", "Report", "PASS", "FAIL", "ERROR", "SKIP"]

PASS, FAIL, ERROR, SKIP = "pass", "FAIL", "ERROR", "skipped"
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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
    """The verdict of one case: ``"pass"``, ``"FAIL"``, ``"ERROR"`` or ``"skipped"``."""

    name: str
    method: str
    verdict: str
    outputs: list = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def worst_abs(self) -> float:
        return max((o.worst_abs for o in self.outputs), default=float("nan"))

    @property
    def worst_rel(self) -> float:
        return max((o.worst_rel for o in self.outputs), default=float("nan"))

    @property
    def failure_text(self) -> str:
        """The reason in one paragraph: the message and every failed output."""
        lines = [self.message] if self.message else []
        lines += [f"{o.name}: {o.message}" for o in self.outputs if not o.ok]
        return "\n".join(lines)


def _finite(x: float):
    """JSON has no NaN or infinity: NaN → null, ±inf → "inf"/"-inf"."""
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("?", text)


@dataclass
class Report:
    """All case results of one check, printable as a table with a summary line."""

    adapter_name: str
    suite_version: str
    created_by: str
    results: list
    suite_sha256: str = ""

    def _names(self, verdict: str) -> list:
        return [r.name for r in self.results if r.verdict == verdict]

    @property
    def passed(self) -> list:
        return self._names(PASS)

    @property
    def failed(self) -> list:
        return self._names(FAIL)

    @property
    def errors(self) -> list:
        """Cases that could not run (the adapter raised, crashed, hung or returned garbage)."""
        return self._names(ERROR)

    @property
    def skipped(self) -> list:
        return self._names(SKIP)

    @property
    def ok(self) -> bool:
        """True when no case failed or errored (skipped cases do not count against an adapter)."""
        return not self.failed and not self.errors

    @property
    def summary(self) -> str:
        return (f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.errors)} "
                f"could not run, {len(self.skipped)} skipped")

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.results] + [4])
        lines = [f"Bayesian Bits conformance: {self.adapter_name}",
                 f"suite {self.suite_version} (schema {SCHEMA_VERSION}, {self.created_by}); "
                 "rounding ties are exact in every formula, no tie allowance (§2.3a)",
                 f"{'case':<{width}}  {'worst abs':>10}  {'worst rel':>10}  verdict",
                 "-" * (width + 35)]
        for r in self.results:
            if r.verdict in (SKIP, ERROR):
                lines.append(f"{r.name:<{width}}  {'-':>10}  {'-':>10}  {r.verdict} "
                             f"({r.message})")
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

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data."""
        return {
            "adapter": self.adapter_name, "suite_version": self.suite_version,
            "schema_version": SCHEMA_VERSION, "suite_sha256": self.suite_sha256,
            "created_by": self.created_by, "ok": self.ok,
            "counts": {"passed": len(self.passed), "failed": len(self.failed),
                       "could_not_run": len(self.errors), "skipped": len(self.skipped)},
            "cases": [{"name": r.name, "method": r.method, "verdict": r.verdict,
                       "message": r.message, "seconds": round(r.seconds, 6),
                       "worst_abs": _finite(r.worst_abs), "worst_rel": _finite(r.worst_rel),
                       "outputs": [{"name": o.name, "ok": o.ok, "worst_abs": _finite(o.worst_abs),
                                    "worst_rel": _finite(o.worst_rel), "message": o.message}
                                   for o in r.outputs]}
                      for r in self.results]}

    def write_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON, atomically."""
        write_json(path, self.to_dict())

    def junit_xml(self) -> bytes:
        """JUnit XML: one ``testcase`` per case, ``failure`` / ``error`` / ``skipped`` children."""
        root = ET.Element("testsuites")
        suite = ET.SubElement(root, "testsuite", {
            "name": _xml_text(f"bbits_ref conformance {self.suite_version}: {self.adapter_name}"),
            "tests": str(len(self.results)), "failures": str(len(self.failed)),
            "errors": str(len(self.errors)), "skipped": str(len(self.skipped)),
            "time": f"{sum(r.seconds for r in self.results):.3f}"})
        props = ET.SubElement(suite, "properties")
        for key, value in (("suite_version", self.suite_version), ("suite_sha256",
                           self.suite_sha256), ("created_by", self.created_by),
                           ("adapter", self.adapter_name)):
            ET.SubElement(props, "property", {"name": key, "value": _xml_text(str(value))})
        for r in self.results:
            case = ET.SubElement(suite, "testcase", {"classname": f"conformance.{r.method}",
                                                     "name": r.name, "time": f"{r.seconds:.3f}"})
            text = _xml_text(r.failure_text)
            first = text.splitlines()[0] if text else r.verdict
            if r.verdict == FAIL:
                ET.SubElement(case, "failure", {"message": first}).text = text
            elif r.verdict == ERROR:
                ET.SubElement(case, "error", {"message": first}).text = text
            elif r.verdict == SKIP:
                ET.SubElement(case, "skipped", {"message": _xml_text(r.message)})
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def write_junit(self, path) -> None:
        """Write :meth:`junit_xml` to ``path``, atomically."""
        atomic_write_bytes(path, self.junit_xml())

"""Command line of the conformance suite.

::

    bbits-ref conformance export DIR                       write the suite (one .npz per case)
    bbits-ref conformance check DIR --impl MODULE:ATTR     run an adapter on it, print the report

(``python -m bbits_ref.conformance export DIR`` and ``… check …`` do the same.)  ``check`` runs
the adapter in a child process, one case at a time, each within ``--timeout`` seconds, prints a
table and a summary line, and can write ``--junit FILE`` (JUnit XML) and ``--json FILE`` for CI.
Exit status: 0 every case passed or was skipped; 6 a case failed or could not run
(ConformanceFailure); 2 bad usage (an --impl that cannot be imported); 3 a missing, incomplete or
corrupted suite; 4 an export folder (or report file) that holds someone else's files.
:func:`run` raises these errors; :func:`main` prints them as one line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from bbits_ref._errors import BBitsError, ConformanceFailure, RunDirError, UsageError

__all__ = ["add_subcommand", "build_parser", "run", "main"]

EXAMPLES = """examples:
  %(prog)s export /tmp/bb-suite
  %(prog)s check /tmp/bb-suite --impl bbits_ref.conformance.reference:adapter
  %(prog)s check /tmp/bb-suite --impl my_package.bb_adapter:Adapter -k 'quantize/*' \\
      --timeout 30 --junit conformance.xml --json conformance.json
  BBITS_OFFICIAL_REPO=~/src/BayesianBits %(prog)s check /tmp/bb-suite \\
      --impl bbits_ref.conformance.official:adapter
"""
_MAX_REPORT_BYTES = 256 * 2**20


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_actions(parser: argparse.ArgumentParser) -> None:
    from bbits_ref.conformance.worker import DEFAULT_TIMEOUT

    sub = parser.add_subparsers(dest="conformance_command", metavar="{export,check}")
    sub.required = True
    p = sub.add_parser("export", help="write the conformance suite to a directory",
                       description="Generate the cases with the float64 reference and write one "
                                   ".npz per case plus manifest.json, into a new or empty "
                                   "directory or over an earlier export (only its files are "
                                   "replaced).")
    p.add_argument("dir", help="output directory (new, empty, or an earlier export)")
    p = sub.add_parser("check", help="run an implementation's adapter on an exported suite",
                       description="Validate the suite, then run the adapter on every case in a "
                                   "child process and print a table (case, worst abs, worst "
                                   "rel, verdict) and a summary line.  Exit status: 0 all "
                                   "passed or skipped, 6 a case failed or could not run, 2 bad "
                                   "usage, 3 a bad suite.")
    p.add_argument("dir", help="directory written by 'export'")
    p.add_argument("--impl", required=True, metavar="MODULE:ATTR",
                   help="the adapter: an instance, or a class built with no arguments, e.g. "
                        "bbits_ref.conformance.reference:adapter")
    p.add_argument("-k", "--select", action="append", metavar="PATTERN",
                   help="run only cases whose id matches this fnmatch pattern (repeatable)")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit per case (default {DEFAULT_TIMEOUT:g}); a case past it "
                        "could not run, and the adapter process is restarted")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    p.add_argument("--json", metavar="FILE", help="also write a JSON report to FILE")


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add ``conformance {export,check}`` to the ``bbits-ref`` subparsers."""
    p = subparsers.add_parser("conformance", help="export the conformance suite or check an "
                              "implementation against it", description=__doc__,
                              epilog=EXAMPLES.replace("%(prog)s", "bbits-ref conformance"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_actions(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bbits_ref.conformance``."""
    parser = argparse.ArgumentParser(prog="python -m bbits_ref.conformance", description=__doc__,
                                     epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_actions(parser)
    return parser


def _is_our_report(path: Path, kind: str) -> bool:
    """True when ``path`` is a report an earlier ``check`` wrote (so it may be replaced)."""
    if path.stat().st_size > _MAX_REPORT_BYTES:
        return False
    try:
        if kind == "json":
            data = json.loads(path.read_bytes())
            return isinstance(data, dict) and {"adapter", "suite_sha256", "cases"} <= set(data)
        root = ET.fromstring(path.read_bytes())
        suite = root.find("testsuite")
        return root.tag == "testsuites" and suite is not None and \
            suite.get("name", "").startswith("bbits_ref conformance")
    except (ValueError, ET.ParseError, RecursionError):
        return False


def _report_path(value: str | None, kind: str) -> Path | None:
    """Check a --junit/--json path before the run: a new file, or a report we wrote earlier."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"--{kind} {value} is a directory; give a file name, e.g. "
                         f"{path / ('conformance.xml' if kind == 'junit' else 'conformance.json')}")
    if path.exists() and not _is_our_report(path, "json" if kind == "json" else "xml"):
        raise RunDirError(f"--{kind} {value} exists and is not a conformance report bbits_ref "
                          "wrote: refusing to overwrite it; choose another file name")
    return path


def run(args: argparse.Namespace) -> int:
    """Run ``export`` or ``check``; returns 0, or raises a :mod:`bbits_ref._errors` error."""
    from bbits_ref.conformance.checker import check
    from bbits_ref.conformance.storage import export, load

    if args.conformance_command == "export":
        manifest = export(args.dir)
        print(f"wrote the conformance suite to {manifest.parent} ({manifest.name})")
        return 0
    junit, json_path = _report_path(args.junit, "junit"), _report_path(args.json, "json")
    suite = load(args.dir)                     # validated before the adapter starts
    report = check(suite, args.impl, select=args.select, timeout=args.timeout)
    print(report, flush=True)
    if junit is not None:
        report.write_junit(junit)
    if json_path is not None:
        report.write_json(json_path)
    if not report.ok:
        raise ConformanceFailure(f"{report.adapter_name}: {report.summary} (suite "
                                 f"{report.suite_version}); the table above names each case")
    return 0


def main(argv=None) -> int:
    """``python -m bbits_ref.conformance``: run, and print an error as one line."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BBitsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

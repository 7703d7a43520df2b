"""Command line of the conformance suite.

::

    bbits-ref conformance export DIR                       write the suite (one .npz per case)
    bbits-ref conformance check DIR --impl MODULE:ATTR     run an adapter on it, print the report

(``python -m bbits_ref.conformance export DIR`` and ``… check …`` do the same.)  ``check`` exits
with 0 when every case passed or was skipped, 1 when a case failed, 2 on bad usage (an --impl
that cannot be imported, a missing or corrupted suite).
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_subcommand", "build_parser", "run", "main"]

EXAMPLES = """examples:
  %(prog)s export /tmp/bb-suite
  %(prog)s check /tmp/bb-suite --impl bbits_ref.conformance.reference:adapter
  %(prog)s check /tmp/bb-suite --impl my_package.bb_adapter:Adapter -k 'quantize/*'
  BBITS_OFFICIAL_REPO=~/src/BayesianBits %(prog)s check /tmp/bb-suite \\
      --impl bbits_ref.conformance.official:adapter
"""


def _add_actions(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="conformance_command", metavar="{export,check}")
    sub.required = True
    p = sub.add_parser("export", help="write the conformance suite to a directory",
                       description="Generate the cases with the float64 reference and write one "
                                   ".npz per case plus manifest.json.")
    p.add_argument("dir", help="output directory (new, empty, or an earlier export)")
    p = sub.add_parser("check", help="run an implementation's adapter on an exported suite",
                       description="Run the adapter on every case and print a table (case, "
                                   "worst abs, worst rel, verdict) and a summary line.  Exit "
                                   "status: 0 all passed or skipped, 1 a case failed, 2 bad "
                                   "usage.")
    p.add_argument("dir", help="directory written by 'export'")
    p.add_argument("--impl", required=True, metavar="MODULE:ATTR",
                   help="the adapter: an instance, or a class built with no arguments, e.g. "
                        "bbits_ref.conformance.reference:adapter")
    p.add_argument("-k", "--select", action="append", metavar="PATTERN",
                   help="run only cases whose name matches this fnmatch pattern (repeatable)")


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


def run(args: argparse.Namespace) -> int:
    """Run ``export`` or ``check``; returns the exit status."""
    from bbits_ref.conformance.checker import AdapterImportError, check, load_adapter
    from bbits_ref.conformance.suite import SuiteError, export

    if args.conformance_command == "export":
        try:
            manifest = export(args.dir)
        except SuiteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote the conformance suite to {manifest.parent} ({manifest.name})")
        return 0
    try:
        adapter = load_adapter(args.impl)
        report = check(args.dir, adapter, select=args.select)
    except (AdapterImportError, SuiteError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))

"""``bbits-ref compare RUN_A RUN_B``: two training runs side by side, and their BOP–accuracy paths."""
from __future__ import annotations

import argparse
from pathlib import Path

from bbits_ref._errors import RunDirError, UsageError

__all__ = ["add_subcommand", "cmd_compare"]


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="compare two run folders (accuracy, BOPs, bit widths, gate trajectories)",
        description="Compare two training runs side by side, e.g. the reference and a fast "
                    "implementation trained with the same recipe and seed.")
    p.add_argument("run_a", metavar="RUN_A", help="a run folder written by bbits-ref train")
    p.add_argument("run_b", metavar="RUN_B", help="another run folder")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="largest gate-probability difference at the same step that still counts "
                        "as the same trajectory (default 1e-4)")
    p.add_argument("--plot", metavar="PNG",
                   help="where to draw the two BOP–accuracy paths (default: "
                        "compare-<A>-vs-<B>.png in the current folder)")
    p.add_argument("--force", action="store_true", help="replace an existing --plot file")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    from bbits_ref.plotting import save_compare_figure
    from bbits_ref.training.compare import compare_runs, format_comparison

    try:
        comparison = compare_runs(args.run_a, args.run_b, tol=args.tol)
    except ValueError as exc:
        if isinstance(exc, UsageError) or type(exc) is not ValueError:
            raise
        raise UsageError(f"--tol: {exc}") from None
    print(format_comparison(comparison))
    a, b = comparison.a, comparison.b
    plot = Path(args.plot) if args.plot else Path(f"compare-{a.label}-vs-{b.label}.png")
    if plot.exists() and not args.force:
        raise RunDirError(f"{plot} exists; pass --force to replace it or --plot for another file")
    if not (a.epochs() or b.epochs()):
        print("no finished epoch in either run: no plot")
        return 0
    labels = (a.label, b.label) if a.label != b.label else (f"A: {a.path}", f"B: {b.path}")
    histories = {label: run.history for label, run in zip(labels, (a, b)) if run.epochs()}
    print(f"wrote {save_compare_figure(histories, plot)}")
    return 0

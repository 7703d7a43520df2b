"""The ``bbits-ref`` command.

Subcommands::

    bbits-ref train      train a Bayesian Bits model (no arguments: LeNet-5 on the embedded MNIST subset)
    bbits-ref sweep      several μ values (and baselines) in parallel worker processes -> Pareto table
    bbits-ref figures    render the figures of a run or a sweep directory
    bbits-ref info       the bit-width and pruning table of a checkpoint
    bbits-ref readout    the readout table of a freshly built model (no training)
    bbits-ref conformance  export the conformance suite / check an implementation against it
    bbits-ref gradcheck  check every primitive's gradient (same as python -m bbits_ref.autograd.gradcheck)
"""
from __future__ import annotations

import argparse
from typing import Sequence

from bbits_ref.cli.options import add_train_options
from bbits_ref.cli.run import cmd_figures, cmd_gradcheck, cmd_info, cmd_readout, cmd_train
from bbits_ref.cli.sweep import cmd_sweep

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbits-ref", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train a Bayesian Bits model")
    add_train_options(p)
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-mu<μ>-seed<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train several μ values in parallel and build a Pareto table")
    add_train_options(p)
    p.add_argument("--mus", default="0.01,0.1,1", help="comma-separated μ values")
    p.add_argument("--baseline", action="append",
                   help="add a baseline run: wXaY (uniform fixed bits), quant-only, "
                        "prune-only-wXaY, fp32 (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--out", help="sweep directory")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("figures", help="render the figures of a run or sweep directory")
    p.add_argument("path")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("info", help="bit widths and pruning of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint.npz or a run directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("readout", help="readout table of a freshly built model")
    p.add_argument("--model", default="lenet5", choices=["lenet5", "vgg7"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_readout)

    from bbits_ref.conformance.cli import add_subcommand as add_conformance
    add_conformance(sub)

    p = sub.add_parser("gradcheck", help="check every primitive's gradient")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_gradcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)



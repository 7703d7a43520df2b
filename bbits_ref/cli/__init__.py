"""The ``bbits-ref`` command.

Subcommands::

    bbits-ref train      train a Bayesian Bits model (no arguments: LeNet-5 on the embedded MNIST subset)
    bbits-ref sweep      several μ values (and baselines) in parallel worker processes -> Pareto table
    bbits-ref figures    render the figures of a run or a sweep directory
    bbits-ref info       the bit-width and pruning table of a checkpoint
    bbits-ref readout    the readout table of a freshly built model (no training)
    bbits-ref conformance  export the conformance suite / check an implementation against it
    bbits-ref gradcheck  check every primitive's gradient (same as python -m bbits_ref.autograd.gradcheck)

Every error a user can fix is one line on stderr, ``bbits-ref: <what was expected, what was
given, what to do>``, and a documented exit code (``bbits-ref --help`` lists them); anything
else is a bug, shown as one line too unless ``--debug`` (or ``BBITS_DEBUG=1``) asks for the
traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from typing import Sequence

from bbits_ref._errors import DISK_EXIT_CODE, BBitsError, exit_code_table

from bbits_ref.cli.options import add_train_options
from bbits_ref.cli.run import (add_train_arguments, cmd_figures, cmd_gradcheck, cmd_info,
                               cmd_readout, cmd_train)
from bbits_ref.cli.sweep import add_sweep_options, cmd_sweep

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbits-ref", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes:\n" + exit_code_table())
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (also: BBITS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train a Bayesian Bits model")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train several μ values in parallel and build a Pareto table")
    add_train_options(p)
    add_sweep_options(p)
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

    from bbits_ref.cli.compare import add_subcommand as add_compare
    add_compare(sub)

    p = sub.add_parser("gradcheck", help="check every primitive's gradient")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_gradcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bbits-ref``; returns the exit code (see :data:`bbits_ref._errors.EXIT_CODES`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("BBITS_DEBUG", "") not in ("", "0")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except BBitsError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code)
    except OSError as exc:
        if debug:
            raise
        if exc.errno in _DISK_ERRNOS:
            where = exc.filename if exc.filename is not None else "a file"
            return _fail(f"cannot write {where}: {exc.strerror or exc}; free some disk space "
                         "or use a folder you can write to (--out)", DISK_EXIT_CODE)
        return _bug(exc)
    except KeyboardInterrupt:
        if debug:
            raise
        return _fail("interrupted; the last checkpoint of a training run is kept (continue "
                     "it with bbits-ref train --resume RUN_DIR)", 130)
    except Exception as exc:            # anything else is a bug in bbits_ref
        if debug:
            raise
        return _bug(exc)


_DISK_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM,
                getattr(errno, "EDQUOT", errno.ENOSPC)}


def _fail(message: str, code: int) -> int:
    one_line = " ".join(message.split())
    print(f"bbits-ref: {one_line}", file=sys.stderr, flush=True)
    return code


def _bug(exc: BaseException) -> int:
    return _fail(f"unexpected error {type(exc).__name__}: {exc} -- this is a bug in bbits_ref; "
                 "rerun with --debug for the traceback and report it", 1)


class _sigterm_as_interrupt:
    """SIGTERM (e.g. a job scheduler's kill) raises KeyboardInterrupt, like Ctrl-C, while
    ``bbits-ref`` runs in the main thread; the previous handler is restored afterwards."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False

"""The errors a user can fix, each with the exit code ``bbits-ref`` ends with.

Library functions raise these (or subclasses); the command line prints ``str(error)`` as one line
and exits with ``error.exit_code`` (the table is in README.md, "Exit codes").  A bug in bbits_ref
is anything else, and shows its traceback.  Every class also derives from the builtin exception a
Python caller would expect (``ValueError``, ``OSError``...), so library code can catch either.
"""
from __future__ import annotations

__all__ = ["BBitsError", "UsageError", "DataFileError", "RunDirError", "DivergedError",
           "ConformanceFailure", "EXIT_CODES", "DISK_EXIT_CODE", "exit_code_table"]


class BBitsError(Exception):
    """Base class: an error the user can fix; its message says what was expected and what to do."""

    exit_code = 1


class UsageError(BBitsError, ValueError):
    """An invalid setting: a value out of range, NaN, an unknown choice, incompatible options.

    ``setting`` names the configuration field at fault, when there is one, so that the command
    line can name its flag.
    """

    exit_code = 2

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class DataFileError(BBitsError, ValueError):
    """A file the package reads (dataset, checkpoint, run file, suite) is missing, truncated,
    corrupted, or not what it claims to be.  The message names the file."""

    exit_code = 3


class RunDirError(BBitsError):
    """A run or output folder cannot be used as asked: it holds files bbits_ref did not write,
    belongs to another run, or cannot be written."""

    exit_code = 4


class DivergedError(BBitsError, FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter (or a range β ≤ 0)."""

    exit_code = 5


class ConformanceFailure(BBitsError):
    """An implementation failed conformance cases (or could not be run on them)."""

    exit_code = 6


#: exit code -> meaning, for the README table and ``bbits-ref --help``.
EXIT_CODES = {
    0: "success",
    1: "an unexpected error (a bug: rerun with --debug or BBITS_DEBUG=1 and report the traceback)",
    2: "invalid command-line usage or setting (UsageError)",
    3: "a missing, truncated or corrupted input file (DataFileError)",
    4: "an output or run folder that cannot be used as asked (RunDirError)",
    5: "training diverged (DivergedError); the last good checkpoint is named",
    6: "conformance check failed (ConformanceFailure)",
    7: "the disk is full or a file cannot be written (OSError: ENOSPC, EDQUOT, EACCES, EROFS)",
    130: "interrupted (Ctrl-C or SIGTERM); a resumable checkpoint is kept",
}

#: The exit code of a full disk, an exceeded quota or a folder that cannot be written.
DISK_EXIT_CODE = 7


def exit_code_table() -> str:
    """The exit codes as aligned text lines (``bbits-ref --help`` prints it)."""
    return "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())

"""Writing files safely: all or nothing, through a temporary file and ``os.replace``.

Used by every layer that writes (checkpoints, run files, figures, conformance suites), so it sits
at the bottom of the package and imports nothing from it.

The temporary file of ``path`` is ``.<name>.<random>.tmp`` in the same folder: a write killed
before ``os.replace`` (SIGKILL, power loss) leaves it behind, never a half-written ``path``.
:func:`temp_files_of` finds such leftovers so that the owner of ``path`` (e.g. a training run
at its next start) can remove them.  Files are created with the permissions ``open()`` would
give (0o666 minus the umask), not mkstemp's private 0o600.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "temp_files_of",
           "current_umask"]

TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)          # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (all or nothing).

    An ``OSError`` (full disk, read-only folder...) is re-raised with ``path`` as its filename,
    so the message names the file that could not be written; the previous ``path`` is intact
    and the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its filename (os.write and fsync errors carry none)."""
    if exc.errno is None or exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def temp_files_of(path) -> list[Path]:
    """The leftover temporary files of interrupted writes of ``path`` (``.<name>.*.tmp``)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}."
    return sorted(p for p in path.parent.iterdir()
                  if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX)
                  and len(p.name) > len(prefix) + len(TEMP_SUFFIX) and p.is_file()
                  and not p.is_symlink())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

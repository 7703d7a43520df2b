"""Fetching a file from a list of mirrors, checked before it is put where a loader looks.

:func:`fetch` streams each attempt into a hidden temporary file beside the destination, checks
it (size, then the caller's ``check``: checksum and format), and only then links it into place.
So a dropped connection, a wrong file or a checksum mismatch leaves nothing behind, and an
existing file is never overwritten (:func:`ensure_file` keeps a valid one and refuses to
replace an invalid one: it may be the user's).  Any URL ``urllib`` opens works, so tests use
``file://`` and a server on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from bbits_ref.datasets.common import DataFileError, DownloadError

__all__ = ["fetch", "ensure_file", "mirror_urls"]

_CHUNK = 1 << 20


class _MirrorFailed(Exception):
    """One mirror did not deliver the file (the next one is tried)."""


def mirror_urls(mirrors: Sequence[str], filename: str) -> list[str]:
    """``<mirror>/<filename>`` for each mirror, in order."""
    if isinstance(mirrors, str):
        raise TypeError("mirrors must be a sequence of URLs, not a single string")
    return [m.rstrip("/") + "/" + filename for m in mirrors]


def _stream(url: str, out, timeout: float, max_bytes: int) -> None:
    """Copy ``url`` into the open file ``out``.  Network and server problems raise
    :class:`_MirrorFailed`; a local write error (disk full, no permission) propagates."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _MirrorFailed(f"{type(exc).__name__}: {exc}") from exc
    with response:
        announced = response.headers.get("Content-Length")
        try:
            announced = None if announced is None else int(announced)
        except ValueError:
            raise _MirrorFailed(f"invalid Content-Length {announced[:40]!r}") from None
        if announced is not None and announced > max_bytes:
            raise _MirrorFailed(f"the server announces {announced} bytes, more than the "
                                f"{max_bytes} this file can have")
        received = 0
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _MirrorFailed(f"connection lost after {received} bytes "
                                    f"({type(exc).__name__}: {exc})") from exc
            if not chunk:
                break
            received += len(chunk)
            if received > max_bytes:
                raise _MirrorFailed(f"more than the {max_bytes} bytes this file can have")
            out.write(chunk)
    # http.client does not complain when the connection drops early: compare with the header.
    if announced is not None and received != announced:
        raise _MirrorFailed(f"truncated download: received {received} of {announced} bytes")


def fetch(urls: Sequence[str], dest: str | os.PathLike, check: Callable[[Path], None], *,
          max_bytes: int, timeout: float = 60.0) -> Path:
    """Download the first of ``urls`` that passes ``check`` to ``dest`` and return ``dest``.

    ``check(path)`` raises :class:`DataFileError` (e.g. a :class:`ChecksumError`) for a wrong
    file.  ``dest`` must not exist; folders created for it are removed again if every mirror
    fails.  Raises :class:`DownloadError` (one line, every mirror's reason) when none worked.
    """
    dest = Path(dest)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    reasons = []
    try:
        for url in urls:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    _stream(url, out, timeout, max_bytes)
                    out.flush()
                    os.fsync(out.fileno())
                check(Path(tmp))
                os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file may be shared
                _link_new(Path(tmp), dest)
                return dest
            except (_MirrorFailed, DataFileError) as exc:
                if isinstance(exc, _NotOverwritten):
                    raise
                reasons.append(f"{url}: {exc}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        raise DownloadError(f"could not download {dest.name} into {dest.parent}: "
                            + "; ".join(reasons) + f"; check the network connection, or "
                            f"download the file by hand into {dest.parent}")
    except BaseException:
        for folder in created:  # deepest first; only the empty folders this call made
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


class _NotOverwritten(DataFileError):
    pass


def _link_new(tmp: Path, dest: Path) -> None:
    """Put ``tmp`` at ``dest`` atomically, never replacing a file that is already there."""
    try:
        os.link(tmp, dest)  # fails if dest exists, unlike os.replace
    except FileExistsError:
        raise _NotOverwritten(f"{dest} appeared while it was being downloaded; it was left as it "
                              f"is: check it, or delete it and rerun --download") from None
    except OSError:  # a file system without hard links
        if dest.exists():
            raise _NotOverwritten(f"{dest} appeared while it was being downloaded; it was left "
                                  f"as it is: check it, or delete it and rerun --download"
                                  ) from None
        os.replace(tmp, dest)


def ensure_file(dest: str | os.PathLike, urls: Sequence[str], check: Callable[[Path], None], *,
                max_bytes: int, timeout: float = 60.0) -> Path:
    """``dest`` if it exists and passes ``check``; else download it with :func:`fetch`.

    An existing file that fails ``check`` is an error, not a reason to overwrite it: it may be
    a file the user put there."""
    dest = Path(dest)
    if dest.exists():
        try:
            check(dest)
        except DataFileError as exc:
            raise DataFileError(f"{dest} is already there but is not the original file ({exc}); "
                                f"bbits_ref does not overwrite files it did not write: move or "
                                f"delete it, then rerun --download") from exc
        return dest
    return fetch(urls, dest, check, max_bytes=max_bytes, timeout=timeout)

"""CIFAR-10, "python version": five training batches, a test batch and ``batches.meta``, each a
pickled dict, in ``cifar-10-batches-py/`` or in the original ``cifar-10-python.tar.gz``.

A pickle can run any code when it is loaded, and these files come from the network or from
someone's disk, so they are read with a restricted unpickler that resolves only the few globals
a genuine batch needs, at any pickle protocol (0-5): the Python 2 originals, and batches
re-pickled by Python 3 (which rebuilds ``bytes`` through ``_codecs.encode`` below protocol 3
and arrays through ``_frombuffer`` at protocol 5).  Each name maps explicitly to a small
checked function (:data:`ALLOWED_GLOBALS`); anything else is an :class:`UnsafePickleError`
naming the file and the global, raised before anything is called.  Sizes are bounded before
reading (file and member sizes, number of tar members, decompressed bytes, pickle opcodes,
arrays built), so a hostile file cannot exhaust memory.  Archives are read in memory, one
member at a time, never extracted.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import pickletools
import struct
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from bbits_ref.datasets.cache import data_root
from bbits_ref.datasets.common import (HOW_TO_GET, REPLACE_FILE, DataFileError, DataNotFoundError,
                                       Dataset, UnsafePickleError, check_digest, describe,
                                       new_digest)
from bbits_ref.datasets.download import ensure_file, mirror_urls

__all__ = ["load_cifar10", "find_cifar10", "download_cifar10", "unpickle_cifar",
           "CIFAR10_MD5", "DEFAULT_CIFAR10_MIRRORS", "CIFAR10_ARCHIVE", "CIFAR10_FOLDER",
           "ALLOWED_GLOBALS"]

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published, of the .tar.gz itself
DEFAULT_CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta")
BATCH_SIZE = 10000  # images per genuine batch file

# Bounds for untrusted files (a genuine batch is 31 MB, the archive 170 MB, 184 MB unpacked).
MAX_PICKLE_BYTES = 96 * 2**20
MAX_ARCHIVE_BYTES = 256 * 2**20
MAX_TAR_MEMBERS = 64
MAX_PICKLE_OPCODES = 1_000_000  # a genuine batch has about 40,000
MAX_ARRAYS = 8  # arrays per pickle; a genuine batch has one

_REDOWNLOAD = REPLACE_FILE


# --------------------------------------------------------------------------- restricted unpickling

class _Limits:
    """What one pickle may build through its globals: a few arrays, bytes up to its own size."""

    def __init__(self, what: str, size: int):
        self.what, self.arrays, self.bytes_left = what, 0, 2 * size + 4096

    def array(self) -> None:
        self.arrays += 1
        if self.arrays > MAX_ARRAYS:
            raise DataFileError(f"{self.what}: expected one array per CIFAR-10 batch, found a "
                                f"pickle building more than {MAX_ARRAYS}: {_REDOWNLOAD}")

    def spend(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise DataFileError(f"{self.what}: this pickle builds far more data than the file "
                                f"holds (a pathological pickle, not CIFAR-10): {_REDOWNLOAD}")


class _NdarrayName:
    """What the global ``numpy.ndarray`` resolves to: a token that ``_reconstruct`` accepts as
    its first argument and that cannot be called (so it cannot allocate an array of any size)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()
_NUMPY_RECONSTRUCT = np.ndarray(0).__reduce__()[0]  # numpy's own, whatever module it lives in


def _int_tuple(shape) -> bool:
    return isinstance(shape, tuple) and all(type(s) is int and 0 <= s for s in shape)


def _make_globals(limits: _Limits) -> dict[tuple[str, str], object]:
    """The globals a genuine CIFAR-10 pickle can name, each bound to checked arguments."""

    def bad(what: str):
        return DataFileError(f"{limits.what}: unexpected arguments to {what} (found in no "
                             f"genuine CIFAR-10 pickle): {_REDOWNLOAD}")

    def reconstruct(subtype, shape, typecode):
        # numpy's pickles call _reconstruct(ndarray, (0,), b'b'), then __setstate__ fills it.
        if subtype is not _NDARRAY or not _int_tuple(shape) or math.prod(shape) > 1 \
                or not isinstance(typecode, (bytes, str, np.dtype)):
            raise bad("numpy's _reconstruct")
        limits.array()
        return _NUMPY_RECONSTRUCT(np.ndarray, shape, typecode)

    def frombuffer(buf, dtype, shape, order, axis_order=None):
        # Protocol 5: numpy's _frombuffer(buffer, dtype, shape, order[, axis_order]).
        if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) \
                or dtype.hasobject or not _int_tuple(shape) or order not in ("C", "F", "K") \
                or not (axis_order is None or _int_tuple(axis_order)):
            raise bad("numpy's _frombuffer")
        limits.array()
        try:
            array = np.frombuffer(buf, dtype=dtype)
            if order == "K" and axis_order is not None:
                return array.reshape(shape, order="C").transpose(axis_order)
            return array.reshape(shape, order=order)
        except ValueError as exc:
            raise DataFileError(f"{limits.what}: an array's data does not fit its shape "
                                f"({exc}): {_REDOWNLOAD}") from exc

    def dtype(spec, align=False, copy=False):
        # numpy.dtype('u1', False, True); the Python 2 originals pass 0 and 1 instead of bools.
        if not isinstance(spec, str) or len(spec) > 8 \
                or not all(type(flag) in (bool, int) and flag in (0, 1) for flag in (align, copy)):
            raise bad("numpy.dtype")
        return np.dtype(spec, align=bool(align), copy=bool(copy))

    def encode(text, encoding="utf-8"):
        # Python 3 writes bytes below protocol 3 as _codecs.encode(<latin-1 str>, 'latin1').
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise bad("_codecs.encode")
        limits.spend(len(text))
        return text.encode("latin1")

    def empty_bytes(*args):
        # ... and an empty bytes object as bytes().
        if args:
            raise bad("bytes")
        return b""

    return {("numpy.core.multiarray", "_reconstruct"): reconstruct,   # numpy 1.x name
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,  # numpy 2.x name
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): dtype,
            ("_codecs", "encode"): encode,
            ("__builtin__", "bytes"): empty_bytes,  # how protocols 0-2 name builtins
            ("builtins", "bytes"): empty_bytes}


#: The (module, name) pairs a CIFAR-10 pickle may name; nothing else is ever resolved.
ALLOWED_GLOBALS = tuple(_make_globals(_Limits("", 0)))


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`.

    A pickle runs code by naming a callable (``os.system``, ``builtins.eval``…) that ``REDUCE``
    then calls; every such name goes through ``find_class``, so refusing it here means nothing
    is ever called.
    """

    def __init__(self, file, what: str, size: int):
        super().__init__(file, encoding="latin1")  # Python 2 str -> str, as numpy expects
        self.what = what
        self.allowed = _make_globals(_Limits(what, size))

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self.what}: refusing to load the Python global {str(module)[:80]}."
                f"{str(name)[:80]}: a CIFAR-10 batch holds only numpy arrays, lists, dicts and "
                f"strings, so this is not an original CIFAR-10 file (it may try to run code; "
                f"nothing was run): {_REDOWNLOAD}") from None


_ARGUMENT_LENGTH = {pickletools.TAKEN_FROM_ARGUMENT1: "<B",
                    pickletools.TAKEN_FROM_ARGUMENT4: "<i",
                    pickletools.TAKEN_FROM_ARGUMENT4U: "<I",
                    pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}


def _count_opcodes(raw: bytes, what: str) -> None:
    """Walk the opcodes (skipping their arguments, building nothing) and refuse a pickle of more
    than ``MAX_PICKLE_OPCODES``: this bounds the number of objects it can make, whatever they
    are."""
    f, count = io.BytesIO(raw), 0
    while True:
        code = f.read(1)
        op = pickletools.code2op.get(code.decode("latin1")) if code else None
        if op is None:
            raise ValueError(f"unknown opcode {code!r} at byte {f.tell() - 1}" if code else
                             "the pickle ends before its STOP opcode")
        count += 1
        if count > MAX_PICKLE_OPCODES:
            raise DataFileError(f"{what}: expected a CIFAR-10 pickle (about 40,000 pickle "
                                f"operations), found more than {MAX_PICKLE_OPCODES}: {_REDOWNLOAD}")
        if op.name == "STOP":
            return
        n = op.arg.n if op.arg is not None else 0
        if n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if op.arg.name.endswith("_pair") else 1):
                f.readline()
        elif n in _ARGUMENT_LENGTH:
            fmt = _ARGUMENT_LENGTH[n]
            (length,) = struct.unpack(fmt, f.read(struct.calcsize(fmt)).ljust(
                struct.calcsize(fmt), b"\0"))
            f.seek(max(length, 0), io.SEEK_CUR)
        else:
            f.seek(n, io.SEEK_CUR)


def unpickle_cifar(raw: bytes, what: str) -> dict:
    """One CIFAR-10 pickle (any protocol) as a dict with ``str`` keys, through the restricted
    unpickler; ``what`` names the file in errors.  Every failure is a :class:`DataFileError`."""
    if len(raw) > MAX_PICKLE_BYTES:
        raise DataFileError(f"{what}: expected a CIFAR-10 batch of at most {MAX_PICKLE_BYTES} "
                            f"bytes, found {len(raw)} bytes: {_REDOWNLOAD}")
    try:
        _count_opcodes(raw, what)
        obj = _CifarUnpickler(io.BytesIO(raw), what, len(raw)).load()
    except DataFileError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "bad file"
        raise DataFileError(f"{what}: expected a CIFAR-10 pickle, found an unreadable one "
                            f"({type(exc).__name__}: {str(exc)[:200]}): {_REDOWNLOAD}") from exc
    if not isinstance(obj, dict):
        raise DataFileError(f"{what}: expected a pickled dict, found {describe(obj)}: "
                            f"{_REDOWNLOAD}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# --------------------------------------------------------------------------- batch contents

def _cifar_batch(batch: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch dict, checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or len(data) > BATCH_SIZE:
        raise DataFileError(f"{what}: expected 'data', a uint8 array of shape (N, 3072) with "
                            f"N ≤ {BATCH_SIZE}, found {describe(data)}: {_REDOWNLOAD}")
    try:
        labels = np.asarray(labels)
        ok = labels.shape == (len(data),) and np.issubdtype(labels.dtype, np.integer)
    except (ValueError, TypeError, OverflowError, RecursionError):
        ok = False
    if not ok:
        raise DataFileError(f"{what}: expected 'labels', {len(data)} integers (one per row of "
                            f"'data'), found {describe(labels)}: {_REDOWNLOAD}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"{what}: expected labels in 0..9, found labels in [{labels.min()}, "
                            f"{labels.max()}]: {_REDOWNLOAD}")
    # Each row is channel-major (1024 red, 1024 green, 1024 blue values, rows of 32 pixels).
    images = data.reshape(-1, 3, 32, 32)
    return (images if images.flags.writeable else images.copy()), labels.astype(np.int64)


def _class_names(meta: dict, what: str) -> tuple[str, ...]:
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10 \
            or not all(isinstance(n, (str, bytes)) and len(n) <= 100 for n in names):
        raise DataFileError(f"{what}: expected 'label_names', a list of 10 short strings, found "
                            f"{describe(names)}: {_REDOWNLOAD}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


# --------------------------------------------------------------------------- archives

class _BoundedReader(io.RawIOBase):
    """A read-only stream that refuses to deliver more than ``limit`` bytes in total, checked
    before each read (so a header claiming gigabytes fails before anything is allocated)."""

    def __init__(self, f, limit: int, what: str):
        self.f, self.left, self.what = f, limit, what
        self.limit = limit

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left + 1 if n is None or n < 0 or n > self.left else n  # never more than allowed
        data = self.f.read(n)
        self.left -= len(data)
        if self.left < 0:
            raise DataFileError(f"{self.what}: expected the CIFAR-10 archive (about 184 MB "
                                f"unpacked), found one that unpacks to more than {self.limit} "
                                f"bytes: {_REDOWNLOAD}")
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _safe_member_name(name: str) -> bool:
    path = PurePosixPath(name)
    return not (path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\"))
                or ":" in (path.parts[0] if path.parts else ""))


def _pickles_from_tar(archive: Path) -> dict[str, dict]:
    """Unpickle the CIFAR-10 members of the archive in one streaming pass, in memory."""
    found = {}
    try:
        with open(archive, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            inner = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            stream = _BoundedReader(inner, MAX_ARCHIVE_BYTES, str(archive))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for count, member in enumerate(tar, start=1):
                    where = f"{archive}:{member.name[:200]}"
                    if count > MAX_TAR_MEMBERS:
                        raise DataFileError(f"{archive}: expected the CIFAR-10 archive (9 "
                                            f"members), found more than {MAX_TAR_MEMBERS} "
                                            f"members: {_REDOWNLOAD}")
                    if not _safe_member_name(member.name):
                        raise DataFileError(f"{archive}: unsafe member name {member.name[:200]!r} "
                                            f"(absolute or containing '..'); refusing to read "
                                            f"this archive, it is not the original CIFAR-10: "
                                            f"{_REDOWNLOAD}")
                    base = PurePosixPath(member.name).name
                    if base not in CIFAR10_FILES or not member.isfile():
                        continue
                    if base in found:
                        raise DataFileError(f"{archive}: expected one {base}, found two: "
                                            f"{_REDOWNLOAD}")
                    if member.size > MAX_PICKLE_BYTES:
                        raise DataFileError(f"{where}: expected at most {MAX_PICKLE_BYTES} "
                                            f"bytes, the archive announces {member.size}: "
                                            f"{_REDOWNLOAD}")
                    found[base] = unpickle_cifar(tar.extractfile(member).read(), where)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataFileError(f"{archive}: expected a tar archive (.tar.gz), found an unreadable "
                            f"one ({type(exc).__name__}: {exc}): {_REDOWNLOAD}") from exc
    except OSError as exc:
        raise DataFileError(f"{archive}: cannot be read ({exc.strerror or exc}); check the "
                            f"file's permissions, or {HOW_TO_GET}") from exc
    return found


def _pickles_from_folder(folder: Path) -> dict[str, dict]:
    found = {}
    for name in CIFAR10_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            size = path.stat().st_size
            if size > MAX_PICKLE_BYTES:
                raise DataFileError(f"{path}: expected a CIFAR-10 batch of at most "
                                    f"{MAX_PICKLE_BYTES} bytes, found {size} bytes: {_REDOWNLOAD}")
            raw = path.read_bytes()
        except OSError as exc:
            raise DataFileError(f"{path}: cannot be read ({exc.strerror or exc}); check the "
                                f"file's permissions, or {HOW_TO_GET}") from exc
        found[name] = unpickle_cifar(raw, str(path))
    return found


def _file_digest(path: Path, expected: str):
    digest = new_digest(expected)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be read ({exc.strerror or exc}); check the "
                            f"file's permissions, or {HOW_TO_GET}") from exc
    return digest


# --------------------------------------------------------------------------- loading

def find_cifar10(root: str | os.PathLike) -> Path | None:
    """The first CIFAR-10 copy under ``root``: ``root`` itself (an archive, or a folder with the
    batches), ``root/cifar-10-batches-py``, ``root/cifar10/cifar-10-batches-py``,
    ``root/cifar10/cifar-10-python.tar.gz`` or ``root/cifar-10-python.tar.gz``; else None."""
    root = Path(root)
    for candidate in (root, root / CIFAR10_FOLDER, root / "cifar10" / CIFAR10_FOLDER):
        if (candidate / "batches.meta").is_file():
            return candidate
    for candidate in (root, root / "cifar10" / CIFAR10_ARCHIVE, root / CIFAR10_ARCHIVE):
        if candidate.is_file():
            return candidate
    return None


def load_cifar10(path: str | os.PathLike, verify: bool = True,
                 checksum: str | None = None) -> Dataset:
    """CIFAR-10 from a folder holding ``data_batch_1`` … ``data_batch_5``, ``test_batch`` and
    ``batches.meta`` (or a folder with ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
    in it), or from the archive itself (read in memory, never extracted).

    ``verify`` checks an archive against ``checksum`` (hex MD5 or SHA-256, default the published
    ``CIFAR10_MD5``); extracted folders have no published checksums, their content is checked.
    Images come out as (N, 3, 32, 32) ``uint8``, labels ``int64``.
    """
    path = Path(path)
    found = find_cifar10(path) if path.is_dir() else path
    if found is None or not found.exists():
        raise DataNotFoundError(f"CIFAR-10 not found at {path}: expected {CIFAR10_ARCHIVE} or a "
                                f"{CIFAR10_FOLDER}/ folder with the batches; {HOW_TO_GET}")
    if found.is_file():
        if verify:
            check_digest(str(found), _file_digest(found, checksum or CIFAR10_MD5),
                         checksum or CIFAR10_MD5, "delete it and rerun --download (or "
                         "download_cifar10()), or pass verify=False if you know it is right")
        pickles = _pickles_from_tar(found)
    else:
        pickles = _pickles_from_folder(found)
    missing = [name for name in CIFAR10_FILES if name not in pickles]
    if missing:
        raise DataFileError(f"{found}: expected all of {', '.join(CIFAR10_FILES)}, missing "
                            f"{', '.join(missing)}; the data set is incomplete: {_REDOWNLOAD}")
    sep = ":" if found.is_file() else os.sep
    train = [_cifar_batch(pickles[name], f"{found}{sep}{name}") for name in CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _cifar_batch(pickles["test_batch"], f"{found}{sep}test_batch")
    classes = _class_names(pickles["batches.meta"], f"{found}{sep}batches.meta")
    return Dataset(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   x_test, y_test, name="cifar10", classes=classes,
                   source=f"CIFAR-10 python version at {found}")


def download_cifar10(data_dir: str | os.PathLike | None = None,
                     mirrors: Sequence[str] | None = None, checksum: str | None = None,
                     timeout: float = 60.0) -> Path:
    """Download ``cifar-10-python.tar.gz`` (170 MB) into ``<root>/cifar10`` and return its path.

    As :func:`bbits_ref.datasets.mnist.download_mnist`: mirrors (default
    ``DEFAULT_CIFAR10_MIRRORS``) in order, the archive checked against ``checksum`` (default the
    published MD5 ``CIFAR10_MD5``) before it is linked into place, an existing valid archive
    kept, an invalid one never overwritten.
    """
    dest = data_root(data_dir) / "cifar10" / CIFAR10_ARCHIVE
    mirrors = DEFAULT_CIFAR10_MIRRORS if mirrors is None else mirrors
    expected = checksum or CIFAR10_MD5

    def check(path: Path) -> None:
        check_digest(f"{CIFAR10_ARCHIVE} from the mirror", _file_digest(path, expected), expected,
                     "the mirror serves a different file")

    return ensure_file(dest, mirror_urls(mirrors, CIFAR10_ARCHIVE), check,
                       max_bytes=MAX_ARCHIVE_BYTES, timeout=timeout)


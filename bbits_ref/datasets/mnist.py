"""MNIST: the subset embedded in the package, and the full set from its four IDX files.

IDX format: a big-endian int32 magic number ``0x0000 08 D`` (08 = unsigned bytes, D = number of
dimensions: 2051 for images (N, 28, 28), 2049 for labels (N,)), then D big-endian int32 sizes,
then prod(sizes) bytes.  Files are untrusted: :func:`read_idx` checks the magic number, the
sizes and the file length *before* it allocates anything, reads raw and gzipped files alike
(recognised by content, not by name) and checks a SHA-256 or MD5 of the decompressed content.

The embedded subset ("mnist-small", ``bbits_ref/datasets/embedded/mnist_subset.npz``) is the
first 1,000 training and 200 test images of each digit, in file order, written by
``scripts/build_embedded_mnist.py``.  MNIST is by Yann LeCun and Corinna Cortes; the subset is
distributed under CC BY-SA 3.0 (``bbits_ref/datasets/embedded/MNIST_LICENSE.txt``).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import math
import os
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from bbits_ref.datasets.cache import data_root
from bbits_ref.datasets.common import (HOW_TO_GET, REPLACE_FILE, DataFileError, DataNotFoundError,
                                       Dataset, check_digest, new_digest)
from bbits_ref.datasets.download import ensure_file, mirror_urls

__all__ = ["load_embedded_mnist", "read_idx", "load_mnist", "find_mnist", "download_mnist",
           "MNIST_SHA256", "MNIST_MD5", "DEFAULT_MNIST_MIRRORS", "EMBEDDED_MNIST_SHA256",
           "IMAGES_MAGIC", "LABELS_MAGIC", "MNIST_FILES", "MNIST_CLASSES", "EMBEDDED_PER_CLASS"]

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
#: role -> (file name without .gz, magic number, number of examples, shape of one example)
MNIST_FILES = {
    "x_train": ("train-images-idx3-ubyte", IMAGES_MAGIC, 60000, (28, 28)),
    "y_train": ("train-labels-idx1-ubyte", LABELS_MAGIC, 60000, ()),
    "x_test": ("t10k-images-idx3-ubyte", IMAGES_MAGIC, 10000, (28, 28)),
    "y_test": ("t10k-labels-idx1-ubyte", LABELS_MAGIC, 10000, ()),
}
#: The published MD5s of the decompressed files (the ones torchvision and others check) ...
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
#: ... and the SHA-256s of the same decompressed files (computed from files matching those
#: MD5s), which the loaders and the downloader check.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DEFAULT_MNIST_MIRRORS = (  # tried in order; each serves <mirror>/<file>.gz
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_CLASSES = tuple("0123456789")
MAX_GZ_BYTES = 32 * 2**20  # the largest standard .gz is 9.9 MB

# The embedded subset, written by scripts/build_embedded_mnist.py.  The SHA-256 pins its bytes.
EMBEDDED_MNIST_FILE = "mnist_subset.npz"
EMBEDDED_MNIST_SHA256 = "8c930b2a498f513b60152e8286847b04090e2c39eb780da4f671679ff9bce110"
EMBEDDED_PER_CLASS = (1000, 200)  # (training, test) examples per class

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this: a bound before reading
_CHUNK = 1 << 20
_REDOWNLOAD = ("delete it and rerun with --download (or download_mnist()), or load it with "
               "load_mnist(..., verify=False) if you know it is right")


# --------------------------------------------------------------------------- the embedded subset

def load_embedded_mnist(verify: bool = True) -> Dataset:
    """The MNIST subset shipped with the package ("mnist-small"): 10,000 training and 2,000 test
    images, the first 1,000 / 200 of each class in the order of the original files.

    ``verify`` checks the file's SHA-256 against ``EMBEDDED_MNIST_SHA256``.  Licence: CC BY-SA
    3.0 (``bbits_ref/datasets/embedded/MNIST_LICENSE.txt``).
    """
    resource = importlib.resources.files("bbits_ref.datasets") / "embedded" / EMBEDDED_MNIST_FILE
    remedy = "reinstall bbits_ref, or rebuild it with scripts/build_embedded_mnist.py"
    try:
        raw = resource.read_bytes()
    except OSError as exc:
        raise DataNotFoundError(f"the embedded MNIST subset {resource} cannot be read "
                                f"({type(exc).__name__}); the package was installed without its "
                                f"data files: {remedy}") from exc
    if verify:
        check_digest(str(resource), hashlib.sha256(raw), EMBEDDED_MNIST_SHA256, remedy)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except Exception as exc:  # only reachable with verify=False: any failure means a bad file
        raise DataFileError(f"{resource}: expected an .npz with x_train, y_train, x_test, y_test "
                            f"({type(exc).__name__}: {exc}); {remedy}") from exc
    for key in ("y_train", "y_test"):
        arrays[key] = arrays[key].astype(np.int64)
    return Dataset(**arrays, name="mnist-small", classes=MNIST_CLASSES,
                   source=f"embedded MNIST subset ({EMBEDDED_MNIST_FILE}, CC BY-SA 3.0)")


# --------------------------------------------------------------------------- IDX files

def _expected(magic: int, item_shape, max_items) -> str:
    kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}.get(magic, "data")
    dims = "×".join(["N", *map(str, item_shape)]) if item_shape is not None else "any shape"
    limit = f", N ≤ {max_items}" if max_items is not None else ""
    return f"IDX magic {magic} ({kind}, {dims} uint8{limit})"


def _read_exact(f, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the file (read in chunks: memory follows
    what the file really holds, not what its header claims)."""
    parts, missing = [], n
    while missing > 0:
        part = f.read(min(missing, _CHUNK))
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def read_idx(path: str | os.PathLike, magic: int, checksum: str | None = None, *,
             item_shape: tuple[int, ...] | None = None, max_items: int | None = None,
             max_bytes: int = 2**30) -> np.ndarray:
    """Read one IDX file of unsigned bytes (raw or gzip-compressed) as a ``uint8`` array.

    Checks, in this order and before reading the data: the magic number, the shape of one item
    (``item_shape``), the number of items (at most ``max_items``), the size the header announces
    (at most ``max_bytes``) against the file size (for gzip: against what that many compressed
    bytes can hold).  Then reads exactly that many bytes, refuses a shorter or longer file, and
    compares ``checksum`` (hex SHA-256 or MD5 of the decompressed content) last, so a truncated
    file reports its length rather than a checksum.  Every problem is a :class:`DataFileError`.
    """
    path = Path(path)
    expected = _expected(magic, item_shape, max_items)
    digest = new_digest(checksum)
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            header = _read_exact(f, 4)
            if len(header) < 4:
                raise DataFileError(f"{path}: expected {expected}, found {len(header)} bytes, too "
                                    f"short for an IDX header; the file is truncated: "
                                    f"{REPLACE_FILE}")
            found = int.from_bytes(header, "big")
            if found != magic:
                kinds = {IMAGES_MAGIC: "an MNIST images file", LABELS_MAGIC: "an MNIST labels file"}
                raise DataFileError(f"{path}: expected {expected}, found magic number {found} "
                                    f"({kinds.get(found, 'not an MNIST IDX file')}); check the "
                                    f"file names, or {REPLACE_FILE}")
            ndim = magic & 0xFF
            dims = _read_exact(f, 4 * ndim)
            header += dims
            if len(dims) < 4 * ndim:
                raise DataFileError(f"{path}: expected {expected}, found {len(header)} bytes, "
                                    f"shorter than the {4 + 4 * ndim}-byte header; the file is "
                                    f"truncated: {REPLACE_FILE}")
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            n_bytes = math.prod(shape)  # Python ints: absurd sizes cannot overflow
            problem = None
            if item_shape is not None and shape[1:] != tuple(item_shape):
                problem = "items of another shape"
            elif max_items is not None and shape and shape[0] > max_items:
                problem = f"more than {max_items} items"
            elif n_bytes > max_bytes:
                problem = f"more than the {max_bytes}-byte limit"
            elif not compressed and size != len(header) + n_bytes:
                problem = (f"{len(header) + n_bytes} bytes, but the file has {size} bytes; it is "
                           f"{'truncated' if size < len(header) + n_bytes else 'too long'}")
            elif compressed and n_bytes > _MAX_DEFLATE_RATIO * size + 1024:
                problem = f"{n_bytes} bytes, more than a {size}-byte gzip file can hold"
            if problem:
                raise DataFileError(f"{path}: expected {expected}, found a header announcing "
                                    f"shape {shape}: {problem}; the file is damaged or not the "
                                    f"original: {REPLACE_FILE}")
            body = _read_exact(f, n_bytes)
            extra = f.read(1) if len(body) == n_bytes else b""
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{path}: expected a gzip-compressed {expected}, found a damaged or "
                            f"truncated gzip stream ({exc}): {REPLACE_FILE}") from exc
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be read ({exc.strerror or exc}); check the "
                            f"file's permissions, or {HOW_TO_GET}") from exc
    if len(body) != n_bytes or extra:
        raise DataFileError(f"{path}: expected {expected}; the header announces {shape} and so "
                            f"{len(header) + n_bytes} bytes, but the content has "
                            f"{'only ' + str(len(header) + len(body)) if not extra else 'more'} "
                            f"bytes; the file is truncated or corrupted: {REPLACE_FILE}")
    if digest is not None:
        digest.update(header)
        digest.update(body)
        check_digest(str(path), digest, checksum, _REDOWNLOAD)
    return np.frombuffer(body, np.uint8).reshape(shape)


def _mnist_file(directory: Path, stem: str) -> Path | None:
    """The raw or gzipped IDX file ``stem`` in ``directory`` (raw first), or None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(folders: Sequence[Path]) -> str:
    """Which files are missing from which folders, in one line."""
    parts = []
    for folder in folders:
        missing = [stem for stem, *_ in MNIST_FILES.values() if _mnist_file(folder, stem) is None]
        what = "all four files" if len(missing) == len(MNIST_FILES) else ", ".join(missing)
        parts.append(f"{folder} (missing {what})")
    return "; ".join(parts)


def find_mnist(root: str | os.PathLike) -> Path | None:
    """The first of ``root`` and ``root/mnist`` that holds all four IDX files, or None."""
    root = Path(root)
    for folder in (root, root / "mnist"):
        if all(_mnist_file(folder, stem) for stem, *_ in MNIST_FILES.values()):
            return folder
    return None


def load_mnist(directory: str | os.PathLike, verify: bool = True,
               checksums: Mapping[str, str] | None = None) -> Dataset:
    """MNIST from its four IDX files in ``directory`` (each raw or gzipped).

    ``verify`` compares each decompressed file with ``checksums`` (file name without ``.gz`` ->
    hex SHA-256 or MD5; default ``MNIST_SHA256``).  Images are (N, 28, 28) ``uint8``, labels
    ``int64`` in 0..9.  Raises :class:`DataNotFoundError` naming the missing files.
    """
    directory = Path(directory)
    checksums = MNIST_SHA256 if checksums is None else checksums
    paths = {role: _mnist_file(directory, stem) for role, (stem, *_) in MNIST_FILES.items()}
    if None in paths.values():
        raise DataNotFoundError(f"MNIST files not found: {_missing_message([directory])} (each "
                                f"as the raw file or .gz); {HOW_TO_GET}")
    arrays = {}
    for role, (stem, magic, count, item_shape) in MNIST_FILES.items():
        arrays[role] = read_idx(paths[role], magic, checksums.get(stem) if verify else None,
                                item_shape=item_shape, max_items=count)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataFileError(f"{paths['y_' + split]}: expected one label per image of "
                                f"{paths['x_' + split].name} ({len(x)} images), found {len(y)} "
                                f"labels; the files do not belong together: {REPLACE_FILE}")
        if y.size and y.max() > 9:
            raise DataFileError(f"{paths['y_' + split]}: expected digits 0..9, found a label "
                                f"{y.max()}; the file is not MNIST: {REPLACE_FILE}")
        arrays[f"y_{split}"] = y.astype(np.int64)
    return Dataset(**arrays, name="mnist", classes=MNIST_CLASSES,
                   source=f"MNIST IDX files in {directory}")


def download_mnist(data_dir: str | os.PathLike | None = None,
                   mirrors: Sequence[str] | None = None,
                   checksums: Mapping[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the four gzipped MNIST IDX files into ``<root>/mnist`` and return that folder.

    ``root`` is :func:`bbits_ref.datasets.cache.data_root` of ``data_dir``.  ``mirrors``
    (default ``DEFAULT_MNIST_MIRRORS``) are tried in order.  Each file is checked (format, then
    ``checksums``, default ``MNIST_SHA256``) before it is linked into place.  A file already
    there (raw or .gz) and valid is kept; one that is not valid is an error, never overwritten.
    """
    target = data_root(data_dir) / "mnist"
    mirrors = DEFAULT_MNIST_MIRRORS if mirrors is None else mirrors
    checksums = MNIST_SHA256 if checksums is None else checksums
    for stem, magic, count, item_shape in MNIST_FILES.values():

        def check(path: Path, stem=stem, magic=magic, count=count, item_shape=item_shape) -> None:
            read_idx(path, magic, checksums[stem], item_shape=item_shape, max_items=count)

        existing = _mnist_file(target, stem)
        dest = existing if existing is not None else target / f"{stem}.gz"
        ensure_file(dest, mirror_urls(mirrors, f"{stem}.gz"), check, max_bytes=MAX_GZ_BYTES,
                    timeout=timeout)
    return target


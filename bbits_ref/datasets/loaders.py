"""Data sets, minibatches and the input pipelines of the official recipes (spec §7.3).

Three data sets, all returned as a :class:`Dataset` of raw ``uint8`` images and ``int64`` labels:

* ``"mnist-small"``: a class-balanced subset of MNIST embedded in the package (1,000 training and
  200 test images per class, ``bbits_ref/datasets/embedded/mnist_subset.npz``, CC BY-SA 3.0: see
  ``bbits_ref/datasets/embedded/MNIST_LICENSE.txt``).  Works offline; notebooks and CI use it.
* ``"mnist"``: the full set from its standard IDX files (:func:`load_mnist`, :func:`download_mnist`).
* ``"cifar10"``: the "python version" pickles (:func:`load_cifar10`, :func:`download_cifar10`),
  read with a restricted unpickler that can build arrays, lists and dicts but cannot run code.

Where files live: ``load_dataset(name, data_dir)`` looks in ``data_dir``; without it, in the cache
directory ``$BBITS_REF_DATA`` (default ``~/.cache/bbits_ref``), which is also where the
downloaders write (``<root>/mnist/*.gz``, ``<root>/cifar10/cifar-10-python.tar.gz``).  Nothing here
touches the network unless you call a downloader or pass ``download=True``.

The pipelines of spec §7.3, applied per minibatch of :func:`batches` (as
:class:`bbits_ref.training.trainer.Trainer` does):

* MNIST: ``ToTensor`` only, x / 255 as float32, shape (N, 1, 28, 28): :func:`normalize_mnist`;
* CIFAR-10 training: random 32x32 crop of the image zero-padded by 4 pixels, then a horizontal
  flip with p = 0.5 (:func:`augment_cifar`, on the ``uint8`` images so the padding is black), then
  x / 255 and per-channel (x - mean) / std (:func:`normalize_cifar`); test: normalisation only.

The float arithmetic is torchvision's (float32 division by 255, then subtract and divide by the
float32 mean and std), so normalised inputs agree bit for bit with a PyTorch pipeline.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import importlib.resources
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "Dataset", "load_dataset", "load_embedded_mnist", "load_mnist", "read_idx", "download_mnist",
    "load_cifar10", "download_cifar10", "data_root", "batches", "first_per_class",
    "normalize_mnist", "normalize_cifar", "augment_cifar",
    "DataFileError", "ChecksumError", "UnsafePickleError", "DownloadError",
    "DATASET_NAMES", "DATA_ENV_VAR", "MNIST_MD5", "DEFAULT_MNIST_MIRRORS", "CIFAR10_MD5",
    "DEFAULT_CIFAR10_MIRRORS", "CIFAR10_MEAN", "CIFAR10_STD", "EMBEDDED_MNIST_SHA256",
]

DATASET_NAMES = ("mnist-small", "mnist", "cifar10")
DATA_ENV_VAR = "BBITS_REF_DATA"
DEFAULT_DATA_ROOT = "~/.cache/bbits_ref"

# MNIST: the four IDX files, their magic numbers (0x0000 0803: unsigned bytes, 3 dimensions;
# 0x0000 0801: unsigned bytes, 1 dimension) and the published MD5 of the *decompressed* files.
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
MNIST_FILES = {  # role -> (file name without .gz, magic number)
    "x_train": ("train-images-idx3-ubyte", IMAGES_MAGIC),
    "y_train": ("train-labels-idx1-ubyte", LABELS_MAGIC),
    "x_test": ("t10k-images-idx3-ubyte", IMAGES_MAGIC),
    "y_test": ("t10k-labels-idx1-ubyte", LABELS_MAGIC),
}
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
DEFAULT_MNIST_MIRRORS = (  # tried in order; each serves <mirror>/<file>.gz
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_CLASSES = tuple("0123456789")

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the .tar.gz itself
DEFAULT_CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # spec §7.3, the official code's Normalize
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

# The embedded subset, written by scripts/build_embedded_mnist.py.  The SHA-256 of the file pins
# its exact bytes; load_embedded_mnist() refuses a file that does not match.
EMBEDDED_MNIST_FILE = "mnist_subset.npz"
EMBEDDED_MNIST_SHA256 = "8c930b2a498f513b60152e8286847b04090e2c39eb780da4f671679ff9bce110"
EMBEDDED_PER_CLASS = (1000, 200)  # (training, test) examples per class

_CHUNK = 1 << 20


# --------------------------------------------------------------------------- errors

class DataFileError(ValueError):
    """A data file exists but is not what it should be (corrupted, truncated, wrong format)."""


class ChecksumError(DataFileError):
    """A file's MD5/SHA-256 differs from the published value."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a Python object that a CIFAR-10 batch never contains (it could run code)."""


class DownloadError(OSError):
    """Every mirror failed; the message lists what went wrong with each."""


# --------------------------------------------------------------------------- the container

@dataclass(repr=False)
class Dataset:
    """Raw images and labels of one data set, split into training and test parts.

    ``x_*`` are the ``uint8`` pixels as stored (MNIST (N, 28, 28), CIFAR-10 (N, 3, 32, 32));
    ``y_*`` are ``int64`` class indices into ``classes``.  ``source`` says where they came from.
    Normalise per minibatch with :meth:`normalize` (and :func:`augment_cifar` for CIFAR training).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    classes: tuple[str, ...]
    source: str = field(default="")

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(f"Dataset {self.name!r}: {len(x)} {split} images but {len(y)} "
                                 f"labels; give one label per image")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"Dataset {self.name!r}: {split} labels must lie in "
                                 f"[0, {len(self.classes)}), found [{y.min()}, {y.max()}]")

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train {self.x_train.shape} {self.x_train.dtype}, "
                f"test {self.x_test.shape} {self.x_test.dtype}, {len(self.classes)} classes, "
                f"source={self.source!r})")

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """The spec §7.3 normalisation of this data set: :func:`normalize_mnist` or
        :func:`normalize_cifar` (float32, NCHW)."""
        return normalize_cifar(images) if self.name.startswith("cifar") else normalize_mnist(images)

    def subset(self, train_per_class: int, test_per_class: int, name: str | None = None) -> Dataset:
        """The first ``*_per_class`` examples of every class, in file order (:func:`first_per_class`)."""
        train = first_per_class(self.y_train, train_per_class)
        test = first_per_class(self.y_test, test_per_class)
        return Dataset(self.x_train[train], self.y_train[train], self.x_test[test],
                       self.y_test[test], name or self.name, self.classes,
                       f"{self.source}; first {train_per_class}/{test_per_class} per class")


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Sorted indices of the first ``per_class`` examples of each class (all of a class if it has
    fewer): the class-stratified selection that made the embedded MNIST subset.

    Vectorised: a stable sort groups each class in file order, and an example's rank within its
    class is its position in the sorted order minus the position where its class starts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 0:
        raise ValueError(f"per_class must be a non-negative int, got {per_class!r}")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    _, class_start, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    rank = np.arange(labels.size) - np.repeat(class_start, counts)
    return np.sort(order[rank < per_class])


# --------------------------------------------------------------------------- file helpers

def data_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``cache_dir`` if given, else ``$BBITS_REF_DATA``, else
    ``~/.cache/bbits_ref``."""
    root = cache_dir if cache_dir is not None else os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's content, decompressed if it ends in ``.gz``; a damaged gzip stream is a
    :class:`DataFileError`."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{path}: the gzip stream is damaged or truncated ({exc}); delete the "
                            f"file and download it again") from exc


def _file_digest(path: Path, algorithm: str, decompress: bool = False) -> str:
    """Hex digest of a file (of its decompressed content if ``decompress``), read in chunks."""
    digest = hashlib.new(algorithm)
    try:
        with (gzip.open(path, "rb") if decompress else open(path, "rb")) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{path}: the gzip stream is damaged or truncated ({exc})") from exc
    return digest.hexdigest()


def _check_digest(what: str, got: str, expected: str, algorithm: str, remedy: str) -> None:
    if got != expected.lower():
        raise ChecksumError(f"{what}: {algorithm.upper()} checksum mismatch: expected {expected}, "
                            f"got {got}. The file is corrupted or not the original; {remedy}")


# --------------------------------------------------------------------------- the embedded subset

def load_embedded_mnist(verify: bool = True) -> Dataset:
    """The MNIST subset shipped with the package ("mnist-small"): 10,000 training and 2,000 test
    images, the first 1,000 / 200 of each class in the order of the original files.

    Built by ``scripts/build_embedded_mnist.py``; ``verify`` checks the file's SHA-256 against
    ``EMBEDDED_MNIST_SHA256``.  Licence: CC BY-SA 3.0 (``bbits_ref/datasets/embedded/MNIST_LICENSE.txt``).
    """
    resource = importlib.resources.files(__package__) / "embedded" / EMBEDDED_MNIST_FILE
    try:
        raw = resource.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"the embedded MNIST subset {resource} is missing: the package was "
                                f"installed without its data files; reinstall bbits_ref or "
                                f"rebuild it with scripts/build_embedded_mnist.py") from exc
    if verify:
        _check_digest(str(resource), hashlib.sha256(raw).hexdigest(), EMBEDDED_MNIST_SHA256,
                      "sha256", "reinstall bbits_ref or rebuild it with "
                      "scripts/build_embedded_mnist.py")
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    for key in ("y_train", "y_test"):
        arrays[key] = arrays[key].astype(np.int64)
    return Dataset(**arrays, name="mnist-small", classes=MNIST_CLASSES,
                   source=f"embedded MNIST subset ({EMBEDDED_MNIST_FILE}, CC BY-SA 3.0)")


# --------------------------------------------------------------------------- MNIST (IDX files)

def read_idx(path: str | os.PathLike, magic: int, md5: str | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) of unsigned bytes.

    Format: big-endian int32 magic number ``0x0000 08 D`` (08 = unsigned byte, D = number of
    dimensions), then D big-endian int32 sizes, then prod(sizes) bytes.  Checks the magic number
    and that the length is exactly header + prod(sizes); ``md5`` (of the decompressed content)
    is checked last, so a truncated file reports its length rather than a checksum.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataFileError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file "
                            f"is truncated, download it again")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kinds = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}
        raise DataFileError(f"{path}: wrong magic number {found} (expected {magic}, "
                            f"{kinds.get(magic, 'IDX')}); the file is "
                            f"{kinds.get(found, 'not an MNIST IDX file')}: check the file names")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: {len(raw)} bytes is shorter than the {header}-byte header; "
                            f"the file is truncated, download it again")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataFileError(f"{path}: {len(raw)} bytes, but the header announces {shape} and so "
                            f"{expected} bytes; the file is truncated or corrupted, download it "
                            f"again")
    if md5 is not None:
        _check_digest(str(path), hashlib.md5(raw).hexdigest(), md5, "md5",
                      "delete it and download it again (download_mnist), or load it with "
                      "load_mnist(..., verify=False) if you know it is right")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _mnist_file(directory: Path, stem: str) -> Path | None:
    """The raw or gzipped IDX file ``stem`` in ``directory`` (raw first), or None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(directory: str | os.PathLike, verify: bool = True,
               checksums: Mapping[str, str] | None = None) -> Dataset:
    """MNIST from its four IDX files in ``directory`` (each raw or ``.gz``).

    ``verify`` compares the MD5 of each decompressed file with ``checksums`` (default the
    published values ``MNIST_MD5``, keyed by file name without ``.gz``).  Images are (N, 28, 28)
    ``uint8``, labels ``int64`` in 0..9.
    """
    directory = Path(directory)
    checksums = MNIST_MD5 if checksums is None else checksums
    arrays = {}
    for role, (stem, magic) in MNIST_FILES.items():
        path = _mnist_file(directory, stem)
        if path is None:
            raise FileNotFoundError(f"MNIST file {stem} (or {stem}.gz) not found in {directory}; "
                                    f"download it with download_mnist() or "
                                    f"load_dataset('mnist', download=True)")
        arrays[role] = read_idx(path, magic, checksums[stem] if verify else None)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape[1:] != (28, 28):
            raise DataFileError(f"MNIST {split} images must be 28x28, the file holds "
                                f"{x.shape[1]}x{x.shape[2]}")
        if len(x) != len(y):
            raise DataFileError(f"MNIST {split}: {len(x)} images but {len(y)} labels; the files "
                                f"do not belong together")
        if y.size and y.max() > 9:
            raise DataFileError(f"MNIST {split} labels must be digits 0..9, found {y.max()}")
        arrays[f"y_{split}"] = y.astype(np.int64)
    return Dataset(**arrays, name="mnist", classes=MNIST_CLASSES,
                   source=f"MNIST IDX files in {directory}")


# --------------------------------------------------------------------------- CIFAR-10 (pickles)

def _allowed_globals() -> dict[tuple[str, str], object]:
    """What an original CIFAR-10 pickle may name: numpy's array reconstruction and nothing else.
    (Lists, dicts, str, bytes and ints have their own pickle opcodes and need no global.)"""
    reconstruct = np.ndarray(0).__reduce__()[0]  # numpy's own reconstructor, whatever its module
    return {("numpy.core.multiarray", "_reconstruct"): reconstruct,  # how numpy 1.x names it
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,  # how numpy 2.x names it
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_globals`.

    A pickle runs code by naming a callable (``os.system``, ``builtins.eval``…) that ``REDUCE``
    then calls; every such name goes through ``find_class``, so refusing it here means nothing
    is ever called.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch contains only numpy arrays, "
                f"lists, dicts and strings, so this pickle is not an original CIFAR-10 file (it "
                f"may try to run code). Download the data set again from "
                f"{DEFAULT_CIFAR10_MIRRORS[0]}{CIFAR10_ARCHIVE}") from None


def _unpickle_cifar(raw: bytes, what: str) -> dict[str, object]:
    """One CIFAR-10 pickle as a dict with ``str`` keys (py2 pickles give ``str`` keys under
    ``encoding="latin1"``, pickles re-written by Python 3 often keep ``bytes`` keys)."""
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "bad file"
        raise DataFileError(f"{what}: not a readable CIFAR-10 pickle ({type(exc).__name__}: "
                            f"{exc}); download the data set again") from exc
    if not isinstance(obj, dict):
        raise DataFileError(f"{what}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(batch: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch dict, checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFileError(f"{what}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{what}: expected {len(data)} integer labels (one per row of 'data'), "
                            f"got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"{what}: labels must lie in 0..9, found [{labels.min()}, "
                            f"{labels.max()}]")
    # Each row is channel-major (1024 red, 1024 green, 1024 blue values, rows of 32 pixels).
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _safe_member_name(name: str) -> bool:
    path = PurePosixPath(name)
    return not (path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\"))
                or ":" in (path.parts[0] if path.parts else ""))


def _cifar_pickles_from_tar(archive: Path, wanted: Sequence[str]) -> dict[str, dict]:
    """Unpickle the ``wanted`` members of the archive in one pass, without extracting to disk.
    Any member name that is absolute or contains ``..`` rejects the whole archive."""
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # archive order: one decompression pass
                if not _safe_member_name(member.name):
                    raise DataFileError(f"{archive}: unsafe member name {member.name!r} (absolute "
                                        f"or containing '..'); refusing to read this archive, it "
                                        f"is not the original CIFAR-10")
                base = PurePosixPath(member.name).name
                if base in wanted and member.isfile():
                    found[base] = _unpickle_cifar(tar.extractfile(member).read(),
                                                  f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataFileError(f"{archive}: not a readable tar archive ({exc}); download it "
                            f"again") from exc
    return found


def load_cifar10(path: str | os.PathLike, verify: bool = True, md5: str | None = None) -> Dataset:
    """CIFAR-10 from the "python version": a directory holding ``data_batch_1`` … ``data_batch_5``,
    ``test_batch`` and ``batches.meta`` (or its ``cifar-10-batches-py`` sub-folder), or the
    original ``cifar-10-python.tar.gz`` (read in memory, never extracted; or a directory holding it).

    The pickles go through a restricted unpickler (:class:`UnsafePickleError` if a file names
    anything but numpy's array reconstruction).  ``verify`` checks an archive's MD5 against ``md5``
    (default ``CIFAR10_MD5``); directories have no published checksums.  Images come out as
    (N, 3, 32, 32) ``uint8``, labels ``int64``.
    """
    path = Path(path)
    wanted = (*CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta")
    if path.is_dir():
        if (path / CIFAR10_FOLDER).is_dir():
            path = path / CIFAR10_FOLDER
        elif not (path / "batches.meta").is_file() and (path / CIFAR10_ARCHIVE).is_file():
            path = path / CIFAR10_ARCHIVE
    if path.is_file():
        if verify:
            _check_digest(str(path), _file_digest(path, "md5"), md5 or CIFAR10_MD5, "md5",
                          "delete it and download it again (download_cifar10), or pass "
                          "verify=False if you know it is right")
        pickles = _cifar_pickles_from_tar(path, wanted)
    elif path.is_dir():
        pickles = {name: _unpickle_cifar((path / name).read_bytes(), str(path / name))
                   for name in wanted if (path / name).is_file()}
    else:
        raise FileNotFoundError(f"CIFAR-10 not found at {path}: expected a directory with the "
                                f"batches or {CIFAR10_ARCHIVE}; download it with "
                                f"download_cifar10() or load_dataset('cifar10', download=True)")
    missing = [name for name in wanted if name not in pickles]
    if missing:
        raise DataFileError(f"{path}: missing CIFAR-10 file(s) {', '.join(missing)}; the data set "
                            f"is incomplete, download it again")
    train = [_cifar_batch(pickles[name], f"{path}:{name}") for name in CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _cifar_batch(pickles["test_batch"], f"{path}:test_batch")
    names = pickles["batches.meta"].get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataFileError(f"{path}:batches.meta: expected 10 'label_names', got {names!r}")
    classes = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    return Dataset(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   x_test, y_test, name="cifar10", classes=classes,
                   source=f"CIFAR-10 python version at {path}")


# --------------------------------------------------------------------------- downloads

def _fetch(urls: Sequence[str], dest: Path, check: Callable[[Path], None],
           timeout: float) -> Path:
    """Download the first URL that yields a file passing ``check`` to ``dest``, atomically.

    Each attempt streams into a temporary file in ``dest``'s directory, checks it, and only then
    renames it over ``dest`` (``os.replace`` is atomic on one file system): a failed or truncated
    download never leaves a partial file where a loader would find it.
    """
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, _CHUNK)
                # http.client does not complain when the connection drops early; compare lengths.
                announced = resp.headers.get("Content-Length")
                if announced is not None and out.tell() != int(announced):
                    raise DataFileError(f"truncated download: received {out.tell()} of "
                                        f"{announced} bytes")
                out.flush()
                os.fsync(out.fileno())
            check(Path(tmp))
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file can be readable
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException, DataFileError) as exc:
            errors.append(f"  {url}: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise DownloadError(f"could not download {dest.name}; tried:\n" + "\n".join(errors) +
                        f"\nCheck your connection, or download the file by hand into {dest.parent}")


def _mirror_urls(mirrors: Sequence[str], filename: str) -> list[str]:
    if isinstance(mirrors, str):
        raise TypeError("mirrors must be a sequence of URLs, not a single string")
    return [m.rstrip("/") + "/" + filename for m in mirrors]


def download_mnist(cache_dir: str | os.PathLike | None = None,
                   mirrors: Sequence[str] = DEFAULT_MNIST_MIRRORS,
                   checksums: Mapping[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the four gzipped MNIST IDX files into ``<root>/mnist`` and return that directory.

    ``root`` is :func:`data_root` (``cache_dir``, else ``$BBITS_REF_DATA``, else
    ``~/.cache/bbits_ref``).  Mirrors are tried in order (any URL ``urllib`` can open, including
    ``file://``).  Every file is verified against ``checksums`` (MD5 of the decompressed content,
    default ``MNIST_MD5``) before it is renamed into place; files already present and valid are
    not downloaded again, invalid ones are replaced.
    """
    target = data_root(cache_dir) / "mnist"
    target.mkdir(parents=True, exist_ok=True)
    checksums = MNIST_MD5 if checksums is None else checksums
    for stem, _ in MNIST_FILES.values():
        dest = target / f"{stem}.gz"

        def check(path: Path, stem=stem) -> None:
            _check_digest(f"downloaded {stem}.gz", _file_digest(path, "md5", decompress=True),
                          checksums[stem], "md5", "the mirror serves a different file")

        if dest.is_file():
            try:
                check(dest)
                continue
            except DataFileError:
                pass  # damaged: download it again, atomically replacing it
        _fetch(_mirror_urls(mirrors, dest.name), dest, check, timeout)
    return target


def download_cifar10(cache_dir: str | os.PathLike | None = None,
                     mirrors: Sequence[str] = DEFAULT_CIFAR10_MIRRORS, md5: str | None = None,
                     timeout: float = 60.0) -> Path:
    """Download ``cifar-10-python.tar.gz`` (about 163 MB) into ``<root>/cifar10`` and return its
    path; as :func:`download_mnist`, with the MD5 of the archive (default ``CIFAR10_MD5``)."""
    target = data_root(cache_dir) / "cifar10"
    target.mkdir(parents=True, exist_ok=True)
    dest = target / CIFAR10_ARCHIVE

    def check(path: Path) -> None:
        _check_digest(f"downloaded {CIFAR10_ARCHIVE}", _file_digest(path, "md5"),
                      md5 or CIFAR10_MD5, "md5", "the mirror serves a different file")

    if dest.is_file():
        try:
            check(dest)
            return dest
        except DataFileError:
            pass
    return _fetch(_mirror_urls(mirrors, CIFAR10_ARCHIVE), dest, check, timeout)


# --------------------------------------------------------------------------- one entry point

def _missing(name: str, looked: Sequence[Path], extra: str = "") -> FileNotFoundError:
    places = "\n".join(f"  {p}" for p in looked)
    return FileNotFoundError(
        f"{name} not found. Looked in:\n{places}\nTo get it: load_dataset({name!r}, "
        f"download=True) (on the command line: --download), or put the files in one of these "
        f"places, or set {DATA_ENV_VAR} to the directory that holds them.{extra}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 small: bool = False) -> Dataset:
    """Load ``"mnist-small"`` (embedded, offline), ``"mnist"`` or ``"cifar10"`` as a :class:`Dataset`.

    Files are looked for under ``root`` = ``data_dir``, or if it is None the cache directory
    (``$BBITS_REF_DATA``, default ``~/.cache/bbits_ref``): MNIST in ``root`` or ``root/mnist``;
    CIFAR-10 as ``root`` itself (an archive), ``root``, ``root/cifar-10-batches-py``,
    ``root/cifar10/cifar-10-batches-py``, ``root/cifar10/cifar-10-python.tar.gz`` or
    ``root/cifar-10-python.tar.gz``.  If they are missing, ``download=True`` fetches them into
    ``root`` (:func:`download_mnist`, :func:`download_cifar10`); otherwise a
    ``FileNotFoundError`` says where it looked and how to get them.

    ``small=True`` keeps the first 1,000 training and 200 test examples of each class (the size
    of the embedded subset; for MNIST exactly the embedded images), for quick runs.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    root = data_root(data_dir)
    if name == "mnist-small":
        return load_embedded_mnist()
    if name == "mnist":
        looked = [root, root / "mnist"]
        found = [d for d in looked if all(_mnist_file(d, stem) for stem, _ in MNIST_FILES.values())]
        if found:
            dataset = load_mnist(found[0])
        elif download:
            dataset = load_mnist(download_mnist(root))
        else:
            raise _missing(name, looked, " Or use 'mnist-small', embedded in the package.")
    else:
        looked = [root, root / CIFAR10_FOLDER, root / "cifar10" / CIFAR10_FOLDER,
                  root / "cifar10" / CIFAR10_ARCHIVE, root / CIFAR10_ARCHIVE]
        found = [p for p in looked if (p.is_file() and tarfile.is_tarfile(p))
                 or (p / "batches.meta").is_file()]
        if found:
            dataset = load_cifar10(found[0])
        elif download:
            dataset = load_cifar10(download_cifar10(root))
        else:
            raise _missing(name, looked)
    if small:
        dataset = dataset.subset(*EMBEDDED_PER_CLASS, name=dataset.name)
    return dataset


# --------------------------------------------------------------------------- minibatches

def batches(x: np.ndarray, y: np.ndarray, batch_size: int,
            rng: np.random.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x[idx], y[idx])`` minibatches that cover every example once.

    With a ``numpy.random.Generator`` the order is one ``rng.permutation(N)`` per call (so one
    call = one shuffled epoch, reproducible from the seed); with ``rng=None`` the file order.
    The last batch is smaller unless ``drop_last``.  Arguments are checked here, when the
    generator is created, not at the first ``next()``.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)) or "
                        f"None for no shuffling, got {type(rng).__name__}")
    n = len(x)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch_size if drop_last else n

    def generate():
        for start in range(0, stop, batch_size):  # a loop over batches, not examples
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]

    return generate()


# --------------------------------------------------------------------------- spec §7.3 pipelines

def _check_images(images, channels: int, size: int, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"{what} expects the raw uint8 pixels (0..255), got {images.dtype}; "
                        f"normalise once, from the uint8 images of the Dataset")
    if images.ndim != 4 or images.shape[1:] != (channels, size, size):
        raise ValueError(f"{what} expects images of shape (N, {channels}, {size}, {size}), got "
                         f"{images.shape}")
    return images


def normalize_mnist(images: np.ndarray) -> np.ndarray:
    """MNIST input of spec §7.3 (``ToTensor`` only): x / 255 as float32, shape (N, 1, 28, 28).
    Accepts (N, 28, 28) or (N, 1, 28, 28) ``uint8``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    images = _check_images(images, 1, 28, "normalize_mnist")
    return images.astype(np.float32) / np.float32(255)


def normalize_cifar(images: np.ndarray) -> np.ndarray:
    """CIFAR-10 input of spec §7.3: x / 255, then (x - mean_c) / std_c per channel with
    mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010); float32, (N, 3, 32, 32).

    In float32 and in torchvision's order of operations, so the result matches
    ``Normalize(mean, std)(ToTensor()(img))`` bit for bit."""
    images = _check_images(images, 3, 32, "normalize_cifar")
    mean = np.asarray(CIFAR10_MEAN, np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, np.float32)[:, None, None]
    return (images.astype(np.float32) / np.float32(255) - mean) / std


def augment_cifar(images: np.ndarray, rng: np.random.Generator, padding: int = 4,
                  return_params: bool = False):
    """CIFAR-10 training augmentation of spec §7.3: ``RandomCrop(32, padding=4)`` then
    ``RandomHorizontalFlip(p=0.5)``, vectorised over the batch.

    For example n with shift (dy, dx), drawn uniformly from {-padding, …, padding}, and flip f:

        out[n, c, i, j] = padded[n, c, padding + dy + i, padding + dx + j']
        with j' = W - 1 - j if f else j,

    where ``padded`` is the image with ``padding`` zero pixels on each side (zero = black: apply
    this to the uint8 images, *before* :func:`normalize_cifar`, as torchvision does).  One
    fancy-indexing gather builds the whole batch.  ``return_params=True`` also returns the
    shifts (N, 2) and flips (N,) that were drawn.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"augment_cifar expects a batch of shape (N, C, H, W), got {images.shape}")
    n, channels, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    shifts = rng.integers(-padding, padding + 1, size=(n, 2))
    flipped = rng.random(n) < 0.5
    rows = (padding + shifts[:, :1]) + np.arange(height)            # (N, H)
    cols = (padding + shifts[:, 1:]) + np.arange(width)             # (N, W)
    cols = np.where(flipped[:, None], cols[:, ::-1], cols)
    out = padded[np.arange(n)[:, None, None, None], np.arange(channels)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return (out, shifts, flipped) if return_params else out

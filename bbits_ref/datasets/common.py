"""What every data set shares: the :class:`Dataset` container, the data errors, checksums,
minibatches, and the input pipelines of the official recipes (docs/method.md §7.3).

The pipelines, applied per minibatch of :func:`batches` (as
:class:`bbits_ref.training.trainer.Trainer` does):

* MNIST: ``ToTensor`` only, x / 255 as float32, shape (N, 1, 28, 28): :func:`normalize_mnist`;
* CIFAR-10 training: random 32x32 crop of the image zero-padded by 4 pixels, then a horizontal
  flip with p = 0.5 (:func:`augment_cifar`, on the ``uint8`` images so the padding is black), then
  x / 255 and per-channel (x - mean) / std (:func:`normalize_cifar`); test: normalisation only.

The float arithmetic is torchvision's (float32 division by 255, then subtract and divide by the
float32 mean and std), so normalised inputs agree bit for bit with a PyTorch pipeline.
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from bbits_ref._errors import DataFileError as _BaseDataFileError
from bbits_ref._errors import UsageError

__all__ = [
    "Dataset", "first_per_class", "batches", "normalize_mnist", "normalize_cifar",
    "augment_cifar", "DataFileError", "DataNotFoundError", "ChecksumError", "UnsafePickleError",
    "DownloadError", "CIFAR10_MEAN", "CIFAR10_STD", "checksum_algorithm", "check_digest",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # docs/method.md §7.3, the official code's Normalize
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

#: How a user gets the files, appended to every "missing or damaged" message.
HOW_TO_GET = ("rerun with --download (or load_dataset(..., download=True)), or point --data-dir "
              "or BBITS_REF_DATA at a folder holding the original files")
#: ... and to every "this file is damaged or not the original" message.
REPLACE_FILE = f"move or delete it and {HOW_TO_GET}"


# --------------------------------------------------------------------------- errors

class DataFileError(_BaseDataFileError):
    """A data file is missing, truncated, corrupted or not what it claims to be.

    Every error of :mod:`bbits_ref.datasets` about a file is one of these (exit code 3 on the
    command line); the one-line message names the file, what was expected, what was found and
    what to do."""


class DataNotFoundError(DataFileError, FileNotFoundError):
    """The files of a data set are not where they were looked for (the message lists the places)."""


class ChecksumError(DataFileError):
    """A file's SHA-256 or MD5 differs from the published (or pinned) value."""


class UnsafePickleError(DataFileError, pickle.UnpicklingError):
    """A pickle names a Python global that a CIFAR-10 batch never needs (it could run code)."""


class DownloadError(DataFileError, OSError):
    """Every mirror failed; the message says what went wrong with each."""


# --------------------------------------------------------------------------- checksums

def checksum_algorithm(expected: str) -> str:
    """``"sha256"`` for a 64-digit hex checksum, ``"md5"`` for a 32-digit one."""
    algorithm = {64: "sha256", 32: "md5"}.get(len(expected))
    if algorithm is None or any(c not in "0123456789abcdefABCDEF" for c in expected):
        raise UsageError(f"a checksum must be 64 (SHA-256) or 32 (MD5) hex digits, got "
                         f"{expected!r}")
    return algorithm


def check_digest(what: str, digest, expected: str, remedy: str) -> None:
    """Raise :class:`ChecksumError` unless ``digest`` (a ``hashlib`` object) has the hex value
    ``expected``; the message gives both values."""
    got = digest.hexdigest()
    if got != expected.lower():
        raise ChecksumError(f"{what}: {digest.name.upper()} checksum mismatch: expected "
                            f"{expected.lower()}, got {got}; the file is damaged or not the "
                            f"original: {remedy}")


def new_digest(expected: str | None):
    """A ``hashlib`` object of the algorithm ``expected`` is written in (None: no checking)."""
    return None if expected is None else hashlib.new(checksum_algorithm(expected))


def describe(obj) -> str:
    """A short description of an untrusted object for an error message (never its full repr)."""
    if isinstance(obj, np.ndarray):
        return f"an array of dtype {obj.dtype} and shape {obj.shape}"
    if isinstance(obj, (list, tuple, dict, bytes, str)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return f"a {type(obj).__name__}"


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
                raise UsageError(f"Dataset {self.name!r}: {len(x)} {split} images but {len(y)} "
                                 f"labels; give one label per image")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise UsageError(f"Dataset {self.name!r}: {split} labels must lie in "
                                 f"[0, {len(self.classes)}), found [{y.min()}, {y.max()}]")

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train {self.x_train.shape} {self.x_train.dtype}, "
                f"test {self.x_test.shape} {self.x_test.dtype}, {len(self.classes)} classes, "
                f"source={self.source!r})")

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """The docs/method.md §7.3 normalisation of this data set: :func:`normalize_mnist` or
        :func:`normalize_cifar` (float32, NCHW)."""
        return normalize_cifar(images) if self.name.startswith("cifar") else normalize_mnist(images)

    def subset(self, train_per_class: int, test_per_class: int, name: str | None = None) -> Dataset:
        """The first ``*_per_class`` examples of every class, in file order
        (:func:`first_per_class`)."""
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


# --------------------------------------------------------------------------- §7.3 pipelines

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
    """MNIST input of docs/method.md §7.3 (``ToTensor`` only): x / 255 as float32, shape
    (N, 1, 28, 28).  Accepts (N, 28, 28) or (N, 1, 28, 28) ``uint8``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    images = _check_images(images, 1, 28, "normalize_mnist")
    return images.astype(np.float32) / np.float32(255)


def normalize_cifar(images: np.ndarray) -> np.ndarray:
    """CIFAR-10 input of docs/method.md §7.3: x / 255, then (x - mean_c) / std_c per channel with
    mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010); float32, (N, 3, 32, 32).

    In float32 and in torchvision's order of operations, so the result matches
    ``Normalize(mean, std)(ToTensor()(img))`` bit for bit."""
    images = _check_images(images, 3, 32, "normalize_cifar")
    mean = np.asarray(CIFAR10_MEAN, np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, np.float32)[:, None, None]
    return (images.astype(np.float32) / np.float32(255) - mean) / std


def augment_cifar(images: np.ndarray, rng: np.random.Generator, padding: int = 4,
                  return_params: bool = False):
    """CIFAR-10 training augmentation of docs/method.md §7.3: ``RandomCrop(32, padding=4)`` then
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

"""Datasets: the embedded MNIST subset, MNIST (IDX) and CIFAR-10 files, downloads and batching.

Three data sets, each returned as a :class:`Dataset` of raw ``uint8`` images and ``int64`` labels
by :func:`load_dataset`:

* ``"mnist-small"``: a class-balanced subset of MNIST embedded in the package (1,000 training and
  200 test images per class; CC BY-SA 3.0, see ``bbits_ref/datasets/embedded/MNIST_LICENSE.txt``).
  Works offline; notebooks and CI use it.
* ``"mnist"``: the full set from its four standard IDX files (:mod:`~bbits_ref.datasets.mnist`).
* ``"cifar10"``: the "python version" pickles, read with a restricted unpickler that cannot run
  code (:mod:`~bbits_ref.datasets.cifar10`).

Files live under one data root (:mod:`~bbits_ref.datasets.cache`): ``--data-dir``, else
``$BBITS_REF_DATA``, else ``$XDG_CACHE_HOME/bbits_ref`` or ``~/.cache/bbits_ref``, as
``<root>/mnist/*.gz`` and ``<root>/cifar10/cifar-10-python.tar.gz``.  Nothing touches the network
unless asked (``--download``, ``download=True``, :func:`download_mnist`, :func:`download_cifar10`);
downloads are checksummed before they are put in place (:mod:`~bbits_ref.datasets.download`).
Every problem with a file is a :class:`DataFileError` with a one-line message.

Modules: ``common`` (container, errors, batches, docs/method.md §7.3 pipelines), ``cache``,
``download``, ``mnist``, ``cifar10``, ``catalog`` (:func:`load_dataset`).
"""
from bbits_ref.datasets.cache import DATA_ENV_VAR, DEFAULT_DATA_ROOT, data_root, default_cache_dir
from bbits_ref.datasets.catalog import DATASET_NAMES, load_dataset
from bbits_ref.datasets.cifar10 import (CIFAR10_MD5, DEFAULT_CIFAR10_MIRRORS, download_cifar10,
                                        find_cifar10, load_cifar10)
from bbits_ref.datasets.common import (CIFAR10_MEAN, CIFAR10_STD, ChecksumError, DataFileError,
                                       DataNotFoundError, Dataset, DownloadError,
                                       UnsafePickleError, augment_cifar, batches,
                                       first_per_class, normalize_cifar, normalize_mnist)
from bbits_ref.datasets.mnist import (DEFAULT_MNIST_MIRRORS, EMBEDDED_MNIST_SHA256, MNIST_MD5,
                                      MNIST_SHA256, download_mnist, find_mnist,
                                      load_embedded_mnist, load_mnist, read_idx)

__all__ = [
    "Dataset", "load_dataset", "load_embedded_mnist", "load_mnist", "read_idx", "find_mnist",
    "download_mnist", "load_cifar10", "find_cifar10", "download_cifar10", "data_root",
    "default_cache_dir", "batches", "first_per_class", "normalize_mnist", "normalize_cifar",
    "augment_cifar", "DataFileError", "DataNotFoundError", "ChecksumError", "UnsafePickleError",
    "DownloadError", "DATASET_NAMES", "DATA_ENV_VAR", "DEFAULT_DATA_ROOT", "MNIST_MD5",
    "MNIST_SHA256", "DEFAULT_MNIST_MIRRORS", "CIFAR10_MD5", "DEFAULT_CIFAR10_MIRRORS",
    "CIFAR10_MEAN", "CIFAR10_STD", "EMBEDDED_MNIST_SHA256",
]

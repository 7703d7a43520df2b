"""One entry point for the three data sets: :func:`load_dataset`."""
from __future__ import annotations

import os

from bbits_ref._errors import UsageError
from bbits_ref.datasets.cache import DATA_ENV_VAR, data_root
from bbits_ref.datasets.cifar10 import (CIFAR10_ARCHIVE, CIFAR10_FOLDER, download_cifar10,
                                        find_cifar10, load_cifar10)
from bbits_ref.datasets.common import DataNotFoundError, Dataset
from bbits_ref.datasets.mnist import (EMBEDDED_PER_CLASS, MNIST_FILES, _missing_message,
                                      download_mnist, find_mnist, load_embedded_mnist, load_mnist)

__all__ = ["DATASET_NAMES", "load_dataset"]

DATASET_NAMES = ("mnist-small", "mnist", "cifar10")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 small: bool = False) -> Dataset:
    """Load ``"mnist-small"`` (embedded, offline), ``"mnist"`` or ``"cifar10"`` as a
    :class:`Dataset`.

    Files are looked for under the data root (:func:`bbits_ref.datasets.cache.data_root`:
    ``data_dir``, else ``$BBITS_REF_DATA``, else the user cache folder): MNIST in ``root`` or
    ``root/mnist`` (:func:`~bbits_ref.datasets.mnist.find_mnist`), CIFAR-10 as in
    :func:`~bbits_ref.datasets.cifar10.find_cifar10`.  If they are missing, ``download=True``
    fetches them into ``root/mnist`` or ``root/cifar10``; otherwise a :class:`DataNotFoundError`
    names the files and the folders searched.

    ``small=True`` keeps the first 1,000 training and 200 test examples of each class (the size
    of the embedded subset; for MNIST exactly the embedded images), for quick runs.
    """
    if name not in DATASET_NAMES:
        raise UsageError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "mnist-small":
        return load_embedded_mnist()
    root = data_root(data_dir)
    if name == "mnist":
        folder = find_mnist(root)
        if folder is None and not download:
            stems = ", ".join(f"{stem}[.gz]" for stem, *_ in MNIST_FILES.values())
            raise DataNotFoundError(
                f"MNIST not found: expected {stems}; searched "
                f"{_missing_message([root, root / 'mnist'])}; rerun with --download (it "
                f"downloads into {root / 'mnist'}), or point --data-dir or {DATA_ENV_VAR} at the "
                f"folder holding them, or use 'mnist-small', embedded in the package")
        dataset = load_mnist(folder if folder is not None else download_mnist(root))
    else:
        path = find_cifar10(root)
        if path is None and not download:
            raise DataNotFoundError(
                f"CIFAR-10 not found: expected {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/ in "
                f"{root}, {root / 'cifar10'} or as {root} itself; rerun with --download (it "
                f"downloads into {root / 'cifar10'}), or point --data-dir or {DATA_ENV_VAR} at "
                f"the folder holding it")
        dataset = load_cifar10(path if path is not None else download_cifar10(root))
    if small:
        dataset = dataset.subset(*EMBEDDED_PER_CLASS, name=dataset.name)
    return dataset

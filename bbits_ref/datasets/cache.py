"""Where data sets live: one data root per user, chosen in this order

1. the ``data_dir`` argument (``--data-dir`` on the command line, ``TrainConfig.data_dir``);
2. the environment variable ``BBITS_REF_DATA``;
3. the user cache folder: ``$XDG_CACHE_HOME/bbits_ref`` if ``XDG_CACHE_HOME`` is set to an
   absolute path, else ``~/.cache/bbits_ref``.

Layout under the root (what ``--download`` writes, and where the loaders look)::

    <root>/mnist/train-images-idx3-ubyte.gz   (or the uncompressed file), and the other three
    <root>/cifar10/cifar-10-python.tar.gz     (or the extracted cifar-10-batches-py/)

Nothing here creates folders or touches the network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

__all__ = ["DATA_ENV_VAR", "DEFAULT_DATA_ROOT", "data_root", "default_cache_dir"]

DATA_ENV_VAR = "BBITS_REF_DATA"
DEFAULT_DATA_ROOT = "~/.cache/bbits_ref"  # when neither BBITS_REF_DATA nor XDG_CACHE_HOME is set
CACHE_FOLDER = "bbits_ref"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/bbits_ref`` (an absolute ``XDG_CACHE_HOME`` only, as the XDG base
    directory convention says), else ``~/.cache/bbits_ref``."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / CACHE_FOLDER
    return Path(DEFAULT_DATA_ROOT).expanduser()


def data_root(data_dir: str | os.PathLike | None = None,
              environ: Mapping[str, str] | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$BBITS_REF_DATA`` if set and non-empty, else
    :func:`default_cache_dir`.  ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if env.get(DATA_ENV_VAR, "").strip():
        return Path(env[DATA_ENV_VAR]).expanduser()
    return default_cache_dir(env)

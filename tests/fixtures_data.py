"""Helpers for tests/test_data.py: tiny files in the exact on-disk formats of MNIST (IDX) and
CIFAR-10 (python-version pickles), a malicious pickle, and a local HTTP server."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

MNIST_STEMS = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
               "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")


# --------------------------------------------------------------------------- MNIST

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian sizes, the bytes."""
    array = np.asarray(array, np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def write_file(path: Path, content: bytes) -> Path:
    """Write ``content``, gzip-compressed (with a fixed mtime) if the name ends in .gz."""
    path.write_bytes(gzip.compress(content, mtime=0) if path.suffix == ".gz" else content)
    return path


def make_mnist(rng: np.random.Generator, n_train: int = 30, n_test: int = 20) -> dict:
    """Random 28x28 images; labels cover every digit."""
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.permutation(np.arange(n_test) % 10).astype(np.uint8)}


def write_mnist_dir(directory: Path, arrays: dict, gz: bool = True) -> dict[str, str]:
    """The four IDX files; returns {file stem: MD5 of the uncompressed content}."""
    directory.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for role, stem in MNIST_STEMS.items():
        content = idx_bytes(arrays[role])
        write_file(directory / (stem + (".gz" if gz else "")), content)
        checksums[stem] = hashlib.md5(content).hexdigest()
    return checksums


# --------------------------------------------------------------------------- CIFAR-10

class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as cPickle did
    for the original CIFAR-10 files; Python 3 reads them back as ``str`` under encoding='latin1'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def cifar_pickle(obj: dict, style: str) -> bytes:
    """``obj`` (a dict with bytes keys) pickled as

    * ``"py2"``: the original format (protocol 2, py2 strings, ``numpy.core.multiarray``);
    * ``"bytes-keys"``: re-pickled by Python 3, keys kept as bytes;
    * ``"str-keys"``: re-pickled by Python 3 with str keys.
    """
    if style == "py2":
        out = io.BytesIO()
        _Py2Pickler(out, protocol=2).dump(obj)
        # Protocol-2 GLOBAL opcodes are text lines, so renaming the module keeps the pickle valid.
        return out.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    if style == "bytes-keys":
        return pickle.dumps(obj, protocol=4)
    if style == "str-keys":
        def to_str(v):
            return v.decode() if isinstance(v, bytes) else v
        return pickle.dumps({to_str(k): ([to_str(x) for x in v] if isinstance(v, list) else v)
                             for k, v in obj.items()}, protocol=4)
    raise ValueError(style)


def make_cifar(rng: np.random.Generator, n_per_batch: int = 6, n_test: int = 7) -> dict:
    """{file name: (data (N, 3072) uint8, labels list)} for the 5 training batches and the test batch."""
    files = {}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        files[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                       [int(v) for v in rng.integers(0, 10, n)])
    return files


def cifar_files(cifar: dict, style: str, overrides: dict | None = None) -> dict[str, bytes]:
    """The pickled files of the python version (name -> bytes); ``overrides`` replaces some."""
    out = {}
    for name, (data, labels) in cifar.items():
        out[name] = cifar_pickle({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                  b"filenames": [f"img_{i}.png".encode() for i in range(len(data))]},
                                 style)
    out["batches.meta"] = cifar_pickle({b"label_names": [n.encode() for n in CIFAR_NAMES],
                                        b"num_cases_per_batch": 10000, b"num_vis": 3072}, style)
    out.update(overrides or {})
    return out


def write_cifar_dir(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory


def write_cifar_tar(path: Path, files: dict[str, bytes], folder: str = "cifar-10-batches-py",
                    extra: dict[str, bytes] | None = None) -> str:
    """A .tar.gz with the files under ``folder/`` (plus ``extra`` members named verbatim);
    returns the archive's MD5."""
    members = {f"{folder}/{name}": content for name, content in files.items()}
    members.update(extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


class _RunsCode:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def malicious_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that would create ``marker`` if anything in them were executed."""
    return {"os.system": pickle.dumps({b"data": _RunsCode(os.system, f"touch '{marker}'")}),
            "builtins.open": pickle.dumps({b"data": _RunsCode(open, str(marker), "w")}, protocol=2),
            "nested in labels": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                              b"labels": [_RunsCode(os.mkdir, str(marker))]})}


# --------------------------------------------------------------------------- a local HTTP server

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server API)
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, mode = route if isinstance(route, tuple) else (route, "ok")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "truncate": announce the full length, send half, hang up.
        self.wfile.write(body[:len(body) // 2] if mode == "truncate" else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(routes: dict):
    """Serve ``routes`` ({"/path": bytes or (bytes, "truncate")}) on 127.0.0.1 (ephemeral port)
    from a thread; yields the server, whose ``url`` is the base URL and ``hits`` the request paths."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes, server.hits = routes, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

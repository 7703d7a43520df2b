"""Helpers for tests/test_data.py: tiny files in the exact on-disk formats of MNIST (IDX) and
CIFAR-10 (python-version pickles, as Python 2 wrote them and as Python 3 re-pickles them at every
protocol), hostile files, and a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import io
import os
import pickle
import pickletools
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
    """Writes ``bytes`` as Python 2 ``str`` opcodes (STRING at protocol 0, SHORT_BINSTRING /
    BINSTRING above), as cPickle did for the original CIFAR-10 files; Python 3 reads them back as
    ``str`` under encoding='latin1'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if self.proto == 0:
            self.write(b"S'" + codecs.escape_encode(obj)[0] + b"'\n")  # Python 2's repr
        elif len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def reducer_override(self, obj):
        """numpy.dtype as numpy wrote it under Python 2: ``dtype('u1', 0, 1)`` with int flags
        and byte-string state, not today's ``dtype('u1', False, True)``."""
        if not isinstance(obj, np.dtype):
            return NotImplemented
        func, (spec, align, copy), state = obj.__reduce__()
        state = tuple(v.encode() if isinstance(v, str) else v for v in state)
        return func, (spec.encode(), int(align), int(copy)), state


NUMPY1_NAMES = {"numpy._core.multiarray": "numpy.core.multiarray",
                "numpy._core.numeric": "numpy.core.numeric"}


def with_numpy1_names(raw: bytes) -> bytes:
    """The same pickle naming numpy's modules as numpy 1.x does (``numpy.core...``).  Protocols
    0-2 name globals in text lines, replaced in place; from protocol 3 on the pickle is rebuilt
    op by op and FRAME opcodes are dropped (framing is optional) so that no length goes stale."""
    if raw[:2] not in (b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        for new_name, old_name in NUMPY1_NAMES.items():
            raw = raw.replace(b"c" + new_name.encode() + b"\n", b"c" + old_name.encode() + b"\n")
        return raw
    ops = list(pickletools.genops(raw))
    out = []
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(raw)
        if op.name == "FRAME":
            continue
        if op.name == "GLOBAL" and arg.split(" ")[0] in NUMPY1_NAMES:
            module, name = arg.split(" ")
            out.append(b"c" + NUMPY1_NAMES[module].encode() + b"\n" + name.encode() + b"\n")
        elif op.name == "SHORT_BINUNICODE" and arg in NUMPY1_NAMES:
            new = NUMPY1_NAMES[arg].encode()
            out.append(pickle.SHORT_BINUNICODE + bytes([len(new)]) + new)
        else:
            out.append(raw[pos:end])
    return b"".join(out)


#: Every way a genuine batch can be pickled: the Python 2 originals (protocols 0-2), Python 3
#: re-pickles at protocols 0-5 written with numpy 2.x and with numpy 1.x module names, str keys.
CIFAR_STYLES = ("py2-p0", "py2-p1", "py2-p2", *(f"py3-p{p}" for p in range(6)),
                *(f"py3-p{p}-numpy1" for p in range(6)), "str-keys")


def cifar_pickle(obj: dict, style: str) -> bytes:
    """``obj`` (a dict with bytes keys) pickled in one of :data:`CIFAR_STYLES`; ``"py2"`` is the
    original format (protocol 2, Python 2 strings, ``numpy.core.multiarray``)."""
    style = {"py2": "py2-p2"}.get(style, style)
    if style.startswith("py2-p"):
        out = io.BytesIO()
        _Py2Pickler(out, protocol=int(style[-1])).dump(obj)
        return with_numpy1_names(out.getvalue())
    if style.startswith("py3-p"):
        raw = pickle.dumps(obj, protocol=int(style[5]))
        return with_numpy1_names(raw) if style.endswith("numpy1") else raw
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
            "eval, protocol 0": pickle.dumps({b"data": _RunsCode(
                eval, f"open({str(marker)!r}, 'w')")}, protocol=0),
            "nested in labels": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                              b"labels": [_RunsCode(os.mkdir, str(marker))]})}


def _unicode(text: str) -> bytes:
    return pickle.BINUNICODE + struct.pack("<I", len(text)) + text.encode()


def _in_data(*ops: bytes) -> bytes:
    """A protocol-2 pickle of ``{"data": <what ops build>}``, written opcode by opcode."""
    return b"\x80\x02}" + _unicode("data") + b"".join(ops) + b"s."


BIG = struct.pack("<i", 2**31 - 1)


def hostile_pickles() -> dict[str, tuple[bytes, str]]:
    """name -> (pickle using only allowed globals, but in ways no genuine batch does; a regex
    of the expected error).  Each would allocate gigabytes if it were obeyed."""
    encode_calls = b"".join(b"c_codecs\nencode\nh\x00" + _unicode("latin1") + b"\x86Ra"
                            for _ in range(100))
    return {
        # numpy.ndarray((2**31-1, 2**31-1)): the token it resolves to cannot be called.
        "ndarray called": (_in_data(b"cnumpy\nndarray\n(J" + BIG + b"J" + BIG + b"t\x85R"),
                           "unreadable"),
        # _reconstruct with an absurd shape instead of (0,).
        "huge _reconstruct": (_in_data(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n"
                                       b"(J" + BIG + b"J" + BIG + b"tC\x01btR"),
                              "unexpected arguments to numpy's _reconstruct"),
        # a 100 kB string, memoised, encoded 100 times: 10 MB from a 100 kB file.
        "encode bomb": (_in_data(b"]" + _unicode("x" * 100_000) + b"q\x000" + encode_calls),
                        "far more data than the file holds"),
        # a list nested 100,000 deep as the labels.
        "deep labels": (b"\x80\x02}" + _unicode("labels") + b"]" * 100_000 + b"a" * 99_999 + b"s"
                        + _unicode("data") + pickle.dumps(np.zeros((1, 3072), np.uint8), 2)[2:-1]
                        + b"s.", "expected 'labels', 1 integers"),
    }


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

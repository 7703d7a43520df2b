"""``.npz`` checkpoints (no pickle anywhere), read as untrusted files.

A checkpoint holds plain arrays only: the model's parameters and buffers (``model/<name>``),
the optimizer state (``optim/<key>``), and JSON text (stored as a 0-d unicode array, ``meta``)
for the random-generator states, the history, the configuration, the progress counters and the
run's identity.  It is written to a temporary file in the same folder and moved into place with
``os.replace`` (:mod:`bbits_ref._files`): an interrupted write leaves the previous file intact.

Reading trusts nothing in the file: member names, sizes and array headers are checked before
any array is allocated (a small file cannot claim a gigabyte), arrays must be plain numbers or
text (no pickle, no object arrays), the metadata must be a JSON object of bounded size, and a
generator state names one of a fixed list of bit generators (:data:`BIT_GENERATORS`), never a
name that is looked up.  Every problem is a :class:`CheckpointError` (a
:class:`~bbits_ref._errors.DataFileError`) naming the file.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from bbits_ref._errors import DataFileError
from bbits_ref._files import _json_default, atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "restore_rng", "CheckpointError",
           "CHECKPOINT_VERSION", "BIT_GENERATORS"]


class CheckpointError(DataFileError):
    """A checkpoint file is missing, truncated, corrupted, of another format version, or holds
    something a bbits_ref checkpoint cannot hold."""


CHECKPOINT_VERSION = 1

#: The bit generators a checkpoint may name, mapped explicitly to their classes.
BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM,
                  "Philox": np.random.Philox, "SFC64": np.random.SFC64,
                  "MT19937": np.random.MT19937}

#: Limits on what a checkpoint may claim, checked before reading: the JSON metadata, one array,
#: and how much larger than the file its content may be once decompressed (np.savez stores
#: uncompressed, so a genuine checkpoint has a ratio of 1).
MAX_META_BYTES = 256 * 2**20
MAX_ARRAY_BYTES = 2**31
MAX_EXPANSION = 20
_DTYPE_KINDS = "biufU"          # bool, integers, floats, text; no objects, bytes or records


def rng_state(rng: np.random.Generator) -> dict:
    """The complete state of a Generator as a JSON-friendly dict (a copy).

    Some bit generators (Philox, SFC64, MT19937) keep arrays in their state: they become lists.
    """
    return json.loads(json.dumps(rng.bit_generator.state, default=_json_default))


def restore_rng(state: dict) -> np.random.Generator:
    """A Generator in exactly the given state (from :func:`rng_state`).

    ``state["bit_generator"]`` must be one of :data:`BIT_GENERATORS`; a malformed state raises
    :class:`CheckpointError` (the caller adds the file name).
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"a random-generator state should be a JSON object, got "
                              f"{type(state).__name__}")
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in BIT_GENERATORS:
        shown = repr(name)[:40]
        raise CheckpointError(f"unknown bit generator {shown}; a checkpoint may name one of "
                              f"{sorted(BIT_GENERATORS)}")
    bitgen = BIT_GENERATORS[name]()
    try:
        bitgen.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"the {name} generator state is malformed "
                              f"({type(exc).__name__}: {str(exc)[:80]})") from exc
    return np.random.Generator(bitgen)


def save_checkpoint(path, *, model_state: dict, optim_state: dict, meta: dict) -> None:
    """Write a checkpoint atomically.

    ``model_state`` and ``optim_state`` are flat dicts of arrays; ``meta`` is any JSON-friendly
    dict (RNG states, history, config, progress).
    """
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim_state.items()})
    arrays["meta"] = np.array(json.dumps({"version": CHECKPOINT_VERSION, **meta},
                                         default=_json_default))
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"checkpoint entry {k!r} is an object array; only plain arrays are "
                            "stored (no pickle)")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path, expected_model=None) -> tuple[dict, dict, dict]:
    """Read a checkpoint: ``(model_state, optim_state, meta)``.

    ``expected_model`` (e.g. ``model.state_dict()``, or a function ``meta -> state dict`` called
    once the metadata is read and checked) makes every ``model/`` entry need the same name, shape
    and dtype, and no optimizer entry be larger than the largest of them.  This is checked from
    the array headers, before any array is read.

    Raises :class:`CheckpointError` for a missing, truncated or corrupted file, one that would
    need pickle to load, or one whose contents a bbits_ref checkpoint cannot hold.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    headers = _guarded(path, _read_headers, path)
    if "meta" not in headers:
        raise CheckpointError(f"{path} has no 'meta' entry: not a bbits_ref checkpoint")
    shape, dtype = headers["meta"]
    if dtype.kind != "U" or shape != ():
        raise CheckpointError(f"{path}: its 'meta' entry should be JSON text, got a "
                              f"{dtype} array of shape {shape}")
    meta_text = str(_guarded(path, _read_arrays, path, ["meta"])["meta"])
    try:
        meta = json.loads(meta_text)
    except (ValueError, RecursionError) as exc:   # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: its 'meta' entry is not valid JSON "
                              f"({str(exc)[:80]}); the file is corrupted or was not written by "
                              "bbits_ref") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'meta' entry should be a JSON object, got "
                              f"{type(meta).__name__}; not a bbits_ref checkpoint")
    version = meta.get("version")
    if type(version) is not int or version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {repr(version)[:20]}; "
                              f"this bbits_ref reads version {CHECKPOINT_VERSION}")
    if callable(expected_model):
        expected_model = expected_model(meta)
    _check_against_model(path, headers, expected_model)
    data = _guarded(path, _read_arrays, path, [k for k in headers if k != "meta"])
    model = {k[6:]: v for k, v in data.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in data.items() if k.startswith("optim/")}
    return model, optim, meta


def _guarded(path: Path, fn, *args):
    """``fn(*args)`` with every way a damaged zip or .npy can fail as one CheckpointError."""
    try:
        return fn(*args)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            TypeError, SyntaxError, NotImplementedError, MemoryError, RuntimeError,
            OverflowError) as exc:
        raise CheckpointError(f"{path} is not a readable bbits_ref checkpoint (truncated or "
                              f"corrupted?): {type(exc).__name__}: {str(exc)[:120]}; use another "
                              "copy, or train the run again") from exc


def _read_headers(path: Path) -> dict:
    """``{key: (shape, dtype)}`` of every member, each header checked; no array is read."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise CheckpointError(f"{path} lists the same member twice: not a bbits_ref checkpoint")
        total = sum(i.file_size for i in infos)
        if total > MAX_EXPANSION * size + 2**20:
            raise CheckpointError(f"{path} would expand to {total} bytes from {size}: not a "
                                  "bbits_ref checkpoint")
        headers = {}
        for info in infos:
            key = _member_key(path, info.filename)
            with z.open(info) as f:
                headers[key] = _array_header(path, key, f, info.file_size)
        return headers


def _read_arrays(path: Path, keys) -> dict:
    """The arrays ``keys`` (headers already checked by :func:`_read_headers`)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for key in keys:
            with z.open(key + ".npy") as f:
                out[key] = np.lib.format.read_array(f, allow_pickle=False)
    return out


def _member_key(path: Path, name: str) -> str:
    ok = (name.endswith(".npy") and (name == "meta.npy" or name.startswith(("model/", "optim/")))
          and "\x00" not in name and len(name) < 512)
    if not ok:
        raise CheckpointError(f"{path} holds an unexpected member {name[:60]!r}; a bbits_ref "
                              "checkpoint holds meta.npy, model/*.npy and optim/*.npy only")
    return name[:-4]


def _array_header(path: Path, key: str, f, member_size: int) -> tuple:
    """(shape, dtype) of a .npy member, checked: plain dtype, sizes consistent and bounded."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise CheckpointError(f"{path}: entry {key!r} has .npy format version {version}")
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, _fortran, dtype = reader(f)
    if dtype.hasobject or dtype.kind not in _DTYPE_KINDS or dtype.fields is not None:
        hint = " (it would need pickle: allow_pickle is off)" if dtype.hasobject else ""
        raise CheckpointError(f"{path}: entry {key!r} has dtype {dtype}{hint}; a checkpoint "
                              "holds only numbers and text")
    nbytes = math.prod(shape) * dtype.itemsize
    limit = MAX_META_BYTES if key == "meta" else MAX_ARRAY_BYTES
    if nbytes > limit or nbytes > member_size:
        raise CheckpointError(f"{path}: entry {key!r} claims shape {shape} ({nbytes} bytes) but "
                              f"its member holds {member_size} bytes: truncated or corrupted")
    return tuple(shape), dtype


def _check_against_model(path: Path, headers: dict, expected: dict | None) -> None:
    if expected is None:
        return
    saved = {k[6:]: v for k, v in headers.items() if k.startswith("model/")}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model its configuration builds: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, (shape, dtype) in saved.items():
        want = np.asarray(expected[name])
        if shape != want.shape or dtype != want.dtype:
            raise CheckpointError(f"{path}: model entry {name!r} has shape {shape} and dtype "
                                  f"{dtype}; the model needs {want.shape} {want.dtype}")
    largest = max((np.asarray(v).nbytes for v in expected.values()), default=0)
    for key, (shape, dtype) in headers.items():
        if key.startswith("optim/") and math.prod(shape) * dtype.itemsize > max(largest, 1024):
            raise CheckpointError(f"{path}: optimizer entry {key[6:]!r} of shape {shape} is "
                                  "larger than any parameter of the model")

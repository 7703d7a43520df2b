"""Atomic files and ``.npz`` checkpoints (no pickle anywhere).

A checkpoint holds plain arrays only: the model's parameters and buffers (``model/<name>``),
the optimizer state (``optim/<key>``), and JSON text (stored as 0-d unicode arrays) for the
random-generator states, the history, the configuration and the progress counters.  It is
loaded with ``allow_pickle=False``, so a crafted file cannot run code.  Every file is written to
a temporary file in the same directory and moved into place with ``os.replace``: an interrupted
write leaves the previous file intact.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from bbits_ref._files import _json_default, atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "restore_rng", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or of another format version."""


CHECKPOINT_VERSION = 1


def rng_state(rng: np.random.Generator) -> dict:
    """The complete state of a Generator as a JSON-friendly dict (a copy).

    Some bit generators (Philox, SFC64, MT19937) keep arrays in their state: they become lists.
    """
    return json.loads(json.dumps(rng.bit_generator.state, default=_json_default))


def restore_rng(state: dict) -> np.random.Generator:
    """A Generator in exactly the given state."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
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


def load_checkpoint(path) -> tuple[dict, dict, dict]:
    """Read a checkpoint: ``(model_state, optim_state, meta)``.

    Raises :class:`CheckpointError` for a missing, truncated or corrupted file, and for one
    that would need pickle to load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable bbits_ref checkpoint (truncated or "
                              f"corrupted?): {exc}") from exc
    if "meta" not in data:
        raise CheckpointError(f"{path} has no 'meta' entry: not a bbits_ref checkpoint")
    try:
        meta = json.loads(str(data.pop("meta")))
    except ValueError as exc:       # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: its 'meta' entry is not valid JSON ({exc}); the file "
                              "is corrupted or was not written by bbits_ref") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'meta' entry should be a JSON object, got "
                              f"{type(meta).__name__}; not a bbits_ref checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')}; "
                              f"this bbits_ref reads version {CHECKPOINT_VERSION}")
    model = {k[6:]: v for k, v in data.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in data.items() if k.startswith("optim/")}
    return model, optim, meta

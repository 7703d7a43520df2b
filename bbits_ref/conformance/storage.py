"""The suite on disk: :func:`export` writes it, :func:`load` reads it back and refuses anything odd.

A suite directory holds ``manifest.json`` and one ``.npz`` per case (no pickles).  The manifest
records, per case, the file's sha256 and a *case digest*: a sha256 of the case's whole content
(name, method, every input and expected array by value, the plain inputs, tolerances, note), so
an edit of either the file or the manifest entry is caught.  Both are untrusted input:

* the manifest is read only if it is at most :data:`MAX_MANIFEST_BYTES`, and every field is
  type-checked (:func:`_check_entry`);
* the suite version must be one this bbits_ref knows, and the case ids must be exactly that
  version's (:data:`~bbits_ref.conformance.protocol.CASE_IDS`): a missing, extra or renamed case
  fails here, before any adapter runs;
* file names are computed from the case index and id, never taken from the manifest; methods and
  parameter names must be the protocol's;
* each case file is at most :data:`MAX_CASE_BYTES`, matches its sha256, and its arrays are read
  header first (dtype from a short list, shape and size bounded) before any data is allocated.

:func:`export` writes into a new or empty directory, or over an earlier export that it recognises
(its manifest passes the schema check and the directory holds nothing that manifest does not
list); it then removes only the files that manifest lists.  Anything else is refused with a
:class:`~bbits_ref._errors.RunDirError` that names what is there.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from bbits_ref._errors import DataFileError, RunDirError
from bbits_ref._files import atomic_write_bytes, write_json
from bbits_ref._version import __version__
from bbits_ref.conformance.protocol import (CASE_IDS, KEYWORDS, METHODS, SCHEMA_VERSION,
                                            SUITE_VERSION, Case, Suite, flatten, output_names_ok,
                                            unflatten)

__all__ = ["SuiteError", "export", "load", "case_digest", "suite_digest", "MANIFEST",
           "MAX_MANIFEST_BYTES", "MAX_CASE_BYTES", "MAX_CASE_ELEMENTS"]

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_CASE_BYTES = 64 * 2**20
MAX_CASE_ELEMENTS = 4 * 2**20            # all arrays of one case together
MAX_TEXT = 4000                          # characters of a note or a string input
#: The array dtypes a case file may hold.
DTYPES = ("float64", "int64", "int8", "bool")
#: Schema versions whose manifests :func:`export` recognises as its own (to overwrite them).
_KNOWN_SCHEMAS = (1, 2)
_FILE_RE = re.compile(r"[0-9]{3}_[a-z0-9_.]+\.npz")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REDO = "re-create it with `bbits-ref conformance export DIR`"

COMPARISON = ("an output passes when max|actual - expected| <= atol + rtol * max(max|expected|, "
              "tiny); 'tolerances' overrides (atol, rtol) per output name or fnmatch pattern "
              "(atol may be a list: one tolerance per index of the output's first axis).  "
              "Rounding ties are exact in every formula (quantize/ties/*): no tie allowance is "
              "applied.  Sections (§) refer to docs/method.md of bbits_ref.")


class SuiteError(DataFileError):
    """A suite directory that cannot be used: missing, incomplete, edited, corrupted, or written
    for another schema or suite version.  The message names the file and the case."""


# --------------------------------------------------------------------------- digests

def _feed(h, key: str, value) -> None:
    h.update(key.encode() + b"\0")
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"{a.dtype.name} {a.shape}\0".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True).encode() + b"\0")


def _atol_json(atol):
    """An override's atol for JSON: a float, or a list of floats (one per index of axis 0)."""
    if isinstance(atol, (list, tuple, np.ndarray)):
        return [float(a) for a in atol]
    return float(atol)


def _atol_loaded(atol):
    return tuple(float(a) for a in atol) if isinstance(atol, list) else float(atol)


def case_digest(case: Case) -> str:
    """sha256 of everything a case holds: id, method, inputs, expected outputs, tolerances, note.

    Independent of the ``.npz`` container (whose zip headers carry timestamps), so exporting the
    same cases twice gives the same digests.
    """
    h = hashlib.sha256()
    meta = {"name": case.name, "method": case.method, "atol": float(case.atol),
            "rtol": float(case.rtol), "note": case.note, "section": case.section,
            "tolerances": {k: [_atol_json(v[0]), float(v[1])]
                           for k, v in case.tolerances.items()}}
    _feed(h, "meta", meta)
    for key, value in sorted(flatten(case.inputs).items()):
        _feed(h, f"input/{key}", value)
    for key, value in sorted(case.expected.items()):
        _feed(h, f"expected/{key}", value)
    return h.hexdigest()


def suite_digest(digests) -> str:
    """sha256 of the (id, case digest) pairs, sorted by id: one fingerprint of a whole suite."""
    h = hashlib.sha256()
    for name, digest in sorted(digests):
        h.update(f"{name} {digest}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- export

def _file_name(index: int, name: str) -> str:
    return f"{index:03d}_{name.replace('/', '__')}.npz"


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _case_file(case: Case) -> tuple[bytes, dict]:
    """The ``.npz`` bytes of a case and its manifest entry (without index-dependent fields)."""
    arrays, scalars = {}, {}
    for key, value in flatten(case.inputs).items():
        if isinstance(value, np.ndarray):
            arrays[f"input/{key}"] = value
        elif "/" in key:
            raise ValueError(f"case {case.name}: nested input {key} must be an array")
        else:
            scalars[key] = value
    none_outputs = []
    for key, value in case.expected.items():
        if value is None:
            none_outputs.append(key)
        else:
            arrays[f"expected/{key}"] = value
    data = _npz_bytes(arrays)
    entry = {"name": case.name, "method": case.method, "args": list(METHODS[case.method]),
             "scalars": scalars,
             "arrays": {k: {"dtype": v.dtype.name, "shape": list(v.shape)}
                        for k, v in arrays.items()},
             "none_outputs": none_outputs, "atol": case.atol, "rtol": case.rtol,
             "tolerances": {k: [_atol_json(v[0]), v[1]] for k, v in case.tolerances.items()},
             "note": case.note, "section": case.section,
             "sha256": hashlib.sha256(data).hexdigest(), "case_sha256": case_digest(case)}
    return data, entry


def _manifest(entries: list, complete: bool) -> dict:
    return {"schema_version": SCHEMA_VERSION, "suite_version": SUITE_VERSION,
            "created_by": f"bbits_ref {__version__}", "complete": complete,
            "suite_sha256": suite_digest((e["name"], e["case_sha256"]) for e in entries),
            "comparison": COMPARISON, "cases": entries}


def _previous_files(directory: Path) -> list:
    """The files of an earlier export in ``directory`` (which is not empty), to be replaced.

    Refuses (RunDirError) a directory without a recognisable manifest, or holding anything its
    manifest does not list.
    """
    path = directory / MANIFEST
    present = sorted(p.name for p in directory.iterdir())
    what = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    refuse = (f"{directory} is not empty and is not a conformance suite bbits_ref wrote "
              f"(it holds {what}); choose a new or empty directory")
    if not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
        raise RunDirError(refuse)
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        raise RunDirError(refuse + f" ({MANIFEST} is not valid JSON)") from None
    ok = (isinstance(manifest, dict) and manifest.get("schema_version") in _KNOWN_SCHEMAS
          and isinstance(manifest.get("cases"), list)
          and all(isinstance(e, dict) and isinstance(e.get("file"), str)
                  and _FILE_RE.fullmatch(e["file"]) for e in manifest["cases"]))
    if not ok:
        raise RunDirError(refuse + f" ({MANIFEST} is not a suite manifest)")
    listed = {e["file"] for e in manifest["cases"]} | {MANIFEST}
    foreign = [name for name in present if name not in listed]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise RunDirError(f"{directory} holds a conformance suite and also {', '.join(foreign[:5])}"
                          f"{more}, which its manifest does not list: refusing to write there; "
                          "move those files or choose a new or empty directory")
    return [directory / name for name in present if name != MANIFEST]


def export(directory, cases: list | None = None) -> Path:
    """Write the suite to ``directory``: one ``.npz`` per case and ``manifest.json``.

    ``directory`` is created if needed; it must be empty or hold an earlier export, whose files
    (those its manifest lists, and nothing else) are replaced.  ``cases`` defaults to
    :func:`~bbits_ref.conformance.families.build_cases`; a list must hold exactly this suite
    version's cases.  The manifest is first written marked incomplete and rewritten complete at
    the end, so an interrupted export is recognised (and refused by :func:`load`).  Returns the
    path of the manifest.
    """
    from bbits_ref.conformance.families import build_cases

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"{directory} exists and is not a directory; choose another path")
    old = _previous_files(directory) if directory.is_dir() and any(directory.iterdir()) else []
    cases = build_cases() if cases is None else cases
    names = tuple(c.name for c in cases)
    if names != CASE_IDS[SUITE_VERSION]:
        raise ValueError(f"export writes whole suites: the cases given are not the "
                         f"{len(CASE_IDS[SUITE_VERSION])} cases of suite {SUITE_VERSION}")
    files, entries = [], []
    for index, case in enumerate(cases):
        data, entry = _case_file(case)
        files.append(data)
        entries.append({"file": _file_name(index, case.name), **entry})
    for path in old:                      # only files the earlier manifest listed
        path.unlink()
    write_json(directory / MANIFEST, _manifest(entries, complete=False))
    for data, entry in zip(files, entries):
        atomic_write_bytes(directory / entry["file"], data)
    write_json(directory / MANIFEST, _manifest(entries, complete=True))
    return directory / MANIFEST


# --------------------------------------------------------------------------- load

_ENTRY_KEYS = {"file", "name", "method", "args", "scalars", "arrays", "none_outputs", "atol",
               "rtol", "tolerances", "note", "section", "sha256", "case_sha256"}


def _tolerance_ok(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value >= 0


def _scalar_ok(value) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return value is None or isinstance(value, bool) or (
        isinstance(value, (int, float)) and math.isfinite(value))


def _entry_problem(entry, index: int, name: str) -> str | None:
    """What is wrong with one manifest entry (types and values), or None."""
    if set(entry) != _ENTRY_KEYS:
        return (f"has keys {sorted(entry)}; expected {sorted(_ENTRY_KEYS)}")
    method = entry["method"]
    if method not in METHODS or name.split("/")[0] != method:
        return f"has method {method!r}, not the method of its id"
    if entry["file"] != _file_name(index, name):
        return f"names file {entry['file']!r}, expected {_file_name(index, name)!r}"
    if entry["args"] != list(METHODS[method]):
        return f"lists positional parameters {entry['args']!r}, expected {list(METHODS[method])}"
    scalars, arrays = entry["scalars"], entry["arrays"]
    if not isinstance(scalars, dict) or not all(_scalar_ok(v) for v in scalars.values()):
        return "has 'scalars' that are not numbers, strings, booleans or null"
    if not isinstance(arrays, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and set(v) == {"dtype", "shape"}
            and v["dtype"] in DTYPES and isinstance(v["shape"], list) and len(v["shape"]) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_CASE_ELEMENTS
                    for n in v["shape"]) for k, v in arrays.items()):
        return f"has 'arrays' that are not {{name: {{dtype in {DTYPES}, shape}}}}"
    if sum(math.prod(v["shape"]) for v in arrays.values()) > MAX_CASE_ELEMENTS:
        return f"declares more than {MAX_CASE_ELEMENTS} array elements"
    top = {k.split("/")[1] for k in arrays if k.startswith("input/")}
    params = set(METHODS[method]) | set(KEYWORDS[method])
    if top & set(scalars) or top | set(scalars) != params:
        return (f"has inputs {sorted(top | set(scalars))}; the method {method} takes "
                f"{sorted(params)}")
    outputs = [k[len("expected/"):] for k in arrays if k.startswith("expected/")]
    if not isinstance(entry["none_outputs"], list) or not all(
            isinstance(k, str) for k in entry["none_outputs"]):
        return "has 'none_outputs' that is not a list of names"
    names = outputs + entry["none_outputs"]
    if any(not k.startswith(("input/", "expected/")) for k in arrays) or len(set(names)) != len(
            names) or not output_names_ok(method, names):
        return f"does not list the outputs of {method}"
    if not (_tolerance_ok(entry["atol"]) and _tolerance_ok(entry["rtol"])
            and isinstance(entry["tolerances"], dict)
            and all(isinstance(v, list) and len(v) == 2 and _tolerance_ok(v[1])
                    and (_tolerance_ok(v[0]) or (isinstance(v[0], list) and 0 < len(v[0])
                                                 <= MAX_CASE_ELEMENTS
                                                 and all(map(_tolerance_ok, v[0]))))
                    for v in entry["tolerances"].values())):
        return "has tolerances that are not finite non-negative numbers"
    if not all(isinstance(entry[k], str) and len(entry[k]) <= MAX_TEXT
               for k in ("note", "section")):
        return "has a note or section that is not a short string"
    if not all(isinstance(entry[k], str) and _HEX64.fullmatch(entry[k])
               for k in ("sha256", "case_sha256")):
        return "has a sha256 that is not 64 hex digits"
    return None


def _read_manifest(directory: Path) -> dict:
    if not directory.is_dir():
        raise SuiteError(f"suite directory {directory} does not exist; {_REDO}")
    path = directory / MANIFEST
    if not path.is_file():
        raise SuiteError(f"{directory} holds no {MANIFEST}: it is not an exported suite; {_REDO}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise SuiteError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: not a manifest "
                         f"bbits_ref wrote; {_REDO}")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise SuiteError(f"{path} is not valid JSON ({exc}); {_REDO}") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise SuiteError(f"{path} has schema version {version!r}; this bbits_ref ({__version__}) "
                         f"reads schema version {SCHEMA_VERSION}.  Export the suite with this "
                         "version, or check it with the bbits_ref that wrote it")
    if manifest.get("suite_version") not in CASE_IDS:
        raise SuiteError(f"{path} has suite version {manifest.get('suite_version')!r}; this "
                         f"bbits_ref knows {sorted(CASE_IDS)}; {_REDO}")
    if manifest.get("complete") is not True:
        raise SuiteError(f"{path} is marked incomplete: the export that wrote it was "
                         f"interrupted; {_REDO}")
    if not isinstance(manifest.get("cases"), list) or not isinstance(
            manifest.get("created_by"), str) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in manifest["cases"]):
        raise SuiteError(f"{path}: 'cases' must be a list of entries with a 'name' and "
                         f"'created_by' a string; {_REDO}")
    return manifest


def _check_ids(path: Path, manifest: dict) -> None:
    """The case ids must be exactly those of the manifest's suite version, in order."""
    version = manifest["suite_version"]
    ids = CASE_IDS[version]
    names = [e["name"] for e in manifest["cases"]]
    if tuple(names) == ids:
        return
    missing = [n for n in ids if n not in set(names)]
    extra = [n for n in names if n not in set(ids)]
    dup = sorted({n for n in names if names.count(n) > 1})
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("duplicated", dup)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{more})")
    what = "; ".join(parts) or "cases out of order"
    raise SuiteError(f"{path}: suite {version} has {len(ids)} cases, the manifest lists "
                     f"{len(names)}: {what}.  The suite was edited or partly copied; {_REDO}")


def _read_arrays(file: Path, data: bytes, declared: dict, name: str) -> dict:
    """The arrays of a case file, each header checked against the manifest before reading."""
    bad = f"case {name}: {file} is not the case file the manifest describes"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {info.filename: info for info in zf.infolist()}
            if set(members) != {f"{k}.npy" for k in declared}:
                raise SuiteError(f"{bad} (it holds other arrays); {_REDO}")
            arrays = {}
            for key, spec in declared.items():
                info = members[f"{key}.npy"]
                dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
                nbytes = math.prod(shape) * dtype.itemsize
                if info.file_size > nbytes + 4096:
                    raise SuiteError(f"{bad} (array {key} is larger than declared); {_REDO}")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    header = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                              else np.lib.format.read_array_header_2_0(f))
                    got_shape, fortran, got_dtype = header
                    if got_shape != shape or fortran or got_dtype.newbyteorder("=") != dtype \
                            or got_dtype.hasobject:
                        raise SuiteError(f"{bad} (array {key} is {got_dtype} {got_shape}, the "
                                         f"manifest says {dtype} {shape}); {_REDO}")
                    raw = f.read(nbytes + 1)
                if len(raw) != nbytes:
                    raise SuiteError(f"{bad} (array {key} is truncated); {_REDO}")
                arrays[key] = np.frombuffer(raw, dtype=got_dtype).astype(dtype).reshape(shape)
            return arrays
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise SuiteError(f"case {name}: cannot read {file} ({exc}); {_REDO}") from None


def _load_case(directory: Path, index: int, entry: dict) -> Case:
    name = entry["name"]
    problem = _entry_problem(entry, index, name)
    if problem:
        raise SuiteError(f"{directory / MANIFEST}: case {name} {problem}; {_REDO}")
    file = directory / _file_name(index, name)
    if not file.is_file():
        raise SuiteError(f"case {name}: file {file} is missing; {_REDO}")
    if file.stat().st_size > MAX_CASE_BYTES:
        raise SuiteError(f"case {name}: {file} is larger than {MAX_CASE_BYTES} bytes; {_REDO}")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SuiteError(f"case {name}: file {file} is corrupted or truncated (its sha256 does "
                         f"not match the manifest); {_REDO}")
    arrays = _read_arrays(file, data, entry["arrays"], name)
    inputs = dict(entry["scalars"])
    inputs.update(unflatten({k[len("input/"):]: v for k, v in arrays.items()
                             if k.startswith("input/")}))
    expected = {k[len("expected/"):]: v for k, v in arrays.items() if k.startswith("expected/")}
    expected.update({k: None for k in entry["none_outputs"]})
    case = Case(name, entry["method"], inputs, float(entry["atol"]), float(entry["rtol"]),
                entry["note"], entry["section"],
                {k: (_atol_loaded(v[0]), float(v[1])) for k, v in entry["tolerances"].items()},
                expected)
    if case_digest(case) != entry["case_sha256"]:
        raise SuiteError(f"{directory / MANIFEST}: case {name} was edited (its content does not "
                         f"match its case_sha256); {_REDO}")
    return case


def load(directory) -> Suite:
    """Read and validate an exported suite (module docstring); raises :class:`SuiteError`
    naming what is wrong.  Nothing of an adapter runs before this succeeds."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    _check_ids(directory / MANIFEST, manifest)
    cases = [_load_case(directory, i, e) for i, e in enumerate(manifest["cases"])]
    if suite_digest((c.name, e["case_sha256"]) for c, e in zip(cases, manifest["cases"])) \
            != manifest.get("suite_sha256"):
        raise SuiteError(f"{directory / MANIFEST}: suite_sha256 does not match its cases; {_REDO}")
    return Suite(directory, manifest, cases)

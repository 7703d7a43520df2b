"""Running an adapter in a child process, so that nothing it does can end or stall the check.

:class:`AdapterProcess` starts one worker (``multiprocessing`` with the ``"spawn"`` context: a
fresh interpreter, the same on Linux, macOS and Windows), builds the adapter there and reuses it
case after case.  Per case the parent waits at most ``timeout`` seconds.  An adapter that raises,
calls ``sys.exit``, ends the process (``os._exit``, a segfault, the OOM killer) or hangs fails
*that* case with the reason; the worker is restarted for the next one.

The adapter reaches the child either by name (``"MODULE:ATTR"``, resolved there by
:func:`load_adapter`) or pickled: an instance of a class defined in an importable module.  (Under
"spawn" a script that calls the checker must do so under ``if __name__ == "__main__":``, as for
any ``multiprocessing`` program; a class defined in a notebook cannot be rebuilt in a child: use
:func:`bbits_ref.conformance.checker.check_in_process` there.)

The child sends each result back as a JSON header and ``.npz`` bytes, which the parent reads
with ``allow_pickle=False``: outputs are converted to float64 arrays in the child, so nothing the
adapter returns is unpickled by the checker.
"""
from __future__ import annotations

import importlib
import io
import json
import multiprocessing
import pickle
import signal
import time
import traceback

import numpy as np

from bbits_ref._errors import UsageError
from bbits_ref.conformance.protocol import METHODS, call, flatten

__all__ = ["AdapterProcess", "AdapterImportError", "Outcome", "Unconvertible", "load_adapter",
           "run_call", "DEFAULT_TIMEOUT", "STARTUP_TIMEOUT"]

#: Seconds an adapter may take on one case (the slowest, a 20-step LeNet-5 trajectory, takes
#: ~6 s in NumPy).
DEFAULT_TIMEOUT = 120.0
#: Seconds the worker may take to start and build the adapter (importing torch can be slow).
STARTUP_TIMEOUT = 300.0
MAX_HEADER_BYTES = 2**20
MAX_RESULT_BYTES = 512 * 2**20


class AdapterImportError(UsageError, ImportError):
    """``--impl MODULE:ATTR`` (or an adapter object) could not be turned into an adapter."""


class Unconvertible(str):
    """An output the adapter returned that is not convertible to a float array (the reason)."""


class Outcome:
    """What one call gave: ``status`` "ok" (with ``outputs``), "skipped" or "error" (with
    ``message``)."""

    __slots__ = ("status", "outputs", "message", "seconds")

    def __init__(self, status: str, outputs: dict | None = None, message: str = "",
                 seconds: float = 0.0) -> None:
        self.status, self.outputs, self.message = status, outputs or {}, message
        self.seconds = seconds


# --------------------------------------------------------------------------- resolving adapters

def load_adapter(spec: str):
    """Resolve ``"MODULE:ATTR"`` to an adapter: an instance, or a class instantiated with no
    arguments (e.g. ``bbits_ref.conformance.reference:adapter``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AdapterImportError(f"--impl takes MODULE:ATTR, e.g. "
                                 f"bbits_ref.conformance.reference:adapter; got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterImportError(f"cannot import module {module_name!r} named in --impl "
                                 f"{spec!r}: {exc}.  Is it installed or on PYTHONPATH?") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise AdapterImportError(f"module {module_name!r} has no attribute {attr!r} "
                                     f"(--impl {spec!r}): {exc}") from exc
        except Exception as exc:            # e.g. a lazily built adapter that needs a setting
            raise AdapterImportError(f"building the adapter {spec} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise AdapterImportError(f"{spec} is a class; it must be constructible with no "
                                     f"arguments to serve as an adapter "
                                     f"({type(exc).__name__}: {exc})") from exc
    _check_has_methods(obj, spec)
    return obj


def _check_has_methods(obj, label) -> None:
    if not any(callable(getattr(obj, m, None)) for m in METHODS):
        raise AdapterImportError(f"{label} resolved to {obj!r:.80}, which has none of the "
                                 "protocol methods (quantize, hard_concrete, …); see "
                                 "bbits_ref.conformance for the protocol")


def _recipe(adapter) -> tuple:
    """How the child gets the adapter: by name, or pickled (checked here, in the parent)."""
    if isinstance(adapter, str):
        return ("spec", adapter)
    _check_has_methods(adapter, type(adapter).__name__)
    try:
        return ("pickle", pickle.dumps(adapter))
    except Exception as exc:
        raise AdapterImportError(
            f"the adapter {type(adapter).__name__} cannot be sent to a child process "
            f"({type(exc).__name__}: {exc}); pass it as 'MODULE:ATTR', make it picklable, or "
            "use check_in_process (no isolation)") from None


def _build(recipe):
    kind, value = recipe
    if kind == "spec":
        return load_adapter(value)
    try:
        adapter = pickle.loads(value)
    except Exception as exc:
        raise AdapterImportError(
            f"the adapter cannot be rebuilt in the child process ({type(exc).__name__}: {exc}); "
            "define its class in an importable module (not in a notebook cell), pass it as "
            "'MODULE:ATTR', or use check_in_process (no isolation)") from None
    return adapter


# --------------------------------------------------------------------------- one call

def _to_array(value):
    if hasattr(value, "detach"):                # a torch tensor slipped through: be helpful
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def run_call(adapter, method: str, inputs: dict) -> Outcome:
    """Call one protocol method on one case's inputs and convert what comes back.

    Outputs become float64 arrays, ``None``, or :class:`Unconvertible` (the reason); a missing
    method or ``NotImplementedError`` gives "skipped", any other exception (``SystemExit``
    included) "error".
    """
    if not callable(getattr(adapter, method, None)):
        return Outcome("skipped", message="not implemented")
    start = time.perf_counter()
    try:
        out = call(adapter, method, inputs)
    except NotImplementedError as exc:
        return Outcome("skipped", message=f"not implemented{': ' + str(exc) if str(exc) else ''}")
    except SystemExit as exc:
        return Outcome("error", message=f"the adapter called sys.exit({exc.code!r})")
    except Exception as exc:                    # report the adapter's error, keep checking
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return Outcome("error", message=f"error: {type(exc).__name__}: {exc} "
                                        f"[{last.filename}:{last.lineno}]")
    if isinstance(out, dict):
        try:
            out = flatten(out)
        except ValueError as exc:
            return Outcome("error", message=f"returned a malformed dict: {exc}")
    else:
        out = {"result": out}
    outputs = {}
    for key, value in out.items():
        if value is None:
            outputs[key] = None
            continue
        try:
            outputs[key] = _to_array(value)
        except Exception as exc:
            outputs[key] = Unconvertible(f"not convertible to a float array "
                                         f"({type(value).__name__}: {exc})")
    return Outcome("ok", outputs, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- the child

def _send(conn, header: dict, arrays: dict | None = None) -> None:
    """A JSON header (with the output names) and the arrays as ``.npz`` bytes (keys a0, a1, …)."""
    arrays = arrays or {}
    header = dict(header, names=list(arrays))
    buffer = io.BytesIO()
    np.savez(buffer, **{f"a{i}": v for i, v in enumerate(arrays.values())})
    conn.send_bytes(json.dumps(header).encode())
    conn.send_bytes(buffer.getvalue())


def _worker(conn, recipe) -> None:
    """The child's loop: build the adapter, then answer (method, inputs) until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is the parent's to handle
    try:
        adapter = _build(recipe)
        _check_has_methods(adapter, type(adapter).__name__)
    except AdapterImportError as exc:
        _send(conn, {"status": "usage", "message": str(exc)})
        return
    except BaseException as exc:
        _send(conn, {"status": "usage", "message": f"building the adapter failed: "
                                                   f"{type(exc).__name__}: {exc}"})
        return
    name = getattr(adapter, "name", None) or type(adapter).__name__
    _send(conn, {"status": "ready", "name": str(name)[:500]})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        method, inputs = request
        outcome = run_call(adapter, method, inputs)
        arrays = {k: v for k, v in outcome.outputs.items()
                  if v is not None and not isinstance(v, Unconvertible)}
        try:
            _send(conn, {"status": outcome.status, "message": outcome.message,
                         "none": [k for k, v in outcome.outputs.items() if v is None],
                         "bad": {k: v for k, v in outcome.outputs.items()
                                 if isinstance(v, Unconvertible)}}, arrays)
        except (OSError, EOFError):
            return                                      # the parent is gone
        except Exception as exc:                        # e.g. an output too large to send
            _send(conn, {"status": "error", "message": f"the result could not be sent back "
                                                       f"({type(exc).__name__}: {exc})"})


# --------------------------------------------------------------------------- the parent

class _Lost(Exception):
    """The worker ended, hung or sent garbage; the message says which."""


class AdapterProcess:
    """One worker process running one adapter; restarted after a crash or a timeout.

    Use as a context manager; :meth:`run` returns an :class:`Outcome` for every case (it never
    raises because of what the adapter does).  The first start raises
    :class:`AdapterImportError` when the adapter cannot be built at all.
    """

    def __init__(self, adapter, *, timeout: float = DEFAULT_TIMEOUT,
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        if not (timeout > 0 and startup_timeout > 0):
            raise UsageError(f"timeouts must be positive numbers of seconds; got {timeout!r} and "
                             f"{startup_timeout!r}")
        self.recipe = _recipe(adapter)
        self.timeout, self.startup_timeout = float(timeout), float(startup_timeout)
        self.process = self.conn = None
        self.name = adapter if isinstance(adapter, str) else (
            getattr(adapter, "name", None) or type(adapter).__name__)
        self.start_error = ""             # why the worker could not (re)start, if it could not

    def __enter__(self) -> "AdapterProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the worker and wait until the adapter is built."""
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, self.recipe), daemon=True,
                                   name="bbits-conformance-adapter")
        self.process.start()
        child.close()
        try:
            header, _ = self._receive(self.startup_timeout, "while building the adapter")
        except _Lost as exc:
            self.stop()
            self.start_error = str(exc)
            return
        if header.get("status") == "usage":
            self.stop()
            raise AdapterImportError(str(header.get("message")))
        self.name = str(header.get("name", self.name))
        self.start_error = ""

    def stop(self) -> None:
        """End the worker (politely, then by force)."""
        if self.process is None:
            return
        try:
            if self.process.is_alive():
                self.conn.send(None)
                self.process.join(2)
        except (OSError, ValueError):
            pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
        self.process.close()
        self.process = self.conn = None

    def _exit_reason(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is None:
            return "the adapter process stopped answering"
        if code < 0:
            try:
                return f"the adapter process was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"the adapter process was killed by signal {-code}"
        return f"the adapter process ended with exit code {code}"

    def _receive(self, timeout: float, when: str) -> tuple[dict, dict]:
        if not self.conn.poll(timeout):
            raise _Lost(f"timed out: no answer within {timeout:g} s {when}")
        try:
            header = json.loads(self.conn.recv_bytes(MAX_HEADER_BYTES))
            if not self.conn.poll(timeout):
                raise _Lost(f"timed out: no answer within {timeout:g} s {when}")
            payload = self.conn.recv_bytes(MAX_RESULT_BYTES)
        except (EOFError, ConnectionError):
            raise _Lost(f"{self._exit_reason()} {when}") from None
        except (OSError, ValueError) as exc:
            raise _Lost(f"the adapter process sent an unreadable answer {when} ({exc})") from None
        if not isinstance(header, dict):
            raise _Lost(f"the adapter process sent an unreadable answer {when}")
        names = header.get("names", [])
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                arrays = {str(name): npz[f"a{i}"] for i, name in enumerate(names)}
        except Exception as exc:
            raise _Lost(f"the adapter process sent unreadable arrays {when} ({exc})") from None
        return header, arrays

    def run(self, method: str, inputs: dict) -> Outcome:
        """Run one call in the worker (restarting it first if the last call killed it)."""
        if method not in METHODS:
            raise ValueError(f"unknown protocol method {method!r}")
        if self.process is None and not self.start_error:
            try:
                self.start()
            except AdapterImportError as exc:
                self.start_error = str(exc)
        if self.process is None:
            return Outcome("error", message=f"not run: the adapter process could not start "
                                            f"({self.start_error})")
        start = time.perf_counter()
        try:
            self.conn.send((method, inputs))
            header, arrays = self._receive(self.timeout, "during this case")
        except (_Lost, OSError, ValueError) as exc:
            self.stop()
            return Outcome("error", message=f"{exc}; the process was restarted for the next case",
                           seconds=time.perf_counter() - start)
        seconds = time.perf_counter() - start
        status = header.get("status")
        if status not in ("ok", "skipped", "error"):
            return Outcome("error", message="the adapter process sent an unreadable answer")
        none, bad = header.get("none", []), header.get("bad", {})
        if not (isinstance(none, list) and isinstance(bad, dict)):
            return Outcome("error", message="the adapter process sent an unreadable answer")
        outputs = dict(arrays)
        outputs.update({str(k): None for k in none})
        outputs.update({str(k): Unconvertible(str(v)) for k, v in bad.items()})
        return Outcome(status, outputs, str(header.get("message", "")), seconds)

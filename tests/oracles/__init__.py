"""Independent HIPS-autograd oracles for every primitive, gathered from the modules of this package.

Each module here defines ``ORACLES = {primitive name: function}``; the function takes
``autograd.numpy`` arrays in the primitive's argument order plus the same static keywords, and is
written from the math, not from :mod:`bbits_ref`.  A helper that adds primitives (e.g. the
quantizer) adds its own module with an ``ORACLES`` dict; :func:`collect_oracles` finds it.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil


def import_all_primitives() -> None:
    """Import every module of bbits_ref that registers primitives.

    ``bbits_ref.method.quantizer`` may not exist yet; only its absence is tolerated, any error inside it
    is raised.
    """
    import bbits_ref  # noqa: F401  (registers the ops)
    try:
        importlib.import_module("bbits_ref.method.quantizer")
    except ModuleNotFoundError as exc:
        if exc.name != "bbits_ref.method.quantizer":
            raise


def collect_oracles() -> dict:
    """Merge the ``ORACLES`` dict of every module in this package (a name defined twice is an error)."""
    merged: dict = {}
    owner: dict = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, fn in getattr(module, "ORACLES", {}).items():
            if name in merged:
                raise ValueError(f"oracle {name!r} is defined in both {owner[name]} and "
                                 f"{info.name}; keep one")
            merged[name], owner[name] = fn, info.name
    return merged


@contextlib.contextmanager
def temporary_primitive(name, *args, **kwargs):
    """Register a primitive for one test and always remove it again."""
    from bbits_ref.autograd.engine import PRIMITIVES, register
    try:
        yield register(name, *args, **kwargs)
    finally:
        PRIMITIVES.pop(name, None)

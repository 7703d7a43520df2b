"""The contract between the suite and an adapter: versions, methods, case ids, the data model.

Everything else in :mod:`bbits_ref.conformance` builds on this module and nothing here imports
the rest of the package.  It fixes

* :data:`SUITE_VERSION` and :data:`SCHEMA_VERSION`, and the set of case ids the suite version
  contains (:data:`bbits_ref.conformance.case_ids.CASE_IDS`);
* :data:`METHODS`, :data:`KEYWORDS`, :data:`OUTPUTS`: the protocol methods, their positional and
  keyword parameters, and the outputs each returns (the protocol is documented in
  :mod:`bbits_ref.conformance`);
* :class:`Case` and :class:`Suite`, and :func:`flatten` / :func:`unflatten`, which turn nested
  dicts (LeNet-5 parameters, gate noise) into ``"a/b"`` names and back;
* :func:`call`: how a case becomes one call of an adapter method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from bbits_ref.conformance.case_ids import CASE_IDS

__all__ = ["SUITE_VERSION", "SCHEMA_VERSION", "SEED", "METHODS", "KEYWORDS", "OUTPUTS",
           "CASE_IDS", "Case", "Suite", "flatten", "unflatten", "call", "output_names_ok"]

#: The version of the set of cases (their ids, inputs and tolerances).  A new case, a removed one
#: or a changed input means a new suite version, with its own entry in ``CASE_IDS``.
SUITE_VERSION = "1.1"
#: The version of the file layout (manifest keys, array names).
SCHEMA_VERSION = 2
#: The seed every case family draws from (one generator, in family order).
SEED = 20200513

#: Protocol methods and the names of their positional parameters, in order.
METHODS = {
    "quantize": ("x", "beta", "z2", "z4", "z8", "z16", "z32"),
    "hard_concrete": ("logits", "u"),
    "gumbel_softmax": ("logits", "u"),
    "prob_nonzero": ("logits",),
    "deterministic_gates": ("logits",),
    "chain_gates_eval": ("chain_logits",),
    "regularizer": ("prune_logits", "chain_logits", "mac_weight"),
    "relative_bops": ("model", "width", "gates"),
    "lenet5_step": ("params", "x", "y", "noise"),
    "lenet5_train": ("params", "x", "y", "noise"),
}

#: The keyword-only parameters of each method.
KEYWORDS = {
    "quantize": ("signed", "grad_out"),
    "hard_concrete": ("grad_out",),
    "gumbel_softmax": ("temperature", "straight_through", "grad_out"),
    "prob_nonzero": ("gate",),
    "deterministic_gates": ("gate",),
    "chain_gates_eval": ("hard_cut",),
    "regularizer": ("prior", "reg_type"),
    "relative_bops": (),
    "lenet5_step": ("mu",),
    "lenet5_train": ("mu", "lr", "beta1", "beta2", "eps"),
}

#: The (flattened) outputs of each method; a method that returns a bare array or number has the
#: single output ``"result"``.  ``"grads/*"`` stands for one gradient per LeNet-5 parameter,
#: ``"params/*"`` for one parameter value.
OUTPUTS = {
    "quantize": ("x_q", "grad_x", "grad_beta", "grad_z2", "grad_z4", "grad_z8", "grad_z16",
                 "grad_z32"),
    "hard_concrete": ("z", "grad_logits"),
    "gumbel_softmax": ("z", "grad_logits"),
    "prob_nonzero": ("result",),
    "deterministic_gates": ("result",),
    "chain_gates_eval": ("result",),
    "regularizer": ("value", "grad_prune_logits", "grad_chain_logits"),
    "relative_bops": ("result",),
    "lenet5_step": ("logits", "loss", "grads/*"),
    "lenet5_train": ("losses", "params/*"),
}


def output_names_ok(method: str, names) -> bool:
    """True when ``names`` are exactly the outputs of ``method`` (each pattern matched)."""
    patterns = OUTPUTS[method]
    names = list(names)
    return (all(any(fnmatchcase(n, p) for p in patterns) for n in names)
            and all(any(fnmatchcase(n, p) for n in names) for p in patterns))


@dataclass
class Case:
    """One protocol call with its inputs, expected outputs and tolerance.

    ``inputs`` maps parameter names to arrays, nested dicts of arrays, or plain values
    (numbers, strings, bools, None).  ``expected`` maps the flattened output names to float64
    arrays (or None: the gradient of an absent gate).  An output passes when
    ``max|actual − expected| <= atol + rtol·max(max|expected|, tiny)``; ``tolerances`` maps
    output names (or fnmatch patterns such as ``"grads/*.beta"``) to ``(atol, rtol)`` overrides.
    In an override, ``atol`` may also be a tuple with one tolerance per index of the output's
    first axis (the steps of a trajectory, whose float32 drift grows step by step).
    ``section`` is where docs/method.md explains what the case checks.
    """

    name: str
    method: str
    inputs: dict
    atol: float
    rtol: float
    note: str
    section: str = ""
    tolerances: dict = field(default_factory=dict)
    expected: dict | None = None

    def tolerance(self, output: str) -> tuple:
        """(atol, rtol) of one flattened output name (atol: a number, or a tuple per index of
        the output's first axis)."""
        if output in self.tolerances:
            return tuple(self.tolerances[output])
        for pattern, tol in self.tolerances.items():
            if fnmatchcase(output, pattern):
                return tuple(tol)
        return self.atol, self.rtol


@dataclass
class Suite:
    """A loaded, validated suite: its directory, manifest and cases (with expected outputs)."""

    directory: Path
    manifest: dict
    cases: list

    @property
    def suite_version(self) -> str:
        return self.manifest["suite_version"]


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": x}}`` → ``{"a/b": x}`` (keys must be strings without "/")."""
    flat = {}
    for key, value in tree.items():
        if not isinstance(key, str) or "/" in key:
            raise ValueError(f"names in the suite must be strings without '/'; got {key!r}")
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: dict) -> dict:
    """Inverse of :func:`flatten`."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def call(adapter, method: str, inputs: dict):
    """Call ``adapter.<method>`` on a case's inputs and return what it returned.

    Positional parameters come first in protocol order, the rest are keywords.  Arrays are
    passed as fresh copies, so an adapter that writes into its inputs cannot spoil the case.
    ``method`` must be one of :data:`METHODS` (never a name read from a file).
    """
    if method not in METHODS:
        raise ValueError(f"unknown protocol method {method!r}; expected one of {sorted(METHODS)}")
    fn = getattr(adapter, method)
    inputs = {k: _copy(v) for k, v in inputs.items()}
    positional = [inputs.pop(name) for name in METHODS[method]]
    return fn(*positional, **inputs)


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value.copy() if isinstance(value, np.ndarray) else value

"""What the data and the prior each do to the chain gates during training.

The gradient that reaches a gate logit φ_b in a training step has two parts: the data's (from the
cross-entropy, through the gated quantizer) and the prior's (from μ·R, docs/method.md §4.3).
:func:`trace_gates` trains a model on the NumPy reference exactly as :class:`Trainer` does and
records, every ``every`` steps and for every quantizer with learned bit widths, the logits
φ4…φ32, their probabilities q(z_b ≠ 0 | parent on), the test-time gates, and the two parts of
the gradient (the data part is the total minus the prior part, which is recomputed from the same
logits with :mod:`bbits_ref.method.prior`).

This is how the rebuttal's over-regularization argument is seen in training: with an
independent prior, a gate whose parent is off keeps being pushed down by the prior while the
data, which cannot see it, pushes back with exactly nothing; with the autoregressive prior, the
push is scaled by the parent's probability and fades with it (§4.1–§4.3).
:func:`overregularization_example` picks the quantizer and moment that show it, and
:func:`bbits_ref.plotting.plot_gate_trace` draws it.

Traces are saved as JSON (:func:`save_trace`) and read back with checks (:func:`load_trace`):
a trace file is untrusted like every other file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bbits_ref._errors import DataFileError, UsageError
from bbits_ref._files import atomic_write_text
from bbits_ref.autograd.engine import Tensor
from bbits_ref.method import prior
from bbits_ref.method.quantizer import GATE_NAMES
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.runs import read_json
from bbits_ref.training.trainer import Trainer

__all__ = ["TRACE_FORMAT", "TRACE_ARRAYS", "trace_gates", "prior_gradient", "save_trace",
           "load_trace", "overregularization_example"]

TRACE_FORMAT = "bbits_ref.gate_trace/1"
#: The per-record arrays of a trace, each of shape (records, quantizers, 4): one column per chain
#: gate z4, z8, z16, z32.
TRACE_ARRAYS = ("logits", "probs", "test_gates", "grad_total", "grad_prior", "grad_data")


def prior_gradient(quantizer, mu: float) -> np.ndarray:
    """μ·∂R_t/∂(φ4, φ8, φ16, φ32) of one quantizer at its current logits (shape (4,)).

    R_t is the quantizer's own regularizer (autoregressive or independent, as configured); the
    pruning probabilities enter as constants.  Computed on copies, in the logits' dtype and with
    the training step's arithmetic (the gradient of μ·R_t), so where the data sends nothing the
    step's gradient equals this bit for bit.  The model's ``.grad`` are untouched.
    """
    if quantizer.gate_logits is None:
        raise ValueError(f"{quantizer.kind} quantizer has fixed bit widths: no chain gates to trace")
    phi = Tensor(np.array(quantizer.gate_logits.data), requires_grad=True)
    chain = quantizer.gate.prob_nonzero(phi)
    z2 = (None if quantizer.prune_logits is None else
          quantizer.gate.prob_nonzero(Tensor(np.array(quantizer.prune_logits.data))))
    fn = (prior.bop_regularizer if quantizer.config.prior == "autoregressive"
          else prior.independent_regularizer)
    (mu * fn(z2, chain, quantizer.mac_weight, reg_type=quantizer.config.reg_type)).backward()
    return phi.grad


def trace_gates(config: TrainConfig, *, data=None, every: int = 1, progress: bool = False) -> dict:
    """Train ``config`` on the NumPy reference and record the chain gates' gradients.

    Parameters
    ----------
    config : a :class:`TrainConfig` with learned bit widths (``method.learn_bits``).
    data : as for :class:`Trainer` (default: the config's dataset).
    every : record every ``every``-th step (the first step is always recorded).

    Returns
    -------
    A JSON-ready dict: ``format``, ``config`` (the TrainConfig as a dict), ``quantizers`` (names),
    ``gates`` (``["z4", "z8", "z16", "z32"]``), ``step`` and ``epoch`` (per record), the arrays of
    :data:`TRACE_ARRAYS` as nested lists of shape (records, quantizers, 4), and ``history`` (the
    trainer's per-epoch records).  ``grad_total`` is the gradient of CE + μ·R the step used,
    ``grad_prior`` its μ·R part, ``grad_data`` the rest; a hard-cut gate's data part is exactly 0.
    The training itself is exactly :class:`Trainer`'s: the same seed gives the same run.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if not config.method.learn_bits or not config.method.quantize:
        raise UsageError("a gate trace needs learned bit widths: not with fixed bits or full "
                         "precision")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"every must be a positive whole number of steps; got {every!r}")
    trainer = Trainer(config, data=data, progress=progress, verbose=False)
    named = [(name, q) for name, q in trainer.model.quantizers() if q.gate_logits is not None]
    records = {key: [] for key in ("step", "epoch", *TRACE_ARRAYS)}
    per_epoch = math.ceil(len(trainer.x_train) / config.batch_size)

    def hook(tr: Trainer) -> None:
        step = tr.step + 1                      # the step being taken (counted after the update)
        if (step - 1) % every:
            return
        mu = 0.0 if tr.epoch >= config.epochs else config.mu
        logits = np.stack([np.asarray(q.gate_logits.data, np.float64) for _, q in named])
        total = np.stack([np.zeros(4) if q.gate_logits.grad is None
                          else q.gate_logits.grad for _, q in named]).astype(np.float64)
        prior_part = np.stack([prior_gradient(q, mu) for _, q in named]).astype(np.float64)
        probs = np.stack([np.asarray(q.gate.prob_nonzero(q.gate_logits.data).data, np.float64)
                          for _, q in named])
        test = np.stack([q.deterministic_chain() for _, q in named])
        records["step"].append(step)
        records["epoch"].append(tr.epoch + ((step - 1) % per_epoch + 1) / per_epoch)
        for key, value in (("logits", logits), ("probs", probs), ("test_gates", test),
                           ("grad_total", total), ("grad_prior", prior_part),
                           ("grad_data", total - prior_part)):
            records[key].append(value)

    trainer.grad_hook = hook
    trainer.fit()
    out = {"format": TRACE_FORMAT, "config": config.to_dict(),
           "quantizers": [name for name, _ in named], "gates": list(GATE_NAMES),
           "step": records["step"], "epoch": records["epoch"]}
    for key in TRACE_ARRAYS:
        out[key] = np.array(records[key]).tolist()
    out["history"] = [h for h in trainer.history if h.get("kind") == "epoch"]
    return out


def save_trace(path, trace: dict) -> Path:
    """Write a trace as compact JSON, atomically (floats rounded to 7 significant digits)."""
    def rounded(a):
        return np.vectorize(lambda v: float(f"{v:.7g}"))(np.asarray(a, np.float64)).tolist()
    out = dict(trace)
    for key in TRACE_ARRAYS:
        out[key] = rounded(trace[key])
    path = Path(path)
    atomic_write_text(path, json.dumps(out, separators=(",", ":")) + "\n")
    return path


def load_trace(path) -> dict:
    """A trace written by :func:`save_trace`, checked; arrays come back as float64 NumPy arrays.

    Raises :class:`~bbits_ref._errors.DataFileError` (one line, naming the file) for anything
    that is not such a trace: wrong format tag, missing keys, ragged or mis-shaped arrays,
    non-finite values, steps that do not increase.
    """
    path = Path(path)
    raw = read_json(path, "gate trace")

    def bad(what: str):
        return DataFileError(f"{path}: not a gate trace ({what})")

    if not isinstance(raw, dict) or raw.get("format") != TRACE_FORMAT:
        raise bad(f"expected format {TRACE_FORMAT!r}")
    names = raw.get("quantizers")
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) for n in names)):
        raise bad("quantizers must be a non-empty list of names")
    try:
        steps = np.asarray(raw["step"], dtype=np.int64)
        epochs = np.asarray(raw["epoch"], dtype=np.float64)
        arrays = {key: np.asarray(raw[key], dtype=np.float64) for key in TRACE_ARRAYS}
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"missing or malformed entry: {exc}") from None
    n = len(steps)
    if steps.ndim != 1 or n == 0 or epochs.shape != (n,) or np.any(np.diff(steps) <= 0):
        raise bad("step must be a non-empty increasing list, with one epoch per step")
    for key, a in arrays.items():
        if a.shape != (n, len(names), len(GATE_NAMES)):
            raise bad(f"{key} has shape {a.shape}; expected {(n, len(names), len(GATE_NAMES))}")
        if not np.all(np.isfinite(a)):
            raise bad(f"{key} holds non-finite values")
    config = raw.get("config")
    try:
        config = TrainConfig.from_dict(config)
    except Exception as exc:                 # any malformed config is the file's fault
        raise bad(f"config: {exc}") from None
    history = raw.get("history", [])
    if not isinstance(history, list):
        raise bad("history must be a list")
    return {"format": TRACE_FORMAT, "config": config, "quantizers": names,
            "gates": list(GATE_NAMES), "step": steps, "epoch": epochs, "history": history,
            **arrays}


def overregularization_example(traces, gate: str = "z8") -> dict:
    """The quantizer that shows a gate whose parent switches off, in one trace or several.

    ``traces`` is a trace or ``{label: trace}`` of runs of the same model.  A candidate is a
    quantizer whose parent gate (z4 for ``gate="z8"``) falls below probability 0.5 in every
    trace; the pick is the one where ``gate`` is the most on at that moment (the smallest of the
    traces' values), so what happens to it afterwards is visible.  Returns ``{"quantizer": name,
    "index": its index, "gate": column of ``gate``, "parent_off": {label: first record index with
    the parent below 0.5}}`` (a single trace has the label ``None``).
    """
    if gate not in GATE_NAMES[1:]:
        raise ValueError(f"gate must be one of {', '.join(GATE_NAMES[1:])} (it needs a parent "
                         f"gate in the chain); got {gate!r}")
    col = GATE_NAMES.index(gate)
    if isinstance(traces, dict) and "probs" in traces:
        traces = {None: traces}
    if not isinstance(traces, dict) or not traces:
        raise ValueError("traces must be a gate trace or a non-empty {label: trace} dict")
    names = next(iter(traces.values()))["quantizers"]
    best, best_score = None, -np.inf
    for q, name in enumerate(names):
        off, score = {}, np.inf
        for label, trace in traces.items():
            if list(trace["quantizers"]) != list(names):
                raise ValueError(f"trace {label!r} has other quantizers than the first trace")
            probs = np.asarray(trace["probs"])
            below = np.flatnonzero(probs[:, q, col - 1] < 0.5)
            if not below.size:
                break
            off[label] = int(below[0])
            score = min(score, probs[below[0], q, col])
        else:
            if score > best_score:
                best, best_score = {"quantizer": name, "index": q, "gate": col,
                                    "parent_off": off}, score
    if best is None:
        raise ValueError(f"no quantizer has its {GATE_NAMES[col - 1]} gate switch off (probability "
                         "below 0.5) in every trace")
    return best

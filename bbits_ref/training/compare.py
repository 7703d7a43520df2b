"""Comparing two finished (or running) training runs, side by side.

Meant for an engineer who trained the same recipe and seed twice, for example once with the NumPy
reference and once with a fast implementation: :func:`compare_runs` lines the two histories up by
epoch and by step and reports the final and per-epoch accuracy and relative BOPs, the learned bit
widths and kept channels of every quantizer, and the first logged step at which the gate
trajectories part (a gate probability differing by more than a tolerance).  ``bbits-ref compare
RUN_A RUN_B`` prints it and draws the two BOP–accuracy paths on one plot.

Run folders are read as untrusted input: a missing or malformed file is one
:class:`~bbits_ref._errors.DataFileError` naming it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bbits_ref._errors import DataFileError
from bbits_ref.training.experiments import setting_differences

__all__ = ["RunRecord", "Comparison", "load_run", "compare_runs", "format_comparison"]

#: A run file larger than this is refused before it is parsed (the 100-epoch LeNet-5 history is ~3 MB).
MAX_RUN_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class RunRecord:
    """What :func:`compare_runs` needs of one run folder."""

    path: Path
    config: dict
    history: list
    summary: dict | None          # None while the run is unfinished

    @property
    def label(self) -> str:
        return self.path.name

    def epochs(self) -> list:
        return [r for r in self.history if r.get("kind") == "epoch"]


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise DataFileError(f"{path}: missing; a run folder holds config.json and history.json "
                            f"({what})")
    size = path.stat().st_size
    if size > MAX_RUN_FILE_BYTES:
        raise DataFileError(f"{path}: {size} bytes, more than a run file can be "
                            f"({MAX_RUN_FILE_BYTES} bytes); is this a run folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataFileError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_history(path: Path, history) -> list:
    if not isinstance(history, list):
        raise DataFileError(f"{path}: expected a list of history records, got "
                            f"{type(history).__name__}")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict) or rec.get("kind") not in ("step", "epoch", "note"):
            raise DataFileError(f"{path}: record {i} is not a history record (a JSON object "
                                f"with kind 'step' or 'epoch')")
        if rec["kind"] == "note":
            continue
        for key in ("step", "epoch", "relative_bops"):
            if not _number(rec.get(key)):
                raise DataFileError(f"{path}: record {i} has no numeric {key!r}")
        if rec["kind"] == "epoch" and not _number(rec.get("test_acc")):
            raise DataFileError(f"{path}: epoch record {i} has no numeric 'test_acc'")
        quantizers = rec.get("quantizers", {})
        if not isinstance(quantizers, dict) or not all(isinstance(q, dict)
                                                       for q in quantizers.values()):
            raise DataFileError(f"{path}: record {i} has malformed 'quantizers'")
    return history


def load_run(path) -> RunRecord:
    """Read a run folder (``config.json``, ``history.json``, ``summary.json`` if finished)."""
    path = Path(path)
    if not path.is_dir():
        raise DataFileError(f"{path}: not a folder; give a run folder written by bbits-ref train")
    config = _read_json(path / "config.json", "the run's settings")
    if not isinstance(config, dict):
        raise DataFileError(f"{path / 'config.json'}: expected a JSON object")
    history = _check_history(path / "history.json",
                             _read_json(path / "history.json", "the run's history"))
    summary = None
    if (path / "summary.json").exists():
        summary = _read_json(path / "summary.json", "the run's final result")
        if not isinstance(summary, dict):
            raise DataFileError(f"{path / 'summary.json'}: expected a JSON object")
    return RunRecord(path, config, history, summary)


@dataclass
class Comparison:
    """The side-by-side view of two runs (see :func:`format_comparison`)."""

    a: RunRecord
    b: RunRecord
    #: settings that differ: name -> (value in a, value in b)
    settings: dict = field(default_factory=dict)
    #: one row per epoch both runs reached: (epoch, acc_a, acc_b, bops_a, bops_b)
    epochs: list = field(default_factory=list)
    #: one row per quantizer: (name, bits_a, bits_b, kept_a, kept_b, channels)
    quantizers: list = field(default_factory=list)
    #: where the gate trajectories first part, or None: dict(step, epoch, quantizer, gate, a, b)
    first_parting: dict | None = None
    #: the first epoch whose test-time bit widths or kept channels differ, or None
    first_config_difference: int | None = None


def _gate_vector(rec: dict) -> dict:
    """(quantizer, gate) -> probability, for one history record."""
    out = {}
    for name, q in rec.get("quantizers", {}).items():
        probs = q.get("chain_probs")
        if isinstance(probs, list):
            for bits, p in zip((4, 8, 16, 32), probs):
                if _number(p):
                    out[(name, f"z{bits}")] = float(p)
        if _number(q.get("prune_prob_mean")):
            out[(name, "z2 (mean)")] = float(q["prune_prob_mean"])
    return out


def _configuration(rec: dict) -> dict:
    return {name: (q.get("bits"), q.get("kept")) for name, q in rec.get("quantizers", {}).items()}


def compare_runs(a, b, tol: float = 1e-4) -> Comparison:
    """Compare two runs (folders or :class:`RunRecord`).

    ``tol`` is the largest difference between the two runs' gate probabilities (or mean pruning
    probabilities) at the same logged step that still counts as "the same trajectory".  With the
    same noise a float32 reimplementation agrees to about 1e-6 for thousands of steps; 1e-4 leaves
    room for that drift and still finds a real parting within a few steps of where it happens.
    """
    if not (_number(tol) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0; got {tol!r}")
    a = a if isinstance(a, RunRecord) else load_run(a)
    b = b if isinstance(b, RunRecord) else load_run(b)
    c = Comparison(a, b)
    c.settings = setting_differences(a.config, b.config)
    ea = {int(r["epoch"]): r for r in a.epochs()}
    eb = {int(r["epoch"]): r for r in b.epochs()}
    for epoch in sorted(set(ea) & set(eb)):
        ra, rb = ea[epoch], eb[epoch]
        c.epochs.append((epoch, ra["test_acc"], rb["test_acc"], ra["relative_bops"],
                         rb["relative_bops"]))
        if c.first_config_difference is None and _configuration(ra) != _configuration(rb):
            c.first_config_difference = epoch
    last_a = a.epochs()[-1] if a.epochs() else None
    last_b = b.epochs()[-1] if b.epochs() else None
    if last_a is not None and last_b is not None:
        qa, qb = last_a.get("quantizers", {}), last_b.get("quantizers", {})
        for name in list(qa) + [n for n in qb if n not in qa]:
            x, y = qa.get(name, {}), qb.get(name, {})
            c.quantizers.append((name, x.get("bits"), y.get("bits"), x.get("kept"), y.get("kept"),
                                 x.get("channels", y.get("channels"))))
    steps_b = {int(r["step"]): r for r in b.history if r.get("kind") == "step"}
    for ra in (r for r in a.history if r.get("kind") == "step"):
        rb = steps_b.get(int(ra["step"]))
        if rb is None:
            continue
        ga, gb = _gate_vector(ra), _gate_vector(rb)
        worst = max(((abs(ga[k] - gb[k]), k) for k in ga.keys() & gb.keys()), default=None)
        if worst is not None and worst[0] > tol:
            (quantizer, gate) = worst[1]
            c.first_parting = {"step": int(ra["step"]), "epoch": float(ra["epoch"]),
                               "quantizer": quantizer, "gate": gate,
                               "a": ga[worst[1]], "b": gb[worst[1]]}
            break
    return c


def _fmt(value, spec: str) -> str:
    if value is None:
        return "–"
    try:
        return format(value, spec)
    except (TypeError, ValueError):      # a run file with an unexpected type: show it as it is
        return str(value)


def format_comparison(c: Comparison, max_epoch_rows: int = 12) -> str:
    """A plain-text report, one section per question an engineer asks."""
    la, lb = c.a.label, c.b.label
    width = max(len(la), len(lb), 8)
    out = [f"A = {c.a.path}", f"B = {c.b.path}", ""]
    if c.settings:
        out.append("settings that differ:")
        out += [f"  {k}: A {va!r}, B {vb!r}" for k, (va, vb) in c.settings.items()]
    else:
        out.append("settings: identical (data folder aside)")
    out.append("")
    fa, fb = c.a.summary or {}, c.b.summary or {}
    out.append(f"{'final':<22} {'A':>{width}} {'B':>{width}}")
    for key, spec in (("epochs", "d"), ("test_accuracy", ".4f"), ("relative_bops", ".4f")):
        out.append(f"  {key:<20} {_fmt(fa.get(key), spec):>{width}} {_fmt(fb.get(key), spec):>{width}}")
    if not (c.a.summary and c.b.summary):
        out.append("  (a run without summary.json is unfinished: its last epoch is shown below)")
    out.append("")
    if c.epochs:
        out.append(f"{'epoch':>6} {'acc A':>8} {'acc B':>8} {'BOPs% A':>9} {'BOPs% B':>9}")
        rows = c.epochs
        if len(rows) > max_epoch_rows:
            keep = max_epoch_rows // 2
            rows = rows[:keep] + [None] + rows[-keep:]
        for row in rows:
            if row is None:
                out.append(f"{'…':>6}")
                continue
            e, acc_a, acc_b, bops_a, bops_b = row
            out.append(f"{e:>6} {acc_a:>8.4f} {acc_b:>8.4f} {bops_a:>9.4f} {bops_b:>9.4f}")
    else:
        out.append("no epoch that both runs finished")
    out.append("")
    if c.quantizers:
        out.append(f"{'quantizer (last epoch)':<26} {'bits A':>6} {'bits B':>6} {'kept A':>7} "
                   f"{'kept B':>7}")
        for name, ba, bb, ka, kb, ch in c.quantizers:
            mark = "" if (ba, ka) == (bb, kb) else "   <- differs"
            kept = (lambda k: "–" if k is None else f"{k}/{ch}")
            out.append(f"{name:<26} {_fmt(ba, 'd'):>6} {_fmt(bb, 'd'):>6} {kept(ka):>7} "
                       f"{kept(kb):>7}{mark}")
        out.append("")
    p = c.first_parting
    if p is None:
        out.append("gate trajectories: no logged step where they part (within the tolerance)")
    else:
        out.append(f"gate trajectories part first at step {p['step']} (epoch {p['epoch']:.2f}): "
                   f"{p['quantizer']} {p['gate']}: A {p['a']:.6f}, B {p['b']:.6f}")
    if c.first_config_difference is not None:
        out.append(f"test-time bit widths or kept channels first differ after epoch "
                   f"{c.first_config_difference}")
    return "\n".join(out)

"""Experiments: ablation and baseline recipes, μ × seed sweeps, their table and Pareto front.

Every comparison of docs/method.md §7.4 is a training configuration that differs from a base
configuration by a few named settings.  This module is the one place where those differences are
written down (:func:`ablation_changes`, :func:`baseline_changes`), where the members of a sweep are
generated from μ values, seeds and baselines (:func:`sweep_members`), and where their results
become a table with the mean and standard deviation over seeds of every μ and a Pareto front
(:func:`sweep_table`, :func:`pareto_front`, :func:`format_sweep_table`).  ``bbits-ref train``
(``--quant-only`` ...), ``bbits-ref sweep``, :mod:`bbits_ref.plotting` and
``notebooks/08_pareto_and_ablations.ipynb`` all use it.

:func:`member_state` says what a sweep member's folder holds (nothing yet, a finished or an
interrupted run with the requested settings, or a run with other settings), so that re-running
a sweep never retrains, nor silently replaces, what is already there.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bbits_ref._errors import DataFileError, UsageError
from bbits_ref.training import runs
from bbits_ref.training.config import TrainConfig

__all__ = ["ABLATIONS", "BASELINE_HELP", "BASELINE_IO_BITS", "ablation_changes", "bits_pair",
           "baseline_changes", "baseline_config", "Member", "sweep_members", "MemberState", "member_state",
           "config_differences", "setting_differences", "member_row", "sweep_table", "sweep_points", "pareto_front",
           "point_arrays",
           "format_sweep_table"]

#: Ablation kinds and what each changes; the ones marked W/A need (weight, activation) bits.
ABLATIONS = {
    "quant-only": "learned bit widths, no pruning gates (z2 ≡ 1)",
    "prune-only": "pruning only, at fixed W/A bit widths",
    "fixed-bits": "uniform fixed W/A bit widths, no gates at all, μ = 0",
    "full-precision": "no quantizers at all, μ = 0",
    "independent-prior": "independent gate priors instead of the autoregressive one (§4)",
    "no-hard-cut": "without the official φ ≤ −2 hard cut of z4…z32 (§3.5)",
    "no-ste": "without the straight-through estimator: no gradient reaches the quantized weights (§2.6)",
}
_NEEDS_BITS = ("prune-only", "fixed-bits")

BASELINE_HELP = ("wXaY (uniform fixed bits, e.g. w4a4; wXaY-ioZ: first and last layers at Z "
                 "bits, e.g. w4a4-io8), lsq-wXaY or pact-wXaY (learned-range baselines, 8 in/out "
                 "unless -ioZ), quant-only, prune-only-wXaY, fp32, independent-prior, "
                 "no-hard-cut or no-ste")

#: Bit width of the first and last layers of the LSQ and PACT baselines unless the name says
#: otherwise: "8 in/out", as in the authors' rebuttal (docs/method.md §13).
BASELINE_IO_BITS = 8

# Where the data comes from, not what is trained: a member is the same run with either value.
_IGNORED_SETTINGS = ("data_dir", "download")


# ----------------------------------------------------------------------------- recipes
def bits_pair(text: str, flag: str = "bits") -> tuple[int, int]:
    """``"8/4"`` -> ``(8, 4)`` (weight bits, activation bits); ``flag`` names the option."""
    try:
        w, a = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UsageError(f"{flag} takes W/A bit widths such as 8/8; got {text!r}") from None
    return w, a


def ablation_changes(kind: str, bits=None) -> dict:
    """The settings an ablation or baseline changes, for :meth:`TrainConfig.replace`.

    ``kind`` is a key of :data:`ABLATIONS`; "prune-only" and "fixed-bits" take ``bits`` =
    (W, A) or a ``"W/A"`` string.  Uniform fixed bits and full precision train without the
    regularizer (μ = 0): they have no gates for it to price.  The others keep the base μ.
    """
    if kind not in ABLATIONS:
        raise UsageError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")
    if kind not in _NEEDS_BITS:
        if bits is not None:
            raise UsageError(f"the {kind} ablation takes no bit widths; got {bits!r}")
        return {"quant-only": {"pruning": False},
                "full-precision": {"quantize": False, "mu": 0.0},
                "independent-prior": {"prior": "independent"},
                "no-hard-cut": {"hard_cut": False},
                "no-ste": {"ste": False}}[kind]
    if bits is None:
        raise UsageError(f"the {kind} ablation needs W/A bit widths, e.g. 8/8")
    w, a = bits_pair(bits, kind) if isinstance(bits, str) else bits
    if kind == "prune-only":
        return {"learn_bits": False, "weight_bits": w, "act_bits": a}
    return {"learn_bits": False, "pruning": False, "weight_bits": w, "act_bits": a, "mu": 0.0}


def baseline_changes(spec: str) -> dict:
    """The settings of a baseline named on the command line (see :data:`BASELINE_HELP`)."""
    simple = {"quant-only": "quant-only", "fp32": "full-precision",
              "independent-prior": "independent-prior", "no-hard-cut": "no-hard-cut",
              "no-ste": "no-ste"}
    if spec in simple:
        return ablation_changes(simple[spec])
    m = re.fullmatch(r"(?:(lsq|pact)-|(prune-only)-)?w(\d+)a(\d+)(?:-io(\d+))?", str(spec))
    if m is None:
        raise UsageError(f"unknown baseline {spec!r}: use {BASELINE_HELP}")
    quantizer, prune_only, w, a, io = m.groups()
    changes = ablation_changes("prune-only" if prune_only else "fixed-bits", (int(w), int(a)))
    if quantizer is not None:          # LSQ / PACT (§13): 8 in/out unless the name says
        changes["quantizer"] = quantizer
        io = BASELINE_IO_BITS if io is None else io
    if io is not None:
        changes["io_bits"] = int(io)
    return changes


def baseline_config(base: TrainConfig, spec: str) -> TrainConfig:
    """``base`` turned into the baseline ``spec`` (e.g. ``"w4a4"``), validated."""
    changes = baseline_changes(spec)
    try:
        return base.replace(**changes)
    except ValueError as exc:            # UsageError is a ValueError too
        raise UsageError(f"baseline {spec!r}: {exc}") from None


# ----------------------------------------------------------------------------- members
@dataclass(frozen=True)
class Member:
    """One run of a sweep: its folder ``name`` (``mu0.1-seed0``), the ``label`` shared by its
    seeds (``mu0.1``, ``w4a4``), ``kind`` ("bb" or "baseline") and its training ``config``."""

    name: str
    label: str
    kind: str
    config: TrainConfig

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def mu(self) -> float:
        return self.config.mu


def sweep_members(base: TrainConfig, mus, seeds=None, baselines=()) -> list[Member]:
    """μ values × seeds, plus baselines × seeds, as named members (seed by seed).

    Every member is ``base`` with one μ (label ``mu<μ>``) or turned into a baseline (label =
    its spec, see :func:`baseline_config`), and one seed (``seeds`` None: ``base.seed``).
    Members are ordered seed by seed, so the first seed's whole picture is finished first.
    """
    mus = list(mus)
    for mu in mus:
        if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not math.isfinite(mu) \
                or mu < 0:
            raise UsageError(f"every μ must be a finite number ≥ 0; got {mu!r}")
    seeds = [base.seed] if seeds is None else list(seeds)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise UsageError(f"every seed must be a whole number ≥ 0; got {s!r}")
    if not seeds or not (mus or baselines):
        raise UsageError("a sweep needs at least one seed and at least one μ or baseline")
    groups = [(f"mu{mu:g}", "bb", base.replace(mu=float(mu))) for mu in mus]
    groups += [(spec, "baseline", baseline_config(base, spec)) for spec in baselines]
    for what, names in (("μ values", [g[0] for g in groups]), ("seeds", seeds)):
        repeated = sorted({str(n) for n in names if names.count(n) > 1})
        if repeated:
            raise UsageError(f"the sweep lists {what} more than once: {', '.join(repeated)}; "
                             "give each once")
    return [Member(f"{label}-seed{int(s)}", label, kind, config.replace(seed=int(s)))
            for s in seeds for label, kind, config in groups]


# ----------------------------------------------------------------------------- member folders
@dataclass(frozen=True)
class MemberState:
    """What a member folder holds: ``state`` is "new" (nothing to reuse), "finished",
    "interrupted" (a checkpoint to resume) or "other-settings" (``differences`` lists them)."""

    state: str
    differences: tuple = ()


def _flat(config_dict: dict) -> dict:
    """Setting name -> value; the method's settings by their own names (as ``replace`` takes)."""
    method = config_dict.get("method")
    if not isinstance(method, dict):             # absent, or a run file that is not ours
        return dict(config_dict)
    flat = {k: v for k, v in config_dict.items() if k != "method"}
    for k, v in method.items():
        flat[f"method.{k}" if k in flat else k] = v
    return flat


def setting_differences(a: dict, b: dict) -> dict:
    """name -> (value in a, value in b) for every setting that differs between two
    :meth:`TrainConfig.to_dict` results (where the data comes from is not compared)."""
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if k not in _IGNORED_SETTINGS and fa.get(k) != fb.get(k)}


def config_differences(saved: dict, requested: dict) -> list[str]:
    """``"name: saved -> requested"`` for every setting that differs (:func:`setting_differences`)."""
    return [f"{k}: {x!r} -> {y!r}" for k, (x, y) in setting_differences(saved, requested).items()]


def _read_json(path: Path):
    """A JSON file's content, or None when it is missing, unreadable or absurdly large."""
    try:
        return runs.read_json(path)
    except (DataFileError, OSError):
        return None


def _saved_config(data) -> dict | None:
    """A saved config normalised through TrainConfig (so old flat files compare too)."""
    try:
        return TrainConfig.from_dict(data).to_dict()
    except (ValueError, TypeError):
        return None


def member_state(member_dir, config: TrainConfig) -> MemberState:
    """Compare a member folder with the config it should hold (see :class:`MemberState`).

    The folder's ``config.json`` (written when training starts) decides whether its run has the
    requested settings; ``summary.json`` (written when it ends, with the config again) whether
    it finished; ``checkpoint.npz`` (written after each epoch) whether it can be resumed.
    """
    d = Path(member_dir)
    requested = config.to_dict()
    if not (d / "config.json").exists():
        leftovers = [f for f in ("summary.json", "checkpoint.npz") if (d / f).exists()]
        return MemberState("other-settings", (f"{', '.join(leftovers)} without config.json",)) \
            if leftovers else MemberState("new")
    saved = _saved_config(_read_json(d / "config.json"))
    if saved is None:
        return MemberState("other-settings", ("config.json is unreadable",))
    differences = config_differences(saved, requested)
    if differences:
        return MemberState("other-settings", tuple(differences))
    summary = _read_json(d / "summary.json")
    if isinstance(summary, dict) and _finite(summary.get("test_accuracy")) and \
            _finite(summary.get("relative_bops")):
        summary_config = _saved_config(summary.get("config"))
        if summary_config is None or config_differences(summary_config, saved):
            return MemberState("other-settings", ("summary.json belongs to other settings",))
        return MemberState("finished")
    return MemberState("interrupted" if (d / "checkpoint.npz").exists() else "new")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------- the table
def member_row(member: Member, summary: dict | None = None, status: str = "done",
               reason: str | None = None, note: str | None = None) -> dict:
    """One row of the sweep table: ``status`` is "done" (with ``summary``), "failed" (with
    ``reason``) or "pending"; ``note`` says e.g. that it was reused or resumed."""
    return {"member": member.name, "label": member.label, "kind": member.kind,
            "seed": member.seed, "mu": member.mu, "status": status,
            "test_accuracy": None if summary is None else summary["test_accuracy"],
            "relative_bops": None if summary is None else summary["relative_bops"],
            "reason": reason, "note": note}


def _done(rows) -> list:
    return [r for r in rows if r.get("status", "done") == "done"
            and _finite(r.get("test_accuracy")) and _finite(r.get("relative_bops"))]


def sweep_table(rows) -> dict:
    """The sweep table: ``{"runs": rows, "groups": per-label statistics}``.

    Every run gets ``pareto``: True when it is on the Pareto front of the finished Bayesian Bits
    runs.  Every label (one μ, or one baseline) gets the mean and the sample standard deviation
    (ddof = 1; None with fewer than two finished seeds) of test accuracy and relative BOPs over
    its finished seeds, the seeds it has, the members that failed, and ``pareto`` for the front
    of the Bayesian Bits means.
    """
    rows = [dict(r) for r in rows]
    front = pareto_front([r for r in _done(rows) if r["kind"] == "bb"])
    for r in rows:
        r["pareto"] = any(r is p for p in front)
    groups = []
    for label in dict.fromkeys(r["label"] for r in rows):
        members = [r for r in rows if r["label"] == label]
        done = _done(members)
        g = {"label": label, "kind": members[0]["kind"], "mu": members[0]["mu"],
             "seeds": [r["seed"] for r in done], "n": len(done),
             "failed": [r["member"] for r in members if r.get("status") == "failed"]}
        for key in ("test_accuracy", "relative_bops"):
            values = np.array([r[key] for r in done], dtype=np.float64)
            g[f"{key}_mean"] = float(values.mean()) if len(done) else None
            g[f"{key}_std"] = float(values.std(ddof=1)) if len(done) > 1 else None
        groups.append(g)
    means = [{"label": g["label"], "test_accuracy": g["test_accuracy_mean"],
              "relative_bops": g["relative_bops_mean"]}
             for g in groups if g["kind"] == "bb" and g["n"]]
    on_front = {p["label"] for p in pareto_front(means)}
    for g in groups:
        g["pareto"] = g["label"] in on_front
    return {"runs": rows, "groups": groups}


def sweep_points(table: dict) -> tuple[list, list]:
    """The finished runs of a sweep table as ``(bayesian_bits, baselines)`` for
    :func:`bbits_ref.plotting.plot_pareto`."""
    done = _done(table["runs"])
    return [r for r in done if r["kind"] == "bb"], [r for r in done if r["kind"] != "bb"]


def point_arrays(points, what: str = "points") -> tuple:
    """(relative_bops, test_accuracy) float arrays of sweep points (dicts), checked: a clear
    ValueError names the first malformed point or the non-finite ones."""
    for i, p in enumerate(points):
        if not isinstance(p, dict) or any(k not in p for k in ("relative_bops", "test_accuracy")):
            got = sorted(p) if isinstance(p, dict) else type(p).__name__
            raise ValueError(f"{what}[{i}] must be a dict with 'relative_bops' and "
                             f"'test_accuracy' (and 'label' or 'mu'); got {got}")
    bops = np.asarray([p["relative_bops"] for p in points], dtype=np.float64)
    acc = np.asarray([p["test_accuracy"] for p in points], dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(bops) & np.isfinite(acc)))
    if bad.size:
        raise ValueError(f"{what}{bad.tolist()} have non-finite relative_bops or test_accuracy; "
                         "drop diverged runs first")
    return bops, acc


def pareto_front(points) -> list:
    """The non-dominated points, sorted by relative BOPs (ascending).

    Point j dominates point i when bops_j ≤ bops_i and acc_j ≥ acc_i with at least one strict
    inequality (fewer BOPs or more accuracy). Identical points do not dominate each other, so
    both stay (in input order).  Points are dicts with ``relative_bops`` and ``test_accuracy``.
    """
    points = list(points)
    if not points:
        return []
    bops, acc = point_arrays(points, "points")
    # [i, j] is True when point j dominates point i.
    no_worse = (bops[None, :] <= bops[:, None]) & (acc[None, :] >= acc[:, None])
    better = (bops[None, :] < bops[:, None]) | (acc[None, :] > acc[:, None])
    keep = np.flatnonzero(~(no_worse & better).any(axis=1))
    # On the front equal BOPs imply equal accuracy, so a stable sort by BOPs is the whole order.
    order = keep[np.argsort(bops[keep], kind="stable")]
    return [points[i] for i in order]


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_sweep_table(table) -> str:
    """The sweep table as text: one line per run (finished ones by BOPs, then the others with
    their status), and, when a label has several seeds, its mean ± std over them.

    ``table`` is :func:`sweep_table`'s result or a list of rows (finished unless they say).
    """
    if not isinstance(table, dict):
        table = sweep_table([{"member": r.get("label"), "seed": None, **r} for r in table])
    runs = table["runs"]
    done = _done(runs)
    others = [r for r in runs if not any(r is d for d in done)]
    lines = [f"{'run':<22} {'μ':>8} {'test acc':>9} {'rel. BOPs':>10} {'Pareto':>7}  status",
             "-" * 72]
    for r in sorted(done, key=lambda r: r["relative_bops"]) + others:
        status = r.get("status", "done")
        if r.get("reason"):
            status += f": {r['reason']}"
        elif r.get("note"):
            status += f" ({r['note']})"
        lines.append(f"{str(r.get('member') or r.get('label')):<22} {r['mu']:>8g} "
                     f"{_num(r.get('test_accuracy'), '.4f'):>9} "
                     f"{_num(r.get('relative_bops'), '.4f'):>9}% "
                     f"{'*' if r.get('pareto') else '':>7}  {status}")
    groups = table.get("groups", [])
    if any(len({r["seed"] for r in runs if r["label"] == g["label"]}) > 1 for g in groups):
        header = (f"{'over seeds':<14} {'μ':>8} {'n':>3} {'test acc (mean ± std)':>23} "
                  f"{'rel. BOPs % (mean ± std)':>25} {'Pareto':>7}")
        lines += ["", header, "-" * 86]
        for g in groups:
            acc = f"{_num(g['test_accuracy_mean'], '.4f')} ± {_num(g['test_accuracy_std'], '.4f')}"
            bops = f"{_num(g['relative_bops_mean'], '.4f')} ± {_num(g['relative_bops_std'], '.4f')}"
            lines.append(f"{g['label']:<14} {g['mu']:>8g} {g['n']:>3} {acc:>23} {bops:>25} "
                         f"{'*' if g['pareto'] else '':>7}")
    return "\n".join(lines)

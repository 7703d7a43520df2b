"""Figures of a Bayesian Bits run and of a μ sweep (matplotlib only, no math of its own).

A run's figures read the history that :class:`~bbits_ref.training.trainer.Trainer` keeps: one record per
logging step (``kind="step"``) and per finished epoch (``kind="epoch"``, the only ones with
``test_acc``), each carrying the readout of every quantizer
(:func:`bbits_ref.training.trainer.history_record`):

* :func:`plot_gate_probabilities` — π_b = q(z_b ≠ 0 | z_{b/2} = 1) = sigmoid(φ_b + 1.598597)
  for every quantizer and gate (spec §3.3), and the mean P(z2 ≠ 0) of pruned layers;
* :func:`plot_bit_widths` — log2 E_q[bit width] per quantizer (pruned channels count 0 bits);
* :func:`plot_bops_accuracy` — relative BOPs (spec §5) against test accuracy, epoch by epoch;
* :func:`plot_kept_channels` — fraction of output channels whose test-time z2 is 1 (spec §3.4);
* :func:`plot_training_curves` — cross-entropy and the regularizer (spec §4.3).

A sweep's figure, :func:`plot_pareto`, places trained models by (relative BOPs, test accuracy)
and draws their Pareto front (spec §7.4). Every ``plot_*`` function takes ``ax=`` (a new figure
when None) and returns the artists it drew, so tests and notebooks can inspect them.
:func:`save_run_figures` and :func:`save_sweep_figures` write the PNGs of a run or sweep.
Notebook: ``notebooks/06_lenet5_mnist.ipynb``.
"""
from __future__ import annotations

import io
import numbers
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.lines import Line2D

from bbits_ref._files import atomic_write_bytes
from bbits_ref.training.experiments import pareto_front

__all__ = ["GATE_BITS", "plot_gate_probabilities", "plot_bit_widths", "plot_bops_accuracy",
           "plot_kept_channels", "plot_training_curves", "plot_pareto", "pareto_front",
           "save_run_figures", "save_sweep_figures", "BopsAccuracyArtists", "ParetoArtists"]

#: The chained gates z4 → z8 → z16 → z32 (z2 is the pruning gate, plotted separately).
GATE_BITS = (4, 8, 16, 32)
_GATE_STYLES = {4: "-", 8: "--", 16: "-.", 32: ":"}
_FIGSIZE = (6.0, 4.0)
_EVENT_KINDS = ("lr_change",)
_HISTORY_HELP = ("expected the list of records of bbits_ref.training.trainer.history_record "
                 "(Trainer.history, or json.loads of a run's history.json)")


class BopsAccuracyArtists(NamedTuple):
    line: Line2D          # the path through the epochs, in order
    points: object        # PathCollection: one point per epoch, coloured by epoch
    annotations: list     # the "start"/"end" labels


class ParetoArtists(NamedTuple):
    front: Line2D | None  # the Pareto front as a step line (None: no sweep points)
    points: object        # PathCollection of every sweep point (None: no sweep points)
    baselines: list       # one PathCollection per baseline


# ----------------------------------------------------------------------------- input checks
def _new_ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt   # only here: saving figures never touches pyplot
        _, ax = plt.subplots(figsize=_FIGSIZE)
    return ax


def _check_history(history) -> list:
    if isinstance(history, (str, bytes, os.PathLike)):
        raise TypeError(f"got a path or string ({history!r}), {_HISTORY_HELP}; "
                        "load the file first: json.loads(Path(path).read_text())")
    if not isinstance(history, (list, tuple)) and not hasattr(history, "__iter__"):
        raise TypeError(f"got a {type(history).__name__}, {_HISTORY_HELP}")
    # Event records (a learning-rate change at a resume, kind="lr_change") carry no readout.
    records = [rec for rec in history
               if not (isinstance(rec, dict) and rec.get("kind") in _EVENT_KINDS)]
    if not records:
        raise ValueError(f"the history is empty: {_HISTORY_HELP}; "
                         "train for at least one logging step (TrainConfig.log_every) first")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise TypeError(f"history record {i} is a {type(rec).__name__}, not a dict; "
                            f"{_HISTORY_HELP}")
        if not isinstance(rec.get("quantizers", {}), dict):
            raise TypeError(f"history record {i}: 'quantizers' should map names to readouts; "
                            f"{_HISTORY_HELP}")
        missing = [k for k in ("kind", "epoch", "quantizers") if k not in rec]
        if missing:
            raise ValueError(f"history record {i} has no {missing}; {_HISTORY_HELP}")
        if rec["kind"] not in ("step", "epoch"):
            raise ValueError(f"history record {i} has kind {rec['kind']!r}; "
                             "expected 'step' or 'epoch'")
    return records


def _select_quantizers(records, quantizers) -> list:
    """The quantizer names to plot (all of the first record's by default), checked."""
    known = list(records[0]["quantizers"])
    if quantizers is None:
        return known
    names = [quantizers] if isinstance(quantizers, str) else list(quantizers)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown quantizer name(s) {unknown}; this history has {known} "
                         "(names look like 'conv1.weight_quantizer')")
    return names


def _column(records, name, field):
    """One readout field of quantizer ``name`` over the records (None becomes NaN)."""
    values = []
    for i, rec in enumerate(records):
        q = rec["quantizers"].get(name)
        if q is None or field not in q:
            raise ValueError(f"history record {i} has no {field!r} for quantizer {name!r}; "
                             f"{_HISTORY_HELP}")
        values.append(np.nan if q[field] is None else q[field])
    return np.asarray(values, dtype=np.float64)


def _scalar(records, key):
    """A top-level scalar (``epoch``, ``ce``, ``relative_bops``…) over the records."""
    bad = [i for i, rec in enumerate(records) if rec.get(key) is None]
    if bad:
        raise ValueError(f"history record(s) {bad[:5]} have no {key!r} value; {_HISTORY_HELP}")
    return np.asarray([rec[key] for rec in records], dtype=np.float64)


def _short_name(name: str) -> str:
    """'conv1.weight_quantizer' → 'conv1 w', 'conv1.act_quantizer' → 'conv1 a' (for legends)."""
    for suffix, tag in ((".weight_quantizer", " w"), (".act_quantizer", " a")):
        if name.endswith(suffix):
            return name[:-len(suffix)] + tag
    return name


def _log_bops_axis(ax):
    """Log x axis for relative BOPs, labelled with plain numbers (0.2, 0.5, 1, 2…).

    Without any positive x data (a run that pruned everything has 0 BOPs) the axis stays linear:
    a log axis cannot show 0.
    """
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("relative BOPs (%)")
    if not np.isfinite(ax.dataLim.minposx) or not (ax.dataLim.x1 > 0):
        ax.margins(0.12)
        ax.text(0.5, 0.02, "0 BOPs: every channel pruned (linear axis)", transform=ax.transAxes,
                ha="center", va="bottom", fontsize="small")
        return

    def minor_label(value, _pos):
        # Over a decade or two the powers of ten alone are too few: label 2 (3) and 5 × 10^k.
        lo, hi = ax.get_xlim()
        decades = np.log10(hi / lo)
        digits = (2, 3, 5) if decades <= 1 else (2, 5) if decades <= 2.2 else ()
        if value <= 0 or round(value / 10.0 ** np.floor(np.log10(value))) not in digits:
            return ""
        return f"{value:g}"

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor_label))
    ax.margins(0.12)          # room for the point labels near the edges
    ax.set_xlabel("relative BOPs (%)")


def _positive_bops(bops, what):
    """Mask for drawing on a log axis; warns about the points that cannot be drawn."""
    ok = bops > 0
    if not ok.all():
        warnings.warn(f"{int((~ok).sum())} {what} with relative BOPs ≤ 0 (every channel "
                      "pruned?) cannot be placed on the log BOP axis and are left out",
                      stacklevel=3)
    return ok


# ----------------------------------------------------------------------------- run figures
def plot_gate_probabilities(history, ax=None, quantizers=None, gates=GATE_BITS,
                            include_prune=True) -> list:
    """π_b = q(z_b ≠ 0 | z_{b/2} = 1) over training (spec §3.3), a line per quantizer and gate.

    Colour = quantizer, line style = gate. With ``include_prune`` a thick pale line adds the mean
    over channels of P(z2 ≠ 0) for quantizers with pruning gates. Hard-cut gates read 0 (§3.5).
    Returns the Line2D list in drawing order (per quantizer: the gates, then the z2 line).
    """
    records = _check_history(history)
    names = _select_quantizers(records, quantizers)
    gates = tuple(gates)
    if not gates or any(b not in GATE_BITS for b in gates):
        raise ValueError(f"gates must be a non-empty subset of {GATE_BITS}, got {gates}")
    ax = _new_ax(ax)
    epoch = _scalar(records, "epoch")
    lines = []
    for qi, name in enumerate(names):
        color = f"C{qi % 10}"
        chain = _chain_probs(records, name)                      # (records, 4)
        for b in gates:
            line, = ax.plot(epoch, chain[:, GATE_BITS.index(b)], color=color,
                            linestyle=_GATE_STYLES[b], label=f"{name}: q(z{b}≠0 | z{b // 2}=1)")
            lines.append(line)
        prune = _column(records, name, "prune_prob_mean")
        if include_prune and not np.isnan(prune).all():
            line, = ax.plot(epoch, prune, color=color, linewidth=3, alpha=0.4,
                            label=f"{name}: mean P(z2≠0)")
            lines.append(line)
    # A compact legend: colours name quantizers, styles name gates (proxies, not data lines).
    handles = [Line2D([], [], color=f"C{qi % 10}", label=_short_name(n))
               for qi, n in enumerate(names)]
    handles += [Line2D([], [], color="0.3", linestyle=_GATE_STYLES[b], label=f"π{b}")
                for b in gates]
    if include_prune and len(lines) > len(names) * len(gates):
        handles.append(Line2D([], [], color="0.3", linewidth=3, alpha=0.4, label="P(z2≠0)"))
    ax.legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("probability the gate is on")
    ax.set_title("Gate probabilities q(z_b ≠ 0 | parent on)")
    return lines


def _chain_probs(records, name) -> np.ndarray:
    rows = [rec["quantizers"][name].get("chain_probs") for rec in records]
    if any(r is None or len(r) != len(GATE_BITS) for r in rows):
        raise ValueError(f"quantizer {name!r}: every record needs chain_probs = "
                         f"[π4, π8, π16, π32] (4 numbers); {_HISTORY_HELP}")
    return np.asarray(rows, dtype=np.float64)


def plot_bit_widths(history, ax=None, quantizers=None) -> list:
    """log2 E_q[bit width] per quantizer over training; y ticks 1…5 read 2…32 bits.

    E_q[b] = Σ_b b·P(b) with b ∈ {0, 2, 4, 8, 16, 32} (pruned channels count 0 bits), so a
    pruned layer can fall below 2 bits; fully pruned (E = 0) points are left out.
    Returns one Line2D per quantizer.
    """
    records = _check_history(history)
    names = _select_quantizers(records, quantizers)
    ax = _new_ax(ax)
    epoch = _scalar(records, "epoch")
    lines = []
    for qi, name in enumerate(names):
        expected = _column(records, name, "expected_bits")
        with np.errstate(divide="ignore"):
            log_bits = np.log2(expected)
        log_bits[~np.isfinite(log_bits)] = np.nan      # log2(0) = -inf would wreck the y range
        line, = ax.plot(epoch, log_bits, color=f"C{qi % 10}", label=_short_name(name))
        lines.append(line)
    if not lines:                                  # a full-precision model: nothing to draw
        ax.text(0.5, 0.5, "no quantizers in this model", transform=ax.transAxes,
                ha="center", va="center")
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in lines]
                        + [np.array([np.nan])])
    low = np.nanmin(ys) if not np.isnan(ys).all() else 1.0   # below 1 only for pruned layers
    ticks = np.arange(min(1, int(np.floor(low))), 6)
    ax.set_yticks(ticks, [f"{2.0 ** k:g}" for k in ticks])
    ax.set_ylim(ticks[0] - 0.2, 5.2)
    if lines:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("epoch")
    ax.set_ylabel("E_q[bit width] (bits, log2 scale)")
    ax.set_title("Expected bit width per quantizer")
    return lines


def plot_bops_accuracy(history, ax=None) -> BopsAccuracyArtists:
    """Relative BOPs (x, log scale; deterministic, spec §5) against test accuracy, per epoch.

    Uses the epoch records (the ones with ``test_acc``): a line through them in order, points
    coloured by epoch (with a colour bar) and the first and last epochs annotated.
    """
    records = [r for r in _check_history(history) if r["kind"] == "epoch"]
    if not records:
        raise ValueError("the history has no epoch records (kind='epoch'), which carry test_acc; "
                         "they are written at the end of every epoch: finish at least one epoch "
                         "(Trainer.train_epoch) first")
    bops, acc = _scalar(records, "relative_bops"), _scalar(records, "test_acc")
    epoch = _scalar(records, "epoch")
    if (bops > 0).any():
        ok = _positive_bops(bops, "epoch record(s)")
        bops, acc, epoch = bops[ok], acc[ok], epoch[ok]
    # else: every channel pruned all along (0 BOPs): the points are drawn on a linear axis
    ax = _new_ax(ax)
    line, = ax.plot(bops, acc, color="0.6", linewidth=1, zorder=1)
    points = ax.scatter(bops, acc, c=epoch, cmap="viridis", zorder=2, s=25)
    ax.figure.colorbar(points, ax=ax, label="epoch")
    notes = []
    if len(bops):
        ends = [(0, "start"), (len(bops) - 1, "end")] if len(bops) > 1 else [(0, "epoch")]
        middle = np.sqrt(bops.min() * bops.max())      # labels right of it point leftwards
        for i, word in ends:
            right = bops[i] > middle
            notes.append(ax.annotate(f"{word} (epoch {epoch[i]:g})", xy=(bops[i], acc[i]),
                                     xytext=(-6 if right else 6, 6), textcoords="offset points",
                                     ha="right" if right else "left", fontsize="small"))
    _log_bops_axis(ax)
    ax.set_ylabel("test accuracy")
    ax.set_title("BOPs and accuracy during training")
    return BopsAccuracyArtists(line, points, notes)


def plot_kept_channels(history, ax=None) -> list:
    """Fraction of output channels kept (test-time z2 = 1, spec §3.4) per pruned layer.

    One Line2D per weight quantizer with pruning gates; a model without them gets a note and [].
    """
    records = _check_history(history)
    ax = _new_ax(ax)
    pruned = [n for n, q in records[0]["quantizers"].items() if q.get("channels") is not None]
    epoch = _scalar(records, "epoch")
    lines = []
    for qi, name in enumerate(pruned):
        kept = _column(records, name, "kept") / _column(records, name, "channels")
        layer = name[:-len(".weight_quantizer")] if name.endswith(".weight_quantizer") else name
        line, = ax.plot(epoch, kept, color=f"C{qi % 10}", label=layer)
        lines.append(line)
    if lines:
        ax.legend(fontsize="x-small", loc="lower left")
    else:
        ax.text(0.5, 0.5, "no pruning gates in this model", transform=ax.transAxes,
                ha="center", va="center")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of output channels kept")
    ax.set_title("Kept channels per layer")
    return lines


def plot_training_curves(history, ax=None) -> list:
    """Cross-entropy (left axis) and the regularizer (right axis, spec §4.3) over training.

    Uses the step records (per-batch values); a history without them falls back to the epoch
    records (epoch means). Returns ``[ce_line, reg_line]``; the second lives on ``ax.twinx()``
    because the regularizer is on another scale.
    """
    records = _check_history(history)
    steps = [r for r in records if r["kind"] == "step"]
    records = steps or records
    epoch = _scalar(records, "epoch")
    ax = _new_ax(ax)
    ce_line, = ax.plot(epoch, _scalar(records, "ce"), color="C0", label="cross-entropy")
    reg_ax = ax.twinx()
    reg_line, = reg_ax.plot(epoch, _scalar(records, "reg"), color="C3", label="regularizer")
    ax.legend(handles=[ce_line, reg_line], fontsize="small", loc="upper right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy", color="C0")
    reg_ax.set_ylabel("regularizer (before μ)", color="C3")
    ax.set_title("Training losses" + ("" if steps else " (epoch means)"))
    return [ce_line, reg_line]


# ----------------------------------------------------------------------------- sweep figures
def _point_arrays(points, what):
    """(relative_bops, test_accuracy) float arrays of sweep points, checked."""
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
                         "drop diverged runs before plotting")
    return bops, acc


def _point_label(p) -> str | None:
    if p.get("label") is not None:
        return str(p["label"])
    if p.get("mu") is not None:
        mu = p["mu"]
        return f"μ={mu:g}" if isinstance(mu, numbers.Real) else f"μ={mu}"
    return None


def plot_pareto(points, baselines=(), ax=None) -> ParetoArtists:
    """Sweep points in the (relative BOPs, test accuracy) plane with their Pareto front.

    The front (see :func:`pareto_front`) is a step line: at a BOP budget x the best reachable
    accuracy is that of the last front point with BOPs ≤ x. Baselines (uniform fixed-bit,
    quantization-only, pruning-only…) are separately marked, labelled points. x is log scale.
    """
    points, baselines = list(points), list(baselines)
    if not points and not baselines:
        raise ValueError("nothing to plot: give sweep points and/or baselines, each a dict with "
                         "'relative_bops', 'test_accuracy' and 'label' or 'mu'")
    ax = _new_ax(ax)
    front_line = scatter = None
    if points:
        bops, acc = _point_arrays(points, "points")
        ok = _positive_bops(bops, "sweep point(s)")
        points = [p for p, keep in zip(points, ok) if keep]
        bops, acc = bops[ok], acc[ok]
    if points:
        scatter = ax.scatter(bops, acc, color="C0", alpha=0.5, s=25, label="sweep runs", zorder=2)
        front = pareto_front(points)
        fx, fy = _point_arrays(front, "front")
        front_line, = ax.plot(fx, fy, drawstyle="steps-post", color="C0", marker="o",
                              label="Pareto front", zorder=3)
        for p, x, y in zip(points, bops, acc):
            if (label := _point_label(p)) is not None:
                ax.annotate(label, (x, y), xytext=(4, -10), textcoords="offset points",
                            fontsize="x-small")
    marked = []
    if baselines:
        bx, by = _point_arrays(baselines, "baselines")
        ok = _positive_bops(bx, "baseline(s)")
        markers = "s^DvPX*"
        for k in np.flatnonzero(ok):
            label = _point_label(baselines[k]) or f"baseline {k}"
            marked.append(ax.scatter([bx[k]], [by[k]], marker=markers[len(marked) % len(markers)],
                                     color=f"C{1 + len(marked) % 9}", s=45, label=label,
                                     zorder=4))
            ax.annotate(label, (bx[k], by[k]), xytext=(5, 5), textcoords="offset points",
                        fontsize="x-small")
    _log_bops_axis(ax)
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against BOPs")
    ax.legend(fontsize="x-small", loc="lower right")
    return ParetoArtists(front_line, scatter, marked)


# ----------------------------------------------------------------------------- saving
_RUN_FIGURES = {
    "gate_probabilities.png": plot_gate_probabilities,
    "bit_widths.png": plot_bit_widths,
    "bops_accuracy.png": plot_bops_accuracy,
    "kept_channels.png": plot_kept_channels,
    "training_curves.png": plot_training_curves,
}


def _figure():
    # A bare Figure (no pyplot): nothing to close, no GUI backend, safe in headless training.
    from matplotlib.figure import Figure
    fig = Figure(figsize=_FIGSIZE)
    return fig, fig.add_subplot()


def _write_figures(figures, out_dir, dpi) -> list:
    """Save {filename: Figure} as PNGs, each written atomically (readers never see half a PNG)."""
    if not isinstance(dpi, numbers.Real) or not dpi > 0:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    out = Path(out_dir)
    paths = []
    for fname, fig in figures.items():
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(out / fname, png.getvalue())
        paths.append(out / fname)
    return paths


def save_run_figures(history, out_dir, dpi=100) -> list:
    """Write gate_probabilities.png, bit_widths.png, bops_accuracy.png, kept_channels.png and
    training_curves.png (about 6×4 in) into ``out_dir``; returns their paths.

    Every figure is drawn before any file is written, so bad input writes nothing.
    """
    records = _check_history(history)
    figures = {}
    for fname, plot in _RUN_FIGURES.items():
        fig, ax = _figure()
        plot(records, ax=ax)
        figures[fname] = fig
    return _write_figures(figures, out_dir, dpi)


def save_sweep_figures(points, baselines, out_dir, dpi=100) -> list:
    """Write pareto.png (see :func:`plot_pareto`) into ``out_dir``; returns ``[path]``."""
    fig, ax = _figure()
    plot_pareto(points, baselines, ax=ax)
    return _write_figures({"pareto.png": fig}, out_dir, dpi)


# ----------------------------------------------------------------------------- two runs
def plot_bops_accuracy_paths(histories: dict, ax=None) -> list:
    """The BOP–accuracy paths of several runs on one plot (``bbits-ref compare``).

    ``histories`` maps a label to a run's history; each run is one line through its epoch
    records, marked at its start (circle) and its end (square).  Returns the Line2D of each run.
    """
    if not isinstance(histories, dict) or not histories:
        raise ValueError("histories must map a label to a run history (at least one run)")
    ax = _new_ax(ax)
    lines = []
    from matplotlib import colormaps
    colors = colormaps["tab10"].colors
    for i, (label, history) in enumerate(histories.items()):
        records = [r for r in _check_history(history) if r["kind"] == "epoch"]
        if not records:
            raise ValueError(f"run {label!r} has no epoch records yet: finish an epoch first")
        bops, acc = _scalar(records, "relative_bops"), _scalar(records, "test_acc")
        ok = _positive_bops(bops, f"epoch record(s) of {label}")
        bops, acc = bops[ok], acc[ok]
        color = colors[i % len(colors)]
        # wide solid, then narrow dashed: where two runs coincide, both stay visible
        line, = ax.plot(bops, acc, color=color, linewidth=2.4 if i == 0 else 1.2,
                        linestyle="-" if i == 0 else (0, (4, 2)), label=label, zorder=2 + i)
        if len(bops):
            ax.plot(bops[:1], acc[:1], "o", color=color, markersize=5)
            ax.plot(bops[-1:], acc[-1:], "s", color=color, markersize=6)
        lines.append(line)
    _log_bops_axis(ax)
    ax.set_ylabel("test accuracy")
    ax.set_title("BOPs and accuracy during training (○ first epoch, □ last)")
    ax.legend(loc="best", fontsize="small")
    return lines


def save_compare_figure(histories: dict, path, dpi=100) -> Path:
    """Write :func:`plot_bops_accuracy_paths` of ``histories`` to the PNG ``path`` (atomically)."""
    fig, ax = _figure()
    plot_bops_accuracy_paths(histories, ax=ax)
    path = Path(path)
    return _write_figures({path.name: fig}, path.parent, dpi)[0]

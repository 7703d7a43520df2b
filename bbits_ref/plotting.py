"""Figures of a Bayesian Bits run and of a μ sweep (matplotlib only, no math of its own).

A run's figures read the history that :class:`~bbits_ref.training.trainer.Trainer` keeps: one record per
logging step (``kind="step"``) and per finished epoch (``kind="epoch"``, the only ones with
``test_acc``), each carrying the readout of every quantizer
(:func:`bbits_ref.training.trainer.history_record`):

* :func:`plot_gate_probabilities` — one small panel per quantizer (a column per layer, weights
  above activations) of π_b = q(z_b ≠ 0 | z_{b/2} = 1) = sigmoid(φ_b + 1.598597) for every gate
  (docs/method.md §3.3) and the mean P(z2 ≠ 0) of pruned layers, with the test-time threshold
  (§3.4) and the hard cut (§3.5) drawn;
* :func:`plot_bit_widths` — the test-time bit width per quantizer as a step line, beside the
  expected bit width E_q[bits] (dashed, pruned channels count 0 bits), on a log2 axis;
* :func:`plot_bops_accuracy` — relative BOPs (§5) against test accuracy, epoch by epoch, with
  reference marks (uniform w8a8 and w2a2 BOPs, the paper's result: :func:`reference_marks`);
* :func:`plot_kept_channels` — fraction of output channels whose test-time z2 is 1 (§3.4);
* :func:`plot_training_curves` — cross-entropy and the regularizer (§4.3).

Of a trained model: :func:`plot_layer_bops` (each layer's share of the BOPs beside its share of
the 32/32 baseline) and :func:`plot_bit_distribution` (the point masses P(bit width = b), as stems).
A sweep's figure, :func:`plot_pareto`, places trained models by (relative BOPs, test accuracy)
and draws their Pareto front (§7.4). Every ``plot_*`` function takes ``ax=`` (a new figure when
None; the multi-panel ones take ``fig=`` as well) and returns the artists it drew, so tests and
notebooks can inspect them. Colours name layers, always in the same order (tab10: conv1 blue,
conv2 orange…). :func:`save_run_figures` and :func:`save_sweep_figures` write the PNGs of a run
or sweep. Notebook: ``notebooks/06_lenet5_mnist.ipynb``.
"""
from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.lines import Line2D

from bbits_ref._files import atomic_write_bytes
from bbits_ref.method.bops import LayerCost, relative_bops, uniform_relative_bops
from bbits_ref.method.gates import Gate, make_gate
from bbits_ref.method.readout import BIT_CHOICES
from bbits_ref.training.experiments import pareto_front, point_arrays  # the front plot_pareto draws

__all__ = ["GATE_BITS", "PAPER_RESULTS", "plot_gate_probabilities", "plot_bit_widths",
           "plot_bops_accuracy", "plot_kept_channels", "plot_training_curves", "plot_layer_bops",
           "plot_bit_distribution", "plot_pareto", "gate_levels",
           "reference_marks", "save_run_figures", "save_sweep_figures", "Reference",
           "GateArtists", "BitWidthArtists", "BopsAccuracyArtists", "LayerBopsArtists",
           "ParetoArtists", "plot_gate_trace", "plot_bit_evolution", "GateTraceArtists",
           "save_figure", "plot_pareto_groups", "ParetoGroupArtists", "REBUTTAL_RESULTS",
           "plot_seed_runs", "SeedRunArtists"]

#: The chained gates z4 → z8 → z16 → z32 (z2 is the pruning gate, plotted separately).
GATE_BITS = (4, 8, 16, 32)
_GATE_STYLES = {4: "-", 8: "--", 16: "-.", 32: ":"}
# The gates figure colours gates, not layers (Dark2: distinct, and readable when printed grey).
_GATE_COLORS = {4: "#1b9e77", 8: "#d95f02", 16: "#7570b3", 32: "#e7298a"}
_FIGSIZE = (6.0, 4.0)
_PANEL_SIZE = (2.3, 1.85)       # inches per small panel
_PANELS_PER_ROW = 4             # layers per row of panels (VGG-7's 8 layers wrap onto 2 blocks)
_EVENT_KINDS = ("note",)
_HISTORY_HELP = ("expected the list of records of bbits_ref.training.trainer.history_record "
                 "(Trainer.history, or json.loads of a run's history.json)")

#: Published results (relative BOPs %, top-1 accuracy) to mark on BOP–accuracy plots, keyed by
#: (model, dataset): van Baalen et al. 2020, official README (docs/method.md §7.4).
PAPER_RESULTS = {
    ("lenet5", "mnist"): (("paper (BB, μ=0.1)", 0.36, 0.9930),),
    ("vgg7", "cifar10"): (("paper (BB, μ=0.01)", 0.51, 0.9323),
                          ("paper (BB, μ=0.1)", 0.29, 0.9196)),
}
#: The published LeNet-5/MNIST points of the rebuttal's first claim (label, relative BOPs in %,
#: test accuracy): the paper's mean with hard-concrete gates, the rebuttal's Gumbel-softmax run.
REBUTTAL_RESULTS = (("paper, hard concrete (mean)", 0.36, 0.9930),
                    ("rebuttal, Gumbel-softmax", 0.38, 0.9938))
#: The uniform configurations marked on BOP–accuracy plots as (label, w_bits, a_bits).
UNIFORM_REFERENCES = (("w8a8 uniform", 8, 8), ("w2a2 uniform", 2, 2))


class Reference(NamedTuple):
    """A reference mark on a BOP–accuracy plot: a point, or a vertical line without accuracy."""
    label: str
    relative_bops: float
    test_accuracy: float | None = None


class GateArtists(NamedTuple):
    panels: dict          # quantizer name → the Axes it is drawn on
    lines: list           # the data lines: per quantizer its gates π_b, then its mean P(z2≠0)
    thresholds: list      # per Axes: the test-time threshold line, then the hard-cut line
    cuts: list            # one PathCollection per hard cut seen in the history (× markers)


class BitWidthArtists(NamedTuple):
    panels: dict          # quantizer name → the Axes it is drawn on
    steps: list           # test-time bit width per quantizer (drawstyle "steps-post")
    expected: list        # E_q[bit width] per quantizer (dashed)


class BopsAccuracyArtists(NamedTuple):
    line: Line2D          # the path through the epochs, in order
    points: object        # PathCollection: one point per epoch, coloured by epoch
    ends: list            # Line2D markers of the first ("start") and last ("end") epoch
    references: tuple = ()  # per Reference: a vertical Line2D, or a PathCollection (a point)


class LayerBopsArtists(NamedTuple):
    learned: object       # BarContainer: each layer's share (%) of the model's BOPs
    baseline: object      # BarContainer: each layer's share (%) of the 32/32 baseline's BOPs
    labels: list          # the percent labels on the bars


class ParetoArtists(NamedTuple):
    front: Line2D | None  # the Pareto front as a step line (None: no sweep points)
    points: object        # PathCollection of every sweep point (None: no sweep points)
    baselines: list       # one PathCollection per baseline


# ----------------------------------------------------------------------------- input checks
def _new_ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt   # only here: saving figures never touches pyplot
        _, ax = plt.subplots(figsize=_FIGSIZE, layout="constrained")
    return ax


def _new_fig(fig, figsize):
    if fig is None:
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=figsize, layout="constrained")
    return fig


def _check_history(history) -> list:
    if isinstance(history, (str, bytes, os.PathLike)):
        raise TypeError(f"got a path or string ({history!r}), {_HISTORY_HELP}; "
                        "load the file first: json.loads(Path(path).read_text())")
    if not isinstance(history, (list, tuple)) and not hasattr(history, "__iter__"):
        raise TypeError(f"got a {type(history).__name__}, {_HISTORY_HELP}")
    # Note records (e.g. a learning-rate change at a resume, kind="note") carry no readout.
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


def _check_both_axes(ax, fig):
    if ax is not None and fig is not None:
        raise ValueError("give ax= (everything on one Axes) or fig= (one small panel per "
                         "quantizer), not both")


# ----------------------------------------------------------------------------- names, colours
def _split_name(name: str) -> tuple[str, str]:
    """'conv1.weight_quantizer' → ('conv1', 'weight'); 'conv1.act_quantizer' → ('conv1',
    'activation'); any other name is its own layer of kind 'other'."""
    for suffix, kind in ((".weight_quantizer", "weight"), (".act_quantizer", "activation")):
        if name.endswith(suffix):
            return name[:-len(suffix)], kind
    return name, "other"


def _short_name(name: str) -> str:
    """'conv1.weight_quantizer' → 'conv1 w', 'conv1.act_quantizer' → 'conv1 a' (for legends)."""
    layer, kind = _split_name(name)
    return {"weight": f"{layer} w", "activation": f"{layer} a"}.get(kind, name)


def _layers(names) -> list:
    return list(dict.fromkeys(_split_name(n)[0] for n in names))


def _layer_colors(layers) -> dict:
    """A distinct colour per layer, in order: tab10 (tab20 for 11–20 layers, then it repeats)."""
    from matplotlib import colormaps
    layers = list(dict.fromkeys(layers))
    colors = colormaps["tab10" if len(layers) <= 10 else "tab20"].colors
    return {layer: colors[i % len(colors)] for i, layer in enumerate(layers)}


def _quantizer_colors(names) -> dict:
    """Colours for quantizers sharing one Axes: the layer's tab10 hue, dark for the weights and
    light for the activations (tab20 pairs), so no two quantizers of ≤ 10 layers look alike."""
    from matplotlib import colormaps
    tab20 = colormaps["tab20"].colors
    layers = _layers(names)
    return {n: tab20[2 * (layers.index(_split_name(n)[0]) % 10)
                     + (_split_name(n)[1] == "activation")] for n in names}


def _plain_numbers(ax):
    """No offset or ×10^k notation on linear axes: tick labels read as the numbers they are."""
    from matplotlib.ticker import ScalarFormatter
    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
            formatter.set_scientific(False)


def _log2_bits_axis(ax, low):
    """Log2 y axis with ticks at the bit widths 2, 4, 8, 16, 32 (and 1, ½… when E_q < 2)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    k0 = min(1, int(np.floor(np.log2(low)))) if np.isfinite(low) and low > 0 else 1
    ticks = 2.0 ** np.arange(max(k0, -4), 6)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(ticks[0] / 1.25, 32 * 1.25)


def _log_bops_axis(ax):
    """Log x axis for relative BOPs, labelled with plain numbers (0.2, 0.5, 1, 2…).

    Without any positive x data (a run that pruned everything has 0 BOPs) the axis stays linear:
    a log axis cannot show 0.
    """
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("relative BOPs (% of 32/32 bits)")
    if not np.isfinite(ax.dataLim.minposx) or not (ax.dataLim.x1 > 0):
        ax.margins(0.12)
        _plain_numbers(ax)
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


def _accuracy_axis(ax):
    """Accuracy (a fraction in the data) labelled in percent: 0.993 reads 99.3%."""
    from matplotlib.ticker import PercentFormatter
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("test accuracy")


def _positive_bops(bops, what):
    """Mask for drawing on a log axis; warns about the points that cannot be drawn."""
    ok = bops > 0
    if not ok.all():
        warnings.warn(f"{int((~ok).sum())} {what} with relative BOPs ≤ 0 (every channel "
                      "pruned?) cannot be placed on the log BOP axis and are left out",
                      stacklevel=3)
    return ok


# ----------------------------------------------------------------------------- panel grids
def _grid_shape(names):
    """(rows, cols, {name: (row, col)}): a column per layer (wrapping after 4 layers), a row per
    quantizer kind present (weights above activations)."""
    parts = [_split_name(n) for n in names]
    layers = _layers(names)
    kinds = [k for k in ("weight", "activation", "other") if any(p[1] == k for p in parts)]
    cols = min(len(layers), _PANELS_PER_ROW)
    blocks = math.ceil(len(layers) / cols)
    where = {n: ((layers.index(layer) // cols) * len(kinds) + kinds.index(kind),
                 layers.index(layer) % cols) for n, (layer, kind) in zip(names, parts)}
    return blocks * len(kinds), cols, where


def _panel_figsize(names, extra_width=0.0):
    if not names:
        return _FIGSIZE
    rows, cols, _ = _grid_shape(names)
    return (_PANEL_SIZE[0] * cols + extra_width, _PANEL_SIZE[1] * rows + 0.7)


def _panels(fig, names):
    """One small Axes per quantizer on ``fig`` (shared axes); returns ({name: Axes}, spare Axes)."""
    rows, cols, where = _grid_shape(names)
    grid = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    panels = {n: grid[r, c] for n, (r, c) in where.items()}
    used = set(where.values())
    spare = [grid[r, c] for r in range(rows) for c in range(cols) if (r, c) not in used]
    for r in range(rows):
        for c in range(cols):
            # x tick labels under every panel with no panel below it; y labels in column 0.
            below_free = r == rows - 1 or (r + 1, c) not in used
            grid[r, c].tick_params(labelbottom=below_free, labelleft=c == 0)
    for ax in spare:
        ax.set_axis_off()
    return panels, spare


def _panel_title(name):
    layer, kind = _split_name(name)
    return {"weight": f"{layer} weights", "activation": f"{layer} output activations"}.get(
        kind, name)


def _panel_legend(fig, spare, handles):
    """The shared legend: in an empty grid cell if there is one, else under the panels."""
    if spare:
        return spare[-1].legend(handles=handles, loc="center", fontsize="small", frameon=False)
    return fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                      fontsize="small", frameon=False)


def _no_quantizers(ax):
    ax.text(0.5, 0.5, "no quantizers in this model (full precision)", transform=ax.transAxes,
            ha="center", va="center")


# ----------------------------------------------------------------------------- run figures
def gate_levels(gate="hard_concrete") -> tuple[float, float]:
    """(π at the test-time threshold, π at the hard cut) of a gate kind or :class:`Gate`.

    Hard concrete: a gate is on at test time iff P(z = 0) < 0.34, i.e. π > 0.66 (§3.4); a chain
    gate is cut for good once φ ≤ −2, i.e. π ≤ sigmoid(−2 + 1.598597) = 0.401 (§3.5).
    """
    g = make_gate(gate) if isinstance(gate, str) else gate
    if not isinstance(g, Gate):
        raise TypeError(f"gate must be a gate kind ('hard_concrete', 'gumbel_softmax') or a "
                        f"Gate; got {type(gate).__name__}")
    on = np.asarray(g.prob_nonzero(np.float64(g.threshold_logit())).data)
    cut = np.asarray(g.prob_nonzero(np.float64(g.hard_cut_logit)).data)
    return float(on), float(cut)


def _chain_probs(records, name) -> np.ndarray:
    rows = [rec["quantizers"][name].get("chain_probs") for rec in records]
    if any(r is None or len(r) != len(GATE_BITS) for r in rows):
        raise ValueError(f"quantizer {name!r}: every record needs chain_probs = "
                         f"[π4, π8, π16, π32] (4 numbers); {_HISTORY_HELP}")
    return np.asarray(rows, dtype=np.float64)


def _cut_indices(pi) -> np.ndarray:
    """Records where a gate starts to read exactly 0 after reading more (the hard cut, §3.5)."""
    return np.flatnonzero((pi[1:] == 0) & (pi[:-1] > 0)) + 1


def plot_gate_probabilities(history, ax=None, quantizers=None, gates=GATE_BITS,
                            include_prune=True, fig=None, gate="hard_concrete",
                            hard_cut=True) -> GateArtists:
    """π_b = q(z_b ≠ 0 | z_{b/2} = 1) over training (§3.3): one small panel per quantizer.

    Default (or ``fig=``): a grid of panels, a column per layer, weights above activations;
    colour and line style name the gate (π4 … π32), a thick grey line is the mean over channels
    of P(z2 ≠ 0) for pruned layers. With ``ax=`` every quantizer goes on that one Axes
    (colour = quantizer, line style = gate).

    The shaded band below the dashed line is where a gate is off at test time (P(z = 0) ≥ 0.34,
    i.e. π ≤ 0.66 for hard concrete, §3.4; for z2 this holds per channel, the mean only hints at
    it). A chain gate whose π falls to the dotted line (φ ≤ −2, π ≤ 0.40) is cut for good and
    reads 0 from then on (§3.5, with ``hard_cut``): × marks where the history shows a cut. Gates
    that read 0 in every record (cut from the start, as π16 and π32 on MNIST) are named in a
    note instead of drawn. ``gate`` (a kind or :class:`Gate`) sets the two levels.
    """
    from matplotlib.transforms import blended_transform_factory
    _check_both_axes(ax, fig)
    records = _check_history(history)
    names = _select_quantizers(records, quantizers)
    gates = tuple(gates)
    if not gates or any(b not in GATE_BITS for b in gates):
        raise ValueError(f"gates must be a non-empty subset of {GATE_BITS}, got {gates}")
    on_level, cut_level = gate_levels(gate)
    single = ax is not None
    if single:
        panels, spare = dict.fromkeys(names, ax), []
    else:
        fig = _new_fig(fig, _panel_figsize(names))
        if names:
            panels, spare = _panels(fig, names)
        else:
            ax = fig.add_subplot()
            panels, spare = {}, []
    epoch = _scalar(records, "epoch")
    colors = _quantizer_colors(names)
    lines, cuts, notes, drawn = [], [], {}, set()
    for name in names:
        pax, chain = panels[name], _chain_probs(records, name)
        for b in gates:
            pi = chain[:, GATE_BITS.index(b)]
            if (pi == 0).all():
                notes.setdefault(pax, []).append(f"π{b}")
                continue
            color = colors[name] if single else _GATE_COLORS[b]
            line, = pax.plot(epoch, pi, color=color, linestyle=_GATE_STYLES[b], linewidth=1.6,
                             label=f"{name}: q(z{b}≠0 | z{b // 2}=1)")
            lines.append(line)
            drawn.add(b)
            at = _cut_indices(pi)
            if hard_cut and at.size:
                cuts.append(pax.scatter(epoch[at], pi[at - 1], marker="x", s=36, color=color,
                                        linewidths=1.5, zorder=4, label=f"{name}: π{b} cut"))
        prune = _column(records, name, "prune_prob_mean")
        if include_prune and not np.isnan(prune).all():
            line, = pax.plot(epoch, prune, color=colors[name] if single else "0.2",
                             linewidth=3.5, alpha=0.45, label=f"{name}: mean P(z2≠0)")
            lines.append(line)
    thresholds = []
    for pax in dict.fromkeys(panels.values()) if names else [ax]:
        pax.axhspan(0.0, on_level, color="0.92", zorder=0, linewidth=0)
        thresholds.append(pax.axhline(on_level, color="0.25", linestyle=(0, (5, 2)),
                                      linewidth=1.0, label="test-time threshold"))
        if hard_cut:
            thresholds.append(pax.axhline(cut_level, color="0.25", linestyle=":", linewidth=1.2,
                                          label="hard cut"))
        if pax in notes:
            # In a strip below 0, where no line runs.
            note = (f"{len(notes[pax])} gate lines read 0 all run (cut), not drawn" if single
                    else ", ".join(notes[pax]) + ": 0 all run (cut)")
            pax.text(0.03, -0.11, note,
                     transform=blended_transform_factory(pax.transAxes, pax.transData),
                     fontsize="x-small", va="center", ha="left", color="0.3")
        pax.set_ylim(-0.2 if notes else -0.03, 1.04)
        pax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        _plain_numbers(pax)
    levels = [Line2D([], [], color="0.25", linestyle=(0, (5, 2)),
                     label=f"test-time threshold π = {on_level:.2f}\n(shaded: off at test time)")]
    if hard_cut:
        levels += [Line2D([], [], color="0.25", linestyle=":",
                          label=f"hard cut π = {cut_level:.2f} (φ ≤ −2)"),
                   Line2D([], [], color="0.25", marker="x", linestyle="none",
                          label="gate cut: reads 0 after")]
    prune_drawn = include_prune and any(line.get_label().endswith("P(z2≠0)") for line in lines)
    if single:
        handles = [Line2D([], [], color=colors[n], label=_short_name(n)) for n in names]
        handles += [Line2D([], [], color="0.3", linestyle=_GATE_STYLES[b], label=f"π{b}")
                    for b in gates if b in drawn]
        if prune_drawn:
            handles.append(Line2D([], [], color="0.3", linewidth=3.5, alpha=0.45,
                                  label="mean P(z2≠0)"))
        ax.legend(handles=handles + levels, fontsize="x-small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        ax.set_xlabel("epoch")
        ax.set_ylabel("P(gate on | previous gate on)")
        ax.set_title("Gate probabilities π_b = q(z_b ≠ 0 | z_b/2 = 1)")
        if not names:
            _no_quantizers(ax)
        return GateArtists(panels, lines, thresholds, cuts)
    handles = [Line2D([], [], color=_GATE_COLORS[b], linestyle=_GATE_STYLES[b], linewidth=1.6,
                      label=f"π{b} = q(z{b}≠0 | z{b // 2}=1)") for b in gates if b in drawn]
    if prune_drawn:
        handles.append(Line2D([], [], color="0.2", linewidth=3.5, alpha=0.45,
                              label="mean over channels of P(z2≠0)"))
    if names:
        for name, pax in panels.items():
            pax.set_title(_panel_title(name), fontsize="medium")
        _panel_legend(fig, spare, handles + levels)
        fig.supxlabel("epoch")
        fig.supylabel("probability the gate is on")
    else:
        _no_quantizers(ax)
    fig.suptitle("Gate probabilities during training (one panel per quantizer)")
    return GateArtists(panels, lines, thresholds, cuts)


def plot_bit_widths(history, ax=None, quantizers=None, fig=None) -> BitWidthArtists:
    """Test-time bit width (step line) and E_q[bit width] (dashed) per quantizer, log2 y axis.

    The test-time width comes from the deterministic gates (§3.4, the one the BOPs count, §5);
    E_q[b] = Σ_b b·P(b) with b ∈ {0, 2, 4, 8, 16, 32} counts pruned channels as 0 bits, so a
    pruned layer's E_q can fall below 2 (fully pruned points, 0 bits, are left out). Default
    (or ``fig=``): one small panel per quantizer in its layer's colour; with ``ax=`` all on one
    Axes (weights dark, activations light).
    """
    _check_both_axes(ax, fig)
    records = _check_history(history)
    names = _select_quantizers(records, quantizers)
    single = ax is not None
    if single:
        panels, spare = dict.fromkeys(names, ax), []
        colors = _quantizer_colors(names)
    else:
        fig = _new_fig(fig, _panel_figsize(names))
        panels, spare = _panels(fig, names) if names else ({}, [])
        if not names:
            ax = fig.add_subplot()
        all_layers = _layers(records[0]["quantizers"])
        layer_colors = _layer_colors(all_layers)
        colors = {n: layer_colors[_split_name(n)[0]] for n in names}
    epoch = _scalar(records, "epoch")
    steps, expected_lines, low = [], [], np.inf
    for name in names:
        pax = panels[name]
        bits = _column(records, name, "bits")
        expected = _column(records, name, "expected_bits")
        bits[~(bits > 0)] = np.nan                   # 0 bits cannot sit on a log axis
        expected[~(expected > 0)] = np.nan
        step, = pax.plot(epoch, bits, drawstyle="steps-post", color=colors[name], linewidth=2.2,
                         label=f"{_short_name(name)}: test-time bits")
        dashed, = pax.plot(epoch, expected, linestyle="--", color=colors[name], linewidth=1.2,
                           alpha=0.9, label=f"{_short_name(name)}: E_q[bits]")
        steps.append(step)
        expected_lines.append(dashed)
        finite = np.concatenate([bits[np.isfinite(bits)], expected[np.isfinite(expected)]])
        low = min(low, finite.min()) if finite.size else low
        if not finite.size and not single:
            pax.text(0.5, 0.5, "0 bits all run\n(every channel pruned)", transform=pax.transAxes,
                     ha="center", va="center", fontsize="small")
    if names and not np.isfinite(low) and epoch.max() > epoch.min():
        next(iter(panels.values())).set_xlim(epoch.min(), epoch.max())   # shared by all
    targets = list(dict.fromkeys(panels.values())) if names else [ax]
    for pax in targets:
        _log2_bits_axis(pax, low)
        _plain_numbers(pax)
    styles = [Line2D([], [], color="0.2", linewidth=2.2, drawstyle="steps-post",
                     label="test-time bit width"),
              Line2D([], [], color="0.2", linewidth=1.2, linestyle="--",
                     label="E_q[bit width]\n(pruned channels = 0 bits)")]
    if single:
        handles = [Line2D([], [], color=colors[n], linewidth=2.2, label=_short_name(n))
                   for n in names]
        ax.legend(handles=handles + styles, fontsize="x-small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        ax.set_xlabel("epoch")
        ax.set_ylabel("bit width (log2 scale)")
        ax.set_title("Bit width per quantizer: test time (steps) and expected (dashed)")
        if not names:
            _no_quantizers(ax)
        return BitWidthArtists(panels, steps, expected_lines)
    if names:
        for name, pax in panels.items():
            pax.set_title(_panel_title(name), fontsize="medium", color=colors[name])
        _panel_legend(fig, spare, styles)
        fig.supxlabel("epoch")
        fig.supylabel("bit width (log2 scale)")
    else:
        _no_quantizers(ax)
    fig.suptitle("Bit width per quantizer: test time (steps) and expected (dashed)")
    return BitWidthArtists(panels, steps, expected_lines)


def reference_marks(macs, model=None, dataset=None) -> list:
    """Reference marks for a BOP–accuracy plot of a network with these per-layer MAC counts.

    The uniform configurations of :data:`UNIFORM_REFERENCES` (w8a8 and w2a2, first layer fed
    8-bit input, no pruning, §5.1) as vertical lines, with BOPs from
    :func:`bbits_ref.method.bops.uniform_relative_bops`; and, for ``(model, dataset)`` in
    :data:`PAPER_RESULTS` (LeNet-5 on MNIST, VGG-7 on CIFAR-10), the published points.
    """
    macs = [int(m) for m in macs]
    marks = [Reference(label, uniform_relative_bops(macs, w, a))
             for label, w, a in UNIFORM_REFERENCES]
    marks += [Reference(*paper) for paper in PAPER_RESULTS.get((model, dataset), ())]
    return marks


def _references_from_summary(summary) -> list:
    """:func:`reference_marks` for a run's summary.json (its layers' MACs, model and dataset)."""
    layers = summary.get("layers") if isinstance(summary, dict) else None
    if not layers:
        return []
    macs = [layer.get("macs") if isinstance(layer, dict) else None for layer in layers]
    if any(not isinstance(m, numbers.Integral) or m < 0 for m in macs):
        raise ValueError(f"summary 'layers' must each carry 'macs' (a whole number ≥ 0); got "
                         f"{macs}: regenerate summary.json with bbits-ref train")
    return reference_marks(macs, summary.get("model"), summary.get("dataset"))


def _draw_references(ax, references) -> list:
    """Vertical lines (named on a top axis, clear of the data) and points; returns them."""
    from matplotlib.ticker import NullLocator
    drawn, at, names = [], [], []
    for ref in references:
        ref = Reference(*ref) if not isinstance(ref, Reference) else ref
        if not (isinstance(ref.relative_bops, numbers.Real) and ref.relative_bops >= 0):
            raise ValueError(f"reference {ref.label!r}: relative_bops must be a number ≥ 0, "
                             f"got {ref.relative_bops!r}")
        if ref.test_accuracy is None:
            drawn.append(ax.axvline(ref.relative_bops, color="0.45", linestyle=(0, (6, 3)),
                                    linewidth=1.0, zorder=0, label=ref.label))
            at.append(ref.relative_bops)
            names.append(f"{ref.label}\n{ref.relative_bops:.3g}%")
        else:
            marker = "*PXD^v"[sum(not isinstance(d, Line2D) for d in drawn) % 6]
            drawn.append(ax.scatter([ref.relative_bops], [ref.test_accuracy], marker=marker,
                                    s=160 if marker == "*" else 60, color="C3", edgecolors="k",
                                    linewidths=0.5, zorder=5,
                                    label=f"{ref.label}: {ref.relative_bops:.3g}%, "
                                          f"{100 * ref.test_accuracy:.2f}%"))
    if at:
        top = ax.secondary_xaxis("top")
        top.set_xticks(at, names, fontsize="small", color="0.3")
        top.xaxis.set_minor_locator(NullLocator())
    return drawn


def plot_bops_accuracy(history, ax=None, references=()) -> BopsAccuracyArtists:
    """Relative BOPs (x, log scale; deterministic, §5) against test accuracy, per epoch.

    Uses the epoch records (the ones with ``test_acc``): a line through them in order, points
    coloured by epoch (with a colour bar), the first epoch ringed and the last one boxed.
    ``references`` (see :func:`reference_marks`) adds marks: a :class:`Reference` without
    accuracy is a vertical line named on the top axis (a uniform w8a8 network costs 6.25%
    whatever its accuracy), one with accuracy a red star (the paper's result). A legend, placed
    where it hides the fewest points, names the ring, the box and the stars.
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
    _plain_numbers(ax.figure.colorbar(points, ax=ax, label="epoch").ax)
    ends = []
    if len(bops):
        marks = [(0, "o", "start"), (len(bops) - 1, "s", "end")] if len(bops) > 1 else [
            (0, "o", "epoch")]
        for i, marker, word in marks:
            ring, = ax.plot(bops[i:i + 1], acc[i:i + 1], marker=marker, markersize=11,
                            markerfacecolor="none", markeredgecolor="k", markeredgewidth=1.3,
                            linestyle="none", zorder=3, label=f"{word} (epoch {epoch[i]:g})")
            ends.append(ring)
    _log_bops_axis(ax)                   # decides log or linear from the run's own points
    drawn = _draw_references(ax, references)
    handles = ends + [a for a in drawn if not isinstance(a, Line2D)]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small")
    _accuracy_axis(ax)
    ax.set_title("BOPs and test accuracy, epoch by epoch")
    return BopsAccuracyArtists(line, points, ends, drawn)


def plot_kept_channels(history, ax=None) -> list:
    """Fraction of output channels kept (test-time z2 = 1, §3.4) per pruned layer.

    One Line2D per weight quantizer with pruning gates, in its layer's colour; a model without
    them gets a note and [].
    """
    from matplotlib.ticker import PercentFormatter
    records = _check_history(history)
    ax = _new_ax(ax)
    colors = _layer_colors(_layers(records[0]["quantizers"]))
    pruned = [n for n, q in records[0]["quantizers"].items() if q.get("channels") is not None]
    epoch = _scalar(records, "epoch")
    lines = []
    for name in pruned:
        kept = _column(records, name, "kept") / _column(records, name, "channels")
        layer = _split_name(name)[0]
        channels = int(records[-1]["quantizers"][name]["channels"])
        line, = ax.plot(epoch, kept, color=colors[layer], linewidth=1.8, drawstyle="steps-post",
                        label=f"{layer} ({channels} channels)")
        lines.append(line)
    if lines:
        ax.legend(fontsize="small", loc="lower left")
    else:
        ax.text(0.5, 0.5, "no pruning gates in this model", transform=ax.transAxes,
                ha="center", va="center")
    ax.set_ylim(0.0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    _plain_numbers(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("output channels kept (z2 = 1 at test time)")
    ax.set_title("Kept channels per layer")
    return lines


def plot_training_curves(history, ax=None) -> list:
    """Cross-entropy (left axis) and the regularizer (right axis, §4.3) over training.

    Uses the step records (per-batch values, drawn thin and pale) with the epoch means of the
    cross-entropy on top (the epoch records); a history without step records draws the epoch
    records alone. Returns ``[ce_line, reg_line, ce_epoch_line]`` (the last is None without
    step records); ``reg_line`` lives on ``ax.twinx()`` because the regularizer is on another
    scale. A y axis is logarithmic when its values are positive and span more than a factor 20
    (a late cross-entropy of 1e-4 is then visible).
    """
    records = _check_history(history)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    shown = steps or records
    epoch = _scalar(shown, "epoch")
    ax = _new_ax(ax)
    ce, reg = _scalar(shown, "ce"), _scalar(shown, "reg")
    ce_line, = ax.plot(epoch, ce, color="C0", linewidth=0.8, alpha=0.45 if steps else 1.0,
                       label="cross-entropy per batch (left)" if steps
                       else "cross-entropy (left)")
    ce_epoch_line = None
    if steps and epochs:
        ce_epoch_line, = ax.plot(_scalar(epochs, "epoch"), _scalar(epochs, "ce"), color="C0",
                                 linewidth=2.0, marker="o", markersize=3,
                                 label="cross-entropy, epoch mean (left)")
    reg_ax = ax.twinx()
    reg_line, = reg_ax.plot(epoch, reg, color="C3", linewidth=1.6, label="regularizer (right)")
    for a, values in ((ax, ce), (reg_ax, reg)):
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0 and finite.max() > 20 * finite.min():
            a.set_yscale("log")
        _plain_numbers(a)
    ax.legend(handles=[h for h in (ce_line, ce_epoch_line, reg_line) if h is not None],
              fontsize="small", loc="lower left")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy" + (" (log scale)" if ax.get_yscale() == "log" else ""),
                  color="C0")
    reg_ax.set_ylabel("regularizer, before μ" + (" (log scale)" if reg_ax.get_yscale() == "log"
                                                 else ""), color="C3")
    ax.set_title("Training losses" + ("" if steps else " (epoch means)"))
    return [ce_line, reg_line, ce_epoch_line]


# ----------------------------------------------------------------------------- a trained model
def _layer_costs(layers) -> list:
    """LayerCost list from a ModelReadout, a summary dict or a list of LayerCost / dicts."""
    if hasattr(layers, "layers") and not isinstance(layers, dict):
        layers = layers.layers                          # a ModelReadout
    elif isinstance(layers, dict):
        if "layers" not in layers:
            raise ValueError(f"a summary must have 'layers' (as summary.json of a run, or "
                             f"ModelReadout.to_dict()); got keys {sorted(layers)}")
        layers = layers["layers"]
    costs = []
    for i, layer in enumerate(layers):
        if isinstance(layer, LayerCost):
            costs.append(layer)
        elif isinstance(layer, dict):
            fields = ("name", "macs", "w_bits", "a_bits", "keep_out", "keep_in")
            missing = [f for f in fields[:4] if f not in layer]
            if missing:
                raise ValueError(f"layer {i} has no {missing}; expected the 'layers' rows of a "
                                 "summary.json (name, macs, w_bits, a_bits, keep_out, keep_in)")
            costs.append(LayerCost(**{f: layer[f] for f in fields if f in layer}))
        else:
            raise TypeError(f"layer {i} is a {type(layer).__name__}; expected a LayerCost or "
                            "a dict from summary.json")
    if not costs:
        raise ValueError("no layers to plot: give a ModelReadout, a summary.json dict or a list "
                         "of LayerCost")
    return costs


def plot_layer_bops(layers, ax=None) -> LayerBopsArtists:
    """Each layer's share (%) of the model's BOPs, beside its share of the 32/32 baseline (§5).

    ``layers``: a :class:`~bbits_ref.method.readout.ModelReadout`, a run's summary.json dict or
    a list of :class:`~bbits_ref.method.bops.LayerCost`. The baseline share is the layer's share
    of the MACs (32·32 bits everywhere); the learned share shows where the BOPs went. Under each
    layer: its test-time weight/activation bits and the fraction of its MACs kept.
    """
    costs = _layer_costs(layers)
    ax = _new_ax(ax)
    colors = _layer_colors([c.name for c in costs])
    bops = np.array([c.bops for c in costs], dtype=np.float64)
    base = np.array([c.baseline_bops for c in costs], dtype=np.float64)
    total = bops.sum()
    share = 100 * bops / total if total > 0 else np.zeros_like(bops)
    base_share = 100 * base / base.sum() if base.sum() > 0 else np.zeros_like(base)
    at = np.arange(len(costs))
    baseline = ax.bar(at - 0.2, base_share, width=0.4, color="0.8", edgecolor="0.5",
                      hatch="//", label="32/32 baseline")
    learned = ax.bar(at + 0.2, share, width=0.4, color=[colors[c.name] for c in costs],
                     edgecolor="k", linewidth=0.6, label="learned")
    labels = ax.bar_label(baseline, fmt="%.1f%%", fontsize="x-small", padding=2, color="0.35")
    labels += ax.bar_label(learned, fmt="%.1f%%", fontsize="x-small", padding=2)
    ax.set_xticks(at, [f"{c.name}\nw{c.w_bits:g} a{c.a_bits:g}\nkeep {100 * c.keep:.0f}%"
                       for c in costs], fontsize="small")
    top = max(share.max(), base_share.max())
    ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)
    _plain_numbers(ax)
    ax.set_ylabel("share of the model's BOPs (%)")
    ax.legend(handles=[Line2D([], [], color="0.8", marker="s", markersize=9, linestyle="none",
                              markeredgecolor="0.5", label="32/32 baseline"),
                       Line2D([], [], color="0.35", marker="s", markersize=9, linestyle="none",
                              markeredgecolor="k", label="learned (layer colour)")],
              fontsize="small", loc="upper left")
    if total > 0:
        ax.set_title(f"Where the BOPs go: {relative_bops(costs):.3g}% of the 32/32 BOPs in total")
    else:
        ax.set_title("Where the BOPs go")
        ax.text(0.5, 0.5, "0 BOPs: every channel pruned", transform=ax.transAxes,
                ha="center", va="center")
    return LayerBopsArtists(learned, baseline, list(labels))


def plot_bit_distribution(bit_probs, ax=None, label=None, color=None):
    """The point masses P(bit width = b), b ∈ {0, 2, 4, 8, 16, 32}, as stems (0 = pruned).

    ``bit_probs``: a dict {b: P(b)} (``QuantizerReadout.bit_probs``) or the 6 probabilities in
    that order. The bit widths are categories (evenly spaced). Returns the StemContainer.
    """
    if isinstance(bit_probs, dict):
        unknown = sorted(set(bit_probs) - set(BIT_CHOICES))
        if unknown:
            raise ValueError(f"bit widths must be among {BIT_CHOICES}; got {unknown}")
        probs = np.array([bit_probs.get(b, 0.0) for b in BIT_CHOICES], dtype=np.float64)
    else:
        probs = np.asarray(bit_probs, dtype=np.float64)
        if probs.shape != (len(BIT_CHOICES),):
            raise ValueError(f"expected {len(BIT_CHOICES)} probabilities for the bit widths "
                             f"{BIT_CHOICES}; got shape {probs.shape}")
    if not (np.isfinite(probs).all() and (probs >= 0).all() and abs(probs.sum() - 1) < 1e-6):
        raise ValueError(f"P(bit width) must be ≥ 0 and sum to 1; got {probs.round(6).tolist()} "
                         f"(sum {probs.sum():.6g})")
    ax = _new_ax(ax)
    stems = ax.stem(np.arange(len(BIT_CHOICES)), probs, linefmt="-", markerfmt="o",
                    basefmt=" ", label=label)
    if color is not None:
        for artist in (stems.markerline, stems.stemlines):
            artist.set_color(color)
    ax.set_xticks(np.arange(len(BIT_CHOICES)), ["0\n(pruned)"] + [str(b) for b in BIT_CHOICES[1:]])
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.5, len(BIT_CHOICES) - 0.5)
    _plain_numbers(ax)
    ax.set_xlabel("bit width b")
    ax.set_ylabel("P(bit width = b)")
    ax.set_title("Distribution of the bit width under q")
    return stems


# ----------------------------------------------------------------------------- sweep figures
def _point_arrays(points, what):
    """(relative_bops, test_accuracy) float arrays of sweep points, checked."""
    return point_arrays(points, what)


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
    _accuracy_axis(ax)
    ax.set_title("Accuracy against BOPs")
    ax.legend(fontsize="x-small", loc="lower right")
    return ParetoArtists(front_line, scatter, marked)


# ----------------------------------------------------------------------------- saving
_RUN_FIGURES = ("gate_probabilities.png", "bit_widths.png", "bops_accuracy.png",
                "kept_channels.png", "training_curves.png")
#: Written by :func:`save_run_figures` only when it is given the run's summary.
LAYER_BOPS_FIGURE = "layer_bops.png"


def _bare_figure(figsize=_FIGSIZE):
    # A bare Figure (no pyplot): nothing to close, no GUI backend, safe in headless training.
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout="constrained")


def _figure():
    """A bare Figure and its one Axes."""
    fig = _bare_figure()
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


def _summary_gate(summary):
    """(gate kind, hard cut on?) from summary['config'] (defaults: hard concrete, cut on)."""
    config = summary.get("config") if isinstance(summary, dict) else None
    config = config if isinstance(config, dict) else {}
    kind = config.get("gate") or "hard_concrete"
    return kind, bool(config.get("hard_cut", True))


def save_run_figures(history, out_dir, dpi=100, summary=None) -> list:
    """Write gate_probabilities.png, bit_widths.png, bops_accuracy.png, kept_channels.png and
    training_curves.png into ``out_dir``; returns their paths.

    With the run's ``summary`` (summary.json as a dict) the BOP–accuracy plot gets its reference
    marks (:func:`reference_marks` from the summary's layer MACs, model and dataset), the gate
    levels follow its ``config`` (gate kind, hard cut), and layer_bops.png
    (:func:`plot_layer_bops`) is written too. Every figure is drawn before any file is written,
    so bad input writes nothing.
    """
    records = _check_history(history)
    if summary is not None and not isinstance(summary, dict):
        raise TypeError(f"summary must be the dict of a run's summary.json, got "
                        f"{type(summary).__name__}")
    gate, hard_cut = _summary_gate(summary)
    names = list(records[0]["quantizers"])
    figures = {}
    fig = _bare_figure(_panel_figsize(names))
    plot_gate_probabilities(records, fig=fig, gate=gate, hard_cut=hard_cut)
    figures["gate_probabilities.png"] = fig
    fig = _bare_figure(_panel_figsize(names))
    plot_bit_widths(records, fig=fig)
    figures["bit_widths.png"] = fig
    fig = _bare_figure()
    plot_bops_accuracy(records, ax=fig.add_subplot(),
                       references=_references_from_summary(summary) if summary else ())
    figures["bops_accuracy.png"] = fig
    for fname, plot in (("kept_channels.png", plot_kept_channels),
                        ("training_curves.png", plot_training_curves)):
        fig = _bare_figure()
        plot(records, ax=fig.add_subplot())
        figures[fname] = fig
    if summary is not None and summary.get("layers"):
        fig = _bare_figure((max(6.0, 1.3 * len(summary["layers"]) + 1.5), 4.0))
        plot_layer_bops(summary, ax=fig.add_subplot())
        figures[LAYER_BOPS_FIGURE] = fig
    return _write_figures(figures, out_dir, dpi)


def save_sweep_figures(points, baselines, out_dir, dpi=100) -> list:
    """Write pareto.png (see :func:`plot_pareto`) into ``out_dir``; returns ``[path]``."""
    fig = _bare_figure()
    plot_pareto(points, baselines, ax=fig.add_subplot())
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
    return save_figure(fig, path, dpi)


def save_figure(fig, path, dpi=100) -> Path:
    """Write the Figure ``fig`` to the PNG ``path``, atomically; returns the path."""
    path = Path(path)
    return _write_figures({path.name: fig}, path.parent, dpi)[0]


# ----------------------------------------------------------------------------- the rebuttal's figures
class GateTraceArtists(NamedTuple):
    axes: list            # [parent probability, gate probability, gradients]
    parent: list          # per trace: the parent gate's probability line
    gate: list            # per trace: the gate's probability line
    prior: list           # per trace: the prior's part of the gradient
    data: list            # per trace: the data's part of the gradient


def plot_gate_trace(traces: dict, quantizer=None, gate: str = "z8", fig=None) -> GateTraceArtists:
    """A chain gate under different priors, from gate traces (:mod:`bbits_ref.training.gate_trace`).

    ``traces`` maps a label (e.g. "autoregressive", "independent") to a trace of
    :func:`~bbits_ref.training.gate_trace.load_trace`; ``quantizer`` (default: the one whose
    parent switches off, in every trace, while the gate is the most on,
    :func:`~bbits_ref.training.gate_trace.overregularization_example`) and ``gate`` pick the
    gate.  Three panels over the epochs: the parent's probability q(z_{b/2} = 1 | on), the
    gate's q(z_b = 1 | z_{b/2} = 1), and the two parts of ∂loss/∂φ_b the optimiser received —
    the prior's (solid) and the data's (dotted); positive values push the gate off.  A dashed
    vertical line marks, per trace, the first record with the parent's probability below 0.5.
    """
    from bbits_ref.training.gate_trace import overregularization_example
    if not isinstance(traces, dict) or not traces:
        raise ValueError("traces must map a label to a gate trace (load_trace) — at least one")
    if gate not in ("z8", "z16", "z32"):
        raise ValueError(f"gate must be z8, z16 or z32 (a gate with a parent); got {gate!r}")
    col = ("z4", "z8", "z16", "z32").index(gate)
    name = (overregularization_example(traces, gate)["quantizer"] if quantizer is None
            else quantizer)
    bits = GATE_BITS[col]
    fig = _new_fig(fig, (7.0, 6.4))
    axes = fig.subplots(3, 1, sharex=True)
    artists = GateTraceArtists(list(axes), [], [], [], [])
    for i, (label, trace) in enumerate(traces.items()):
        if name not in trace["quantizers"]:
            raise ValueError(f"trace {label!r} has no quantizer {name!r}; it has "
                             f"{', '.join(trace['quantizers'])}")
        q = trace["quantizers"].index(name)
        epoch = np.asarray(trace["epoch"])
        color = f"C{i}"
        probs = np.asarray(trace["probs"])[:, q]
        artists.parent.append(axes[0].plot(epoch, probs[:, col - 1], color=color,
                                           label=label)[0])
        artists.gate.append(axes[1].plot(epoch, probs[:, col], color=color, label=label)[0])
        artists.prior.append(axes[2].plot(epoch, np.asarray(trace["grad_prior"])[:, q, col],
                                          color=color, linewidth=1.8,
                                          label=f"{label}: prior")[0])
        artists.data.append(axes[2].plot(epoch, np.asarray(trace["grad_data"])[:, q, col],
                                         color=color, linestyle=":", linewidth=1.0,
                                         label=f"{label}: data")[0])
        off = np.flatnonzero(probs[:, col - 1] < 0.5)
        if off.size:                                  # the parent switches off here
            for ax in axes:
                ax.axvline(epoch[off[0]], color=color, linestyle="--", linewidth=0.8, alpha=0.7)
    parent = GATE_BITS[col - 1]
    axes[0].set_ylabel(f"q(z{parent} = 1 | on)")
    axes[1].set_ylabel(f"q(z{bits} = 1 | z{parent} = 1)")
    for ax in axes[:2]:
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize="x-small", loc="lower left")
    axes[2].axhline(0.0, color="0.6", linewidth=0.8)
    axes[2].set_ylabel(f"∂loss/∂φ{bits}\n(> 0 pushes z{bits} off)")
    axes[2].legend(fontsize="x-small", loc="upper right", ncol=2)
    axes[2].set_xlabel("epoch")
    _plain_numbers(axes[2])
    fig.suptitle(f"{_short_name(name)}: gate z{bits} when its parent z{parent} switches off")
    return artists


def plot_bit_evolution(histories: dict, fig=None) -> list:
    """E_q[bit width] per quantizer over training, one panel per run, on a shared log2 axis.

    ``histories`` maps a label (e.g. "μ = 0.01", "μ = 1") to a run's history.  Each panel holds
    every quantizer in its layer's colour (weights dark, activations light), as
    :func:`plot_bit_widths` draws them on one Axes.  Returns the :class:`BitWidthArtists` of each
    panel.
    """
    if not isinstance(histories, dict) or not histories:
        raise ValueError("histories must map a label to a run history (at least one run)")
    fig = _new_fig(fig, (5.2 * len(histories), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(histories), sharey=True))
    out = []
    for ax, (label, history) in zip(axes, histories.items()):
        out.append(plot_bit_widths(history, ax=ax))
        ax.set_title(label)
        if ax is not axes[-1]:
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
    fig.suptitle("Bit width per quantizer over training: test time (steps), expected (dashed)")
    return out


class ParetoGroupArtists(NamedTuple):
    front: Line2D | None  # the Pareto front through the Bayesian Bits means (step line)
    sweep: object         # ErrorbarContainer of the Bayesian Bits means (None: none)
    baselines: list       # one ErrorbarContainer per baseline


def plot_pareto_groups(groups, ax=None) -> ParetoGroupArtists:
    """A sweep over μ and seeds: each μ and each baseline at its mean over seeds, ± one standard
    deviation in both directions (no bar with a single seed), and the Pareto front of the
    Bayesian Bits means.

    ``groups`` is the ``"groups"`` list of :func:`~bbits_ref.training.experiments.sweep_table`
    (keys ``label``, ``kind``, ``n``, ``relative_bops_mean``/``_std``,
    ``test_accuracy_mean``/``_std``); groups without a finished run are skipped.
    """
    groups = [g for g in groups if isinstance(g, dict) and g.get("n")]
    if not groups:
        raise ValueError("nothing to plot: no group of the sweep table has a finished run")
    ax = _new_ax(ax)

    def arrays(items):
        means = [{"relative_bops": g["relative_bops_mean"], "test_accuracy": g["test_accuracy_mean"],
                  "label": g["label"]} for g in items]
        x, y = _point_arrays(means, "groups")
        xerr = np.array([g.get("relative_bops_std") or 0.0 for g in items])
        yerr = np.array([g.get("test_accuracy_std") or 0.0 for g in items])
        return means, x, y, xerr, yerr

    sweep = front_line = None
    bb = [g for g in groups if g["kind"] == "bb"]
    if bb:
        means, x, y, xerr, yerr = arrays(bb)
        n = max(g["n"] for g in bb)
        sweep = ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color="C0", capsize=2,
                            label=f"Bayesian Bits, mean ± std over {n} seeds", zorder=3)
        front = pareto_front(means)
        fx, fy = _point_arrays(front, "front")
        front_line, = ax.plot(fx, fy, drawstyle="steps-post", color="C0", linewidth=1.2,
                              label="Pareto front of the means", zorder=2)
        for m, xi, yi in zip(means, x, y):
            ax.annotate(m["label"], (xi, yi), xytext=(4, -11), textcoords="offset points",
                        fontsize="x-small")
    marked = []
    markers = "s^DvPX*<>"
    for k, g in enumerate(g for g in groups if g["kind"] != "bb"):
        _, x, y, xerr, yerr = arrays([g])
        marked.append(ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers[k % len(markers)],
                                  color=f"C{1 + k % 9}", capsize=2, label=g["label"], zorder=4))
    _log_bops_axis(ax)
    _accuracy_axis(ax)
    ax.set_title("Accuracy against BOPs, mean ± std over seeds")
    ax.legend(fontsize="x-small", loc="lower right")
    return ParetoGroupArtists(front_line, sweep, marked)


class SeedRunArtists(NamedTuple):
    runs: list            # per gate label, the PathCollection of its single runs
    means: list           # per gate label, the ErrorbarContainer of its mean ± std
    references: list      # the published points (Line2D markers)


def plot_seed_runs(table, references=REBUTTAL_RESULTS, ax=None) -> SeedRunArtists:
    """Runs of one recipe that differ in their gates and seeds: every run as a small point, each
    gate label at its mean ± one standard deviation, and the published points for comparison.

    ``table`` is a :func:`~bbits_ref.training.experiments.sweep_table` (its ``"runs"`` and
    ``"groups"``), e.g. :func:`bbits_ref.course.runs.seed_runs_table`; ``references`` are
    (label, relative BOPs in %, test accuracy) triples.
    """
    groups = [g for g in table.get("groups", []) if isinstance(g, dict) and g.get("n")]
    if not groups:
        raise ValueError("nothing to plot: no group of the table has a finished run")
    ax = _new_ax(ax)
    runs, means = [], []
    for k, g in enumerate(groups):
        done = [r for r in table.get("runs", []) if r.get("label") == g["label"]
                and r.get("status") == "done"]
        x, y = _point_arrays(done, g["label"])
        color = f"C{k % 10}"
        runs.append(ax.scatter(x, 100 * y, s=14, color=color, alpha=0.5, zorder=3))
        std = " ± std" if g.get("test_accuracy_std") is not None else ""
        means.append(ax.errorbar(
            [g["relative_bops_mean"]], [100 * g["test_accuracy_mean"]],
            xerr=[g.get("relative_bops_std") or 0.0],
            yerr=[100 * (g.get("test_accuracy_std") or 0.0)], fmt="o", color=color, capsize=3,
            markersize=7, label=f"{g['label']}: mean{std} of {g['n']} seed"
                                + ("s" if g["n"] > 1 else ""), zorder=4))
    marks = []
    for k, (label, bops, acc) in enumerate(references):
        line, = ax.plot([bops], [100 * acc], marker="**P"[k % 3], markersize=11, linestyle="",
                        color="k" if k == 0 else "0.45", label=label, zorder=5)
        marks.append(line)
    ax.set_xlabel("relative BOPs (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title("Same recipe, different gates: runs, mean ± std, published points")
    ax.legend(fontsize="x-small", loc="best")
    return SeedRunArtists(runs, means, marks)

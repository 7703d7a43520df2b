"""Tests for bbits_ref.plotting: the artists carry the history's numbers, errors are clear,
and the figures stay readable (threshold lines, step lines, reference marks, colours, no
offset notation)."""
import json
import struct
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bbits_ref import plotting  # noqa: E402
from bbits_ref.method import bops  # noqa: E402
from bbits_ref.method.gates import GumbelSoftmax, HardConcrete  # noqa: E402

W1, A1, W2 = "conv1.weight_quantizer", "conv1.act_quantizer", "fc1.weight_quantizer"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]
LENET_MACS = [m for _, m in bops.lenet5_layer_macs()]


def make_history(epochs=3, steps_per_epoch=2, seed=0):
    """A synthetic history: conv1's weights are pruned (8 channels), the other two are not."""
    rng = np.random.default_rng(seed)
    history, step = [], 0
    for e in range(epochs):
        for s in range(steps_per_epoch + 1):          # the last record of each epoch is "epoch"
            kind = "epoch" if s == steps_per_epoch else "step"
            step += kind == "step"
            epoch = e + 1 if kind == "epoch" else e + (s + 1) / steps_per_epoch
            rec = {"kind": kind, "step": step, "epoch": epoch,
                   "ce": float(rng.uniform(0.1, 2.0)), "reg": float(rng.uniform(10, 100)),
                   "train_acc": float(rng.uniform(0.5, 1.0)),
                   "relative_bops": float(rng.uniform(0.2, 5.0)),
                   "expected_relative_bops": float(rng.uniform(0.2, 5.0)), "quantizers": {}}
            if kind == "epoch":
                rec["test_acc"] = float(rng.uniform(0.8, 1.0))
            for name in (W1, A1, W2):
                pruned = name == W1
                rec["quantizers"][name] = {
                    "chain_probs": rng.uniform(0.01, 1, 4).round(6).tolist(),
                    "prune_prob_mean": float(rng.uniform(0.3, 1)) if pruned else None,
                    "expected_bits": float(rng.uniform(1.0, 32.0)),
                    "bits": int(rng.choice([2, 4, 8, 16, 32])),
                    "kept": int(rng.integers(1, 9)) if pruned else None,
                    "channels": 8 if pruned else None}
            history.append(rec)
    return history


def q_column(history, name, field):
    return np.array([r["quantizers"][name][field] for r in history], dtype=float)


def summary_for(layers=None, model="lenet5", dataset="mnist", gate="hard_concrete"):
    """A summary.json-like dict (as the trainer writes it)."""
    layers = layers or [
        {"name": "conv1", "macs": 460800, "w_bits": 4.0, "a_bits": 8.0, "keep_out": 1.0,
         "keep_in": 1.0},
        {"name": "conv2", "macs": 3276800, "w_bits": 2.0, "a_bits": 2.0, "keep_out": 0.875,
         "keep_in": 1.0},
        {"name": "fc1", "macs": 524288, "w_bits": 2.0, "a_bits": 2.0, "keep_out": 0.8,
         "keep_in": 0.875},
        {"name": "fc2", "macs": 5120, "w_bits": 8.0, "a_bits": 4.0, "keep_out": 1.0,
         "keep_in": 0.8}]
    return {"model": model, "dataset": dataset, "layers": layers,
            "config": {"gate": gate, "hard_cut": True}}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def history():
    return make_history()


def offset_texts(fig):
    """The offset / ×10^k texts of every axis of ``fig`` after drawing it."""
    fig.draw_without_rendering()          # tick labels and offsets are set at draw time
    return [axis.get_offset_text().get_text() for ax in fig.axes
            for axis in (ax.xaxis, ax.yaxis)]


# ------------------------------------------------------------------ gate probabilities
def test_gate_panels_one_per_quantizer_weights_above_activations(history):
    art = plotting.plot_gate_probabilities(history)
    assert set(art.panels) == {W1, A1, W2}
    assert len({id(ax) for ax in art.panels.values()}) == 3          # one Axes each
    rows = {n: ax.get_subplotspec().rowspan.start for n, ax in art.panels.items()}
    cols = {n: ax.get_subplotspec().colspan.start for n, ax in art.panels.items()}
    assert cols[W1] == cols[A1] != cols[W2]                           # a column per layer
    assert rows[W1] == rows[W2] < rows[A1]                            # weights on top
    epochs = [r["epoch"] for r in history]
    by_label = {line.get_label(): line for line in art.lines}
    assert len(art.lines) == 3 * 4 + 1                                # gates + conv1's z2
    for line in art.lines:
        np.testing.assert_array_equal(line.get_xdata(), epochs)
    pi16 = np.array([r["quantizers"][A1]["chain_probs"][2] for r in history])
    line = by_label[f"{A1}: q(z16≠0 | z8=1)"]
    np.testing.assert_array_equal(line.get_ydata(), pi16)
    assert line.axes is art.panels[A1]
    np.testing.assert_array_equal(by_label[f"{W1}: mean P(z2≠0)"].get_ydata(),
                                  q_column(history, W1, "prune_prob_mean"))
    # In the panels, colour names the gate: the same gate has the same colour everywhere.
    assert (by_label[f"{W1}: q(z8≠0 | z4=1)"].get_color()
            == by_label[f"{W2}: q(z8≠0 | z4=1)"].get_color()
            != by_label[f"{W2}: q(z4≠0 | z2=1)"].get_color())
    for ax in art.panels.values():
        assert ax.get_title()                                        # which quantizer


@pytest.mark.parametrize("gate, on, cut", [("hard_concrete", 0.66, 0.4010),
                                           ("gumbel_softmax", 0.5, 0.4010)])
def test_threshold_and_hard_cut_lines_at_the_gate_levels(history, gate, on, cut):
    art = plotting.plot_gate_probabilities(history, gate=gate)
    assert len(art.thresholds) == 2 * len(art.panels)
    for ax in art.panels.values():
        level = {line.get_label(): line.get_ydata()[0] for line in ax.lines
                 if line in art.thresholds}
        assert level["test-time threshold"] == pytest.approx(on, abs=1e-4)
        assert level["hard cut"] == pytest.approx(cut, abs=1e-4)
    # The levels are the gate's own: P(z = 0) = 0.34 at the threshold, φ = −2 at the cut.
    hc = HardConcrete()
    assert plotting.gate_levels(hc) == pytest.approx(
        (1 - hc.threshold, float(hc.prob_nonzero(np.float64(-2.0)).data)))
    assert plotting.gate_levels(GumbelSoftmax())[0] == pytest.approx(0.5)
    without = plotting.plot_gate_probabilities(history, hard_cut=False)
    assert [line.get_label() for line in without.thresholds] == ["test-time threshold"] * 3


def test_hard_cut_is_marked_where_a_gate_drops_to_zero(history):
    # π8 of fc1 falls to the cut level and then reads 0 (cut), π16/π32 with it.
    drop = 4
    for i, rec in enumerate(history):
        pis = rec["quantizers"][W2]["chain_probs"]
        pis[1] = 0.9 - 0.12 * i if i < drop else 0.0
        if i >= drop:
            pis[2] = pis[3] = 0.0
    art = plotting.plot_gate_probabilities(history, quantizers=[W2])
    epochs = np.array([r["epoch"] for r in history])
    marks = {c.get_label(): c.get_offsets() for c in art.cuts}
    np.testing.assert_allclose(marks[f"{W2}: π8 cut"], [[epochs[drop], 0.9 - 0.12 * (drop - 1)]])
    assert f"{W2}: π16 cut" in marks and f"{W2}: π4 cut" not in marks
    assert all(c.axes is art.panels[W2] for c in art.cuts)


def test_gates_cut_from_the_start_are_named_not_drawn(history):
    for rec in history:
        rec["quantizers"][A1]["chain_probs"][2:] = [0.0, 0.0]
    art = plotting.plot_gate_probabilities(history)
    labels = [line.get_label() for line in art.lines]
    assert f"{A1}: q(z16≠0 | z8=1)" not in labels and f"{A1}: q(z32≠0 | z16=1)" not in labels
    assert f"{W1}: q(z16≠0 | z8=1)" in labels
    notes = [t.get_text() for t in art.panels[A1].texts]
    assert any("π16, π32" in t and "cut" in t for t in notes)


def test_gate_probabilities_on_one_axes(history):
    _fig, ax = plt.subplots()
    art = plotting.plot_gate_probabilities(history, ax=ax, include_prune=False)
    assert len(art.lines) == 12 and all(line.axes is ax for line in art.lines)
    assert set(art.panels.values()) == {ax}
    by_label = {line.get_label(): line for line in art.lines}
    colors = {n: to_hex(by_label[f"{n}: q(z4≠0 | z2=1)"].get_color()) for n in (W1, A1, W2)}
    assert len(set(colors.values())) == 3                   # no two quantizers look alike
    art = plotting.plot_gate_probabilities(history, ax=ax, quantizers=[W2], gates=(8, 32))
    assert [line.get_label() for line in art.lines] == [f"{W2}: q(z8≠0 | z4=1)",
                                                         f"{W2}: q(z32≠0 | z16=1)"]
    np.testing.assert_array_equal(art.lines[1].get_ydata(),
                                  [r["quantizers"][W2]["chain_probs"][3] for r in history])


def test_gate_probabilities_bad_arguments(history):
    with pytest.raises(ValueError, match="subset"):
        plotting.plot_gate_probabilities(history, gates=(2, 4))
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="not both"):
        plotting.plot_gate_probabilities(history, ax=ax, fig=fig)
    with pytest.raises(ValueError, match="unknown gate kind"):
        plotting.plot_gate_probabilities(history, gate="hard_sigmoid")


# ------------------------------------------------------------------ bit widths
def test_bit_widths_step_beside_expected(history):
    art = plotting.plot_bit_widths(history)
    assert len(art.steps) == len(art.expected) == 3
    for step, dashed, name in zip(art.steps, art.expected, (W1, A1, W2)):
        assert step.get_drawstyle() == "steps-post"
        np.testing.assert_array_equal(step.get_ydata(), q_column(history, name, "bits"))
        assert dashed.get_linestyle() == "--" and dashed.get_drawstyle() == "default"
        np.testing.assert_array_equal(dashed.get_ydata(), q_column(history, name, "expected_bits"))
        assert step.axes is dashed.axes is art.panels[name]
        assert step.get_color() == dashed.get_color()
    ax = art.panels[W1]
    assert ax.get_yscale() == "log" and ax.yaxis.get_transform().base == 2
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    assert {t: ticks[t] for t in (2, 4, 8, 16, 32)} == {2: "2", 4: "4", 8: "8", 16: "16",
                                                        32: "32"}


def test_bit_widths_one_colour_per_layer(history):
    art = plotting.plot_bit_widths(history)
    color = {n: to_hex(line.get_color()) for n, line in zip((W1, A1, W2), art.steps)}
    assert color[W1] == color[A1] != color[W2]          # conv1's two quantizers, fc1's
    # On one Axes the activations take the light shade of their layer's hue.
    _fig, ax = plt.subplots()
    single = plotting.plot_bit_widths(history, ax=ax)
    assert len({to_hex(line.get_color()) for line in single.steps}) == 3


def test_bit_widths_zero_bits_are_nan_not_on_the_log_axis(history):
    history[2]["quantizers"][W1]["expected_bits"] = 0.0
    history[3]["quantizers"][W1]["bits"] = 0
    art = plotting.plot_bit_widths(history, quantizers=W1)
    y = np.asarray(art.expected[0].get_ydata())
    assert np.isnan(y[2]) and np.isfinite(np.delete(y, 2)).all()
    assert np.isnan(art.steps[0].get_ydata()[3])


# ------------------------------------------------------------------ BOPs vs accuracy
def test_bops_accuracy_uses_epoch_records(history):
    art = plotting.plot_bops_accuracy(history)
    epochs = [r for r in history if r["kind"] == "epoch"]
    x = [r["relative_bops"] for r in epochs]
    acc = [r["test_acc"] for r in epochs]
    np.testing.assert_array_equal(art.line.get_xdata(), x)
    np.testing.assert_array_equal(art.line.get_ydata(), acc)
    np.testing.assert_array_equal(art.points.get_offsets(), np.column_stack([x, acc]))
    np.testing.assert_array_equal(art.points.get_array(), [1, 2, 3])   # coloured by epoch
    assert art.line.axes.get_xscale() == "log"
    assert [a.get_label() for a in art.ends] == ["start (epoch 1)", "end (epoch 3)"]
    assert (art.ends[1].get_xdata()[0], art.ends[1].get_ydata()[0]) == (x[-1], acc[-1])
    assert list(art.references) == []


def test_bops_accuracy_reference_marks(history):
    marks = plotting.reference_marks(LENET_MACS, "lenet5", "mnist")
    art = plotting.plot_bops_accuracy(history, references=marks)
    lines = [a for a in art.references if hasattr(a, "get_xdata")]
    w8a8, w2a2 = (bops.uniform_relative_bops(LENET_MACS, b, b) for b in (8, 2))
    assert [line.get_xdata()[0] for line in lines] == [w8a8, w2a2]
    assert (w8a8, round(w2a2, 3)) == (6.25, 0.517)
    ax = art.line.axes
    top = [t.get_text() for a in ax.child_axes for t in a.get_xticklabels()]
    assert any("w8a8" in t and "6.25%" in t for t in top) and any("w2a2" in t for t in top)
    (paper,) = [a for a in art.references if not hasattr(a, "get_xdata")]
    np.testing.assert_allclose(paper.get_offsets(), [[0.36, 0.9930]])
    assert "paper" in paper.get_label()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert paper.get_label() in legend and "start (epoch 1)" in legend
    # VGG-7 gets its own uniform BOPs; a model without a published result gets only the lines.
    vgg = [m for _, m in bops.vgg7_layer_macs()]
    assert plotting.reference_marks(vgg)[1].relative_bops == pytest.approx(
        bops.uniform_relative_bops(vgg, 2, 2))
    assert all(r.test_accuracy is None for r in plotting.reference_marks(vgg, "vgg7", "mnist"))


def test_bops_accuracy_needs_epoch_records(history):
    with pytest.raises(ValueError, match="no epoch records"):
        plotting.plot_bops_accuracy([r for r in history if r["kind"] == "step"])


def test_bops_accuracy_drops_nonpositive_bops_with_warning(history):
    epochs = [r for r in history if r["kind"] == "epoch"]
    epochs[1]["relative_bops"] = 0.0
    with pytest.warns(UserWarning, match="BOPs ≤ 0"):
        art = plotting.plot_bops_accuracy(history)
    np.testing.assert_array_equal(art.line.get_xdata(),
                                  [epochs[0]["relative_bops"], epochs[2]["relative_bops"]])


def test_bad_reference_is_an_error(history):
    with pytest.raises(ValueError, match="relative_bops must be a number"):
        plotting.plot_bops_accuracy(history, references=[("w4a4", "4%")])


# ------------------------------------------------------------------ kept channels, losses
def test_kept_channels_only_pruned_layers(history):
    lines = plotting.plot_kept_channels(history)
    assert [line.get_label() for line in lines] == ["conv1 (8 channels)"]
    np.testing.assert_array_equal(lines[0].get_ydata(), q_column(history, W1, "kept") / 8)
    assert lines[0].get_drawstyle() == "steps-post"      # a test-time count changes in steps


def test_kept_channels_without_pruning_draws_note(history):
    for r in history:
        r["quantizers"][W1].update(kept=None, channels=None, prune_prob_mean=None)
    assert plotting.plot_kept_channels(history) == []
    assert len(plotting.plot_gate_probabilities(history).lines) == 12   # no z2 line either


def test_training_curves_use_step_records(history):
    ce_line, reg_line, ce_epochs = plotting.plot_training_curves(history)
    steps = [r for r in history if r["kind"] == "step"]
    epochs = [r for r in history if r["kind"] == "epoch"]
    np.testing.assert_array_equal(ce_line.get_xdata(), [r["epoch"] for r in steps])
    np.testing.assert_array_equal(ce_line.get_ydata(), [r["ce"] for r in steps])
    np.testing.assert_array_equal(reg_line.get_ydata(), [r["reg"] for r in steps])
    np.testing.assert_array_equal(ce_epochs.get_ydata(), [r["ce"] for r in epochs])
    assert reg_line.axes is not ce_line.axes                 # the regularizer has its own scale
    ce_line, _, none = plotting.plot_training_curves(epochs)
    np.testing.assert_array_equal(ce_line.get_ydata(), [r["ce"] for r in epochs])
    assert none is None


def test_training_curves_log_scale_when_the_loss_spans_decades(history):
    for i, rec in enumerate(history):
        rec["ce"] = 10.0 ** -i
    ce_line, reg_line, _ = plotting.plot_training_curves(history)
    assert ce_line.axes.get_yscale() == "log" and reg_line.axes.get_yscale() == "linear"
    assert "log" in ce_line.axes.get_ylabel()


def test_note_records_are_skipped(history):
    """A learning-rate change at a resume is a kind="note" record with no readout."""
    history.insert(4, {"kind": "note", "event": "lr_change", "epoch": 1, "lr_gates": 0.01})
    art = plotting.plot_bit_widths(history)
    assert len(art.steps[0].get_xdata()) == len(history) - 1


# ------------------------------------------------------------------ ax= and fig= reuse
@pytest.mark.parametrize("plot", [plotting.plot_kept_channels, plotting.plot_training_curves])
def test_draws_on_given_ax(history, plot):
    _fig, ax = plt.subplots()
    n_figs = len(plt.get_fignums())
    first = plot(history, ax=ax)
    assert first[0].axes is ax and first[0] in ax.lines
    second = plot(history, ax=ax)
    assert ax.lines[:] == [line for line in first + second if line is not None and
                           line.axes is ax]                 # appended
    assert len(plt.get_fignums()) == n_figs                 # no new figure was opened


@pytest.mark.parametrize("plot", [plotting.plot_gate_probabilities, plotting.plot_bit_widths])
def test_panel_plots_draw_on_given_fig_or_ax(history, plot):
    n_figs = len(plt.get_fignums())
    fig = Figure()
    art = plot(history, fig=fig)
    assert {ax.figure for ax in art.panels.values()} == {fig}
    fig2, ax = plt.subplots()
    art = plot(history, ax=ax)
    assert set(art.panels.values()) == {ax} and len(fig2.axes) == 1
    assert len(plt.get_fignums()) == n_figs + 1             # only the subplots() above


def test_bops_accuracy_and_pareto_on_given_ax(history):
    _fig, ax = plt.subplots()
    assert plotting.plot_bops_accuracy(history, ax=ax).line.axes is ax
    _fig, ax = plt.subplots()
    assert plotting.plot_pareto(POINTS, ax=ax).front.axes is ax


# ------------------------------------------------------------------ layer BOPs, bit distribution
def test_layer_bops_shares_of_the_total_beside_the_baseline():
    summary = summary_for()
    art = plotting.plot_layer_bops(summary)
    costs = [bops.LayerCost(**layer) for layer in summary["layers"]]
    learned = np.array([c.bops for c in costs])
    base = np.array([c.macs for c in costs], dtype=float)
    heights = [bar.get_height() for bar in art.learned]
    np.testing.assert_allclose(heights, 100 * learned / learned.sum())
    np.testing.assert_allclose([bar.get_height() for bar in art.baseline], 100 * base / base.sum())
    assert sum(heights) == pytest.approx(100)
    assert [t.get_text() for t in art.labels[4:]] == [f"{h:.1f}%" for h in heights]
    colors = [to_hex(bar.get_facecolor()) for bar in art.learned]
    assert len(set(colors)) == 4                             # a colour per layer
    ax = art.learned[0].axes
    assert "conv2\nw2 a2\nkeep 88%" in [t.get_text() for t in ax.get_xticklabels()]
    assert f"{bops.relative_bops(costs):.3g}%" in ax.get_title()
    # A list of LayerCost draws the same bars.
    again = plotting.plot_layer_bops(costs)
    np.testing.assert_allclose([b.get_height() for b in again.learned], heights)


def test_layer_bops_and_bit_distribution_of_a_model_readout():
    from bbits_ref.method.models import lenet5
    from bbits_ref.method.readout import model_readout
    readout = model_readout(lenet5())               # untrained: 8/8 bits everywhere
    art = plotting.plot_layer_bops(readout)
    macs = np.array(LENET_MACS, dtype=float)
    np.testing.assert_allclose([b.get_height() for b in art.learned], 100 * macs / macs.sum())
    q = readout.quantizers[0]
    stems = plotting.plot_bit_distribution(q.bit_probs)
    np.testing.assert_allclose(stems.markerline.get_ydata(), list(q.bit_probs.values()))


def test_layer_bops_everything_pruned_and_bad_input():
    layers = summary_for()["layers"]
    for layer in layers:
        layer["keep_out"] = 0.0
    art = plotting.plot_layer_bops({"layers": layers})
    assert [bar.get_height() for bar in art.learned] == [0.0] * 4
    assert any("every channel pruned" in t.get_text() for t in art.learned[0].axes.texts)
    with pytest.raises(ValueError, match="must have 'layers'"):
        plotting.plot_layer_bops({"model": "lenet5"})
    with pytest.raises(ValueError, match=r"layer 0 has no \['macs'\]"):
        plotting.plot_layer_bops([{"name": "conv1", "w_bits": 2, "a_bits": 2}])


def test_bit_distribution_is_drawn_as_stems():
    probs = {0: 0.1, 2: 0.5, 4: 0.3, 8: 0.1, 16: 0.0, 32: 0.0}
    stems = plotting.plot_bit_distribution(probs)
    np.testing.assert_allclose(stems.markerline.get_ydata(), [0.1, 0.5, 0.3, 0.1, 0, 0])
    np.testing.assert_array_equal(stems.markerline.get_xdata(), np.arange(6))
    assert len(stems.stemlines.get_segments()) == 6
    ax = stems.markerline.axes
    assert ax.get_xlabel() == "bit width b" and ax.get_ylabel() == "P(bit width = b)"
    assert [t.get_text() for t in ax.get_xticklabels()][1:] == ["2", "4", "8", "16", "32"]
    with pytest.raises(ValueError, match="sum to 1"):
        plotting.plot_bit_distribution([0.5, 0.6, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="among"):
        plotting.plot_bit_distribution({3: 1.0})


# ------------------------------------------------------------------ readable axes
def test_no_axis_uses_offset_notation(history):
    """Epochs 1000000…1000003, a regularizer 5000.000…5000.008 would get '+1e6' / '+5e3'
    offsets; accuracies 0.99931…0.99933 and 100.00000…100.00003% BOPs likewise."""
    for i, rec in enumerate(history):
        rec["epoch"] += 1_000_000
        rec["reg"] = 5000.0 + i * 1e-3
        rec["ce"] = 1.0 + i * 1e-4
        for q in rec["quantizers"].values():
            if q["channels"]:
                q["kept"] = 8
        if rec["kind"] == "epoch":
            rec["test_acc"] = 0.99931 + i * 1e-6
            rec["relative_bops"] = 100.0 + i * 1e-5
    figures = []
    for plot in (plotting.plot_gate_probabilities, plotting.plot_bit_widths):
        fig = Figure()
        plot(history, fig=fig)
        figures.append(fig)
    for plot in (plotting.plot_bops_accuracy, plotting.plot_kept_channels,
                 plotting.plot_training_curves):
        fig = Figure()
        plot(history, ax=fig.add_subplot())
        figures.append(fig)
    for fig in figures:
        assert offset_texts(fig) == [""] * (2 * len(fig.axes))


def test_figures_use_constrained_layout(history):
    """Panel titles, the shared legend and the colour bar get room: nothing overlaps or clips."""
    engines = [plotting.plot_gate_probabilities(history).panels[W1].figure.get_layout_engine(),
               plotting.plot_bit_widths(history).panels[W1].figure.get_layout_engine(),
               plotting.plot_bops_accuracy(history).line.figure.get_layout_engine(),
               plotting._figure()[0].get_layout_engine()]
    assert all(type(e).__name__ == "ConstrainedLayoutEngine" for e in engines)


# ------------------------------------------------------------------ Pareto front
POINTS = [
    {"mu": 0.01, "relative_bops": 0.5, "test_accuracy": 0.93},
    {"mu": 0.03, "relative_bops": 0.4, "test_accuracy": 0.94},   # dominates the first
    {"mu": 0.1, "relative_bops": 0.3, "test_accuracy": 0.92},
    {"mu": 0.3, "relative_bops": 0.2, "test_accuracy": 0.80},
    {"mu": 1.0, "relative_bops": 0.3, "test_accuracy": 0.85},    # same BOPs, less accurate
    {"mu": 3.0, "relative_bops": 0.6, "test_accuracy": 0.94},    # same accuracy, more BOPs
]


def test_plot_pareto_front_and_baselines():
    baselines = [{"label": "8/8 bits", "relative_bops": 6.25, "test_accuracy": 0.95},
                 {"label": "pruning only", "relative_bops": 20.0, "test_accuracy": 0.95}]
    art = plotting.plot_pareto(POINTS, baselines)
    np.testing.assert_array_equal(art.front.get_xdata(), [0.2, 0.3, 0.4])
    np.testing.assert_array_equal(art.front.get_ydata(), [0.80, 0.92, 0.94])
    assert art.front.get_drawstyle() == "steps-post"
    assert len(art.points.get_offsets()) == len(POINTS)
    assert [b.get_label() for b in art.baselines] == ["8/8 bits", "pruning only"]
    np.testing.assert_array_equal(art.baselines[1].get_offsets(), [[20.0, 0.95]])
    assert not np.array_equal(art.baselines[0].get_paths()[0].vertices,    # different markers
                              art.baselines[1].get_paths()[0].vertices)
    assert art.front.axes.get_xscale() == "log"
    texts = [t.get_text() for t in art.front.axes.texts]
    assert "μ=0.03" in texts and "pruning only" in texts
    only_baselines = plotting.plot_pareto([], baselines)
    assert only_baselines.front is None and len(only_baselines.baselines) == 2


def test_plot_pareto_needs_something():
    with pytest.raises(ValueError, match="nothing to plot"):
        plotting.plot_pareto([], [])


def test_plot_pareto_groups_means_spreads_and_front():
    from bbits_ref.training.experiments import sweep_table
    rows = [{"member": f"{mu}-{seed}", "label": f"μ={mu}", "kind": "bb", "seed": seed, "mu": mu,
             "status": "done", "relative_bops": b + 0.02 * seed, "test_accuracy": a - 0.01 * seed}
            for mu, b, a in ((0.01, 0.5, 0.95), (0.1, 0.3, 0.93), (1.0, 0.3, 0.90))
            for seed in (0, 1, 2)]
    rows += [{"member": f"w4a4-{s}", "label": "w4a4", "kind": "baseline", "seed": s, "mu": None,
              "status": "done", "relative_bops": 1.73, "test_accuracy": 0.96} for s in (0, 1)]
    rows += [{"member": "lsq", "label": "lsq-w4a4", "kind": "baseline", "seed": 0, "mu": None,
              "status": "failed", "relative_bops": None, "test_accuracy": None}]
    groups = sweep_table(rows)["groups"]
    art = plotting.plot_pareto_groups(groups)
    # means: (0.52, 0.94), (0.32, 0.92), (0.32, 0.89): the last is dominated
    np.testing.assert_allclose(art.front.get_xdata(), [0.32, 0.52])
    np.testing.assert_allclose(art.front.get_ydata(), [0.92, 0.94])
    x, y = art.sweep.lines[0].get_data()
    np.testing.assert_allclose(x, [0.52, 0.32, 0.32])
    bars = art.sweep.lines[2]                              # (x bars, y bars)
    np.testing.assert_allclose(bars[1].get_segments()[0][:, 1], [0.93, 0.95])   # 0.94 ± 0.01
    assert len(art.baselines) == 1 and art.baselines[0].get_label() == "w4a4"  # failed: skipped
    assert "3 seeds" in art.sweep.get_label()
    with pytest.raises(ValueError, match="no group"):
        plotting.plot_pareto_groups([g for g in groups if g["label"] == "lsq-w4a4"])


# ------------------------------------------------------------------ saving
RUN_PNGS = ["gate_probabilities.png", "bit_widths.png", "bops_accuracy.png",
            "kept_channels.png", "training_curves.png"]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_run_figures_writes_pngs_atomically(history, tmp_path):
    out = tmp_path / "run" / "figures"
    n_figs = len(plt.get_fignums())
    paths = plotting.save_run_figures(history, out, dpi=50)
    assert paths == [out / n for n in RUN_PNGS]
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_PNGS)   # no temp files left
    for p in paths[2:]:
        width, height = png_size(p)
        assert 150 < width < 600 and 100 < height < 400          # about 6×4 in at 50 dpi
    width, height = png_size(paths[0])                           # 2 layers × 2 kinds of panels
    assert 200 < width < 800 and 150 < height < 400
    assert len(plt.get_fignums()) == n_figs                     # no figure left open
    # saving again replaces the files
    old = paths[0].read_bytes()
    history[0]["quantizers"][W1]["chain_probs"] = [0.5, 0.5, 0.5, 0.5]
    plotting.save_run_figures(history, out, dpi=50)
    assert paths[0].read_bytes() != old
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_PNGS)


def test_save_run_figures_with_summary_adds_references_and_layer_bops(history, tmp_path):
    paths = plotting.save_run_figures(history, tmp_path, dpi=30, summary=summary_for())
    assert [p.name for p in paths] == RUN_PNGS + ["layer_bops.png"]
    png_size(paths[-1])
    with pytest.raises(TypeError, match="summary.json"):
        plotting.save_run_figures(history, tmp_path, summary=[1, 2])
    bad = summary_for()
    bad["layers"][0]["macs"] = "many"
    with pytest.raises(ValueError, match="'macs'"):
        plotting.save_run_figures(history, tmp_path / "bad", summary=bad)
    assert not (tmp_path / "bad").exists()


def test_save_run_figures_bad_input_writes_nothing(history, tmp_path):
    with pytest.raises(ValueError, match="no epoch records"):
        plotting.save_run_figures([r for r in history if r["kind"] == "step"], tmp_path / "f")
    assert not (tmp_path / "f").exists()
    with pytest.raises(ValueError, match="dpi"):
        plotting.save_run_figures(history, tmp_path / "g", dpi=0)


def test_save_sweep_figures(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plotting.save_sweep_figures(POINTS, [{"label": "fp32", "relative_bops": 100.0,
                                                      "test_accuracy": 0.99}], tmp_path, dpi=40)
    assert paths == [tmp_path / "pareto.png"]
    png_size(paths[0])
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.png"]


# ------------------------------------------------------------------ extreme and committed runs
def everything_pruned(history):
    for rec in history:
        rec["relative_bops"] = rec["expected_relative_bops"] = 0.0
        for q in rec["quantizers"].values():
            q.update(expected_bits=0.0, bits=0, chain_probs=[0.0] * 4)
            if q["kept"] is not None:
                q.update(kept=0, prune_prob_mean=0.0)
    return history


def full_precision_bits(history):
    for rec in history:
        rec["relative_bops"] = rec["expected_relative_bops"] = 100.0
        for q in rec["quantizers"].values():
            q.update(expected_bits=32.0, bits=32, chain_probs=[1.0] * 4)
            if q["kept"] is not None:
                q.update(kept=q["channels"], prune_prob_mean=1.0)
    return history


@pytest.mark.parametrize("extreme", [everything_pruned, full_precision_bits])
def test_extreme_runs_draw_every_figure(history, tmp_path, extreme):
    summary = summary_for()
    if extreme is everything_pruned:
        for layer in summary["layers"]:
            layer["keep_out"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # nothing is silently dropped from these plots
        paths = plotting.save_run_figures(extreme(history), tmp_path, dpi=30, summary=summary)
    assert len(paths) == 6
    assert plotting.plot_bops_accuracy(history).line.axes.get_xscale() == (
        "linear" if extreme is everything_pruned else "log")


def test_a_model_without_quantizers_draws_notes(history, tmp_path):
    for rec in history:
        rec["quantizers"] = {}
    art = plotting.plot_gate_probabilities(history)
    assert art.lines == [] and art.panels == {}
    paths = plotting.save_run_figures(history, tmp_path, dpi=30)
    assert len(paths) == 5


COMMITTED_RUN = REPO / "figures" / "mnist-lenet5"


@pytest.mark.skipif(not (COMMITTED_RUN / "history.json").is_file(), reason="no committed run")
def test_figures_of_a_committed_run(tmp_path):
    run = COMMITTED_RUN
    history = json.loads((run / "history.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plotting.save_run_figures(history, tmp_path, dpi=20, summary=summary)
    assert len(paths) == 6
    fig = Figure()
    art = plotting.plot_gate_probabilities(history, fig=fig)
    assert len(art.panels) == len(history[0]["quantizers"])
    bits = plotting.plot_bit_widths(history, fig=Figure())
    layer_colors = {}
    for name, line in zip(history[0]["quantizers"], bits.steps):
        layer_colors.setdefault(name.split(".")[0], set()).add(to_hex(line.get_color()))
    assert all(len(c) == 1 for c in layer_colors.values())           # one colour per layer
    assert len(set.union(*layer_colors.values())) == len(layer_colors)  # distinct


# ------------------------------------------------------------------ errors
ALL_RUN_PLOTS = [plotting.plot_gate_probabilities, plotting.plot_bit_widths,
                 plotting.plot_bops_accuracy, plotting.plot_kept_channels,
                 plotting.plot_training_curves]


@pytest.mark.parametrize("plot", ALL_RUN_PLOTS)
def test_empty_history_is_an_error(plot):
    with pytest.raises(ValueError, match="history is empty"):
        plot([])


def test_path_instead_of_history_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="json.loads"):
        plotting.plot_bit_widths(str(tmp_path / "history.json"))


def test_malformed_records_are_errors(history):
    with pytest.raises(ValueError, match=r"record 1 has no \['quantizers'\]"):
        plotting.plot_bit_widths([history[0], {"kind": "step", "epoch": 0.5}])
    del history[3]["quantizers"][A1]["expected_bits"]
    with pytest.raises(ValueError, match="record 3 has no 'expected_bits'"):
        plotting.plot_bit_widths(history)


@pytest.mark.parametrize("plot", [plotting.plot_gate_probabilities, plotting.plot_bit_widths])
def test_unknown_quantizer_is_an_error(history, plot):
    with pytest.raises(ValueError, match=r"unknown quantizer.*conv2.*has \['conv1"):
        plot(history, quantizers=["conv1.act_quantizer", "conv2.weight_quantizer"])

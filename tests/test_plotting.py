"""Tests for bbits_ref.plotting: the artists carry the history's numbers, errors are clear."""
import struct
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bbits_ref import plotting  # noqa: E402

W1, A1, W2 = "conv1.weight_quantizer", "conv1.act_quantizer", "fc1.weight_quantizer"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
                    "chain_probs": rng.uniform(0, 1, 4).round(6).tolist(),
                    "prune_prob_mean": float(rng.uniform(0.3, 1)) if pruned else None,
                    "expected_bits": float(rng.uniform(1.0, 32.0)),
                    "bits": int(rng.choice([2, 4, 8, 16, 32])),
                    "kept": int(rng.integers(1, 9)) if pruned else None,
                    "channels": 8 if pruned else None}
            history.append(rec)
    return history


def q_column(history, name, field):
    return np.array([r["quantizers"][name][field] for r in history], dtype=float)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def history():
    return make_history()


# ------------------------------------------------------------------ gate probabilities
def test_gate_probabilities_lines_carry_chain_probs(history):
    lines = plotting.plot_gate_probabilities(history)
    assert len(lines) == 3 * 4 + 1                       # every gate + conv1's P(z2 ≠ 0)
    epochs = [r["epoch"] for r in history]
    for line in lines:
        np.testing.assert_array_equal(line.get_xdata(), epochs)
    by_label = {line.get_label(): line for line in lines}
    pi16 = np.array([r["quantizers"][A1]["chain_probs"][2] for r in history])
    np.testing.assert_array_equal(by_label[f"{A1}: q(z16≠0 | z8=1)"].get_ydata(), pi16)
    np.testing.assert_array_equal(by_label[f"{W1}: mean P(z2≠0)"].get_ydata(),
                                  q_column(history, W1, "prune_prob_mean"))
    # the lines' colours group by quantizer
    color = {label: line.get_color() for label, line in by_label.items()}
    assert color[f"{W1}: q(z4≠0 | z2=1)"] == color[f"{W1}: mean P(z2≠0)"]
    assert color[f"{W1}: q(z4≠0 | z2=1)"] != color[f"{A1}: q(z4≠0 | z2=1)"]


def test_gate_probabilities_selection(history):
    assert len(plotting.plot_gate_probabilities(history, include_prune=False)) == 12
    lines = plotting.plot_gate_probabilities(history, quantizers=[W2], gates=(8, 32))
    assert [line.get_label() for line in lines] == [f"{W2}: q(z8≠0 | z4=1)",
                                                     f"{W2}: q(z32≠0 | z16=1)"]
    np.testing.assert_array_equal(lines[1].get_ydata(),
                                  [r["quantizers"][W2]["chain_probs"][3] for r in history])


def test_gate_probabilities_bad_gates(history):
    with pytest.raises(ValueError, match="subset"):
        plotting.plot_gate_probabilities(history, gates=(2, 4))


# ------------------------------------------------------------------ bit widths
def test_bit_widths_are_log2_expected_bits(history):
    lines = plotting.plot_bit_widths(history)
    assert len(lines) == 3
    for line, name in zip(lines, (W1, A1, W2)):
        expected_bits = q_column(history, name, "expected_bits")
        np.testing.assert_allclose(line.get_ydata(), np.log2(expected_bits))
    ax = lines[0].axes
    ticks = {int(t): lab.get_text() for t, lab in zip(ax.get_yticks(), ax.get_yticklabels())}
    assert {k: ticks[k] for k in range(1, 6)} == {1: "2", 2: "4", 3: "8", 4: "16", 5: "32"}


def test_bit_widths_fully_pruned_is_nan_not_inf(history):
    history[2]["quantizers"][W1]["expected_bits"] = 0.0
    line = plotting.plot_bit_widths(history, quantizers=W1)[0]
    y = np.asarray(line.get_ydata())
    assert np.isnan(y[2]) and np.isfinite(np.delete(y, 2)).all()


# ------------------------------------------------------------------ BOPs vs accuracy
def test_bops_accuracy_uses_epoch_records(history):
    art = plotting.plot_bops_accuracy(history)
    epochs = [r for r in history if r["kind"] == "epoch"]
    bops = [r["relative_bops"] for r in epochs]
    acc = [r["test_acc"] for r in epochs]
    np.testing.assert_array_equal(art.line.get_xdata(), bops)
    np.testing.assert_array_equal(art.line.get_ydata(), acc)
    np.testing.assert_array_equal(art.points.get_offsets(), np.column_stack([bops, acc]))
    np.testing.assert_array_equal(art.points.get_array(), [1, 2, 3])   # coloured by epoch
    assert art.line.axes.get_xscale() == "log"
    assert [a.get_text() for a in art.annotations] == ["start (epoch 1)", "end (epoch 3)"]
    assert art.annotations[1].xy == (bops[-1], acc[-1])


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


# ------------------------------------------------------------------ kept channels, losses
def test_kept_channels_only_pruned_layers(history):
    lines = plotting.plot_kept_channels(history)
    assert [line.get_label() for line in lines] == ["conv1"]
    np.testing.assert_array_equal(lines[0].get_ydata(), q_column(history, W1, "kept") / 8)


def test_kept_channels_without_pruning_draws_note(history):
    for r in history:
        r["quantizers"][W1].update(kept=None, channels=None, prune_prob_mean=None)
    assert plotting.plot_kept_channels(history) == []
    assert len(plotting.plot_gate_probabilities(history)) == 12   # no z2 line either


def test_training_curves_use_step_records(history):
    ce_line, reg_line = plotting.plot_training_curves(history)
    steps = [r for r in history if r["kind"] == "step"]
    np.testing.assert_array_equal(ce_line.get_xdata(), [r["epoch"] for r in steps])
    np.testing.assert_array_equal(ce_line.get_ydata(), [r["ce"] for r in steps])
    np.testing.assert_array_equal(reg_line.get_ydata(), [r["reg"] for r in steps])
    assert reg_line.axes is not ce_line.axes                 # the regularizer has its own scale
    epochs_only = [r for r in history if r["kind"] == "epoch"]
    ce_line, _ = plotting.plot_training_curves(epochs_only)
    np.testing.assert_array_equal(ce_line.get_ydata(), [r["ce"] for r in epochs_only])


# ------------------------------------------------------------------ ax reuse
@pytest.mark.parametrize("plot", [plotting.plot_gate_probabilities, plotting.plot_bit_widths,
                                  plotting.plot_kept_channels, plotting.plot_training_curves])
def test_draws_on_given_ax(history, plot):
    fig, ax = plt.subplots()
    n_figs = len(plt.get_fignums())
    first = plot(history, ax=ax)
    assert first[0].axes is ax and first[0] in ax.lines
    second = plot(history, ax=ax)
    assert ax.lines[:] == [line for line in first + second if line.axes is ax]  # appended
    assert len(plt.get_fignums()) == n_figs                 # no new figure was opened


def test_bops_accuracy_and_pareto_on_given_ax(history):
    fig, ax = plt.subplots()
    assert plotting.plot_bops_accuracy(history, ax=ax).line.axes is ax
    fig, ax = plt.subplots()
    assert plotting.plot_pareto(POINTS, ax=ax).front.axes is ax


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


# ------------------------------------------------------------------ saving
def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_run_figures_writes_pngs_atomically(history, tmp_path):
    out = tmp_path / "run" / "figures"
    n_figs = len(plt.get_fignums())
    paths = plotting.save_run_figures(history, out, dpi=50)
    names = ["gate_probabilities.png", "bit_widths.png", "bops_accuracy.png",
             "kept_channels.png", "training_curves.png"]
    assert paths == [out / n for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)   # no temp files left
    for p in paths:
        width, height = png_size(p)
        assert 150 < width < 600 and 100 < height < 400          # about 6×4 in at 50 dpi
    assert len(plt.get_fignums()) == n_figs                     # no figure left open
    # saving again replaces the files
    old = paths[0].read_bytes()
    history[0]["quantizers"][W1]["chain_probs"] = [0.0, 0.0, 0.0, 0.0]
    plotting.save_run_figures(history, out, dpi=50)
    assert paths[0].read_bytes() != old
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


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

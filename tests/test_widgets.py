"""Tests for bbits_ref.course.widgets: each explorer is driven through its controls, as a student would,
and its recomputed state is checked against direct calls of the library functions (no browser)."""
import json

import numpy as np
import pytest
from traitlets import TraitError

from bbits_ref import Tensor
from bbits_ref.method import bops
from bbits_ref.method import gates
from bbits_ref.method import prior
from bbits_ref.method import quantizer
from bbits_ref.course import widgets as W
from bbits_ref.autograd.engine import PRIMITIVES
from bbits_ref.method.models import lenet5
from bbits_ref.training.trainer import history_record

PNG = b"\x89PNG"
HC = gates.HardConcrete()
# docs/method.md §11.4 golden vector (β = 1, signed)
GOLDEN_X = np.array([-1.3, -0.5, -0.1, 0, 0.07, 0.26, 0.49, 1.2, 2.0])
GOLDEN_SIGNED_HALF = [-0.825098, -0.587451, -0.054118, 0, 0.041569, 0.130196, 0.581176,
                      0.825098, 0.825098]          # gates (z4, z8) = (0.5, 0.8)
GOLDEN_UNSIGNED_8BIT = [0, 0, 0, 0, 0.070588, 0.258824, 0.490196, 1, 1]


def png(explorer) -> bytes:
    """The figure an explorer shows (ipywidgets keeps it as a memoryview)."""
    return bytes(explorer.plot.value)


# =========================================================================== common behaviour

def test_explorers_display_as_widgets():
    for explorer in (W.QuantizerExplorer(plot=False), W.AutogradExplorer()):
        bundle = explorer._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == \
            explorer.widget.model_id


def test_plots_are_png_and_are_redrawn_on_change():
    q = W.QuantizerExplorer(bits=2)
    first = png(q)
    assert first.startswith(PNG)
    q.controls["bits"].value = 8
    assert png(q).startswith(PNG) and png(q) != first
    assert len(q.figure.axes) == 2


def test_a_failing_library_call_is_shown_next_to_the_controls(monkeypatch):
    b = W.BopsExplorer(plot=False)
    before = dict(b.state)

    def broken(layers):
        raise ValueError("planted failure")

    monkeypatch.setattr(W.bops, "relative_bops", broken)
    b.controls["uniform_w"].value = 2
    assert b.error == "ValueError: planted failure"
    assert "planted failure" in b.output.value
    assert b.state["relative_bops"] == before["relative_bops"]       # the old state stays
    monkeypatch.undo()
    b.controls["uniform_w"].value = 4
    assert b.error is None and "planted failure" not in b.output.value


# =========================================================================== 01: autograd

def test_autograd_explorer_shows_math_and_check_of_selected_primitive():
    a = W.AutogradExplorer()
    a.controls["primitive"].value = "sigmoid"
    assert a.state["primitive"] == "sigmoid"
    assert a.state["math"] == PRIMITIVES["sigmoid"].math
    assert a.state["ok"] is True and a.state["max_abs_err"] < 1e-6
    a.controls["method"].value = "projection"
    assert a.state["method"] == "projection" and a.state["ok"]
    assert "sigmoid" in a.output.value and "passed" in a.output.value


def test_autograd_explorer_bad_input():
    with pytest.raises(ValueError, match="unknown primitive 'nope'"):
        W.AutogradExplorer("nope")
    with pytest.raises(ValueError, match="method must be"):
        W.AutogradExplorer(method="exact")


# =========================================================================== 02: quantizer

@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_quantizer_explorer_levels_steps_and_errors(bits, signed):
    q = W.QuantizerExplorer(beta=0.8, plot=False)
    q.controls["signed"].value = signed
    q.controls["bits"].value = bits
    s = q.state
    # §2.4 table: signed grids are restricted (2^b − 1 levels), unsigned have 2^b
    assert s["levels"] == (2 ** bits - 1 if signed else 2 ** bits)
    steps = quantizer.step_sizes(np.float64(0.8), signed)
    assert s["step_size"] == steps[quantizer.BIT_WIDTHS.index(bits)]
    x = q.sweep()
    lo, hi = quantizer.clip_range(np.float64(0.8), signed)
    assert x[0] == lo and x[-1] == hi
    direct = quantizer.quantize_direct(x, np.float64(0.8), bits, signed)
    assert s["max_abs_error"] == pytest.approx(np.max(np.abs(direct - x)), rel=1e-9, abs=1e-15)
    assert s["mse"] == pytest.approx(np.mean((direct - x) ** 2), rel=1e-9)
    assert s["max_diff_direct"] < 1e-12                 # decomposition = direct quantization
    assert s["max_abs_error"] == pytest.approx(s["step_size"] / 2, rel=1e-3)


def test_quantizer_explorer_readout_text_changes_with_bits():
    q = W.QuantizerExplorer(beta=1.0, bits=2, plot=False)
    assert "max |error| = 0.3333" in q.output.value
    q.controls["bits"].value = 4
    assert "max |error| = 0.0667" in q.output.value          # s4/2 = (2/15)/2
    assert "levels = 15" in q.output.value


def test_quantizer_explorer_beta_scales_every_step():
    q = W.QuantizerExplorer(beta=1.0, bits=4, plot=False)
    before = q.state["step_sizes"]
    q.controls["beta"].value = 2.0
    for b, s in q.state["step_sizes"].items():
        assert s == pytest.approx(2 * before[b], rel=1e-12)
    assert q.state["beta"] == 2.0


def test_quantizer_explorer_fractional_gates_reproduce_golden_vector():
    q = W.QuantizerExplorer(beta=1.0, plot=False)
    assert q.controls["z4"].disabled and not q.controls["bits"].disabled
    q.controls["gates"].value = "fractional"
    assert not q.controls["z4"].disabled and q.controls["bits"].disabled
    q.controls["z4"].value = 0.5
    q.controls["z8"].value = 0.8
    assert q.gate_values() == (0.5, 0.8, 0.0, 0.0)
    assert q.state["bits"] is None and q.state["step_size"] is None
    assert q.state["max_diff_direct"] is None
    np.testing.assert_allclose(q.quantize(GOLDEN_X), GOLDEN_SIGNED_HALF, atol=5e-7)
    # the state is the library's bb_quantize on the sweep
    x = q.sweep()
    x_q = quantizer.bb_quantize(Tensor(x), np.float64(1.0), None, 0.5, 0.8, 0.0, 0.0,
                                signed=True).data
    assert q.state["max_abs_error"] == np.max(np.abs(x_q - x))


def test_quantizer_explorer_unsigned_8_bit_golden_vector():
    q = W.QuantizerExplorer(beta=1.0, bits=8, signed=False, plot=False)
    np.testing.assert_allclose(q.quantize(GOLDEN_X), GOLDEN_UNSIGNED_8BIT, atol=5e-7)


def test_quantizer_explorer_bad_input():
    with pytest.raises(ValueError, match="beta must be a number in"):
        W.QuantizerExplorer(beta=0.0)
    with pytest.raises(ValueError, match="bits must be one of"):
        W.QuantizerExplorer(bits=3)
    with pytest.raises(ValueError, match="32 bits is float rounding noise"):
        W.QuantizerExplorer(bits=32)
    with pytest.raises(TypeError, match="signed must be True"):
        W.QuantizerExplorer(signed="yes")
    with pytest.raises(ValueError, match="gates_mode"):
        W.QuantizerExplorer(gates_mode="soft")
    with pytest.raises(ValueError, match="z4 must be"):
        W.QuantizerExplorer(z4=1.5)
    q = W.QuantizerExplorer(plot=False)
    with pytest.raises(TraitError):
        q.controls["bits"].value = 3                  # not one of the slider's options


# =========================================================================== 03: gates

def test_gate_explorer_closed_forms_and_samples_match_the_library():
    g = W.GateExplorer(n_samples=4000, seed=3, plot=False)
    for phi, pi_spec in ((6.0, 0.99950), (0.0, 0.8318), (-2.0, 0.4010), (-6.0, 0.01211)):
        g.controls["logit"].value = phi
        s = g.state
        assert s["prob_nonzero"] == pytest.approx(pi_spec, abs=6e-5)        # §3.3
        assert s["prob_nonzero"] == HC.prob_nonzero(np.float64(phi)).item()
        assert s["prob_one"] == HC.prob_one(np.float64(phi)).item()
        u = gates.uniform_noise(np.random.default_rng(3), (4000,))
        z = HC.sample(np.full(4000, phi), u).data
        assert s["mc_prob_nonzero"] == np.mean(z != 0)
        assert s["mc_prob_one"] == np.mean(z == 1)
        assert s["sample_mean"] == pytest.approx(np.mean(z), rel=1e-12)
        # Monte Carlo agrees with the closed form within 5 standard errors
        se = np.sqrt(s["prob_nonzero"] * (1 - s["prob_nonzero"]) / 4000) + 1e-3
        assert abs(s["mc_prob_nonzero"] - s["prob_nonzero"]) < 5 * se


def test_gate_explorer_threshold_deterministic_gate_and_hard_cut():
    g = W.GateExplorer(plot=False)
    assert g.state["threshold_logit"] == pytest.approx(-0.935303, abs=1e-6)     # §3.4
    g.controls["logit"].value = -0.9
    assert g.state["deterministic"] == 1.0 and not g.state["hard_cut"]
    g.controls["logit"].value = -1.0
    assert g.state["deterministic"] == 0.0 and not g.state["hard_cut"]
    g.controls["logit"].value = -2.0                                              # §3.5
    assert g.state["hard_cut"]
    g.controls["threshold"].value = 0.5
    ref = gates.HardConcrete(threshold=0.5)
    assert g.state["threshold_logit"] == ref.threshold_logit()
    assert g.state["deterministic"] == float(ref.deterministic(np.float64(-2.0)))


def test_gate_explorer_hard_cut_label_is_the_active_gates_own_cut():
    """The label names the cut of the gate shown: −2 for hard concrete, about −0.4014 for
    Gumbel-softmax (same on-probability).  It used to say "φ ≤ −2" for both."""
    g = W.GateExplorer(kind="gumbel_softmax", logit=-1.0, plot=False)
    assert g.state["hard_cut_logit"] == gates.GumbelSoftmax.hard_cut_logit
    assert g.state["hard_cut_logit"] == pytest.approx(-0.401403, abs=1e-6)
    assert g.state["hard_cut"] and "hard cut (φ ≤ -0.4014): yes" in g.output.value
    assert "φ ≤ -2" not in g.output.value
    g.controls["logit"].value = -0.35                     # above the Gumbel-softmax cut
    assert not g.state["hard_cut"] and "hard cut (φ ≤ -0.4014): no" in g.output.value
    g.controls["kind"].value = "hard_concrete"            # same φ, the official cut at −2
    assert g.state["hard_cut_logit"] == gates.HARD_CUT_LOGIT
    assert "hard cut (φ ≤ -2): no" in g.output.value
    g.controls["logit"].value = -2.0
    assert g.state["hard_cut"] and "hard cut (φ ≤ -2): yes" in g.output.value


def test_gate_explorer_temperature_and_stretch_reach_the_gate():
    g = W.GateExplorer(logit=1.0, plot=False)
    g.controls["gamma"].value = -0.3
    g.controls["zeta"].value = 1.2
    g.controls["temperature"].value = 1.5
    ref = gates.HardConcrete(temperature=1.5, gamma=-0.3, zeta=1.2)
    assert g.state["prob_zero"] == ref.prob_zero(np.float64(1.0)).item()
    assert g.state["prob_one"] == ref.prob_one(np.float64(1.0)).item()
    np.testing.assert_array_equal(
        g.samples(), ref.sample(np.full(g.n_samples, 1.0), g.noise()).data)


def test_gate_explorer_gumbel_softmax():
    g = W.GateExplorer(logit=0.4, plot=False)
    g.controls["kind"].value = "gumbel_softmax"
    s = g.state
    assert g.controls["gamma"].disabled and g.controls["threshold"].disabled
    assert s["prob_nonzero"] == pytest.approx(1 / (1 + np.exp(-0.4)), rel=1e-12)   # sigmoid(φ)
    assert s["prob_one"] is None and s["mc_prob_one"] == 0.0    # z ∈ (0, 1): no point mass
    assert s["deterministic"] == 1.0 and s["threshold_logit"] == 0.0
    assert abs(s["mc_prob_nonzero"] - s["prob_nonzero"]) < 0.02
    g.controls["logit"].value = -0.4
    assert g.state["deterministic"] == 0.0
    g.controls["kind"].value = "hard_concrete"
    assert not g.controls["gamma"].disabled


def test_gate_explorer_seed_changes_the_samples_only():
    g = W.GateExplorer(plot=False)
    before = g.state
    g.controls["seed"].value = 7
    assert g.state["prob_nonzero"] == before["prob_nonzero"]
    assert g.state["mc_prob_nonzero"] != before["mc_prob_nonzero"]


def test_gate_explorer_plot():
    g = W.GateExplorer(n_samples=2000)
    assert png(g).startswith(PNG)


def test_gate_explorer_bad_input():
    with pytest.raises(ValueError, match="kind must be"):
        W.GateExplorer(kind="bernoulli")
    with pytest.raises(ValueError, match="logit must be a number in"):
        W.GateExplorer(logit=20.0)
    with pytest.raises(ValueError, match="gamma must be"):
        W.GateExplorer(gamma=0.1)
    with pytest.raises(ValueError, match="n_samples"):
        W.GateExplorer(n_samples=10)
    with pytest.raises(ValueError, match="seed"):
        W.GateExplorer(seed=-1)


# =========================================================================== 04: prior

def penalty(regularizer, phi, mu, w):
    """μ·R_t from the library, for finite differences."""
    p = HC.prob_nonzero(np.asarray(phi, dtype=np.float64))
    return mu * regularizer(p[0:1], p[1:5], w).item()


def test_prior_explorer_values_match_the_library():
    p = W.PriorExplorer(plot=False)
    p.controls["mu"].value = 0.2
    p.controls["mac_weight"].value = 0.5
    p.controls["phi4"].value = -1.0
    phi = p.logits()
    np.testing.assert_array_equal(phi, [6.0, -1.0, 6.0, -6.0, -6.0])
    s = p.state
    probs = HC.prob_nonzero(phi).data
    lambdas = prior.prior_strengths(0.2, 0.5)
    assert [s["lambdas"][b] for b in p.BITS] == pytest.approx(list(lambdas))
    assert s["autoregressive"] == pytest.approx(penalty(prior.bop_regularizer, phi, 0.2, 0.5),
                                                rel=1e-12)
    assert s["independent"] == pytest.approx(penalty(prior.independent_regularizer, phi, 0.2, 0.5),
                                             rel=1e-12)
    # μ·R_t is the KL without entropy terms, Σ λ_b Π_{k≤b} π_k (§4.2-4.3)
    assert s["autoregressive"] == pytest.approx(
        prior.autoregressive_kl(probs, lambdas, exact=False).item(), rel=1e-12)
    assert s["kl_exact"] == prior.autoregressive_kl(probs, lambdas, exact=True).item()


def test_prior_explorer_gradients_match_finite_differences():
    p = W.PriorExplorer(plot=False)
    p.controls["phi2"].value = 2.0
    p.controls["phi4"].value = -1.5
    p.controls["phi8"].value = 0.5
    phi, eps = p.logits(), 1e-6
    for key, reg in (("grad_autoregressive", prior.bop_regularizer),
                     ("grad_independent", prior.independent_regularizer)):
        for i, b in enumerate(p.BITS):
            up, down = phi.copy(), phi.copy()
            up[i] += eps
            down[i] -= eps
            fd = (penalty(reg, up, 0.1, 1.0) - penalty(reg, down, 0.1, 1.0)) / (2 * eps)
            assert p.state[key][b] == pytest.approx(fd, rel=1e-6, abs=1e-10), (key, b)


def test_prior_explorer_shows_over_regularization_of_gates_whose_parent_is_off():
    p = W.PriorExplorer(phi4=-3.0, phi8=0.0, plot=False)
    s = p.state
    # the 4-bit gate is mostly off: the autoregressive prior hardly pushes φ8 any more, the
    # independent one pushes it as if the 8-bit residual were used
    assert s["prob_nonzero"][4] < 0.2
    assert s["grad_independent"][8] > 4 * s["grad_autoregressive"][8]
    p.controls["phi4"].value = 6.0
    assert p.state["grad_autoregressive"][8] == pytest.approx(p.state["grad_independent"][8],
                                                              rel=0.05)


def test_prior_explorer_mu_scales_penalty_and_gradients():
    p = W.PriorExplorer(mu=0.1, plot=False)
    before = p.state
    p.controls["mu"].value = 0.5 if p.controls["mu"].value != 0.5 else 0.25
    factor = p.controls["mu"].value / 0.1
    assert p.state["autoregressive"] == pytest.approx(factor * before["autoregressive"], rel=1e-9)
    for b in p.BITS:
        assert p.state["grad_independent"][b] == pytest.approx(
            factor * before["grad_independent"][b], rel=1e-9)


def test_prior_explorer_plot_and_bad_input():
    assert png(W.PriorExplorer()).startswith(PNG)
    with pytest.raises(ValueError, match="mu must be"):
        W.PriorExplorer(mu=0.0)
    with pytest.raises(ValueError, match="mac_weight must be"):
        W.PriorExplorer(mac_weight=2.0)
    with pytest.raises(ValueError, match="phi8 must be"):
        W.PriorExplorer(phi8=float("nan"))


# =========================================================================== 05: BOPs

LENET = bops.lenet5_layer_macs()


def lenet_bops(w_bits, a_bits, keep):
    return bops.relative_bops(bops.sequential_layer_costs(LENET, w_bits, a_bits, keep))


def test_bops_explorer_default_is_8_bit_and_uniform_baselines_match_spec():
    b = W.BopsExplorer(plot=False)
    assert b.state["relative_bops"] == pytest.approx(6.25, abs=1e-12)
    assert b.state["uniform_relative_bops"] == pytest.approx(1.731, abs=5e-4)     # §5.1 4/4
    b.controls["uniform_w"].value = 2
    b.controls["uniform_a"].value = 2
    assert b.state["uniform_relative_bops"] == pytest.approx(0.517, abs=5e-4)     # 2/2
    b.controls["uniform_a"].value = 32
    assert b.state["uniform_relative_bops"] == pytest.approx(5.744, abs=5e-4)     # 2/32
    assert "relative BOPs = <b>6.2500%</b>" in b.output.value


def test_bops_explorer_per_layer_edits_match_direct_computation():
    b = W.BopsExplorer(plot=False)
    b.set_layer("conv2", w_bits=2, a_bits=4, keep=0.5)
    expected = lenet_bops([8, 2, 8, 8], [8, 4, 8], [1.0, 0.5, 1.0, 1.0])
    assert b.state["relative_bops"] == pytest.approx(expected, rel=1e-12)
    layers = {layer.name: layer for layer in b.state["layers"]}
    assert layers["conv2"].keep_out == 0.5 and layers["fc1"].keep_in == 0.5   # §5 keep_in
    assert layers["fc1"].a_bits == 4
    assert b.state["table"] == bops.format_bops_table(
        bops.sequential_layer_costs(LENET, [8, 2, 8, 8], [8, 4, 8], [1.0, 0.5, 1.0, 1.0]))
    # moving to another layer shows its values and changes nothing
    b.controls["layer"].value = "conv1"
    assert b.controls["w_bits"].value == 8 and b.controls["keep"].value == 1.0
    assert b.state["relative_bops"] == pytest.approx(expected, rel=1e-12)
    b.controls["layer"].value = "conv2"
    assert (b.controls["w_bits"].value, b.controls["a_bits"].value,
            b.controls["keep"].value) == (2, 4, 0.5)


def test_bops_explorer_last_layer_has_no_activation_or_pruning():
    b = W.BopsExplorer(plot=False)
    b.set_layer("fc2", w_bits=2)
    assert b.controls["a_bits"].disabled and b.controls["keep"].disabled
    assert b.state["relative_bops"] == pytest.approx(
        lenet_bops([8, 8, 8, 2], [8, 8, 8], [1.0] * 4), rel=1e-12)
    with pytest.raises(ValueError, match="last layer"):
        b.set_layer("fc2", keep=0.5)
    b.controls["layer"].value = "fc1"
    assert not b.controls["keep"].disabled
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        b.set_layer("conv9")


def test_bops_explorer_vgg7_and_width():
    b = W.BopsExplorer(plot=False)
    b.set_layer("conv2", w_bits=2)
    assert b.controls["width"].disabled
    b.controls["model"].value = "vgg7"
    assert not b.controls["width"].disabled
    assert list(b.controls["layer"].options) == [n for n, _ in bops.VGG7_LAYERS]
    assert b.state["relative_bops"] == pytest.approx(6.25, abs=1e-12)    # reset: all 8/8
    b.controls["uniform_w"].value = 2
    b.controls["uniform_a"].value = 2
    assert b.state["uniform_relative_bops"] == pytest.approx(0.397, abs=5e-4)   # §5.1
    b.controls["width"].value = 0.5
    assert [layer.macs for layer in b.state["layers"]] == [m for _, m in bops.vgg7_layer_macs(0.5)]


def test_bops_explorer_plot_and_bad_input():
    assert png(W.BopsExplorer()).startswith(PNG)
    with pytest.raises(ValueError, match="model must be one of"):
        W.BopsExplorer(model="resnet18")
    with pytest.raises(ValueError, match="width must be"):
        W.BopsExplorer(width=2.0)
    with pytest.raises(ValueError, match="bits must be one of"):
        W.BopsExplorer(w_bits=3)
    with pytest.raises(ValueError, match="uniform_a must be one of"):
        W.BopsExplorer(uniform_a=3)


# =========================================================================== 06: training replay

@pytest.fixture(scope="module")
def history():
    """A synthetic history from history_record: the gates of a LeNet-5 are moved between epochs."""
    model = lenet5(rng=0)
    records = []
    conv2_w = dict(model.quantizers())["conv2.weight_quantizer"]
    fc1_a = dict(model.quantizers())["fc1.act_quantizer"]
    for epoch in (1, 2, 3, 5):                  # epoch 4 missing on purpose
        if epoch >= 2:
            conv2_w.gate_logits.data[1] = -4.0          # φ8 off: conv2 weights at 4 bits
            conv2_w.prune_logits.data[:16] = -5.0       # 16 of 64 channels pruned
        if epoch >= 3:
            fc1_a.gate_logits.data[0] = -4.0            # φ4 off: fc1 activations at 2 bits
        records.append(history_record(model, kind="step", step=10 * epoch, epoch=epoch - 0.5,
                                      ce=1.0, reg=1.0, train_acc=0.5))
        records.append(history_record(model, kind="epoch", step=10 * epoch, epoch=epoch, ce=1.0,
                                      reg=1.0, train_acc=0.5, test_acc=0.5 + 0.1 * epoch))
    return records


def test_training_replay_state_follows_the_epoch_slider(history):
    r = W.TrainingReplay(history, plot=False)
    slider = r.controls["epoch"]
    assert (slider.min, slider.max, slider.value) == (1, 5, 5)
    epochs = {rec["epoch"]: rec for rec in history if rec["kind"] == "epoch"}
    for epoch in (1, 2, 3, 5):
        slider.value = epoch
        rec = epochs[epoch]
        assert r.state["epoch"] == epoch
        assert r.state["relative_bops"] == rec["relative_bops"]
        assert r.state["test_acc"] == rec["test_acc"]
        assert r.state["bits"] == {n: q["bits"] for n, q in rec["quantizers"].items()}
        assert r.state["kept"] == {n: q["kept"] for n, q in rec["quantizers"].items()}
    slider.value = 1
    assert r.state["bits"]["conv2.weight_quantizer"] == 8
    assert r.state["kept"]["conv2.weight_quantizer"] == 64
    slider.value = 2
    assert r.state["bits"]["conv2.weight_quantizer"] == 4
    assert r.state["kept"]["conv2.weight_quantizer"] == 48
    assert r.state["bits"]["fc1.act_quantizer"] == 8
    slider.value = 4                                # missing: the last epoch before it
    assert r.state["epoch"] == 3 and r.state["bits"]["fc1.act_quantizer"] == 2
    assert "test accuracy = <b>0.8000</b>" in r.output.value


def test_training_replay_relative_bops_drop_as_in_the_readout(history):
    r = W.TrainingReplay(history, plot=False)
    values = []
    for epoch in (1, 2, 3):
        r.controls["epoch"].value = epoch
        values.append(r.state["relative_bops"])
    assert values[0] == pytest.approx(6.25) and values[0] > values[1] > values[2]


def test_training_replay_from_a_file_and_plot(history, tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(history))
    r = W.TrainingReplay(tmp_path)                        # a run directory
    assert r.state["epoch"] == 5 and png(r).startswith(PNG)
    r2 = W.TrainingReplay(str(tmp_path / "history.json"), plot=False)
    assert r2.state["bits"] == r.state["bits"]


def test_training_replay_bad_input(history, tmp_path):
    with pytest.raises(ValueError, match="no epoch records"):
        W.TrainingReplay([], plot=False)
    with pytest.raises(ValueError, match="no epoch records"):
        W.TrainingReplay([rec for rec in history if rec["kind"] == "step"], plot=False)
    broken = [dict(rec) for rec in history]
    del broken[1]["test_acc"]
    with pytest.raises(ValueError, match="has no \\['test_acc'\\]"):
        W.TrainingReplay(broken, plot=False)
    with pytest.raises(TypeError, match="list of records"):
        W.TrainingReplay({"epoch": 1}, plot=False)
    with pytest.raises(TypeError, match="not a dict"):
        W.TrainingReplay([1, 2], plot=False)
    with pytest.raises(FileNotFoundError, match="no training history"):
        W.TrainingReplay(tmp_path / "missing.json", plot=False)

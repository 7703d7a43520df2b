"""Gate traces (bbits_ref.training.gate_trace): the data's and the prior's gradients on every gate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bbits_ref._errors import DataFileError, UsageError
from bbits_ref.method.gates import HardConcrete
from bbits_ref.method.layers import BBConfig
from bbits_ref.training import gate_trace as gt
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.trainer import train

OFFSET = -HardConcrete().prob_offset          # π(φ) = sigmoid(φ + 1.598597), docs/method.md §3.3


def _config(prior="autoregressive", hard_cut=True, **kw):
    base = dict(epochs=1, train_limit=384, test_limit=200, lr_gates=1e-2, mu=1.0)
    base.update(kw)
    return TrainConfig(**base, method=BBConfig(prior=prior, hard_cut=hard_cut))


@pytest.fixture(scope="module")
def traces():
    return {p: gt.trace_gates(_config(p)) for p in ("autoregressive", "independent")}


def _arr(trace, key):
    return np.asarray(trace[key], dtype=np.float64)


def test_shapes_and_every():
    trace = gt.trace_gates(_config(), every=2)
    n_steps = 3                                   # 384 examples, batches of 128
    assert trace["step"] == [1, 3]
    assert len(trace["quantizers"]) == 7          # LeNet-5: 4 weight + 3 activation quantizers
    for key in gt.TRACE_ARRAYS:
        assert _arr(trace, key).shape == (2, 7, 4)
    assert trace["epoch"][-1] == pytest.approx(3 / n_steps)
    assert trace["history"][-1]["kind"] == "epoch"


def test_tracing_does_not_change_the_training(traces):
    trainer, _ = train(_config(), progress=False, verbose=False)
    plain = trainer.history[-1]
    traced = traces["autoregressive"]["history"][-1]
    assert traced == plain


def _independent_closed_form(trace):
    # Independent prior: R ∋ c(b)·π_b, so μ ∂R/∂φ_b = μ·w_t·b·π_b(1 − π_b) whatever the parent does.
    logits, grad = _arr(trace, "logits"), _arr(trace, "grad_prior")
    pi = 1 / (1 + np.exp(-(logits + OFFSET)))
    bits = np.array([4, 8, 16, 32])
    # w_t from the z16 column (φ = −6: π small, accurate in float32); every gate must then follow
    # with its own b.  Near π = 1 (z4, z8 at φ ≈ 6) float32 loses ~1e-4 in 1 − π: hence rtol.
    w = grad[..., 2] / (16 * pi[..., 2] * (1 - pi[..., 2]))
    expected = 1.0 * w[..., None] * bits * pi * (1 - pi)
    np.testing.assert_allclose(grad, expected, rtol=5e-4, atol=1e-12)
    assert np.all(w > 0) and np.all(w <= 1)


def test_independent_prior_gradient_is_the_closed_form(traces):
    _independent_closed_form(traces["independent"])
    with pytest.raises(AssertionError):       # the autoregressive prior's is not: the check can fail
        _independent_closed_form(traces["autoregressive"])


def test_autoregressive_gradient_scales_with_the_parent(traces):
    # Activations (no pruning): R = 1 + w(4π4 + 8π4π8 + 16π4π8π16 + 32π4π8π16π32), so
    # ∂R/∂φ8 = w·π8(1 − π8)·π4·(8 + 16π16 + 32π16π32): it vanishes with the parent's π4.
    trace = traces["autoregressive"]
    q = trace["quantizers"].index("conv1.act_quantizer")
    logits, grad = _arr(trace, "logits")[:, q], _arr(trace, "grad_prior")[:, q]
    p4, p8, p16, p32 = (1 / (1 + np.exp(-(logits + OFFSET)))).T
    w = grad[:, 0] / (p4 * (1 - p4) * (4 + 8 * p8 + 16 * p8 * p16 + 32 * p8 * p16 * p32))
    expected = w * p8 * (1 - p8) * p4 * (8 + 16 * p16 + 32 * p16 * p32)
    np.testing.assert_allclose(grad[:, 1], expected, rtol=1e-5)


def test_data_gradient_is_zero_exactly_where_the_gate_is_cut(traces):
    # The MNIST preset starts z16 and z32 at φ = −6, below the hard cut: the data never sees them.
    trace = traces["autoregressive"]
    data = _arr(trace, "grad_data")
    assert np.all(data[:, :, 2:] == 0.0)
    assert np.all(_arr(trace, "test_gates")[:, :, 2:] == 0.0)
    # ... while z4 and z8, which the forward pass uses, get a data gradient somewhere
    assert np.any(data[:, :, :2] != 0.0)
    # and total = prior + data by construction, with the prior part non-zero everywhere
    np.testing.assert_array_equal(_arr(trace, "grad_total"),
                                  _arr(trace, "grad_prior") + data)
    assert np.all(_arr(trace, "grad_prior") > 0)


def test_save_load_roundtrip(tmp_path, traces):
    path = gt.save_trace(tmp_path / "t.json", traces["independent"])
    loaded = gt.load_trace(path)
    assert loaded["quantizers"] == traces["independent"]["quantizers"]
    np.testing.assert_allclose(loaded["grad_prior"], _arr(traces["independent"], "grad_prior"),
                               rtol=1e-6)
    assert loaded["config"].method.prior == "independent"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d.update(format="other"), "expected format"),
    (lambda d: d["probs"].pop(), "probs has shape"),
    (lambda d: d["grad_data"][0][0].__setitem__(0, float("nan")), "non-finite"),
    (lambda d: d.update(step=d["step"][::-1]), "increasing"),
    (lambda d: d.pop("logits"), "missing or malformed"),
    (lambda d: d.update(config={"dataset": "imagenet"}), "config"),
    (lambda d: d.update(quantizers=[]), "non-empty"),
])
def test_load_rejects_bad_traces(tmp_path, traces, spoil, message):
    trace = json.loads(json.dumps(traces["independent"]))
    spoil(trace)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(trace).replace("NaN", "NaN"))
    with pytest.raises(DataFileError, match=message):
        gt.load_trace(path)


def test_load_rejects_non_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\x00\x01 not json")
    with pytest.raises(DataFileError):
        gt.load_trace(path)


def test_bad_requests():
    with pytest.raises(UsageError, match="learned bit widths"):
        gt.trace_gates(TrainConfig(epochs=1, train_limit=64, method=BBConfig(
            learn_bits=False, weight_bits=4, act_bits=4)))
    with pytest.raises(UsageError, match="every"):
        gt.trace_gates(_config(), every=0)
    with pytest.raises(TypeError):
        gt.trace_gates({"epochs": 1})


def test_overregularization_example(traces):
    spoiled = {}
    for label, trace in traces.items():
        probs = _arr(trace, "probs")
        probs[1:, 3, 0] = 0.01                # quantizer 3's z4 off from the second record …
        probs[2:, 5, 0] = 0.01                # … quantizer 5's from the third
        probs[:, 5, 1] = 0.9                  # and its z8 more on then than quantizer 3's
        probs[:, 3, 1] = 0.4
        spoiled[label] = dict(trace, probs=probs)
    pick = gt.overregularization_example(spoiled, "z8")
    assert pick == {"quantizer": traces["independent"]["quantizers"][5], "index": 5, "gate": 1,
                    "parent_off": {"autoregressive": 2, "independent": 2}}
    single = gt.overregularization_example(spoiled["independent"], "z8")
    assert single["index"] == 5 and single["parent_off"] == {None: 2}
    spoiled["independent"]["probs"][:, 5, 0] = 0.9    # not off in every trace: quantizer 3 then
    assert gt.overregularization_example(spoiled, "z8")["index"] == 3
    with pytest.raises(ValueError, match="parent"):
        gt.overregularization_example(spoiled, "z4")
    with pytest.raises(ValueError, match="switch off"):
        gt.overregularization_example(traces, "z8")     # one epoch: no z4 goes off yet


def test_plots(traces):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from bbits_ref.plotting import plot_bit_evolution, plot_gate_trace
    loaded = {k: dict(v, probs=_arr(v, "probs"), grad_prior=_arr(v, "grad_prior"),
                      grad_data=_arr(v, "grad_data")) for k, v in traces.items()}
    art = plot_gate_trace(loaded, quantizer="conv2.weight_quantizer", fig=Figure())
    q = traces["independent"]["quantizers"].index("conv2.weight_quantizer")
    np.testing.assert_allclose(art.gate[1].get_ydata(), _arr(traces["independent"], "probs")[:, q, 1])
    np.testing.assert_allclose(art.prior[0].get_ydata(),
                               _arr(traces["autoregressive"], "grad_prior")[:, q, 1])
    assert len(art.data) == 2 and art.axes[2].get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="no quantizer"):
        plot_gate_trace(loaded, quantizer="nope", fig=Figure())
    hist = {"a": traces["independent"]["history"], "b": traces["autoregressive"]["history"]}
    panels = plot_bit_evolution(hist, fig=Figure())
    assert len(panels) == 2 and len(panels[0].steps) == 7

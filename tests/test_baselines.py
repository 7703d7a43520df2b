"""The LSQ and PACT baselines (bbits_ref.method.baselines, docs/method.md §13).

Values on hand-worked cases, level counts, gradients (including LSQ's step-size gradient scale),
initial values, the config checks, short LeNet-5 runs through the CLI with their BOPs, resume,
and the sweep names.  The generic gradient checks (finite differences, the HIPS-autograd oracle,
coverage) run over every registered primitive in tests/test_primitives.py; the oracles of these
two are in tests/oracles/baselines_oracle.py.
"""
import json

import autograd
import numpy as np
import pytest

from oracles import collect_oracles

from bbits_ref._errors import UsageError
from bbits_ref.autograd.engine import PRIMITIVES, Tensor, frozen_rounding
from bbits_ref.autograd.gradcheck import check_grads, make_case
from bbits_ref.cli import main
from bbits_ref.method import baselines as B
from bbits_ref.method.layers import (BBConfig, DoReFaQuantizer, LSQQuantizer, PACTQuantizer)
from bbits_ref.method.models import lenet5
from bbits_ref.method.quantizer import quantize_direct
from bbits_ref.training import experiments
from bbits_ref.training.checkpoints import load_checkpoint
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.trainer import Trainer

ORACLES = collect_oracles()
FIXED = dict(learn_bits=False, pruning=False, weight_bits=4, act_bits=4)
RUN = ["--fixed-bits", "4/4", "--io-bits", "8", "--train-limit", "256", "--test-limit", "256",
       "--batch-size", "64", "--log-every", "2", "--no-progress"]

# docs/method.md §5.1: MACs of LeNet-5's conv1, conv2, fc1, fc2
LENET5_MACS = (460_800, 3_276_800, 524_288, 5_120)


def grads(fn, *arrays, cotangent=None):
    """Forward value and the engine's gradients of ⟨cotangent, fn(*arrays)⟩ (float64)."""
    ts = [Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(np.ones(out.shape) if cotangent is None else cotangent)
    return out.data, [t.grad for t in ts]


def oracle_vjp(name, args, static, cotangent):
    """The HIPS-autograd oracle's value and VJP for every argument."""
    oracle = ORACLES[name]
    value = oracle(*args, **static)
    out = []
    for i in range(len(args)):
        fn = lambda a, i=i: oracle(*args[:i], a, *args[i + 1:], **static)  # noqa: E731
        vjp, _ = autograd.make_vjp(fn)(args[i])
        out.append(np.asarray(vjp(cotangent), dtype=np.float64))
    return np.asarray(value), out


def distinct(values) -> int:
    return np.unique(np.round(np.asarray(values, dtype=np.float64), 12)).size


# --------------------------------------------------------------------------- LSQ

def test_lsq_values_and_gradients_on_a_hand_worked_case():
    # 4-bit signed: levels −8 … 7 times s = 0.1
    v = np.array([-1.0, -0.33, 0.1, 0.26, 0.75, 0.9])
    value, (dv, ds) = grads(lambda v, s: B.lsq_quantize(v, s, bits=4, signed=True), v, 0.1)
    np.testing.assert_allclose(value, [-0.8, -0.3, 0.1, 0.3, 0.7, 0.7], atol=1e-12)
    np.testing.assert_array_equal(dv, [0, 1, 1, 1, 0, 0])       # 7.5 and 9 are above Q_P = 7
    # ∂v̂/∂s: −Q_N below, R(v/s) − v/s inside, Q_P above
    slope = [-8, -3 + 3.3, 1 - 1, 3 - 2.6, 7, 7]
    np.testing.assert_allclose(ds, np.sum(slope), atol=1e-9)
    # unsigned (post-ReLU): 0 … 15; the zeros get no gradient at all
    u = np.array([0.0, 0.04, 0.26, 2.0])
    value, (du, ds) = grads(lambda v, s: B.lsq_quantize(v, s, bits=4, signed=False), u, 0.1)
    np.testing.assert_allclose(value, [0.0, 0.0, 0.3, 1.5], atol=1e-12)
    np.testing.assert_array_equal(du, [0, 1, 1, 0])
    np.testing.assert_allclose(ds, (0 - 0.4) + (3 - 2.6) + 15, atol=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_lsq_has_two_to_the_b_levels_where_signed_bayesian_bits_has_one_fewer(bits, signed):
    q_n, q_p = B.lsq_levels(bits, signed)
    assert q_n + q_p + 1 == 2 ** bits
    sweep = np.linspace(-q_n - 3, q_p + 3, 20_001) * 0.25
    out = B.lsq_quantize(sweep, 0.25, bits=bits, signed=signed).data
    assert distinct(out) == 2 ** bits
    assert out.min() == -q_n * 0.25 and out.max() == q_p * 0.25
    if bits in (2, 4, 8):        # Bayesian Bits: signed grids are symmetric, 2^b − 1 levels
        bb = quantize_direct(np.linspace(-1, 1, 20_001), np.float64(1.0), bits, signed)
        assert distinct(bb) == 2 ** bits - (1 if signed else 0)


def test_lsq_step_gradient_is_scaled_by_g_exactly():
    """s̄ = g·(the straight-through ∂L/∂s), against finite differences and the oracle: fails if g
    is dropped, squared or applied to v̄."""
    rng = np.random.default_rng(3)
    v = rng.uniform(-2.5, 2.5, (4, 6))
    s, g = 0.3, B.lsq_grad_scale(v.size, 4, True)
    cot = rng.standard_normal(v.shape)
    fn = lambda v, s: B.lsq_quantize(v, s, bits=4, signed=True, grad_scale=g)  # noqa: E731
    _, (dv, ds) = grads(fn, v, s, cotangent=cot)
    _, (dv1, ds1) = grads(lambda v, s: B.lsq_quantize(v, s, bits=4, signed=True), v, s,
                          cotangent=cot)
    eps = 1e-6
    with frozen_rounding() as replay:              # ∂L/∂s of the forward, rounding offsets frozen
        B.lsq_quantize(v, s, bits=4, signed=True)
        replay()
        hi = np.sum(cot * B.lsq_quantize(v, s + eps, bits=4, signed=True).data)
        replay()
        lo = np.sum(cot * B.lsq_quantize(v, s - eps, bits=4, signed=True).data)
    unscaled = (hi - lo) / (2 * eps)
    assert abs(unscaled) > 1.0 and 0.01 < g < 0.5
    np.testing.assert_allclose(ds1, unscaled, rtol=1e-6)
    np.testing.assert_allclose(ds, g * unscaled, rtol=1e-6)
    np.testing.assert_array_equal(dv, dv1)         # g touches s only
    # the oracle writes g as the paper does: s' = s·g + (s − s·g) held constant
    value, (odv, ods) = oracle_vjp("lsq_quantize", (v, np.asarray(s)),
                                   {"bits": 4, "signed": True, "grad_scale": g}, cot)
    np.testing.assert_allclose(fn(Tensor(v), Tensor(np.asarray(s))).data, value, atol=1e-12)
    np.testing.assert_allclose(ds, ods, rtol=1e-9)
    np.testing.assert_allclose(dv, odv, atol=1e-12)


def test_lsq_grad_scale_and_init_values():
    assert B.lsq_levels(4, True) == (8, 7) and B.lsq_levels(4, False) == (0, 15)
    assert np.isclose(B.lsq_grad_scale(51_200, 4, True), 1 / np.sqrt(51_200 * 7))
    assert np.isclose(B.lsq_grad_scale(100, 8, False), 1 / np.sqrt(100 * 255))
    assert np.isclose(B.lsq_init_step(np.array([1.0, -3.0]), 4, True), 2 * 2 / np.sqrt(7))
    assert np.isclose(B.lsq_init_step(np.array([0.0, 1.0, 2.0]), 2, False), 2 * 1 / np.sqrt(3))
    with pytest.raises(ValueError, match="whole number ≥ 1"):
        B.lsq_grad_scale(0, 4, True)
    with pytest.raises(ValueError, match="step size.*> 0"):
        B.lsq_quantize(np.ones(3), 0.0, bits=4, signed=True)


def test_lsq_quantizer_module_uses_n_elements_for_weights_and_features_for_activations():
    config = BBConfig(quantizer="lsq", **FIXED)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    for kind, n, signed in (("weight", x.size, True), ("activation", 75, False)):
        data = x if signed else np.abs(x)
        q = LSQQuantizer(kind, None, config, 4, np.float64)
        q.train()
        out = q(Tensor(data))
        s0 = 2 * np.mean(np.abs(data)) / np.sqrt(B.lsq_levels(4, signed)[1])
        assert q.signed is signed and np.isclose(float(q.step_size.data), s0)
        out.backward(np.ones(out.shape))
        _, (_, plain) = grads(lambda v, s: B.lsq_quantize(v, s, bits=4, signed=signed),
                              data, float(q.step_size.data))
        np.testing.assert_allclose(q.step_size.grad, B.lsq_grad_scale(n, 4, signed) * plain,
                                   rtol=1e-9)


# --------------------------------------------------------------------------- PACT and DoReFa

def test_pact_values_and_gradients_at_alpha():
    x = np.array([-1.0, 0.2, 0.5, 1.0, 2.0, 2.5])      # α = 2, 2 bits: levels 0, 2/3, 4/3, 2
    value, (dx, da) = grads(lambda x, a: B.pact_quantize(x, a, bits=2), x, 2.0)
    np.testing.assert_allclose(value, [0, 0, 2 / 3, 4 / 3, 2, 2], atol=1e-12)   # 1.5 → 2 (even)
    np.testing.assert_array_equal(dx, [0, 1, 1, 1, 0, 0])      # 1[0 ≤ x < α]
    assert da == 2.0                                            # Σ 1[x ≥ α]
    for bits in (2, 4, 8):
        sweep = B.pact_quantize(np.linspace(-1, 4, 20_001), 3.0, bits=bits).data
        assert distinct(sweep) == 2 ** bits and sweep.min() == 0 and np.isclose(sweep.max(), 3)


def test_pact_alpha_rule_off_the_grid_matches_the_oracle_not_the_derivative():
    """Off the grid PACT's ᾱ = Σ g·1[x ≥ α] is a rule, not the derivative of the rounded forward."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.0, 3.0, (5, 7))
    x[np.abs(x) < 1e-3] = 0.5
    alpha, cot = np.asarray(2.0), rng.standard_normal(x.shape)
    value, (dx, da) = grads(lambda x, a: B.pact_quantize(x, a, bits=3), x, alpha, cotangent=cot)
    o_value, (odx, oda) = oracle_vjp("pact_quantize", (x, alpha), {"bits": 3}, cot)
    np.testing.assert_allclose(value, o_value, atol=1e-12)
    np.testing.assert_allclose(dx, odx, atol=1e-12)
    np.testing.assert_allclose(da, oda, rtol=1e-12)
    np.testing.assert_allclose(da, np.sum(cot * (x >= alpha)), rtol=1e-12)
    assert not check_grads(lambda x, a: B.pact_quantize(x, a, bits=3), x, alpha, argnums=[1])


def test_dorefa_weights_values_levels_and_gradient():
    w = np.array([-1.0, -0.33, 0.1, 0.26, 0.9])
    t = np.tanh(w)
    r = t / (2 * np.abs(t).max()) + 0.5
    by_hand = 2 * np.round(3 * r) / 3 - 1
    out = B.dorefa_weights(w, bits=2).data
    np.testing.assert_allclose(out, by_hand, atol=1e-12)
    np.testing.assert_allclose(out, [-1, -1 / 3, 1 / 3, 1 / 3, 1], atol=1e-12)
    for bits in (2, 4):
        sweep = B.dorefa_weights(np.linspace(-2, 2, 4001), bits=bits).data
        assert distinct(sweep) == 2 ** bits and 0.0 not in np.round(sweep, 12)
    rng = np.random.default_rng(2)
    for shape in ((7,), (3, 4)):
        w = rng.uniform(-1.5, 1.5, shape)
        assert check_grads(lambda w: B.dorefa_weights(w, bits=4), w)      # through the max too


def test_pact_and_dorefa_modules():
    config = BBConfig(quantizer="pact", **FIXED)
    act = PACTQuantizer("activation", None, config, 4, np.float64)
    act(Tensor(np.abs(np.random.default_rng(0).standard_normal((2, 8)))))
    assert float(act.clip_level.data) == B.PACT_ALPHA_INIT == 10.0 and act.signed is False
    assert np.isclose(float(act.alpha_penalty().data), 0.5 * 2e-4 * 100)
    w = np.random.default_rng(1).uniform(-0.2, 0.2, (6, 5))
    dorefa = DoReFaQuantizer("weight", 6, config, 4, np.float64)
    out = dorefa(Tensor(w)).data
    np.testing.assert_allclose(out, np.abs(w).max() * B.dorefa_weights(w, bits=4).data)
    assert dorefa.beta is None and not dorefa.has_range
    paper = DoReFaQuantizer("weight", 6, config.with_(dorefa_scale="none"), 4, np.float64)
    np.testing.assert_allclose(paper(Tensor(w)).data, B.dorefa_weights(w, bits=4).data)
    with pytest.raises(ValueError, match="PACT quantizes activations"):
        PACTQuantizer("weight", 6, config, 4)


def test_the_primitives_are_in_the_gradient_check_registry():
    for name in ("lsq_quantize", "pact_quantize"):
        assert name in PRIMITIVES and name in ORACLES
        case = make_case(name, np.random.default_rng(0), (3, 4), False)
        assert case.argnums == (0, 1)


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("changes, says", [
    ({"quantizer": "lsq"}, "add --fixed-bits W/A"),
    ({"quantizer": "pact", "learn_bits": False, "weight_bits": 4, "act_bits": 4},
     "add --fixed-bits W/A"),                                        # pruning still on
    ({"quantizer": "sgd"}, "quantizer must be one of bayesian_bits, lsq, pact"),
    ({"io_bits": 8}, "io_bits .* needs fixed bit widths"),
    ({"io_bits": 3, **FIXED}, "io_bits must be one of"),
    ({"pact_alpha_decay": -1.0}, "pact_alpha_decay must be a finite number ≥ 0"),
    ({"dorefa_scale": "max"}, "dorefa_scale must be one of init_max, none"),
])
def test_config_errors_are_one_line(changes, says):
    with pytest.raises(UsageError, match=says) as exc:
        BBConfig(**changes)
    assert "\n" not in str(exc.value)


def test_cli_names_the_missing_fixed_bits(capsys):
    assert main(["train", "--quantizer", "lsq", "--epochs", "1"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert len(err) == 1 and err[0].startswith("bbits-ref: --quantizer: the lsq quantizer")
    assert "--fixed-bits" in err[0]


def test_the_torch_engine_refuses_the_baselines():
    pytest.importorskip("torch")
    for changes in ({"quantizer": "lsq"}, {"io_bits": 8}):
        config = TrainConfig(train_limit=8, test_limit=8, epochs=1).replace(**FIXED, **changes)
        with pytest.raises(UsageError, match="numpy engine only: use --engine numpy"):
            Trainer(config, progress=False, verbose=False, engine="torch")


def test_io_bits_sets_the_first_and_last_layers():
    model = lenet5(BBConfig(quantizer="lsq", io_bits=8, **FIXED))
    bits = {n: q.fixed_bits for n, q in model.quantizers()}
    assert bits == {"conv1.weight_quantizer": 8, "conv1.act_quantizer": 4,
                    "conv2.weight_quantizer": 4, "conv2.act_quantizer": 4,
                    "fc1.weight_quantizer": 4, "fc1.act_quantizer": 8,
                    "fc2.weight_quantizer": 8}
    model.initialize(np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32),
                     np.random.default_rng(0))
    w = model.conv1.weight.data
    assert np.isclose(float(model.conv1.weight_quantizer.step_size.data),
                      2 * np.abs(w).mean() / np.sqrt(127), rtol=1e-6)      # 8-bit Q_P = 127


# --------------------------------------------------------------------------- training runs

def expected_relative_bops(w, a, io):
    """§5.1 by hand: first layer io-bit weights on the 8-bit input; last layer io-bit weights fed
    by io-bit activations; the middle layers w/a."""
    c1, c2, f1, f2 = LENET5_MACS
    used = c1 * io * 8 + c2 * w * a + f1 * w * a + f2 * io * io
    return 100.0 * used / (sum(LENET5_MACS) * 32 * 32)


@pytest.mark.parametrize("quantizer", ["lsq", "pact"])
def test_a_short_cli_run_writes_the_run_folder(quantizer, tmp_path, capsys):
    out = tmp_path / quantizer
    assert main(["train", "--quantizer", quantizer, *RUN, "--epochs", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert np.isclose(summary["relative_bops"], expected_relative_bops(4, 4, 8))
    assert np.isclose(summary["relative_bops"], 2.0743, atol=1e-4)
    assert [(l["w_bits"], l["a_bits"]) for l in summary["layers"]] == [(8, 8), (4, 4), (4, 4),
                                                                     (8, 8)]
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert (config.method.quantizer, config.method.io_bits, config.mu) == (quantizer, 8, 0.0)
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["kind"] == "epoch"
    assert history[-1]["relative_bops"] == summary["relative_bops"]
    assert (out / "figures" / "training_curves.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert f"{summary['relative_bops']:.4f}%" in capsys.readouterr().out
    (out / "figures" / "training_curves.png").unlink()
    assert main(["figures", str(out)]) == 0
    assert (out / "figures" / "training_curves.png").stat().st_size > 1000
    model_state, _, _ = load_checkpoint(out / "checkpoint.npz")
    ranges = sorted(k for k in model_state if k.endswith(".beta"))
    if quantizer == "lsq":       # a step size per tensor
        assert len(ranges) == 7
    else:                        # α per activation; DoReFa weights learn no range
        assert ranges == ["conv1.act_quantizer.beta", "conv2.act_quantizer.beta",
                          "fc1.act_quantizer.beta"]
        assert all(float(model_state[k]) < B.PACT_ALPHA_INIT for k in ranges)   # penalty at μ = 0


def test_a_resumed_pact_run_equals_the_uninterrupted_one(tmp_path):
    config = TrainConfig(train_limit=128, test_limit=64, batch_size=64, epochs=2).replace(
        **FIXED, quantizer="pact", io_bits=8, mu=0.0)
    whole = Trainer(config, out_dir=tmp_path / "whole", progress=False, verbose=False)
    whole.fit()
    part = tmp_path / "part"
    Trainer(config, out_dir=part, progress=False, verbose=False).fit(stop_after=1)
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    a, _, meta_a = load_checkpoint(part / "checkpoint.npz")
    b, _, meta_b = load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    assert a.keys() == b.keys() and "conv2.weight_quantizer.weight_scale" in a
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert meta_a["history"] == meta_b["history"]


# --------------------------------------------------------------------------- sweep names

def test_sweep_baseline_names():
    assert experiments.baseline_changes("lsq-w4a4") == {**FIXED, "mu": 0.0, "quantizer": "lsq",
                                                        "io_bits": 8}
    assert experiments.baseline_changes("pact-w4a4")["quantizer"] == "pact"
    assert experiments.baseline_changes("pact-w4a4")["io_bits"] == 8
    assert experiments.baseline_changes("w4a4-io8") == {**FIXED, "mu": 0.0, "io_bits": 8}
    assert "io_bits" not in experiments.baseline_changes("w4a4")
    assert experiments.baseline_changes("lsq-w4a4-io4")["io_bits"] == 4
    members = experiments.sweep_members(TrainConfig(), [], baselines=["lsq-w4a4", "pact-w4a4",
                                                                      "w4a4-io8"])
    assert [m.label for m in members] == ["lsq-w4a4", "pact-w4a4", "w4a4-io8"]
    assert [m.config.method.quantizer for m in members] == ["lsq", "pact", "bayesian_bits"]
    with pytest.raises(UsageError, match="unknown baseline 'lsq-4a4'"):
        experiments.baseline_changes("lsq-4a4")
    with pytest.raises(UsageError, match="baseline 'pact-w3a4'"):
        experiments.baseline_config(TrainConfig(), "pact-w3a4")

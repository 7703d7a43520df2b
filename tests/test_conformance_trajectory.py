"""The trajectory cases (``lenet5_train/…``): their inputs, the float32 drift their tolerances rest
on, the mutants they exist for, and the official adapter driving the (stand-in) official LeNet-5.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from bbits_ref.autograd.nn import Parameter
from bbits_ref.autograd.optim import Adam
from bbits_ref.conformance import build_cases, check_in_process, compare, export, load, mutants
from bbits_ref.conformance.families import trajectory
from bbits_ref.conformance.families._common import hc_kinks
from bbits_ref.conformance.reference import ReferenceAdapter

FAKE_OFFICIAL = Path(__file__).resolve().parent / "fake_official"
TRAJECTORIES = ("lenet5_train/mnist_recipe", "lenet5_train/mixed_gates")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite")
    export(directory, build_cases())
    return load(directory)


@pytest.fixture(scope="module")
def cases(loaded):
    return {c.name: c for c in loaded.cases if c.method == "lenet5_train"}


def test_cases_hold_the_recipe_and_fixed_data(cases):
    assert set(cases) == set(TRAJECTORIES)
    for case in cases.values():
        i = case.inputs
        assert i["x"].shape == (trajectory.STEPS, trajectory.BATCH, 1, 28, 28) == (20, 32, 1, 28, 28)
        assert i["y"].shape == (20, 32) and i["mu"] == 0.1
        assert (i["lr"], i["beta1"], i["beta2"], i["eps"]) == (1e-3, 0.9, 0.999, 1e-8)
        assert len({i["x"][k].tobytes() for k in range(20)}) == 20        # a new batch per step
        assert i["noise"]["fc1.weight_quantizer"]["prune"].shape == (20, 512)
        assert i["noise"]["fc2.weight_quantizer"]["chain"].shape == (20, 4)
        assert len(case.expected["losses"]) == 20
        assert np.all(np.diff(case.tolerance("losses")[0]) >= 0)          # drift grows
    recipe = cases["lenet5_train/mnist_recipe"].inputs
    assert np.all(recipe["params"]["fc1.weight_quantizer.prune_logits"] == 6.0)
    for name, parts in recipe["noise"].items():           # every sample of a logit 6 is 1
        for key, u in parts.items():
            logits = recipe["params"][f"{name}.{'prune' if key == 'prune' else 'gate'}_logits"]
            on = np.broadcast_to(logits == 6.0, u.shape)
            bar = hc_kinks(np.broadcast_to(logits, u.shape), u)
            assert np.all(u >= 0.05) and np.all(bar[on] > 0)
    mixed = cases["lenet5_train/mixed_gates"].inputs["params"]
    assert np.float32(mixed["conv2.weight_quantizer.gate_logits"][1]) == np.float32(-1.9985)
    assert mixed["conv2.act_quantizer.gate_logits"][1] == -2.0


def test_per_step_tolerances():
    # an atol per index of the first axis: each step is held to its own tolerance
    zeros, atol = np.zeros((3, 2)), (1e-3, 1.0, 1e-3)
    assert compare("losses", [[0, 0], [0.5, 0], [0, 1e-4]], zeros, atol, 0.0).ok
    bad = compare("losses", [[2e-3, 0], [0.5, 0], [0, 0]], zeros, atol, 0.0)
    assert not bad.ok and "at index (0, 0)" in bad.message and bad.worst_abs == 0.5
    assert not compare("losses", [0, 0], np.zeros(2), atol, 0.0).ok          # wrong length


def test_mixed_gates_crosses_the_hard_cut_during_training():
    # the reference, step by step: conv2.weight's φ8 starts above −2 and is below it after step 2
    case = [c for c in trajectory.cases() if c.name == "lenet5_train/mixed_gates"][0]
    i = dict(case.inputs)
    two = {**i, "x": i["x"][:2], "y": i["y"][:2],
           "noise": {q: {k: v[:2] for k, v in p.items()} for q, p in i["noise"].items()}}
    after = ReferenceAdapter().lenet5_train(**two)["params"]
    assert i["params"]["conv2.weight_quantizer.gate_logits"][1] > -2.0
    assert after["conv2.weight_quantizer.gate_logits"][1] < -2.0 - 2e-4   # clear of float32 noise


@pytest.mark.slow
def test_float32_drift_is_well_inside_the_tolerances():
    # the measurement the tolerances were set from, repeated: the float32 reference (and the
    # PyTorch port when torch is installed) must stay ≥ 5× inside every tolerance
    adapters = [ReferenceAdapter(np.float32)]
    try:
        from bbits_ref.torch_impl.adapter import adapter as torch_adapter
        adapters.append(torch_adapter)
    except ImportError:
        pass
    for adapter in adapters:
        for label, tol in trajectory.TOLERANCES.items():
            drift = trajectory.measure_drift(adapter, labels=(label,))
            assert np.all(5 * drift["losses_by_step"] <= np.array(tol["losses"][0])), \
                (adapter.name, label, drift["losses_by_step"])
            for group, key in (("weights", "params/*.weight"), ("gates", "params/*.gate_logits"),
                               ("ranges", "params/*.beta")):
                assert 5 * drift[group] <= tol[key][0], (adapter.name, label, group, drift)
            assert drift["losses_by_step"][-1] > 0          # float32 does differ: not a tautology


# --------------------------------------------------------------------------- the mutants

def _failures(loaded, adapter):
    report = check_in_process(loaded, adapter, select=["lenet5_*"])
    return set(report.failed), {r.name: {o.name for o in r.outputs if not o.ok}
                                for r in report.results}


def test_regularizer_per_example_fails_every_lenet5_case(loaded):
    failed, outputs = _failures(loaded, mutants.RegularizerPerExample())
    assert failed == {"lenet5_step/mixed_gates", *TRAJECTORIES}
    assert "losses" in outputs["lenet5_train/mixed_gates"]


def test_swapped_macs_fail_every_lenet5_case(loaded):
    failed, outputs = _failures(loaded, mutants.SwappedMacs())
    assert failed == {"lenet5_step/mixed_gates", *TRAJECTORIES}
    assert "losses" in outputs["lenet5_train/mnist_recipe"]


def test_adam_epsilon_placement_fails_the_recipe_trajectory(loaded):
    # only training is affected: the single step passes, the recipe trajectory fails through
    # its gate logits, whose gradients (the regularizer's alone) are comparable to ε
    failed, outputs = _failures(loaded, mutants.AdamEpsBeforeBiasCorrection())
    assert failed == {"lenet5_train/mnist_recipe"}
    bad = outputs["lenet5_train/mnist_recipe"]
    assert bad and all(name.endswith("_logits") for name in bad)
    assert "params/fc1.weight_quantizer.prune_logits" in bad


def test_the_adam_mutant_differs_from_adam_only_by_where_eps_goes():
    # with ε = 0 both placements are the same formula, with ε > 0 and a tiny gradient they differ
    rng = np.random.default_rng(0)
    grads = [rng.normal(0, 1e-7, 6), rng.normal(0, 1e-7, 6)]
    results = {}
    placements = ("after_bias_correction", "before_bias_correction")      # ≥ 1.5, 1.1 (the mutant)
    for eps in (0.0, 1e-8):
        for placement in placements:
            p = Parameter(np.zeros(6))
            opt = Adam([p], lr=1e-3, eps=eps, eps_placement=placement)
            for g in grads * 3:
                p.grad = g.copy()
                opt.step()
            results[eps, placement] = p.data.copy()
    assert np.allclose(results[0.0, placements[0]], results[0.0, placements[1]], rtol=1e-12, atol=0)
    assert np.max(np.abs(results[1e-8, placements[0]] - results[1e-8, placements[1]])) > 1e-4
    optimizer = mutants.AdamEpsBeforeBiasCorrection()._optimizer([Parameter(np.zeros(1))])
    assert optimizer.eps_placement == "before_bias_correction"


def test_mutants_leave_the_other_cases_alone(loaded):
    # the three training mistakes change only the LeNet-5 methods
    for cls in (mutants.RegularizerPerExample, mutants.SwappedMacs,
                mutants.AdamEpsBeforeBiasCorrection):
        report = check_in_process(loaded, cls(), select=["regularizer/*", "relative_bops/lenet5*"])
        assert report.ok, str(report)


# --------------------------------------------------------------------------- the official adapter

@pytest.fixture(scope="module")
def official():
    pytest.importorskip("torch")
    from bbits_ref.conformance.official import OfficialAdapter
    return OfficialAdapter(FAKE_OFFICIAL)


def test_official_lenet5_runs_in_the_documented_order_and_restores_everything(loaded, official):
    import torch
    saved = (torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to, torch.nn.Module.to)
    path = list(sys.path)
    report = check_in_process(loaded, official, select=["lenet5_step/*", "relative_bops/lenet5/*"])
    assert report.ok and not report.skipped, str(report)
    assert max(r.worst_rel for r in report.results) < 1e-12         # float64: the same numbers
    assert (torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to, torch.nn.Module.to) == saved
    assert sys.path == path
    assert not [m for m in sys.modules if m.split(".")[0] in ("torchvision", "benchmarks")]
    lenet5 = official.lenet5()
    assert lenet5.stubbed == ["torchvision"]                  # not installed here: stood in for
    st = lenet5.straight_through
    assert st.BayesianBitsQuantizer.cuda is True              # the class attribute is restored
    assert "l0_sample" in st.__dict__ and st.l0_sample.__name__ == "l0_sample"
    # the stand-in recorded the order in which its quantizers asked for samples (§9.1): after
    # the initialisation pass (17 samples: φ16 = φ32 = −6 are cut), the step's, in forward order,
    # each quantizer z2 first, stopping before the first logit ≤ −2
    st.HC_CALLS.clear()
    case = [c for c in loaded.cases if c.name == "lenet5_step/mixed_gates"][0]
    official.lenet5_step(**case.inputs)
    expected = [("conv1.w", "gamma_2"), ("conv1.w", "gamma_4"), ("conv1.w", "gamma_8"),
                ("conv1.a", "gamma_4"),
                ("conv2.w", "gamma_2"), ("conv2.w", "gamma_4"), ("conv2.w", "gamma_8"),
                ("conv2.a", "gamma_4"),                             # φ8 = −2: cut, not sampled
                ("fc1.w", "gamma_2"), ("fc1.w", "gamma_4"), ("fc1.w", "gamma_8"),
                ("fc1.a", "gamma_4"),
                ("fc2.w", "gamma_4"), ("fc2.w", "gamma_8")]
    assert len(st.HC_CALLS) == 17 + len(expected)
    assert st.HC_CALLS[17:] == expected


def test_official_lenet5_trajectories_pass_in_float32_too(loaded):
    pytest.importorskip("torch")
    from bbits_ref.conformance import check
    from bbits_ref.conformance.official import OfficialAdapter
    report = check(loaded, OfficialAdapter(FAKE_OFFICIAL, "float32"), select=["lenet5_train/*"])
    assert report.ok, str(report)
    assert max(r.worst_abs for r in report.results) > 1e-6    # float32 really differs


def _clone(tmp_path, path, old, new):
    import shutil
    clone = tmp_path / "clone"
    shutil.copytree(FAKE_OFFICIAL, clone)
    file = clone / path
    source = file.read_text()
    assert old in source
    file.write_text(source.replace(old, new))
    return clone


def test_official_adapter_reports_noise_drawn_in_another_order(loaded, tmp_path):
    pytest.importorskip("torch")
    from bbits_ref.conformance.official import OfficialAdapter
    st = "anonymized_compression_package/quantization/straight_through.py"
    clone = _clone(tmp_path, st, '["gamma_2"] if self.gamma_2 is not None else []) + [\n'
                   '            "gamma_4", "gamma_8", "gamma_16", "gamma_32"]',
                   '[]) + ["gamma_4", "gamma_8", "gamma_16", "gamma_32"] + (\n'
                   '            ["gamma_2"] if self.gamma_2 is not None else [])')
    report = check_in_process(loaded, OfficialAdapter(clone), select=["lenet5_step/*"])
    assert report.errors == ["lenet5_step/mixed_gates"]
    assert "by the documented order (§9.1) the next ones are for conv1.weight_quantizer " \
           "gamma_2" in report.results[0].message


def test_official_adapter_sees_wrong_mac_weights(loaded, tmp_path):
    pytest.importorskip("torch")
    from bbits_ref.conformance.official import OfficialAdapter
    clone = _clone(tmp_path, "benchmarks/image_net/gated_mixed_precision.py",
                   "top = max(per_layer_macs.values())", "top = sum(per_layer_macs.values())")
    report = check_in_process(loaded, OfficialAdapter(clone),
                              select=["lenet5_*", "relative_bops/lenet5/*"])
    assert set(report.failed) == {"lenet5_step/mixed_gates", *TRAJECTORIES}
    assert all(r.verdict == "pass" for r in report.results if r.name.startswith("relative_bops"))
    assert math.isfinite(report.results[0].worst_abs)

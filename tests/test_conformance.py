"""The conformance suite: export, load, check, the CLI, mutated adapters, the official adapter."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bbits_ref.conformance import (SCHEMA_VERSION, SUITE_VERSION, SuiteError, build_cases, check,
                                   export, load, load_adapter)
from bbits_ref.conformance import cli, mutants, suite
from bbits_ref.conformance.checker import AdapterImportError, compare
from bbits_ref.conformance.reference import ReferenceAdapter
from bbits_ref.method.quantizer import step_sizes

ROOT = Path(__file__).resolve().parents[1]
FAKE_OFFICIAL = Path(__file__).resolve().parent / "fake_official"


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite")
    export(directory)
    return directory


@pytest.fixture(scope="module")
def loaded(suite_dir):
    return load(suite_dir)


def names(loaded, prefix=""):
    return {c.name for c in loaded.cases if c.name.startswith(prefix)}


# --------------------------------------------------------------------------- the reference

def test_reference_adapter_passes_every_case(loaded):
    report = check(loaded, ReferenceAdapter())
    assert report.ok and not report.skipped, str(report)
    assert report.summary == f"{len(loaded.cases)} passed, 0 failed, 0 skipped"
    assert all(r.worst_abs == 0.0 for r in report.results)      # the suite *is* the reference


@pytest.mark.parametrize("dtype, clip", [(np.float32, "official"), (np.float64, "numpy"),
                                         (np.float32, "numpy")])
def test_float32_and_numpy_clip_implementations_can_pass(loaded, dtype, clip):
    # float32 arithmetic and the np.clip formula change values by ulps: the tolerances and the
    # exact tie cases must absorb that (spec §2.3a).  Not a tautology: float32 differs.
    report = check(loaded, ReferenceAdapter(dtype, clip))
    assert report.ok, str(report)
    if dtype == np.float32:
        assert max(r.worst_abs for r in report.results) > 0


def test_suite_covers_what_the_brief_asks(loaded):
    methods = {c.method for c in loaded.cases}
    assert methods == set(suite.METHODS)
    quantize = [c for c in loaded.cases if c.method == "quantize"]
    assert {c.inputs["signed"] for c in quantize} == {True, False}
    for bits in (2, 4, 8, 16, 32):
        assert f"quantize/signed/{bits}bit" in names(loaded)
        assert f"quantize/unsigned/{bits}bit" in names(loaded)
    assert any(c.inputs["z2"] is not None for c in quantize)
    assert any(c.inputs[g] == 0.0 for c in quantize for g in ("z4", "z8", "z16"))
    step = [c for c in loaded.cases if c.method == "lenet5_step"][0]
    assert step.inputs["x"].shape == (8, 1, 28, 28) and step.inputs["mu"] == 0.1
    logits = step.inputs["params"]
    assert logits["conv2.act_quantizer.gate_logits"][1] == -2.0            # hard cut, exactly
    assert np.float32(logits["conv2.weight_quantizer.gate_logits"][1]) == np.float32(-1.999)


def test_every_input_is_float32_representable(loaded):
    for case in loaded.cases:
        for key, value in suite.flatten(case.inputs).items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.array_equal(value.astype(np.float32).astype(np.float64), value), \
                    (case.name, key)


def test_tie_cases_hold_exact_ties(loaded):
    ties = [c for c in loaded.cases if c.name.startswith("quantize/ties/")]
    assert len(ties) == 8
    for case in ties:
        bits = int(case.name.split("_")[-1].split("bit")[0]) if "fractional" not in case.name \
            else 4
        s_b = step_sizes(case.inputs["beta"], case.inputs["signed"])[(2, 4, 8, 16).index(bits)]
        frac = np.abs(case.inputs["x"] / s_b) % 1.0
        assert np.sum(frac == 0.5) >= 2, case.name


def test_expected_values_match_the_spec(loaded):
    by = {c.name: c for c in loaded.cases}
    # spec §11.4 golden vectors
    golden = {
        "quantize/golden/signed_z4_0_z8_0": [-2 / 3, -2 / 3, 0, 0, 0, 0, 2 / 3, 2 / 3, 2 / 3],
        "quantize/golden/signed_z4_0p5_z8_0p8": [-0.825098, -0.587451, -0.054118, 0, 0.041569,
                                                 0.130196, 0.581176, 0.825098, 0.825098],
        "quantize/golden/unsigned_z4_1_z8_1": [0, 0, 0, 0, 0.070588, 0.258824, 0.490196, 1, 1],
    }
    for name, values in golden.items():
        assert np.allclose(by[name].expected["x_q"], values, atol=2e-6), name
    inside = by["quantize/golden/unsigned_z4_0_z8_0"].expected["grad_x"] != 0   # g·1[lo<x<hi]
    assert np.array_equal(inside, [0, 0, 0, 0, 1, 1, 1, 0, 0])     # the exact 0 is saturated
    # spec §3.3 reference values of π(φ)
    case = by["prob_nonzero/hard_concrete"]
    pi = dict(zip(case.inputs["logits"], case.expected["result"]))
    assert abs(pi[6.0] - 0.99950) < 1e-5 and abs(pi[0.0] - 0.8318) < 1e-4
    assert abs(pi[-2.0] - 0.4010) < 1e-4 and abs(pi[-6.0] - 0.01211) < 1e-5
    # spec §5.1 table
    table = {"lenet5": {(2, 32): 5.744, (8, 8): 6.25, (4, 4): 1.731, (2, 2): 0.517},
             "vgg7": {(2, 32): 6.223, (4, 8): 3.125, (2, 4): 0.786, (2, 2): 0.397}}
    for model, rows in table.items():
        for (w, a), value in rows.items():
            got = float(by[f"relative_bops/{model}/uniform_w{w}a{a}"].expected["result"])
            assert abs(got - value) < 6e-4, (model, w, a, got)


def test_build_cases_is_deterministic(loaded):
    again = {c.name: c for c in build_cases()}
    assert set(again) == names(loaded)
    for case in loaded.cases:
        for key, value in case.expected.items():
            other = again[case.name].expected[key]
            assert (value is None and other is None) or np.array_equal(value, other), \
                (case.name, key)


# --------------------------------------------------------------------------- files

def test_manifest_schema(suite_dir, loaded):
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION == 1
    assert manifest["suite_version"] == SUITE_VERSION == "1.0"
    assert manifest["created_by"].startswith("bbits_ref ")
    assert "atol + rtol" in manifest["comparison"]
    required = {"name", "file", "method", "kwargs", "dtypes", "atol", "rtol", "note"}
    files = sorted(p.name for p in suite_dir.glob("*.npz"))
    assert files == sorted(e["file"] for e in manifest["cases"])
    for entry in manifest["cases"]:
        assert required <= set(entry), entry["name"]
        assert entry["method"] in suite.METHODS and entry["args"] == list(
            suite.METHODS[entry["method"]])
        assert entry["atol"] >= 0 and entry["rtol"] >= 0 and entry["note"]
        with np.load(suite_dir / entry["file"], allow_pickle=False) as npz:
            assert {k: npz[k].dtype.name for k in npz.files} == entry["dtypes"]
        assert any(k.startswith("expected/") for k in entry["dtypes"]) or entry["none_outputs"]
        for value in entry["kwargs"].values():
            assert value is None or isinstance(value, (bool, int, float, str))


def test_export_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SuiteError, match="not empty"):
        export(tmp_path, cases=[])


def _copy_suite(suite_dir, tmp_path):
    target = tmp_path / "suite"
    shutil.copytree(suite_dir, target)
    return target, json.loads((target / "manifest.json").read_text())


def test_corrupted_case_file_is_reported(suite_dir, tmp_path):
    target, manifest = _copy_suite(suite_dir, tmp_path)
    entry = manifest["cases"][3]
    path = target / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SuiteError, match=f"case {entry['name']}.*corrupted.*export"):
        load(target)


def test_missing_case_file_is_reported(suite_dir, tmp_path):
    target, manifest = _copy_suite(suite_dir, tmp_path)
    (target / manifest["cases"][0]["file"]).unlink()
    with pytest.raises(SuiteError, match="is missing"):
        load(target)


def test_array_list_mismatch_is_reported(suite_dir, tmp_path):
    target, manifest = _copy_suite(suite_dir, tmp_path)
    entry = manifest["cases"][0]
    np.savez(target / entry["file"], **{"input/x": np.zeros(3)})
    entry["sha256"] = suite._sha256(target / entry["file"])
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SuiteError, match="the manifest lists"):
        load(target)


def test_wrong_schema_version_and_missing_manifest(suite_dir, tmp_path):
    target, manifest = _copy_suite(suite_dir, tmp_path)
    manifest["schema_version"] = 99
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SuiteError, match="schema version 99.*reads schema version 1"):
        load(target)
    (target / "manifest.json").write_text("{not json")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load(target)
    (target / "manifest.json").unlink()
    with pytest.raises(SuiteError, match="no manifest.json"):
        load(target)
    with pytest.raises(SuiteError, match="does not exist"):
        load(tmp_path / "nowhere")


# --------------------------------------------------------------------------- checking

class OnlyQuantize:
    name = "only quantize"

    def __init__(self):
        self.reference = ReferenceAdapter()

    def quantize(self, *args, **kwargs):
        return self.reference.quantize(*args, **kwargs)

    def prob_nonzero(self, logits, *, gate):
        if gate == "gumbel_softmax":
            raise NotImplementedError("no Gumbel gate here")
        return self.reference.prob_nonzero(logits, gate=gate)

    def regularizer(self, *args, **kwargs):
        raise RuntimeError("boom")

    def chain_gates_eval(self, chain_logits, *, hard_cut):
        return np.ones(3)                       # wrong shape


def test_missing_methods_are_skipped_and_errors_fail(loaded):
    report = check(loaded, OnlyQuantize())
    assert set(report.passed) == names(loaded, "quantize/") | {"prob_nonzero/hard_concrete"}
    assert set(report.failed) == names(loaded, "regularizer/") | names(loaded, "chain_gates_eval/")
    assert "prob_nonzero/gumbel_softmax" in report.skipped
    assert names(loaded, "lenet5_step/") <= set(report.skipped)
    text = str(report)
    assert "RuntimeError: boom" in text and "shape (3,), expected (4,)" in text
    assert "skipped (not implemented: no Gumbel gate here)" in text
    assert text.splitlines()[-1] == report.summary


def test_compare_metric_and_none_outputs():
    b = np.array([1.0, -4.0])
    r = compare("y", b + [0.0, 3.9e-3], b, 0.0, 1e-3)        # 3.9e-3 <= 1e-3 * max|b| = 4e-3
    assert r.ok and r.worst_abs == pytest.approx(3.9e-3) and r.worst_rel == pytest.approx(9.75e-4)
    assert not compare("y", b + [0.0, 5e-3], b, 0.0, 1e-3).ok
    assert compare("g", None, None, 0, 0).ok and compare("g", np.zeros(2), None, 0, 0).ok
    assert not compare("g", np.ones(2), None, 0, 0).ok
    assert not compare("g", None, b, 1, 1).ok
    assert not compare("g", [np.nan, 0.0], b, 1e9, 0).ok


def test_select_runs_matching_cases_only(loaded):
    report = check(loaded, ReferenceAdapter(), select=["chain_gates_eval/*"])
    assert {r.name for r in report.results} == names(loaded, "chain_gates_eval/")
    with pytest.raises(ValueError, match="no case matches"):
        check(loaded, ReferenceAdapter(), select="nothing*")


# --------------------------------------------------------------------------- mutants

def _quantize_with_z4(case):
    return case.method == "quantize" and case.inputs["z4"] not in (None, 0.0)


def test_wrong_denominator_fails_every_case_above_2_bits(loaded):
    report = check(loaded, mutants.WrongDenominator())
    expected = {c.name for c in loaded.cases if _quantize_with_z4(c)} | {"lenet5_step/mixed_gates"}
    assert set(report.failed) == expected
    assert {"quantize/signed/4bit", "quantize/unsigned/32bit", "quantize/ties/signed_8bit",
            "quantize/golden/signed_z4_1_z8_1"} <= expected
    assert "quantize/signed/2bit" in report.passed          # no residual: nothing to get wrong


def test_threshold_one_half_fails_the_threshold_cases(loaded):
    report = check(loaded, mutants.HalfThreshold())
    assert set(report.failed) == {"deterministic_gates/hard_concrete",
                                  "deterministic_gates/hard_concrete_at_threshold",
                                  "chain_gates_eval/just_below_threshold",
                                  "chain_gates_eval/between_thresholds"}


def test_own_noise_fails_every_sampling_case(loaded):
    report = check(loaded, mutants.OwnNoise())
    assert set(report.failed) == (names(loaded, "hard_concrete/") | names(loaded, "gumbel_softmax/")
                                  | {"lenet5_step/mixed_gates"})


def test_missing_straight_through_fails_every_quantize_case(loaded):
    report = check(loaded, mutants.NoStraightThrough())
    assert set(report.failed) == names(loaded, "quantize/")
    failures = {r.name: {o.name for o in r.outputs if not o.ok} for r in report.results}
    assert "grad_x" in failures["quantize/signed/8bit"]


# --------------------------------------------------------------------------- CLI

def test_cli_export_and_check(tmp_path, suite_dir, capsys):
    assert cli.main(["check", str(suite_dir), "--impl",
                     "bbits_ref.conformance.reference:ReferenceAdapter"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith(f"{len(load(suite_dir).cases)} passed, 0 failed, 0 skipped")
    assert cli.main(["check", str(suite_dir), "--impl", "bbits_ref.conformance.mutants:OwnNoise",
                     "-k", "hard_concrete/*"]) == 1
    assert "0 passed, 2 failed, 0 skipped" in capsys.readouterr().out
    assert cli.main(["check", str(suite_dir), "--impl", "no_such_module:adapter"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    assert cli.main(["check", str(tmp_path / "missing"), "--impl",
                     "bbits_ref.conformance.reference:adapter"]) == 2
    with pytest.raises(SystemExit) as exc:                  # --impl is required: usage error
        cli.main(["check", str(suite_dir)])
    assert exc.value.code == 2


def test_cli_subcommand_wiring(suite_dir):
    parser = argparse.ArgumentParser(prog="bbits-ref")
    cli.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["conformance", "check", str(suite_dir), "--impl",
                              "bbits_ref.conformance.reference:adapter", "-k", "regularizer/*"])
    assert args.func(args) == 0


def test_cli_export(tmp_path, loaded, monkeypatch, capsys):
    # the full export is the module fixture; here only the wiring (with two cases, for speed)
    monkeypatch.setattr(suite, "build_cases", lambda: build_cases_subset(loaded))
    assert cli.main(["export", str(tmp_path / "s")]) == 0
    assert "wrote the conformance suite" in capsys.readouterr().out
    assert [c.name for c in load(tmp_path / "s").cases] == [c.name for c in loaded.cases[:2]]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert cli.main(["export", str(tmp_path / "foreign")]) == 2


def build_cases_subset(loaded):
    return loaded.cases[:2]


def test_python_dash_m_entry_point(suite_dir):
    done = subprocess.run([sys.executable, "-m", "bbits_ref.conformance", "check", str(suite_dir),
                           "--impl", "bbits_ref.conformance.mutants:HalfThreshold",
                           "-k", "chain_gates_eval/*"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "7 passed, 2 failed, 0 skipped"


def test_load_adapter_forms():
    assert isinstance(load_adapter("bbits_ref.conformance.reference:ReferenceAdapter"),
                      ReferenceAdapter)
    from bbits_ref.conformance import reference
    assert load_adapter("bbits_ref.conformance.reference:adapter") is reference.adapter
    with pytest.raises(AdapterImportError, match="MODULE:ATTR"):
        load_adapter("bbits_ref.conformance.reference")
    with pytest.raises(AdapterImportError, match="has no attribute 'nope'"):
        load_adapter("bbits_ref.conformance.reference:nope")
    with pytest.raises(AdapterImportError, match="none of the protocol methods"):
        load_adapter("math:pi")


# --------------------------------------------------------------------------- the official adapter

def test_official_adapter_runs_the_named_module(loaded):
    pytest.importorskip("torch")
    from bbits_ref.conformance.official import OfficialAdapter
    adapter = OfficialAdapter(FAKE_OFFICIAL)
    module = adapter.module
    assert Path(module.__file__).is_relative_to(FAKE_OFFICIAL.resolve())
    assert module.BayesianBitsQuantizer.cuda is False       # patched before any construction
    module.BayesianBitsQuantizer()                          # so this works on a CPU
    before = dict(module.CALLS)
    report = check(loaded, adapter)
    assert report.ok, str(report)
    unsupported = (names(loaded, "gumbel_softmax/") | names(loaded, "relative_bops/")
                   | names(loaded, "lenet5_step/") | {"prob_nonzero/gumbel_softmax",
                                                      "deterministic_gates/gumbel_softmax"})
    assert set(report.skipped) == unsupported
    assert module.CALLS["recursive_quantization"] - before["recursive_quantization"] == len(
        names(loaded, "quantize/"))
    assert module.CALLS["hc_prob_pos"] > before["hc_prob_pos"]
    assert module.CALLS["l0_sample"] == 0
    with pytest.raises(RuntimeError, match="must not call the official l0_sample"):
        module.l0_sample(None, 2 / 3, 1.1, -0.1)
    assert check(loaded, OfficialAdapter(FAKE_OFFICIAL, "float32")).ok


def test_official_adapter_sees_a_bug_in_the_official_module(loaded, tmp_path):
    pytest.importorskip("torch")
    from bbits_ref.conformance.official import OfficialAdapter
    broken = tmp_path / "clone"
    shutil.copytree(FAKE_OFFICIAL, broken)
    path = broken / "anonymized_compression_package" / "quantization" / "straight_through.py"
    source = path.read_text()
    # round half away from zero instead of half to even
    path.write_text(source.replace("return torch.round(x)",
                                   "return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)"))
    report = check(loaded, OfficialAdapter(broken), select="quantize/*")
    assert set(report.failed) and set(report.failed) <= names(loaded, "quantize/ties/")
    assert "quantize/signed/8bit" in report.passed


def test_official_adapter_errors(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from bbits_ref.conformance import official
    with pytest.raises(official.OfficialCodeError, match="does not exist; clone it"):
        official.OfficialAdapter(tmp_path / "nowhere")
    with pytest.raises(official.OfficialCodeError, match="does not contain anonymized_comp"):
        official.OfficialAdapter(tmp_path)
    monkeypatch.delenv(official.ENV_VAR, raising=False)
    with pytest.raises(official.OfficialCodeError, match="set BBITS_OFFICIAL_REPO"):
        official.OfficialAdapter.from_env()
    with pytest.raises(AdapterImportError, match="set BBITS_OFFICIAL_REPO"):
        load_adapter("bbits_ref.conformance.official:adapter")
    monkeypatch.setenv(official.ENV_VAR, str(FAKE_OFFICIAL))
    adapter = load_adapter("bbits_ref.conformance.official:adapter")
    assert isinstance(adapter, official.OfficialAdapter)
    bad = tmp_path / "anonymized_compression_package" / "quantization"
    bad.mkdir(parents=True)
    (bad / "straight_through.py").write_text("raise ImportError('needs torch 1.1')\n")
    with pytest.raises(official.OfficialCodeError, match="importing the official .* failed"):
        official.OfficialAdapter(tmp_path)

"""The conformance suite's cases and verdicts: the reference passes, the mutants are caught.

Storage and integrity are in test_conformance_storage.py; the child process, the command line and
the CI reports in test_conformance_isolation.py.
"""
from __future__ import annotations

import ast
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bbits_ref.conformance import build_cases, check, check_in_process, export, load, mutants
from bbits_ref.conformance.protocol import CASE_IDS, METHODS, SUITE_VERSION, flatten
from bbits_ref.conformance.reference import ReferenceAdapter
from bbits_ref.conformance.storage import case_digest
from bbits_ref.method.quantizer import step_sizes

ROOT = Path(__file__).resolve().parents[1]
FAKE_OFFICIAL = Path(__file__).resolve().parent / "fake_official"


@pytest.fixture(scope="module")
def cases():
    return build_cases()


@pytest.fixture(scope="module")
def loaded(cases, tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite")
    export(directory, cases)
    return load(directory)


def names(loaded, prefix=""):
    return {c.name for c in loaded.cases if c.name.startswith(prefix)}


# --------------------------------------------------------------------------- the reference

def test_reference_adapter_passes_every_case(loaded):
    report = check(loaded, ReferenceAdapter())
    assert report.ok and not report.skipped, str(report)
    assert report.summary == f"{len(loaded.cases)} passed, 0 failed, 0 could not run, 0 skipped"
    assert all(r.worst_abs == 0.0 for r in report.results)      # the suite *is* the reference


@pytest.mark.parametrize("dtype, clip", [(np.float32, "official"), (np.float64, "numpy"),
                                         (np.float32, "numpy")])
def test_float32_and_numpy_clip_implementations_can_pass(loaded, dtype, clip):
    # float32 arithmetic and the np.clip formula change values by ulps: the tolerances and the
    # exact tie cases must absorb that (docs/method.md §2.3a).  Not a tautology: float32 differs.
    report = check(loaded, ReferenceAdapter(dtype, clip))
    assert report.ok, str(report)
    if dtype == np.float32:
        assert max(r.worst_abs for r in report.results) > 0


def test_suite_covers_what_the_brief_asks(loaded):
    methods = {c.method for c in loaded.cases}
    assert methods == set(METHODS)
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
        for key, value in flatten(case.inputs).items():
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
    # §11.4 golden vectors
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
    # §3.3 reference values of π(φ)
    case = by["prob_nonzero/hard_concrete"]
    pi = dict(zip(case.inputs["logits"], case.expected["result"]))
    assert abs(pi[6.0] - 0.99950) < 1e-5 and abs(pi[0.0] - 0.8318) < 1e-4
    assert abs(pi[-2.0] - 0.4010) < 1e-4 and abs(pi[-6.0] - 0.01211) < 1e-5
    # §5.1 table
    table = {"lenet5": {(2, 32): 5.744, (8, 8): 6.25, (4, 4): 1.731, (2, 2): 0.517},
             "vgg7": {(2, 32): 6.223, (4, 8): 3.125, (2, 4): 0.786, (2, 2): 0.397}}
    for model, rows in table.items():
        for (w, a), value in rows.items():
            got = float(by[f"relative_bops/{model}/uniform_w{w}a{a}"].expected["result"])
            assert abs(got - value) < 6e-4, (model, w, a, got)


def test_build_cases_is_deterministic_and_pinned(cases, loaded):
    # Digests of the whole built suite, taken before the suite module was split into families:
    # the split (and any later change) must leave every id, input and expected value bit for bit
    # as it was.  "meta" (notes, tolerances) was re-pinned when the notes changed "§" to "§".
    # The expected values are pinned for this platform's NumPy/BLAS; on another platform only
    # "lenet5_expected" (BLAS sums) may move in the last bits.  Suite 1.1 added the trajectory
    # cases and left the 1.0 cases as they were: those are pinned separately (their expected
    # values are BLAS sums over 20 steps, like "lenet5_expected").
    assert tuple(c.name for c in cases) == CASE_IDS[SUITE_VERSION]
    old = [c for c in cases if c.name in CASE_IDS["1.0"]]
    new = [c for c in cases if c.name not in CASE_IDS["1.0"]]
    assert [c.name for c in old] == list(CASE_IDS["1.0"])
    assert _digests(old) == PINNED_DIGESTS
    assert _digests(new, PINNED_DIGESTS_1_1) == PINNED_DIGESTS_1_1
    for case in loaded.cases:                           # and a load gives back the same cases
        assert case_digest(case) == case_digest(cases[CASE_IDS[SUITE_VERSION].index(case.name)])


PINNED_DIGESTS = {
    "meta": "1eca8ec78e88ce136866b62e9d68e7aafc04a99c7709cfccf1f47b10f13bd128",
    "inputs": "4a3d9ebb09709ceb4b0880ed659e82ea6727f232acf8008bd84d98dae8798fb5",
    "expected": "a912f5ef9ecb236dd7d03a0ad76efc31c6f549a6b1adfd078f05d1dfebea0de1",
    "lenet5_expected": "5bf48072019e61997257e6c44728a2d2cfe21e37e2991a7b91de475605f5441c",
}
#: the cases suite 1.1 added (lenet5_train/…); their expected values go to "lenet5_expected"
PINNED_DIGESTS_1_1 = {
    "meta": "eb66fec9c697d0a20c444e35b77e3e79ac46b67a0aac878cd08e85df46c17d06",
    "inputs": "8c5b221831d6711160b839b17c93687a8b524867e509303a9c58a6b62812a9d2",
    "lenet5_expected": "58218d9bbe2c40907b821e6c75715aa357afc8c1974b82bcfc8953303ab7a3f8",
}


def _feed(h, key, value):
    h.update(key.encode() + b"\0")
    if isinstance(value, dict):
        for k in sorted(value):
            _feed(h, f"{key}/{k}", value[k])
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"array {a.dtype.str} {a.shape}".encode())
        h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
    else:
        h.update(f"{type(value).__name__} {value!r}".encode())


def _digests(cases, pinned=PINNED_DIGESTS):
    parts = {k: hashlib.sha256() for k in pinned}
    for c in cases:
        _feed(parts["meta"], c.name, {
            "method": c.method, "atol": c.atol, "rtol": c.rtol, "note": c.note, "spec": c.section,
            "tolerances": {k: repr(tuple(v)) for k, v in c.tolerances.items()}})
        _feed(parts["inputs"], c.name, c.inputs)
        _feed(parts["lenet5_expected" if c.method.startswith("lenet5") else "expected"], c.name,
              c.expected)
    return {k: v.hexdigest() for k, v in parts.items()}


def test_case_families_keep_the_package_acyclic():
    # protocol < reference/mutants/official < families < storage < worker < report < checker < cli:
    # a module imports only modules ranked before it (no cycle, as the package docstring says).
    order = ["case_ids", "protocol", "reference", "mutants", "official_lenet5", "official",
             "families", "storage", "worker", "report", "checker", "cli"]
    package = ROOT / "bbits_ref" / "conformance"
    rank = {name: i for i, name in enumerate(order)}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("")
        me = rel.parts[0] if rel.parts[0] in rank else None
        if me is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("bbits_ref.conformance."):
                other = node.module.split(".")[2]
                assert other == me or rank[other] < rank[me], (str(rel), node.module)
# --------------------------------------------------------------------------- mutants

def _quantize_with_z4(case):
    return case.method == "quantize" and case.inputs["z4"] not in (None, 0.0)


def test_wrong_denominator_fails_every_case_above_2_bits(loaded):
    report = check(loaded, mutants.WrongDenominator())
    expected = {c.name for c in loaded.cases if _quantize_with_z4(c)} | {
        "lenet5_step/mixed_gates"} | names(loaded, "lenet5_train/")
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
                                  | {"lenet5_step/mixed_gates"} | names(loaded, "lenet5_train/"))


def test_missing_straight_through_fails_every_quantize_case(loaded):
    report = check(loaded, mutants.NoStraightThrough())
    assert set(report.failed) == names(loaded, "quantize/")
    failures = {r.name: {o.name for o in r.outputs if not o.ok} for r in report.results}
    assert "grad_x" in failures["quantize/signed/8bit"]


# --------------------------------------------------------------------------- the official adapter

def test_official_adapter_runs_the_named_module(loaded):
    pytest.importorskip("torch")
    from bbits_ref.conformance.official import OfficialAdapter
    adapter = OfficialAdapter(FAKE_OFFICIAL)
    module = adapter.module
    assert Path(module.__file__).is_relative_to(FAKE_OFFICIAL.resolve())
    assert "anonymized_compression_package" not in sys.modules   # loaded by path, privately
    assert module.BayesianBitsQuantizer.cuda is False       # patched before any construction
    module.BayesianBitsQuantizer()                          # so this works on a CPU
    before = dict(module.CALLS)
    report = check_in_process(loaded, adapter)          # in process: to read the call counters
    assert report.ok, str(report)
    # Gumbel-softmax is not in the official code; how to build its VGG-7 is not documented
    unsupported = (names(loaded, "gumbel_softmax/") | names(loaded, "relative_bops/vgg7")
                   | {"prob_nonzero/gumbel_softmax", "deterministic_gates/gumbel_softmax"})
    assert set(report.skipped) == unsupported
    assert len(report.passed) == len(loaded.cases) - 14 == 63
    assert {"lenet5_step/mixed_gates", "relative_bops/lenet5/mixed_pruned"} <= set(report.passed)
    assert names(loaded, "lenet5_train/") <= set(report.passed)
    assert module.CALLS["recursive_quantization"] - before["recursive_quantization"] == len(
        names(loaded, "quantize/"))
    assert module.CALLS["hc_prob_pos"] > before["hc_prob_pos"]
    assert module.CALLS["l0_sample"] == 0
    assert adapter.lenet5().straight_through is not module       # the model's own copy
    assert adapter.lenet5().straight_through.CALLS["l0_sample"] == 0
    with pytest.raises(RuntimeError, match="must not call the official l0_sample"):
        module.l0_sample(None, 2 / 3, 1.1, -0.1)
    # in a child process the adapter is rebuilt from (clone, dtype)
    isolated = check(loaded, OfficialAdapter(FAKE_OFFICIAL, "float32"), select=["[!l]*"])
    assert isolated.ok and set(isolated.skipped) == unsupported, str(isolated)


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
    from bbits_ref.conformance.worker import AdapterImportError, load_adapter
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

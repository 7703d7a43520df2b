"""Running adapters: the child process, hostile adapters, the command line, JUnit and JSON reports.

The adapters below are pickled by reference into the checker's child process, which imports this
module (its directory is on ``sys.path`` under pytest).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from bbits_ref._errors import ConformanceFailure, RunDirError, UsageError
from bbits_ref.conformance import (AdapterImportError, build_cases, check, check_in_process,
                                   compare, export, load, load_adapter)
from bbits_ref.conformance import cli
from bbits_ref.conformance.reference import ReferenceAdapter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite")
    export(directory, build_cases())
    return directory


@pytest.fixture(scope="module")
def loaded(suite_dir):
    return load(suite_dir)


def names(loaded, prefix=""):
    return {c.name for c in loaded.cases if c.name.startswith(prefix)}


# --------------------------------------------------------------------------- hostile adapters

class Hostile(ReferenceAdapter):
    """The reference, except that each method misbehaves in its own way on some cases."""

    def __init__(self):
        super().__init__()
        self.name = "hostile"

    def quantize(self, x, beta, z2, z4, z8, z16, z32, *, signed, grad_out):
        if signed:
            raise RuntimeError("boom")
        return super().quantize(x, beta, z2, z4, z8, z16, z32, signed=signed, grad_out=grad_out)

    def hard_concrete(self, logits, u, *, grad_out):
        os._exit(3)

    def gumbel_softmax(self, logits, u, **kwargs):
        return {"z": "not numbers", "grad_logits": object()}

    def prob_nonzero(self, logits, *, gate):
        sys.exit(2)

    def deterministic_gates(self, logits, *, gate):
        return np.ones(3)

    def chain_gates_eval(self, chain_logits, *, hard_cut):
        if not hard_cut:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().chain_gates_eval(chain_logits, hard_cut=hard_cut)

    def regularizer(self, prune_logits, chain_logits, mac_weight, *, prior, reg_type):
        if prune_logits is not None and prune_logits.size == 128:     # regularizer/cifar_init
            time.sleep(60)
        return super().regularizer(prune_logits, chain_logits, mac_weight, prior=prior,
                                   reg_type=reg_type)

    def relative_bops(self, model, width, gates):
        return None if model == "lenet5" else super().relative_bops(model, width, gates)

    def lenet5_step(self, *args, **kwargs):
        raise NotImplementedError("no LeNet-5 here")


class ExitsWhenBuilt:
    """An adapter that ends the process as soon as it is unpickled in the child."""

    name = "exits when built"

    def __reduce__(self):
        return (os._exit, (4,))                 # unpickling it in the child calls os._exit(4)

    def quantize(self, *args, **kwargs):
        raise AssertionError("never called")


class OnlyQuantize:
    """Two methods, one raising NotImplementedError for one gate kind."""

    name = "only quantize"

    def __init__(self):
        self.reference = ReferenceAdapter()

    def quantize(self, *args, **kwargs):
        return self.reference.quantize(*args, **kwargs)

    def prob_nonzero(self, logits, *, gate):
        if gate == "gumbel_softmax":
            raise NotImplementedError("no Gumbel gate here")
        return self.reference.prob_nonzero(logits, gate=gate)


@pytest.fixture(scope="module")
def hostile_report(loaded):
    return check(loaded, Hostile(), timeout=5)


def test_each_misbehaviour_fails_its_own_cases_and_the_run_goes_on(loaded, hostile_report):
    report = hostile_report
    by = {r.name: r for r in report.results}
    assert len(report.results) == len(loaded.cases) and not report.ok

    def verdicts(prefix, verdict):
        return {n for n in names(loaded, prefix) if by[n].verdict == verdict}

    # raises: signed quantize errors, unsigned quantize (same process, after them) passes
    signed = {c.name for c in loaded.cases if c.method == "quantize" and c.inputs["signed"]}
    assert verdicts("quantize/", "ERROR") == signed
    assert verdicts("quantize/", "pass") == names(loaded, "quantize/") - signed
    assert "RuntimeError: boom" in by["quantize/signed/8bit"].message
    assert "test_conformance_isolation.py" in by["quantize/signed/8bit"].message
    # os._exit(3): every hard_concrete case errors (the process is restarted each time)
    for name in names(loaded, "hard_concrete/"):
        assert by[name].verdict == "ERROR"
        assert "ended with exit code 3" in by[name].message and "restarted" in by[name].message
    # wrong types, sys.exit, wrong shape
    for name in names(loaded, "gumbel_softmax/"):
        assert by[name].verdict == "FAIL"
        assert {o.message.split(" (")[0] for o in by[name].outputs} == {
            "not convertible to a float array"}
    assert all("called sys.exit(2)" in by[n].message for n in names(loaded, "prob_nonzero/"))
    assert verdicts("prob_nonzero/", "ERROR") == names(loaded, "prob_nonzero/")
    assert verdicts("deterministic_gates/", "FAIL") == names(loaded, "deterministic_gates/")
    assert "shape (3,), expected" in by["deterministic_gates/gumbel_softmax"].failure_text
    # a segfault fails only the cases without the hard cut
    crashed = {c.name for c in loaded.cases if c.method == "chain_gates_eval"
               and not c.inputs["hard_cut"]}
    assert verdicts("chain_gates_eval/", "ERROR") == crashed and len(crashed) == 2
    assert all("killed by signal SIGSEGV" in by[n].message for n in crashed)
    assert verdicts("chain_gates_eval/", "pass") == names(loaded, "chain_gates_eval/") - crashed
    # a hang: stopped after the time limit, the next cases pass in a fresh process
    assert by["regularizer/cifar_init"].verdict == "ERROR"
    assert "timed out: no answer within 5 s" in by["regularizer/cifar_init"].message
    assert 4 < by["regularizer/cifar_init"].seconds < 30
    assert verdicts("regularizer/", "pass") == names(loaded, "regularizer/") - {
        "regularizer/cifar_init"}
    # None instead of a number
    assert verdicts("relative_bops/", "FAIL") == names(loaded, "relative_bops/lenet5/")
    assert "missing: the adapter returned None" in by[
        "relative_bops/lenet5/uniform_w8a8"].failure_text
    assert verdicts("relative_bops/", "pass") == names(loaded, "relative_bops/vgg7")
    assert by["lenet5_step/mixed_gates"].verdict == "skipped"
    assert report.summary.endswith("could not run, 1 skipped")


def test_junit_and_json_reports(hostile_report, tmp_path):
    report = hostile_report
    report.write_junit(tmp_path / "r.xml")
    report.write_json(tmp_path / "r.json")
    root = ET.parse(tmp_path / "r.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(report.results) == int(suite.get("tests"))
    assert int(suite.get("failures")) == len(report.failed) == len(suite.findall("*/failure"))
    assert int(suite.get("errors")) == len(report.errors) == len(suite.findall("*/error"))
    assert int(suite.get("skipped")) == len(report.skipped) == 1
    by = {c.get("name"): c for c in cases}
    assert "exit code 3" in by["hard_concrete/grid"].find("error").get("message")
    assert "shape (3,)" in by["deterministic_gates/gumbel_softmax"].find("failure").text
    assert by["quantize/unsigned/8bit"].find("*") is None                 # passed
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is False and data["counts"] == {
        "passed": len(report.passed), "failed": len(report.failed),
        "could_not_run": len(report.errors), "skipped": 1}
    assert [c["name"] for c in data["cases"]] == [r.name for r in report.results]
    assert data["suite_sha256"] == report.suite_sha256 and len(report.suite_sha256) == 64
    wrong = next(c for c in data["cases"] if c["name"] == "relative_bops/lenet5/uniform_w8a8")
    assert wrong["verdict"] == "FAIL" and wrong["worst_abs"] == "inf"    # valid JSON, no Infinity


def test_an_adapter_that_cannot_start_errors_every_case(loaded):
    report = check(loaded, ExitsWhenBuilt(), select="quantize/signed/*")
    assert report.errors == sorted(names(loaded, "quantize/signed/"), key=[
        c.name for c in loaded.cases].index)
    assert all("could not start (the adapter process ended with exit code 4 while building"
               in r.message for r in report.results)


def test_adapters_that_cannot_be_built_are_usage_errors(loaded):
    with pytest.raises(AdapterImportError, match="cannot import module 'no_such_module'"):
        check(loaded, "no_such_module:adapter")
    with pytest.raises(AdapterImportError, match="cannot be sent to a child process.*"
                                                 "check_in_process") as info:
        check(loaded, type("Local", (), {"quantize": lambda self, *a: None})())
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    with pytest.raises(UsageError, match="timeouts must be positive"):
        check(loaded, ReferenceAdapter(), timeout=0)


def test_missing_methods_are_skipped_and_not_implemented_too(loaded):
    report = check(loaded, OnlyQuantize())
    assert set(report.passed) == names(loaded, "quantize/") | {"prob_nonzero/hard_concrete"}
    assert set(report.skipped) == names(loaded) - set(report.passed)
    assert report.ok and not report.failed and not report.errors
    text = str(report)
    assert "skipped (not implemented: no Gumbel gate here)" in text
    assert text.splitlines()[-1] == report.summary


def test_in_process_mode_gives_the_same_verdicts(loaded):
    isolated = check(loaded, OnlyQuantize(), select=["quantize/golden/*", "prob_nonzero/*"])
    here = check_in_process(loaded, OnlyQuantize(), select=["quantize/golden/*", "prob_nonzero/*"])
    assert [(r.name, r.verdict, r.message, str(r.worst_abs)) for r in isolated.results] == [
        (r.name, r.verdict, r.message, str(r.worst_abs)) for r in here.results]
    assert isolated.passed and isolated.skipped


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
    with pytest.raises(UsageError, match="no case matches"):
        check(loaded, ReferenceAdapter(), select="nothing*")


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


# --------------------------------------------------------------------------- command line

def test_cli_check_writes_reports_and_raises_on_failure(suite_dir, tmp_path, capsys):
    junit, report_json = tmp_path / "ci" / "c.xml", tmp_path / "ci" / "c.json"
    argv = ["check", str(suite_dir), "--junit", str(junit), "--json", str(report_json)]
    assert cli.main(argv + ["--impl", "bbits_ref.conformance.reference:ReferenceAdapter"]) == 0
    n = len(load(suite_dir).cases)
    assert capsys.readouterr().out.strip().endswith(f"{n} passed, 0 failed, 0 could not run, "
                                                    "0 skipped")
    assert ET.parse(junit).getroot().find("testsuite").get("tests") == str(n)
    assert json.loads(report_json.read_text())["ok"] is True
    # a failing adapter: the reports are written (over the earlier ones), then exit code 6
    parser = argparse.ArgumentParser(prog="bbits-ref")
    cli.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["conformance"] + argv + [
        "--impl", "bbits_ref.conformance.mutants:HalfThreshold", "-k", "chain_gates_eval/*",
        "--timeout", "30"])
    with pytest.raises(ConformanceFailure, match="7 passed, 2 failed, 0 could not run") as info:
        args.func(args)
    assert info.value.exit_code == 6
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("9", "2")
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"chain_gates_eval/just_below_threshold",
                      "chain_gates_eval/between_thresholds"}
    assert json.loads(report_json.read_text())["counts"]["failed"] == 2


def test_cli_refuses_to_overwrite_foreign_files(suite_dir, tmp_path, capsys):
    mine = tmp_path / "notes.xml"
    mine.write_text("<notes>mine</notes>")
    code = cli.main(["check", str(suite_dir), "--impl", "bbits_ref.conformance.reference:adapter",
                     "--junit", str(mine)])
    assert code == RunDirError.exit_code == 4
    assert mine.read_text() == "<notes>mine</notes>"
    err = capsys.readouterr().err
    assert err.startswith("error: --junit") and err.count("\n") == 1
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert cli.main(["export", str(tmp_path / "foreign")]) == 4
    assert "holds notes.txt" in capsys.readouterr().err
    assert cli.main(["check", str(tmp_path / "missing"), "--impl",
                     "bbits_ref.conformance.reference:adapter"]) == 3
    assert cli.main(["check", str(suite_dir), "--impl", "no_such_module:adapter"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:                  # --impl is required: usage error
        cli.main(["check", str(suite_dir)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["check", str(suite_dir), "--impl", "x:y", "--timeout", "-1"])


def test_python_dash_m_with_a_crashing_and_hanging_adapter(suite_dir, tmp_path):
    # the crash and the hang are reported in the table; the command itself exits 6, not 0
    done = subprocess.run([sys.executable, "-m", "bbits_ref.conformance", "check", str(suite_dir),
                           "--impl", "bbits_ref.conformance.mutants:CrashesAndHangs",
                           "-k", "hard_concrete/*", "-k", "regularizer/cifar_init",
                           "-k", "quantize/unsigned/2bit", "--timeout", "3",
                           "--junit", str(tmp_path / "j.xml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 6, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1 passed, 0 failed, 3 could not run, 0 skipped"
    assert "ended with exit code 3" in done.stdout and "no answer within 3 s" in done.stdout
    assert done.stderr.strip().startswith("error: misbehaving: ")
    assert done.stderr.strip().count("\n") == 0
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("errors") == "3"

"""The suite on disk: export into a folder, load with integrity and schema checks."""
from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest

from bbits_ref._errors import DataFileError, RunDirError
from bbits_ref.conformance import SCHEMA_VERSION, SUITE_VERSION, SuiteError, build_cases, check
from bbits_ref.conformance import export, load
from bbits_ref.conformance.protocol import CASE_IDS, METHODS
from bbits_ref.conformance.storage import MANIFEST, MAX_CASE_ELEMENTS


@pytest.fixture(scope="module")
def cases():
    return build_cases()


@pytest.fixture(scope="module")
def suite_dir(cases, tmp_path_factory):
    directory = tmp_path_factory.mktemp("suite")
    export(directory, cases)
    return directory


def _copy(suite_dir, tmp_path):
    target = tmp_path / "suite"
    shutil.copytree(suite_dir, target)
    return target, json.loads((target / MANIFEST).read_text())


def _save(target, manifest):
    (target / MANIFEST).write_text(json.dumps(manifest))


def _entry(manifest, name):
    return next(e for e in manifest["cases"] if e["name"] == name)


# --------------------------------------------------------------------------- manifest

def test_manifest_schema(suite_dir):
    manifest = json.loads((suite_dir / MANIFEST).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION == 2
    assert manifest["suite_version"] == SUITE_VERSION == "1.1"
    assert manifest["complete"] is True and manifest["created_by"].startswith("bbits_ref ")
    assert "atol + rtol" in manifest["comparison"] and "docs/method.md" in manifest["comparison"]
    assert [e["name"] for e in manifest["cases"]] == list(CASE_IDS[SUITE_VERSION])
    files = sorted(p.name for p in suite_dir.iterdir())
    assert files == sorted([MANIFEST] + [e["file"] for e in manifest["cases"]])
    for entry in manifest["cases"]:
        assert entry["method"] in METHODS and entry["args"] == list(METHODS[entry["method"]])
        assert entry["atol"] >= 0 and entry["rtol"] >= 0 and entry["note"]
        data = (suite_dir / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            assert {k: [npz[k].dtype.name, list(npz[k].shape)] for k in npz.files} == {
                k: [v["dtype"], v["shape"]] for k, v in entry["arrays"].items()}


def test_two_exports_have_the_same_case_digests(suite_dir, cases, tmp_path):
    export(tmp_path / "again", cases)
    first = json.loads((suite_dir / MANIFEST).read_text())
    second = json.loads((tmp_path / "again" / MANIFEST).read_text())
    assert first["suite_sha256"] == second["suite_sha256"]
    assert [e["case_sha256"] for e in first["cases"]] == [e["case_sha256"] for e in second["cases"]]


# --------------------------------------------------------------------------- integrity

def test_a_manifest_that_lost_cases_fails_before_any_adapter_runs(suite_dir, tmp_path):
    target, manifest = _copy(suite_dir, tmp_path)
    lost = [e["name"] for e in manifest["cases"][5:60]]
    del manifest["cases"][5:60]                 # the ones an adapter failed, say
    _save(target, manifest)
    with pytest.raises(SuiteError, match=f"has {len(CASE_IDS[SUITE_VERSION])} cases, the "
                                         f"manifest lists 22: 55 missing \\({lost[0]}"):
        load(target)
    # the check never builds the adapter: an unimportable one is not even noticed
    with pytest.raises(SuiteError, match="55 missing"):
        check(target, "no_such_module:adapter")


def test_an_added_case_is_refused(suite_dir, tmp_path):
    target, manifest = _copy(suite_dir, tmp_path)
    extra = dict(manifest["cases"][0], name="quantize/signed/3bit")
    manifest["cases"].append(extra)
    _save(target, manifest)
    with pytest.raises(SuiteError, match="1 unexpected \\(quantize/signed/3bit\\)"):
        load(target)


def test_a_renamed_case_is_refused(suite_dir, tmp_path):
    target, manifest = _copy(suite_dir, tmp_path)
    manifest["cases"][1]["name"] = "quantize/signed/4bits"
    _save(target, manifest)
    with pytest.raises(SuiteError, match="1 missing \\(quantize/signed/4bit\\); 1 unexpected"):
        load(target)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_an_altered_or_truncated_case_file_is_refused(suite_dir, tmp_path, damage):
    target, manifest = _copy(suite_dir, tmp_path)
    entry = manifest["cases"][3]
    path = target / entry["file"]
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    with pytest.raises(SuiteError, match=f"case {entry['name']}: file .* is corrupted or "
                                         "truncated.*export"):
        load(target)
    # the same damage with a matching sha256 in the manifest is still caught, by the parser
    entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    _save(target, manifest)
    with pytest.raises(SuiteError, match=f"case {entry['name']}: "):
        load(target)


def test_an_edited_manifest_entry_is_refused(suite_dir, tmp_path):
    # loosening a tolerance in the manifest (and nothing else) changes the case's content digest
    target, manifest = _copy(suite_dir, tmp_path)
    entry = _entry(manifest, "deterministic_gates/hard_concrete")
    entry["atol"] = 1.0
    _save(target, manifest)
    with pytest.raises(SuiteError, match="case deterministic_gates/hard_concrete was edited"):
        load(target)


def test_missing_case_file_is_reported(suite_dir, tmp_path):
    target, manifest = _copy(suite_dir, tmp_path)
    (target / manifest["cases"][0]["file"]).unlink()
    with pytest.raises(SuiteError, match="quantize/signed/2bit: file .* is missing"):
        load(target)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(cases={"a": 1}), "'cases' must be a list"),
    (lambda m: m["cases"][0].update(atol="0.1"), "tolerances that are not finite"),
    (lambda m: m["cases"][0].update(rtol=-1.0), "tolerances that are not finite"),
    (lambda m: m["cases"][-1]["tolerances"]["losses"][0].__setitem__(3, -1e-3),
     "tolerances that are not finite"),
    (lambda m: m["cases"][-1]["tolerances"]["losses"].__setitem__(0, []),
     "tolerances that are not finite"),
    (lambda m: m["cases"][0].update(file="../../etc/passwd"), "names file '../../etc/passwd'"),
    (lambda m: m["cases"][0].update(method="lenet5_step"), "not the method of its id"),
    (lambda m: m["cases"][0]["scalars"].update(signed=[1, 2]), "'scalars' that are not"),
    (lambda m: m["cases"][0]["scalars"].update(evil=1), "the method quantize takes"),
    (lambda m: m["cases"][0]["arrays"]["input/x"].update(dtype="object"), "'arrays' that are not"),
    (lambda m: m["cases"][0]["arrays"]["input/x"].update(shape=[-1]), "'arrays' that are not"),
    (lambda m: m["cases"][0]["arrays"]["input/x"].update(shape=[MAX_CASE_ELEMENTS, 2]),
     "more than"),
    (lambda m: m["cases"][0].update(none_outputs=["bogus"]), "does not list the outputs of "),
    (lambda m: m["cases"][0].update(none_outputs=["grad_x"]), "does not list the outputs of "),
    (lambda m: m["cases"][5].update(none_outputs=[]), "does not list the outputs of quantize"),
    (lambda m: m["cases"][0].pop("sha256"), "has keys"),
    (lambda m: m["cases"][0].update(sha256=5), "64 hex digits"),
    (lambda m: m.update(complete=False), "marked incomplete"),
    (lambda m: m.update(suite_version="0.9"), "suite version '0.9'; this bbits_ref knows"),
    (lambda m: m.update(schema_version="2"), "schema version '2'; this bbits_ref"),
])
def test_a_manifest_with_wrong_types_is_refused(suite_dir, tmp_path, edit, message):
    target, manifest = _copy(suite_dir, tmp_path)
    edit(manifest)
    _save(target, manifest)
    with pytest.raises(SuiteError, match=message) as info:
        load(target)
    assert isinstance(info.value, DataFileError) and info.value.exit_code == 3
    assert "\n" not in str(info.value)


def test_a_pickle_in_a_case_file_is_refused(suite_dir, tmp_path):
    target, manifest = _copy(suite_dir, tmp_path)
    entry = manifest["cases"][0]
    path = target / entry["file"]
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["input/x"] = np.array([{"evil": 1}] * arrays["input/x"].size, dtype=object)
    np.savez(path, **arrays)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _save(target, manifest)
    with pytest.raises(SuiteError, match="array input/x is object"):
        load(target)


def test_not_a_suite(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(SuiteError, match="no manifest.json"):
        load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load(tmp_path)
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(SuiteError, match="schema version None"):
        load(tmp_path)


# --------------------------------------------------------------------------- export

def test_export_refuses_a_foreign_folder(cases, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a conformance suite .*holds notes.txt"):
        export(tmp_path, cases)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "notes.txt").unlink()
    (tmp_path / MANIFEST).write_text('{"title": "my own manifest"}')
    with pytest.raises(RunDirError, match="not a suite manifest"):
        export(tmp_path, cases)
    assert (tmp_path / MANIFEST).read_text() == '{"title": "my own manifest"}'
    with pytest.raises(RunDirError, match="not a directory"):
        export(tmp_path / MANIFEST, cases)


def test_export_over_a_suite_with_foreign_files_is_refused(suite_dir, cases, tmp_path):
    target, _ = _copy(suite_dir, tmp_path)
    (target / "results.npz").write_bytes(b"my results")
    (target / "plots").mkdir()
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(RunDirError, match="holds a conformance suite and also plots, "
                                          "results.npz"):
        export(target, cases)
    assert sorted(p.name for p in target.iterdir()) == before


def test_export_over_an_earlier_suite_replaces_only_its_files(suite_dir, cases, tmp_path):
    # an earlier export (say, of schema 1) that listed one file this version no longer writes
    target, manifest = _copy(suite_dir, tmp_path)
    (target / "999_old__case.npz").write_bytes(b"old case")
    manifest["cases"].append({"name": "old/case", "file": "999_old__case.npz"})
    manifest["schema_version"] = 1
    _save(target, manifest)
    export(target, cases)
    assert not (target / "999_old__case.npz").exists()
    suite = load(target)
    assert [c.name for c in suite.cases] == list(CASE_IDS[SUITE_VERSION])
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [MANIFEST] + [e["file"] for e in suite.manifest["cases"]])


def test_export_writes_whole_suites_only(cases, tmp_path):
    with pytest.raises(ValueError, match="whole suites"):
        export(tmp_path / "s", cases[:2])
    assert not (tmp_path / "s").exists()


def test_an_interrupted_export_is_refused_then_replaced(suite_dir, cases, tmp_path):
    target, manifest = _copy(suite_dir, tmp_path)
    manifest["complete"] = False                # as left by an export that was killed
    (target / manifest["cases"][-1]["file"]).unlink()
    _save(target, manifest)
    with pytest.raises(SuiteError, match="interrupted"):
        load(target)
    export(target, cases)
    assert len(load(target).cases) == len(cases)

"""Every user error of ``bbits-ref`` is one line with a documented exit code; a bug says to rerun
with ``--debug``, which (like ``BBITS_DEBUG=1``) shows the traceback.  Checkpoints, histories and
run folders are untrusted: junk gives one line naming the file, never a traceback or a lookup."""
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bbits_ref._errors import (EXIT_CODES, BBitsError, DataFileError, DivergedError, RunDirError,
                               UsageError)
from bbits_ref.cli import build_parser, main
from bbits_ref.cli import run as cli_run
from bbits_ref.training import trainer as trainer_mod
from bbits_ref.training.checkpoints import (BIT_GENERATORS, CHECKPOINT_VERSION, CheckpointError,
                                            load_checkpoint, restore_rng, rng_state,
                                            save_checkpoint)

TINY = ["--train-limit", "64", "--test-limit", "32", "--batch-size", "32", "--epochs", "1",
        "--log-every", "2", "--no-progress"]


def error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("bbits-ref: ")
    return lines[0]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------- exit codes, --debug

def test_help_lists_every_exit_code():
    text = build_parser().format_help()
    assert "exit codes:" in text and "--debug" in text
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in text


def test_error_classes_carry_their_documented_codes():
    assert [c.exit_code for c in (UsageError, DataFileError, RunDirError, DivergedError)] == [
        2, 3, 4, 5]
    assert all(c.exit_code in EXIT_CODES for c in (UsageError, DataFileError, RunDirError,
                                                    DivergedError))
    assert issubclass(CheckpointError, DataFileError) and issubclass(CheckpointError, ValueError)
    assert issubclass(trainer_mod.TrainingDiverged, DivergedError)


def test_usage_error_is_one_line_with_code_2(capsys):
    assert main(["train", "--epochs", "0", "--out", "/nonexistent/never"]) == 2
    assert "epochs" in error_line(capsys)


def _boom(args):
    raise KeyError("internal")


def test_a_bug_is_one_line_unless_debug(monkeypatch, capsys):
    monkeypatch.setattr(cli_run, "cmd_readout", _boom)
    parser = build_parser()
    monkeypatch.setattr(sys.modules["bbits_ref.cli"], "build_parser", lambda: _with(parser, _boom))
    monkeypatch.delenv("BBITS_DEBUG", raising=False)
    assert main(["readout"]) == 1
    line = error_line(capsys)
    assert line.startswith("bbits-ref: unexpected error KeyError: 'internal'")
    assert line.endswith("rerun with --debug for the traceback and report it")
    with pytest.raises(KeyError, match="internal"):
        main(["--debug", "readout"])
    monkeypatch.setenv("BBITS_DEBUG", "1")
    with pytest.raises(KeyError, match="internal"):
        main(["readout"])


def _with(parser, func):
    """``parser`` whose readout subcommand runs ``func``."""
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["readout"].set_defaults(func=func)
    return parser


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoint.npz").write_bytes(b"junk")
    monkeypatch.delenv("BBITS_DEBUG", raising=False)
    assert main(["info", str(tmp_path)]) == 3
    error_line(capsys)
    with pytest.raises(CheckpointError, match="not a readable bbits_ref checkpoint"):
        main(["--debug", "info", str(tmp_path)])
    done = subprocess.run([sys.executable, "-m", "bbits_ref.cli", "--debug", "info",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "CheckpointError" in done.stderr


def test_interrupt_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(self, stop_after=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "fit", interrupted)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted" in error_line(capsys)


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES", "EROFS", "EDQUOT"])
def test_unwritable_disk_exits_7_naming_the_path(monkeypatch, tmp_path, capsys, code):
    import errno

    def unwritable(self, stop_after=None):
        raise OSError(getattr(errno, code), "cannot write", str(tmp_path / "run" / "x.json"))

    monkeypatch.setattr(trainer_mod.Trainer, "fit", unwritable)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 7
    assert f"cannot write {tmp_path / 'run' / 'x.json'}" in error_line(capsys)


# --------------------------------------------------------------------------- junk checkpoints

def _npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _meta(**meta) -> np.ndarray:
    return np.array(json.dumps({"version": CHECKPOINT_VERSION, **meta}))


def _rewrite(src: Path, dst: Path, change_meta=None, change_model=None) -> None:
    model, optim, meta = load_checkpoint(src)
    meta.pop("version")
    if change_meta:
        change_meta(meta)
    if change_model:
        change_model(model)
    save_checkpoint(dst, model_state=model, optim_state=optim, meta=meta)


def _huge_header(path: Path) -> None:
    """A member whose .npy header claims 10^12 float64 values in a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**12,)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.npy", _npy(_meta(epoch=0)))
        z.writestr("model/w.npy", header.getvalue() + b"\0" * 64)


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _zip_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.npy", _npy(_meta(epoch=0)))
        z.writestr("model/w.npy", _npy(np.zeros(50_000_000, dtype=np.uint8)))


def _odd_member(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.npy", _npy(_meta(epoch=0)))
        z.writestr("../../etc/evil.npy", _npy(np.zeros(3)))


JUNK = {
    "garbage bytes": (lambda p, g: p.write_bytes(b"PK\x03\x04 not really"),
                      "not a readable bbits_ref checkpoint"),
    "empty file": (lambda p, g: p.write_bytes(b""), "not a readable"),
    "truncated": (lambda p, g: p.write_bytes(g.read_bytes()[:5000]), "not a readable"),
    "object array": (lambda p, g: _npz(p, {"meta": _meta(), "model/w": np.array([None, 1], dtype=object)}),
                     "would need pickle"),
    "structured dtype": (lambda p, g: _npz(p, {"meta": _meta(), "model/w": np.zeros(
        2, dtype=[("a", "<f4")])}), "holds only numbers and text"),
    "meta not text": (lambda p, g: _npz(p, {"meta": np.zeros(3)}), "should be JSON text"),
    "meta deeply nested": (lambda p, g: _npz(p, {"meta": np.array("[" * 100_000)}),
                           "not valid JSON"),
    "meta a list": (lambda p, g: _npz(p, {"meta": np.array("[1]")}), "should be a JSON object"),
    "version as text": (lambda p, g: _npz(p, {"meta": np.array('{"version": "1"}')}),
                        "format version '1'; this bbits_ref reads version 1"),
    "absurd header": (lambda p, g: _huge_header(p), "claims shape (1000000000000,)"),
    "zip bomb": (lambda p, g: _zip_bomb(p), "would expand to"),
    "odd member": (lambda p, g: _odd_member(p), "unexpected member '../../etc/evil.npy'"),
    "bit generator by name": (lambda p, g: _rewrite(g, p, lambda m: m["rng"]["data"].update(
        bit_generator="__import__")), "unknown bit generator '__import__'"),
    "generator state junk": (lambda p, g: _rewrite(g, p, lambda m: m["rng"]["noise"].update(
        state={"state": "x"})), "PCG64 generator state is malformed"),
    "epoch negative": (lambda p, g: _rewrite(g, p, lambda m: m.update(epoch=-1)),
                       "epoch should be a non-negative integer"),
    "step as text": (lambda p, g: _rewrite(g, p, lambda m: m.update(step="4")),
                     "step should be a non-negative integer"),
    "history junk": (lambda p, g: _rewrite(g, p, lambda m: m.update(history=[1, 2])),
                     "history is not a list"),
    "config unknown": (lambda p, g: _rewrite(g, p, lambda m: m["config"].update(lr=1)),
                       "its settings are invalid"),
    "config nan": (lambda p, g: _rewrite(g, p, lambda m: m["config"].update(mu=float("nan"))),
                   "its settings are invalid"),
    "no rng": (lambda p, g: _rewrite(g, p, lambda m: m.pop("rng")), "lacks ['rng']"),
    "wrong shape": (lambda p, g: _rewrite(g, p, change_model=lambda m: m.update(
        {"conv1.weight": np.zeros((2, 2), np.float32)})),
        "model entry 'conv1.weight' has shape (2, 2)"),
    "wrong dtype": (lambda p, g: _rewrite(g, p, change_model=lambda m: m.update(
        {"conv1.weight": m["conv1.weight"].astype(np.float64)})), "dtype float64"),
    "missing weight": (lambda p, g: _rewrite(g, p, change_model=lambda m: m.pop("fc1.weight")),
                       "missing ['fc1.weight']"),
}


@pytest.mark.parametrize("kind", list(JUNK))
def test_junk_checkpoint_gives_one_line_in_info_and_resume(kind, good_run, tmp_path, capsys):
    make, expected = JUNK[kind]
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.json", "run.json"):
        (folder / name).write_bytes((good_run / name).read_bytes())
    make(folder / "checkpoint.npz", good_run / "checkpoint.npz")
    capsys.readouterr()
    assert main(["info", str(folder)]) == 3, kind
    line = error_line(capsys)
    assert str(folder / "checkpoint.npz") in line and expected in line, line
    before = sorted(p.name for p in folder.rglob("*"))
    code = main(["train", "--resume", str(folder), "--no-progress"])
    line = error_line(capsys)
    assert code in (3, 4), line                       # junk, or another run's settings
    assert str(folder) in line
    assert sorted(p.name for p in folder.rglob("*")) == before     # nothing written


def test_restore_rng_uses_a_fixed_allow_list(monkeypatch):
    calls = []
    monkeypatch.setattr(np.random, "Evil", lambda: calls.append(1), raising=False)
    for name in ("Evil", "RandomState", "default_rng", None, 3):
        with pytest.raises(CheckpointError, match="unknown bit generator"):
            restore_rng({"bit_generator": name, "state": {}})
    assert calls == []
    with pytest.raises(CheckpointError, match="should be a JSON object"):
        restore_rng(["PCG64"])
    for name, cls in BIT_GENERATORS.items():
        rng = np.random.Generator(cls(5))
        assert type(restore_rng(rng_state(rng)).bit_generator) is cls


def test_checkpoint_is_checked_against_the_model_before_reading(good_run, monkeypatch):
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda *a, **k: reads.append(1) or real(*a, **k))
    model, _, _ = load_checkpoint(good_run / "checkpoint.npz")
    n = len(reads)
    expected = dict(model, **{"conv1.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="'conv1.weight' has shape"):
        load_checkpoint(good_run / "checkpoint.npz", expected_model=expected)
    assert len(reads) == n + 1                         # only the metadata was read


# --------------------------------------------------------------------------- junk run folders

@pytest.mark.parametrize("content, expected", [
    (b"{not json", "not a readable training history"),
    (b"\xff\xfe", "not a readable training history"),
    (b'{"a": 1}', "cannot be drawn"),
    (b"[1, 2]", "cannot be drawn"),
    (b'[{"kind": "epoch", "epoch": 1, "quantizers": []}]', "cannot be drawn"),
    (b'[{"kind": "epoch", "epoch": "x", "quantizers": {}}]', "cannot be drawn"),
    (b"[" * 50_000, "not a readable training history"),
])
def test_figures_on_a_junk_history_is_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "history.json").write_bytes(content)
    assert main(["figures", str(tmp_path)]) == 3
    line = error_line(capsys)
    assert str(tmp_path / "history.json") in line and expected in line
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("content", [b"[]", b'{"runs": 3}', b'{"runs": [1]}', b"\x00"])
def test_figures_on_a_junk_sweep_table_is_one_line(tmp_path, capsys, content):
    (tmp_path / "sweep.json").write_bytes(content)
    assert main(["figures", str(tmp_path)]) == 3
    assert str(tmp_path / "sweep.json") in error_line(capsys)


def test_figures_and_info_on_paths_that_are_not_runs(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "missing")]) == 3
    assert "is not a folder" in error_line(capsys)
    (tmp_path / "checkpoint.npz").mkdir()
    assert main(["info", str(tmp_path / "checkpoint.npz")]) == 3
    error_line(capsys)


def test_junk_run_json_is_one_line(good_run, tmp_path, capsys):
    import shutil
    folder = tmp_path / "run"
    shutil.copytree(good_run, folder)
    (folder / "run.json").write_text('{"run_id": 5}')
    assert main(["train", "--resume", str(folder), "--no-progress"]) == 3
    assert "run.json should hold run_id (text)" in error_line(capsys)


def test_every_bbits_error_is_caught_as_one_line(monkeypatch, capsys):
    def multi_line(args):
        raise RunDirError("first line\nsecond line")

    parser = _with(build_parser(), multi_line)
    monkeypatch.setattr(sys.modules["bbits_ref.cli"], "build_parser", lambda: parser)
    assert main(["readout"]) == 4
    assert error_line(capsys) == "bbits-ref: first line second line"
    assert issubclass(RunDirError, BBitsError)


@pytest.mark.parametrize("argv, expected", [
    (["--model", "vgg7", "--width", "0"], "--width is VGG-7's width multiplier"),
    (["--model", "vgg7", "--width", "nan"], "got nan"),
    (["--model", "vgg7", "--width", "1e9"], "a number in (0, 8.0]"),
    (["--seed", "-1"], "--seed must be a non-negative integer; got -1"),
])
def test_readout_refuses_bad_widths_and_seeds_in_one_line(argv, expected, capsys):
    assert main(["readout", *argv]) == 2
    assert expected in error_line(capsys)

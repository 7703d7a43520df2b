"""Fault tests: training runs lose nothing and fail in one clear line.

* SIGKILL at random moments (one of them inside a checkpoint write), resume each time: the run
  ends bit for bit like an uninterrupted one;
* a full disk during a checkpoint write keeps the previous checkpoint and exits 7 with one line;
* ``--force`` / ``--resume`` never touch what is not the run's; temporary files are cleaned up;
  files respect the umask; divergence names step, epoch and checkpoint, and its advice works;
  a learning-rate change at resume is recorded; runs at the extremes draw their figures.

Runs are tiny (256 embedded MNIST images, batch 64, 2 epochs: 8 steps).
"""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bbits_ref import _files
from bbits_ref.cli import main
from bbits_ref.training import runs
from bbits_ref.training.checkpoints import load_checkpoint

TINY = ["--train-limit", "256", "--test-limit", "128", "--batch-size", "64", "--epochs", "2",
        "--log-every", "2", "--no-progress"]
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("BBITS_DEBUG", None)

# Runs bbits-ref; with STALL set, the first checkpoint write that replaces an existing checkpoint
# creates the file STALL and sleeps just before os.replace, so that a kill lands inside the write.
DRIVER = """
import os, sys, time
stall = os.environ.get("STALL")
if stall:
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if (str(dst).endswith("checkpoint.npz") and os.path.exists(dst)
                and not os.path.exists(stall)):
            open(stall, "w").close()
            time.sleep(120)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
from bbits_ref.cli import main
sys.exit(main(sys.argv[1:]))
"""


def error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1, lines
    return lines[0]


def start(driver, *argv, stall=None):
    env = dict(ENV, STALL=str(stall)) if stall else ENV
    return subprocess.Popen([sys.executable, str(driver), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def arrays_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def assert_same_run(out: Path, ref: Path) -> None:
    """Checkpoint (parameters, optimizer, RNG states, history), run files and figures equal."""
    m1, o1, meta1 = load_checkpoint(out / "checkpoint.npz")
    m2, o2, meta2 = load_checkpoint(ref / "checkpoint.npz")
    arrays_equal(m1, m2)
    arrays_equal(o1, o2)
    assert meta1.pop("run")["lr_changes"] == meta2.pop("run")["lr_changes"] == []
    assert meta1 == meta2
    for name in ("history.json", "summary.json", "config.json"):
        assert (out / name).read_text() == (ref / name).read_text(), name
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(runs.FIGURE_FILES)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def reference(driver, tmp_path_factory):
    """An uninterrupted run, in a subprocess like the interrupted ones; and its wall time."""
    out = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.monotonic()
    proc = start(driver, "train", *TINY, "--out", str(out))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return out, time.monotonic() - t0


# --------------------------------------------------------------------------- (a) SIGKILL

def test_sigkill_at_random_moments_then_resume_is_bit_identical(driver, reference, tmp_path):
    ref, wall = reference
    out, stall = tmp_path / "run", tmp_path / "stalled"

    # 1. Killed inside the second checkpoint write (after the data, before os.replace).
    proc = start(driver, "train", *TINY, "--out", str(out), stall=stall)
    deadline = time.monotonic() + 300
    while not stall.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the write never stalled"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    leftovers = temp_files(out)
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.npz.")
    _, _, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["epoch"] == 1                         # the previous checkpoint, intact

    # 2. Killed at seeded random moments; each time resume (or start again if no checkpoint).
    rng = np.random.default_rng(2024)
    kills = 0
    for delay in rng.uniform(0.2, wall, size=3):
        argv = (["train", "--resume", str(out), "--no-progress"]
                if (out / "checkpoint.npz").exists() else ["train", *TINY, "--out", str(out),
                                                           "--force"])
        proc = start(driver, *argv)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 1

    # 3. Resume to the end.
    proc = start(driver, "train", "--resume", str(out), "--no-progress")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert temp_files(out) == []                      # leftovers cleaned up at a start
    assert_same_run(out, ref)


# --------------------------------------------------------------------------- (b) full disk

def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "run"
    names, snapshot = {}, {}
    real_mkstemp, real_fdopen = _files.tempfile.mkstemp, os.fdopen

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = name
        return fd, name

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[:len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, mode):
        name = Path(names.get(fd, ""))
        if name.name.startswith(".checkpoint.npz.") and (name.parent / "checkpoint.npz").exists():
            snapshot["bytes"] = (name.parent / "checkpoint.npz").read_bytes()
            return FullDisk(real_fdopen(fd, mode))
        return real_fdopen(fd, mode)

    monkeypatch.setattr(_files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(_files.os, "fdopen", fdopen)
    assert main(["train", *TINY, "--out", str(out)]) == 7
    line = error_line(capsys)
    assert line == (f"bbits-ref: cannot write {out / 'checkpoint.npz'}: No space left on device; "
                    "free some disk space or use a folder you can write to (--out)")
    monkeypatch.undo()
    assert (out / "checkpoint.npz").read_bytes() == snapshot["bytes"]     # untouched
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] == 1
    assert temp_files(out) == []
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0     # and it goes on
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] == 2


# --------------------------------------------------------------------------- (c) --force

def test_force_refuses_a_folder_with_other_files_and_names_them(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    (out / "checkpoint.npz").write_bytes(b"an old run")
    (out / "notes.md").write_text("mine")
    (out / "figures" / "poster.png").write_bytes(b"mine too")
    (out / "data").mkdir()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["train", *TINY, "--out", str(out), "--force"]) == 4
    line = error_line(capsys)
    assert "data/, figures/poster.png, notes.md" in line and "choose another --out" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "checkpoint.npz").read_bytes() == b"an old run"
    assert main(["train", *TINY, "--out", str(out)]) == 4           # without --force as well
    assert "notes.md" in error_line(capsys)


def test_force_removes_only_run_files_and_only_after_validation(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    old = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / ".history.json.x1y2.tmp").write_bytes(b"half")            # a leftover of ours
    # A new run that cannot start (too few examples, a missing data folder) changes nothing.
    assert main(["train", *TINY, "--train-limit", "1", "--out", str(out), "--force"]) == 2
    assert "at least 2 examples" in error_line(capsys)
    assert main(["train", *TINY, "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                 "--out", str(out), "--force"]) != 0
    assert {p: p.read_bytes() for p in old} == old and (out / ".history.json.x1y2.tmp").exists()
    # A valid one replaces the run's files (and its leftovers) with its own.
    old_id = json.loads((out / "run.json").read_text())["run_id"]
    assert main(["train", *TINY, "--out", str(out), "--force"]) == 0
    assert json.loads((out / "run.json").read_text())["run_id"] != old_id
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] == 2
    assert temp_files(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted([*runs.RUN_FILES, "figures"])


def test_clear_run_unit(tmp_path):
    (tmp_path / "figures").mkdir()
    for name in ("config.json", "summary.json", ".checkpoint.npz.abc.tmp"):
        (tmp_path / name).write_text("x")
    (tmp_path / "figures" / "bit_widths.png").write_text("x")
    assert sorted(p.name for p in runs.clear_run(tmp_path)) == [
        ".checkpoint.npz.abc.tmp", "bit_widths.png", "config.json", "summary.json"]
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "config.json.bak").write_text("keep")
    with pytest.raises(runs.RunDirError, match="config.json.bak"):
        runs.clear_run(tmp_path)
    assert (tmp_path / "config.json.bak").read_text() == "keep"


# --------------------------------------------------------------------------- (c) --resume

@pytest.fixture
def two_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(a)]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--out", str(b)]) == 0
    return a, b


def test_resume_refuses_a_checkpoint_from_another_run(two_runs, tmp_path, capsys):
    a, b = two_runs
    capsys.readouterr()
    b_files = {p: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    (b / "checkpoint.npz").write_bytes((a / "checkpoint.npz").read_bytes())  # copied over
    b_files[b / "checkpoint.npz"] = (a / "checkpoint.npz").read_bytes()
    assert main(["train", "--resume", str(b), "--no-progress"]) == 4
    line = error_line(capsys)
    assert "was copied from another run" in line and "empty folder as checkpoint.npz" in line
    assert {p: p.read_bytes() for p in b_files} == b_files            # nothing written
    # A checkpoint that is not its folder's checkpoint.npz is refused too.
    other = tmp_path / "elsewhere" / "best.npz"
    other.parent.mkdir()
    other.write_bytes((a / "checkpoint.npz").read_bytes())
    assert main(["train", "--resume", str(other), "--no-progress"]) == 4
    assert "is not the checkpoint.npz of a run folder" in error_line(capsys)
    assert sorted(p.name for p in other.parent.iterdir()) == ["best.npz"]
    # Following the advice works: the copy, alone in an empty folder, is adopted and resumed.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "checkpoint.npz").write_bytes(other.read_bytes())
    a_before = {p: p.read_bytes() for p in a.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(fresh / "checkpoint.npz"), "--no-progress"]) == 0
    assert {p: p.read_bytes() for p in a_before} == a_before           # run a untouched
    assert (fresh / "config.json").exists() and (fresh / "figures").is_dir()


def test_resume_refuses_a_folder_whose_settings_differ(two_runs, capsys):
    a, _ = two_runs
    config = json.loads((a / "config.json").read_text())
    config["mu"] = 0.5
    (a / "config.json").write_text(json.dumps(config))
    (a / "run.json").unlink()                           # as a run from before run ids
    capsys.readouterr()
    assert main(["train", "--resume", str(a), "--no-progress"]) == 4
    assert "differing: mu" in error_line(capsys)


def test_resume_of_a_run_written_before_run_ids(tmp_path):
    """A run folder of bbits_ref 0.1: no run.json, no 'run' in the checkpoint (version 1)."""
    from bbits_ref.training.checkpoints import save_checkpoint
    out = tmp_path / "old"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    model, optim, meta = load_checkpoint(out / "checkpoint.npz")
    del meta["run"], meta["version"]
    save_checkpoint(out / "checkpoint.npz", model_state=model, optim_state=optim, meta=meta)
    (out / "run.json").unlink()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert len(json.loads((out / "run.json").read_text())["run_id"]) == 16


# --------------------------------------------------------------------------- (c) files

def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    ours = [out / ".checkpoint.npz.k3j4h5.tmp", out / ".config.json.0a9b.tmp",
            out / "figures" / ".bit_widths.png.zz.tmp"]
    theirs = [out / ".notes.md.swp.tmp", out / "figures" / ".poster.png.1.tmp"]
    for p in ours + theirs:
        p.write_bytes(b"x" * 1000)
    assert runs.clean_temp_files(out) == sorted(ours)        # what a start removes
    for p in ours:
        p.write_bytes(b"x")
    from bbits_ref.training.trainer import Trainer
    trainer = Trainer.resume(out, progress=False, verbose=False)
    trainer.fit()
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _files.write_json(tmp_path / "a.json", {"x": 1})
        _files.atomic_write_bytes(tmp_path / "sub" / "b.bin", b"1")
    finally:
        os.umask(old)
    for p in (tmp_path / "a.json", tmp_path / "sub" / "b.bin"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, oct(p.stat().st_mode)


# --------------------------------------------------------------------------- (c) divergence

def test_divergence_message_and_resume_with_smaller_lr(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--train-limit", "256", "--test-limit", "64", "--batch-size", "64",
             "--log-every", "2", "--no-progress", "--epochs", "2"]
    from bbits_ref.training.trainer import Trainer
    from bbits_ref.cli import build_parser
    from bbits_ref.cli.options import config_from_args
    config = config_from_args(build_parser().parse_args(["train", *flags]))
    Trainer(config, out_dir=out, progress=False, verbose=False).fit(stop_after=1)
    good_bytes = (out / "checkpoint.npz").read_bytes()
    # Learning rates of 0.2 drive a range β to ≤ 0 within a few steps.
    assert main(["train", "--resume", str(out), "--lr", "0.2", "--change-lr",
                 "--no-progress"]) == 5
    line = error_line(capsys)
    match = re.fullmatch(r"bbits-ref: training diverged: the range β of \S+ fell to \S+ \(it must "
                         r"stay > 0\) at step (\d+) \(epoch (\d)\); the last good checkpoint is "
                         r"(\S+) \(epoch (\d)\): resume from it with smaller learning rates, "
                         r"e\.g\. bbits-ref train .*", line)
    assert match, line
    step, epoch, ckpt, good = int(match[1]), int(match[2]), match[3], int(match[4])
    assert (ckpt, good, epoch) == (str(out / "checkpoint.npz"), 1, 2)
    assert 4 < step <= 8                                 # 4 steps per epoch
    assert (out / "checkpoint.npz").read_bytes() == good_bytes       # the good one, kept
    advice = line.split("e.g. ")[1].split()
    assert advice[:4] == ["bbits-ref", "train", "--resume", str(out)]
    assert advice[4:] == ["--lr", "0.02", "--change-lr"]
    # The advice can be followed, and the change is recorded.
    assert main([*advice[1:], "--no-progress"]) == 0
    record = json.loads((out / "run.json").read_text())
    changes = record["lr_changes"]                   # the diverged attempt was never saved
    assert changes == [{"epoch": 1, "step": 4,
                        "old": {"lr_weights": 1e-3, "lr_gates": 1e-2, "lr_ranges": 1e-3},
                        "new": {"lr_weights": 0.02, "lr_gates": 0.02, "lr_ranges": 0.02}}]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["lr_weights"], saved["lr_gates"], saved["lr_ranges"]) == (0.02,) * 3
    _, optim, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["run"]["lr_changes"] == record["lr_changes"] and meta["epoch"] == 2
    ranges = next(k[:-5] for k, v in optim.items() if k.endswith(".name") and v == "ranges")
    assert float(optim[ranges + ".initial_lr"]) == 0.02
    notes = [h for h in meta["history"] if h["kind"] == "note"]
    assert [{k: n[k] for k in ("event", "epoch", "step", "old", "new")} for n in notes] == [
        {"event": "lr_change", **c} for c in changes]
    assert json.loads((out / "history.json").read_text()) == meta["history"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(runs.FIGURE_FILES)


def test_first_epoch_divergence_has_no_checkpoint_to_name(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--train-limit", "512", "--test-limit", "64", "--epochs", "1",
                 "--lr", "0.01", "--no-progress", "--out", str(out)]) == 5
    line = error_line(capsys)
    assert "training diverged: the range β of fc1.weight_quantizer fell to" in line
    assert "at step 4 (epoch 1); no checkpoint has been written yet" in line
    assert line.endswith("start again with smaller learning rates (e.g. --lr 0.001) or a smaller μ")


def test_changed_settings_at_resume_are_refused_in_one_line(two_runs, capsys):
    a, _ = two_runs
    capsys.readouterr()
    for argv, expected in [
        (["--lr", "1e-4"], "to continue with --lr add --change-lr"),
        (["--change-lr"], "--change-lr needs the new learning rates"),
        (["--mu", "0.5", "--lr", "1e-4", "--change-lr"], "drop --mu"),
        (["--out", "x"], "drop --out"),
    ]:
        assert main(["train", "--resume", str(a), "--no-progress", *argv]) == 2
        assert expected in error_line(capsys), argv
    assert main(["train", *TINY, "--change-lr", "--out", str(a.parent / "c")]) == 2
    assert "use it with --resume" in error_line(capsys)


# --------------------------------------------------------------------------- extreme runs

def test_full_precision_run_draws_its_figures(tmp_path):
    out = tmp_path / "fp"
    assert main(["train", *TINY, "--epochs", "1", "--full-precision", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(runs.FIGURE_FILES)


def test_everything_pruned_draws_its_figures(tmp_path):
    """0 BOPs (every channel pruned) cannot go on a log axis: drawn on a linear one."""
    from bbits_ref.plotting import plot_bops_accuracy, save_run_figures
    from matplotlib.figure import Figure
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    for rec in history:
        rec["relative_bops"] = rec["expected_relative_bops"] = 0.0
        for q in rec["quantizers"].values():
            q.update(expected_bits=0.0, bits=0, chain_probs=[0.0] * 4)
            if q["kept"] is not None:
                q.update(kept=0, prune_prob_mean=0.0)
    files = save_run_figures(history, tmp_path / "figures")
    assert [f.name for f in files] == list(runs.FIGURE_FILES)
    ax = Figure().add_subplot()
    artists = plot_bops_accuracy(history, ax=ax)
    assert ax.get_xscale() == "linear"
    np.testing.assert_array_equal(artists.points.get_offsets()[:, 0], [0.0])

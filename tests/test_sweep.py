"""Tests for ``bbits-ref sweep`` (bbits_ref.cli.sweep): nothing finished is lost or redone.

Members are tiny (256 training / 128 test images, batch 64, 1 epoch: 4 steps) and each trains in
its own worker process, as in real use."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bbits_ref._errors import RunDirError, UsageError
from bbits_ref.cli import build_parser, main
from bbits_ref.cli.options import config_from_args
from bbits_ref.cli.sweep import MemberStopped, SweepFailed, cmd_sweep, run_member
from bbits_ref.training import experiments as ex
from bbits_ref.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
FAST = ["--train-limit", "256", "--test-limit", "128", "--epochs", "1", "--batch-size", "64"]


def sweep(*flags):
    """``bbits-ref sweep`` in-process, errors raised (not turned into exit codes)."""
    return cmd_sweep(build_parser().parse_args(["sweep", *flags]))


def table_of(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def stamps(out: Path) -> dict:
    """Every file under ``out`` -> (size, mtime in ns), to show that nothing was rewritten."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep: μ 0.1 and 1 plus a w8a8 baseline, two workers."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert sweep(*FAST, "--mus", "0.1,1", "--baseline", "w8a8", "--workers", "2",
                 "--out", str(out)) == 0
    return out


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(finished, out)
    return out


def test_sweep_writes_members_table_and_figures(finished, capsys):
    rows = table_of(finished)["runs"]
    assert [(r["member"], r["label"], r["seed"], r["mu"], r["kind"], r["status"])
            for r in rows] == [("mu0.1-seed0", "mu0.1", 0, 0.1, "bb", "done"),
                               ("mu1-seed0", "mu1", 0, 1.0, "bb", "done"),
                               ("w8a8-seed0", "w8a8", 0, 0.0, "baseline", "done")]
    assert any(r["pareto"] for r in rows[:2]) and not rows[2]["pareto"]
    for r in rows:
        summary = json.loads((finished / r["member"] / "summary.json").read_text())
        assert (r["test_accuracy"], r["relative_bops"]) == (
            summary["test_accuracy"], summary["relative_bops"])
        assert summary["epochs"] == 1
        assert (finished / r["member"] / "figures" / "bit_widths.png").stat().st_size > 1000
    base = json.loads((finished / "w8a8-seed0" / "config.json").read_text())["method"]
    assert (base["learn_bits"], base["pruning"], base["weight_bits"], base["act_bits"]) == (
        False, False, 8, 8)
    assert rows[2]["relative_bops"] == pytest.approx(100 * 64 / 1024)     # 8/32 · 8/32
    assert (finished / "figures" / "pareto.png").stat().st_size > 1000
    assert main(["figures", str(finished)]) == 0                # re-render from sweep.json


def test_rerun_skips_finished_members(copy_of_finished, capsys):
    out = copy_of_finished
    before = stamps(out)
    assert sweep(*FAST, "--mus", "0.1,1", "--baseline", "w8a8", "--out", str(out)) == 0
    after = stamps(out)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["figures/pareto.png", "sweep.json"]          # no member was touched
    assert "3 runs (3 finished earlier, 0 to resume)" in capsys.readouterr().out
    rows = table_of(out)["runs"]
    assert all(r["note"] == "finished earlier, not retrained" for r in rows)
    assert [r["test_accuracy"] for r in rows] == [r["test_accuracy"]
                                                  for r in table_of(copy_of_finished)["runs"]]


def test_changed_settings_are_refused(copy_of_finished):
    out = copy_of_finished
    before = stamps(out)
    with pytest.raises(UsageError) as info:
        sweep(*FAST[:-4], "--epochs", "2", "--batch-size", "64", "--mus", "0.1",
              "--baseline", "w8a8", "--out", str(out))
    message = str(info.value)
    assert "\n" not in message
    assert "mu0.1-seed0 (epochs: 1 -> 2)" in message and "w8a8-seed0 (epochs: 1 -> 2)" in message
    assert "--overwrite" in message and "mu1-seed0" not in message   # mu1 is not requested
    assert stamps(out) == before                                      # nothing was written


def test_overwrite_trains_changed_members_again(copy_of_finished, capsys):
    out = copy_of_finished
    untouched = stamps(out / "mu1-seed0")
    assert sweep(*FAST[:-4], "--epochs", "2", "--batch-size", "64", "--mus", "0.1",
                 "--out", str(out), "--overwrite") == 0
    summary = json.loads((out / "mu0.1-seed0" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["config"]["epochs"] == 2
    history = json.loads((out / "mu0.1-seed0" / "history.json").read_text())
    assert [h["epoch"] for h in history if h["kind"] == "epoch"] == [1, 2]
    assert stamps(out / "mu1-seed0") == untouched             # not part of this sweep: kept
    assert [r["member"] for r in table_of(out)["runs"]] == ["mu0.1-seed0"]


def test_interrupted_member_resumes_and_matches_an_uninterrupted_run(tmp_path, capsys):
    flags = [*FAST[:-4], "--epochs", "2", "--batch-size", "64", "--mus", "0.1"]
    base = config_from_args(build_parser().parse_args(["sweep", *flags]))
    [member] = ex.sweep_members(base, [0.1])
    out = tmp_path / "s"
    # the state a killed sweep leaves: a checkpoint after epoch 1 of 2, no summary
    interrupted = Trainer(member.config, out_dir=out / member.name, progress=False, verbose=False)
    interrupted.fit(stop_after=1)
    assert ex.member_state(out / member.name, member.config).state == "interrupted"
    assert sweep(*flags, "--out", str(out)) == 0
    assert "1 to resume" in capsys.readouterr().out
    [row] = table_of(out)["runs"]
    assert (row["status"], row["note"]) == ("done", "resumed")
    history = json.loads((out / member.name / "history.json").read_text())
    assert [h["epoch"] for h in history if h["kind"] == "epoch"] == [1, 2]
    reference = Trainer(member.config, progress=False, verbose=False).fit()
    assert (row["test_accuracy"], row["relative_bops"]) == (
        reference["test_accuracy"], reference["relative_bops"])


def test_failing_member_is_recorded_while_the_others_finish(tmp_path, monkeypatch, capsys):
    import bbits_ref._files
    written, real_write_json = [], bbits_ref._files.write_json

    def spy(path, obj):
        if Path(path).name == "sweep.json":
            written.append([(r["member"], r["status"]) for r in obj["runs"]])
        real_write_json(path, obj)

    monkeypatch.setattr(bbits_ref._files, "write_json", spy)
    import bbits_ref.plotting
    drawn, real_save_figures = [], bbits_ref.plotting.save_sweep_figures

    def spy_figures(points, baselines, out_dir):
        drawn.append(sorted(r["member"] for r in points + baselines))
        return real_save_figures(points, baselines, out_dir)

    monkeypatch.setattr(bbits_ref.plotting, "save_sweep_figures", spy_figures)
    out = tmp_path / "s"
    # μ = 1e308 makes the loss infinite at the first step: a real divergence
    with pytest.raises(SweepFailed) as info:
        sweep(*FAST, "--mus", "0.1,1e308", "--baseline", "w8a8", "--workers", "1",
              "--out", str(out))
    message = str(info.value)
    assert "\n" not in message and message.startswith("1 of 3 sweep members failed: mu1e+308-seed0")
    assert "became inf" in message and info.value.exit_code == 5
    rows = {r["member"]: r for r in table_of(out)["runs"]}
    assert rows["mu1e+308-seed0"]["status"] == "failed"
    assert "TrainingDiverged" in rows["mu1e+308-seed0"]["reason"] or \
        "DivergedError" in rows["mu1e+308-seed0"]["reason"]
    for name in ("mu0.1-seed0", "w8a8-seed0"):
        assert rows[name]["status"] == "done"
        assert (out / name / "summary.json").exists()
    assert (out / "figures" / "pareto.png").exists()
    # the table was written before any member ran and again after each one, failures included
    names = ["mu0.1-seed0", "mu1e+308-seed0", "w8a8-seed0"]
    assert written[:4] == [list(zip(names, s)) for s in (
        ["pending", "pending", "pending"], ["done", "pending", "pending"],
        ["done", "failed", "pending"], ["done", "failed", "done"])]
    assert "FAILED" in capsys.readouterr().out
    # the Pareto figure is drawn as members arrive (not after a failure), and once at the end
    assert drawn == [["mu0.1-seed0"], ["mu0.1-seed0", "w8a8-seed0"], ["mu0.1-seed0", "w8a8-seed0"]]


def test_seeds_are_an_axis_with_mean_and_std(tmp_path, capsys):
    out = tmp_path / "s"
    assert sweep(*FAST, "--mus", "0.1", "--seeds", "0,1", "--baseline", "w4a4",
                 "--workers", "2", "--out", str(out)) == 0
    table = table_of(out)
    assert [r["member"] for r in table["runs"]] == ["mu0.1-seed0", "w4a4-seed0",
                                                    "mu0.1-seed1", "w4a4-seed1"]
    for r in table["runs"]:
        assert json.loads((out / r["member"] / "config.json").read_text())["seed"] == r["seed"]
    for g in table["groups"]:
        runs = [r for r in table["runs"] if r["label"] == g["label"]]
        acc = [r["test_accuracy"] for r in runs]
        assert (g["n"], g["seeds"]) == (2, [0, 1])
        assert g["test_accuracy_mean"] == pytest.approx(np.mean(acc))
        assert g["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
    text = capsys.readouterr().out
    assert "mean ± std" in text


def test_baselines_only_with_empty_mus(tmp_path):
    out = tmp_path / "s"
    assert sweep(*FAST, "--mus", "", "--baseline", "w2a2", "--workers", "1",
                 "--out", str(out)) == 0
    table = table_of(out)
    assert [r["member"] for r in table["runs"]] == ["w2a2-seed0"]
    assert [g["kind"] for g in table["groups"]] == ["baseline"]


@pytest.mark.parametrize("flags, message", [
    (["--mus", "0.1,x"], "--mus takes comma-separated numbers"),
    (["--mus", ""], "at least one μ or baseline"),
    (["--seeds", "0,a"], "--seeds takes comma-separated whole numbers"),
    (["--seeds", "0,0"], "lists seeds more than once: 0"),
    (["--workers", "0"], "--workers must be at least 1; got 0"),
    (["--baseline", "w8"], "unknown baseline 'w8': use wXaY"),
    (["--baseline", "prune-only-w8"], "unknown baseline 'prune-only-w8'"),
    (["--baseline", "w5a5"], "baseline 'w5a5': .*bits must be one of"),
])
def test_bad_arguments_are_one_line_and_create_nothing(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message) as info:
        sweep(*FAST, *flags, "--out", str(tmp_path / "s"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()


def test_a_foreign_sweep_json_is_not_overwritten(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text("my notes")
    with pytest.raises(RunDirError, match="not a bbits_ref sweep table"):
        sweep(*FAST, "--mus", "0.1", "--out", str(out))
    assert (out / "sweep.json").read_text() == "my notes"


def test_scheduler_without_dask_names_the_extra_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)      # import distributed fails
    code = main(["sweep", *FAST, "--mus", "0.1", "--scheduler", "local",
                 "--out", str(tmp_path / "s")])
    assert code == 2
    assert capsys.readouterr().err == ("bbits-ref: --scheduler needs the optional extra: "
                                       "pip install 'bbits-ref[cluster]'\n")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- stopping
def test_a_member_asked_to_stop_stops_after_its_checkpoint_and_resumes(tmp_path):
    flags = [*FAST[:-4], "--epochs", "2", "--batch-size", "64"]
    config = config_from_args(build_parser().parse_args(["sweep", *flags])).replace(mu=0.1)
    out = tmp_path / "m"
    asked = []

    def stop_after_first_epoch() -> bool:
        asked.append((out / "checkpoint.npz").exists())
        return len(asked) > 1

    with pytest.raises(MemberStopped, match="after epoch 1; run the sweep again"):
        run_member(config.to_dict(), out, should_stop=stop_after_first_epoch)
    assert asked == [False, True]            # asked before training, then after epoch 1's checkpoint
    assert ex.member_state(out, config).state == "interrupted"
    assert not (out / "summary.json").exists()
    summary = run_member(config.to_dict(), out, should_stop=lambda: False)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history if h["kind"] == "epoch"] == [1, 2]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert ex.member_state(out, config).state == "finished"


def _children(pid: int) -> list[int]:
    """Worker processes (multiprocessing spawn) whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for an absent reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_sweep_stops_its_workers(tmp_path, sig):
    out = tmp_path / "s"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    parent = subprocess.Popen(
        [sys.executable, "-m", "bbits_ref.cli", "sweep", *FAST[:-4], "--epochs", "1000",
         "--batch-size", "64", "--mus", "0.1,1,10", "--workers", "2", "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = _children(parent.pid)
        assert len(workers) == 2, (parent.poll(), parent.stderr.read() if parent.poll() else "")
        time.sleep(1.0)                                        # let them train
        parent.send_signal(sig)
        code = parent.wait(timeout=30)
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        for w in workers:                                       # never leave a worker behind
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        stderr = parent.stderr.read().decode()
        assert code == 130, stderr
        assert "run the same command again to continue" in stderr
        assert all(r["status"] == "pending" for r in table_of(out)["runs"])

"""``bbits-ref sweep --scheduler``: sweep members as tasks on a Dask cluster (the ``cluster`` extra).

The members are tiny (128 training / 64 test images, batch 64, 1 epoch: 2 steps).  Every cluster
here is bound to 127.0.0.1 and closed by the test that starts it, so no process is left behind."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from bbits_ref._errors import UsageError
from bbits_ref.cli import build_parser, main
from bbits_ref.cli.options import config_from_args
from bbits_ref.cli.sweep import MemberStopped, _dask_member, cmd_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = ["--train-limit", "128", "--test-limit", "64", "--epochs", "1", "--batch-size", "64"]
WHY = "needs the optional extra 'cluster' (pip install 'bbits-ref[cluster]'); CI installs it"


def test_ci_installs_the_cluster_extra_that_pyproject_declares():
    # scripts/run_tests.sh spells the extra's requirements out (its one `-e .[...]` install line
    # is the synced extras, see tests/test_packaging.py); this keeps the two from drifting apart
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["cluster"]
    script = (REPO / "scripts" / "run_tests.sh").read_text()
    assert extra and all(f"pip install --quiet '{req}'" in script for req in extra), extra


@pytest.fixture(scope="module")
def distributed():
    return pytest.importorskip("distributed", reason=WHY)


@pytest.fixture(scope="module")
def psutil(distributed):
    return pytest.importorskip("psutil", reason="distributed depends on psutil")


def descendants(psutil) -> set:
    """This process's running descendants, but the multiprocessing resource tracker (which
    stays)."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and \
                    "resource_tracker" not in " ".join(p.cmdline()):
                found.add(p.pid)
        except psutil.Error:                  # ended meanwhile
            pass
    return found


def stamps(out: Path) -> dict:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(distributed, psutil, tmp_path_factory):
    """One μ, two seeds, on a LocalCluster of two worker processes that the sweep starts.

    Returns (sweep folder, what it printed, the processes left after it)."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("dask") / "s"
    before = descendants(psutil)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sweep", *TINY, "--mus", "0.05", "--seeds", "0,1", "--scheduler", "local",
                     "--workers", "2", "--out", str(out)])
    assert code == 0, printed.getvalue()
    deadline = time.time() + 10              # closed processes may take a moment to be reaped
    while descendants(psutil) - before and time.time() < deadline:
        time.sleep(0.2)
    return out, printed.getvalue(), descendants(psutil) - before


def test_two_members_on_a_local_cluster_fill_the_table(finished):
    out, printed, _ = finished
    table = json.loads((out / "sweep.json").read_text())
    rows = table["runs"]
    assert [(r["member"], r["seed"], r["mu"], r["status"]) for r in rows] == [
        ("mu0.05-seed0", 0, 0.05, "done"), ("mu0.05-seed1", 1, 0.05, "done")]
    for r in rows:
        summary = json.loads((out / r["member"] / "summary.json").read_text())
        assert (r["test_accuracy"], r["relative_bops"]) == (
            summary["test_accuracy"], summary["relative_bops"])
        assert json.loads((out / r["member"] / "config.json").read_text())["seed"] == r["seed"]
    [group] = table["groups"]
    acc = [r["test_accuracy"] for r in rows]
    assert (group["label"], group["n"], group["seeds"]) == ("mu0.05", 2, [0, 1])
    assert group["test_accuracy_mean"] == pytest.approx(np.mean(acc))
    assert group["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
    assert (out / "figures" / "pareto.png").stat().st_size > 1000
    assert "on a local Dask cluster of 2 worker process(es)" in printed
    assert "[1/2] mu0.05-seed" in printed and "[2/2] mu0.05-seed" in printed
    assert "mean ± std" in printed


def test_the_local_cluster_is_closed_with_its_workers(finished):
    _, _, left = finished
    assert left == set()


def test_rerun_skips_both_finished_members_without_a_cluster(finished, psutil, capsys):
    out, _, _ = finished
    members = {k: v for k, v in stamps(out).items() if k.startswith("mu0.05-")}
    before = descendants(psutil)
    started = time.time()
    assert main(["sweep", *TINY, "--mus", "0.05", "--seeds", "0,1", "--scheduler", "local",
                 "--out", str(out)]) == 0
    elapsed = time.time() - started
    printed = capsys.readouterr().out
    assert "2 runs (2 finished earlier, 0 to resume) on no Dask cluster" in printed
    assert {k: v for k, v in stamps(out).items() if k.startswith("mu0.05-")} == members
    rows = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["note"] for r in rows] == ["finished earlier, not retrained"] * 2
    assert descendants(psutil) == before             # no cluster was started for nothing
    assert elapsed < 30, elapsed


@pytest.fixture
def their_cluster(distributed):
    """A running cluster the sweep did not start (one in-process worker thread)."""
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                       protocol="tcp", host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0")   # not port 8787
    client = distributed.Client(cluster, set_as_default=False)
    yield cluster, client
    client.close()
    cluster.close()


def test_a_cluster_the_sweep_did_not_start_keeps_running(their_cluster, tmp_path, capsys,
                                                         monkeypatch):
    cluster, client = their_cluster
    out = tmp_path / "s"
    monkeypatch.chdir(tmp_path)                 # a relative --out: tasks get the absolute path
    assert main(["sweep", *TINY, "--mus", "0.05", "--scheduler", cluster.scheduler_address,
                 "--out", "s", "--data-dir", "data"]) == 0
    assert f"on the Dask cluster at {cluster.scheduler_address} (1 workers" in \
        capsys.readouterr().out
    [row] = json.loads((out / "sweep.json").read_text())["runs"]
    assert row["status"] == "done" and (out / "mu0.05-seed0" / "summary.json").exists()
    saved = json.loads((out / "mu0.05-seed0" / "config.json").read_text())
    assert saved["data_dir"] == str((tmp_path / "data").resolve())
    assert len(client.nthreads()) == 1          # its worker is still there
    assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the worker is a thread here
def test_a_failing_member_is_recorded_with_its_reason(their_cluster, tmp_path, capsys):
    cluster, _ = their_cluster
    out = tmp_path / "s"
    # μ = 1e308 makes the loss infinite at the first step: a real divergence (exit code 5)
    assert main(["sweep", *TINY, "--mus", "1e308", "--scheduler", cluster.scheduler_address,
                 "--out", str(out)]) == 5
    [row] = json.loads((out / "sweep.json").read_text())["runs"]
    assert (row["status"], row["exit_code"]) == ("failed", 5)
    assert re.match(r"(TrainingDiverged|DivergedError): training diverged: loss became inf",
                    row["reason"]), row["reason"]
    captured = capsys.readouterr()
    assert f"[1/1] mu1e+308-seed0: FAILED: {row['reason']}" in captured.out
    assert captured.err.startswith("bbits-ref: 1 of 1 sweep members failed: mu1e+308-seed0")


def test_a_stopped_sweep_stops_its_members_and_one_member_folder_has_one_writer(
        distributed, their_cluster, tmp_path):
    _, client = their_cluster
    config = config_from_args(build_parser().parse_args(["sweep", *TINY])).replace(mu=0.05)
    out = str(tmp_path / "m")
    lock = distributed.Lock(f"bbits-ref-member:{out}", scheduler_rpc=client.scheduler,
                            loop=client.loop)
    assert lock.acquire(timeout=5)              # a task of an earlier sweep still writes there
    stop = distributed.Event("bbits-ref-test-stop", client=client)
    future = client.submit(_dask_member, config.to_dict(), out, stop.name, True, pure=False)
    time.sleep(2)
    assert not future.done()                    # waits for the lock instead of writing
    stop.set()                                  # the sweep is stopped meanwhile
    status, reason, code = future.result(timeout=30)
    lock.release()
    assert (status, code) == ("error", MemberStopped.exit_code)
    assert reason.startswith("MemberStopped:") and "before it started" in reason
    assert not Path(out).exists()               # it trained nothing


@pytest.mark.parametrize("address, why", [("tcp://127.0.0.1:1", "Timed out"),
                                          ("not-an-address", "missing port")])
def test_a_scheduler_that_cannot_be_reached_is_one_line_and_writes_nothing(
        distributed, tmp_path, address, why):
    import dask
    out = tmp_path / "s"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(UsageError) as info:
            cmd_sweep(build_parser().parse_args(["sweep", *TINY, "--mus", "0.05", "--scheduler",
                                                 address, "--out", str(out)]))
    message = str(info.value)
    assert "\n" not in message and why in message
    assert message.startswith(f"--scheduler: cannot connect to a Dask scheduler at '{address}'")
    assert not out.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and process trees")
def test_sigterm_closes_the_local_cluster_it_started(distributed, psutil, tmp_path):
    out = tmp_path / "s"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    sweep = subprocess.Popen(
        [sys.executable, "-m", "bbits_ref.cli", "sweep", *TINY[:-4], "--epochs", "1000",
         "--batch-size", "64", "--mus", "0.05,0.5", "--scheduler", "local", "--workers", "2",
         "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tree = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline and sweep.poll() is None and not (
                (out / "mu0.05-seed0" / "config.json").exists()
                and (out / "mu0.5-seed0" / "config.json").exists()):
            time.sleep(0.2)                      # until both members train
        assert sweep.poll() is None, sweep.stderr.read().decode()
        tree = psutil.Process(sweep.pid).children(recursive=True)
        assert len(tree) >= 2                    # the worker processes
        sweep.send_signal(signal.SIGTERM)
        code = sweep.wait(timeout=60)
        gone, alive = psutil.wait_procs(tree, timeout=15)
        assert alive == []
    finally:
        for p in tree:                           # never leave a process behind
            if p.is_running():
                p.kill()
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    stderr = sweep.stderr.read().decode()
    assert code == 130, stderr
    assert "run the same command again to continue" in stderr
    assert "its Dask cluster and workers are stopped too" in stderr
    assert "Traceback" not in stderr            # the workers leave Ctrl-C/SIGTERM to the sweep
    rows = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in rows] == ["pending", "pending"]

"""``bbits-ref sweep``: μ values × seeds (and baselines) in worker processes, losing nothing.

The sweep folder holds one folder per member (``mu0.1-seed0``, ``w4a4-seed0``...), each a
normal run, and ``sweep.json``, the table (:func:`bbits_ref.training.experiments.sweep_table`),
rewritten atomically whenever a member finishes or fails.  Running the same command again
reuses finished members, resumes interrupted ones from their checkpoints, and refuses members
trained with other settings unless ``--overwrite`` is given.  A failing member is recorded with
its reason while the others go on.  Stopping the sweep (Ctrl-C, SIGTERM, or its process being
killed) stops its workers too.

Each member is an independent task, :func:`run_member` ``(config_dict, out_dir) -> summary``;
:func:`run_local` runs tasks in local processes (another executor can run the same tasks).
"""
from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from pathlib import Path

from bbits_ref._errors import BBitsError, DataFileError, RunDirError, UsageError

__all__ = ["add_sweep_options", "cmd_sweep", "run_member", "run_local", "SweepFailed"]

class SweepFailed(BBitsError):
    """Some members of a sweep failed; the others finished (the table names both)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- one member
def run_member(config_dict: dict, out_dir) -> dict:
    """Train one sweep member in ``out_dir`` and return its summary.

    A member that already finished there with the same settings is returned as it is; one that
    was interrupted is resumed from its checkpoint.  Safe to run again after any interruption.
    """
    from bbits_ref._runtime import keep_freed_memory
    from bbits_ref.cli.run import render_run
    from bbits_ref.training import runs
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.experiments import config_differences, member_state
    from bbits_ref.training.trainer import Trainer

    keep_freed_memory()
    config, out = TrainConfig.from_dict(config_dict), Path(out_dir)
    state = member_state(out, config)
    if state.state == "finished":
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    if state.state == "other-settings":
        raise RunDirError(f"{out} holds a run with other settings ({'; '.join(state.differences)})"
                          "; pass --overwrite to train it again")
    if state.state == "interrupted":
        trainer = Trainer.resume(out, progress=False, verbose=False)
        differences = config_differences(trainer.config.to_dict(), config.to_dict())
        if differences:
            raise RunDirError(f"{out}/checkpoint.npz was written with other settings "
                              f"({'; '.join(differences)}); pass --overwrite to train it again")
    else:
        # a run of these settings that never finished an epoch: nothing to keep (a folder
        # holding anything that is not a run's is refused, not cleared)
        runs.clear_run(out)
        trainer = Trainer(config, out_dir=out, progress=False, verbose=False)
    summary = trainer.fit()
    try:
        render_run(out, trainer.history)
    except Exception as exc:       # the run is complete; missing figures can be rendered later
        print(f"{out}: figures not written ({exc}); run bbits-ref figures {out}", file=sys.stderr)
    return summary


# ----------------------------------------------------------------------------- local workers
def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the sweep process ends, however it ends.

    On Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); everywhere
    a watchdog thread exits once the parent pid changes (the worker was re-parented).
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:           # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="bbits-parent-watch", daemon=True).start()


def _worker(config_dict: dict, out_dir: str, conn, parent_pid: int) -> None:
    """A worker process: run one member, send ``("ok", summary)`` or ``("error", reason, code)``."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    try:
        result = ("ok", run_member(config_dict, out_dir))
    except Exception as exc:
        code = getattr(exc, "exit_code", 5 if isinstance(exc, FloatingPointError) else 1)
        message = " ".join(str(exc).split()) or "(no message)"
        result = ("error", f"{type(exc).__name__}: {message}", code)
    conn.send(result)
    conn.close()


def run_local(tasks, workers: int):
    """Run ``(name, config_dict, out_dir)`` tasks in at most ``workers`` processes at a time.

    Yields ``(name, ("ok", summary))`` or ``(name, ("error", reason, exit_code))`` as members
    finish, in the order they finish.  Each task gets its own process, so a crash or an
    out-of-memory kill fails that member only.  When the caller stops (an exception, Ctrl-C,
    closing the generator) the running workers are terminated.
    """
    ctx = multiprocessing.get_context("spawn")       # the workers' parent is this process
    pending, running = list(tasks), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                name, config_dict, out_dir = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, name=f"bbits-sweep-{name}", daemon=True,
                                   args=(config_dict, str(out_dir), send, os.getpid()))
                proc.start()
                send.close()
                running[name] = [proc, receive, None]
            waiting = {}
            for name, job in running.items():
                waiting[job[0].sentinel] = name
                if not job[1].closed:
                    waiting[job[1]] = name
            for ready in multiprocessing.connection.wait(list(waiting)):
                name = waiting[ready]
                proc, conn, result = running[name]
                if ready is conn:
                    try:
                        running[name][2] = conn.recv()
                    except (EOFError, OSError):
                        pass
                    conn.close()
            for name in [n for n, job in running.items() if not job[0].is_alive()]:
                proc, conn, result = running.pop(name)
                proc.join()
                if result is None and not conn.closed and conn.poll():
                    try:
                        result = conn.recv()
                    except (EOFError, OSError):
                        pass
                conn.close()
                if result is None:
                    code = proc.exitcode
                    how = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                           else f"exited with code {code}")
                    result = ("error", f"the worker process {how} (out of memory?)", 1)
                yield name, result
    finally:
        for proc, conn, _ in running.values():
            proc.terminate()
        for proc, conn, _ in running.values():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


class _Stop(KeyboardInterrupt):
    """Raised in the sweep process by SIGTERM, so that it stops like on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop()


# ----------------------------------------------------------------------------- the command
def add_sweep_options(p) -> None:
    """The options of ``bbits-ref sweep`` besides the training ones."""
    from bbits_ref.training.experiments import BASELINE_HELP
    p.add_argument("--mus", default="0.01,0.1,1", help="comma-separated μ values")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: every μ and baseline is "
                                   "trained once per seed and the table gives mean ± std "
                                   "(default: --seed)")
    p.add_argument("--baseline", action="append",
                   help=f"add a baseline run: {BASELINE_HELP} (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--out", help="sweep folder (default runs/sweep-<model>-<dataset>)")
    p.add_argument("--overwrite", action="store_true",
                   help="train again the members whose folder holds other settings")


def _number_list(text: str, kind, flag: str, example: str) -> list:
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated {example}; got {text!r}") from None
    return values


def _check_sweep_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; give --out a folder for the sweep")
    table = out / "sweep.json"
    if table.exists():
        from bbits_ref.training.runs import read_json
        try:
            data = read_json(table, "sweep table")
        except DataFileError:
            data = None
        if not (isinstance(data, dict) and isinstance(data.get("runs"), list)):
            raise RunDirError(f"{table} exists but is not a bbits_ref sweep table; choose another "
                              "--out (it is not overwritten)")


def cmd_sweep(args) -> int:
    from bbits_ref._files import write_json
    from bbits_ref.cli.options import config_from_args
    from bbits_ref.training import experiments as ex
    from bbits_ref.training import runs

    base = config_from_args(args)
    out = Path(args.out or f"runs/sweep-{base.model}-{base.dataset}")
    mus = _number_list(args.mus, float, "--mus", "numbers such as 0.01,0.1,1")
    seeds = None if args.seeds is None else _number_list(args.seeds, int, "--seeds",
                                                         "whole numbers such as 0,1,2")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1; got {args.workers}")
    members = ex.sweep_members(base, mus, seeds, args.baseline or [])
    _check_sweep_dir(out)

    states = {m.name: ex.member_state(out / m.name, m.config) for m in members}
    conflicts = [m for m in members if states[m.name].state == "other-settings"]
    if conflicts and not args.overwrite:
        named = "; ".join(f"{m.name} ({', '.join(states[m.name].differences)})" for m in conflicts)
        raise UsageError(f"{out} holds members trained with other settings: {named}; pass "
                         "--overwrite to train them again, or choose another --out")
    for m in conflicts:                 # refuse before removing anything if one cannot be
        runs.check_new_run(out / m.name, force=True)
    for m in conflicts:
        runs.clear_run(out / m.name)    # removes a run's own files only
        states[m.name] = ex.MemberState("new")

    rows = {}
    for m in members:
        if states[m.name].state == "finished":
            summary = json.loads((out / m.name / "summary.json").read_text(encoding="utf-8"))
            rows[m.name] = ex.member_row(m, summary, note="finished earlier, not retrained")
        else:
            rows[m.name] = ex.member_row(m, status="pending")

    def save() -> dict:
        table = ex.sweep_table(list(rows.values()))
        write_json(out / "sweep.json", table)
        return table

    save()
    todo = [m for m in members if states[m.name].state != "finished"]
    by_name = {m.name: m for m in members}
    print(f"sweep: {len(members)} runs ({len(members) - len(todo)} finished earlier, "
          f"{sum(states[m.name].state == 'interrupted' for m in todo)} to resume) with "
          f"{args.workers} worker process(es) -> {out}", flush=True)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_stop)
    started, done = time.time(), 0
    results = run_local([(m.name, m.config.to_dict(), out / m.name) for m in todo], args.workers)
    try:
        for name, result in results:
            m, done = by_name[name], done + 1
            note = "resumed" if states[name].state == "interrupted" else None
            if result[0] == "ok":
                rows[name] = ex.member_row(m, result[1], note=note)
                what = (f"test acc {result[1]['test_accuracy']:.4f} at "
                        f"{result[1]['relative_bops']:.4f}% relative BOPs")
            else:
                rows[name] = ex.member_row(m, status="failed", reason=result[1], note=note)
                rows[name]["exit_code"] = result[2]
                what = f"FAILED: {result[1]}"
            save()
            print(f"[{done}/{len(todo)}] {name}: {what} ({time.time() - started:.0f} s)",
                  flush=True)
    except KeyboardInterrupt:
        results.close()                 # terminate the workers first
        save()
        print(f"sweep stopped; its workers are stopped too. {out}/sweep.json lists what "
              "finished; run the same command again to continue (interrupted members resume "
              "from their last checkpoint)", file=sys.stderr)
        return 130
    finally:
        results.close()                 # terminates running workers if we stopped early
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    table = save()
    print(ex.format_sweep_table(table))
    points, baselines = ex.sweep_points(table)
    if points or baselines:
        from bbits_ref.plotting import save_sweep_figures
        save_sweep_figures(points, baselines, out / "figures")
    failed = [r for r in table["runs"] if r["status"] == "failed"]
    if failed:
        codes = {r.get("exit_code", 1) for r in failed}
        raise SweepFailed(
            f"{len(failed)} of {len(members)} sweep members failed: "
            + "; ".join(f"{r['member']} ({r['reason']})" for r in failed)
            + f"; the others are in {out}/sweep.json. Fix the cause and run the same command "
              "again: finished members are reused", codes.pop() if len(codes) == 1 else 1)
    return 0

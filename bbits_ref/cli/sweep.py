"""``bbits-ref sweep``: μ values × seeds (and baselines) in worker processes, losing nothing.

The sweep folder holds one folder per member (``mu0.1-seed0``, ``w4a4-seed0``...), each a
normal run, and ``sweep.json``, the table (:func:`bbits_ref.training.experiments.sweep_table`),
rewritten atomically whenever a member finishes or fails, together with ``figures/pareto.png``.
Running the same command again reuses finished members, resumes interrupted ones from their
checkpoints, and refuses members trained with other settings unless ``--overwrite`` is given.
A failing member is recorded with its reason while the others go on.  Stopping the sweep
(Ctrl-C, SIGTERM, or its process being killed) stops its workers too.

Each member is an independent task, :func:`run_member` ``(config_dict, out_dir) -> summary``.
Two executors run the tasks and yield their results as they finish, for one recording loop:
:func:`run_local` (local processes, the default, no extra dependency) and :func:`run_dask`
(``--scheduler ADDRESS``: the tasks of a Dask distributed cluster, the ``cluster`` extra;
``--scheduler local`` starts a ``LocalCluster`` on this machine).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from bbits_ref._errors import BBitsError, DataFileError, RunDirError, UsageError

__all__ = ["add_sweep_options", "cmd_sweep", "run_member", "run_local", "run_dask", "open_dask",
           "close_dask", "dask_setup", "SweepFailed", "MemberStopped"]

class SweepFailed(BBitsError):
    """Some members of a sweep failed; the others finished (the table names both)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MemberStopped(BBitsError):
    """A member stopped at the end of an epoch because its sweep was stopped (its checkpoint
    is written, so running the sweep again resumes it)."""

    exit_code = 130


# ----------------------------------------------------------------------------- one member
def run_member(config_dict: dict, out_dir, should_stop=None) -> dict:
    """Train one sweep member in ``out_dir`` and return its summary.

    A member that already finished there with the same settings is returned as it is; one that
    was interrupted is resumed from its checkpoint.  Safe to run again after any interruption.
    ``should_stop`` (a function of no argument) is asked after every epoch, once its checkpoint
    is written: when it returns True the member stops with :class:`MemberStopped`.  A worker
    that cannot be killed (a thread of a Dask worker the sweep did not start) stops this way.
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
    if should_stop is None:
        summary = trainer.fit()
    else:
        while True:             # one epoch at a time; the last call writes summary.json
            if should_stop():
                raise MemberStopped(f"{out}: stopped by its sweep after epoch {trainer.epoch}; "
                                    "run the sweep again to resume it from its checkpoint")
            summary = trainer.fit(stop_after=1)
            if trainer.epoch >= trainer.total_epochs:
                break
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


def _error_result(exc: BaseException) -> tuple:
    """``("error", "Type: one-line message", exit_code)``: how every executor reports a failure."""
    code = getattr(exc, "exit_code", 5 if isinstance(exc, FloatingPointError) else 1)
    message = " ".join(str(exc).split()) or "(no message)"
    return ("error", f"{type(exc).__name__}: {message}", code)


def _worker(config_dict: dict, out_dir: str, conn, parent_pid: int) -> None:
    """A worker process: run one member, send ``("ok", summary)`` or ``("error", reason, code)``."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    try:
        result = ("ok", run_member(config_dict, out_dir))
    except Exception as exc:
        result = _error_result(exc)
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


# ----------------------------------------------------------------------------- a Dask cluster
NEEDS_CLUSTER_EXTRA = "--scheduler needs the optional extra: pip install 'bbits-ref[cluster]'"

# The workers of a LocalCluster started here, like the local worker processes: one BLAS thread
# each, so that n workers use n cores (a remote cluster's workers get this from Dask's default
# ``distributed.nanny.pre-spawn-environ``).
_ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _import_distributed():
    """The ``distributed`` module, or a :class:`UsageError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise UsageError(NEEDS_CLUSTER_EXTRA) from None
    return distributed


def open_dask(scheduler: str, workers: int):
    """``(client, cluster)`` for ``--scheduler``: ``"local"`` starts a ``LocalCluster`` of
    ``workers`` single-threaded worker processes bound to 127.0.0.1 (returned as ``cluster``, to
    be closed by the caller); an address (``tcp://HOST:PORT``) connects to a running scheduler
    (``cluster`` is None: that cluster is someone else's and is never shut down).
    """
    distributed = _import_distributed()
    if scheduler == "local":
        # silence_logs: the sweep reports each member's failure itself; Dask's own warnings
        # (tasks cancelled, workers killed when the sweep stops) would bury that in tracebacks
        with warnings.catch_warnings():     # its small HTTP server moves off a busy port 8787
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, env=dict(_ONE_BLAS_THREAD), silence_logs=logging.ERROR,
                preload=[__name__])                 # runs dask_setup below in every worker
        try:
            return distributed.Client(cluster, set_as_default=False), cluster
        except BaseException:
            cluster.close()
            raise
    try:
        return distributed.Client(scheduler, set_as_default=False), None
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"--scheduler: cannot connect to a Dask scheduler at {scheduler!r} "
                         f"({reason}); give the address the scheduler prints, such as "
                         "tcp://10.0.0.5:8786, or --scheduler local") from None


def dask_setup(worker) -> None:
    """Dask's preload hook, run in each worker of a LocalCluster that the sweep starts.

    Ctrl-C in a terminal reaches every process of the sweep: like local worker processes,
    these leave it to the sweep, which stops them (instead of each printing a traceback).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def close_dask(client, cluster) -> None:
    """Disconnect ``client``; shut ``cluster`` down only when it is one :func:`open_dask` started."""
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _dask_member(config_dict: dict, out_dir: str, stop_event: str, exclusive: bool) -> tuple:
    """A Dask task: :func:`run_member`, returning ``("ok", summary)`` or ``("error", ...)``.

    The member stops after its next checkpoint once the Dask event ``stop_event`` is set.
    ``exclusive`` (a cluster the sweep did not start, which outlives it): hold the cluster-wide
    lock of ``out_dir``, so that a member still finishing its epoch for a stopped sweep and the
    same member of the sweep run again never write the same folder at once.
    """
    from distributed import Event, Lock, get_client

    stop = Event(stop_event, client=get_client())
    lock = Lock(f"bbits-ref-member:{out_dir}") if exclusive else None
    while lock is not None and not lock.acquire(timeout=1):
        if stop.is_set():
            return _error_result(MemberStopped(f"{out_dir}: its sweep was stopped before it "
                                               "started"))
    try:
        return ("ok", run_member(config_dict, out_dir, should_stop=stop.is_set))
    except Exception as exc:
        return _error_result(exc)
    finally:
        if lock is not None:
            with contextlib.suppress(Exception):    # a lease the scheduler already dropped
                lock.release()


def run_dask(tasks, client, exclusive: bool = True):
    """Run ``(name, config_dict, out_dir)`` tasks on the Dask cluster of ``client``.

    Yields ``(name, result)`` as members finish, like :func:`run_local`.  Every task gets
    ``out_dir`` (and the config's ``data_dir``) as absolute paths, so the workers must see the
    same folders (a shared filesystem, for a cluster of several machines).  A task that the cluster could not run (its worker died
    three times, or cannot import bbits_ref) is a failed member too.  When the caller stops, the
    pending tasks are cancelled and the running ones stop after their next checkpoint.
    ``exclusive`` (see :func:`_dask_member`) may be False only on a cluster that ends with the
    sweep, where no task of an earlier sweep can still be running.
    """
    from distributed import Event, as_completed

    token = uuid.uuid4().hex[:8]
    stop_event = f"bbits-ref-sweep-stop-{token}"
    futures, names = [], {}
    for name, config_dict, out_dir in tasks:
        if config_dict.get("data_dir"):         # relative to this folder, not the workers'
            config_dict = {**config_dict,
                           "data_dir": str(Path(config_dict["data_dir"]).expanduser().resolve())}
        future = client.submit(_dask_member, config_dict, str(Path(out_dir).resolve()),
                               stop_event, exclusive, pure=False,
                               key=f"bbits-ref-{name}-{token}")
        futures.append(future)
        names[future.key] = name
    finished = False
    try:
        for future in as_completed(futures, loop=client.loop):
            if future.status == "finished":
                result = future.result()
            elif future.status == "cancelled":
                result = ("error", "its task was cancelled on the cluster", 1)
            else:
                result = _error_result(future.exception())
                if type(future.exception()).__name__ == "KilledWorker":
                    result = (result[0], result[1] + " (out of memory?)", result[2])
            yield names[future.key], result
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(Exception):    # the scheduler may be gone already
                Event(stop_event, client=client).set()
                client.cancel(futures)


class _Stop(KeyboardInterrupt):
    """Raised in the sweep process by SIGTERM, so that it stops like on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop()


# ----------------------------------------------------------------------------- the command
def add_sweep_options(p) -> None:
    """The options of ``bbits-ref sweep`` besides the training ones."""
    from bbits_ref.training.experiments import BASELINE_HELP
    p.add_argument("--mus", default="0.01,0.1,1",
                   help="comma-separated μ values ('' for none: baselines only)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: every μ and baseline is "
                                   "trained once per seed and the table gives mean ± std "
                                   "(default: --seed)")
    p.add_argument("--baseline", action="append",
                   help=f"add a baseline run: {BASELINE_HELP} (repeatable)")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes (also those of --scheduler local; a running cluster "
                        "uses the workers it has)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the members as tasks on a Dask cluster: 'local' starts one on this "
                        "machine, tcp://HOST:PORT connects to a running scheduler, whose "
                        "workers must see --out (a shared filesystem). Needs the extra: pip "
                        "install 'bbits-ref[cluster]' (default: local processes)")
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


@contextlib.contextmanager
def _executor(scheduler, workers: int, n_tasks: int):
    """``(where, run, stopping)``: where the members run (for the first line), ``run(tasks)``,
    the executor, and what stopping the sweep does to its workers.  A Dask cluster is reached
    (or started) only when there are tasks, and left (or closed) however the sweep ends."""
    if scheduler is None:
        yield (f"{workers} worker process(es)", lambda tasks: run_local(tasks, workers),
               "its workers are stopped too")
        return
    if n_tasks == 0:
        yield "no Dask cluster (nothing to train)", _no_tasks, "nothing was running"
        return
    client, cluster = open_dask(scheduler, min(workers, n_tasks))
    try:
        if cluster is not None:
            where = f"a local Dask cluster of {len(client.nthreads())} worker process(es)"
            stopping = "its Dask cluster and workers are stopped too"
        else:
            where = (f"the Dask cluster at {scheduler} ({len(client.nthreads())} workers, "
                     f"{sum(client.nthreads().values())} threads)")
            stopping = ("its members stop on the cluster once their current epoch is saved "
                        "(the cluster itself keeps running)")
        yield where, lambda tasks: run_dask(tasks, client, exclusive=cluster is None), stopping
    finally:
        close_dask(client, cluster)


def _no_tasks(tasks):
    """The executor of a sweep with nothing left to train."""
    yield from ()


def _save_figures(table: dict, out: Path) -> None:
    """Draw ``figures/pareto.png`` from the finished members of the sweep table."""
    from bbits_ref.training.experiments import sweep_points
    points, baselines = sweep_points(table)
    if points or baselines:
        from bbits_ref.plotting import save_sweep_figures
        save_sweep_figures(points, baselines, out / "figures")


def cmd_sweep(args) -> int:
    from bbits_ref.cli.options import config_from_args
    from bbits_ref.training import experiments as ex
    from bbits_ref.training import runs

    base = config_from_args(args)
    out = Path(args.out or f"runs/sweep-{base.model}-{base.dataset}")
    mus = ([] if not args.mus.strip()              # --mus "": baselines only
           else _number_list(args.mus, float, "--mus", "numbers such as 0.01,0.1,1"))
    seeds = None if args.seeds is None else _number_list(args.seeds, int, "--seeds",
                                                         "whole numbers such as 0,1,2")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1; got {args.workers}")
    if args.scheduler is not None:
        _import_distributed()
        if not args.scheduler.strip():
            raise UsageError("--scheduler takes 'local' or a Dask scheduler address such as "
                             "tcp://10.0.0.5:8786; got an empty string")
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
    todo = [m for m in members if states[m.name].state != "finished"]

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        # the cluster is reached before anything is written: a wrong address changes nothing
        with _executor(args.scheduler, args.workers, len(todo)) as (where, run, stopping):
            for m in conflicts:
                runs.clear_run(out / m.name)    # removes a run's own files only
                states[m.name] = ex.MemberState("new")
            return _run_members(out, members, todo, states, where, run, stopping)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_members(out: Path, members, todo, states, where: str, run, stopping: str) -> int:
    """Record the finished members, run the others with ``run`` and record each result (table,
    figures, one progress line) as it arrives, whichever executor ``run`` is."""
    from bbits_ref._files import write_json
    from bbits_ref.training import experiments as ex

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
    by_name = {m.name: m for m in members}
    print(f"sweep: {len(members)} runs ({len(members) - len(todo)} finished earlier, "
          f"{sum(states[m.name].state == 'interrupted' for m in todo)} to resume) on "
          f"{where} -> {out}", flush=True)
    started, done = time.time(), 0
    results = run([(m.name, m.config.to_dict(), out / m.name) for m in todo])
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
            table = save()
            if result[0] == "ok":
                try:                    # the Pareto figure grows as members arrive
                    _save_figures(table, out)
                except Exception as exc:
                    print(f"{out}/figures/pareto.png not updated ({exc}); sweep.json is, "
                          "and the figure is drawn again at the end", file=sys.stderr)
            print(f"[{done}/{len(todo)}] {name}: {what} ({time.time() - started:.0f} s)",
                  flush=True)
    except KeyboardInterrupt:
        results.close()                 # stop the workers first
        save()
        print(f"sweep stopped; {stopping}. {out}/sweep.json lists what finished; run the "
              "same command again to continue (interrupted members resume from their last "
              "checkpoint)", file=sys.stderr)
        return 130
    finally:
        results.close()                 # stops running workers if we stopped early

    table = save()
    print(ex.format_sweep_table(table))
    _save_figures(table, out)
    failed = [r for r in table["runs"] if r["status"] == "failed"]
    if failed:
        codes = {r.get("exit_code", 1) for r in failed}
        raise SweepFailed(
            f"{len(failed)} of {len(members)} sweep members failed: "
            + "; ".join(f"{r['member']} ({r['reason']})" for r in failed)
            + f"; the others are in {out}/sweep.json. Fix the cause and run the same command "
              "again: finished members are reused", codes.pop() if len(codes) == 1 else 1)
    return 0

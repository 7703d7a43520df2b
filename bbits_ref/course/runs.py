"""The committed training runs the course notebooks show instead of training for hours.

Real runs take long on this NumPy engine, so the repository keeps the results of a few of them
under ``figures/`` (each folder: ``config.json``, ``history.json``, ``summary.json``; no
checkpoint):

* ``figures/mnist-lenet5-e100/``: the run that matches the paper, LeNet-5 on the whole MNIST set,
  100 epochs of the official recipe (docs/method.md §7.3): :func:`paper_run`;
* ``figures/course-runs/<name>/``: LeNet-5 on the embedded MNIST subset with the ``"quick"``
  preset (15 epochs, gate learning rate 1e-2), a μ sweep (:data:`SWEEP`) and the ablations and
  baselines of :mod:`bbits_ref.training.experiments` at μ = 0.1 (:data:`ABLATION_RUNS`):
  :func:`course_run`, :func:`course_runs`;
* ``figures/rebuttal/pareto-seeds/<label>-seed<s>/``: the same recipe for seeds 1 and 2 of the μ
  sweep and the ablations, and seeds 0–2 of the 8 in/out baselines (LSQ, PACT, uniform w4a4),
  ``config.json`` and ``summary.json`` only: :func:`pareto_seed_rows`, :func:`pareto_seeds_table`;
* ``figures/rebuttal/overregularization-<prior>.json``: gate traces of two such runs without the
  hard cut, autoregressive against independent prior (:mod:`bbits_ref.training.gate_trace`):
  :func:`gate_traces`;
* ``figures/mnist-lenet5-seeds/<gate>-seed<s>/``: the paper run's recipe (full MNIST, 100 epochs)
  with hard-concrete and with straight-through Gumbel-softmax gates, seeds 0–2 (seed 0 of hard
  concrete is the paper run itself), ``config.json``, ``summary.json`` and the epoch records of
  ``history.json``: :func:`seed_runs`, :func:`seed_runs_table`.

Every file is read as untrusted: a missing, damaged or inconsistent file raises a one-line
:class:`~bbits_ref._errors.DataFileError` naming it.  The folder is found next to the package
(an editable install or a checkout); a wheel installed elsewhere has no ``figures/``, and
:func:`figures_dir` says so.  Notebooks: ``00_tour``, ``04``, ``06``, ``08``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from bbits_ref._errors import DataFileError
from bbits_ref.training import experiments
from bbits_ref.training.gate_trace import load_trace
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.runs import read_json

__all__ = ["PAPER_RUN", "COURSE_RUNS", "SWEEP", "ABLATION_RUNS", "CommittedRun", "figures_dir",
           "load_run", "paper_run", "course_run", "course_runs", "sweep_members", "sweep_table",
           "REBUTTAL", "TRACE_PRIORS", "gate_traces", "PARETO_SEEDS", "PARETO_BASELINES",
           "pareto_seed_rows", "pareto_seeds_table", "SEED_RUNS", "SEED_GATES", "seed_runs",
           "seed_runs_table", "check_seed_run", "check_summary", "check_history"]

#: The folder (under figures/) of the 100-epoch full-MNIST run that matches the paper.
PAPER_RUN = "mnist-lenet5-e100"
#: The folder (under figures/) of the course's committed quick-preset runs.
COURSE_RUNS = "course-runs"
#: The μ sweep, smallest μ first.
SWEEP = ("mu0.01", "mu0.03", "mu0.1", "mu0.3", "mu1")
#: Ablations and baselines (names of experiments.baseline_changes), trained like mu0.1.
ABLATION_RUNS = ("quant-only", "prune-only-w8a8", "w8a8", "w4a4", "w2a2", "no-hard-cut",
                 "independent-prior", "no-ste")
#: The folder (under figures/) of the rebuttal's figures and the data they are drawn from.
REBUTTAL = "rebuttal"
#: The priors of the committed gate traces, in the order they are drawn.
TRACE_PRIORS = ("autoregressive", "independent")
#: The folder (under figures/) of the extra seeds of the Pareto front with seeds.
PARETO_SEEDS = "rebuttal/pareto-seeds"
#: The baselines on the Pareto front with seeds (names of experiments.baseline_changes).
PARETO_BASELINES = ("quant-only", "prune-only-w8a8", "w8a8", "w4a4", "w2a2", "w4a4-io8",
                    "lsq-w4a4", "pact-w4a4")
_FILES = ("config.json", "history.json", "summary.json")
_MEMBER = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9._-]*)-seed(?P<seed>[0-9]+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def figures_dir(root=None) -> Path:
    """The repository's ``figures/`` folder (``root``: another folder that holds the runs)."""
    # bbits_ref/course/runs.py -> the checkout that holds bbits_ref/ and figures/
    folder = Path(__file__).resolve().parents[2] / "figures" if root is None else Path(root)
    if not folder.is_dir():
        raise DataFileError(f"no folder of committed runs at {folder}: they ship with the "
                            "repository, not with an installed package; work in a checkout "
                            "(git clone, then pip install -e .) or pass root=<its figures folder>")
    return folder


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class CommittedRun:
    """One committed run: its ``name`` (the folder under figures/), ``config`` (a TrainConfig),
    ``history`` (the records of ``Trainer.history``) and ``summary`` (``Trainer.summary()``)."""

    name: str
    path: Path
    config: TrainConfig
    history: list
    summary: dict

    @property
    def label(self) -> str:
        """The last part of the name: ``mu0.1``, ``w4a4``, ``mnist-lenet5-e100``."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def mu(self) -> float:
        return self.config.mu

    @property
    def kind(self) -> str:
        """"bb" for a run of the μ sweep (Bayesian Bits as published), else "baseline"."""
        return "bb" if re.fullmatch(r"mu[0-9.e+-]+", self.label) else "baseline"

    @property
    def epochs(self) -> list:
        """The epoch records of the history (one per epoch, in order)."""
        return [r for r in self.history if r["kind"] == "epoch"]

    @property
    def test_accuracy(self) -> float:
        return self.summary["test_accuracy"]

    @property
    def relative_bops(self) -> float:
        return self.summary["relative_bops"]

    def member(self) -> experiments.Member:
        """The run as a member of a sweep (for :func:`experiments.member_row`)."""
        return experiments.Member(self.label, self.label, self.kind, self.config)

    def __repr__(self) -> str:
        return (f"CommittedRun({self.name!r}: {self.config.model} on {self.config.dataset}, "
                f"μ = {self.mu:g}, {len(self.epochs)} epochs, test accuracy "
                f"{self.test_accuracy:.4f} at {self.relative_bops:.4f}% relative BOPs)")


def check_history(history, path: Path) -> list:
    """``history`` (a run's history.json) if its epoch records have what the course reads, else
    a DataFileError naming ``path``."""
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise DataFileError(f"{path} should hold a list of records (Trainer.history); got "
                            f"{type(history).__name__}")
    epochs = [r for r in history if r.get("kind") == "epoch"]
    if not epochs:
        raise DataFileError(f"{path} has no epoch records: it is not the history of a finished "
                            "run; copy it again from the run's folder")
    for i, rec in enumerate(epochs, start=1):
        quantizers = rec.get("quantizers")
        ok = (rec.get("epoch") == i and _finite(rec.get("relative_bops"))
              and _finite(rec.get("test_acc")) and isinstance(quantizers, dict) and quantizers
              and all(isinstance(q, dict) and "bits" in q and "kept" in q
                      for q in quantizers.values()))
        if not ok:
            raise DataFileError(f"{path}: epoch record {i} is damaged (it needs epoch = {i}, "
                                "relative_bops, test_acc and the quantizers' bits and kept); "
                                "copy the file again from the run's folder")
    return history


def check_summary(summary, path: Path) -> dict:
    """``summary`` (a run's summary.json) if it has what the course reads, else a DataFileError
    naming ``path``."""
    if not isinstance(summary, dict):
        raise DataFileError(f"{path} should hold a JSON object (Trainer.summary()); got "
                            f"{type(summary).__name__}")
    acc, rel = summary.get("test_accuracy"), summary.get("relative_bops")
    if not (_finite(acc) and 0 <= acc <= 1 and _finite(rel) and rel >= 0):
        raise DataFileError(f"{path} needs test_accuracy in [0, 1] and relative_bops ≥ 0; got "
                            f"{acc!r} and {rel!r}")
    layers, quantizers = summary.get("layers"), summary.get("quantizers")
    keys = ("name", "macs", "w_bits", "a_bits", "keep_out", "keep_in")
    if not (isinstance(layers, list) and layers and isinstance(quantizers, dict) and quantizers
            and all(isinstance(x, dict) and all(k in x for k in keys) for x in layers)):
        raise DataFileError(f"{path} needs a list of layers (each with {', '.join(keys)}) and a "
                            "dict of quantizers, as bbits-ref train writes them")
    return summary


def load_run(name: str, root=None) -> CommittedRun:
    """The committed run in ``figures/<name>`` (e.g. ``"course-runs/mu0.1"``), checked.

    Raises DataFileError when a file is missing or damaged, or when the summary disagrees with
    the last epoch of the history (a summary copied from another run).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a run name is a folder under figures/, like 'course-runs/mu0.1'; got "
                         f"{name!r}")
    folder = figures_dir(root) / name
    if not folder.is_dir():
        raise DataFileError(f"no committed run {name!r}: {folder} is not a folder")
    texts = {f: read_json(folder / f, f"run file ({f})") for f in _FILES}
    try:
        config = TrainConfig.from_dict(texts["config.json"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataFileError(f"{folder / 'config.json'} is not a run configuration: "
                            f"{str(exc)[:100]}") from None
    history = check_history(texts["history.json"], folder / "history.json")
    summary = check_summary(texts["summary.json"], folder / "summary.json")
    last = [r for r in history if r["kind"] == "epoch"][-1]
    if not (math.isclose(last["relative_bops"], summary["relative_bops"], rel_tol=1e-9)
            and math.isclose(last["test_acc"], summary["test_accuracy"], rel_tol=1e-9)
            and last["epoch"] == config.epochs + config.finetune_epochs):
        raise DataFileError(f"{folder}: summary.json, history.json and config.json disagree "
                            "(epochs, relative BOPs or accuracy): the files come from different "
                            "runs; copy all three again from one run's folder")
    return CommittedRun(name, folder, config, history, summary)


def paper_run(root=None) -> CommittedRun:
    """The 100-epoch full-MNIST LeNet-5 run (figures/mnist-lenet5-e100)."""
    return load_run(PAPER_RUN, root)


def course_run(name: str, root=None) -> CommittedRun:
    """One quick-preset course run, e.g. ``course_run("mu0.1")`` (figures/course-runs/mu0.1)."""
    known = SWEEP + ABLATION_RUNS
    if name not in known:
        raise ValueError(f"no course run {name!r}; the committed ones are {', '.join(known)}")
    return load_run(f"{COURSE_RUNS}/{name}", root)


def course_runs(names=SWEEP + ABLATION_RUNS, root=None) -> dict:
    """``{name: CommittedRun}`` for the named course runs (default: all of them)."""
    return {name: course_run(name, root) for name in names}


def sweep_members(runs) -> list:
    """The runs as :class:`experiments.Member` objects (label = the run's folder name)."""
    return [run.member() for run in (runs.values() if isinstance(runs, dict) else runs)]


def sweep_table(runs) -> dict:
    """The table of :func:`experiments.sweep_table` for committed runs (a dict or a list):
    Pareto flags over the μ sweep, the others as baselines."""
    runs = list(runs.values() if isinstance(runs, dict) else runs)
    return experiments.sweep_table([experiments.member_row(r.member(), r.summary) for r in runs])


def gate_traces(root=None) -> dict:
    """``{prior: trace}`` of the committed gate traces (figures/rebuttal), checked: two runs alike
    but for the prior (docs/method.md §4), as :func:`~bbits_ref.training.gate_trace.load_trace`
    returns them."""
    folder = figures_dir(root) / REBUTTAL
    traces = {p: load_trace(folder / f"overregularization-{p}.json") for p in TRACE_PRIORS}
    configs = {p: t["config"].to_dict() for p, t in traces.items()}
    differ = experiments.setting_differences(*configs.values())
    if set(differ) != {"prior"}:
        raise DataFileError(f"{folder}: the committed gate traces should differ in the prior only; "
                            f"they differ in {', '.join(sorted(differ)) or 'nothing'}")
    return traces


def _expected_config(base: TrainConfig, label: str, seed: int) -> TrainConfig:
    """The quick recipe ``base`` turned into the μ-sweep run or baseline ``label``, ``seed``."""
    if label in SWEEP:
        return base.replace(mu=float(label[2:]), seed=seed)
    return experiments.baseline_config(base, label).replace(seed=seed)


def pareto_seed_rows(root=None) -> list:
    """Every run of the Pareto front with seeds, as rows of :func:`experiments.sweep_table`.

    Seed 0 of the μ sweep and of the ablations in :data:`PARETO_BASELINES` are the course runs
    (figures/course-runs); the other members are read from figures/rebuttal/pareto-seeds
    (``<label>-seed<s>/config.json`` and ``summary.json``), and each is checked to be the course's
    quick recipe with its μ or baseline and its seed (a DataFileError names the first that is
    not).
    """
    course = course_runs(SWEEP + tuple(b for b in PARETO_BASELINES if b in ABLATION_RUNS), root)
    base = course["mu0.1"].config
    rows = [experiments.member_row(experiments.Member(f"{name}-seed0", name, run.kind, run.config),
                                   run.summary) for name, run in course.items()]
    folder = figures_dir(root) / PARETO_SEEDS
    if not folder.is_dir():
        raise DataFileError(f"no folder {folder}: the extra seeds of the Pareto front are "
                            "committed there (python scripts/rebuttal_figures.py --collect)")
    seen = {r["member"] for r in rows}
    for member in sorted(p for p in folder.iterdir()):
        m = _MEMBER.match(member.name)
        if not member.is_dir() or m is None or not (m["label"] in SWEEP
                                                    or m["label"] in PARETO_BASELINES):
            raise DataFileError(f"{member}: not a member of the Pareto front with seeds (expected "
                                "a folder <label>-seed<s> for a μ of the sweep or one of "
                                f"{', '.join(PARETO_BASELINES)})")
        if member.name in seen:
            raise DataFileError(f"{member}: seed 0 of this run is the course run; remove it")
        label, seed = m["label"], int(m["seed"])
        try:
            config = TrainConfig.from_dict(read_json(member / "config.json", "run file"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataFileError(f"{member / 'config.json'} is not a run configuration: "
                                f"{str(exc)[:100]}") from None
        differ = experiments.config_differences(config.to_dict(),
                                                _expected_config(base, label, seed).to_dict())
        if differ:
            raise DataFileError(f"{member}: not the quick recipe of {label} with seed {seed}; it "
                                f"differs in {', '.join(differ)}")
        summary = check_summary(read_json(member / "summary.json", "run file"),
                                 member / "summary.json")
        kind = "bb" if label in SWEEP else "baseline"
        rows.append(experiments.member_row(experiments.Member(member.name, label, kind, config),
                                           summary))
    return rows


def pareto_seeds_table(root=None) -> dict:
    """:func:`experiments.sweep_table` of :func:`pareto_seed_rows`: per μ and baseline, the mean
    and standard deviation over the seeds, and the Pareto front of the μ sweep's means."""
    return experiments.sweep_table(pareto_seed_rows(root))


#: The folder (under figures/) of the seed runs of the rebuttal's first claim.
SEED_RUNS = "mnist-lenet5-seeds"
#: Each gate label of the seed runs and the method settings it changes in the paper run's recipe.
SEED_GATES = {"hard-concrete": {"gate": "hard_concrete", "gate_options": {}},
              "gumbel-softmax-st": {"gate": "gumbel_softmax",
                                    "gate_options": {"straight_through": True}}}


def _seed_config(base: TrainConfig, label: str, seed: int) -> TrainConfig:
    """The paper run's recipe ``base`` with the gates of ``label`` and ``seed``."""
    method = replace(base.method, **SEED_GATES[label])
    return base.replace(seed=seed, method=method)


def check_seed_run(config: TrainConfig, label: str, seed: int, paper: TrainConfig,
                   where) -> None:
    """Raise a DataFileError naming ``where`` unless ``config`` is the paper run's recipe
    ``paper`` with the gates of ``label`` and ``seed``."""
    differ = experiments.config_differences(config.to_dict(),
                                            _seed_config(paper, label, seed).to_dict())
    if differ:
        raise DataFileError(f"{where}: not the paper run's recipe with {label} gates and seed "
                            f"{seed}; it differs in {', '.join(differ)}")


def seed_runs(root=None) -> dict:
    """The 100-epoch full-MNIST runs per gate label: ``{label: [CommittedRun, …]}`` by seed.

    Hard-concrete seed 0 is the paper run (figures/mnist-lenet5-e100); the others are read from
    figures/mnist-lenet5-seeds/<label>-seed<s>/ and each is checked to be the paper run's recipe
    with its gates and seed (a DataFileError names the first that is not, or a folder that is not
    one of these runs).
    """
    paper = paper_run(root)
    found = {label: {} for label in SEED_GATES}
    found["hard-concrete"][0] = paper
    folder = figures_dir(root) / SEED_RUNS
    if not folder.is_dir():
        raise DataFileError(f"no folder {folder}: the seed runs of the rebuttal's first claim "
                            "are committed there")
    for member in sorted(folder.iterdir()):
        m = _MEMBER.match(member.name)
        if not member.is_dir() or m is None or m["label"] not in SEED_GATES:
            raise DataFileError(f"{member}: not a seed run (expected a folder <gate>-seed<s> with "
                                f"<gate> one of {', '.join(SEED_GATES)})")
        label, seed = m["label"], int(m["seed"])
        if seed in found[label]:
            raise DataFileError(f"{member}: hard-concrete seed 0 is the paper run "
                                f"(figures/{PAPER_RUN}); remove this folder" if
                                (label, seed) == ("hard-concrete", 0) else
                                f"{member}: another folder holds {label} seed {seed}")
        run = load_run(f"{SEED_RUNS}/{member.name}", root)
        check_seed_run(run.config, label, seed, paper.config, member)
        found[label][seed] = run
    return {label: [runs[s] for s in sorted(runs)] for label, runs in found.items()}


def seed_runs_table(root=None) -> dict:
    """:func:`experiments.sweep_table` of :func:`seed_runs`: per gate label, the mean and the
    sample standard deviation over its seeds of test accuracy and relative BOPs."""
    rows = []
    for label, committed in seed_runs(root).items():
        for run in committed:
            member = experiments.Member(f"{label}-seed{run.config.seed}", label, "baseline",
                                        run.config)
            rows.append(experiments.member_row(member, run.summary))
    return experiments.sweep_table(rows)

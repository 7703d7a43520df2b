"""The figures of the authors' rebuttal claims, from the data committed under figures/rebuttal/.

    python scripts/rebuttal_figures.py              # draw every figure from committed data
    python scripts/rebuttal_figures.py --trace      # first train the two gate traces (~8 min)
    python scripts/rebuttal_figures.py --collect runs/pareto ...   # first commit sweep members
    python scripts/rebuttal_figures.py --collect-seeds runs/hc-seed1 ...   # and seed runs

* ``overregularization.png``: the independent prior against the autoregressive one (docs/method.md
  §4). Two LeNet-5 runs on the embedded MNIST subset, quick preset, μ = 0.1, seed 0, without the
  code-only hard cut (§3.5) so that a gate whose parent is off stays in the model and only the
  prior acts on it, traced with :func:`bbits_ref.training.gate_trace.trace_gates`
  (``overregularization-<prior>.json``; ``--trace`` writes them, refusing to replace files that
  exist).
* ``bit_width_evolution.png``: E_q[bit width] per quantizer over training for a small and a large
  μ (the committed course runs ``figures/course-runs/mu0.01`` and ``mu1``).
* ``pareto_seeds.png``: the Pareto front with seeds, every μ and baseline at its mean ± std over
  seeds 0–2 (:func:`bbits_ref.course.runs.pareto_seeds_table`).  Seed 0 of the μ sweep and the
  ablations are the course runs; the other runs come from sweeps such as::

      bbits-ref sweep --preset quick --mus 0.01,0.03,0.1,0.3,1 --seeds 1,2 --baseline quant-only \
          --baseline prune-only-w8a8 --baseline w8a8 --baseline w4a4 --baseline w2a2 --out runs/pareto
      bbits-ref sweep --preset quick --mus '' --seeds 0,1,2 --baseline lsq-w4a4 \
          --baseline pact-w4a4 --baseline w4a4-io8 --out runs/pareto-io8

  whose finished members ``--collect`` copies (``config.json``, ``summary.json``) into
  ``pareto-seeds/``, refusing to replace a member that is there with other contents.

* ``gate_seeds.png``: the rebuttal's first claim, hard-concrete against straight-through
  Gumbel-softmax gates, LeNet-5 on full MNIST with the official recipe (100 epochs), seeds 0–2
  (:func:`bbits_ref.course.runs.seed_runs_table`), beside the paper's and the rebuttal's points.
  The runs come from::

      bbits-ref train --dataset mnist --seed S --engine torch --out runs/hc-seedS
      bbits-ref train --dataset mnist --gate gumbel_softmax --straight-through --seed S \
          --engine torch --out runs/gs-st-seedS

  and ``--collect-seeds RUN_DIR ...`` copies their ``config.json``, ``summary.json`` and the
  epoch records of ``history.json`` into ``figures/mnist-lenet5-seeds/<gate>-seed<s>/``.

Nothing else is trained; only JSON files are read.  Run from a checkout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "figures" / "rebuttal"
PRIORS = ("autoregressive", "independent")
EVOLUTION_RUNS = {"μ = 0.01 (small)": "course-runs/mu0.01", "μ = 1 (large)": "course-runs/mu1"}


def trace_path(out: Path, prior: str) -> Path:
    return out / f"overregularization-{prior}.json"


def trace(out: Path, mu: float = 0.1, seed: int = 0, every: int = 2) -> list[Path]:
    """Train and save the two gate traces (refuses to replace an existing trace)."""
    from bbits_ref.method.layers import BBConfig
    from bbits_ref.training.config import PRESETS, TrainConfig
    from bbits_ref.training.gate_trace import save_trace, trace_gates
    paths = [trace_path(out, p) for p in PRIORS]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exist(s): move them away to trace again")
    for prior, path in zip(PRIORS, paths):
        config = TrainConfig(**PRESETS["quick"], mu=mu, seed=seed,
                             method=BBConfig(hard_cut=False, prior=prior))
        save_trace(path, trace_gates(config, every=every))
        print(f"wrote {path}")
    return paths


def collect(sweeps, out: Path) -> list[Path]:
    """Copy the finished members of the sweep folders ``sweeps`` into ``out/pareto-seeds``."""
    import shutil
    written = []
    target = out / "pareto-seeds"
    for sweep in map(Path, sweeps):
        table = json.loads((sweep / "sweep.json").read_text())
        for row in table["runs"]:
            if row.get("status") != "done":
                continue
            dest = target / row["member"]
            for name in ("config.json", "summary.json"):
                src = sweep / row["member"] / name
                if (dest / name).exists():
                    if (dest / name).read_bytes() != src.read_bytes():
                        raise FileExistsError(f"{dest / name} holds another run: move it away")
                    continue
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest / name)
                written.append(dest / name)
    return written


def _seed_label(config) -> str:
    """The gate label of a seed run (figures/mnist-lenet5-seeds/<label>-seed<s>) from its
    TrainConfig."""
    from bbits_ref.course.runs import SEED_GATES
    method = config.method
    for label, gates in SEED_GATES.items():
        if method.gate == gates["gate"] and method.gate_options == gates["gate_options"]:
            return label
    raise ValueError(f"a run with gate {method.gate!r} and options {method.gate_options} is not one "
                     f"of the seed runs ({', '.join(SEED_GATES)})")


def collect_seeds(run_dirs, figures_root: Path) -> list[Path]:
    """Copy finished 100-epoch runs into ``figures_root/mnist-lenet5-seeds/<gate>-seed<s>/``:
    config.json, summary.json, and history.json with its epoch records only."""
    from bbits_ref.course.runs import (SEED_RUNS, check_history, check_seed_run, check_summary,
                                       paper_run)
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.runs import read_json
    written = []
    paper = paper_run().config
    for run in map(Path, run_dirs):
        config = TrainConfig.from_dict(read_json(run / "config.json", "run file"))
        summary = read_json(run / "summary.json", "run file (a finished run has one)")
        history = [r for r in check_history(read_json(run / "history.json", "run file"),
                                            run / "history.json") if r["kind"] == "epoch"]
        label, seed = _seed_label(config), config.seed
        check_seed_run(config, label, seed, paper, run)
        check_summary(summary, run / "summary.json")
        if len(history) != paper.epochs:
            raise ValueError(f"{run / 'history.json'} has {len(history)} epoch records, not "
                             f"{paper.epochs}: copy a finished run")
        dest = figures_root / SEED_RUNS / f"{label}-seed{seed}"
        texts = {"config.json": (run / "config.json").read_bytes(),
                 "summary.json": (run / "summary.json").read_bytes(),
                 "history.json": (json.dumps(history, indent=1) + "\n").encode()}
        clash = [n for n, data in texts.items()
                 if (dest / n).exists() and (dest / n).read_bytes() != data]
        if clash:
            raise FileExistsError(f"{dest / clash[0]} holds another run: move it away")
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in texts.items():
            if not (dest / name).exists():
                (dest / name).write_bytes(data)
                written.append(dest / name)
    return written


def draw(out: Path, figures_root: Path, dpi: float = 100) -> list[Path]:
    """Draw the figures from the committed traces and runs."""
    from matplotlib.figure import Figure

    from bbits_ref.plotting import plot_bit_evolution, plot_gate_trace, save_figure
    from bbits_ref.training.gate_trace import load_trace
    written = []
    traces = {p: load_trace(trace_path(out, p)) for p in PRIORS}
    fig = Figure(figsize=(7.0, 6.4), layout="constrained")
    plot_gate_trace(traces, fig=fig)
    written.append(save_figure(fig, out / "overregularization.png", dpi))
    histories = {label: json.loads((figures_root / run / "history.json").read_text())
                 for label, run in EVOLUTION_RUNS.items()}
    fig = Figure(figsize=(10.4, 3.8), layout="constrained")
    plot_bit_evolution(histories, fig=fig)
    written.append(save_figure(fig, out / "bit_width_evolution.png", dpi))
    from bbits_ref.course.runs import pareto_seeds_table
    from bbits_ref.plotting import plot_pareto_groups
    from bbits_ref.training.experiments import format_sweep_table
    table = pareto_seeds_table(figures_root)
    print(format_sweep_table(table))
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    plot_pareto_groups(table["groups"], ax=fig.add_subplot())
    written.append(save_figure(fig, out / "pareto_seeds.png", dpi))
    from bbits_ref.course.runs import seed_runs_table
    from bbits_ref.plotting import plot_seed_runs
    table = seed_runs_table(figures_root)
    for g in table["groups"]:
        print(f"{g['label']}: {g['n']} seeds, test accuracy "
              f"{_mean_std(g, 'test_accuracy', 100)}%, relative BOPs "
              f"{_mean_std(g, 'relative_bops', 1)}%")
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    plot_seed_runs(table, ax=fig.add_subplot())
    written.append(save_figure(fig, out / "gate_seeds.png", dpi))
    return written


def _mean_std(group: dict, key: str, scale: float) -> str:
    std = group[f"{key}_std"]
    return (f"{scale * group[f'{key}_mean']:.3f}"
            + ("" if std is None else f" ± {scale * std:.3f}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    parser.add_argument("--trace", action="store_true", help="train the two gate traces first")
    parser.add_argument("--collect", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="first copy the finished members of these sweeps into pareto-seeds/")
    parser.add_argument("--collect-seeds", nargs="+", type=Path, metavar="RUN_DIR",
                        help="first copy these finished 100-epoch runs into "
                             "figures/mnist-lenet5-seeds/")
    parser.add_argument("--dpi", type=float, default=100)
    args = parser.parse_args(argv)
    try:
        if args.trace:
            trace(args.out)
        if args.collect:
            for path in collect(args.collect, args.out):
                print(f"wrote {path}")
        if args.collect_seeds:
            for path in collect_seeds(args.collect_seeds, REPO_ROOT / "figures"):
                print(f"wrote {path}")
        for path in draw(args.out, REPO_ROOT / "figures", args.dpi):
            print(f"wrote {path}")
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"rebuttal_figures: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))      # a checkout without installing: the library is here
    sys.exit(main())

"""The figures of the authors' rebuttal claims, from the data committed under figures/rebuttal/.

    python scripts/rebuttal_figures.py              # draw every figure from committed data
    python scripts/rebuttal_figures.py --trace      # first train the two gate traces (~8 min)

* ``overregularization.png``: the independent prior against the autoregressive one (docs/method.md
  §4). Two LeNet-5 runs on the embedded MNIST subset, quick preset, μ = 0.1, seed 0, without the
  code-only hard cut (§3.5) so that a gate whose parent is off stays in the model and only the
  prior acts on it, traced with :func:`bbits_ref.training.gate_trace.trace_gates`
  (``overregularization-<prior>.json``; ``--trace`` writes them, refusing to replace files that
  exist).
* ``bit_width_evolution.png``: E_q[bit width] per quantizer over training for a small and a large
  μ (the committed course runs ``figures/course-runs/mu0.01`` and ``mu1``).

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
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    parser.add_argument("--trace", action="store_true", help="train the two gate traces first")
    parser.add_argument("--dpi", type=float, default=100)
    args = parser.parse_args(argv)
    try:
        if args.trace:
            trace(args.out)
        for path in draw(args.out, REPO_ROOT / "figures", args.dpi):
            print(f"wrote {path}")
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"rebuttal_figures: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))      # a checkout without installing: the library is here
    sys.exit(main())

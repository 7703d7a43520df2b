"""Regenerate every committed figure from the committed run histories and sweep tables.

    python scripts/make_figures.py              # everything under figures/
    python scripts/make_figures.py figures/mnist-lenet5 --dpi 120

The README and the notebooks show PNGs that live next to the data they are drawn from:

* a run directory (``history.json``, usually with ``summary.json``) gets the run figures of
  :func:`bbits_ref.plotting.save_run_figures` (gate probabilities, bit widths, BOPs–accuracy,
  kept channels, training curves); with a ``summary.json`` the BOPs–accuracy plot gets its
  reference marks (uniform w8a8 and w2a2, the paper's result) and ``layer_bops.png`` (each
  layer's share of the BOPs) is drawn too;
* a sweep directory (``sweep.json`` as written by ``bbits-ref sweep``) gets ``pareto.png`` from
  :func:`bbits_ref.plotting.save_sweep_figures`; its runs are found as run directories below it.

The PNGs are written into the directory itself, so ``figures/mnist-lenet5/bops_accuracy.png``
sits beside ``figures/mnist-lenet5/history.json``. Nothing is trained: only the JSON files are
read. Running it twice gives the same files (matplotlib writes no timestamp into a PNG).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT / "figures"

__all__ = ["find_figure_dirs", "make_figures", "main"]


def find_figure_dirs(root) -> tuple[list[Path], list[Path]]:
    """(run directories, sweep directories) at or below ``root``, sorted.

    A run directory holds ``history.json``; a sweep directory holds ``sweep.json``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; give a directory holding run "
                                "(history.json) or sweep (sweep.json) results")
    runs = sorted({p.parent for p in root.rglob("history.json")})
    sweeps = sorted({p.parent for p in root.rglob("sweep.json")})
    return runs, sweeps


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it from git "
                         "(git checkout -- <file>) or regenerate the run") from exc


def _read_summary(path: Path):
    """A run's summary.json as a dict, or None when the run has none."""
    if not path.is_file():
        return None
    summary = _read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path} must hold a JSON object as written by `bbits-ref train`; "
                         f"got {type(summary).__name__}: regenerate the run's summary")
    return summary


def _sweep_points(path: Path) -> tuple[list, list]:
    """Split sweep.json's runs into Bayesian Bits points and baselines (kind == "baseline")."""
    table = _read_json(path)
    if not isinstance(table, dict) or not isinstance(table.get("runs"), list):
        raise ValueError(f"{path} must hold {{\"runs\": [...]}} as written by `bbits-ref sweep`; "
                         f"got {type(table).__name__} with keys "
                         f"{sorted(table) if isinstance(table, dict) else '-'}")
    rows = table["runs"]
    return ([r for r in rows if r.get("kind") != "baseline"],
            [r for r in rows if r.get("kind") == "baseline"])


def make_figures(roots=(DEFAULT_ROOT,), dpi=100, log=print) -> list[Path]:
    """Render the figures of every run and sweep directory under ``roots``; returns the PNG paths.

    Raises FileNotFoundError when a root holds neither kind of directory (a typo in the path
    should not pass silently).
    """
    from bbits_ref.plotting import save_run_figures, save_sweep_figures

    written = []
    for root in roots:
        runs, sweeps = find_figure_dirs(root)
        if not runs and not sweeps:
            raise FileNotFoundError(f"{root} holds no history.json (run) or sweep.json (sweep) "
                                    "file; commit a run's history.json/summary.json there first")
        for run in runs:
            summary = _read_summary(run / "summary.json")
            paths = save_run_figures(_read_json(run / "history.json"), run, dpi=dpi,
                                     summary=summary)
            log(f"{run}: {', '.join(p.name for p in paths)}")
            written += paths
        for sweep in sweeps:
            points, baselines = _sweep_points(sweep / "sweep.json")
            paths = save_sweep_figures(points, baselines, sweep, dpi=dpi)
            log(f"{sweep}: {', '.join(p.name for p in paths)}")
            written += paths
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", type=Path, default=[DEFAULT_ROOT],
                        help=f"directories to search (default: {DEFAULT_ROOT})")
    parser.add_argument("--dpi", type=float, default=100, help="PNG resolution (default 100)")
    args = parser.parse_args(argv)
    try:
        written = make_figures(args.roots, dpi=args.dpi)
    except (FileNotFoundError, ValueError) as exc:
        print(f"make_figures: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} figure(s)")
    return 0


if __name__ == "__main__":
    # Run from a checkout without installing: the library sits next to this script.
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())

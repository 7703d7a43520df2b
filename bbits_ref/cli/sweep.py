"""``bbits-ref sweep``: several μ values and baselines in worker processes, and a Pareto table."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bbits_ref.cli.options import _ablation, _bits_pair, config_from_args
from bbits_ref.cli.run import render_run

__all__ = ["cmd_sweep", "format_sweep_table"]


def _train_one(payload):
    """Worker for ``sweep``: train one configuration quietly, return its summary."""
    from bbits_ref._runtime import keep_freed_memory
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer

    keep_freed_memory()
    config_dict, out = payload
    trainer = Trainer(TrainConfig.from_dict(config_dict), out_dir=out, progress=False,
                      verbose=False)
    summary = trainer.fit()
    render_run(Path(out), trainer.history)
    return summary


def cmd_sweep(args) -> int:
    import dataclasses
    from bbits_ref._files import write_json

    base = config_from_args(args)
    out = Path(args.out or f"runs/sweep-{base.model}-{base.dataset}")
    try:
        mus = [float(m) for m in args.mus.split(",")]
    except ValueError:
        raise SystemExit(f"--mus takes comma-separated numbers; got {args.mus!r}")
    jobs = [(f"mu{m:g}", dataclasses.replace(base, mu=m)) for m in mus]
    for spec in args.baseline or []:
        jobs.append((spec, _baseline_config(base, spec)))
    payloads = [(cfg.to_dict(), str(out / name)) for name, cfg in jobs]
    print(f"sweep: {len(jobs)} runs with {args.workers} worker process(es) -> {out}")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        summaries = list(pool.map(_train_one, payloads))
    rows = []
    for (name, cfg), s in zip(jobs, summaries):
        rows.append({"label": name, "mu": cfg.mu, "kind": "bb" if name.startswith("mu") else "baseline",
                     "test_accuracy": s["test_accuracy"], "relative_bops": s["relative_bops"]})
    from bbits_ref.plotting import pareto_front, save_sweep_figures
    front = {id(p) for p in pareto_front([r for r in rows if r["kind"] == "bb"])}
    for r in rows:
        r["pareto"] = id(r) in front
    write_json(out / "sweep.json", {"runs": rows})
    print(format_sweep_table(rows))
    save_sweep_figures([r for r in rows if r["kind"] == "bb"],
                       [r for r in rows if r["kind"] == "baseline"], out / "figures")
    return 0


def _baseline_config(base, spec: str):
    import dataclasses
    if spec == "quant-only":
        changes = _ablation("quant-only")
    elif spec.startswith("prune-only-"):
        bits = _bits_pair(spec[len("prune-only-"):].replace("w", "").replace("a", "/"), spec)
        changes = _ablation("prune-only", bits)
    elif spec.startswith("w") and "a" in spec:
        changes = _ablation("fixed-bits", _bits_pair(spec[1:].replace("a", "/"), spec))
    elif spec == "fp32":
        changes = _ablation("full-precision")
    else:
        raise SystemExit(f"unknown baseline {spec!r}: use wXaY (e.g. w4a4), quant-only, "
                         "prune-only-wXaY or fp32")
    return dataclasses.replace(base, **changes)


def format_sweep_table(rows) -> str:
    lines = [f"{'run':<18} {'μ':>8} {'test acc':>9} {'rel. BOPs':>10} {'Pareto':>7}",
             "-" * 56]
    for r in sorted(rows, key=lambda r: r["relative_bops"]):
        lines.append(f"{r['label']:<18} {r['mu']:>8g} {r['test_accuracy']:>9.4f} "
                     f"{r['relative_bops']:>9.4f}% {'*' if r.get('pareto') else '':>7}")
    return "\n".join(lines)



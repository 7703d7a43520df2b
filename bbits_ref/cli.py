"""The ``bbits-ref`` command.

Subcommands::

    bbits-ref train      train a Bayesian Bits model (no arguments: LeNet-5 on the embedded MNIST subset)
    bbits-ref sweep      several μ values (and baselines) in parallel worker processes -> Pareto table
    bbits-ref figures    render the figures of a run or a sweep directory
    bbits-ref info       the bit-width and pruning table of a checkpoint
    bbits-ref readout    the readout table of a freshly built model (no training)
    bbits-ref conformance  export the conformance suite / check an implementation against it
    bbits-ref gradcheck  check every primitive's gradient (same as python -m bbits_ref.autograd.gradcheck)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="mnist-small", choices=["mnist-small", "mnist", "cifar10"],
                   help="mnist-small is embedded in the package (default)")
    g.add_argument("--data-dir", help="directory (or CIFAR-10 tar.gz) holding the dataset")
    g.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    g.add_argument("--model", default=None, choices=["lenet5", "vgg7"],
                   help="default: lenet5 for MNIST, vgg7 for CIFAR-10")
    g.add_argument("--width", type=float, default=1.0, help="VGG-7 width multiplier")
    g.add_argument("--train-limit", type=int, help="use only the first N training examples")
    g.add_argument("--test-limit", type=int, help="use only the first N test examples")
    g = p.add_argument_group("method")
    g.add_argument("--mu", type=float, default=None, help="regularizer strength μ (default 0.1)")
    g.add_argument("--gate", default="hard_concrete", choices=["hard_concrete", "gumbel_softmax"])
    g.add_argument("--temperature", type=float, help="gate temperature (default 2/3)")
    g.add_argument("--straight-through", action="store_true",
                   help="Gumbel-softmax: hard 0/1 forward, soft gradient")
    g.add_argument("--prior", default="autoregressive", choices=["autoregressive", "independent"])
    g.add_argument("--reg-type", default="bop", choices=["bop", "const"])
    g.add_argument("--gate-preset", choices=["mnist", "cifar10", "imagenet"],
                   help="initial gate logits (default: the dataset's)")
    g.add_argument("--no-hard-cut", action="store_true", help="disable the official φ ≤ −2 cut")
    g = p.add_argument_group("ablations and baselines")
    g.add_argument("--quant-only", action="store_true", help="no pruning gates (z2 ≡ 1)")
    g.add_argument("--prune-only", metavar="W/A",
                   help="pruning only at fixed bit widths, e.g. 8/8")
    g.add_argument("--fixed-bits", metavar="W/A",
                   help="uniform fixed-bit baseline, no gates at all, e.g. 4/4")
    g.add_argument("--full-precision", action="store_true", help="no quantizers at all")
    g = p.add_argument_group("optimisation")
    g.add_argument("--preset", choices=["quick", "official"],
                   help="quick: 15 epochs, gate lr 1e-2 (default on mnist-small); official: the "
                        "paper's recipe, every lr 1e-3, 100 epochs on MNIST and 300 on "
                        "CIFAR-10 (default otherwise)")
    g.add_argument("--epochs", type=int, default=None, help="number of epochs (overrides the preset)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate of the weights, 1e-3 (and of gates/ranges unless given)")
    g.add_argument("--lr-gates", type=float, help="learning rate of the gate logits")
    g.add_argument("--lr-ranges", type=float, help="learning rate of the ranges β")
    g.add_argument("--lr-schedule", default="official", choices=["official", "constant"])
    g.add_argument("--finetune-epochs", type=int, default=0,
                   help="fixed-gate fine-tuning epochs after the gated phase")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=20, help="steps between history records")


def _bits_pair(text: str, flag: str) -> tuple[int, int]:
    try:
        w, a = (int(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"{flag} takes W/A bit widths such as 8/8; got {text!r}")
    return w, a


def _ablation(kind: str, bits: tuple[int, int] | None = None) -> dict:
    """TrainConfig settings of an ablation or baseline (shared by ``train`` flags and ``sweep``).

    ``kind``: "quant-only" (no pruning gates), "prune-only" (pruning at fixed ``bits`` = (W, A)),
    "fixed-bits" (uniform fixed-bit baseline, no gates, μ = 0), "full-precision" (μ = 0).
    """
    if kind == "quant-only":
        return {"pruning": False}
    if kind == "full-precision":
        return {"quantize": False, "mu": 0.0}
    w, a = bits
    if kind == "prune-only":
        return {"learn_bits": False, "weight_bits": w, "act_bits": a}
    if kind == "fixed-bits":
        return {"learn_bits": False, "pruning": False, "weight_bits": w, "act_bits": a, "mu": 0.0}
    raise ValueError(f"unknown ablation {kind!r}")


def preset_name(args: argparse.Namespace) -> str:
    """``--preset``, or by default "quick" on the embedded data and "official" elsewhere."""
    return args.preset or ("quick" if args.dataset == "mnist-small" else "official")


def config_from_args(args: argparse.Namespace):
    """A TrainConfig from parsed command-line options."""
    from bbits_ref.training.trainer import PRESETS, TrainConfig

    model = args.model or ("vgg7" if args.dataset == "cifar10" else "lenet5")
    kw = dict(PRESETS[preset_name(args)])        # named deviations from the official recipe
    if args.lr is not None:
        kw.update(lr_weights=args.lr, lr_gates=args.lr, lr_ranges=args.lr)
    # `is not None`, not truthiness: an explicit --lr-gates 0 (frozen gates) must be kept
    if args.lr_gates is not None:
        kw["lr_gates"] = args.lr_gates
    if args.lr_ranges is not None:
        kw["lr_ranges"] = args.lr_ranges
    kw.update(dataset=args.dataset, model=model, width=args.width, batch_size=args.batch_size,
              lr_schedule=args.lr_schedule, gate=args.gate, gate_temperature=args.temperature,
              straight_through=args.straight_through, prior=args.prior,
              reg_type=args.reg_type, gate_preset=args.gate_preset,
              hard_cut=not args.no_hard_cut, finetune_epochs=args.finetune_epochs,
              seed=args.seed, log_every=args.log_every, train_limit=args.train_limit,
              test_limit=args.test_limit, data_dir=args.data_dir, download=args.download)
    if args.mu is not None:
        kw["mu"] = args.mu
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    chosen = [f for f in ("quant_only", "prune_only", "fixed_bits", "full_precision")
              if getattr(args, f)]
    if len(chosen) > 1:
        raise SystemExit(f"choose at most one of --quant-only, --prune-only, --fixed-bits, "
                         f"--full-precision (got {', '.join(chosen)})")
    if args.quant_only:
        kw.update(_ablation("quant-only"))
    if args.prune_only:
        kw.update(_ablation("prune-only", _bits_pair(args.prune_only, "--prune-only")))
    if args.fixed_bits:
        kw.update(_ablation("fixed-bits", _bits_pair(args.fixed_bits, "--fixed-bits")))
    if args.full_precision:
        kw.update(_ablation("full-precision"))
    try:
        return TrainConfig(**kw)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"bbits-ref train: {exc}")


def _default_out(config) -> Path:
    return Path("runs") / f"{config.model}-{config.dataset}-mu{config.mu:g}-seed{config.seed}"


def cmd_train(args) -> int:
    from bbits_ref._runtime import blas_override_note, keep_freed_memory
    from bbits_ref.training.trainer import Trainer

    keep_freed_memory()
    note = blas_override_note()
    if note:
        print(note, file=sys.stderr)

    if args.resume:
        from bbits_ref.training.checkpoints import CheckpointError
        defaults = build_parser().parse_args(["train"])
        changed = sorted(k for k, v in vars(args).items()
                         if k not in ("resume", "no_progress", "func", "command")
                         and getattr(defaults, k, v) != v)
        if changed:
            raise SystemExit("bbits-ref train --resume continues a run with the settings saved in "
                             "its checkpoint; drop " + ", ".join("--" + k.replace("_", "-")
                                                                 for k in changed))
        try:
            trainer = Trainer.resume(args.resume, progress=not args.no_progress)
        except CheckpointError as exc:
            raise SystemExit(f"bbits-ref train --resume: {exc}")
        out = trainer.out_dir               # the run directory, also for a checkpoint file path
        print(f"resuming {out} at epoch {trainer.epoch}/{trainer.total_epochs}")
    else:
        config = config_from_args(args)
        out = Path(args.out) if args.out else _default_out(config)
        if (out / "checkpoint.npz").exists() and not args.force:
            raise SystemExit(f"{out} already holds a run: pass --resume {out} to continue it, "
                             "--force to start it again, or --out for another directory")
        if args.force and out.exists():
            shutil.rmtree(out)
        trainer = Trainer(config, out_dir=out, progress=not args.no_progress)
        preset = preset_name(args)
        print(f"training {config.model} on {config.dataset} ({len(trainer.x_train)} training / "
              f"{len(trainer.x_test)} test images) for {trainer.total_epochs} epochs, "
              f"μ = {config.mu:g}, seed {config.seed}, preset {preset} (lr: weights "
              f"{config.lr_weights:g}, gates {config.lr_gates:g}, ranges {config.lr_ranges:g}) "
              f"-> {out}")
    t0 = time.time()
    summary = trainer.fit()
    print()
    from bbits_ref.method.readout import model_readout
    print(model_readout(trainer.model))
    print(f"\ntest accuracy {summary['test_accuracy']:.4f} at {summary['relative_bops']:.4f}% "
          f"relative BOPs after {summary['epochs']} epochs ({time.time() - t0:.0f} s)")
    _render_run(out, trainer.history)
    print(f"wrote {out}/config.json, history.json, summary.json, checkpoint.npz, figures/")
    return 0


def _render_run(out: Path, history) -> list:
    from bbits_ref import plotting
    return plotting.save_run_figures(history, out / "figures")


def _train_one(payload):
    """Worker for ``sweep``: train one configuration quietly, return its summary."""
    from bbits_ref._runtime import keep_freed_memory
    from bbits_ref.training.trainer import Trainer, TrainConfig

    keep_freed_memory()
    config_dict, out = payload
    trainer = Trainer(TrainConfig.from_dict(config_dict), out_dir=out, progress=False,
                      verbose=False)
    summary = trainer.fit()
    _render_run(Path(out), trainer.history)
    return summary


def cmd_sweep(args) -> int:
    import dataclasses
    from bbits_ref.training.checkpoints import write_json

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


def cmd_figures(args) -> int:
    path = Path(args.path)
    if (path / "sweep.json").exists():
        from bbits_ref.plotting import save_sweep_figures
        rows = json.loads((path / "sweep.json").read_text())["runs"]
        files = save_sweep_figures([r for r in rows if r["kind"] == "bb"],
                                   [r for r in rows if r["kind"] == "baseline"], path / "figures")
    elif (path / "history.json").exists():
        files = _render_run(path, json.loads((path / "history.json").read_text()))
    else:
        raise SystemExit(f"{path} holds neither history.json (a run) nor sweep.json (a sweep)")
    for f in files:
        print(f)
    return 0


def cmd_info(args) -> int:
    from bbits_ref.training.checkpoints import CheckpointError, load_checkpoint
    from bbits_ref.method.readout import model_readout
    from bbits_ref.training.trainer import TrainConfig, build_model

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.npz"
    try:
        model_state, _, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise SystemExit(f"bbits-ref info: {exc}")
    config = TrainConfig.from_dict(meta["config"])
    model = build_model(config, rng=0)
    model.load_state_dict(model_state)
    epochs = [h for h in meta["history"] if h["kind"] == "epoch"]
    print(f"{path}: {config.model} on {config.dataset}, epoch {meta['epoch']}, step {meta['step']}"
          + (f", test accuracy {epochs[-1]['test_acc']:.4f}" if epochs else ""))
    print(model_readout(model))
    return 0


def cmd_readout(args) -> int:
    from bbits_ref.method.models import lenet5, vgg7
    from bbits_ref.method.readout import model_readout
    model = lenet5(rng=args.seed) if args.model == "lenet5" else vgg7(args.width, rng=args.seed)
    print(model_readout(model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbits-ref", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train a Bayesian Bits model")
    _add_train_options(p)
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-mu<μ>-seed<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train several μ values in parallel and build a Pareto table")
    _add_train_options(p)
    p.add_argument("--mus", default="0.01,0.1,1", help="comma-separated μ values")
    p.add_argument("--baseline", action="append",
                   help="add a baseline run: wXaY (uniform fixed bits), quant-only, "
                        "prune-only-wXaY, fp32 (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--out", help="sweep directory")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("figures", help="render the figures of a run or sweep directory")
    p.add_argument("path")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("info", help="bit widths and pruning of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint.npz or a run directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("readout", help="readout table of a freshly built model")
    p.add_argument("--model", default="lenet5", choices=["lenet5", "vgg7"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_readout)

    from bbits_ref.conformance.cli import add_subcommand as add_conformance
    add_conformance(sub)

    p = sub.add_parser("gradcheck", help="check every primitive's gradient")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_gradcheck)
    return parser


def cmd_gradcheck(args) -> int:
    from bbits_ref.autograd.gradcheck import main as gradcheck_main
    return gradcheck_main(args.rest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``bbits-ref train``, ``figures``, ``info``, ``readout`` and ``gradcheck``."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from bbits_ref.cli.options import config_from_args, preset_name

__all__ = ["cmd_train", "cmd_figures", "cmd_info", "cmd_readout", "cmd_gradcheck", "render_run"]


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
        defaults = _parser().parse_args(["train"])
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
    render_run(out, trainer.history)
    print(f"wrote {out}/config.json, history.json, summary.json, checkpoint.npz, figures/")
    return 0


def render_run(out: Path, history) -> list:
    from bbits_ref import plotting
    return plotting.save_run_figures(history, out / "figures")


def cmd_figures(args) -> int:
    path = Path(args.path)
    if (path / "sweep.json").exists():
        from bbits_ref.plotting import save_sweep_figures
        rows = json.loads((path / "sweep.json").read_text())["runs"]
        files = save_sweep_figures([r for r in rows if r["kind"] == "bb"],
                                   [r for r in rows if r["kind"] == "baseline"], path / "figures")
    elif (path / "history.json").exists():
        files = render_run(path, json.loads((path / "history.json").read_text()))
    else:
        raise SystemExit(f"{path} holds neither history.json (a run) nor sweep.json (a sweep)")
    for f in files:
        print(f)
    return 0


def cmd_info(args) -> int:
    from bbits_ref.training.checkpoints import CheckpointError, load_checkpoint
    from bbits_ref.method.readout import model_readout
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import build_model

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


def cmd_gradcheck(args) -> int:
    from bbits_ref.autograd.gradcheck import main as gradcheck_main
    return gradcheck_main(args.rest)




def _parser():
    from bbits_ref.cli import build_parser
    return build_parser()

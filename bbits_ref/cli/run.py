"""``bbits-ref train``, ``figures``, ``info``, ``readout`` and ``gradcheck``.

Errors a user can fix are raised as :mod:`bbits_ref._errors` classes; ``bbits_ref.cli.main``
prints them as one line and exits with their code.  Files read here (run folders, checkpoints,
histories, sweep tables) are untrusted.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from bbits_ref._errors import DataFileError, RunDirError, UsageError
from bbits_ref.cli.options import add_train_options, config_from_args, preset_name

__all__ = ["cmd_train", "cmd_figures", "cmd_info", "cmd_readout", "cmd_gradcheck", "render_run"]

#: The widest VGG-7 ``readout`` builds (8: 1,024 to 4,096 channels); wider ones would not fit in
#: memory, and the readout needs every weight.
MAX_READOUT_WIDTH = 8.0
#: ``train`` options that never change a run's settings.
_NOT_SETTINGS = {"resume", "no_progress", "func", "command", "debug", "change_lr", "engine",
                 "device"}
#: ``train`` options that set learning rates (allowed with --resume --change-lr).
_LR_OPTIONS = {"lr": None, "lr_weights": "lr_weights", "lr_gates": "lr_gates",
               "lr_ranges": "lr_ranges"}


def _default_out(config) -> Path:
    return Path("runs") / f"{config.model}-{config.dataset}-mu{config.mu:g}-seed{config.seed}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cmd_train(args) -> int:
    from bbits_ref._runtime import blas_override_note, keep_freed_memory
    from bbits_ref.training import runs
    from bbits_ref.training.trainer import Trainer

    keep_freed_memory()
    note = blas_override_note()
    if note:
        print(note, file=sys.stderr)

    if args.resume:
        trainer = _resume(args)
        out = trainer.out_dir
        print(f"resuming {out} at epoch {trainer.epoch}/{trainer.total_epochs}")
        for change in trainer.lr_changes:
            if (change.get("epoch"), change.get("step")) == (trainer.epoch, trainer.step):
                print(f"learning rates from epoch {trainer.epoch + 1} on: {change.get('new')} "
                      f"(were {change.get('old')}); recorded in {out}/run.json")
    else:
        if args.change_lr:
            raise UsageError("--change-lr changes the learning rates of a run being resumed; "
                             "use it with --resume RUN_DIR (a new run takes --lr as it is)")
        config = config_from_args(args)
        out = Path(args.out) if args.out else _default_out(config)
        runs.check_new_run(out, force=args.force)       # early: nothing loaded or changed yet
        # Build the trainer (settings checked, data loaded) before clearing anything: a run that
        # cannot start leaves the folder as it was.
        trainer = Trainer(config, out_dir=out, progress=not args.no_progress,
                          engine=args.engine or "numpy", device=args.device)
        if args.force:
            removed = runs.clear_run(out)
            if removed:
                print(f"--force: removed the previous run's {len(removed)} file(s) from {out}")
        preset = preset_name(args)
        print(f"training {config.model} on {config.dataset} ({len(trainer.x_train)} training / "
              f"{len(trainer.x_test)} test images) for {trainer.total_epochs} epochs, "
              f"μ = {config.mu:g}, seed {config.seed}, preset {preset} (lr: weights "
              f"{config.lr_weights:g}, gates {config.lr_gates:g}, ranges {config.lr_ranges:g}) "
              f"-> {out}")
    print(f"computed by the {trainer.engine.name} engine on {trainer.engine.device}")
    if args.resume and len(trainer.engines) > 1 and trainer.engines[-1]["epoch"] == trainer.epoch:
        print(f"the engine changed from {trainer.engines[-2]['engine']} at epoch "
              f"{trainer.epoch}: recorded in {out}/run.json and the history")
    t0 = time.time()
    summary = trainer.fit()
    print()
    from bbits_ref.method.readout import model_readout
    print(model_readout(trainer.model))
    print(f"\ntest accuracy {summary['test_accuracy']:.4f} at {summary['relative_bops']:.4f}% "
          f"relative BOPs after {summary['epochs']} epochs ({time.time() - t0:.0f} s)")
    render_run(out, trainer.history)
    print(f"wrote {out}/config.json, run.json, history.json, summary.json, checkpoint.npz, "
          "figures/")
    return 0


def _resume(args):
    """The Trainer of ``--resume``: the run's own settings, learning rates only by request."""
    from bbits_ref.training.runs import LR_KEYS
    from bbits_ref.training.trainer import Trainer

    defaults = _train_defaults()
    changed = sorted(k for k, v in vars(args).items()
                     if k not in _NOT_SETTINGS and defaults.get(k, v) != v)
    others = [k for k in changed if k not in _LR_OPTIONS]
    lr_given = [k for k in changed if k in _LR_OPTIONS]
    if others:
        raise UsageError("bbits-ref train --resume continues a run in its folder with the "
                         "settings saved in it; drop " + ", ".join(map(_flag, others))
                         + " (only learning rates may change, with --change-lr)")
    if lr_given and not args.change_lr:
        raise UsageError(f"--resume keeps the run's learning rates; to continue with "
                         f"{', '.join(map(_flag, lr_given))} add --change-lr (the change is "
                         "recorded in the run's run.json and history)")
    if args.change_lr and not lr_given:
        raise UsageError("--change-lr needs the new learning rates: --lr, --lr-weights, "
                         "--lr-gates and/or --lr-ranges")
    lrs = dict.fromkeys(LR_KEYS, args.lr) if getattr(args, "lr", None) is not None else {}
    lrs.update({key: getattr(args, name) for name, key in _LR_OPTIONS.items()
                if key is not None and getattr(args, name, None) is not None})
    path = Path(args.resume)
    if path.is_file() and path.name != "checkpoint.npz":
        raise RunDirError(f"{path} is not the checkpoint.npz of a run folder: --resume continues "
                          f"a run in its own folder. Copy {path.name} into an empty folder as "
                          "checkpoint.npz and pass --resume with that folder")
    trainer = Trainer.resume(path, progress=not args.no_progress, lrs=lrs or None,
                             engine=args.engine, device=args.device)
    if trainer.out_dir is None:                    # not reached: resume_folder adopts or refuses
        raise RunDirError(f"{path} belongs to no run folder; copy it into an empty folder as "
                          "checkpoint.npz and pass --resume with that folder")
    return trainer


def render_run(out: Path, history) -> list:
    from bbits_ref import plotting
    return plotting.save_run_figures(history, out / "figures")


def cmd_figures(args) -> int:
    from bbits_ref.training.runs import read_json

    path = Path(args.path)
    if not path.is_dir():
        raise DataFileError(f"{path} is not a folder; give a run folder (with history.json) or a "
                            "sweep folder (with sweep.json)")
    if (path / "sweep.json").exists():
        source = path / "sweep.json"
        from bbits_ref.plotting import save_sweep_figures
        from bbits_ref.training.experiments import sweep_points
        table = read_json(source, "sweep table (sweep.json)")
        if not isinstance(table, dict) or not isinstance(table.get("runs"), list) or not all(
                isinstance(r, dict) for r in table["runs"]):
            raise DataFileError(f"{source} should hold {{\"runs\": [rows...]}} as bbits-ref sweep "
                                "writes it; it does not: re-run the sweep to rewrite it")
        try:
            files = save_sweep_figures(*sweep_points(table), path / "figures")
        except (ValueError, TypeError, KeyError) as exc:
            raise DataFileError(f"{source} cannot be drawn: {exc}") from exc
    elif (path / "history.json").exists():
        source = path / "history.json"
        history = read_json(source, "training history (history.json)")
        try:
            files = render_run(path, history)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataFileError(f"{source} cannot be drawn: {exc}") from exc
    else:
        raise DataFileError(f"{path} holds neither history.json (a run) nor sweep.json (a sweep)")
    for f in files:
        print(f)
    return 0


def cmd_info(args) -> int:
    from bbits_ref.method.readout import model_readout
    from bbits_ref.training.checkpoints import CheckpointError, load_checkpoint
    from bbits_ref.training.trainer import build_model, check_checkpoint_meta

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.npz"
    built = {}

    def expected_model(meta):       # what the checkpoint must hold, checked before reading it
        config, _ = check_checkpoint_meta(path, meta)
        model = build_model(config, rng=0)
        built.update(config=config, model=model)
        expected = model.state_dict()
        for name, q in model.quantizers():       # ranges are created lazily: add them
            if q.has_range:                      # (DoReFa weights have none, §13)
                expected[f"{name}.beta"] = np.zeros((), dtype=config.dtype)
        return expected

    model_state, _, meta = load_checkpoint(path, expected_model=expected_model)
    config, model = built["config"], built["model"]
    try:
        model.load_state_dict(model_state)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit the model its settings build: "
                              f"{str(exc)[:160]}") from exc
    epochs = [h for h in meta["history"] if h.get("kind") == "epoch"
              and isinstance(h.get("test_acc"), (int, float))]
    print(f"{path}: {config.model} on {config.dataset}, epoch {meta['epoch']}, step {meta['step']}"
          + (f", test accuracy {epochs[-1]['test_acc']:.4f}" if epochs else ""))
    try:
        print(model_readout(model))
    except (ValueError, TypeError, FloatingPointError) as exc:
        raise CheckpointError(f"{path} holds values its readout cannot use: {exc}") from exc
    return 0


def cmd_readout(args) -> int:
    from bbits_ref.method.models import lenet5, vgg7
    from bbits_ref.method.readout import model_readout
    if not (math.isfinite(args.width) and 0 < args.width <= MAX_READOUT_WIDTH):
        raise UsageError(f"--width is VGG-7's width multiplier (1: 128 to 512 channels), a number "
                         f"in (0, {MAX_READOUT_WIDTH}]; got {args.width}")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer; got {args.seed}")
    model = lenet5(rng=args.seed) if args.model == "lenet5" else vgg7(args.width, rng=args.seed)
    print(model_readout(model))
    return 0


def cmd_gradcheck(args) -> int:
    from bbits_ref.autograd.gradcheck import main as gradcheck_main
    return gradcheck_main(args.rest)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``bbits-ref train``: the config's flags, then where and how to run."""
    add_train_options(p)
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-mu<μ>-seed<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or RUN_DIR/checkpoint.npz) in place, with "
                        "the settings saved in it")
    p.add_argument("--change-lr", action="store_true",
                   help="with --resume: continue with the learning rates given by --lr, "
                        "--lr-weights, --lr-gates, --lr-ranges (recorded in run.json)")
    p.add_argument("--force", action="store_true",
                   help="start again in a folder that holds a run: removes only that run's "
                        "files, once the new run's settings and data are checked")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("engine (how the run is computed; not a setting of the run)")
    g.add_argument("--engine", choices=("numpy", "torch"), default=None,
                   help="numpy: the reference (default for a new run); torch: the same training "
                        "computed by bbits_ref.torch_impl (needs: pip install "
                        "'bbits-ref[torch]'). With --resume, default: the engine that computed "
                        "the run so far; a checkpoint of either engine resumes in the other")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                   help="torch engine only: cpu, cuda, or auto (default: cuda if available)")


def _train_defaults() -> dict:
    """What ``bbits-ref train`` without options parses to (to see which flags a user gave)."""
    p = argparse.ArgumentParser(add_help=False)
    add_train_arguments(p)
    return vars(p.parse_args([]))

"""The training options of ``bbits-ref train`` and ``bbits-ref sweep``, derived from the config.

Every flag comes from a field of :class:`~bbits_ref.training.config.TrainConfig` or of its nested
:class:`~bbits_ref.method.layers.BBConfig`: its name (``lr_gates`` -> ``--lr-gates``, or the
field's ``flag``), its choices and its help come from the field's ``metadata``, and its default is
the field's default.  Flags are parsed with ``default=None`` so that only what the user typed
changes the config, and the config, not argparse, validates every value.  A handful of flags are
shortcuts that set several fields at once (``--lr``, ``--preset``, the ablation flags, the gate
options); they are listed in :data:`SHORTCUTS`.
"""
from __future__ import annotations

import argparse
import dataclasses

from bbits_ref._errors import UsageError
from bbits_ref.method.gates import gate_option_names
from bbits_ref.method.layers import BBConfig
from bbits_ref.training.config import DATASET_GATE_PRESET, PRESETS, TrainConfig
from bbits_ref.training.experiments import ablation_changes, bits_pair

__all__ = ["add_train_options", "config_from_args", "preset_name", "SHORTCUTS", "field_flag"]

#: Flags that are not one field each: name -> what they set.
SHORTCUTS = {
    "--preset": "a named recipe (PRESETS) under the other flags",
    "--lr": "lr_weights, and lr_gates / lr_ranges unless given",
    "--temperature": "method.gate_options['temperature']",
    "--straight-through": "method.gate_options['straight_through']",
    "--quant-only": "an ablation: pruning=False",
    "--prune-only": "an ablation: learn_bits=False at fixed W/A bits",
    "--fixed-bits": "a baseline: no gates, uniform W/A bits, μ = 0",
    "--full-precision": "a baseline: no quantizers, μ = 0",
}
_ABLATION_FLAGS = ("quant_only", "prune_only", "fixed_bits", "full_precision")
_GROUPS = {TrainConfig: "data, model and optimisation", BBConfig: "method"}


def field_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _cli_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _parse_type(f: dataclasses.Field):
    """int, float or str from the field's annotation (a string under postponed evaluation)."""
    annotation = str(f.type)
    for name, parse in (("int", int), ("float", float)):
        if annotation.split(" |")[0].strip() == name:
            return parse
    return str


def _default_text(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else None
    return "" if default is None else f" (default {default:g})" if isinstance(
        default, float) else f" (default {default})"


def _add_field(group, f: dataclasses.Field) -> None:
    flag, help_ = field_flag(f), f.metadata.get("help", "")
    if "bool" in str(f.type) and "None" not in str(f.type):
        if f.default:     # a setting that is on by default is switched off by --no-<name>
            group.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=False,
                               default=None, help=f"disable: {help_}")
        else:
            group.add_argument(flag, dest=f.name, action="store_const", const=True, default=None,
                               help=help_)
        return
    choices = f.metadata.get("choices")
    group.add_argument(flag, dest=f.name, default=None, choices=choices,
                       type=None if choices else _parse_type(f),
                       metavar=None if choices else f.name.upper(),
                       help=help_ + ("" if "default" in help_ else _default_text(f)))


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Add one flag per config field, plus the :data:`SHORTCUTS`."""
    for cls, title in _GROUPS.items():
        group = p.add_argument_group(title)
        for f in _cli_fields(cls):
            _add_field(group, f)
    g = p.add_argument_group("shortcuts")
    g.add_argument("--preset", choices=tuple(PRESETS),
                   help="quick: 15 epochs, gate lr 1e-2 (default on mnist-small); official: the "
                        "paper's recipe, every lr 1e-3, 100 epochs on MNIST and 300 on CIFAR-10 "
                        "(default otherwise)")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate of the weights, and of gates and ranges unless given")
    g.add_argument("--temperature", type=float, default=None,
                   help="gate temperature (default 2/3)")
    g.add_argument("--straight-through", action="store_true", default=None,
                   help="Gumbel-softmax gates only: hard 0/1 forward, soft gradient")
    g.add_argument("--quant-only", action="store_true", help=SHORTCUTS["--quant-only"])
    g.add_argument("--prune-only", metavar="W/A", help="pruning only at fixed bit widths, e.g. 8/8")
    g.add_argument("--fixed-bits", metavar="W/A",
                   help="uniform fixed-bit baseline, no gates at all, e.g. 4/4")
    g.add_argument("--full-precision", action="store_true", help=SHORTCUTS["--full-precision"])


def preset_name(args: argparse.Namespace) -> str:
    """``--preset``, or by default "quick" on the embedded data and "official" elsewhere."""
    dataset = getattr(args, "dataset", None) or TrainConfig.__dataclass_fields__["dataset"].default
    return args.preset or ("quick" if dataset == "mnist-small" else "official")


def given_settings(args: argparse.Namespace) -> dict:
    """The config fields the user set on the command line (name -> value)."""
    names = [f.name for cls in _GROUPS for f in _cli_fields(cls)]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from parsed command-line options (UsageError otherwise)."""
    changes = dict(PRESETS[preset_name(args)])        # named deviations from the official recipe
    if args.lr is not None:
        changes.update(lr_weights=args.lr, lr_gates=args.lr, lr_ranges=args.lr)
    changes.update(given_settings(args))
    dataset = changes.get("dataset", TrainConfig.__dataclass_fields__["dataset"].default)
    if "chain_init" not in changes:
        changes["chain_init"] = DATASET_GATE_PRESET.get(dataset, "mnist")
    options = {}
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.straight_through:
        options["straight_through"] = True
    if options:
        gate = changes.get("gate", "hard_concrete")
        unknown = sorted(set(options) - set(gate_option_names(gate)))
        if unknown:
            raise UsageError(f"--{unknown[0].replace('_', '-')} applies to Gumbel-softmax gates "
                             f"only; add --gate gumbel_softmax")
        changes["gate_options"] = options
    chosen = [f for f in _ABLATION_FLAGS if getattr(args, f)]
    if len(chosen) > 1:
        raise UsageError("choose at most one of --quant-only, --prune-only, --fixed-bits, "
                         "--full-precision (got " + ", ".join(
                             "--" + c.replace("_", "-") for c in chosen) + ")")
    for kind in chosen:
        flag = "--" + kind.replace("_", "-")
        value = getattr(args, kind)
        bits = bits_pair(value, flag) if isinstance(value, str) else None
        changes.update(ablation_changes(kind.replace("_", "-"), bits))
    try:
        return TrainConfig(dataset=dataset).replace(**{k: v for k, v in changes.items()
                                                       if k != "dataset"})
    except UsageError as exc:
        flag = _flags().get(exc.setting)
        raise UsageError(f"{flag}: {exc}" if flag else str(exc), setting=exc.setting) from None


def _flags() -> dict:
    """Config field name -> its command-line flag."""
    return {f.name: field_flag(f) for cls in _GROUPS for f in _cli_fields(cls)}

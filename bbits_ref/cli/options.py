"""The training options of ``bbits-ref train`` and ``bbits-ref sweep``, and the TrainConfig they give."""
from __future__ import annotations

import argparse

__all__ = ["add_train_options", "config_from_args", "preset_name"]


def add_train_options(p: argparse.ArgumentParser) -> None:
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
    from bbits_ref.training.config import PRESETS, TrainConfig

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




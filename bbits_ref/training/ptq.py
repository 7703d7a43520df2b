"""Post-training quantization (PTQ) against quantization-aware training (QAT), on one network.

Both start from the same trained full-precision network and end in the same uniform fixed-bit
network (every weight at ``weight_bits``, every activation at ``act_bits``, no gates, no pruning:
the ``fixed-bits`` ablation of :func:`~bbits_ref.training.experiments.ablation_changes`).  They
differ in what happens in between:

* **PTQ** (:func:`post_training_quantize`) copies the trained weights and biases (and batch-norm
  parameters and statistics) into the fixed-bit network unchanged and only picks the ranges, by
  the method's rule of docs/method.md §2.1: each weight quantizer's β is the maximum of its
  weight tensor, each activation quantizer's β the maximum of the activation it sees on a
  calibration batch.  Nothing is trained.
* **QAT** (:func:`quantization_aware_training`) starts from exactly that network and fine-tunes
  it with the :class:`~bbits_ref.training.trainer.Trainer` for a few epochs at the same bits:
  the weights and the ranges β learn through the straight-through estimator (§2.6) with Adam
  (§7.3), μ = 0 (there are no gates to price); :func:`ptq_vs_qat` gives the weights the
  config's fine-tuning learning rate (``finetune_lr``, 1e-4) and the ranges their usual 1e-3.

:func:`ptq_vs_qat` runs the whole comparison on one LeNet-5 (or VGG-7) and returns a
:class:`PTQComparison` (one row per bit-width pair: FP32, PTQ and QAT test accuracy, and the
relative BOPs of §5 from :func:`bbits_ref.method.readout.model_readout`);
:func:`format_ptq_table` prints it.  Every random choice comes from the config's seed (the
Trainer's three streams); the calibration batch is the first training images, in file order.
Notebook: ``notebooks/06_lenet5_mnist.ipynb`` ("Post-training quantization vs
quantization-aware training").
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from bbits_ref._errors import UsageError
from bbits_ref.autograd.engine import no_grad
from bbits_ref.datasets import Dataset, load_dataset
from bbits_ref.method.models import BBNet, build
from bbits_ref.method.quantizer import BIT_WIDTHS
from bbits_ref.method.readout import model_readout
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.experiments import ablation_changes
from bbits_ref.training.trainer import Trainer

__all__ = ["DEFAULT_BITS", "fixed_bit_config", "train_full_precision", "post_training_quantize",
           "quantization_aware_training", "calibration_batch", "PTQRow", "PTQComparison",
           "demo_config", "ptq_vs_qat", "format_ptq_table"]

#: The (weight bits, activation bits) pairs :func:`ptq_vs_qat` compares by default.
DEFAULT_BITS = ((8, 8), (4, 4), (2, 2))


# ----------------------------------------------------------------------------- checks
def _whole(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageError(f"{name} must be a whole number ≥ {minimum}; got {value!r}", setting=name)
    return int(value)


def _bits(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or int(value) not in BIT_WIDTHS:
        raise UsageError(f"{name} must be one of {', '.join(map(str, BIT_WIDTHS))} (the widths "
                         f"of the residual decomposition, docs/method.md §2.3); got {value!r}",
                         setting=name)
    return int(value)


def _bit_pairs(bits) -> tuple:
    """``bits`` as a tuple of distinct (weight bits, activation bits) pairs, each checked."""
    try:
        pairs = tuple(tuple(p) for p in bits)
    except TypeError:
        pairs = None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise UsageError(f"bits must be a non-empty list of (weight bits, activation bits) pairs "
                         f"such as ((8, 8), (2, 2)); got {bits!r}", setting="bits")
    pairs = tuple((_bits("weight bits", w), _bits("activation bits", a)) for w, a in pairs)
    repeated = sorted({p for p in pairs if pairs.count(p) > 1})
    if repeated:
        raise UsageError(f"bits lists {', '.join(f'w{w}a{a}' for w, a in repeated)} more than "
                         "once; give each pair once", setting="bits")
    return pairs


def _check_full_precision(model) -> BBNet:
    if not isinstance(model, BBNet):
        raise UsageError(f"post-training quantization needs a trained full-precision BBNet "
                         f"(e.g. train_full_precision(config).model); got {type(model).__name__}")
    if model.config.quantize or model.quantizers():
        raise UsageError("post-training quantization starts from a full-precision network "
                         "(BBConfig(quantize=False)); this one already has quantizers: train "
                         "one with train_full_precision(config)")
    return model


# ----------------------------------------------------------------------------- the two networks
def fixed_bit_config(config: TrainConfig, weight_bits: int, act_bits: int, **changes) -> TrainConfig:
    """``config`` turned into the uniform fixed-bit network at ``weight_bits``/``act_bits``
    (the ``fixed-bits`` ablation: no gates, no pruning, μ = 0), with further ``changes``."""
    bits = (_bits("weight_bits", weight_bits), _bits("act_bits", act_bits))
    return config.replace(**ablation_changes("fixed-bits", bits), **changes)


def train_full_precision(config: TrainConfig | None = None, data=None, epochs: int | None = None,
                         progress: bool = False, verbose: bool = False) -> Trainer:
    """Train the config's network in full precision (the ``full-precision`` ablation, μ = 0).

    ``epochs`` (default: the config's) replaces ``config.epochs``; ``data`` is passed to the
    :class:`~bbits_ref.training.trainer.Trainer`.  Returns the finished trainer:
    ``trainer.model`` is the trained network, ``trainer.evaluate()`` its test accuracy.
    """
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise UsageError(f"config must be a TrainConfig; got {type(config).__name__}")
    changes = dict(ablation_changes("full-precision"), finetune_epochs=0)
    if epochs is not None:
        changes["epochs"] = _whole("fp_epochs", epochs, 1)
    trainer = Trainer(config.replace(**changes), data=data, progress=progress, verbose=verbose)
    trainer.fit()
    return trainer


def post_training_quantize(model: BBNet, weight_bits: int, act_bits: int,
                           calibration_images) -> BBNet:
    """The uniform ``weight_bits``/``act_bits`` network with ``model``'s trained weights (PTQ).

    ``model`` is a trained full-precision :class:`~bbits_ref.method.models.BBNet`
    (``BBConfig(quantize=False)``).  The result has the same architecture and dtype and the same
    method settings with fixed bits: its weights, biases and batch-norm parameters and running
    statistics are copies of ``model``'s, unchanged.  Its ranges are set as the method sets
    them (docs/method.md §2.1), here from ``calibration_images`` (an already normalised batch
    (N, *input_shape)) instead of two training images: one no-grad forward pass in evaluation
    mode (so batch norm uses, and keeps, its running statistics) gives each weight quantizer
    β = max(max(w), 0) of its weight (the folded weight under batch norm) and each activation
    quantizer β = max of the activation it receives, computed through the layers already
    quantized before it.  No parameter is trained.  Returns the new network in evaluation mode.
    """
    model = _check_full_precision(model)
    method = model.config.with_(quantize=True, learn_bits=False, pruning=False,
                                weight_bits=_bits("weight_bits", weight_bits),
                                act_bits=_bits("act_bits", act_bits))
    dtype = next(p.dtype for p in model.parameters())
    x = _calibration_array(calibration_images, model, dtype)
    quantized = build(model.architecture, method, rng=0, dtype=dtype)   # every weight replaced
    trained = model.state_dict()
    missing = sorted(set(trained) - set(quantized.state_dict()))
    if missing:            # cannot happen for networks of the same architecture
        raise RuntimeError(f"the fixed-bit network lacks the trained tensors {missing}")
    quantized.load_state_dict(trained, strict=False)
    quantized.eval()
    try:
        with no_grad():
            quantized(x)                        # lazy ranges from the weights and from x (§2.1)
    except ValueError as exc:
        failed = next(((n, q) for n, q in quantized.quantizers() if q.beta is None), None)
        if failed is None or "range β would be 0" not in str(exc):
            raise
        name, q = failed
        if q.kind == "weight":
            raise UsageError(f"{name}: every weight is ≤ 0, so its range β = max(w) would be 0 "
                             "(docs/method.md §2.1); this network cannot be quantized this "
                             "way") from None
        raise UsageError(f"calibration: {name} saw no positive activation on the "
                         f"{len(x)} calibration image(s), so its range β would be 0; calibrate "
                         "with more (or real, normalised) training images") from None
    return quantized


def _calibration_array(images, model: BBNet, dtype) -> np.ndarray:
    """``images`` as a finite (N, *input_shape) array of ``dtype``, or one UsageError line."""
    try:
        x = np.asarray(images)
    except (TypeError, ValueError):
        x = np.asarray(None)
    if x.dtype.kind not in "iuf":
        raise UsageError(f"calibration_images must be an array of normalised images; got "
                         f"{type(images).__name__}", setting="calibration_images")
    shape = (len(x),) + tuple(model.input_shape) if x.ndim else ()
    if x.shape != shape or len(x) == 0:
        raise UsageError(f"calibration_images must have shape (N ≥ 1, "
                         f"{', '.join(map(str, model.input_shape))}) for {model.name} (normalised "
                         f"as for training); got {x.shape}", setting="calibration_images")
    if not np.isfinite(x).all():
        raise UsageError("calibration_images hold NaN or infinite values; pass normalised images",
                         setting="calibration_images")
    return x.astype(dtype, copy=False)


def calibration_batch(trainer: Trainer, size: int) -> np.ndarray:
    """The first ``size`` training images of ``trainer``, normalised as its training batches."""
    size = _whole("calibration_size", size, 1)
    if size > len(trainer.x_train):
        raise UsageError(f"calibration_size is {size}, but the training set has only "
                         f"{len(trainer.x_train)} images: lower it or raise train_limit",
                         setting="calibration_size")
    return trainer._normalize(trainer.x_train[:size])


def quantization_aware_training(quantized: BBNet, config: TrainConfig, data=None,
                                epochs: int = 1, progress: bool = False,
                                verbose: bool = False) -> tuple[Trainer, float]:
    """Fine-tune a fixed-bit network (e.g. :func:`post_training_quantize`'s) at its own bits (QAT).

    A :class:`~bbits_ref.training.trainer.Trainer` of ``config`` turned into the same fixed-bit
    network (:func:`fixed_bit_config`, ``epochs`` epochs) starts from ``quantized``'s weights
    and ranges instead of its own initialisation, and trains both (no gates, μ = 0).
    ``quantized`` itself is not changed.  Returns ``(trainer, accuracy before training)``: the
    accuracy of the starting network on the trainer's test set, i.e. the PTQ accuracy when
    ``quantized`` came from :func:`post_training_quantize`; ``trainer.model`` is the fine-tuned
    network and ``trainer.history`` its history.
    """
    if not isinstance(quantized, BBNet):
        raise UsageError(f"quantized must be a fixed-bit BBNet (from post_training_quantize); "
                         f"got {type(quantized).__name__}")
    m = quantized.config
    if not (m.quantize and not m.learn_bits and not m.pruning):
        raise UsageError("quantization-aware training here fine-tunes a uniform fixed-bit network "
                         "(learn_bits=False, pruning=False); build it with "
                         "post_training_quantize(model, weight_bits, act_bits, images)")
    if any(q.beta is None for _, q in quantized.quantizers()):
        raise UsageError("the fixed-bit network has no ranges yet: calibrate it first with "
                         "post_training_quantize(model, weight_bits, act_bits, images)")
    qat = fixed_bit_config(config, m.weight_bits, m.act_bits, finetune_epochs=0,
                           epochs=_whole("qat_epochs", epochs, 1))
    trainer = Trainer(qat, data=data, progress=progress, verbose=verbose)
    if trainer.model.architecture != quantized.architecture:
        raise UsageError(f"config builds {trainer.model.name} {trainer.model.input_shape}, but "
                         f"the network to fine-tune is {quantized.name} {quantized.input_shape}: "
                         "pass the config it was trained with")
    if trainer.model.config != quantized.config:
        differ = [k for k, v in asdict(quantized.config).items()
                  if getattr(trainer.model.config, k) != v]
        raise UsageError(f"config's method settings differ from the network's in {differ}: "
                         "pass the config the network was trained with")
    # Parameters are overwritten in place, so the trainer's optimizer (built on the same
    # Parameter objects, with no state yet) trains the PTQ network's weights and ranges.
    trainer.model.load_state_dict(quantized.state_dict())
    before = trainer.evaluate()
    trainer.fit()
    return trainer, before


# ----------------------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class PTQRow:
    """One bit-width pair: test accuracies (fractions) and the relative BOPs (%) of §5."""

    weight_bits: int
    act_bits: int
    fp32_accuracy: float
    ptq_accuracy: float
    qat_accuracy: float
    relative_bops: float

    @property
    def label(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}"

    @property
    def ptq_loss(self) -> float:
        """Accuracy points (fraction) lost by PTQ against FP32."""
        return self.fp32_accuracy - self.ptq_accuracy

    @property
    def qat_loss(self) -> float:
        """Accuracy points (fraction) lost by QAT against FP32."""
        return self.fp32_accuracy - self.qat_accuracy


@dataclass(frozen=True)
class PTQComparison:
    """The result of :func:`ptq_vs_qat`: ``rows`` in the order of ``bits``, the FP32 network's
    accuracy and relative BOPs (its 8-bit input counted as 8 bits, §5), the settings, and the
    networks themselves: ``models["fp32"]``, ``models["ptq"][label]``, ``models["qat"][label]``
    with labels such as ``"w2a2"`` (not part of :meth:`to_dict` or of comparisons)."""

    rows: tuple
    fp32_accuracy: float
    fp32_relative_bops: float
    settings: dict
    models: dict = field(default_factory=dict, repr=False, compare=False)

    def row(self, weight_bits: int, act_bits: int) -> PTQRow:
        """The row of one bit-width pair."""
        for r in self.rows:
            if (r.weight_bits, r.act_bits) == (weight_bits, act_bits):
                return r
        raise KeyError(f"no row w{weight_bits}a{act_bits}; the table has "
                       f"{', '.join(r.label for r in self.rows)}")

    def to_dict(self) -> dict:
        """Plain JSON-ready data (without the models)."""
        return {"rows": [asdict(r) for r in self.rows], "fp32_accuracy": self.fp32_accuracy,
                "fp32_relative_bops": self.fp32_relative_bops, "settings": dict(self.settings)}


def demo_config(**changes) -> TrainConfig:
    """The default setting of :func:`ptq_vs_qat`: LeNet-5 on the first 2,000 images of the
    embedded MNIST subset, batch 16, the official optimiser otherwise (docs/method.md §7.3).

    Why batch 16: more optimizer steps from the same images in the same time.  Three epochs of
    2,000 images are 375 steps at batch 16 (about 10 s on one core) but 47 at the official 128;
    measured with seed 0, the full-precision network then reaches 93 % test accuracy rather than
    89 %, closer to a trained network, which is what PTQ is meant for.
    """
    return TrainConfig(train_limit=2000, test_limit=1000, batch_size=16).replace(**changes)


def ptq_vs_qat(config: TrainConfig | None = None, data=None, *, bits=DEFAULT_BITS,
               fp_epochs: int = 3, qat_epochs: int = 1, seed: int | None = None,
               calibration_size: int = 256, qat_lr: float | None = None) -> PTQComparison:
    """Train one full-precision network, then quantize it after training and during training.

    1. :func:`train_full_precision`: ``config``'s network (default :func:`demo_config`) in full
       precision for ``fp_epochs``, with the config's optimiser settings.
    2. For each (weight bits, activation bits) in ``bits``: :func:`post_training_quantize` with
       the first ``calibration_size`` training images, evaluated without training (PTQ); then
       :func:`quantization_aware_training` of that network for ``qat_epochs`` (QAT), with the
       weights' learning rate ``qat_lr`` (default: the config's ``finetune_lr``, 1e-4) and the
       config's range learning rate.  Fine-tuning a trained network with a fresh Adam at the
       from-scratch rate of 1e-3 undoes part of its training: on the default setting QAT at
       w8a8 then ended 3.3 (seed 0) and 1.5 (seed 1) points below QAT at 1e-4, for seed 0
       below the network it started from.

    ``data`` and ``config.train_limit`` / ``test_limit`` choose the data as for
    :class:`~bbits_ref.training.trainer.Trainer`; ``seed`` (default ``config.seed``) seeds every
    run, so the table is the same for the same arguments.  Returns a :class:`PTQComparison`.
    """
    config = config if config is not None else demo_config()
    if not isinstance(config, TrainConfig):
        raise UsageError(f"config must be a TrainConfig (or None for demo_config()); got "
                         f"{type(config).__name__}")
    if data is not None and not isinstance(data, (Dataset, tuple)):
        raise UsageError(f"data must be a bbits_ref.datasets.Dataset or a tuple (x_train, "
                         f"y_train, x_test, y_test); got {type(data).__name__}")
    pairs = _bit_pairs(bits)
    fp_epochs = _whole("fp_epochs", fp_epochs, 1)
    qat_epochs = _whole("qat_epochs", qat_epochs, 1)
    calibration_size = _whole("calibration_size", calibration_size, 1)
    if seed is not None:
        config = config.replace(seed=_whole("seed", seed, 0))
    qat_config = config.replace(lr_weights=config.finetune_lr if qat_lr is None else qat_lr)

    if data is None:        # load once for the 1 + len(bits) runs
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    fp = train_full_precision(config, data=data, epochs=fp_epochs)
    fp_accuracy = fp.evaluate()
    images = calibration_batch(fp, calibration_size)
    rows, models = [], {"fp32": fp.model, "ptq": {}, "qat": {}}
    for w, a in pairs:
        ptq_model = post_training_quantize(fp.model, w, a, images)
        qat, ptq_accuracy = quantization_aware_training(ptq_model, qat_config, data=data,
                                                        epochs=qat_epochs)
        row = PTQRow(w, a, fp_accuracy, ptq_accuracy, qat.evaluate(),
                     model_readout(ptq_model).relative_bops)
        rows.append(row)
        models["ptq"][row.label], models["qat"][row.label] = ptq_model, qat.model
    settings = {"dataset": config.dataset, "model": config.model, "seed": config.seed,
                "train_images": len(fp.x_train), "test_images": len(fp.x_test),
                "batch_size": config.batch_size, "fp_epochs": fp_epochs,
                "qat_epochs": qat_epochs, "calibration_size": calibration_size,
                "fp_lr_weights": config.lr_weights, "qat_lr_weights": qat_config.lr_weights,
                "lr_ranges": config.lr_ranges}
    return PTQComparison(tuple(rows), fp_accuracy, model_readout(fp.model).relative_bops,
                         settings, models)


def format_ptq_table(table: PTQComparison) -> str:
    """The comparison as a text table (accuracies in %, one row per bit-width pair)."""
    if not isinstance(table, PTQComparison):
        raise UsageError(f"format_ptq_table takes the result of ptq_vs_qat; got "
                         f"{type(table).__name__}")
    s = table.settings
    lines = [f"{s['model']} on {s['dataset']}: {s['train_images']:,} training / "
             f"{s['test_images']:,} test images, FP32 {s['fp_epochs']} epoch(s), QAT "
             f"{s['qat_epochs']} epoch(s), batch {s['batch_size']}, {s['calibration_size']} "
             f"calibration images, seed {s['seed']}",
             f"{'bits':<7} {'FP32 %':>7} {'PTQ %':>7} {'QAT %':>7} {'rel. BOPs %':>12}",
             f"{'fp32':<7} {100 * table.fp32_accuracy:>7.2f} {'':>7} {'':>7} "
             f"{table.fp32_relative_bops:>12.3f}"]
    for r in table.rows:
        lines.append(f"{r.label:<7} {100 * r.fp32_accuracy:>7.2f} {100 * r.ptq_accuracy:>7.2f} "
                     f"{100 * r.qat_accuracy:>7.2f} {r.relative_bops:>12.3f}")
    return "\n".join(lines)

"""The configuration of a training run: :class:`TrainConfig` and the named :data:`PRESETS`.

One object describes a run.  The method's own settings (gates, prior, ablations, clipping) are one
:class:`~bbits_ref.method.layers.BBConfig`, nested as ``TrainConfig.method``; everything about
data, optimisation and bookkeeping sits beside it.  The command line is derived from these two
dataclasses (``bbits_ref/cli/options.py`` reads their fields, defaults, choices and help), and
every value, whether it came from a flag, a Python call or a JSON file, is validated here.

Each field's ``metadata`` says how it appears on the command line: ``help``, ``choices`` (a tuple
owned by the module that defines the setting) and, where the flag differs from the field name,
``flag``; ``cli=False`` keeps a field off the command line.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from bbits_ref._errors import UsageError
from bbits_ref.method.layers import BBConfig, GATE_PRESETS

__all__ = ["TrainConfig", "PRESETS", "OFFICIAL_EPOCHS", "DATASETS", "MODELS", "LR_SCHEDULES",
           "DTYPES", "DATASET_GATE_PRESET", "DATASET_MODEL"]

DATASETS = ("mnist-small", "mnist", "cifar10")
MODELS = ("lenet5", "vgg7")
LR_SCHEDULES = ("official", "constant")
DTYPES = ("float32", "float64")
#: The gate preset (initial chain logits) and the model each dataset uses by default (§3.1, §7).
DATASET_GATE_PRESET = {"mnist-small": "mnist", "mnist": "mnist", "cifar10": "cifar10"}
DATASET_MODEL = {"mnist-small": "lenet5", "mnist": "lenet5", "cifar10": "vgg7"}
#: Epochs of the official recipe (§7.3): LeNet-5/MNIST 100, VGG-7/CIFAR-10 300.
OFFICIAL_EPOCHS = {"mnist-small": 100, "mnist": 100, "cifar10": 300}
#: The largest VGG-7 width multiplier a config accepts (width 8: about 0.85 G parameters).
MAX_WIDTH = 8.0

#: Named settings on top of :class:`TrainConfig`'s official defaults.
PRESETS = {
    "official": {},                                   # §7.3
    "quick": {"epochs": 15, "lr_gates": 1e-2},        # minutes on the embedded subset
}

#: Fields written by versions before 0.2, when the method's settings were flat in TrainConfig:
#: old name -> BBConfig name (``gate_temperature``/``straight_through`` go into gate_options).
_LEGACY_METHOD_FIELDS = {"gate": "gate", "hard_cut": "hard_cut", "prior": "prior",
                         "reg_type": "reg_type", "pruning": "pruning", "learn_bits": "learn_bits",
                         "quantize": "quantize", "weight_bits": "weight_bits",
                         "act_bits": "act_bits", "gate_preset": "chain_init"}


def _opt(default, help, **cli):
    """A field with its command-line description in ``metadata``."""
    kind = "default_factory" if callable(default) else "default"
    return field(**{kind: default}, metadata={"help": help, **cli})


def _number(name, value, *, integer=False, minimum=None, above=None, allow_none=False):
    """Check one numeric setting; UsageError naming it otherwise."""
    if value is None and allow_none:
        return
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{name} must be {kind}; got {value!r}", setting=name)
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number; got {value!r}", setting=name)
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be at least {minimum:g}; got {value!r}", setting=name)
    if above is not None and value <= above:
        raise UsageError(f"{name} must be greater than {above:g}; got {value!r}", setting=name)


def _choice(name, value, choices):
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}",
                         setting=name)


@dataclass
class TrainConfig:
    """Every setting of a run; the defaults are the official MNIST recipe (§7.3).

    ``method`` holds the method's settings (:class:`~bbits_ref.method.layers.BBConfig`); left at
    ``None`` it becomes the official ``BBConfig`` with the dataset's gate preset.  :meth:`replace`
    changes settings of either level by name.

    :data:`PRESETS` holds named deviations from the recipe: ``"quick"`` (what ``bbits-ref train``
    runs on the embedded data) trains 15 epochs with a gate learning rate of 1e-2, so that gates
    that start at φ = 6 cross the test-time threshold within a few minutes; with the official
    1e-3 they need about 7,000 steps, more than the embedded set gives in 15 epochs.
    """

    dataset: str = _opt("mnist-small", "mnist-small is embedded in the package", choices=DATASETS)
    model: str | None = _opt(None, "default: lenet5 for MNIST, vgg7 for CIFAR-10", choices=MODELS)
    width: float = _opt(1.0, "VGG-7 width multiplier")
    epochs: int | None = _opt(None, "number of epochs (default: the preset's, else 100 on "
                                    "MNIST and 300 on CIFAR-10)")
    batch_size: int = _opt(128, "examples per step")
    mu: float = _opt(0.1, "regularizer strength μ")
    lr_weights: float = _opt(1e-3, "learning rate of the weights", flag="--lr-weights")
    lr_gates: float = _opt(1e-3, "learning rate of the gate logits")
    lr_ranges: float = _opt(1e-3, "learning rate of the ranges β")
    lr_schedule: str = _opt("official", "official: linear decay to 0 over the last third",
                            choices=LR_SCHEDULES)
    finetune_epochs: int = _opt(0, "fixed-gate fine-tuning epochs after the gated phase")
    finetune_lr: float = _opt(1e-4, "learning rate of the fine-tuning epochs")
    seed: int = _opt(0, "seed of initialisation, data order and gate noise")
    log_every: int = _opt(20, "steps between history records")
    train_limit: int | None = _opt(None, "use only the first N training examples")
    test_limit: int | None = _opt(None, "use only the first N test examples")
    data_dir: str | None = _opt(None, "folder (or CIFAR-10 .tar.gz) holding the dataset")
    download: bool = _opt(False, "download the dataset if it is missing")
    augment: bool | None = _opt(None, "random crops and flips (default: CIFAR-10 yes, MNIST no)",
                                cli=False)
    dtype: str = _opt("float32", "floating-point type of parameters and activations",
                      choices=DTYPES)
    method: BBConfig | None = _opt(None, "the method's settings", cli=False)

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        if self.model is None:
            self.model = DATASET_MODEL[self.dataset]
        _choice("model", self.model, MODELS)
        if self.epochs is None:
            self.epochs = OFFICIAL_EPOCHS[self.dataset]
        for name in ("epochs", "batch_size", "log_every"):
            _number(name, getattr(self, name), integer=True, minimum=1)
        for name in ("train_limit", "test_limit"):
            _number(name, getattr(self, name), integer=True, minimum=1, allow_none=True)
        _number("finetune_epochs", self.finetune_epochs, integer=True, minimum=0)
        _number("seed", self.seed, integer=True, minimum=0)
        _number("width", self.width, above=0)
        if self.width > MAX_WIDTH:
            raise UsageError(f"width must be at most {MAX_WIDTH:g} (VGG-7's parameters grow with "
                             f"its square: about 13 M at width 1); got {self.width!r}", setting="width")
        for name in ("mu", "lr_weights", "lr_gates", "lr_ranges", "finetune_lr"):
            _number(name, getattr(self, name), minimum=0)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("dtype", self.dtype, DTYPES)
        for name in ("download",):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false; got {getattr(self, name)!r}",
                                 setting=name)
        if self.augment is not None and not isinstance(self.augment, bool):
            raise UsageError(f"augment must be true, false or null; got {self.augment!r}",
                             setting="augment")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise UsageError(f"data_dir must be a path; got {self.data_dir!r}", setting="data_dir")
        if self.method is None:
            self.method = BBConfig(chain_init=DATASET_GATE_PRESET[self.dataset])
        elif isinstance(self.method, dict):
            self.method = _method_from_dict(self.method)
        elif not isinstance(self.method, BBConfig):
            raise UsageError(f"method must be a BBConfig; got {type(self.method).__name__}")

    # -- changing and storing ------------------------------------------------------------------

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with some settings changed, of either level, by name.

        ``config.replace(mu=0.0, pruning=False)`` changes ``mu`` here and ``pruning`` in
        ``config.method``.  Changing ``dataset`` also moves a gate preset that was the old
        dataset's default to the new dataset's.
        """
        own = {f.name for f in dataclasses.fields(self)}
        method_names = {f.name for f in dataclasses.fields(BBConfig)}
        unknown = sorted(set(changes) - own - method_names)
        if unknown:
            raise UsageError(f"unknown settings {unknown}; TrainConfig has {sorted(own)} and "
                             f"its method (BBConfig) has {sorted(method_names)}")
        top = {k: v for k, v in changes.items() if k in own}
        method_changes = {k: v for k, v in changes.items() if k not in own}
        method = top.pop("method", self.method)
        if "dataset" in top:
            _choice("dataset", top["dataset"], DATASETS)
        if "dataset" in top and method.chain_init == DATASET_GATE_PRESET[self.dataset]:
            method_changes.setdefault("chain_init", DATASET_GATE_PRESET[top["dataset"]])
        if "dataset" in top and self.model == DATASET_MODEL[self.dataset]:
            top.setdefault("model", None)
        if method_changes:
            method = _new_method(dataclasses.replace, method, **method_changes)
        return dataclasses.replace(self, method=method, **top)

    def to_dict(self) -> dict:
        """Plain JSON-ready data; :meth:`from_dict` reads it back."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method"}
        m = dataclasses.asdict(self.method)
        if isinstance(m["chain_init"], tuple):
            m["chain_init"] = list(m["chain_init"])
        d["method"] = m
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from :meth:`to_dict`'s data (e.g. a run's ``config.json``), checked field by
        field: the data may come from a file, so unknown names and wrong types are errors.
        Configs written by bbits_ref 0.1 (method settings flat at the top) are read too."""
        if not isinstance(d, dict):
            raise UsageError(f"a training configuration must be a JSON object; got "
                             f"{type(d).__name__}")
        d = dict(d)
        if "method" not in d:
            d = _from_legacy(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown training settings: {unknown}")
        return cls(**d)


def _new_method(make, *args, **kwargs) -> BBConfig:
    """Build a BBConfig, turning its ValueErrors into UsageErrors."""
    try:
        return make(*args, **kwargs)
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid method setting: {exc}") from None


def _method_from_dict(m: dict) -> BBConfig:
    names = {f.name for f in dataclasses.fields(BBConfig)}
    unknown = sorted(set(m) - names)
    if unknown:
        raise UsageError(f"unknown method settings: {unknown}; BBConfig has {sorted(names)}")
    m = dict(m)
    chain = m.get("chain_init")
    if isinstance(chain, list):
        m["chain_init"] = tuple(chain)
    if "gate_options" in m and not isinstance(m["gate_options"], dict):
        raise UsageError(f"gate_options must be an object; got {m['gate_options']!r}")
    for key, value in m.items():
        if key in ("chain_init", "gate_options"):
            continue
        if isinstance(value, (list, dict)):
            raise UsageError(f"method setting {key} must be a single value; got {value!r}")
    return _new_method(BBConfig, **m)


def _from_legacy(d: dict) -> dict:
    """Map a flat 0.1 configuration onto the nested one."""
    method = {}
    for old, new in _LEGACY_METHOD_FIELDS.items():
        if old in d:
            value = d.pop(old)
            if value is not None:
                method[new] = value
    options = {}
    temperature = d.pop("gate_temperature", None)
    if temperature is not None:
        options["temperature"] = temperature
    if d.pop("straight_through", False):
        options["straight_through"] = True
    if options:
        method["gate_options"] = options
    dataset = d.get("dataset", "mnist-small")
    if dataset in DATASET_GATE_PRESET:
        method.setdefault("chain_init", DATASET_GATE_PRESET[dataset])
    d["method"] = method
    return d


# The presets named by DATASET_GATE_PRESET must exist.
assert set(DATASET_GATE_PRESET.values()) <= set(GATE_PRESETS)

"""The configuration of a training run: :class:`TrainConfig` and the named :data:`PRESETS`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bbits_ref.method.layers import BBConfig

__all__ = ["TrainConfig", "PRESETS", "OFFICIAL_EPOCHS"]

DATASET_PRESETS = {"mnist-small": "mnist", "mnist": "mnist", "cifar10": "cifar10"}
#: Epochs of the official recipe (spec §7.3): LeNet-5/MNIST 100, VGG-7/CIFAR-10 300.
OFFICIAL_EPOCHS = {"mnist-small": 100, "mnist": 100, "cifar10": 300}

#: Named settings on top of :class:`TrainConfig`'s official defaults.
PRESETS = {
    "official": {},                                   # spec §7.3
    "quick": {"epochs": 15, "lr_gates": 1e-2},        # minutes on the embedded subset
}



@dataclass
class TrainConfig:
    """Every setting of a run; the defaults are the official MNIST recipe (spec §7.3).

    :data:`PRESETS` holds named deviations from it: ``"quick"`` (what ``bbits-ref train`` runs
    on the embedded data) trains 15 epochs with a gate learning rate of 1e-2, so that gates that
    start at φ = 6 cross the test-time threshold within a few minutes; with the official 1e-3
    they need about 7,000 steps, more than the embedded set gives in 15 epochs.
    """

    dataset: str = "mnist-small"        # "mnist-small" (embedded) | "mnist" | "cifar10"
    model: str = "lenet5"               # "lenet5" | "vgg7"
    width: float = 1.0                  # VGG-7 width multiplier
    epochs: int | None = None           # None: the dataset's official count (OFFICIAL_EPOCHS)
    batch_size: int = 128
    mu: float = 0.1
    lr_weights: float = 1e-3
    lr_gates: float = 1e-3
    lr_ranges: float = 1e-3
    lr_schedule: str = "official"       # "official" (linear decay, last third) | "constant"
    gate: str = "hard_concrete"         # "hard_concrete" | "gumbel_softmax"
    gate_temperature: float | None = None
    straight_through: bool = False      # Gumbel-softmax only
    gate_preset: str | None = None      # None: the dataset's (mnist / cifar10)
    hard_cut: bool = True
    prior: str = "autoregressive"       # "autoregressive" | "independent"
    reg_type: str = "bop"               # "bop" | "const"
    pruning: bool = True                # False: quantization only
    learn_bits: bool = True             # False: pruning only, at weight_bits / act_bits
    quantize: bool = True               # False: full precision
    weight_bits: int | None = None
    act_bits: int | None = None
    finetune_epochs: int = 0            # fixed-gate fine-tuning after the gated phase
    finetune_lr: float = 1e-4
    seed: int = 0
    log_every: int = 20                 # steps between history records
    train_limit: int | None = None      # use only the first n training examples
    test_limit: int | None = None
    data_dir: str | None = None
    download: bool = False
    augment: bool | None = None         # None: CIFAR-10 yes, MNIST no (spec §7.3)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.epochs is None and self.dataset in OFFICIAL_EPOCHS:
            self.epochs = OFFICIAL_EPOCHS[self.dataset]
        if self.dataset not in DATASET_PRESETS:
            raise ValueError(f"dataset must be one of {sorted(DATASET_PRESETS)}; got {self.dataset!r}")
        if self.model not in ("lenet5", "vgg7"):
            raise ValueError(f"model must be 'lenet5' or 'vgg7'; got {self.model!r}")
        for name in ("epochs", "batch_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.finetune_epochs < 0 or self.mu < 0:
            raise ValueError("finetune_epochs and mu must be non-negative")
        if self.lr_schedule not in ("official", "constant"):
            raise ValueError(f"lr_schedule must be 'official' or 'constant'; got {self.lr_schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        self.bb_config()          # validates the quantization settings early

    def bb_config(self) -> BBConfig:
        options = {}
        if self.gate_temperature is not None:
            options["temperature"] = self.gate_temperature
        if self.straight_through:
            options["straight_through"] = True
        return BBConfig(gate=self.gate, gate_options=options,
                        chain_init=self.gate_preset or DATASET_PRESETS[self.dataset],
                        hard_cut=self.hard_cut, pruning=self.pruning, learn_bits=self.learn_bits,
                        quantize=self.quantize, weight_bits=self.weight_bits,
                        act_bits=self.act_bits, prior=self.prior, reg_type=self.reg_type)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {unknown}")
        return cls(**d)

"""bbits_ref: a readable NumPy reference implementation of Bayesian Bits (van Baalen et al., 2020).

Start with ``notebooks/00_tour.ipynb``; ``ARCHITECTURE.md`` shows the layers and ``docs/method.md``
the method.  The subpackages, from the bottom up:

* :mod:`bbits_ref.autograd` — the autograd engine, its primitives, layers, optimizers, gradient checks;
* :mod:`bbits_ref.method` — the quantizer, gates, prior, BOPs, quantized layers, models, readout;
* :mod:`bbits_ref.datasets` — the embedded MNIST subset, MNIST and CIFAR-10 files;
* :mod:`bbits_ref.torch_impl` — an independent PyTorch implementation of the method;
* :mod:`bbits_ref.training` — configuration, the trainer, checkpoints, experiments;
* :mod:`bbits_ref.plotting`, :mod:`bbits_ref.course`, :mod:`bbits_ref.conformance`, :mod:`bbits_ref.cli`.

The names below are the method's main entry points and the engine's basics.
"""
from bbits_ref._version import __version__
from bbits_ref.autograd import ops  # noqa: F401  (attaches nothing; imported so every primitive is registered)
from bbits_ref.autograd.engine import (PRIMITIVES, Tensor, default_dtype, frozen_rounding,
                                       get_default_dtype, no_grad, set_default_dtype)
from bbits_ref.method.bops import relative_bops
from bbits_ref.method.gates import GumbelSoftmax, HardConcrete
from bbits_ref.method.layers import BBConfig, BBQuantizer
from bbits_ref.method.models import lenet5, vgg7
from bbits_ref.method.prior import bop_regularizer
from bbits_ref.method.quantizer import bb_quantize, decompose, quantize_direct
from bbits_ref.method.readout import model_readout
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.trainer import Trainer, train

__all__ = [
    # the method
    "bb_quantize", "decompose", "quantize_direct", "HardConcrete", "GumbelSoftmax", "bop_regularizer",
    "relative_bops", "BBConfig", "BBQuantizer", "lenet5", "vgg7", "model_readout",
    "TrainConfig", "Trainer", "train",
    # the engine
    "Tensor", "PRIMITIVES", "ops", "no_grad", "default_dtype", "get_default_dtype",
    "set_default_dtype", "frozen_rounding", "__version__",
]

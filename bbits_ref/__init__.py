"""bbits_ref: a readable NumPy reference implementation of Bayesian Bits (van Baalen et al., 2020).

Start with ``notebooks/00_tour.ipynb``; the modules are, in reading order:
:mod:`~bbits_ref.engine` (autograd), :mod:`~bbits_ref.ops` (primitives), :mod:`~bbits_ref.nn`
(layers), :mod:`~bbits_ref.optim` (optimizers) and :mod:`~bbits_ref.gradcheck`.
"""
from . import ops
from .engine import (PRIMITIVES, Tensor, default_dtype, frozen_rounding, get_default_dtype,
                     no_grad, set_default_dtype)

__version__ = "0.1.0"
__all__ = ["Tensor", "PRIMITIVES", "ops", "no_grad", "default_dtype", "get_default_dtype",
           "set_default_dtype", "frozen_rounding", "__version__"]

"""bbits_ref: a readable NumPy reference implementation of Bayesian Bits (van Baalen et al., 2020).

Start with ``notebooks/00_tour.ipynb``.  The modules, in reading order:

* :mod:`~bbits_ref.engine`, :mod:`~bbits_ref.ops` — the autograd engine and its primitive table;
  :mod:`~bbits_ref.gradcheck` — gradient checks; :mod:`~bbits_ref.nn`, :mod:`~bbits_ref.optim`;
* :mod:`~bbits_ref.quantizer` — the residual decomposition (spec §2);
  :mod:`~bbits_ref.gates` — hard-concrete and Gumbel-softmax gates (§3);
  :mod:`~bbits_ref.prior` — the prior and the regularizer (§4); :mod:`~bbits_ref.bops` (§5);
* :mod:`~bbits_ref.qnn`, :mod:`~bbits_ref.models` — quantized layers, LeNet-5, VGG-7 (§6–§7);
  :mod:`~bbits_ref.readout` — what the gates decided;
* :mod:`~bbits_ref.data`, :mod:`~bbits_ref.train`, :mod:`~bbits_ref.plotting`, :mod:`~bbits_ref.cli`.
"""
from . import ops, quantizer  # noqa: F401  (quantizer registers the bb_quantize primitive)
from .engine import (PRIMITIVES, Tensor, default_dtype, frozen_rounding, get_default_dtype,
                     no_grad, set_default_dtype)

__version__ = "0.1.0"
__all__ = ["Tensor", "PRIMITIVES", "ops", "no_grad", "default_dtype", "get_default_dtype",
           "set_default_dtype", "frozen_rounding", "__version__"]

"""A fast PyTorch implementation of Bayesian Bits, validated against the NumPy reference.

``bbits_ref`` itself never imports torch; this subpackage is the optional fast path (and the
worked example of a "fast implementation" that the conformance suite checks)::

    pip install 'bbits_ref[torch]'

Modules (same vocabulary and sections of docs/method.md as the reference):

* :mod:`.quantizer` — clip range, step sizes and the Bayesian Bits quantizer as one
  ``torch.autograd.Function`` (§2), and a straight-through rounding;
* :mod:`.kernels` — the quantizer's elementwise chain compiled for the CPU with numba (optional,
  installed with the ``torch`` extra): the same values bit for bit, several times faster;
* :mod:`.gates` — hard-concrete and Gumbel-softmax gates, test-time gates, the chain (§3);
* :mod:`.prior` — the regularizer of the official code (§4.3);
* :mod:`.bops` — relative BOPs (§5);
* :mod:`.layers` — the quantizer module and the quantized conv/linear layers (§6);
* :mod:`.models` — ``LeNet5``, ``VGG7`` (any architecture with ``build``) as
  ``torch.nn.Module`` s built from :mod:`bbits_ref.method.architectures` (§7);
* :mod:`.state` — weight transfer to and from the reference, in both directions;
* :mod:`.adapter` — ``adapter``, the conformance protocol in float32 on the CPU.

The implementation is independent of the reference: it computes every formula itself and
shares with it only :mod:`bbits_ref.method.constants` (the method's numbers),
:mod:`bbits_ref.method.architectures` (the networks' descriptions) and the settings object
:class:`bbits_ref.method.layers.BBConfig`.  So passing the conformance suite means something.

Everything is float32 by default, works on the device of its inputs (no ``.cuda()`` anywhere),
and takes its randomness as uniform noise or a ``torch.Generator``.
"""
try:
    import torch  # noqa: F401
except ImportError as err:           # pragma: no cover - exercised only without torch
    raise ImportError(
        "bbits_ref.torch_impl needs PyTorch, which is an optional dependency of bbits_ref. "
        "Install it with: pip install 'bbits_ref[torch]'  (the NumPy reference, bbits_ref, "
        "works without it)") from err

from bbits_ref.torch_impl.gates import (chain_gates, chain_gates_eval, deterministic_gates,
                                        gumbel_softmax_sample, hard_concrete_sample,
                                        prob_nonzero, uniform_noise)
from bbits_ref.torch_impl.layers import BBQuantizer
from bbits_ref.torch_impl.models import BBNet, LeNet5, VGG7, build
from bbits_ref.torch_impl.state import (from_reference, load_numpy_state, state_dict_to_numpy,
                                        to_reference)
from bbits_ref.torch_impl.prior import bop_regularizer, independent_regularizer, regularizer
from bbits_ref.torch_impl.quantizer import bb_quantize, round_ste

__all__ = ["bb_quantize", "round_ste", "hard_concrete_sample", "gumbel_softmax_sample",
           "prob_nonzero", "deterministic_gates", "chain_gates", "chain_gates_eval",
           "uniform_noise", "regularizer", "bop_regularizer", "independent_regularizer",
           "BBQuantizer", "BBNet", "LeNet5", "VGG7", "build", "to_reference", "from_reference",
           "state_dict_to_numpy", "load_numpy_state"]

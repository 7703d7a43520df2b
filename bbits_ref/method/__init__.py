"""Bayesian Bits itself, built on :mod:`bbits_ref.autograd`.

Reading order: :mod:`.quantizer` (the residual decomposition), :mod:`.gates` (hard-concrete and
Gumbel-softmax gates), :mod:`.prior` (the prior and the regularizer), :mod:`.bops` (bit-operation
counting), :mod:`.layers` (quantized layers and their configuration), :mod:`.models` (LeNet-5,
VGG-7) and :mod:`.readout` (what the gates decided).
"""

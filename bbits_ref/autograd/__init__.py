"""The autograd engine: tensors, the primitive table, layers, optimizers and gradient checks.

Reading order: :mod:`.engine` (``Tensor``, ``register``, the backward pass), :mod:`.ops` (the
primitives, each with its forward and vector-Jacobian product), :mod:`.nn` (modules and layers),
:mod:`.optim` (SGD, Adam), :mod:`.gradcheck` (finite-difference and random-projection checks).
Nothing here knows about quantization.
"""

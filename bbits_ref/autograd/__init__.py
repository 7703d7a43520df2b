"""The autograd engine: tensors, the primitive table, layers, optimizers and gradient checks.

Reading order: :mod:`.engine` (``Tensor``, ``register``, the backward pass), :mod:`.ops` (the
primitives, each with its forward and vector-Jacobian product), :mod:`.nn` (modules and layers),
:mod:`.optim` (SGD, Adam), :mod:`.gradcheck` (finite-difference and random-projection checks).
Nothing here knows about quantization.

Importing this package registers the primitives of :mod:`.ops`, which ``Tensor``'s operators look
up by name, so ``from bbits_ref.autograd.engine import Tensor`` alone gives working tensors.
"""
from bbits_ref.autograd import ops  # noqa: F401  (fills engine.PRIMITIVES)

"""Weight transfer between the PyTorch models and the NumPy reference (docs/method.md §6–§7).

Both are built from the same :class:`~bbits_ref.method.architectures.Architecture`, so their
state dicts have the same names and shapes: a state dict is the whole interface.

* :func:`state_dict_to_numpy` / :func:`load_numpy_state`: a torch model's state as NumPy
  arrays, and back (lazy ranges that the state provides are created).
* :func:`from_reference` / :func:`to_reference`: a whole model, same architecture, config,
  dtype, weights and mode.  :func:`to_reference` is the only place in this package that
  imports the reference's models, and only when it is called.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bbits_ref.method.architectures import Architecture
from bbits_ref.torch_impl.layers import NUMPY_DTYPES
from bbits_ref.torch_impl.models import BBNet

__all__ = ["state_dict_to_numpy", "load_numpy_state", "to_reference", "from_reference"]

_TORCH = {np.dtype(np_type): torch_type for torch_type, np_type in NUMPY_DTYPES.items()}


def state_dict_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer as a NumPy array, by the reference's names (copies, on CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: dict, strict: bool = True) -> None:
    """Load a NumPy state dict (e.g. a reference model's ``.state_dict()``) into a torch model.

    Lazy ranges that the state provides are created; values are cast to each parameter's dtype
    and device.  ``strict`` requires the same set of names.
    """
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=strict)


def to_reference(model: BBNet):
    """The same network as a reference ``bbits_ref.method.models.BBNet``.

    Same architecture, config, dtype, weights and mode.
    """
    if not isinstance(model, BBNet):
        raise TypeError(f"to_reference needs a torch_impl BBNet (LeNet5, VGG7 or build(...)); "
                        f"got {type(model).__name__}")
    from bbits_ref.method.models import build      # the reference, loaded only for the transfer
    dtype = NUMPY_DTYPES[next(p.dtype for p in model.parameters() if p.is_floating_point())]
    ref = build(model.architecture, model.config, dtype=dtype)
    ref.load_state_dict(state_dict_to_numpy(model))
    ref.train(model.training)
    return ref


def from_reference(ref_model, *, device=None) -> BBNet:
    """The same network as a torch :class:`~.models.BBNet`, from a reference model.

    Reads only the reference model's ``architecture``, ``config``, ``training`` and
    ``state_dict()``.
    """
    architecture = getattr(ref_model, "architecture", None)
    if not isinstance(architecture, Architecture) or not hasattr(ref_model, "state_dict"):
        raise TypeError(f"from_reference needs a reference bbits_ref.method.models.BBNet "
                        f"(lenet5(), vgg7() or build(...)); got {type(ref_model).__name__}")
    state = ref_model.state_dict()
    dtype = _TORCH[np.dtype(next(v.dtype for v in state.values() if v.dtype.kind == "f"))]
    model = BBNet(architecture, ref_model.config, dtype=dtype, device=device)
    load_numpy_state(model, state)
    model.train(ref_model.training)
    return model

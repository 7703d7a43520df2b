"""The PyTorch implementation behind the conformance protocol, in float32 on the CPU.

``adapter`` implements every method of the adapter protocol (``bbits_ref.conformance``): the
suite's NumPy inputs become float32 CPU tensors, the torch implementation runs forward and
backward, and the results come back as NumPy arrays.  Run it with::

    python -m bbits_ref.conformance export /tmp/suite
    python -m bbits_ref.conformance check /tmp/suite --impl bbits_ref.torch_impl.adapter:adapter

The thread count is left as it is (``torch.set_num_threads`` is not called).  Float32 cannot
reproduce float64 rounding ties bit for bit (docs/method.md §2.3a); the suite decides how it
treats them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bbits_ref.method.layers import BBConfig
from bbits_ref.torch_impl import bops as _bops
from bbits_ref.torch_impl import gates as _gates
from bbits_ref.torch_impl import prior as _prior
from bbits_ref.torch_impl.models import LeNet5
from bbits_ref.torch_impl.quantizer import bb_quantize
from bbits_ref.torch_impl.state import load_numpy_state

__all__ = ["TorchAdapter", "adapter"]

DTYPE = torch.float32


def _t(value, requires_grad: bool = False) -> torch.Tensor:
    """A float32 CPU tensor from a NumPy array or number."""
    t = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=DTYPE)
    return t.requires_grad_(requires_grad)


def _np(t) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().cpu().numpy()


def _grad(t) -> np.ndarray | None:
    """The gradient of a leaf, or zeros if autograd never reached it."""
    if t is None:
        return None
    return np.zeros(tuple(t.shape), dtype=np.float32) if t.grad is None else _np(t.grad)


class TorchAdapter:
    """``bbits_ref.torch_impl`` behind the conformance protocol (float32, CPU)."""

    name = "bbits_ref.torch_impl (float32, cpu)"

    # -- quantizer (§2)
    def quantize(self, x, beta, z2, z4, z8, z16, z32, *, signed: bool, grad_out) -> dict:
        x_t, beta_t = _t(x, True), _t(beta, True)
        z2_t = None if z2 is None else _t(z2, True)
        gates = [None if z is None else _t(z, True) for z in (z4, z8, z16, z32)]
        x_q = bb_quantize(x_t, beta_t, z2_t, *gates, signed=bool(signed))
        x_q.backward(_t(grad_out))
        out = {"x_q": _np(x_q), "grad_x": _grad(x_t), "grad_beta": _grad(beta_t),
               "grad_z2": _grad(z2_t)}
        for name, z in zip(("z4", "z8", "z16", "z32"), gates):
            out[f"grad_{name}"] = _grad(z)
        return out

    # -- gates (§3)
    def hard_concrete(self, logits, u, *, grad_out) -> dict:
        phi = _t(logits, True)
        z = _gates.hard_concrete_sample(phi, u)
        z.backward(_t(grad_out))
        return {"z": _np(z), "grad_logits": _grad(phi)}

    def gumbel_softmax(self, logits, u, *, temperature: float, straight_through: bool,
                       grad_out) -> dict:
        phi = _t(logits, True)
        z = _gates.gumbel_softmax_sample(phi, u, temperature=float(temperature),
                                         straight_through=bool(straight_through))
        z.backward(_t(grad_out))
        return {"z": _np(z), "grad_logits": _grad(phi)}

    def prob_nonzero(self, logits, *, gate: str) -> np.ndarray:
        return _np(_gates.prob_nonzero(_t(logits), gate=gate))

    def deterministic_gates(self, logits, *, gate: str) -> np.ndarray:
        return _np(_gates.deterministic_gates(_t(logits), gate=gate))

    def chain_gates_eval(self, chain_logits, *, hard_cut: bool) -> np.ndarray:
        return _np(_gates.chain_gates_eval(_t(chain_logits), hard_cut=bool(hard_cut)))

    # -- prior (§4.3)
    def regularizer(self, prune_logits, chain_logits, mac_weight, *, prior: str,
                    reg_type: str) -> dict:
        prune = None if prune_logits is None else _t(prune_logits, True)
        chain = _t(chain_logits, True)
        value = _prior.regularizer(prune, chain, float(mac_weight), prior=prior,
                                   reg_type=reg_type)
        value.backward()
        return {"value": _np(value), "grad_prune_logits": _grad(prune),
                "grad_chain_logits": _grad(chain)}

    # -- BOPs (§5)
    def relative_bops(self, model: str, width: float, gates: dict) -> float:
        return float(_bops.relative_bops(model, float(width), gates))

    # -- a whole LeNet-5 training step (§7.1), and K of them (§7.3)
    @staticmethod
    def _lenet5(params: dict) -> LeNet5:
        model = LeNet5(BBConfig(chain_init="mnist"), dtype=DTYPE)
        load_numpy_state(model, params)
        model.train()
        return model

    @staticmethod
    def _loss(model, logits, y, mu: float) -> torch.Tensor:
        loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(y), dtype=torch.long))
        return loss + float(mu) * model.regularizer()

    def lenet5_step(self, params: dict, x, y, noise: dict, *, mu: float) -> dict:
        model = self._lenet5(params)
        logits = model(_t(x), noise=noise)
        loss = self._loss(model, logits, y, mu)
        loss.backward()
        grads = {name: _grad(p) for name, p in model.named_parameters()}
        return {"logits": _np(logits), "loss": _np(loss), "grads": grads}

    def lenet5_train(self, params: dict, x, y, noise: dict, *, mu: float, lr: float,
                     beta1: float, beta2: float, eps: float) -> dict:
        """K steps of the MNIST recipe: ``torch.optim.Adam`` on the three parameter groups,
        gradients zeroed in place (as PyTorch 1.x, which the official code targets, does)."""
        model = self._lenet5(params)
        groups = [{"params": ps} for ps in model.parameter_groups().values()]
        optimizer = torch.optim.Adam(groups, lr=float(lr), betas=(float(beta1), float(beta2)),
                                     eps=float(eps))
        losses = []
        for k in range(np.shape(x)[0]):
            optimizer.zero_grad(set_to_none=False)
            step_noise = {q: {key: u[k] for key, u in parts.items()} for q, parts in noise.items()}
            loss = self._loss(model, model(_t(x[k]), noise=step_noise), y[k], mu)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
        return {"losses": np.array(losses),
                "params": {name: _np(p) for name, p in model.named_parameters()}}


adapter = TorchAdapter()

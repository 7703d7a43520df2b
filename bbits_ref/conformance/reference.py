"""The reference implementation behind the adapter protocol (float64 by default).

Every method forwards to the bbits_ref functions that the rest of the package uses, so the
conformance suite's expected values *are* the reference (docs/method.md §2–§5, §7.1, §7.3).  The protocol itself
is documented in :mod:`bbits_ref.conformance` (all arrays in and out are NumPy arrays).

``adapter`` is the float64 instance the suite is generated with.  ``ReferenceAdapter(np.float32)``
runs the same code in float32; the tests use it to show that a float32 implementation can pass
every tolerance of the suite, and ``ReferenceAdapter(clip="numpy")`` to show that the tie cases
do not depend on the clip formula (§2.3a).
"""
from __future__ import annotations

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor
from bbits_ref.autograd.optim import Adam
from bbits_ref.method import bops, prior
from bbits_ref.method.gates import HardConcrete, chain_gates, make_gate
from bbits_ref.method.models import lenet5
from bbits_ref.method.layers import BBConfig
from bbits_ref.method.quantizer import bb_quantize

__all__ = ["ReferenceAdapter", "adapter", "bops_layer_names", "PRIORS"]

PRIORS = ("autoregressive", "independent")


def _grad(t: Tensor | None) -> np.ndarray | None:
    """A leaf's gradient as float64 (zeros if nothing reached it, None for an absent input)."""
    if t is None:
        return None
    g = np.zeros(t.shape, t.dtype) if t.grad is None else t.grad
    return np.asarray(g, dtype=np.float64)


def _out(a) -> np.ndarray:
    return np.asarray(a.data if isinstance(a, Tensor) else a, dtype=np.float64)


def bops_layer_names(model: str, width: float = 1.0) -> list[tuple[str, int]]:
    """(layer name, MACs) of ``"lenet5"`` or ``"vgg7"`` in network order (§5.1)."""
    if model == "lenet5":
        if width != 1.0:
            raise ValueError(f"LeNet-5 has no width multiplier; pass width=1.0, got {width!r}")
        return bops.lenet5_layer_macs()
    if model == "vgg7":
        return bops.vgg7_layer_macs(width)
    raise ValueError(f"model must be 'lenet5' or 'vgg7'; got {model!r}")


class ReferenceAdapter:
    """bbits_ref behind the adapter protocol.

    Parameters
    ----------
    dtype : np.float64 (the suite's ground truth) or np.float32.
    clip : ``"official"`` (ReLU-form clip, bit-exact with the official code) or ``"numpy"``.
    """

    def __init__(self, dtype=np.float64, clip: str = "official") -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64; got {self.dtype}")
        self.clip = clip
        self.name = f"bbits_ref reference ({self.dtype.name}, clip={clip})"

    def _tensor(self, a, requires_grad: bool = True) -> Tensor:
        return Tensor(np.asarray(a, dtype=self.dtype), requires_grad=requires_grad)

    def _test_time_gate(self, kind: str):
        """The gate object whose test-time rule ``deterministic_gates``/``chain_gates_eval`` use
        (a hook: the half-threshold mutant swaps it)."""
        return make_gate(kind)

    # -- §2: the quantizer
    def quantize(self, x, beta, z2, z4, z8, z16, z32, *, signed: bool, grad_out) -> dict:
        """x_q and its STE gradients (§2.2–2.6); a gate that is exactly 0 gets gradient 0."""
        x_t = self._tensor(x)
        beta_t = self._tensor(np.reshape(beta, ()))
        z2_t = None if z2 is None else self._tensor(z2)
        gates = [None if z is None else self._tensor(np.reshape(z, ())) for z in (z4, z8, z16, z32)]
        x_q = bb_quantize(x_t, beta_t, z2_t, *gates, signed=bool(signed), clip=self.clip)
        x_q.backward(np.asarray(grad_out, dtype=self.dtype))
        out = {"x_q": _out(x_q), "grad_x": _grad(x_t), "grad_beta": _grad(beta_t),
               "grad_z2": _grad(z2_t)}
        out.update({f"grad_z{b}": _grad(t) for b, t in zip((4, 8, 16, 32), gates)})
        return out

    # -- §3: gates
    def hard_concrete(self, logits, u, *, grad_out) -> dict:
        """z = clip(sigmoid((log u − log(1−u) + φ)/β)(ζ − γ) + γ, 0, 1) and dL/dφ (§3.2)."""
        phi = self._tensor(logits)
        z = HardConcrete().sample(phi, np.asarray(u, dtype=self.dtype))
        z.backward(np.asarray(grad_out, dtype=self.dtype))
        return {"z": _out(z), "grad_logits": _grad(phi)}

    def gumbel_softmax(self, logits, u, *, temperature: float, straight_through: bool,
                       grad_out) -> dict:
        """Binary-concrete sample (optionally straight-through) and dL/dφ (§3.7)."""
        phi = self._tensor(logits)
        gate = make_gate("gumbel_softmax", temperature=float(temperature),
                         straight_through=bool(straight_through))
        z = gate.sample(phi, np.asarray(u, dtype=self.dtype))
        z.backward(np.asarray(grad_out, dtype=self.dtype))
        return {"z": _out(z), "grad_logits": _grad(phi)}

    def prob_nonzero(self, logits, *, gate: str) -> np.ndarray:
        """π(φ) = sigmoid(φ + 1.598597) (hard concrete, §3.3) or sigmoid(φ) (Gumbel, §3.7)."""
        return _out(make_gate(gate).prob_nonzero(self._tensor(logits, False)))

    def deterministic_gates(self, logits, *, gate: str) -> np.ndarray:
        """Test-time 0/1 gates: 1[P(z = 0) < 0.34] (§3.4) or 1[φ > 0] (§3.7)."""
        return _out(self._test_time_gate(gate).deterministic(np.asarray(logits, dtype=self.dtype)))

    def chain_gates_eval(self, chain_logits, *, hard_cut: bool) -> np.ndarray:
        """Test-time (z4, z8, z16, z32): the chain stops at the first 0 gate (§3.4–3.5)."""
        gates = chain_gates(self._test_time_gate("hard_concrete"),
                            self._tensor(chain_logits, False), None, training=False,
                            hard_cut=bool(hard_cut))
        return np.array([0.0 if z is None else float(z) for z in gates])

    # -- §4: the regularizer
    def regularizer(self, prune_logits, chain_logits, mac_weight, *, prior: str,
                    reg_type: str) -> dict:
        """R_t of §4.3 (``"autoregressive"``) or the independent ablation, and dR/dφ."""
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}; got {prior!r}")
        gate = HardConcrete()
        chain = self._tensor(chain_logits)
        prune = None if prune_logits is None else self._tensor(prune_logits)
        fn = _PRIOR_FUNCTIONS[prior]
        value = fn(None if prune is None else gate.prob_nonzero(prune), gate.prob_nonzero(chain),
                   float(mac_weight), reg_type=reg_type)
        value.backward()
        return {"value": _out(value), "grad_prune_logits": _grad(prune),
                "grad_chain_logits": _grad(chain)}

    # -- §5: BOPs
    def relative_bops(self, model: str, width: float, gates: dict) -> float:
        """Deterministic relative BOPs in percent (§5) from test-time 0/1 gates."""
        layers = bops_layer_names(model, float(width))
        expected = {f"{n}.weight_quantizer" for n, _ in layers}
        expected |= {f"{n}.act_quantizer" for n, _ in layers[:-1]}
        if set(gates) != expected:
            raise ValueError(f"gates must name every quantizer of {model}: missing "
                             f"{sorted(expected - set(gates))}, unexpected "
                             f"{sorted(set(gates) - expected)}")
        costs, prev = [], None
        for name, macs in layers:
            w = gates[f"{name}.weight_quantizer"]
            a_bits = bops.INPUT_BITS if prev is None else gates[f"{prev}.act_quantizer"]["chain"]
            z2_in = None if prev is None else gates[f"{prev}.weight_quantizer"].get("z2")
            costs.append(bops.deterministic_layer_cost(name, macs, w["chain"], a_bits,
                                                       w.get("z2"), z2_in))
            prev = name
        return float(bops.relative_bops(costs))

    # -- §7.1: one LeNet-5 training step, and K of them
    def _lenet5(self, params: dict):
        """The LeNet-5 of the MNIST recipe with ``params`` loaded, in training mode (a hook:
        the swapped-MACs mutant changes its BOP weights)."""
        model = lenet5(BBConfig(chain_init="mnist", clip=self.clip), dtype=self.dtype)
        model.load_state_dict(params, strict=True)
        model.train()
        return model

    def _loss(self, model, logits, y, mu: float):
        """Mean cross-entropy + μ·Σ_t R_t (§4.3: μ multiplies the regularizer once per batch;
        a hook for the per-example mutant)."""
        return ops.cross_entropy(logits, np.asarray(y, dtype=np.int64)) + \
            float(mu) * model.regularizer()

    def _optimizer(self, groups: list, **hyper):
        """Adam on the three parameter groups (§7.3; a hook for the epsilon-placement mutant)."""
        return Adam(groups, **hyper)

    def lenet5_step(self, params: dict, x, y, noise: dict, *, mu: float) -> dict:
        """Mean CE + μ·Σ_t R_t of LeNet-5 in training mode with the given gate noise, and its
        gradient with respect to every float parameter (§7.1, §4.3)."""
        model = self._lenet5(params)
        logits = model(Tensor(np.asarray(x, dtype=self.dtype)), noise=noise)
        loss = self._loss(model, logits, y, mu)
        loss.backward()
        grads = {name: _grad(p) for name, p in model.named_parameters()}
        return {"logits": _out(logits), "loss": _out(loss), "grads": grads}

    def lenet5_train(self, params: dict, x, y, noise: dict, *, mu: float, lr: float,
                     beta1: float, beta2: float, eps: float) -> dict:
        """K training steps of LeNet-5 under the MNIST recipe (§7.3) on the given data and noise.

        Step k (0-based) takes the batch ``x[k]``, ``y[k]`` and the gate noise ``noise[q][key][k]``
        of every quantizer q, computes mean CE + μ·Σ_t R_t, and updates the three parameter groups
        (weights and biases, gate logits, ranges) with one Adam each (PyTorch ≥ 1.5's update;
        gradients zeroed in place, as PyTorch 1.x does).  Returns ``losses`` (K,), the loss of
        every step before its update, and ``params``, every float parameter after the K updates.
        """
        x = np.asarray(x, dtype=self.dtype)
        model = self._lenet5(params)
        groups = [{"params": ps, "name": name} for name, ps in model.parameter_groups().items()]
        optimizer = self._optimizer(groups, lr=float(lr), betas=(float(beta1), float(beta2)),
                                    eps=float(eps))
        losses = []
        for k in range(x.shape[0]):
            optimizer.zero_grad()
            step_noise = {q: {key: u[k] for key, u in parts.items()} for q, parts in noise.items()}
            loss = self._loss(model, model(Tensor(x[k]), noise=step_noise), y[k], mu)
            loss.backward()
            losses.append(float(loss.data))
            optimizer.step()
        return {"losses": np.array(losses),
                "params": {name: _out(p) for name, p in model.named_parameters()}}


_PRIOR_FUNCTIONS = {"autoregressive": prior.bop_regularizer,
                    "independent": prior.independent_regularizer}

#: The float64 reference: the suite's expected values come from this instance.
adapter = ReferenceAdapter()

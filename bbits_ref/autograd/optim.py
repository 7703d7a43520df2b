"""Optimizers (SGD, Adam) and the weights' learning-rate schedule (docs/method.md §7.3).

Modelled on ``torch.optim`` so that a run here and a PyTorch run can be compared step by step:

* parameters come in *groups* (§7.3 trains weights, gate logits and ranges with separate
  learning rates and only the weights follow the schedule); each group is a dict with
  ``"params"`` and its own options, and records ``"initial_lr"``;
* ``step()`` changes ``p.data`` in place, outside the autograd graph, and skips parameters whose
  ``grad`` is ``None`` (never used in a forward pass);
* the arithmetic follows PyTorch's order of operations, and float32 stays float32: every
  hyper-parameter is a Python float, which NumPy casts to the array's dtype (a ``np.float64``
  scalar would silently promote the update to float64).  It is not bit-for-bit PyTorch on a CPU:
  torch fuses ``a + α·b`` into one FMA and its float32 ``sqrt`` is not always correctly rounded,
  so the two differ by about one ulp per step (``tests/test_optim.py`` measures it);
* ``state_dict()`` is a flat ``dict[str, np.ndarray]`` that fits in a ``.npz`` checkpoint
  (no callables, no pickles).

A per-group ``"lr_lambda"`` (epoch -> factor) is PyTorch's ``LambdaLR``: :meth:`Optimizer.schedule`
sets ``lr = initial_lr * lr_lambda(epoch)``.  Notebook: ``notebooks/06_lenet5_mnist.ipynb``.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np

from bbits_ref.autograd.nn import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "linear_decay_last_third"]

# Group keys that are not numeric hyper-parameters.
_SPECIAL_KEYS = ("params", "name", "lr_lambda", "initial_lr")


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, the schedule hook and flat state dicts.

    Parameters
    ----------
    params_or_groups : iterable of Parameter, or list of dicts
        Either the parameters (one group), or groups such as
        ``[{"params": weights, "name": "weights", "lr_lambda": linear_decay_last_third(100)},
        {"params": gate_logits, "name": "gates"}]``.  A group's missing options come from
        ``defaults``; ``"lr_lambda"`` (optional) is its schedule, see :meth:`schedule`.
    defaults : dict
        The subclass's hyper-parameters (``lr`` and the rest).

    Subclasses implement :meth:`_update` (one parameter) and name their per-parameter buffers
    in ``_buffers``.
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self, params_or_groups, defaults: dict) -> None:
        if isinstance(params_or_groups, (Parameter, dict)):
            params_or_groups = [params_or_groups]
        try:
            items = list(params_or_groups)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__} expects an iterable of Parameters or a list "
                            f"of group dicts; got {type(params_or_groups).__name__}") from exc
        if not items:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass "
                             "model.parameters() (create lazy parameters before the optimizer)")
        if all(isinstance(g, dict) for g in items):
            groups = items
        elif any(isinstance(g, dict) for g in items):
            raise TypeError("pass either Parameters or group dicts, not a mixture of both")
        else:
            groups = [{"params": items}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}      # id(parameter) -> its buffers (and Adam's step)
        seen: dict[int, int] = {}
        for gi, group in enumerate(groups):
            self.param_groups.append(self._make_group(gi, group, seen))
        self.schedule(0)                      # like LambdaLR: lr = initial_lr · lr_lambda(0)

    def _make_group(self, gi: int, group: dict, seen: dict[int, int]) -> dict:
        if "params" not in group:
            raise KeyError(f"parameter group {gi} has no 'params' entry; a group looks like "
                           "{'params': [...], 'lr': 1e-3}")
        unknown = sorted(set(group) - set(self.defaults) - set(_SPECIAL_KEYS))
        if unknown:
            raise ValueError(f"parameter group {gi} has unknown options {unknown}; "
                             f"{type(self).__name__} knows {sorted(self.defaults)} and "
                             f"{list(_SPECIAL_KEYS[1:3])}")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        if not params:
            raise ValueError(f"parameter group {gi} ({group.get('name', 'unnamed')!r}) has no "
                             "parameters; leave the group out")
        for p in params:
            if not isinstance(p, Parameter):
                hint = (" (named_parameters() yields (name, Parameter) pairs; use parameters())"
                        if isinstance(p, tuple) else "")
                raise TypeError(f"parameter group {gi}: expected Parameters, got "
                                f"{type(p).__name__}{hint}")
            if id(p) in seen:
                raise ValueError(f"a parameter of shape {p.shape} appears in group {seen[id(p)]} "
                                 f"and again in group {gi}; each parameter belongs to one group")
            seen[id(p)] = gi
        lr_lambda = group.get("lr_lambda")
        if lr_lambda is not None and not callable(lr_lambda):
            raise TypeError(f"parameter group {gi}: lr_lambda must be a function epoch -> factor; "
                            f"got {lr_lambda!r}")
        out = {**self.defaults, **group, "params": params}
        self._check_hyper(out, f"parameter group {gi}")
        out.setdefault("initial_lr", out["lr"])
        return out

    def _check_hyper(self, group: dict, where: str) -> None:
        """Validate hyper-parameters and make them Python floats (see the module docstring)."""
        for key in ("lr", "initial_lr", "weight_decay", "momentum", "eps"):
            if key in group:
                value = float(group[key])
                if not value >= 0.0:       # also catches NaN
                    raise ValueError(f"{where}: {key} must be ≥ 0; got {group[key]!r}")
                group[key] = value

    # -- training loop
    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset the gradients before the next backward pass.

        By default existing gradients are filled with zeros in place, as in PyTorch 1.x (the
        official code, §9): a parameter that once had a gradient keeps being stepped (Adam
        then still moves it with its momentum).  ``set_to_none=True`` is PyTorch ≥ 2.0's default:
        parameters that miss the next backward pass are skipped by :meth:`step`.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = np.zeros_like(p.data)

    def step(self) -> None:
        """Update every parameter that has a gradient, in place and outside the graph."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = np.asarray(p.grad)
                if grad.shape != p.shape:
                    raise ValueError(f"parameter of shape {p.shape} has a gradient of shape "
                                     f"{grad.shape}; the gradient must have the parameter's shape")
                self._update(p, grad.astype(p.dtype, copy=False), group,
                             self.state.setdefault(id(p), {}))

    def _update(self, p: Parameter, grad: np.ndarray, group: dict, state: dict) -> None:
        raise NotImplementedError

    def schedule(self, epoch: int) -> None:
        """Set ``lr = initial_lr · lr_lambda(epoch)`` in every group that has an ``lr_lambda``.

        ``epoch`` is the number of finished epochs, as for PyTorch's ``LambdaLR`` stepped once
        per epoch: call ``schedule(k - 1)`` (or ``schedule(k)`` after epoch k ends) so that
        training epoch k (1-based) runs with ``lr_lambda(k - 1)``.  Groups without a lambda keep
        their lr.
        """
        for gi, group in enumerate(self.param_groups):
            if group.get("lr_lambda") is not None:
                factor = float(group["lr_lambda"](epoch))
                if not factor >= 0.0:
                    raise ValueError(f"parameter group {gi}: lr_lambda({epoch}) = {factor}; a "
                                     "learning-rate factor must be ≥ 0")
                group["lr"] = group["initial_lr"] * factor

    # -- checkpoints
    def _hyper_keys(self) -> list[str]:
        return ["lr", "initial_lr"] + [k for k in self.defaults if k != "lr"]

    def state_dict(self) -> dict[str, np.ndarray]:
        """A flat dict of arrays: ``"group0.lr"``, ``"group0.param3.exp_avg"``, ...

        Per group: its size, name (if any), lr, initial_lr and hyper-parameters.  Per parameter
        (``paramJ`` is its position in the group): the buffers of :attr:`_buffers`, present once
        the parameter has been stepped.  The ``lr_lambda`` is code and is not saved; the saved
        lr already holds its latest value.
        """
        out: dict[str, np.ndarray] = {}
        for gi, group in enumerate(self.param_groups):
            pre = f"group{gi}."
            out[pre + "num_params"] = np.array(len(group["params"]), dtype=np.int64)
            if group.get("name") is not None:
                out[pre + "name"] = np.array(str(group["name"]))
            for key in self._hyper_keys():
                out[pre + key] = np.array(group[key])
            for pj, p in enumerate(group["params"]):
                for key, value in self.state.get(id(p), {}).items():
                    out[f"{pre}param{pj}.{key}"] = np.array(value, copy=True)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; the groups must match in number, size and shapes.

        Checks everything before changing anything, so a failed load leaves the optimizer as it was.
        """
        state = {k: np.asarray(v) for k, v in state.items()}
        n_saved = len({m.group(1) for k in state if (m := re.match(r"group(\d+)\.", k))})
        if n_saved != len(self.param_groups):
            raise ValueError(f"load_state_dict: the checkpoint has {n_saved} parameter groups, "
                             f"this optimizer {len(self.param_groups)}; build the optimizer with "
                             "the same groups as the run that saved it")
        used: set[str] = set()

        def take(key: str) -> np.ndarray:
            if key not in state:
                raise KeyError(f"load_state_dict: missing key {key!r}; is this a "
                               f"{type(self).__name__} checkpoint?")
            used.add(key)
            return state[key]

        new_groups, new_state = [], {}
        for gi, group in enumerate(self.param_groups):
            pre = f"group{gi}."
            n = int(take(pre + "num_params"))
            if n != len(group["params"]):
                raise ValueError(f"load_state_dict: group {gi} had {n} parameters when saved, it "
                                 f"has {len(group['params'])} now")
            if pre + "name" in state and group.get("name") is not None:
                saved_name = str(take(pre + "name"))
                if saved_name != str(group["name"]):
                    raise ValueError(f"load_state_dict: group {gi} is named {group['name']!r} but "
                                     f"the checkpoint's group {gi} is {saved_name!r}")
            used.add(pre + "name")
            hyper = {key: take(pre + key) for key in self._hyper_keys()}
            hyper = {k: (v.item() if v.ndim == 0 else tuple(v.tolist())) for k, v in hyper.items()}
            updated = {**group, **hyper}
            self._check_hyper(updated, f"load_state_dict, group {gi}")
            new_groups.append(updated)
            for pj, p in enumerate(group["params"]):
                keys = [f"{pre}param{pj}.{b}" for b in self._buffers]
                present = [k in state for k in keys]
                if not any(present):
                    continue                                  # never stepped when saved
                buffers = {}
                for key, b in zip(keys, self._buffers):
                    value = take(key)
                    if b != "step" and value.shape != p.shape:
                        raise ValueError(f"load_state_dict: {key!r} has shape {value.shape}, the "
                                         f"parameter has shape {p.shape}")
                    buffers[b] = int(value) if b == "step" else value.astype(p.dtype, copy=True)
                new_state[id(p)] = buffers
        unexpected = sorted(set(state) - used)
        if unexpected:
            raise KeyError(f"load_state_dict: unexpected keys {unexpected[:5]}"
                           f"{' ...' if len(unexpected) > 5 else ''}; the checkpoint does not "
                           f"belong to this {type(self).__name__}")
        self.param_groups, self.state = new_groups, new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for gi, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={g[k]}" for k in self._hyper_keys())
            sched = ", scheduled" if g.get("lr_lambda") is not None else ""
            lines.append(f"  group {gi} {g.get('name', '')!r}: {len(g['params'])} params, "
                         f"{opts}{sched}")
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's update:

    g ← g + wd·p;  buf ← momentum·buf + g (buf = g at the first step);
    g ← g + momentum·buf (Nesterov) or buf;  p ← p − lr·g.
    """

    _buffers = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=bool(nesterov),
                                      weight_decay=weight_decay))
        for gi, g in enumerate(self.param_groups):
            if g["nesterov"] and g["momentum"] == 0.0:
                raise ValueError(f"parameter group {gi}: nesterov=True needs momentum > 0")

    def _update(self, p, grad, group, state) -> None:
        if group["weight_decay"] != 0.0:
            grad = grad + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba), with PyTorch's order of operations (§7.3: lr 1e-3, wd 0).

    g ← g + wd·p;  m ← β₁·m + (1−β₁)·g;  v ← β₂·v + (1−β₂)·g·g;  t ← t + 1;
    denom = √v / √(1−β₂ᵗ) + eps;  p ← p − (lr / (1−β₁ᵗ))·m / denom.

    The bias corrections are Python floats (float64), the rest is in the parameter's dtype.  The
    step counter t is per parameter, as in PyTorch: a parameter skipped for lack of a gradient
    does not advance it.

    ``eps_placement="before_bias_correction"`` gives PyTorch 1.1's formula, which the official
    runs used: denom = √v + eps, p ← p − (lr·√(1−β₂ᵗ) / (1−β₁ᵗ))·m / denom.  The two differ only
    where √v is comparable to eps (docs/method.md §7.3).
    """

    _buffers = ("step", "exp_avg", "exp_avg_sq")
    EPS_PLACEMENTS = ("after_bias_correction", "before_bias_correction")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 eps_placement: str = "after_bias_correction") -> None:
        if eps_placement not in self.EPS_PLACEMENTS:
            raise ValueError(f"eps_placement must be one of {self.EPS_PLACEMENTS}; got "
                             f"{eps_placement!r}")
        self.eps_placement = eps_placement
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_hyper(self, group: dict, where: str) -> None:
        super()._check_hyper(group, where)
        betas = group["betas"]
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"{where}: betas must be two numbers in [0, 1); got {betas!r}")
        group["betas"] = (float(betas[0]), float(betas[1]))

    def _update(self, p, grad, group, state) -> None:
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0.0:
            grad = grad + group["weight_decay"] * p.data
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m *= beta1
        m += (1.0 - beta1) * grad
        v *= beta2
        v += (1.0 - beta2) * grad * grad
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        if self.eps_placement == "after_bias_correction":       # PyTorch >= 1.5
            step_size = group["lr"] / bias_correction1
            denom = np.sqrt(v) / math.sqrt(bias_correction2) + group["eps"]
        else:                                                    # PyTorch 1.1
            step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
            denom = np.sqrt(v) + group["eps"]
        p.data -= step_size * m / denom


def linear_decay_last_third(epochs: int) -> Callable[[int], float]:
    """The weights' learning-rate factor of the official recipe (§7.3, checked in §11.6).

    With E = ``epochs`` and e = the number of *finished* epochs (PyTorch's ``LambdaLR`` stepped
    once per epoch)::

        factor(e) = 1                                  if e ≤ ⌊2E/3⌋
                  = (E − e) / (E − ⌊2E/3⌋)             otherwise (linear decay towards 0)

    Training epoch k (1-based) runs with ``factor(k − 1)``; so the first ⌊2E/3⌋ + 1 epochs use
    the full lr.  E = 100: epochs 1–67 use 1.0, epoch 68 uses 33/34 = 0.9706, epoch 100 uses
    1/34 = 0.0294.  E = 300: epochs 1–201 use 1.0, epoch 300 uses 0.01.  ``factor(E)`` = 0 is
    the value after the last epoch.

    Use as ``{"params": weights, "lr_lambda": linear_decay_last_third(E)}`` and call
    ``optimizer.schedule(k - 1)`` before training epoch k.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}")
    total = int(epochs)
    start = 2 * total // 3        # = int(2E/3) of the official code, without float rounding

    def factor(finished_epochs: int) -> float:
        e = finished_epochs
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 0 <= e <= total:
            raise ValueError(f"linear_decay_last_third({total}): the number of finished epochs "
                             f"must be an int in [0, {total}]; got {e!r}")
        if e <= start:
            return 1.0
        return (total - int(e)) / (total - start)

    return factor

"""STAND-IN for the official straight_through.py: NOT the official code.

Written for the bbits_ref tests from the signatures listed in docs/method.md §9 and the formulas of
§2.2–2.5 and §3.2–3.3, to exercise ``bbits_ref.conformance.official.OfficialAdapter`` without a
clone of Qualcomm-AI-research/BayesianBits.  Nothing here is copied from that repository.

Like the real module (§9) it imports only torch and numpy, ``l0_sample`` draws its own
noise and moves it to the GPU unconditionally, and ``BayesianBitsQuantizer`` places its tensors
on the GPU unless the class attribute ``cuda`` is False.  ``CALLS`` counts calls, so the tests
can check what the adapter used.

``BayesianBitsQuantizer`` behaves as §9.1 describes the official one: lazy ranges (x_min, x_max
from the first tensor) and pruning logits ``gamma_2`` (6.0 per output channel), scalar logits
``gamma_4`` … ``gamma_32`` of shape (1,), and in training mode ``get_gates()`` looks up the
module-level ``l0_sample`` at call time and calls it for gamma_2 (with pruning), then gamma_4,
gamma_8, gamma_16, gamma_32, stopping before the first logit ≤ −2 (§3.5).  In eval mode it uses
the test-time gates (§3.4).  ``regularizer()`` is R_t of §4.3 with the BOP weight that the
stand-in ``assign_macs`` sets (``mac_weight``; 1 when unset, as ``get_bops`` gives without it).
``HC_CALLS`` records the order in which ``get_gates`` asked for samples (quantizer label, gate).
"""
import numpy as np
import torch

CALLS = {"recursive_quantization": 0, "hc_prob_pos": 0, "l0_sample": 0, "round": 0}
HC_CALLS = []


class RoundStraightThrough(torch.autograd.Function):
    """Round half to even; identity gradient (straight-through estimator, §2.6)."""

    @staticmethod
    def forward(ctx, x):
        CALLS["round"] += 1
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


round_ste_func = RoundStraightThrough.apply


def hc_prob_pos(p, beta=2 / 3, zeta=1.1, gamma=-0.1):
    """P(z != 0) = sigmoid(phi - beta*log(-gamma/zeta)) (§3.3)."""
    CALLS["hc_prob_pos"] += 1
    return torch.sigmoid(p - beta * np.log(-gamma / zeta))


def l0_sample(log_alpha, beta, zeta, gamma, N=1):
    """Hard-concrete sample from its own noise, on the GPU whatever the input (§9)."""
    CALLS["l0_sample"] += 1
    u = torch.rand(log_alpha.size(0)).cuda()
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / beta)
    return torch.clamp(s * (zeta - gamma) + gamma, 0, 1)


def recursive_quantization(x, s2, s4, s8, s16, s32, z2, z4, z8, z16, z32, round_fn):
    """Gated residual decomposition of an already clipped x (§2.4-2.5).

    Residuals are formed left to right; the chain stops at a gate that is None or exactly 0.
    """
    CALLS["recursive_quantization"] += 1
    approx = s2 * round_fn(x / s2)
    parts = [approx]
    residual = x - approx
    for gate, step in zip((z4, z8, z16, z32), (s4, s8, s16, s32)):
        if gate is None or bool(gate == 0):
            break
        if len(parts) > 1:
            residual = residual - parts[-1]
        parts.append(step * round_fn(residual / step))
    out = parts[-1]
    gates = (z4, z8, z16, z32)
    for level in range(len(parts) - 2, -1, -1):
        out = parts[level] + gates[level] * out
    return out if z2 is None else z2 * out


class BayesianBitsQuantizer(torch.nn.Module):
    """The quantizer as a module (§2, §3, §4.3, §9.1); construction needs cuda = False on a CPU."""

    cuda = True
    hc_beta = 2 / 3
    hc_gamma = -0.1
    hc_zeta = 1.1
    hc_thres = 0.34
    eps = 1e-7

    def __init__(self, n_bits=16, include_pruning=False, gamma_4_init=6.0, gamma_8_init=6.0,
                 gamma_16_init=6.0, gamma_32_init=6.0, label=""):
        super().__init__()
        device = "cuda" if type(self).cuda else "cpu"
        self.label = label
        self.include_pruning = include_pruning
        self.mac_weight = None
        self.initialized = False
        self.x_min = torch.nn.Parameter(torch.tensor([-10.0], device=device))
        self.x_max = torch.nn.Parameter(torch.tensor([10.0], device=device))
        self.gamma_2 = None
        for bits, init in ((4, gamma_4_init), (8, gamma_8_init), (16, gamma_16_init),
                           (32, gamma_32_init)):
            setattr(self, f"gamma_{bits}",
                    torch.nn.Parameter(torch.tensor([float(init)], device=device)))

    def init_xminmax(self, x):
        with torch.no_grad():
            self.x_min.data = torch.clamp(x.min(), max=0.0).reshape(1).to(self.x_max.dtype)
            self.x_max.data = torch.clamp(x.max(), min=0.0).reshape(1).to(self.x_max.dtype)
        if float(self.x_min) == 0.0:
            self.x_min.requires_grad_(False)
        if self.include_pruning:
            self.gamma_2 = torch.nn.Parameter(torch.full((x.shape[0],), 6.0, dtype=x.dtype,
                                                         device=x.device))
        self.initialized = True

    def signed(self):
        return bool(self.x_min.detach() < 0)

    def get_gates(self):
        names = (["gamma_2"] if self.gamma_2 is not None else []) + [
            "gamma_4", "gamma_8", "gamma_16", "gamma_32"]
        gates = {"gamma_2": None, "gamma_4": None, "gamma_8": None, "gamma_16": None,
                 "gamma_32": None}
        for name in names:
            logits = getattr(self, name)
            if name != "gamma_2" and bool((logits <= -2).any()):
                break                                          # the hard cut, §3.5
            if self.training:
                HC_CALLS.append((self.label, name))
                gates[name] = l0_sample(logits, self.hc_beta, self.hc_zeta, self.hc_gamma)
            else:
                p_zero = 1 - hc_prob_pos(logits.detach(), self.hc_beta, self.hc_zeta,
                                         self.hc_gamma)
                gates[name] = (p_zero < self.hc_thres).to(logits.dtype)
                if name != "gamma_2" and not bool(gates[name].all()):
                    break
        return gates

    def forward(self, x):
        if not self.initialized:
            self.init_xminmax(x.detach())
        hi = self.x_max * (1 - self.eps)
        lo = -hi if self.signed() else torch.zeros_like(hi)
        relu = torch.nn.functional.relu
        x_c = hi - relu(hi - lo - relu(x - lo))
        s2 = (self.x_max - (-self.x_max if self.signed() else 0.0)) / 3
        steps = [s2]
        for divisor in (5, 17, 257, 65537):
            steps.append(steps[-1] / divisor)
        g = self.get_gates()
        z2 = g["gamma_2"]
        if z2 is not None:
            z2 = z2.reshape((-1,) + (1,) * (x.dim() - 1))
        round_fn = round_ste_func if self.training else torch.round
        return recursive_quantization(x_c, *steps, z2, g["gamma_4"], g["gamma_8"],
                                      g["gamma_16"], g["gamma_32"], round_fn)

    def get_bops(self, bits):
        return 1.0 if self.mac_weight is None else self.mac_weight * bits

    def regularizer(self):
        probs = [hc_prob_pos(getattr(self, f"gamma_{b}")) for b in (4, 8, 16, 32)]
        chain, on = [], None
        for p in probs:
            on = p if on is None else on * p
            chain.append(on)
        if self.gamma_2 is None:
            return 1 + sum(self.get_bops(b) * c for b, c in zip((4, 8, 16, 32), chain)).sum()
        pi2 = hc_prob_pos(self.gamma_2)
        per_channel = self.get_bops(2) * pi2
        for b, c in zip((4, 8, 16, 32), chain):
            per_channel = per_channel + self.get_bops(b) * pi2 * c
        return per_channel.mean()

    def bit_width(self):
        """Deterministic bit width of the chain (eval gates), §5."""
        n = 1
        for b in (4, 8, 16, 32):
            phi = getattr(self, f"gamma_{b}")
            if bool(phi <= -2) or not bool(1 - hc_prob_pos(phi.detach()) < self.hc_thres):
                break
            n += 1
        return 2 ** n

    def keep_ratio(self):
        if self.gamma_2 is None:
            return 1.0
        return float((1 - hc_prob_pos(self.gamma_2.detach()) < self.hc_thres).double().mean())

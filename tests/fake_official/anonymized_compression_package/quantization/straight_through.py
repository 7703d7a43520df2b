"""STAND-IN for the official straight_through.py: NOT the official code.

Written for the bbits_ref tests from the signatures listed in docs/method.md §9 and the formulas of
§2.2–2.5 and §3.2–3.3, to exercise ``bbits_ref.conformance.official.OfficialAdapter`` without a
clone of Qualcomm-AI-research/BayesianBits.  Nothing here is copied from that repository.

Like the real module (§9) it imports only torch and numpy, ``l0_sample`` draws its own
noise and moves it to the GPU unconditionally, and ``BayesianBitsQuantizer`` places its tensors
on the GPU unless the class attribute ``cuda`` is False.  ``CALLS`` counts calls, so the tests
can check what the adapter used.
"""
import numpy as np
import torch

CALLS = {"recursive_quantization": 0, "hc_prob_pos": 0, "l0_sample": 0, "round": 0}


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


def l0_sample(log_alpha, beta, zeta, gamma):
    """Hard-concrete sample from its own noise, on the GPU whatever the input (§9)."""
    CALLS["l0_sample"] += 1
    u = torch.rand(log_alpha.shape).cuda()
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
    """A shell with the class constants of §10; construction needs cuda = False on a CPU."""

    cuda = True
    hc_beta = 2 / 3
    hc_gamma = -0.1
    hc_zeta = 1.1
    hc_thres = 0.34

    def __init__(self, n_bits=16):
        super().__init__()
        device = "cuda" if type(self).cuda else "cpu"
        self.x_max = torch.nn.Parameter(torch.tensor(10.0, device=device))

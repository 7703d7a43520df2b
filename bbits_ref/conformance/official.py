"""An adapter for the official Bayesian Bits code (Qualcomm-AI-research/BayesianBits;
docs/method.md §9).

It runs the conformance suite against the official quantizer functions and the official LeNet-5,
on a CPU, so that the reference (and through it every implementation that passes the suite) is
tied to the code the paper's numbers came from.  Of the 77 cases of suite 1.1 it runs 63 (the
quantizer, gates, regularizer, the LeNet-5 BOP counts, the LeNet-5 step and the two 20-step
training trajectories) and skips 14: the Gumbel-softmax cases (not in the official code) and the
VGG-7 BOP counts.  No official code is copied into bbits_ref: the adapter imports it
from a local clone that you name.

How to run it against a local clone
-----------------------------------
::

    git clone https://github.com/Qualcomm-AI-research/BayesianBits ~/src/BayesianBits
    pip install 'bbits_ref[torch]'                    # the official code needs PyTorch
    bbits-ref conformance export /tmp/bb-suite         # or: python -m bbits_ref.conformance export …
    BBITS_OFFICIAL_REPO=~/src/BayesianBits \\
        bbits-ref conformance check /tmp/bb-suite --impl bbits_ref.conformance.official:adapter

or from Python::

    from bbits_ref.conformance import check
    from bbits_ref.conformance.official import OfficialAdapter
    print(check("/tmp/bb-suite", OfficialAdapter("~/src/BayesianBits")))   # in a child process

The directory is the root of the clone: the one that contains
``anonymized_compression_package/quantization/straight_through.py``.  For the quantizer functions
only that file is loaded (by path, with the clone on ``sys.path`` while it runs), into a private
module.  The model cases load ``benchmarks/image_net/models/mnist_models.py``,
``gated_mixed_precision.py`` and ``mixed_precision_utils.py`` (and through them the package), the
first time one of them runs.  The official code targets Python 3.5 and PyTorch 1.1;
``straight_through.py`` imports only torch and numpy.

What comes from the official code, and what is transcribed from docs/method.md
-------------------------------------------------------------------------------
* ``quantize``: the official ``recursive_quantization`` with its straight-through rounding
  ``round_ste_func`` (or ``RoundStraightThrough.apply``), on a tensor clipped here exactly as
  ``pact_clip`` does it (``hi − relu(hi − lo − relu(x − lo))``, §2.2, §2.3a) with the chained
  step sizes of ``get_scales`` (s2 = (β − α)/3, s_{2b} = s_b/(2^b + 1)).  Gradients by torch
  autograd through the official function.
* ``prob_nonzero`` (hard concrete): the official ``hc_prob_pos``.
* ``deterministic_gates``, ``chain_gates_eval``: 1[1 − hc_prob_pos(φ) < hc_thres], the chain
  visited z4 → z32 with the φ ≤ −2 hard cut (§3.4–3.5), built on the official
  ``hc_prob_pos`` and the class constants of ``BayesianBitsQuantizer`` (``hc_thres`` etc.) when
  the class defines them, else the documented values (see :attr:`OfficialAdapter.constants`).
* ``hard_concrete``: the documented formula (§3.2) on the suite's noise, with the official
  constants.  ``l0_sample`` draws its own noise and moves it to the GPU unconditionally, so it is
  never called: the adapter replaces it, in its private copy of the module, by a function that
  raises.
* ``regularizer``: the formula of §4.3 on the official ``hc_prob_pos``.
  ``BayesianBitsQuantizer.regularizer()`` is not driven by these cases, because it reads the BOP
  weight from attributes set by the training driver (``assign_macs``) that this adapter cannot
  set without guessing their names; the LeNet-5 cases drive it through ``gate_loss``.
* ``lenet5_step``, ``lenet5_train`` and ``relative_bops`` for LeNet-5: the official
  ``LeNet5Quantized`` with the official ``gate_loss``, ``get_groups_and_macs``, ``assign_macs``
  and ``print_bitops``, fed the suite's weights, ranges, gate logits, data and gate noise
  (:mod:`bbits_ref.conformance.official_lenet5`, §9.1).  These import the model and driver
  files of the clone (``benchmarks/image_net/``) the first time one of them runs, with inert
  stand-ins for modules that are not installed (torchvision, …); every patch (CPU shims, the
  noise source) is undone after each call.  The trajectory cases use the installed
  ``torch.optim.Adam``: PyTorch ≥ 1.5 places Adam's ε as the suite expects; on PyTorch < 1.5
  (the official code's 1.1) ``lenet5_train/mnist_recipe`` fails by design.
* Not implemented (the suite reports them as skipped): ``gumbel_softmax`` and the Gumbel gate
  (not in the official code), and ``relative_bops`` for VGG-7 (§9.1 documents how to build the
  official LeNet-5 only).

On a CPU-only machine ``BayesianBitsQuantizer.cuda`` is set to False right after the import, as
§9 requires before any construction.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from bbits_ref.conformance.official_lenet5 import OfficialLeNet5, OfficialModelError

__all__ = ["OfficialAdapter", "OfficialCodeError", "OfficialModelError", "ENV_VAR",
           "MODULE_PATH"]

ENV_VAR = "BBITS_OFFICIAL_REPO"
MODULE_PATH = Path("anonymized_compression_package", "quantization", "straight_through.py")
REPO_URL = "https://github.com/Qualcomm-AI-research/BayesianBits"

#: The documented values, used when the official class does not define a constant (§10).
SPEC_CONSTANTS = {"hc_beta": 2 / 3, "hc_gamma": -0.1, "hc_zeta": 1.1, "hc_thres": 0.34}
CLIP_EPS = 1e-7                 # pact_clip: hi = (1 − ε)·β
HARD_CUT_LOGIT = -2.0           # get_gates: φ_b ≤ −2 cuts z_b and every higher gate
_STEP_DIVISORS = (5, 17, 257, 65537)


class OfficialCodeError(RuntimeError):
    """The official code (or PyTorch) cannot be found or imported."""


def _refuse_l0_sample(*args, **kwargs):
    raise RuntimeError("the conformance adapter must not call the official l0_sample: it draws "
                       "its own noise and moves it to the GPU (§9); the adapter computes "
                       "the sample from the suite's noise instead")


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise OfficialCodeError("the official-code adapter needs PyTorch: pip install "
                                "'bbits_ref[torch]' (or pip install torch)") from exc
    return torch


def _load_official_module(repo_dir: Path):
    """Load ``straight_through.py`` of the clone at ``repo_dir`` as a private module."""
    path = repo_dir / MODULE_PATH
    if not path.is_file():
        raise OfficialCodeError(
            f"{repo_dir} does not contain {MODULE_PATH}: name the root of a clone of "
            f"{REPO_URL} (git clone {REPO_URL})")
    # A private module name per clone, so two clones (or a stand-in) never collide.
    name = "_bbits_official_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(repo_dir))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise OfficialCodeError(f"importing the official {path} failed: {type(exc).__name__}: "
                                f"{exc}") from exc
    finally:
        sys.path.remove(str(repo_dir))
    for needed in ("recursive_quantization", "hc_prob_pos"):
        if not callable(getattr(module, needed, None)):
            raise OfficialCodeError(f"{path} has no function {needed}(); is it the official "
                                    f"straight_through.py of {REPO_URL}?")
    return module


class OfficialAdapter:
    """The adapter protocol on top of the official ``straight_through.py`` (module docstring).

    Parameters
    ----------
    repo_dir : the root of a local clone of the official repository.
    dtype : ``"float64"`` (default: compares bit for bit with the float64 suite) or
        ``"float32"`` (the official training precision).
    """

    def __init__(self, repo_dir, dtype: str = "float64") -> None:
        if repo_dir is None or str(repo_dir).strip() == "":
            raise OfficialCodeError(f"name the directory of a local clone of {REPO_URL}")
        repo_dir = Path(repo_dir).expanduser()
        if not repo_dir.is_dir():
            raise OfficialCodeError(f"official repository directory {repo_dir} does not exist; "
                                    f"clone it first: git clone {REPO_URL} {repo_dir}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32'; got {dtype!r}")
        self.torch = _import_torch()
        self.repo_dir = repo_dir.resolve()
        self.dtype_name = dtype
        self.module = _load_official_module(self.repo_dir)
        self.dtype = getattr(self.torch, dtype)
        quantizer_cls = getattr(self.module, "BayesianBitsQuantizer", None)
        if quantizer_cls is not None and hasattr(quantizer_cls, "cuda"):
            quantizer_cls.cuda = False          # before any construction (§9)
        self.module.l0_sample = _refuse_l0_sample
        self.round_fn = getattr(self.module, "round_ste_func", None)
        if self.round_fn is None and hasattr(self.module, "RoundStraightThrough"):
            self.round_fn = self.module.RoundStraightThrough.apply
        if self.round_fn is None:
            raise OfficialCodeError(f"{self.module.__file__} defines neither round_ste_func nor "
                                    "RoundStraightThrough")
        #: the hard-concrete constants used, and where each came from ("official" or "documented")
        self.constants = {}
        for key, value in SPEC_CONSTANTS.items():
            official = getattr(quantizer_cls, key, None)
            self.constants[key] = (float(official), "official") if isinstance(
                official, (int, float)) else (value, "documented")
        self.name = (f"official BayesianBits code at {self.repo_dir} "
                     f"(torch {self.torch.__version__}, {dtype}, CPU)")
        self._lenet5: OfficialLeNet5 | None = None

    def __reduce__(self):
        """Pickle as (clone, dtype): a child process loads the official module itself."""
        return (type(self), (str(self.repo_dir), self.dtype_name))

    @classmethod
    def from_env(cls, dtype: str = "float64") -> "OfficialAdapter":
        """The adapter for the clone named by the environment variable ``BBITS_OFFICIAL_REPO``."""
        repo = os.environ.get(ENV_VAR)
        if not repo:
            raise OfficialCodeError(f"set {ENV_VAR} to the root of a local clone of {REPO_URL} "
                                    f"(the directory that contains {MODULE_PATH.parts[0]}/)")
        return cls(repo, dtype)

    # -- helpers
    def _const(self, key: str) -> float:
        return self.constants[key][0]

    def _tensor(self, a, requires_grad: bool = False):
        return self.torch.tensor(np.asarray(a, dtype=np.float64), dtype=self.dtype,
                                 requires_grad=requires_grad)

    @staticmethod
    def _grad(t):
        if t is None:
            return None
        if t.grad is None:                      # never used: a gate that was exactly 0
            return np.zeros(tuple(t.shape))
        return t.grad.detach().numpy().astype(np.float64)

    @staticmethod
    def _np(t) -> np.ndarray:
        return t.detach().numpy().astype(np.float64)

    def _prob_nonzero(self, phi):
        return self.module.hc_prob_pos(phi)

    # -- the protocol
    def quantize(self, x, beta, z2, z4, z8, z16, z32, *, signed: bool, grad_out) -> dict:
        """pact_clip (transcribed) + the official recursive_quantization (§2.2–2.6)."""
        relu = self.torch.nn.functional.relu
        x_t = self._tensor(x, True)
        beta_t = self._tensor(float(beta), True)
        hi = beta_t * (1 - CLIP_EPS)
        lo = -hi if signed else self.torch.zeros((), dtype=self.dtype)
        x_c = hi - relu(hi - lo - relu(x_t - lo))
        alpha = -beta_t if signed else 0.0
        steps = [(beta_t - alpha) / 3]
        for divisor in _STEP_DIVISORS:
            steps.append(steps[-1] / divisor)
        z2_t = None if z2 is None else self._tensor(z2, True)
        z2_b = None if z2_t is None else z2_t.reshape((-1,) + (1,) * (x_t.dim() - 1))
        gates = [None if z is None else self._tensor(float(z), True) for z in (z4, z8, z16, z32)]
        x_q = self.module.recursive_quantization(x_c, *steps, z2_b, *gates, self.round_fn)
        x_q.backward(self._tensor(grad_out))
        out = {"x_q": self._np(x_q), "grad_x": self._grad(x_t), "grad_beta": self._grad(beta_t),
               "grad_z2": self._grad(z2_t)}
        out.update({f"grad_z{b}": self._grad(g) for b, g in zip((4, 8, 16, 32), gates)})
        return out

    def hard_concrete(self, logits, u, *, grad_out) -> dict:
        """The l0_sample formula on the given noise (§3.2), with the official constants."""
        torch = self.torch
        phi = self._tensor(logits, True)
        u_t = self._tensor(u)
        beta, gamma, zeta = (self._const(k) for k in ("hc_beta", "hc_gamma", "hc_zeta"))
        s = torch.sigmoid((torch.log(u_t) - torch.log(1 - u_t) + phi) / beta)
        z = torch.clamp(s * (zeta - gamma) + gamma, 0.0, 1.0)
        z.backward(self._tensor(grad_out))
        return {"z": self._np(z), "grad_logits": self._grad(phi)}

    def prob_nonzero(self, logits, *, gate: str):
        """The official hc_prob_pos (§3.3)."""
        self._hard_concrete_only(gate)
        return self._np(self._prob_nonzero(self._tensor(logits)))

    def deterministic_gates(self, logits, *, gate: str):
        """1[P(z = 0) < hc_thres] with P(z = 0) = 1 − hc_prob_pos(φ) (§3.4)."""
        self._hard_concrete_only(gate)
        p_zero = 1 - self._prob_nonzero(self._tensor(logits))
        return (p_zero < self._const("hc_thres")).double().numpy()

    def chain_gates_eval(self, chain_logits, *, hard_cut: bool):
        """z4 → z32 in order: a cut (φ ≤ −2) or an off gate switches every higher gate off."""
        phi = np.asarray(chain_logits, dtype=np.float64)
        on = self.deterministic_gates(phi, gate="hard_concrete")
        gates = np.zeros(4)
        for i in range(4):                      # the four gates of the chain, in order
            if (hard_cut and phi[i] <= HARD_CUT_LOGIT) or on[i] == 0:
                break
            gates[i] = 1.0
        return gates

    def regularizer(self, prune_logits, chain_logits, mac_weight, *, prior: str,
                    reg_type: str) -> dict:
        """docs/method.md §4.3 on the official hc_prob_pos: c(b) = w_t·b ("bop") or 1 ("const")."""
        if prior not in ("autoregressive", "independent"):
            raise ValueError(f"prior must be 'autoregressive' or 'independent'; got {prior!r}")
        if reg_type not in ("bop", "const"):
            raise ValueError(f"reg_type must be 'bop' or 'const'; got {reg_type!r}")
        chain = self._tensor(chain_logits, True)
        prune = None if prune_logits is None else self._tensor(prune_logits, True)
        pi = self._prob_nonzero(chain)
        w = float(mac_weight)
        cost = (lambda b: w * b) if reg_type == "bop" else (lambda b: 1.0)
        if prior == "autoregressive":
            on = [pi[0]]
            for i in range(1, 4):               # Π_{k≤b} π_k along the chain
                on.append(on[-1] * pi[i])
        else:
            on = [pi[i] for i in range(4)]
        if prune is None:
            value = 1.0 + sum(cost(b) * p for b, p in zip((4, 8, 16, 32), on))
        elif prior == "autoregressive":
            pi2 = self._prob_nonzero(prune)
            per_channel = cost(2) * pi2
            running = pi2
            for i, b in enumerate((4, 8, 16, 32)):
                running = running * pi[i]
                per_channel = per_channel + cost(b) * running
            value = per_channel.mean()
        else:
            pi2 = self._prob_nonzero(prune)
            value = cost(2) * pi2.mean() + sum(cost(b) * p for b, p in zip((4, 8, 16, 32), on))
        value.backward()
        return {"value": self._np(value), "grad_prune_logits": self._grad(prune),
                "grad_chain_logits": self._grad(chain)}

    # -- the whole official LeNet-5 (§9.1)
    def lenet5(self) -> OfficialLeNet5:
        """The driver of the official LeNet-5 (imported on first use)."""
        if self._lenet5 is None:
            self._lenet5 = OfficialLeNet5(self.repo_dir, self.torch, self.dtype)
        return self._lenet5

    def relative_bops(self, model: str, width: float, gates: dict) -> float:
        """The official ``print_bitops`` on LeNet-5 with the given test-time gates (§5)."""
        if model != "lenet5" or float(width) != 1.0:
            raise NotImplementedError("the adapter drives the official LeNet-5 only: how to "
                                      "build the official VGG-7 is not documented (§9.1)")
        return self.lenet5().relative_bops(gates)

    def lenet5_step(self, params: dict, x, y, noise: dict, *, mu: float) -> dict:
        """One training forward and backward of the official LeNet-5 (§7.1, §9.1)."""
        return self.lenet5().step(params, x, y, noise, mu)

    def lenet5_train(self, params: dict, x, y, noise: dict, *, mu: float, lr: float,
                     beta1: float, beta2: float, eps: float) -> dict:
        """K training steps of the official LeNet-5, three Adam optimizers (§7.3, §9.1)."""
        return self.lenet5().train(params, x, y, noise, mu, float(lr),
                                   (float(beta1), float(beta2)), float(eps))

    @staticmethod
    def _hard_concrete_only(gate: str) -> None:
        if gate != "hard_concrete":
            raise NotImplementedError(f"the official code has no {gate!r} gate (§3.7)")


_ADAPTERS: dict = {}


def __getattr__(name: str):
    """``adapter``: built on first use from ``BBITS_OFFICIAL_REPO`` (for ``--impl …:adapter``)."""
    if name == "adapter":
        key = os.environ.get(ENV_VAR, "")
        if key not in _ADAPTERS:
            _ADAPTERS[key] = OfficialAdapter.from_env()
        return _ADAPTERS[key]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

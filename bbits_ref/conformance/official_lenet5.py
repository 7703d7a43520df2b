"""Driving the official LeNet-5 on a CPU with given weights, data and gate noise
(docs/method.md §9.1): the model half of :class:`bbits_ref.conformance.official.OfficialAdapter`.

:class:`OfficialLeNet5` imports, from a local clone, the model class ``LeNet5Quantized``
(``benchmarks/image_net/models/mnist_models.py``) and the driver's helpers ``set_rn_q``,
``gate_loss``, ``assign_macs``, ``print_bitops`` (``benchmarks/image_net/gated_mixed_precision.py``)
and ``get_groups_and_macs`` (``benchmarks/image_net/mixed_precision_utils.py``), and runs them
as the official training driver does:

1. build ``LeNet5Quantized`` for the MNIST recipe, ``set_rn_q(model, True, True)``,
   ``model.set_full_precision_logits()``;
2. one training-mode forward pass on a small batch (it creates the lazy ranges and pruning
   logits); ``get_groups_and_macs`` and ``assign_macs`` (the BOP weights of the regularizer);
3. load the suite's values into the official parameters (names below), ``model.train()``;
4. loss = ``cross_entropy(model(x), y) + mu * gate_loss(model)``; for a trajectory, one
   ``torch.optim.Adam`` per parameter group (names with ``x_min``, ``x_max`` or ``s_2``: ranges;
   with ``gamma_``: gates; the rest: weights), as the official ``get_optimizers`` (§7.3).

Names: ``conv1`` = ``features.0``, ``conv2`` = ``features.2``, ``fc1`` = ``classifier.0``, ``fc2`` =
``classifier.1``; a reference quantizer ``<layer>.weight_quantizer`` / ``<layer>.act_quantizer``
is ``<layer>.weight_quantizer.quantizer`` / ``<layer>.activation_quantizer.quantizer``; its
``beta`` is ``x_max``, its ``gate_logits`` are ``gamma_4`` … ``gamma_32`` and its
``prune_logits`` ``gamma_2``.  ``x_min`` is set to −β for signed tensors (the forward pass never
reads it) and stays 0 for unsigned ones.

Everything patched is patched only for the duration of one adapter call and restored afterwards
(:func:`_patched`):

* the gate noise: the official quantizer looks up ``straight_through.l0_sample`` at call time, for
  ``gamma_2`` (with pruning), then ``gamma_4`` … ``gamma_32``, stopping before the first logit
  ≤ −2, quantizer by quantizer in forward order (conv1.w, conv1.a, conv2.w, conv2.a, fc1.w,
  fc1.a, fc2.w).  It is replaced by a function that takes the suite's uniforms from a queue
  built in that order and applies the documented formula (§3.2).  Each call must ask for as many
  numbers as the queue's next entry holds, for logits equal to those the entry was built for,
  and the forward pass must empty the queue; otherwise the call fails with a message naming the
  gate, so a clone that draws noise in another order is reported, not silently compared;
* the CPU: ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return their object unchanged, and
  ``Tensor.to`` / ``Module.to`` map a CUDA device to the CPU; ``BayesianBitsQuantizer.cuda`` is
  False;
* the imports: the helper modules import torchvision and the data loaders at import time; while
  they are imported, a module that cannot be found (torchvision when it is not installed, …) is
  replaced by an inert stand-in (:class:`_Stub`), the clone is on ``sys.path``, and afterwards
  the stand-ins, the clone's modules (kept by the adapter) and ``sys.path`` are restored.  The
  stand-ins used are listed in :attr:`OfficialLeNet5.stubbed`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import types
from pathlib import Path

import numpy as np

__all__ = ["OfficialLeNet5", "LAYER_NAMES", "QUANTIZER_ATTRS"]

#: reference layer name -> official module path
LAYER_NAMES = {"conv1": "features.0", "conv2": "features.2", "fc1": "classifier.0",
               "fc2": "classifier.1"}
#: reference quantizer attribute -> official attribute path under the layer
QUANTIZER_ATTRS = {"weight_quantizer": "weight_quantizer.quantizer",
                   "act_quantizer": "activation_quantizer.quantizer"}
#: the quantizers in forward order (the order in which they draw gate noise, §9.1)
QUANTIZER_ORDER = ("conv1.weight_quantizer", "conv1.act_quantizer", "conv2.weight_quantizer",
                   "conv2.act_quantizer", "fc1.weight_quantizer", "fc1.act_quantizer",
                   "fc2.weight_quantizer")
CHAIN_BITS = (4, 8, 16, 32)
HARD_CUT_LOGIT = -2.0
MODEL_MODULE = "benchmarks.image_net.models.mnist_models"
DRIVER_MODULE = "benchmarks.image_net.gated_mixed_precision"
UTILS_MODULE = "benchmarks.image_net.mixed_precision_utils"
STRAIGHT_THROUGH = "anonymized_compression_package.quantization.straight_through"
#: the constructor arguments of the MNIST recipe (§9.1)
MNIST_RECIPE = dict(method="bayesian_bits", n_bits=16, n_bits_act=16, per_channel_weights=False,
                    percentile=False, gating_method="l0", gamma_4_init=6.0, gamma_8_init=6.0,
                    gamma_16_init=-6.0, gamma_32_init=-6.0, learned_scale="range",
                    clip_input="range", checkpointing=False, include_pruning=True,
                    prune_only=False, reg_type="bop", fixed_8bit=False, fixed_48bit=False)
_NEVER_STUB = ("torch", "numpy", "anonymized_compression_package", "benchmarks", "bbits_ref")


class OfficialModelError(RuntimeError):
    """The official model files cannot be imported or do not behave as §9.1 describes."""


# --------------------------------------------------------------------------- import shims

class _Stub(types.ModuleType):
    """An inert stand-in for a module the official driver imports but never uses here: every
    attribute is another stand-in, which can be called, subclassed and iterated (empty)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__ = []                       # a package: submodules resolve to stand-ins

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _Stub(f"{self.__name__}.{attr}")

    def __call__(self, *args, **kwargs):
        return _Stub(f"{self.__name__}()")

    def __mro_entries__(self, bases):
        return (object,)

    def __iter__(self):
        return iter(())


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: answers only for modules no other finder can find."""

    def __init__(self) -> None:
        self.stubbed: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _NEVER_STUB:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        self.stubbed.append(spec.name)
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def _inside(module, repo_dir: Path) -> bool:
    """True for a module loaded from a file (or a namespace package) inside the clone."""
    try:
        paths = [getattr(module, "__file__", None)] + list(getattr(module, "__path__", None) or [])
        return any(p and Path(p).resolve().is_relative_to(repo_dir.resolve()) for p in paths)
    except Exception:                            # an odd module object: not the clone's
        return False


def _import_official(repo_dir: Path) -> tuple[dict, list]:
    """Import the model and driver modules of the clone; returns ({name: module}, stubbed)."""
    before = dict(sys.modules)
    finder = _StubFinder()
    added_paths = [str(repo_dir), str(repo_dir / "benchmarks" / "image_net")]
    sys.path[:0] = added_paths
    sys.meta_path.append(finder)
    modules = {}
    try:
        for name in (MODEL_MODULE, UTILS_MODULE, DRIVER_MODULE):
            try:
                modules[name] = importlib.import_module(name)
            except Exception as exc:
                raise OfficialModelError(
                    f"importing {name} from {repo_dir} failed: {type(exc).__name__}: {exc}.  "
                    "The clone must hold benchmarks/image_net/ with mnist_models.py, "
                    "gated_mixed_precision.py and mixed_precision_utils.py (§9.1)") from exc
        st = sys.modules.get(STRAIGHT_THROUGH)
        if st is None or not inspect.isclass(getattr(st, "BayesianBitsQuantizer", None)):
            raise OfficialModelError(f"the official model files of {repo_dir} did not load "
                                     f"{STRAIGHT_THROUGH} with its BayesianBitsQuantizer (§9)")
        modules["straight_through"] = st
    finally:
        sys.meta_path.remove(finder)
        # the clone's modules and the stand-ins leave sys.modules (the adapter keeps its own
        # references); anything else imported meanwhile (a torch submodule) stays
        stubbed = set(finder.stubbed)
        leaving = [n for n in list(sys.modules) if n not in before
                   and (n in stubbed or _inside(sys.modules[n], repo_dir))]
        for name in leaving:                      # decided first: a namespace package needs
            del sys.modules[name]                 # its parent while its path is computed
        sys.modules.update(before)
        for p in added_paths:                     # after: namespace paths come from sys.path
            sys.path.remove(p)
    for module, names in ((modules[DRIVER_MODULE], ("set_rn_q", "gate_loss", "assign_macs",
                                                    "print_bitops")),
                          (modules[UTILS_MODULE], ("get_groups_and_macs",))):
        for fn in names:
            if not inspect.isfunction(getattr(module, fn, None)):
                raise OfficialModelError(f"{module.__name__} of {repo_dir} has no function "
                                         f"{fn}() (§9.1); is it the official repository?")
    return modules, sorted(set(finder.stubbed))


# --------------------------------------------------------------------------- patches

class _NoiseQueue:
    """The suite's uniforms in the order the official quantizers ask for them (§9.1)."""

    def __init__(self, torch) -> None:
        self.torch = torch
        self.entries: list = []             # (label, logits it is for, uniforms)
        self.free_rng: np.random.Generator | None = None

    def push(self, label: str, logits, u) -> None:
        self.entries.append((label, np.asarray(logits, dtype=np.float64).ravel(),
                             np.asarray(u, dtype=np.float64).ravel()))

    def sample(self, log_alpha, beta, zeta, gamma, N=1):
        """The replacement of ``straight_through.l0_sample``: the §3.2 formula on queued noise."""
        torch = self.torch
        n = log_alpha.size(0)
        if self.free_rng is not None:          # initialisation pass: any noise will do
            u = self.free_rng.uniform(1e-6, 1 - 1e-6, n)
        else:
            if not self.entries:
                raise OfficialModelError("the official model asked for more gate samples than "
                                         "the documented order (§9.1) gives")
            label, logits, u = self.entries.pop(0)
            got = log_alpha.detach().cpu().double().numpy().ravel()
            if u.size != n or not np.array_equal(got, logits):
                raise OfficialModelError(
                    f"the official model asked for {n} gate samples for logits {got[:4]}…; by "
                    f"the documented order (§9.1) the next ones are for {label} ({u.size} "
                    f"samples, logits {logits[:4]}…)")
        u = torch.as_tensor(u, dtype=log_alpha.dtype)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / beta)
        return torch.clamp(s * (zeta - gamma) + gamma, 0.0, 1.0)


def _cpu_device(torch, value):
    if isinstance(value, str) and value.startswith("cuda"):
        return "cpu"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    return value


@contextlib.contextmanager
def _patched(torch, straight_through, queue: _NoiseQueue):
    """CPU shims and the noise queue, for one call; everything is restored afterwards."""
    saved = {(torch.Tensor, "cuda"): torch.Tensor.cuda, (torch.nn.Module, "cuda"):
             torch.nn.Module.cuda, (torch.Tensor, "to"): torch.Tensor.to,
             (torch.nn.Module, "to"): torch.nn.Module.to}
    tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

    def to_cpu(original):
        def to(self, *args, **kwargs):
            args = tuple(_cpu_device(torch, a) for a in args)
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(torch, kwargs["device"])
            return original(self, *args, **kwargs)
        return to

    had_l0 = hasattr(straight_through, "l0_sample")
    old_l0 = getattr(straight_through, "l0_sample", None)
    quantizer_cls = straight_through.BayesianBitsQuantizer
    old_cuda = quantizer_cls.__dict__.get("cuda", _MISSING)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.to = to_cpu(tensor_to)
    torch.nn.Module.to = to_cpu(module_to)
    quantizer_cls.cuda = False
    straight_through.l0_sample = queue.sample
    try:
        yield
    finally:
        for (owner, attr), value in saved.items():
            setattr(owner, attr, value)
        if old_cuda is _MISSING:
            del quantizer_cls.cuda
        else:
            quantizer_cls.cuda = old_cuda
        if had_l0:
            straight_through.l0_sample = old_l0
        else:
            del straight_through.l0_sample


_MISSING = object()


# --------------------------------------------------------------------------- the driver

class OfficialLeNet5:
    """The official LeNet-5 of a clone, driven as §9.1 describes (module docstring).

    Parameters
    ----------
    repo_dir : root of the clone.
    torch : the torch module.
    dtype : torch.float64 or torch.float32.
    """

    def __init__(self, repo_dir: Path, torch, dtype) -> None:
        self.torch, self.dtype = torch, dtype
        self.modules, self.stubbed = _import_official(Path(repo_dir))
        self.straight_through = self.modules["straight_through"]
        self.driver = self.modules[DRIVER_MODULE]
        self.utils = self.modules[UTILS_MODULE]
        self.model_cls = getattr(self.modules[MODEL_MODULE], "LeNet5Quantized", None)
        if not (inspect.isclass(self.model_cls) and issubclass(self.model_cls, torch.nn.Module)):
            raise OfficialModelError(f"{MODEL_MODULE} has no class LeNet5Quantized (§9.1)")

    # -- helpers
    def _quantizer(self, model, name: str):
        layer, attr = name.split(".")
        return model.get_submodule(f"{LAYER_NAMES[layer]}.{QUANTIZER_ATTRS[attr]}")

    def _quantizers(self, model) -> list:
        out = []
        for name in QUANTIZER_ORDER:
            try:
                out.append((name, self._quantizer(model, name)))
            except AttributeError as exc:
                raise OfficialModelError(f"the official LeNet-5 has no quantizer for {name} "
                                         f"({exc}); §9.1 names them") from exc
        return out

    def _build(self, x_init, queue: _NoiseQueue):
        """Steps 1–2 of the module docstring: the model with lazy parameters and MACs."""
        torch = self.torch
        model = self.model_cls(**MNIST_RECIPE).to(self.dtype)
        self.driver.set_rn_q(model, True, True)
        model.set_full_precision_logits()
        model.train()
        queue.free_rng = np.random.default_rng(0)
        with torch.no_grad():
            model(torch.as_tensor(np.asarray(x_init), dtype=self.dtype))
        queue.free_rng = None
        model.to(self.dtype)                     # lazily created parameters too
        per_layer_macs, groups = self.utils.get_groups_and_macs(model, "mnist",
                                                                "lenet5quantized")
        self.driver.assign_macs(per_layer_macs, groups, "lenet5quantized")
        model.train()                            # the MAC pass left it in eval mode
        return model, per_layer_macs, groups

    def _set(self, p, value) -> None:
        with self.torch.no_grad():
            p.copy_(self.torch.as_tensor(np.asarray(value, dtype=np.float64),
                                         dtype=p.dtype).reshape(p.shape))

    def _load(self, model, params: dict) -> None:
        """Step 3: the suite's parameters into the official model (names: module docstring)."""
        for layer, path in LAYER_NAMES.items():
            module = model.get_submodule(path)
            self._set(module.weight, params[f"{layer}.weight"])
            self._set(module.bias, params[f"{layer}.bias"])
        for name, q in self._quantizers(model):
            beta = float(params[f"{name}.beta"])
            signed = bool(int(params[f"{name}.signed_flag"]))
            if bool(q.x_min.detach().min() < 0) != signed:
                raise OfficialModelError(f"{name}: the official quantizer initialised itself "
                                         f"{'un' if signed else ''}signed; the suite's is "
                                         f"{'' if signed else 'un'}signed")
            self._set(q.x_max, beta)
            if signed:
                self._set(q.x_min, -beta)
            for i, bits in enumerate(CHAIN_BITS):
                self._set(getattr(q, f"gamma_{bits}"), params[f"{name}.gate_logits"][i])
            key = f"{name}.prune_logits"
            if (key in params) != (getattr(q, "gamma_2", None) is not None):
                raise OfficialModelError(f"{name}: pruning logits in the suite: {key in params}; "
                                         "in the official model: the opposite")
            if key in params:
                self._set(q.gamma_2, params[key])

    def _queue_step(self, model, queue: _NoiseQueue, noise: dict, k=None) -> None:
        """The noise of one forward pass, in the official order (module docstring)."""
        for name, q in self._quantizers(model):
            parts = noise[name]
            pick = (lambda a: a) if k is None else (lambda a: a[k])
            if getattr(q, "gamma_2", None) is not None:
                queue.push(f"{name} gamma_2", q.gamma_2.detach().cpu().double().numpy(),
                           pick(parts["prune"]))
            chain = pick(parts["chain"])
            for i, bits in enumerate(CHAIN_BITS):
                phi = float(getattr(q, f"gamma_{bits}").detach().reshape(-1)[0])
                if phi <= HARD_CUT_LOGIT:
                    break                           # the hard cut: not sampled (§3.5)
                queue.push(f"{name} gamma_{bits}", [phi], chain[i:i + 1])

    def _loss(self, model, x, y, mu: float):
        torch = self.torch
        logits = model(torch.as_tensor(np.asarray(x), dtype=self.dtype))
        ce = torch.nn.functional.cross_entropy(logits, torch.as_tensor(np.asarray(y),
                                                                       dtype=torch.long))
        return logits, ce + float(mu) * self.driver.gate_loss(model)

    def _read(self, model, grads: bool) -> dict:
        """Every reference parameter (or its gradient) from the official model."""
        def get(p):
            t = p.grad if grads else p
            if t is None:
                return np.zeros(tuple(p.shape))
            return t.detach().cpu().double().numpy()

        out = {}
        for name, q in self._quantizers(model):
            out[f"{name}.beta"] = get(q.x_max).reshape(())
            out[f"{name}.gate_logits"] = np.concatenate(
                [get(getattr(q, f"gamma_{b}")).reshape(-1) for b in CHAIN_BITS])
            if getattr(q, "gamma_2", None) is not None:
                out[f"{name}.prune_logits"] = get(q.gamma_2).reshape(-1)
        for layer, path in LAYER_NAMES.items():
            module = model.get_submodule(path)
            out[f"{layer}.weight"] = get(module.weight)
            out[f"{layer}.bias"] = get(module.bias)
        return out

    def _check_queue_empty(self, queue: _NoiseQueue) -> None:
        if queue.entries:
            raise OfficialModelError(f"the official model drew {len(queue.entries)} gate "
                                     f"samples fewer than the documented order (§9.1) gives; "
                                     f"the first unused is for {queue.entries[0][0]}")

    def _optimizers(self, model, lr, betas, eps) -> list:
        """One Adam per group, grouped by name as the official driver does (§7.3)."""
        groups = {"weights": [], "gates": [], "ranges": []}
        for name, p in model.named_parameters():
            if any(k in name for k in ("x_min", "x_max", "s_2")):
                groups["ranges"].append(p)
            elif "gamma_" in name:
                groups["gates"].append(p)
            else:
                groups["weights"].append(p)
        return [self.torch.optim.Adam(ps, lr=lr, betas=betas, eps=eps) for ps in groups.values()]

    # -- the protocol methods
    def step(self, params: dict, x, y, noise: dict, mu: float) -> dict:
        """``lenet5_step``: one training forward and backward."""
        queue = _NoiseQueue(self.torch)
        with _patched(self.torch, self.straight_through, queue):
            model, _, _ = self._build(np.asarray(x)[:2], queue)
            self._load(model, params)
            model.train()
            self._queue_step(model, queue, noise)
            logits, loss = self._loss(model, x, y, mu)
            self._check_queue_empty(queue)
            loss.backward()
            return {"logits": logits.detach().cpu().double().numpy(),
                    "loss": loss.detach().cpu().double().numpy(),
                    "grads": self._read(model, grads=True)}

    def train(self, params: dict, x, y, noise: dict, mu: float, lr: float, betas: tuple,
              eps: float) -> dict:
        """``lenet5_train``: K steps with the three Adam optimizers."""
        queue = _NoiseQueue(self.torch)
        with _patched(self.torch, self.straight_through, queue):
            model, _, _ = self._build(np.asarray(x)[0, :2], queue)
            self._load(model, params)
            model.train()
            optimizers = self._optimizers(model, lr, betas, eps)
            losses = []
            for k in range(np.shape(x)[0]):
                for opt in optimizers:
                    opt.zero_grad(set_to_none=False)     # PyTorch 1.x zeroes in place
                self._queue_step(model, queue, noise, k)
                _, loss = self._loss(model, x[k], y[k], mu)
                self._check_queue_empty(queue)
                loss.backward()
                losses.append(float(loss.detach()))
                for opt in optimizers:
                    opt.step()
            return {"losses": np.array(losses), "params": self._read(model, grads=False)}

    def relative_bops(self, gates: dict) -> float:
        """``relative_bops`` for LeNet-5: the suite's 0/1 gates as logits ±6, then
        ``print_bitops`` (§5)."""
        queue = _NoiseQueue(self.torch)
        with _patched(self.torch, self.straight_through, queue):
            model, per_layer_macs, groups = self._build(np.full((2, 1, 28, 28), 0.5), queue)
            for name, q in self._quantizers(model):
                g = gates[name]
                for i, bits in enumerate(CHAIN_BITS):
                    self._set(getattr(q, f"gamma_{bits}"), 6.0 if g["chain"][i] else -6.0)
                if getattr(q, "gamma_2", None) is not None:
                    z2 = np.asarray(g.get("z2", np.ones(q.gamma_2.numel())))
                    self._set(q.gamma_2, np.where(z2 > 0, 6.0, -6.0))
            model.eval()
            value = self.driver.print_bitops(per_layer_macs, groups, "lenet5quantized", model,
                                             no_print=True)
            return float(value[0] if isinstance(value, tuple) else value)

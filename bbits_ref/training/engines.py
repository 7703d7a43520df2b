"""Who computes a training step: the NumPy reference or ``bbits_ref.torch_impl``.

:class:`~bbits_ref.training.trainer.Trainer` runs one training loop for both: data order and
augmentation, gate noise, learning-rate schedule, history records, evaluation cadence,
checkpoints, divergence checks and run files.  An engine computes only what differs: a training
step on a batch, the test accuracy, and moving its state to and from the reference's objects.

The reference's objects stay the record of the run whatever the engine: ``trainer.model`` (a
reference :class:`~bbits_ref.method.models.BBNet`) and ``trainer.optimizer`` (the reference
:class:`~bbits_ref.autograd.optim.Adam`, which holds the schedule and the learning rates).
The numpy engine trains them directly.  The torch engine trains a ``torch_impl`` network and a
``torch.optim.Adam`` and copies their state into the reference objects under the same names
(:meth:`TorchEngine.sync_state`) before every checkpoint and at the end of a run, and the gate
parameters alone (:meth:`TorchEngine.sync_readout`) at every logging point.  So a checkpoint is
the same ``.npz`` whichever engine wrote it, and either engine resumes it.

The torch engine, step for step like the reference (docs/method.md §7.3):

* the SAME gate noise: drawn with ``trainer.model.sample_noise(noise_rng)`` from the run's
  NumPy generator, in the reference's order; the same batches and augmentation (the loop makes
  them); the same initial weights and ranges (copied from the reference model after its
  initialisation with two training images);
* Adam of the three parameter groups with the reference's learning rates (PyTorch's fused
  Adam where it has one for the device, else the multi-tensor one), gradients zeroed in
  place (``zero_grad(set_to_none=False)``, as PyTorch 1.x and the reference); its state
  (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter and group) maps both ways by parameter
  name;
* the training data stay on the device: without augmentation (MNIST) the normalised training
  set is copied there once and each batch is indexed there with the reference's permutation
  (:meth:`TorchEngine.epoch_batches`); with augmentation (CIFAR-10) each batch is augmented on
  the host, as the reference does, and then copied;
* on the CPU, torch runs on as many threads as NumPy's BLAS (:func:`numpy_threads`; it calls
  ``torch.set_num_threads``), so both engines compute with the same resources;
* no host synchronisation per step: the step's noise goes to the device in one copy
  (:func:`noise_to`), the loss, CE, regularizer and correct count stay there; they are
  read at the logging points (every ``log_every`` steps) and at the end of the epoch.
  (``torch_impl``'s quantizer itself reads β and the gate values as scalars to plan its fused
  kernel: on the CPU that costs nothing, on a GPU a few small reads per quantizer and step.)
* divergence is checked without a sync per step: a finite-loss flag is accumulated on the
  device and checked, with every parameter finite and every range β > 0, at each logging point
  and at the end of each epoch.  A divergence is then reported for the range of steps since the
  last check (the numpy engine names the exact step), with the epoch and the last good
  checkpoint, as the numpy engine does;
* evaluation keeps the test set on the device and quantizes each layer's weight once per
  evaluation (:func:`bbits_ref.torch_impl.models.cached_weights`), not once per batch.

Equal results are not expected bit for bit (float32 rounding differs, e.g. torch's fused
multiply-adds in Adam), but within float32 tolerance: ``tests/test_engines.py`` trains a few
steps with both on the same data and noise and compares losses and parameters.
This module imports torch only when a torch engine is made.
"""
from __future__ import annotations

import numpy as np

from bbits_ref._errors import UsageError
from bbits_ref.datasets import batches

__all__ = ["ENGINES", "DEVICES", "NumpyEngine", "TorchEngine", "make_engine", "torch_available",
           "resolve_device", "noise_to", "host_batches", "numpy_threads", "TORCH_EXTRA"]

ENGINES = ("numpy", "torch")
DEVICES = ("cpu", "cuda", "auto")
TORCH_EXTRA = "pip install 'bbits-ref[torch]'"


def torch_available() -> bool:
    """True if PyTorch can be imported (the ``torch`` extra is installed)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_engine(engine: str = "numpy", device: str | None = None):
    """The engine called ``engine`` ("numpy" or "torch") on ``device`` ("cpu", "cuda", "auto").

    ``device`` None means "cpu" for numpy and "auto" (CUDA if available, else the CPU) for
    torch.  Every problem is one :class:`~bbits_ref._errors.UsageError` line.
    """
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if device is not None and device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if engine == "numpy":
        if device == "cuda":
            raise UsageError("the numpy engine runs on the CPU only; for --device cuda add "
                             "--engine torch")
        return NumpyEngine()
    return TorchEngine(device or "auto")


def host_batches(trainer, batch_size: int, augment=None):
    """One shuffled pass over ``trainer``'s training set as normalised NumPy batches.

    The permutation is drawn from ``trainer.data_rng`` now (before any augmentation noise),
    then each batch is augmented on its raw pixels with ``augment(xb, data_rng)`` if given, and
    normalised (docs/method.md §7.3).  Yields ``(xb, yb)``.
    """
    order = batches(trainer.x_train, trainer.y_train, batch_size, trainer.data_rng)

    def generate():
        for xb, yb in order:
            if augment is not None:
                xb = augment(xb, trainer.data_rng)      # on raw uint8 pixels, as torchvision
            yield trainer._normalize(xb), yb
    return generate()


def numpy_threads() -> int | None:
    """The number of threads NumPy's BLAS uses (threadpoolctl, else the usual environment
    variables), or None when it cannot be told."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        pass
    else:
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            return int(pools[0]["num_threads"])
    import os
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


class NumpyEngine:
    """The NumPy reference: trains ``trainer.model`` and ``trainer.optimizer`` themselves.

    Its step is :meth:`Trainer.train_step` (checks every step, exact step in a divergence).
    """

    name = "numpy"
    device = "cpu"

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def describe(self) -> dict:
        return {"engine": self.name, "device": self.device}

    def load_state(self) -> None:
        """Nothing to do: the reference objects are this engine's state."""

    def begin_epoch(self) -> None:
        """Nothing to do: :meth:`Trainer.train_epoch` sets the schedule and the phase."""

    def epoch_batches(self, batch_size: int, augment=None):
        """One shuffled pass: normalised NumPy batches (:func:`host_batches`)."""
        return host_batches(self.trainer, batch_size, augment)

    def train_step(self, xb: np.ndarray, yb: np.ndarray, mu: float) -> tuple:
        """``(ce, reg, loss, hits)`` as Python numbers, from :meth:`Trainer.train_step`."""
        logits, ce, reg, loss = self.trainer.train_step(xb, yb, mu)
        hits = int((logits.data.argmax(axis=1) == yb).sum())
        return float(ce.data), float(reg.data), float(loss.data), hits

    def check(self) -> None:
        """Nothing to do: every step is checked as it runs."""

    def sync_readout(self) -> None:
        """Nothing to do."""

    def sync_state(self) -> None:
        """Nothing to do."""

    def evaluate(self, batch_size: int) -> float:
        return self.trainer._evaluate_reference(batch_size)


def _import_torch():
    try:
        import torch
        import bbits_ref.torch_impl  # noqa: F401
    except ImportError:
        raise UsageError(f"--engine torch needs the optional extra: {TORCH_EXTRA}") from None
    return torch


def resolve_device(device: str) -> str:
    """"cpu", "cuda" (checked to be available) or "auto" -> the device to use."""
    torch = _import_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: this PyTorch ({torch.__version__}) sees no CUDA GPU; "
                         "use --device cpu (or auto), or install a CUDA build of PyTorch on a "
                         "machine with a GPU")
    return device


def noise_to(noise: dict, device) -> dict:
    """``{quantizer: {"prune"/"chain": array}}`` as float64 tensors on ``device``, copied there
    in ONE transfer (all arrays packed into one buffer, then split into views)."""
    import torch
    keys = [(q, k) for q, parts in noise.items() for k in parts]
    flat = (np.concatenate([np.ravel(noise[q][k]) for q, k in keys]) if keys
            else np.zeros(0))
    on_device = torch.as_tensor(flat.astype(np.float64, copy=False)).to(device,
                                                                        non_blocking=True)
    out, start = {q: {} for q in noise}, 0
    for q, k in keys:
        size = np.size(noise[q][k])
        out[q][k] = on_device[start:start + size].reshape(np.shape(noise[q][k]))
        start += size
    return out


class TorchEngine:
    """``bbits_ref.torch_impl`` on ``device``, mirrored into the reference objects.

    See the module docstring for what it shares with the reference, when it synchronises and
    how it checks for divergence.
    """

    name = "torch"

    def __init__(self, device: str = "auto") -> None:
        self.torch = _import_torch()
        self.device = resolve_device(device)

    def describe(self) -> dict:
        return {"engine": self.name, "device": self.device, "torch": self.torch.__version__}

    # -- state, both ways
    def attach(self, trainer) -> None:
        """Build the torch network of ``trainer.config`` and take the trainer's state."""
        from bbits_ref.torch_impl.models import BBNet
        torch = self.torch
        if not trainer.config.method.ste:
            raise UsageError("the 'no straight-through estimator' ablation (ste=False, --no-ste) "
                             "is implemented by the numpy engine only: use --engine numpy")
        method = trainer.config.method
        if method.quantizer != "bayesian_bits" or method.io_bits is not None:
            what = (f"the {method.quantizer} quantizer (--quantizer {method.quantizer})"
                    if method.quantizer != "bayesian_bits" else "8 in/out (--io-bits)")
            raise UsageError(f"{what} is implemented by the numpy engine only: use --engine numpy")
        self.trainer = trainer
        ref = trainer.model
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[trainer.config.dtype]
        threads = numpy_threads()
        if self.device == "cpu" and threads:            # as many threads as the reference
            torch.set_num_threads(threads)
        self.net = BBNet(ref.architecture, ref.config, rng=0, dtype=self.dtype,
                         device=self.device)
        self._x_test = self._y_test = None
        self._train_set = None                          # (x, y) on the device, made on demand
        self.load_state()

    def load_state(self) -> None:
        """Copy the reference model's and optimizer's state (weights, ranges, gates, BN
        statistics, Adam's moments and steps, learning rates) into the torch objects."""
        from bbits_ref.torch_impl.state import load_numpy_state
        torch = self.torch
        ref, ref_opt = self.trainer.model, self.trainer.optimizer
        load_numpy_state(self.net, ref.state_dict())
        self.net.to(self.device)
        params = dict(self.net.named_parameters())
        names = {id(p): n for n, p in ref.named_parameters()}
        groups, self._pairs = [], []
        for g in ref_opt.param_groups:          # same groups, same positions, by name
            mine = [params[names[id(p)]] for p in g["params"]]
            self._pairs.append(list(zip(g["params"], mine)))
            groups.append({"params": mine, "lr": g["lr"], "betas": g["betas"], "eps": g["eps"],
                           "weight_decay": g["weight_decay"], "name": g.get("name")})
        # the fused Adam (one kernel per step for every parameter; the formula of the
        # per-parameter loop, to float rounding; for LeNet-5 on the CPU ~3x faster than the
        # multi-tensor "foreach" Adam, which is used where this PyTorch has no fused one)
        try:
            self.optimizer = torch.optim.Adam(groups, fused=True)
            step_device = self.device                   # fused: the step count on the device
        except RuntimeError:
            self.optimizer = torch.optim.Adam(groups, foreach=True)
            step_device = "cpu"
        for pairs in self._pairs:
            for ref_p, p in pairs:
                st = ref_opt.state.get(id(ref_p))
                if st:
                    self.optimizer.state[p] = {
                        "step": torch.tensor(float(st["step"]), dtype=torch.float32,
                                             device=step_device),
                        "exp_avg": torch.as_tensor(np.asarray(st["exp_avg"])).to(
                            device=self.device, dtype=p.dtype).clone(),
                        "exp_avg_sq": torch.as_tensor(np.asarray(st["exp_avg_sq"])).to(
                            device=self.device, dtype=p.dtype).clone()}
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._checked_step = self.trainer.step

    def sync_state(self) -> None:
        """Copy the torch state into ``trainer.model`` and ``trainer.optimizer`` (names as the
        reference's; Adam's ``step`` as an int)."""
        from bbits_ref.torch_impl.state import state_dict_to_numpy
        self.trainer.model.load_state_dict(state_dict_to_numpy(self.net))
        state = self.trainer.optimizer.state
        for pairs in self._pairs:
            for ref_p, p in pairs:
                st = self.optimizer.state.get(p)
                if st:
                    state[id(ref_p)] = {
                        "step": int(round(float(st["step"]))),
                        "exp_avg": st["exp_avg"].detach().cpu().numpy().copy(),
                        "exp_avg_sq": st["exp_avg_sq"].detach().cpu().numpy().copy()}
                else:
                    state.pop(id(ref_p), None)

    def sync_readout(self) -> None:
        """Copy the gate logits and ranges (what the readout reads) into ``trainer.model``."""
        mine = dict(self.net.quantizers())
        for name, q in self.trainer.model.quantizers():
            t = mine[name]
            for attr in ("gate_logits", "prune_logits", "beta"):
                ref_p, p = getattr(q, attr), getattr(t, attr)
                if ref_p is not None and p is not None:
                    ref_p.data = p.detach().cpu().numpy().astype(ref_p.dtype, copy=True)

    # -- training
    def begin_epoch(self) -> None:
        """The epoch's learning rates (from the reference optimizer's schedule) and phase."""
        for g, ref_g in zip(self.optimizer.param_groups, self.trainer.optimizer.param_groups):
            g["lr"] = ref_g["lr"]
        fixed = dict(self.trainer.model.quantizers())
        for name, q in self.net.quantizers():
            q.fixed_gates = fixed[name].fixed_gates
        self.net.train()

    def epoch_batches(self, batch_size: int, augment=None):
        """One shuffled pass, in the reference's order (the permutation drawn from
        ``trainer.data_rng``, as :func:`host_batches` draws it).

        Without augmentation (MNIST) the whole normalised training set is copied to the device
        once (float32 MNIST: 188 MB) and each batch is indexed there: only the batch's indices
        cross to the device.  With augmentation (CIFAR-10) the batch is augmented and
        normalised on the host, as the reference does it, and :meth:`train_step` copies it.
        """
        if augment is not None:
            return host_batches(self.trainer, batch_size, augment)
        torch = self.torch
        x, y = self._device_train_set()
        n = len(y)
        order = batches(np.arange(n), np.arange(n), batch_size, self.trainer.data_rng)

        def generate():
            for idx, _ in order:
                idx = torch.as_tensor(idx).to(self.device, non_blocking=True)
                yield x.index_select(0, idx), y.index_select(0, idx)
        return generate()

    def _device_train_set(self) -> tuple:
        """The normalised training images and the labels on the device (copied once)."""
        torch = self.torch
        trainer = self.trainer
        if self._train_set is None or self._train_set[0] is not trainer.x_train:
            x = torch.as_tensor(trainer._normalize(trainer.x_train)).to(self.device,
                                                                        dtype=self.dtype)
            y = torch.as_tensor(np.asarray(trainer.y_train)).to(self.device, dtype=torch.long)
            self._train_set = (trainer.x_train, x, y)
        return self._train_set[1:]

    def _noise(self, noise: dict) -> dict:
        """The step's NumPy noise for the network (on the CPU as it is, see :func:`noise_to`)."""
        return noise if self.device == "cpu" else noise_to(noise, self.device)

    def train_step(self, xb, yb, mu: float) -> tuple:
        """One step: ``(ce, reg, loss, hits)`` as 0-d tensors on the device (no sync).

        ``xb``, ``yb``: a batch on the device (from :meth:`epoch_batches`) or NumPy arrays
        (copied to the device here)."""
        torch = self.torch
        trainer = self.trainer
        noise = self._noise(trainer.model.sample_noise(trainer.noise_rng))
        x = torch.as_tensor(xb).to(self.device, non_blocking=True)
        y = torch.as_tensor(yb).to(self.device, dtype=torch.long, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=False)
        try:
            logits = self.net(x, noise=noise)
        except ValueError:      # torch_impl refuses NaN gate logits or a range β ≤ 0 ...
            self.check()        # ... which an earlier step made: report it as a divergence
            raise
        ce = torch.nn.functional.cross_entropy(logits, y)
        reg = self.net.regularizer()
        if not isinstance(reg, torch.Tensor):          # no quantizer with gates: a constant
            reg = torch.as_tensor(float(reg), dtype=ce.dtype, device=ce.device)
        loss = ce + mu * reg if mu else ce
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self._finite &= torch.isfinite(loss)
            hits = (logits.argmax(dim=1) == y).sum()
        return ce.detach(), reg.detach(), loss.detach(), hits

    def check(self) -> None:
        """Raise the trainer's divergence error if a step since the last check went wrong."""
        torch = self.torch
        flags = [self._finite]
        flags += [torch.isfinite(p).all() for p in self.net.parameters()]
        betas = [q.beta.reshape(()) for _, q in self.net.quantizers() if q.beta is not None]
        if betas:
            flags.append((torch.stack(betas) > 0).all())
        if bool(torch.stack(flags).all()):                 # the one sync
            self._checked_step = self.trainer.step
            return
        if not bool(self._finite):
            what = "the loss became non-finite"
        else:
            what = self._bad_parameter()
        self.trainer._diverged(what, first_step=self._checked_step + 1)

    def _bad_parameter(self) -> str:
        torch = self.torch
        for name, p in self.net.named_parameters():
            if not bool(torch.isfinite(p).all()):
                bad = p.detach()[~torch.isfinite(p)].flatten()[0].item()
                return f"parameter {name} became {bad}"
        for name, q in self.net.quantizers():
            if q.beta is not None and not float(q.beta) > 0:
                return f"the range β of {name} fell to {float(q.beta):.3g} (it must stay > 0)"
        return "a parameter became non-finite"

    # -- evaluation
    def evaluate(self, batch_size: int) -> float:
        """Test accuracy with the deterministic gates, the test set kept on the device and each
        layer's quantized weight computed once per evaluation
        (:func:`~bbits_ref.torch_impl.models.cached_weights`)."""
        from bbits_ref.torch_impl.models import cached_weights
        torch = self.torch
        trainer = self.trainer
        if self._x_test is None:
            self._x_test = torch.as_tensor(trainer.x_test).to(self.device, dtype=self.dtype)
            self._y_test = torch.as_tensor(np.asarray(trainer.y_test)).to(self.device,
                                                                          dtype=torch.long)
        n = len(self._x_test)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.net.eval()
        try:
            with torch.no_grad(), cached_weights(self.net):
                for i in range(0, n, batch_size):
                    logits = self.net(self._x_test[i:i + batch_size])
                    correct += (logits.argmax(dim=1) == self._y_test[i:i + batch_size]).sum()
        finally:
            self.net.train()
        return int(correct) / max(n, 1)

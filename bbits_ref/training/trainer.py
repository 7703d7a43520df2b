"""Training Bayesian Bits models: the official recipe, a history, checkpoints and resume.

The default :class:`TrainConfig` is the official MNIST recipe (docs/method.md §7.3): Adam at 1e-3 for
three parameter groups (weights, gate logits, ranges), the weights' learning rate constant and
then linearly decayed to 0 over the last third of the epochs, μ = 0.1, batch 128, the dataset's
gate preset, and evaluation with deterministic gates after every epoch.

Randomness comes from one seed, split with ``numpy.random.SeedSequence`` into three streams —
initialisation, data order (and augmentation), gate noise.  The states of the last two are
saved in every checkpoint (the weights carry the first), so an interrupted run resumed from its
last checkpoint finishes bit for bit like an uninterrupted one.

A run folder holds only the run's own files (:mod:`bbits_ref.training.runs`): a new run refuses
a folder that holds another run or anything else, and a checkpoint resumes only in its own run's
folder.  Training stops with :class:`~bbits_ref._errors.DivergedError` at the first non-finite
loss, gradient or parameter, or a range β driven to 0 or below, naming the step, the epoch and
the last good checkpoint; :meth:`Trainer.resume` can continue it with smaller learning rates
(``lrs=``), which the run records.

``engine="torch"`` computes the same loop with ``bbits_ref.torch_impl`` (on ``device``): same
settings, data order, gate noise, history, run files and checkpoint format
(:mod:`bbits_ref.training.engines`).  The engine is a way to compute, not a setting: it is not
part of the :class:`TrainConfig`, ``run.json`` lists which engine computed which epochs, and a
checkpoint written by one engine resumes in the other.
Notebook: ``notebooks/06_lenet5_mnist.ipynb``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref._errors import DivergedError, UsageError
from bbits_ref._files import write_json
from bbits_ref.training import runs
from bbits_ref.training.engines import ENGINES, make_engine
from bbits_ref.training.checkpoints import (CheckpointError, load_checkpoint, restore_rng,
                                            rng_state, save_checkpoint)
from bbits_ref.datasets import Dataset, augment_cifar, load_dataset
from bbits_ref.autograd.engine import no_grad
from bbits_ref.method.models import BBNet, lenet5, vgg7
from bbits_ref.autograd.optim import Adam, linear_decay_last_third
from bbits_ref.training.config import TrainConfig
from bbits_ref.method.readout import model_readout

__all__ = ["Trainer", "TrainingDiverged", "train", "build_model", "history_record",
           "check_checkpoint_meta"]

class TrainingDiverged(DivergedError):
    """The loss, a gradient or a parameter became NaN or infinite, or a range β fell to ≤ 0."""


def build_model(config: TrainConfig, rng) -> BBNet:
    """The model a config asks for (LeNet-5 or VGG-7 with its width)."""
    dtype = np.dtype(config.dtype)
    if config.model == "lenet5":
        return lenet5(config.method, rng=rng, dtype=dtype)
    return vgg7(config.width, config.method, rng=rng, dtype=dtype)


def history_record(model: BBNet, **scalars) -> dict:
    """One history entry: the given scalars plus the model's readout (docs/method.md §5)."""
    r = model_readout(model)
    rec = dict(scalars)
    rec["relative_bops"] = r.relative_bops
    rec["expected_relative_bops"] = r.expected_relative_bops
    rec["quantizers"] = {
        q.name: {"chain_probs": [round(float(p), 6) for p in q.chain_probs],
                 "prune_prob_mean": None if q.prune_probs is None else float(q.prune_probs.mean()),
                 "expected_bits": q.expected_bits, "bits": q.deterministic_bits,
                 "kept": q.kept_channels, "channels": q.channels}
        for q in r.quantizers}
    return rec


def _load_data(config: TrainConfig):
    """The config's dataset (raw uint8 images, docs/method.md §7.3)."""
    return load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)


def _limit(data, config: TrainConfig):
    """``data`` cut to the config's ``train_limit`` / ``test_limit`` (a Dataset or a 4-tuple)."""
    if not (config.train_limit or config.test_limit):
        return data
    tr, te = slice(config.train_limit), slice(config.test_limit)
    if isinstance(data, Dataset):
        return Dataset(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te],
                       data.name, data.classes, data.source)
    x_train, y_train, x_test, y_test = data
    return x_train[tr], y_train[tr], x_test[te], y_test[te]


class Trainer:
    """Runs one training job; see :func:`train` for the one-call version.

    Parameters
    ----------
    config : TrainConfig
    out_dir : where ``config.json``, ``history.json``, ``summary.json``, ``checkpoint.npz`` and
        ``figures/`` go (None: keep everything in memory).
    data : optional :class:`bbits_ref.datasets.Dataset` (raw images, normalised per batch as in
        docs/method.md §7.3), or a tuple ``(x_train, y_train, x_test, y_test)`` of already normalised
        (N, C, H, W) float arrays; by default the config's dataset is loaded.
    progress : show tqdm progress bars (notebook-aware).
    verbose : print one line per epoch.
    engine : "numpy" (the reference, default) or "torch" (``bbits_ref.torch_impl``).
    device : for the torch engine: "cpu", "cuda" or "auto" (default: CUDA if available).
    """

    def __init__(self, config: TrainConfig, out_dir=None, data=None, progress: bool = True,
                 verbose: bool = True, engine: str = "numpy", device: str | None = None) -> None:
        self.engine = make_engine(engine, device)      # first: a missing extra fails fast
        self.config = config
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress, self.verbose = progress, verbose
        init_seq, data_seq, noise_seq = np.random.SeedSequence(config.seed).spawn(3)
        self.data_rng = np.random.default_rng(data_seq)
        self.noise_rng = np.random.default_rng(noise_seq)
        data = _limit(_load_data(config) if data is None else data, config)
        dtype = np.dtype(config.dtype)
        if isinstance(data, Dataset):
            self.x_train, self.y_train = data.x_train, data.y_train
            self._normalize = lambda x: data.normalize(x).astype(dtype, copy=False)
            x_test, self.y_test = data.x_test, data.y_test
        else:
            self.x_train, self.y_train, x_test, self.y_test = data
            self._normalize = lambda x: np.asarray(x, dtype=dtype)
        if len(self.x_train) < 2:
            raise UsageError(f"training needs at least 2 examples (the ranges are initialised "
                             f"from 2); got {len(self.x_train)}: raise train_limit")
        self.x_test = self._normalize(x_test)            # evaluated every epoch: normalise once
        self.model = build_model(config, np.random.default_rng(init_seq))
        # Official order (§7.3): push 2 training images, then build the optimizers.
        self.model.initialize(self._normalize(self.x_train[:2]), self.noise_rng)
        self.optimizer = self._make_optimizer()
        self.epoch = 0            # finished epochs
        self.step = 0             # finished optimizer steps
        self.engine.attach(self)
        #: which engine computed which part of the run: {"engine", "device", "epoch", "step"}
        self.engines: list[dict] = [self._engine_segment()]
        self.history: list[dict] = []
        self.last_checkpoint: Path | None = None
        self.run_id = runs.new_run_id()
        self.lr_changes: list[dict] = []     # learning-rate changes made at resume
        self._owns_out_dir = False           # True once out_dir is checked to be this run's
        self.started = time.time()
        #: called as ``grad_hook(trainer)`` after each backward pass and before the update (the
        #: NumPy engine's :meth:`train_step` only): the gradients are in the parameters' ``.grad``
        #: and the parameters still hold the values they were computed at
        #: (:mod:`bbits_ref.training.gate_trace` reads the gate gradients this way).
        self.grad_hook = None

    # -- setup
    @property
    def total_epochs(self) -> int:
        return self.config.epochs + self.config.finetune_epochs

    def _make_optimizer(self) -> Adam:
        c = self.config
        groups = self.model.parameter_groups()
        decay = (linear_decay_last_third(c.epochs) if c.lr_schedule == "official"
                 else (lambda e: 1.0))
        gated = c.epochs

        def weights(e):
            return decay(e) if e < gated else c.finetune_lr / c.lr_weights

        def gates(e):
            return 1.0 if e < gated else 0.0       # fixed gates while fine-tuning

        def ranges(e):
            return 1.0 if e < gated else c.finetune_lr / c.lr_ranges

        spec = [("weights", c.lr_weights, weights), ("gates", c.lr_gates, gates),
                ("ranges", c.lr_ranges, ranges)]
        return Adam([{"params": groups[name], "lr": lr, "name": name, "lr_lambda": fn}
                     for name, lr, fn in spec if groups[name]])

    # -- one epoch
    def _set_phase(self) -> None:
        """Gated phase: sampled gates; fine-tuning phase: the deterministic gates, fixed."""
        finetune = self.epoch >= self.config.epochs
        for _, q in self.model.quantizers():
            q.fixed_gates = finetune

    def train_epoch(self) -> dict:
        c = self.config
        self.optimizer.schedule(self.epoch)
        self._set_phase()
        self.engine.begin_epoch()
        mu = 0.0 if self.epoch >= c.epochs else c.mu
        self.model.train()
        n_batches = math.ceil(len(self.x_train) / c.batch_size)
        bar = self._bar(n_batches, f"epoch {self.epoch + 1}/{self.total_epochs}")
        correct = seen = 0
        ce_sum = 0.0
        augment = augment_cifar if self._augment() else None
        # one shuffled pass (the permutation drawn before any augmentation noise), normalised
        # batches made by the engine: NumPy arrays, or device tensors (engines.host_batches)
        epoch_batches = self.engine.epoch_batches(c.batch_size, augment)
        for b, (xb, yb) in enumerate(epoch_batches):
            # numbers (numpy engine) or device tensors (torch engine: read only when logged)
            ce, reg, loss, hits = self.engine.train_step(xb, yb, mu)
            self.step += 1
            correct, seen, ce_sum = correct + hits, seen + len(yb), ce_sum + ce * len(yb)
            if self.step % c.log_every == 0:
                self.engine.check()
                self.engine.sync_readout()
                self.history.append(history_record(
                    self.model, kind="step", step=self.step, epoch=self.epoch + (b + 1) / n_batches,
                    ce=float(ce), reg=float(reg), train_acc=float(hits) / len(yb)))
            if bar is not None:
                bar.update(1)
                if b % 10 == 0 or b == n_batches - 1:
                    bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(correct) / seen:.3f}",
                                    bops=f"{self.history[-1]['relative_bops']:.2f}%"
                                    if self.history else "-")
        if bar is not None:
            bar.close()
        self.engine.check()
        self.engine.sync_readout()
        self.epoch += 1
        test_acc = self.evaluate()
        with no_grad():
            reg = float(self.model.regularizer().data)
        rec = history_record(self.model, kind="epoch", step=self.step, epoch=self.epoch,
                             ce=float(ce_sum) / seen, reg=reg, train_acc=float(correct) / seen,
                             test_acc=test_acc)
        self.history.append(rec)
        return rec

    def train_step(self, xb: np.ndarray, yb: np.ndarray, mu: float):
        """One optimizer step on a batch: fresh gate noise, CE + μ·R (+ PACT's α penalty), Adam.

        Returns ``(logits, ce, reg, loss)`` as tensors.  Raises :class:`TrainingDiverged` on a
        non-finite loss or gradient (before any parameter is changed), and on a non-finite
        parameter or a range β ≤ 0 after the update (the model in memory is then spoiled; the
        last checkpoint is not).
        """
        self.optimizer.zero_grad()
        logits = self.model(xb, noise=self.model.sample_noise(self.noise_rng))
        ce = ops.cross_entropy(logits, yb)
        reg = self.model.regularizer()
        loss = ce + mu * reg if mu else ce
        penalty = self.model.range_penalty()      # PACT's ½·λ·Σα², whatever μ is (§13)
        if penalty is not None:
            loss = loss + penalty
        self._check_finite(float(loss.data), "loss")
        loss.backward()
        self._check_grads()
        if self.grad_hook is not None:
            self.grad_hook(self)
        self.optimizer.step()
        self._check_params()
        return logits, ce, reg, loss

    def _augment(self) -> bool:
        return self.config.augment if self.config.augment is not None else (
            self.config.dataset == "cifar10")

    def _bar(self, total, desc):
        if not self.progress:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, leave=False)

    def _check_finite(self, value: float, what: str) -> None:
        if not math.isfinite(value):
            self._diverged(f"{what} became {value}")

    def _diverged(self, what: str, first_step: int | None = None):
        """Raise :class:`TrainingDiverged`: ``what`` happened at step ``self.step + 1`` (the numpy
        engine, checked every step), or at one of the steps ``first_step`` .. ``self.step`` (the
        torch engine, checked at logging points and epoch ends, without a sync per step)."""
        c = self.config
        flag = "--lr"
        smaller = min([lr for lr in (c.lr_weights, c.lr_gates, c.lr_ranges) if lr > 0],
                      default=1e-3) / 10
        if self.last_checkpoint is not None:
            run = (self.out_dir if self.out_dir is not None
                   and self.last_checkpoint == self.out_dir / "checkpoint.npz"
                   else self.last_checkpoint)
            advice = (f"the last good checkpoint is {self.last_checkpoint} (epoch {self.epoch}): "
                      f"resume from it with smaller learning rates, e.g. bbits-ref train "
                      f"--resume {run} {flag} {smaller:g} --change-lr")
        else:
            advice = ("no checkpoint has been written yet: start again with smaller learning "
                      f"rates (e.g. {flag} {smaller:g}) or a smaller μ")
        if first_step is None:
            where = f"at step {self.step + 1}"
        else:
            where = (f"at a step from {first_step} to {self.step} (the {self.engine.name} "
                     f"engine checks every log_every = {c.log_every} steps and at epoch ends)"
                     if first_step < self.step else f"at step {self.step}")
        raise TrainingDiverged(f"training diverged: {what} {where} "
                               f"(epoch {self.epoch + 1}); {advice}")

    def _check_grads(self) -> None:
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None and not np.isfinite(p.grad).all():
                    self._check_finite(float("nan"), f"a gradient in group {g.get('name')!r}")

    def _check_params(self) -> None:
        """After an update: every parameter finite and every range β > 0."""
        problem = _bad_parameter(self.model)
        if problem is not None:
            self._diverged(problem)

    def evaluate(self, batch_size: int = 1000) -> float:
        """Test accuracy with the deterministic gates (docs/method.md §3.4), by the engine."""
        return self.engine.evaluate(batch_size)

    def _evaluate_reference(self, batch_size: int) -> float:
        """:meth:`evaluate` with the reference model (the numpy engine)."""
        self.model.eval()
        correct = 0
        with no_grad():
            for i in range(0, len(self.x_test), batch_size):
                logits = self.model(self.x_test[i:i + batch_size])
                correct += int((logits.data.argmax(axis=1) == self.y_test[i:i + batch_size]).sum())
        self.model.train()
        return correct / max(len(self.x_test), 1)

    # -- whole run
    def fit(self, stop_after: int | None = None) -> dict:
        """Train until ``total_epochs`` (or ``stop_after`` more epochs, to simulate an interruption).

        After every epoch the checkpoint and history are written (when ``out_dir`` is set).
        The first call checks that ``out_dir`` is this run's: absent, empty, resumed from, or
        holding only the settings of a run that never reached its first checkpoint (anything
        else raises :class:`~bbits_ref._errors.RunDirError`).  Every call removes the temporary
        files that interrupted writes left there.
        Returns the summary.
        """
        if self.out_dir is not None:
            self._open_out_dir()
        done = 0
        while self.epoch < self.total_epochs and (stop_after is None or done < stop_after):
            rec = self.train_epoch()
            done += 1
            if self.verbose:
                print(f"epoch {self.epoch:3d}/{self.total_epochs}: test acc {rec['test_acc']:.4f}  "
                      f"train acc {rec['train_acc']:.4f}  CE {rec['ce']:.4f}  "
                      f"rel. BOPs {rec['relative_bops']:.3f}%", flush=True)
            if self.out_dir is not None:
                self.save()
        self.engine.sync_state()                 # trainer.model is the trained model
        summary = self.summary()
        if self.out_dir is not None and self.epoch >= self.total_epochs:
            write_json(self.out_dir / "summary.json", summary)
        return summary

    def _open_out_dir(self) -> None:
        if not self._owns_out_dir:      # a new run: the folder must hold no other run's results
            runs.check_new_run(self.out_dir, allow_unstarted=True)
            self._owns_out_dir = True
        runs.clean_temp_files(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "run.json", {**runs.run_record(self.run_id, self.lr_changes),
                                               "engines": self.engines})
        write_json(self.out_dir / "config.json", self.config.to_dict())

    def summary(self) -> dict:
        r = model_readout(self.model)
        last = next((h for h in reversed(self.history) if h["kind"] == "epoch"), None)
        return {
            "model": self.model.name, "dataset": self.config.dataset,
            "epochs": self.epoch, "steps": self.step,
            "test_accuracy": None if last is None else last["test_acc"],
            "relative_bops": r.relative_bops,
            "expected_relative_bops": r.expected_relative_bops,
            "layers": r.to_dict()["layers"], "quantizers": r.to_dict()["quantizers"],
            "config": self.config.to_dict(),
        }

    # -- checkpoints
    def save(self, path=None) -> Path:
        path = Path(path) if path is not None else self.out_dir / "checkpoint.npz"
        self.engine.sync_state()
        meta = {"config": self.config.to_dict(), "epoch": self.epoch, "step": self.step,
                "rng": {"data": rng_state(self.data_rng), "noise": rng_state(self.noise_rng)},
                "history": self.history,
                "run": {"id": self.run_id, "lr_changes": self.lr_changes,
                        "engines": self.engines}}
        save_checkpoint(path, model_state=self.model.state_dict(),
                        optim_state=self.optimizer.state_dict(), meta=meta)
        if self.out_dir is not None and path.parent == self.out_dir:
            write_json(self.out_dir / "history.json", self.history)
        self.last_checkpoint = path
        return path

    @classmethod
    def resume(cls, path, data=None, progress: bool = True, out_dir=None,
               verbose: bool = True, lrs: dict | None = None, engine: str | None = None,
               device: str | None = None) -> "Trainer":
        """Rebuild a trainer from a run folder (or a checkpoint file) to continue it.

        A run folder's ``checkpoint.npz`` continues in that folder, after checking it belongs
        to the folder's run (same run id and settings as its ``config.json``).  Another file
        continues in memory, or in ``out_dir`` if given (a new or empty folder).
        ``lrs`` (keys ``lr_weights``, ``lr_gates``, ``lr_ranges``) changes learning rates from
        the next epoch on: ``config.json`` holds the new rates, ``run.json`` and the checkpoint
        list the change (``lr_changes``), and the history gets a note record
        (``kind="note"``, ``event="lr_change"``).
        ``engine`` / ``device`` choose who computes the rest of the run (default: the engine
        that computed the last part, numpy for runs written before engines existed); a change
        is listed in ``run.json`` (``engines``) and noted in the history (``event="engine"``).
        Every problem with the file is one :class:`CheckpointError` line naming it.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "checkpoint.npz"
        built = {}

        def expected_model(meta):             # the model the metadata describes, for the checks
            config, run = check_checkpoint_meta(path, meta)
            folder = runs.resume_folder(path, run.get("id"), meta["config"])
            target = folder if out_dir is None else Path(out_dir)
            segments = run.get("engines") or [{}]
            trainer = cls(config, out_dir=target, data=data, progress=progress, verbose=verbose,
                          engine=engine or segments[-1].get("engine", "numpy"), device=device)
            trainer._owns_out_dir = (target is not None and folder is not None
                                     and target.resolve() == folder.resolve())
            built.update(trainer=trainer, folder=folder, run=run)
            return trainer.model.state_dict()

        model_state, optim_state, meta = load_checkpoint(path, expected_model=expected_model)
        trainer, folder, run = built["trainer"], built["folder"], built["run"]
        try:
            trainer.model.load_state_dict(model_state)
            trainer.optimizer.load_state_dict(optim_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} does not fit the model and optimizer its settings "
                                  f"build: {str(exc)[:160]}") from exc
        problem = _bad_parameter(trainer.model)
        if problem is not None:
            raise CheckpointError(f"{path} holds a diverged model ({problem}); resume from an "
                                  "earlier checkpoint or start again")
        try:
            trainer.data_rng = restore_rng(meta["rng"]["data"])
            trainer.noise_rng = restore_rng(meta["rng"]["noise"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        trainer.epoch, trainer.step = meta["epoch"], meta["step"]
        trainer.history = list(meta["history"])
        trainer.last_checkpoint = path
        if run.get("id") is not None:
            trainer.run_id = run["id"]
        elif folder is not None:
            trainer.run_id = runs.read_run_record(folder)[0] or trainer.run_id
        trainer.lr_changes = list(run.get("lr_changes", []))
        if lrs:
            trainer._change_lrs(lrs)
        trainer.engine.load_state()
        trainer._record_engine(list(run.get("engines") or [{"engine": "numpy", "device": "cpu",
                                                            "epoch": 0, "step": 0}]))
        return trainer

    def _engine_segment(self) -> dict:
        return {**self.engine.describe(), "epoch": self.epoch, "step": self.step}

    def _record_engine(self, previous: list) -> None:
        """Continue the run's list of engines; a change of engine or device is noted."""
        self.engines = previous
        last = previous[-1] if previous else {}
        now = self._engine_segment()
        if (last.get("engine"), last.get("device")) != (now["engine"], now["device"]):
            self.engines = previous + [now]
            self.history.append({"kind": "note", "event": "engine", "epoch": self.epoch,
                                 "step": self.step, "engine": now["engine"],
                                 "device": now["device"],
                                 "text": f"continued with the {now['engine']} engine on "
                                         f"{now['device']}"})

    def _change_lrs(self, lrs: dict) -> None:
        """New learning rates from the next epoch on, recorded in the run (see :meth:`resume`)."""
        unknown = sorted(set(lrs) - set(runs.LR_KEYS))
        if unknown:
            raise UsageError(f"lrs may change {list(runs.LR_KEYS)}; got {unknown}")
        old = {k: getattr(self.config, k) for k in runs.LR_KEYS}
        new = {k: float(v) for k, v in lrs.items() if v is not None and float(v) != old[k]}
        if not new:
            return
        try:
            config = self.config.replace(**new)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"invalid learning rate: {exc}") from exc
        self.config = config
        self.optimizer = self._rebuilt_optimizer()
        change = {"epoch": self.epoch, "step": self.step,
                  "old": {k: old[k] for k in new}, "new": new}
        self.lr_changes.append(change)
        self.history.append({"kind": "note", "event": "lr_change", **change,
                             "text": f"learning rates changed at resume: {change['new']}"})

    def _rebuilt_optimizer(self) -> Adam:
        """The optimizer of the (changed) config, carrying the current optimizer's state."""
        state = self.optimizer.state_dict()
        optimizer = self._make_optimizer()
        optimizer.load_state_dict(state)
        by_group = {"weights": "lr_weights", "gates": "lr_gates", "ranges": "lr_ranges"}
        for group in optimizer.param_groups:
            group["initial_lr"] = getattr(self.config, by_group[group["name"]])
        optimizer.schedule(self.epoch)
        return optimizer


def _bad_parameter(model: BBNet) -> str | None:
    """What is wrong with the parameters (a non-finite value, a range β ≤ 0), or None."""
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            bad = p.data[~np.isfinite(p.data)].flat[0]
            return f"parameter {name} became {bad}"
    for name, q in model.quantizers():
        if q.beta is not None and not float(q.beta.data) > 0:
            return f"the range β of {name} fell to {float(q.beta.data):.3g} (it must stay > 0)"
    return None


def check_checkpoint_meta(path: Path, meta: dict):
    """``(TrainConfig, run)`` from a checkpoint's metadata, every field's type checked."""
    def bad(what):
        return CheckpointError(f"{path}: {what}; it was not written by Trainer.save (or is "
                               "damaged) and cannot be resumed")

    missing = [k for k in ("config", "rng", "epoch", "step", "history") if k not in meta]
    if missing:
        raise bad(f"its metadata lacks {missing}")
    for key in ("epoch", "step"):
        if type(meta[key]) is not int or not 0 <= meta[key] < 2**53:
            raise bad(f"{key} should be a non-negative integer, got {repr(meta[key])[:30]}")
    if not isinstance(meta["config"], dict):
        raise bad("its config is not a JSON object")
    rng = meta["rng"]
    if not isinstance(rng, dict) or not all(isinstance(rng.get(k), dict) for k in ("data", "noise")):
        raise bad("its generator states ('rng': data, noise) are missing or not objects")
    for stream in ("data", "noise"):
        try:
            restore_rng(rng[stream])
        except CheckpointError as exc:
            raise bad(f"its {stream} generator: {exc}") from exc
    history = meta["history"]
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and h.get("kind") in ("step", "epoch", "note")
            for h in history):
        raise bad("its history is not a list of step/epoch records")
    run = meta.get("run", {})
    if not isinstance(run, dict) or not isinstance(run.get("id", ""), str) or not isinstance(
            run.get("lr_changes", []), list):
        raise bad("its run record (id, lr_changes) is malformed")
    engines = run.get("engines", [])
    if not isinstance(engines, list) or not all(
            isinstance(e, dict) and e.get("engine") in ENGINES for e in engines):
        raise bad(f"its list of engines should hold objects naming one of {list(ENGINES)}")
    try:
        config = TrainConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as exc:
        raise bad(f"its settings are invalid ({str(exc)[:120]})") from exc
    return config, run


def train(config: TrainConfig | None = None, out_dir=None, data=None, progress: bool = True,
          verbose: bool = True, engine: str = "numpy", device: str | None = None,
          **overrides) -> tuple[Trainer, dict]:
    """Train a model in one call: ``trainer, summary = train(epochs=3, mu=0.1)``."""
    config = (config or TrainConfig()).replace(**overrides)
    trainer = Trainer(config, out_dir=out_dir, data=data, progress=progress, verbose=verbose,
                      engine=engine, device=device)
    return trainer, trainer.fit()


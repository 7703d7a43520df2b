"""Settings shared by the course notebooks: small mode for CI, full mode for a class.

Every notebook that trains asks :func:`settings` how long to train::

    from bbits_ref.course import settings as course
    S = course.settings()               # small mode under CI, full mode otherwise
    trainer, summary = train(**S.lenet5.overrides(), lr_gates=1e-2)

* **Small mode** (:func:`small_mode` is True): when the environment variable ``BBITS_SMALL`` is
  truthy, or when ``CI`` is set and ``BBITS_SMALL`` does not say no (``BBITS_SMALL=0``).  Runs
  are tiny (a few optimizer steps) so that the whole notebook suite runs under
  ``pytest --nbval-lax notebooks/`` in a few minutes on two cores.  The notebooks then check
  only what a few steps can show (shapes, consistency, the BOP arithmetic).
* **Full mode**: what a class runs, at most 3 minutes per notebook on 2 cores.  The live runs
  stay short; what takes longer (15 and 100 epochs, the μ sweep, the ablations) comes from the
  committed runs of :mod:`bbits_ref.course.runs`, and the notebooks check on those what
  training taught (BOPs go down, larger μ gives fewer BOPs).

:func:`run_or_load` trains a configuration once and reloads the finished run from a cache
directory afterwards, so re-running a full-mode notebook does not retrain.
Notebooks: ``notebooks/00_tour.ipynb``, ``06``–``08``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["SMALL_ENV_VAR", "CACHE_ENV_VAR", "small_mode", "RunSettings", "CourseSettings",
           "settings", "run_or_load", "cache_key"]

SMALL_ENV_VAR = "BBITS_SMALL"
CACHE_ENV_VAR = "BBITS_COURSE_CACHE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(name: str, value: str) -> bool | None:
    """'1'/'true'/'yes'/'on' -> True, '0'/'false'/'no'/'off' -> False, '' -> None (unset)."""
    v = value.strip().lower()
    if v == "":
        return None
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={value!r} is not a yes/no value; use one of "
                     f"{', '.join(_TRUE)} (small mode) or {', '.join(_FALSE)} (full mode), or "
                     f"unset it")


def small_mode(environ=None) -> bool:
    """True when the notebooks should run their tiny CI versions.

    ``BBITS_SMALL`` decides when it is set (truthy: small; ``0``/``false``: full, even under
    CI); otherwise small mode follows ``CI`` (CI services set ``CI=true``; ``CI=false`` or
    ``CI=0`` counts as unset).  ``environ`` defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    small = _flag(SMALL_ENV_VAR, env.get(SMALL_ENV_VAR, ""))
    if small is not None:
        return small
    ci = env.get("CI", "").strip().lower()
    return ci not in ("", *_FALSE)


@dataclass(frozen=True)
class RunSettings:
    """How long one notebook run trains: epochs, how much data (None = all of it), batch size."""

    epochs: int
    train_limit: int | None
    test_limit: int | None
    log_every: int
    batch_size: int = 128          # the official batch size (docs/method.md §7.3)

    def overrides(self) -> dict:
        """Keyword arguments for :class:`~bbits_ref.training.trainer.TrainConfig` / :func:`~bbits_ref.training.trainer.train`."""
        return {"epochs": self.epochs, "train_limit": self.train_limit,
                "test_limit": self.test_limit, "log_every": self.log_every,
                "batch_size": self.batch_size}


@dataclass(frozen=True)
class CourseSettings:
    """Everything a notebook needs to know about the mode it runs in (see :func:`settings`).

    Attributes
    ----------
    small : small (CI) mode or not.
    tour : the short LeNet-5 run of ``00_tour``.
    lenet5 : the LeNet-5 run of ``06_lenet5_mnist`` (the "quick" preset, cut to 2 epochs in
        full mode; its 15 epochs are the committed run ``course-runs/mu0.1``).
    vgg7, vgg7_width : the VGG-7 run of ``07_vgg7_cifar10`` and its width multiplier.
    sweep, sweep_mus, sweep_lr_gates : every run of the short live μ sweep in
        ``08_pareto_and_ablations``, the μ values, and its gate learning rate (higher than the
        preset's so that gates move within the short runs).
    cache_dir : where :func:`run_or_load` keeps finished runs (None: no cache, small mode).
    """

    small: bool
    tour: RunSettings
    lenet5: RunSettings
    vgg7: RunSettings
    vgg7_width: float
    sweep: RunSettings
    sweep_mus: tuple
    sweep_lr_gates: float
    cache_dir: Path | None

    @property
    def mode(self) -> str:
        return "small" if self.small else "full"

    def describe(self) -> str:
        """One line per run, for the first cell of a notebook."""
        def fmt(r: RunSettings) -> str:
            train, test = ("all" if n is None else str(n) for n in (r.train_limit, r.test_limit))
            return (f"{r.epochs} epoch(s), {train} training / {test} test images, "
                    f"batch {r.batch_size}")
        return "\n".join([
            f"course mode: {self.mode} (set {SMALL_ENV_VAR}=1 for the tiny CI version, "
            f"{SMALL_ENV_VAR}=0 for the full one)",
            f"  tour:   {fmt(self.tour)}",
            f"  lenet5: {fmt(self.lenet5)}",
            f"  vgg7:   {fmt(self.vgg7)}, width {self.vgg7_width:g}",
            f"  sweep:  {fmt(self.sweep)} per run, μ in {list(self.sweep_mus)}, "
            f"gate lr {self.sweep_lr_gates:g}",
            f"  cache:  {self.cache_dir or 'off'}",
        ])


_SMALL = CourseSettings(
    small=True,
    tour=RunSettings(epochs=1, train_limit=1024, test_limit=500, log_every=2),
    lenet5=RunSettings(epochs=2, train_limit=768, test_limit=500, log_every=2),
    # VGG-7 steps are slow in NumPy: two small batches (batch norm needs > 1 value per channel)
    vgg7=RunSettings(epochs=1, train_limit=64, test_limit=100, log_every=1, batch_size=32),
    vgg7_width=0.125,
    sweep=RunSettings(epochs=1, train_limit=256, test_limit=200, log_every=1),
    sweep_mus=(0.01, 1.0),
    sweep_lr_gates=5e-2,
    cache_dir=None,
)

_FULL = CourseSettings(
    small=False,
    # A class-sized running time: every notebook runs in at most 3 minutes on 2 cores.  What
    # takes longer (15 and 100 epochs, the μ sweep, the ablations) is shown from committed runs
    # (bbits_ref.course.runs); the live runs only show that the same code trains.
    tour=RunSettings(epochs=1, train_limit=None, test_limit=None, log_every=10),
    # The "quick" preset of bbits_ref.training.trainer.PRESETS, cut to 2 of its 15 epochs.
    lenet5=RunSettings(epochs=2, train_limit=None, test_limit=None, log_every=20),
    vgg7=RunSettings(epochs=2, train_limit=1024, test_limit=500, log_every=2),
    vgg7_width=0.125,
    sweep=RunSettings(epochs=2, train_limit=2000, test_limit=1000, log_every=10),
    sweep_mus=(0.01, 0.1, 1.0),
    sweep_lr_gates=5e-2,
    cache_dir=None,        # filled in by settings()
)


def settings(small: bool | None = None, environ=None) -> CourseSettings:
    """The :class:`CourseSettings` of small mode or full mode (default: :func:`small_mode`).

    In full mode the run cache is ``$BBITS_COURSE_CACHE``, else ``<data root>/course-runs``
    (``~/.cache/bbits_ref/course-runs`` unless ``$BBITS_REF_DATA`` is set); an empty
    ``BBITS_COURSE_CACHE`` turns the cache off.
    """
    env = os.environ if environ is None else environ
    if small is None:
        small = small_mode(env)
    if not isinstance(small, bool):
        raise TypeError(f"small must be True, False or None (decide from the environment); "
                        f"got {small!r}")
    if small:
        return _SMALL
    if CACHE_ENV_VAR in env:
        cache = Path(env[CACHE_ENV_VAR]).expanduser() if env[CACHE_ENV_VAR].strip() else None
    else:
        from bbits_ref.datasets import data_root
        cache = data_root(environ=env) / "course-runs"
    return replace(_FULL, cache_dir=cache)


def cache_key(config, data_tag: str = "") -> str:
    """A short name for a run: the model, μ, and a hash of every setting, the data and the
    library version (a changed setting, data set or library gives another directory)."""
    from bbits_ref._version import __version__
    blob = json.dumps({"config": config.to_dict(), "data": data_tag, "version": __version__},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{config.model}-{config.dataset}-mu{config.mu:g}-{digest}"


def run_or_load(config, cache_dir=None, data=None, data_tag: str = "", progress: bool = True,
                verbose: bool = True):
    """Train ``config`` like :func:`bbits_ref.training.trainer.train`, or reload it if it was trained before.

    With ``cache_dir`` None this is just ``train(config, data=data)``.  Otherwise the run lives in
    ``cache_dir/<cache_key(config, data_tag)>``: a finished run there (its ``summary.json``
    exists) is restored from its checkpoint with :meth:`Trainer.resume` and not trained again;
    an unfinished or damaged one is trained again from the start.  Pass ``data_tag`` to tell
    apart runs on different ``data`` with the same config (e.g. a synthetic stand-in).

    Returns ``(trainer, summary)`` as :func:`~bbits_ref.training.trainer.train` does; ``trainer.history``
    holds the whole history either way.
    """
    from bbits_ref.training.checkpoints import CheckpointError
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer, train

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a bbits_ref.training.trainer.TrainConfig; got "
                        f"{type(config).__name__}. Build one with TrainConfig(epochs=..., ...)")
    if cache_dir is None:
        return train(config, data=data, progress=progress, verbose=verbose)
    out = Path(cache_dir) / cache_key(config, data_tag)
    if (out / "summary.json").is_file():
        try:
            trainer = Trainer.resume(out, data=data, progress=progress, verbose=verbose)
        except (CheckpointError, OSError, KeyError, ValueError) as exc:
            if verbose:
                print(f"cached run {out} is unreadable ({exc}); training it again")
        else:
            if trainer.epoch >= trainer.total_epochs:
                if verbose:
                    print(f"loaded the finished run from {out} (delete it to train again)")
                return trainer, trainer.summary()
    if out.exists():
        shutil.rmtree(out)
    trainer = Trainer(config, out_dir=out, data=data, progress=progress, verbose=verbose)
    return trainer, trainer.fit()

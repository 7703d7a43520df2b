"""Benchmark a Bayesian Bits LeNet-5 training step, a full-MNIST epoch and its peak memory.

    python benchmarks/train_step.py                 # step timing + one full-MNIST epoch
    python benchmarks/train_step.py --no-epoch      # step timing only (no MNIST needed)

Prints JSON:
* ``step_ms_median``: one training step of the official recipe (batch 128, float32, fresh gate
  noise, CE + μ·R, backward, Adam on three groups); data loading excluded;
* ``epoch_seconds``: one epoch over the 60,000 MNIST training images (469 steps, history
  records every 20 steps as in ``bbits-ref train``), measured in a child process, plus the
  test-set evaluation separately; ``peak_rss_mb``: that child's peak resident memory.
  Needs the MNIST IDX files (``--mnist-dir``, default ``<data root>/mnist``, the folder ``bbits-ref train --dataset mnist`` reads: ``$BBITS_REF_DATA`` or ``~/.cache/bbits_ref``); without them
  the epoch figures are extrapolated from the step time and marked so.
Targets: ≤ 120 ms per step, ≤ 1.5 GB peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import blas_info, clean_blas_env, machine, median_ms  # noqa: E402


def _trainer(data, **overrides):
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer
    config = TrainConfig(dataset="mnist", **overrides)
    return Trainer(config, data=data, progress=False)


def step_ms(repeats: int) -> float:
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.random((256, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    trainer = _trainer((x, y, x[:128], y[:128]))
    xb, yb = x[:128], y[:128]
    return median_ms(lambda: trainer.train_step(xb, yb, 0.1), repeats)


def one_epoch(mnist_dir: str) -> dict:
    """Runs in a child process: one epoch on full MNIST; reports times and peak memory."""
    from bbits_ref.datasets import load_dataset
    ds = load_dataset("mnist", data_dir=mnist_dir)
    trainer = _trainer(ds, data_dir=mnist_dir, epochs=1)
    t = time.perf_counter()
    trainer.train_epoch()          # includes the evaluation at the end of the epoch
    total = time.perf_counter() - t
    t = time.perf_counter()
    acc = trainer.evaluate()
    evaluation = time.perf_counter() - t
    return {"epoch_seconds": total - evaluation, "eval_seconds": evaluation,
            "epoch_steps": trainer.step, "test_accuracy_after_1_epoch": acc,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    removed = clean_blas_env(sys.argv)
    from bbits_ref._runtime import keep_freed_memory
    malloc_tuned = keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    from bbits_ref.datasets import data_root
    p.add_argument("--mnist-dir", default=str(data_root() / "mnist"),
                   help="folder of the MNIST IDX files (default: the data root's mnist/)")
    p.add_argument("--no-epoch", action="store_true")
    p.add_argument("--one-epoch-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-blas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE if set (slow on some CPUs)")
    args = p.parse_args()
    if args.one_epoch_child:
        print(json.dumps(one_epoch(args.mnist_dir)))
        return
    result = {"benchmark": "bayesian-bits lenet5 training step", "batch": 128, "dtype": "float32",
              "machine": machine(), "blas": blas_info(), "blas_env_removed": removed,
              "malloc_keeps_freed_memory": malloc_tuned,
              "step_ms_median": round(step_ms(args.repeats), 2), "repeats": args.repeats,
              "targets": {"step_ms": 120, "peak_rss_mb": 1536}}
    if not args.no_epoch:
        if Path(args.mnist_dir).is_dir():
            out = subprocess.run([sys.executable, __file__, "--one-epoch-child", "--mnist-dir",
                                  args.mnist_dir], capture_output=True, text=True, check=True,
                                 env=os.environ.copy())
            child = json.loads(out.stdout.strip().splitlines()[-1])
            result.update({k: round(v, 3) if isinstance(v, float) else v for k, v in child.items()})
        else:
            result["epoch_seconds_extrapolated"] = round(469 * result["step_ms_median"] / 1000, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

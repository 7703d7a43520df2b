"""Benchmark a Bayesian Bits LeNet-5 training step: the NumPy reference against torch_impl.

    python benchmarks/torch_vs_reference.py                 # median of 20 steps after 3 warm-ups
    python benchmarks/torch_vs_reference.py --threads 1     # both sides on one thread

Both sides run the same step of the official recipe (docs/method.md §7.3): batch 128, float32, fresh gate
noise every step, loss = mean cross-entropy + μ·Σ R_t with μ = 0.1, backward, Adam (lr 1e-3) on
the three parameter groups (weights, gate logits, ranges).  The torch network starts from the
reference network's weights (``from_reference``), and both see the same batch.  Thread counts
are equal: NumPy's BLAS is limited to ``--threads`` with threadpoolctl and torch gets
``torch.set_num_threads(--threads)``; the default is the BLAS thread count threadpoolctl
reports (2 without threadpoolctl).  Prints JSON:

* ``reference_ms`` / ``torch_ms``: median milliseconds per step (after ``--warmup`` steps),
  the reference first; ``speedup``: reference / torch;
* ``initial_loss``: the loss of both on the first batch with the same gate noise, before any
  step (equal to float32 precision: both time the same network);
* ``threads``, ``blas``, ``torch``, ``machine``: the environment.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import (blas_info, blas_threads, clean_blas_env, limit_threads, machine,  # noqa: E402
                     median_ms)

BATCH, MU, LR = 128, 0.1, 1e-3


def build(seed: int):
    import numpy as np

    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer
    rng = np.random.default_rng(seed)
    x = rng.random((2 * BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 2 * BATCH)
    trainer = Trainer(TrainConfig(dataset="mnist", seed=seed, mu=MU), data=(x, y, x[:BATCH],
                      y[:BATCH]), progress=False, verbose=False)
    return trainer, x[:BATCH], y[:BATCH]


def torch_step_fn(ref_model, xb, yb, seed: int):
    import torch
    import torch.nn.functional as F

    from bbits_ref.torch_impl import from_reference
    model = from_reference(ref_model)
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam([{"params": groups[k]} for k in ("weights", "gates", "ranges")],
                                 lr=LR)
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.as_tensor(xb), torch.as_tensor(yb)

    def step():
        optimizer.zero_grad()
        logits = model(x, noise=model.sample_noise(generator))
        loss = F.cross_entropy(logits, y) + MU * model.regularizer()
        loss.backward()
        optimizer.step()
    return model, step


def initial_losses(trainer, model, xb, yb) -> dict:
    """Loss of both networks on the same batch and the same gate noise (no step taken)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from bbits_ref.autograd import ops
    from bbits_ref.autograd.engine import no_grad
    noise = trainer.model.sample_noise(np.random.default_rng(123))
    with no_grad():
        ref = (ops.cross_entropy(trainer.model(xb, noise=noise), yb)
               + MU * trainer.model.regularizer())
    with torch.no_grad():
        t = F.cross_entropy(model(torch.as_tensor(xb), noise=noise), torch.as_tensor(yb)) \
            + MU * model.regularizer()
    # sampling noise above advanced no optimizer state; the BN-free LeNet-5 has no running stats
    return {"reference": float(ref.data), "torch": float(t)}


def main() -> None:
    removed = clean_blas_env(sys.argv)
    from bbits_ref._runtime import keep_freed_memory
    malloc_tuned = keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both sides (default: NumPy's BLAS thread count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-blas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE if set (slow on some CPUs)")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("this benchmark needs PyTorch: pip install 'bbits_ref[torch]'")

    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    threads = args.threads or blas_threads()
    limiter = limit_threads(threads)
    torch.set_num_threads(threads)
    trainer, xb, yb = build(args.seed)
    model, torch_step = torch_step_fn(trainer.model, xb, yb, args.seed)
    losses = initial_losses(trainer, model, xb, yb)
    # One side after the other, not interleaved: idle BLAS / OpenMP worker threads keep spinning
    # for a while after their library returns, and would slow down the other side.
    ref_ms = median_ms(lambda: trainer.train_step(xb, yb, MU), args.repeats, args.warmup)
    torch_ms = median_ms(torch_step, args.repeats, args.warmup)
    result = {
        "benchmark": "bayesian-bits lenet5 training step: numpy reference vs torch_impl",
        "config": {"batch": BATCH, "dtype": "float32", "mu": MU, "optimizer": "Adam lr 1e-3, "
                   "3 groups", "repeats": args.repeats, "warmup": args.warmup,
                   "seed": args.seed},
        "reference_ms": round(ref_ms, 2),
        "torch_ms": round(torch_ms, 2),
        "speedup": round(ref_ms / torch_ms, 2),
        "initial_loss": losses,
        "threads": {"numpy_blas": threads if limiter is not None else "unlimited "
                    "(pip install threadpoolctl)", "torch": torch.get_num_threads()},
        "torch": torch.__version__,
        "machine": machine(), "blas": blas_info(), "blas_env_removed": removed,
        "malloc_keeps_freed_memory": malloc_tuned,
        "load_average_1min": load,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

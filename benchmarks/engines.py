"""Benchmark the training engines of ``bbits-ref train``: ``--engine numpy`` and ``torch``.

    python benchmarks/engines.py                       # LeNet-5, VGG-7 width 0.25 and 1, CPU
    python benchmarks/engines.py --threads 1           # both engines on one thread
    python benchmarks/engines.py --no-vgg              # LeNet-5 only (seconds)
    python benchmarks/engines.py --widths 0.25         # skip the (slow) full-width VGG-7

Every figure is one step of ``Trainer``'s loop as ``bbits-ref train`` runs it (the official
recipe, docs/method.md §7.3): batch 128, float32, fresh gate noise from the run's NumPy generator,
CE + μ·R (μ = 0.1), backward, Adam on the three parameter groups; the torch engine also counts
copying the noise to its device (its batch comes from the training set it keeps on the device,
``TorchEngine.epoch_batches``, as in ``bbits-ref train``).  Both engines start from the same
weights and see the same batches.  They are measured side by side, interleaved (``--block`` steps of one,
then of the other, ``--repeats`` times), on the same number of threads (NumPy's BLAS limited
with threadpoolctl, ``torch.set_num_threads``), so other work on the machine slows both alike;
compare ``torch_over_numpy`` (torch time / numpy time; target for LeNet-5 ≤ 0.5).

Per workload it prints (JSON) the median step time of each engine in ms, the evaluation time
of 1,000 test images, and from them the seconds per epoch (steps per epoch × step +
evaluation of the test set) and, for VGG-7, the hours of the paper's CIFAR-10 schedule (300
epochs of 50,000 images).  On a machine with a CUDA GPU the torch engine is timed there too
(``gpu``).  Data are random images of the dataset's shape: timing does not depend on them.
"""
from __future__ import annotations

import argparse
import subprocess
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import blas_info, blas_threads, clean_blas_env, limit_threads, machine  # noqa: E402

BATCH, MU, EVAL_BATCH = 128, 0.1, 250
#: (training images, test images, paper epochs) of each dataset (docs/method.md §7.3).
DATASETS = {"mnist": (60000, 10000, 100), "cifar10": (50000, 10000, 300)}


def make_trainer(dataset: str, width: float, engine: str, device: str, seed: int):
    """A Trainer of the official recipe on random data of the dataset's shape, ready to step."""
    import numpy as np

    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer
    rng = np.random.default_rng(seed)
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    x = rng.standard_normal((2 * BATCH, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 2 * BATCH)
    config = TrainConfig(dataset=dataset, width=width, seed=seed, mu=MU)
    trainer = Trainer(config, data=(x, y, np.concatenate([x] * 4)[:1000],
                                    np.concatenate([y] * 4)[:1000]),
                      progress=False, verbose=False, engine=engine, device=device)
    trainer.optimizer.schedule(0)
    trainer._set_phase()
    trainer.engine.begin_epoch()
    trainer.model.train()
    xb, yb = next(iter(trainer.engine.epoch_batches(BATCH)))    # the loop's first batch
    return trainer, xb, yb


def _sync(trainer) -> None:
    if trainer.engine.device == "cuda":
        trainer.engine.torch.cuda.synchronize()


def timed_steps(trainer, xb, yb, n: int) -> list[float]:
    """Seconds of each of ``n`` steps (the device synchronised at the end of each)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        trainer.engine.train_step(xb, yb, MU)
        _sync(trainer)
        times.append(time.perf_counter() - t)
    return times


def eval_seconds(trainer) -> float:
    """Seconds to evaluate the 1,000 test images (the engine's own evaluation, in batches of
    250: the numpy engine's full-width VGG-7 would need ~10 GB for the default 1,000)."""
    trainer.evaluate(EVAL_BATCH)                             # warm-up (and device upload)
    t = time.perf_counter()
    trainer.evaluate(EVAL_BATCH)
    _sync(trainer)
    return time.perf_counter() - t


def _child(spec: dict) -> dict:
    """One engine in a process of its own: ``warmup`` steps, then ``block`` timed steps (and the
    evaluation time if asked).  See :func:`side_by_side`."""
    trainer, xb, yb = make_trainer(spec["dataset"], spec["width"], spec["engine"], spec["device"],
                                   spec["seed"])
    timed_steps(trainer, xb, yb, spec["warmup"])
    out = {"times": timed_steps(trainer, xb, yb, spec["block"])}
    if spec.get("eval"):
        out["eval"] = eval_seconds(trainer)
    return out


def _run_child(spec: dict, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def side_by_side(dataset: str, width: float, engines: list, repeats: int, block: int,
                 warmup: int, seed: int, threads: int) -> dict:
    """Step timings of ``engines`` [(name, device)] on one workload, interleaved round by round.

    Each round runs every engine in a fresh process of its own, one after the other: in one
    process, the idle BLAS threads of one engine would spin on the cores the other one needs
    (measured: that alone made the torch engine look 2× slower than NumPy at 2 threads).
    """
    import numpy as np
    keys = {f"{e}-{d}": (e, d) for e, d in engines}
    times = {k: [] for k in keys}
    evals = {}
    for r in range(repeats):
        for key, (engine, device) in keys.items():
            spec = dict(dataset=dataset, width=width, engine=engine, device=device, seed=seed,
                        warmup=warmup, block=block, eval=r == repeats - 1)
            got = _run_child(spec, threads)
            times[key] += got["times"]
            if "eval" in got:
                evals[key] = got["eval"]
    n_train, n_test, epochs = DATASETS[dataset]
    steps = math.ceil(n_train / BATCH)
    out = {}
    for key in keys:
        step_s = float(np.median(times[key]))
        ev = evals[key] * n_test / 1000
        epoch_s = steps * step_s + ev
        out[key] = {"step_ms": round(1000 * step_s, 2),
                    "step_ms_min": round(1000 * min(times[key]), 2),
                    "eval_1000_ms": round(1000 * ev * 1000 / n_test, 1),
                    "epoch_seconds": round(epoch_s, 1),
                    "paper_schedule_hours": round(epochs * epoch_s / 3600, 1)}
    return out


def _kernels_info() -> str:
    """Whether the torch engine's quantizer runs as compiled kernels on the CPU (numba)."""
    from bbits_ref.torch_impl import kernels
    if not kernels.available():
        return "off: numba is not installed (pip install numba)"
    import numba
    return f"numba {numba.__version__}" if kernels.enabled() else "off: BBITS_REF_KERNELS=0"


def main() -> None:
    removed = clean_blas_env(sys.argv)
    # Each engine runs in a process of its own (side_by_side), so torch's OpenMP workers keep
    # their default spin-waiting: OMP_WAIT_POLICY=PASSIVE made a 2-thread torch step 5× slower.
    from bbits_ref._runtime import keep_freed_memory
    malloc_tuned = keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both engines (default: NumPy's BLAS thread count)")
    p.add_argument("--repeats", type=int, default=6, help="rounds of LeNet-5 steps")
    p.add_argument("--block", type=int, default=3, help="steps of one engine per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vgg-repeats", type=int, default=2, help="rounds of VGG-7 steps (1 step each)")
    p.add_argument("--widths", default="0.25,1", help="VGG-7 widths, comma-separated")
    p.add_argument("--no-vgg", action="store_true")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU even if one is present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-blas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE if set (slow on some CPUs)")
    p.add_argument("--child", help=argparse.SUPPRESS)       # internal: one engine, one process
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("this benchmark needs PyTorch: pip install 'bbits-ref[torch]'")
    threads = args.threads or blas_threads()
    limiter = limit_threads(threads)
    torch.set_num_threads(threads)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    gpu = torch.cuda.is_available() and not args.no_gpu
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    result = {"benchmark": "bbits-ref train: a training step of --engine numpy and --engine torch",
              "config": {"batch": BATCH, "dtype": "float32", "mu": MU, "threads": threads,
                         "repeats": args.repeats, "block": args.block,
                         "vgg_repeats": args.vgg_repeats, "seed": args.seed}}
    cpu = [("numpy", "cpu"), ("torch", "cpu")]
    lenet = side_by_side("mnist", 1.0, cpu, args.repeats, args.block, args.warmup, args.seed,
                         threads)
    lenet["torch_over_numpy"] = round(lenet["torch-cpu"]["step_ms"]
                                      / lenet["numpy-cpu"]["step_ms"], 3)
    result["lenet5"] = lenet
    if gpu:
        result["lenet5"]["gpu"] = side_by_side("mnist", 1.0, [("torch", "cuda")], args.repeats,
                                               args.block, args.warmup, args.seed,
                                               threads)["torch-cuda"]
    if not args.no_vgg:
        for width in [float(w) for w in args.widths.split(",") if w.strip()]:
            vgg = side_by_side("cifar10", width, cpu, args.vgg_repeats, 1, 1, args.seed, threads)
            vgg["torch_over_numpy"] = round(vgg["torch-cpu"]["step_ms"]
                                            / vgg["numpy-cpu"]["step_ms"], 3)
            if gpu:
                vgg["gpu"] = side_by_side("cifar10", width, [("torch", "cuda")], 10, 1, 3,
                                          args.seed, threads)["torch-cuda"]
            result[f"vgg7_width_{width:g}"] = vgg
    result["environment"] = {
        "threads": {"numpy_blas": threads if limiter is not None else "unlimited "
                    "(pip install threadpoolctl)", "torch": torch.get_num_threads()},
        "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if gpu else None,
        "torch_cpu_kernels": _kernels_info(),
        "machine": machine(), "blas": blas_info(), "blas_env_removed": removed,
        "malloc_keeps_freed_memory": malloc_tuned, "load_average_1min": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

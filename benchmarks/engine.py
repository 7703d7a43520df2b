"""How fast is the NumPy engine?  Two timings, printed as JSON (see benchmarks/README.md).

* ``conv2d_fwd_bwd``: forward and backward of one ``ops.conv2d`` (batch 128, 32 -> 64 channels,
  5x5 kernel, 12x12 input, float32; input and weight both need a gradient).
* ``lenet5_train_step``: one full-precision LeNet-5 training step on MNIST-shaped random data
  (batch 128): forward, cross-entropy, backward, Adam update.

When PyTorch is importable the same two are timed in PyTorch, with as many threads as NumPy's BLAS
uses, and the ratios NumPy / PyTorch are reported.  Each figure is the median of ``--repeats``
runs after ``--warmup`` unmeasured ones.

    python benchmarks/engine.py [--repeats 20] [--warmup 3] [--no-torch]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import numpy as np

try:
    import bbits_ref  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`: use the repository's copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bbits_ref.autograd import nn  # noqa: E402
from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor, no_grad  # noqa: E402
from bbits_ref.autograd.optim import Adam  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import clean_blas_env, wall_times  # noqa: E402

BATCH = 128
CONV_INPUT, CONV_WEIGHT = (BATCH, 32, 12, 12), (64, 32, 5, 5)


def time_ms(step, repeats: int, warmup: int) -> tuple[float, float]:
    """(median, minimum) wall time of ``step()`` in ms, after ``warmup`` unmeasured calls.

    The median is the figure we report; the minimum is less disturbed by other work on a busy
    machine (interference only ever adds time), so a large gap between the two flags a noisy run.
    """
    times = wall_times(step, repeats, warmup)
    return round(1e3 * statistics.median(times), 3), round(1e3 * min(times), 3)


def time_all(steps: dict, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Time each named step: ({name: median ms}, {name: min ms})."""
    timed = {name: time_ms(step, repeats, warmup) for name, step in steps.items()}
    return ({k: v[0] for k, v in timed.items()}, {k: v[1] for k, v in timed.items()})


def blas_info() -> dict:
    """Which BLAS NumPy calls and with how many threads (threadpoolctl when installed)."""
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                          "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return {"source": "threadpoolctl", "library": p.get("internal_api"),
                    "version": p.get("version"), "kernel": p.get("architecture"),
                    "num_threads": p.get("num_threads"), "env": env}
    # Without threadpoolctl: the name NumPy was built against, and assume one thread per core.
    try:
        build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        library, version = build.get("name"), build.get("version")
    except Exception:  # the layout of show_config is not a stable API
        library, version = None, None
    return {"source": "numpy build info + os.cpu_count()", "library": library, "version": version,
            "kernel": None, "num_threads": os.cpu_count(), "env": env}


# -- conv2d -----------------------------------------------------------------------------------

def conv_data(rng: np.random.Generator):
    x = rng.standard_normal(CONV_INPUT, dtype=np.float32)
    w = 0.05 * rng.standard_normal(CONV_WEIGHT, dtype=np.float32)
    out_shape = (BATCH, CONV_WEIGHT[0], CONV_INPUT[2] - 4, CONV_INPUT[3] - 4)
    g = rng.standard_normal(out_shape, dtype=np.float32)  # the upstream gradient
    return x, w, g


def numpy_conv_step(x, w, g):
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)

    def step():
        xt.grad = wt.grad = None  # gradients accumulate: start each run from zero
        ops.conv2d(xt, wt).backward(g)
    return step


def torch_conv_step(torch, x, w, g):
    xt = torch.from_numpy(x.copy()).requires_grad_()
    wt = torch.from_numpy(w.copy()).requires_grad_()
    gt = torch.from_numpy(g.copy())

    def step():
        xt.grad = wt.grad = None
        torch.nn.functional.conv2d(xt, wt).backward(gt)
    return step


# -- LeNet-5 ----------------------------------------------------------------------------------

def numpy_lenet(rng: np.random.Generator) -> nn.Sequential:
    """conv 1->32 5x5, relu, pool 2, conv 32->64 5x5, relu, pool 2, fc 1024->512, relu, fc 512->10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 512, rng=rng), nn.ReLU(), nn.Linear(512, 10, rng=rng))


def torch_lenet(torch, state: dict):
    """The same network in PyTorch, with the NumPy model's weights (parameter names match)."""
    tnn = torch.nn
    model = tnn.Sequential(
        tnn.Conv2d(1, 32, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(1024, 512), tnn.ReLU(), tnn.Linear(512, 10))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model


def lenet_data(rng: np.random.Generator):
    images = rng.standard_normal((BATCH, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, size=BATCH)
    return images, labels


def numpy_lenet_step(model, images, labels):
    optimizer = Adam(model.parameters(), lr=1e-3)
    x = Tensor(images)

    def step():
        optimizer.zero_grad()
        loss = ops.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
    return step


def torch_lenet_step(torch, model, images, labels):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return step


# -- main -------------------------------------------------------------------------------------

def run(repeats: int = 20, warmup: int = 3, seed: int = 0, use_torch: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    blas = blas_info()
    x, w, g = conv_data(rng)
    images, labels = lenet_data(rng)
    model = numpy_lenet(rng)
    state = {k: v.copy() for k, v in model.state_dict().items()}  # before Adam changes it
    with no_grad():
        numpy_initial_loss = float(ops.cross_entropy(model(Tensor(images)), labels).item())

    numpy_ms, numpy_min_ms = time_all({
        "conv2d_fwd_bwd": numpy_conv_step(x, w, g),
        "lenet5_train_step": numpy_lenet_step(model, images, labels),
    }, repeats, warmup)
    result = {
        "config": {"repeats": repeats, "warmup": warmup, "seed": seed, "batch": BATCH,
                   "dtype": "float32", "conv_input": "x".join(map(str, CONV_INPUT)),
                   "conv_weight": "x".join(map(str, CONV_WEIGHT))},
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "machine": platform.machine(), "cpu_count": os.cpu_count(),
                        # other work on the machine slows every figure: check this before comparing
                        "load_average_1min": round(os.getloadavg()[0], 2), "blas": blas},
        "numpy_ms": numpy_ms, "torch_ms": None, "numpy_over_torch": None,
        "numpy_min_ms": numpy_min_ms, "torch_min_ms": None,
    }

    torch = None
    if use_torch:
        try:
            import torch
        except ImportError:
            result["environment"]["torch"] = "not installed"
    if torch is not None:
        threads = int(blas["num_threads"] or os.cpu_count() or 1)
        torch.set_num_threads(threads)  # a fair comparison: the same thread count as NumPy's BLAS
        tmodel = torch_lenet(torch, state)
        # Same weights and data, so the first losses must agree: a check that we time the same net.
        initial = {"numpy": numpy_initial_loss}
        with torch.no_grad():
            initial["torch"] = float(torch.nn.functional.cross_entropy(
                tmodel(torch.from_numpy(images)), torch.from_numpy(labels)))
        torch_ms, torch_min_ms = time_all({
            "conv2d_fwd_bwd": torch_conv_step(torch, x, w, g),
            "lenet5_train_step": torch_lenet_step(torch, tmodel, images, labels),
        }, repeats, warmup)
        result["environment"].update(torch=torch.__version__, torch_threads=threads)
        result["torch_ms"], result["torch_min_ms"] = torch_ms, torch_min_ms
        result["numpy_over_torch"] = {k: round(numpy_ms[k] / torch_ms[k], 2) for k in numpy_ms}
        result["lenet5_initial_loss"] = initial
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="measured runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and weights")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0; got {args.repeats} and "
                     f"{args.warmup}")
    result = run(args.repeats, args.warmup, args.seed, use_torch=not args.no_torch)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    clean_blas_env(sys.argv)                  # re-runs without OPENBLAS_CORETYPE/_L2_SIZE if set
    from bbits_ref._runtime import keep_freed_memory
    keep_freed_memory()
    sys.exit(main([a for a in sys.argv[1:] if a != "--keep-blas-env"]))

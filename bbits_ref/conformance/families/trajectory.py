"""The ``lenet5_train/…`` cases (docs/method.md §7.3): K training steps of LeNet-5.

A single step (:mod:`.lenet5`) cannot show what only builds up over steps: an optimizer formula
(where Adam adds its ε), a regularizer or a MAC weight that is slightly off and steers the gates,
the hard cut switching a gate off in the middle of training.  These cases run
:data:`STEPS` = 20 steps of the MNIST recipe (mean cross-entropy + μ·Σ_t R_t with μ = 0.1, the
φ ≤ −2 hard cut, Adam with lr 1e−3, β = (0.9, 0.999), ε = 1e−8 on each of the three parameter
groups) on fixed data (a new batch of 32 embedded MNIST training images per step) with fixed
gate noise, and compare the loss of every step and every parameter at the end.

* ``lenet5_train/mnist_recipe`` starts where the recipe starts: φ4 = φ8 = 6, φ16 = φ32 = −6,
  φ2 = 6 (8-bit weights and activations, nothing pruned), with gate noise u ≥ 0.05, so that every
  sample is clamped at 1 (at the recipe's start 98.8% are).  The gate logits then get only the
  regularizer's gradient, which is smooth: float32 follows float64 to 1e−6 over the 20 steps.
  That gradient is tiny (≈1e−7 for a pruning logit at 6: comparable to Adam's ε), so where Adam
  adds ε shows in the gate logits.
* ``lenet5_train/mixed_gates`` starts from the gates of ``lenet5_step/mixed_gates``: low bit
  widths, fractional samples, pruned channels, a gate cut from the start (conv2.act φ8 = −2)
  and one that the regularizer pushes across the cut between steps 1 and 2 (conv2.weight
  φ8 = −1.9985).

How the tolerances (:data:`TOLERANCES`) were set.  A quantized network trained with Adam does
not follow a float64 trajectory to float32 precision: a weight or an activation that lands within
rounding error of a rounding tie moves by a whole step s_b in one precision and not in the other,
and Adam, which divides by √v, turns a near-zero gradient into a step of ±lr whatever its size.
So the trajectories part slowly: the losses agree to 1e−6 at the first step and to a few 1e−3
after 20, and single weights end up to 14 lr-steps apart.  :func:`measure_drift` measures the
largest difference from the float64 expected values per output group (and per step for the
losses); ``tests/test_conformance_trajectory.py`` re-measures it for the float32 reference and
the PyTorch port.  Measured on x86-64 (NumPy with OpenBLAS, torch 2.x CPU), 20 steps:

==============  =======================  =======================  ===========================
output          reference float32        torch_impl float32       tolerance (absolute)
                recipe / mixed           recipe / mixed           recipe / mixed
==============  =======================  =======================  ===========================
loss, step 1    9.9e−7 / 9.3e−9          1.5e−6 / 4.7e−7          2e−5
loss, step k    ≤ 3.8e−3 / ≤ 4.5e−3      ≤ 4.5e−3 / ≤ 1.1e−2      5e−3·2^(k−2), at most
                                                                  5e−2 / 1e−1
weights, biases 1.4e−2 / 1.6e−2          1.4e−2 / 1.9e−2          1e−1 / 2e−1
gate logits     9.0e−7 / 1.0e−2          9.0e−7 / 2.0e−2          2e−5 / 2e−1
ranges (β)      2.4e−4 / 7.5e−4          3.2e−4 / 8.9e−4          5e−3 / 1e−2
==============  =======================  =======================  ===========================

The loss tolerance of step k (1-based) is :func:`loss_tolerances`: 2e−5 at step 1, where nothing
has moved yet (the single step's precision), then 5e−3 doubling every step up to the cap; it is
at least 9× the drift measured at that step (mostly 20–300×), and every other tolerance at
least 7× (mostly 10–20×).  The weights' tolerance is therefore only a coarse check (a wrong
learning rate, a group left untrained); the sharp checks are the losses of the first steps and,
in ``mnist_recipe``, the gate logits.  The mistakes of :mod:`bbits_ref.conformance.mutants` land
far outside: a regularizer divided by the batch size moves the losses by 1.9–3.5, conv1 and conv2
swapping MAC counts by 1.0 (``mnist_recipe``) and 6.7e−2 at step 1 (``mixed_gates``), and
PyTorch 1.1's placement of ε moves the ``mnist_recipe`` gate logits by up to 5.9e−3 (300× the
tolerance); its effect on ``mixed_gates`` stays within that case's tolerances, so only
``mnist_recipe`` catches it.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.conformance.families._common import away_from_kinks, f32, hc_kinks
from bbits_ref.conformance.families.lenet5 import set_mixed_gates
from bbits_ref.conformance.protocol import SEED, Case, call, flatten

__all__ = ["cases", "trajectory_fixture", "measure_drift", "loss_tolerances", "STEPS", "BATCH",
           "ADAM", "TOLERANCES"]

#: Training steps per case and images per step.
STEPS, BATCH = 20, 32
#: The recipe's Adam (§7.3): PyTorch's defaults with lr 1e−3, one optimizer per parameter group.
ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
MU = 0.1
#: conv2.weight's φ8 in ``mixed_gates``: the regularizer pushes it below −2 between steps 1 and 2.
CROSSING_LOGIT = -1.9985


def loss_tolerances(cap: float) -> tuple:
    """Per-step loss tolerances: 2e−5 for the first step (nothing has moved yet: the single-step
    precision), then 5e−3 doubling every step up to ``cap`` (module docstring)."""
    return tuple(2e-5 if k == 0 else min(cap, 5e-3 * 2.0 ** (k - 1)) for k in range(STEPS))


def _tolerances(losses, weights, gates, ranges) -> dict:
    return {"losses": (loss_tolerances(losses), 0.0), "params/*.weight": (weights, 0.0),
            "params/*.bias": (weights, 0.0), "params/*.gate_logits": (gates, 0.0),
            "params/*.prune_logits": (gates, 0.0), "params/*.beta": (ranges, 0.0)}


#: Absolute tolerances per case and output (module docstring: measured float32 drift, margin).
TOLERANCES = {"mnist_recipe": _tolerances(5e-2, 1e-1, 2e-5, 5e-3),
              "mixed_gates": _tolerances(1e-1, 2e-1, 2e-1, 1e-2)}


def trajectory_fixture(label: str, seed: int) -> dict:
    """Inputs of one ``lenet5_train`` case: params, x (K, 32, 1, 28, 28), y (K, 32), noise
    {quantizer: {"prune": (K, C), "chain": (K, 4)}}, μ and Adam's hyper-parameters.

    ``label`` "mnist_recipe" keeps the recipe's initial gates; "mixed_gates" sets those of
    :data:`~.lenet5.LENET5_CHAINS`, random pruning logits and moves the weights off rounding
    ties.  Every array is float32-representable.
    """
    from bbits_ref.datasets import load_embedded_mnist, normalize_mnist
    from bbits_ref.method.models import lenet5

    rng = np.random.default_rng(seed)
    data = load_embedded_mnist()
    n = 2 + STEPS * BATCH
    images = normalize_mnist(data.x_train[:n]).astype(np.float64)
    model = lenet5(rng=rng, dtype=np.float64)
    model.initialize(images[:2], rng)
    params = {k: (f32(v) if v.dtype.kind == "f" else v) for k, v in model.state_dict().items()}
    if label == "mixed_gates":
        set_mixed_gates(model, params, rng)
    elif label != "mnist_recipe":
        raise ValueError(f"label must be 'mnist_recipe' or 'mixed_gates'; got {label!r}")
    if label == "mixed_gates":
        # crossing the cut half-way between two steps (Adam moves it by ≈ lr = 1e−3 per step),
        # not at a float32 tie: −1.999 − 1e−3 would land on −2 itself
        params["conv2.weight_quantizer.gate_logits"][1] = f32(CROSSING_LOGIT)
    steps = [model.sample_noise(rng) for _ in range(STEPS)]
    noise = {}
    for name, _ in model.quantizers():
        noise[name] = {}
        for key, logit_key in (("prune", "prune_logits"), ("chain", "gate_logits")):
            if key not in steps[0][name]:
                continue
            u = np.stack([s[name][key] for s in steps])
            if label == "mnist_recipe":
                # every sample of a logit 6 clamped at 1 (u ≥ 0.05; at the recipe's start 98.8%
                # are): the gate logits then get the regularizer's gradient only
                u = 0.05 + 0.95 * u
            noise[name][key] = away_from_kinks(rng, params[f"{name}.{logit_key}"], u, hc_kinks)
    x = images[2:n].reshape(STEPS, BATCH, 1, 28, 28)
    y = data.y_train[2:n].astype(np.int64).reshape(STEPS, BATCH)
    return {"params": params, "x": x, "y": y, "noise": noise, "mu": MU, **ADAM}


_NOTES = {
    "mnist_recipe": "the recipe's initial gates (8-bit weights and activations, nothing pruned) "
                    "with every gate sample 1 (noise u ≥ 0.05), so the gate logits move by the "
                    "regularizer alone: its gradient (≈1e-7 for a pruning logit) is comparable "
                    "to Adam's ε, so the gate logits show where ε is added",
    "mixed_gates": "the gates of lenet5_step/mixed_gates: low bit widths, fractional samples, "
                   "pruned channels, conv2.act φ8 = −2 cut from the start, conv2.weight φ8 = "
                   "−1.9985 pushed across the cut by the regularizer between steps 1 and 2",
}
_TOLERANCE_NOTES = {
    "mnist_recipe": "losses 2e-5 at step 1, then 5e-3 doubling per step up to 5e-2; weights "
                    "and biases 1e-1, gate logits 2e-5, ranges 5e-3",
    "mixed_gates": "losses 2e-5 at step 1, then 5e-3 doubling per step up to 1e-1; weights, "
                   "biases and gate logits 2e-1, ranges 1e-2",
}


def cases() -> list:
    """The trajectory cases (each with its own seed; expected values not set)."""
    out = []
    for i, label in enumerate(("mnist_recipe", "mixed_gates")):
        out.append(Case(
            f"lenet5_train/{label}", "lenet5_train", trajectory_fixture(label, SEED + 1 + i),
            0.0, 0.0,
            f"{STEPS} steps of LeNet-5 under the MNIST recipe from {_NOTES[label]}: batch "
            f"{BATCH}, μ = {MU}, hard cut on, Adam lr 1e-3, β = (0.9, 0.999), ε = 1e-8 "
            "(PyTorch ≥ 1.5: ε added after the bias correction) on weights, gate logits and "
            "ranges; the loss of every step and every parameter at the end.  Float32 "
            "trajectories part from float64 ones (rounding ties, Adam's division by √v): "
            "absolute tolerances ≥ 7× the measured float32 drift (bbits_ref.conformance."
            f"families.trajectory): {_TOLERANCE_NOTES[label]}", "§7.3, §4.3, §3.5",
            dict(TOLERANCES[label])))
    return out


def measure_drift(adapter, reference=None, labels=("mnist_recipe", "mixed_gates")) -> dict:
    """Largest |adapter − reference| per output group over the trajectory cases ``labels``.

    ``reference`` defaults to the float64 reference.  Returns {"losses" (the largest over the
    steps), "losses_by_step" (array (K,)), "weights", "gates", "ranges"}: the measurement the
    tolerances were set from.
    """
    from bbits_ref.conformance import reference as reference_module

    reference = reference_module.adapter if reference is None else reference
    worst = {"losses": 0.0, "losses_by_step": np.zeros(STEPS), "weights": 0.0, "gates": 0.0,
             "ranges": 0.0}
    for case in cases():
        if case.name.split("/")[1] not in labels:
            continue
        got, want = (flatten(call(a, case.method, case.inputs)) for a in (adapter, reference))
        for key, value in want.items():
            diff = np.abs(np.asarray(got[key], dtype=np.float64) - value)
            if key == "losses":
                worst["losses_by_step"] = np.maximum(worst["losses_by_step"], diff)
            group = ("losses" if key == "losses" else "ranges" if key.endswith(".beta")
                     else "gates" if key.endswith("_logits") else "weights")
            worst[group] = max(worst[group], float(diff.max()))
    return worst

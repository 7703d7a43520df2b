"""Conformance suite: check a (fast) Bayesian Bits implementation against the reference.

Sections (§) refer to ``docs/method.md``.

An implementation is wrapped in an *adapter*: any object with a ``name`` attribute and some of
the methods below.  All arrays in and out are NumPy arrays (the adapter converts to its own
framework and dtype).  A case whose method the adapter lacks, or that raises
``NotImplementedError``, is reported as skipped, never as failed.  Each call runs in a child
process with a time limit: an adapter that raises, exits, crashes, hangs or returns the wrong
type fails that case ("could not run") and the check goes on.

``quantize(x, beta, z2, z4, z8, z16, z32, *, signed, grad_out) -> dict``
    The quantizer of §2 in training mode (STE rounding, the official ReLU-form clip,
    chained steps; a gate that is None or exactly 0 is off and the residuals above it are
    skipped, so its gradient is 0).  x: any shape, axis 0 = output channels when z2 is given;
    beta: a number; z2: (C,) or None; z4…z32: numbers or None; grad_out: cotangent of x_q.
    Returns {"x_q", "grad_x", "grad_beta", "grad_z2", "grad_z4", "grad_z8", "grad_z16",
    "grad_z32"}; the gradient of an absent gate is None, of a gate that is exactly 0 it is 0.
``hard_concrete(logits, u, *, grad_out) -> {"z", "grad_logits"}``
    Sample of §3.2 from the given uniform noise u (same shape as the logits).
``gumbel_softmax(logits, u, *, temperature, straight_through, grad_out) -> {"z", "grad_logits"}``
    §3.7.
``prob_nonzero(logits, *, gate) -> array``
    gate "hard_concrete" (π(φ) = sigmoid(φ + 1.598597), §3.3) or "gumbel_softmax" (sigmoid).
``deterministic_gates(logits, *, gate) -> array``
    Test-time 0/1 gates: hard concrete 1[P(z = 0) < 0.34] (§3.4), Gumbel 1[φ > 0] (§3.7).
``chain_gates_eval(chain_logits, *, hard_cut) -> array``
    (4,) test-time (z4, z8, z16, z32), hard concrete, with the φ ≤ −2 hard cut (§3.5).
``regularizer(prune_logits, chain_logits, mac_weight, *, prior, reg_type) -> dict``
    R_t of §4.3 (prior "autoregressive") or the "independent" ablation, reg_type "bop" or
    "const"; prune_logits (C,) or None.  Returns {"value", "grad_prune_logits" (or None),
    "grad_chain_logits"}.
``relative_bops(model, width, gates) -> float``
    Deterministic relative BOPs in percent (§5); model "lenet5" or "vgg7"; gates maps every
    quantizer name ("conv1.weight_quantizer", "conv1.act_quantizer", …) to {"chain": (4,) 0/1,
    "z2": (C,) 0/1 (weights with pruning only)}.
``lenet5_step(params, x, y, noise, *, mu) -> {"logits", "loss", "grads": {name: array}}``
    One training forward and backward of LeNet-5 (§7.1): mean cross-entropy + μ·Σ_t R_t
    (autoregressive, bop), hard cut on; params and noise named as in
    ``bbits_ref.method.models.lenet5().state_dict()`` and ``BBNet.sample_noise``.
``lenet5_train(params, x, y, noise, *, mu, lr, beta1, beta2, eps) -> {"losses", "params"}``
    K training steps of LeNet-5 under the MNIST recipe (§7.3): step k takes the batch
    ``x[k]`` (K, N, 1, 28, 28), labels ``y[k]`` and the gate noise ``noise[q][key][k]``, computes
    the loss of ``lenet5_step`` and updates weights (and biases), gate logits and ranges with one
    Adam each (PyTorch ≥ 1.5's update: ε added after the bias correction; no weight decay, no
    schedule).  Returns ``losses`` (K,), the loss of every step before its update, and
    ``params``: every float parameter after the K updates, named as ``lenet5_step``'s gradients.
    Float32 drifts from the float64 trajectory: the tolerances are measured
    (:mod:`bbits_ref.conformance.families.trajectory`).

Typical use::

    bbits-ref conformance export /tmp/bb-suite
    bbits-ref conformance check /tmp/bb-suite --impl my_package.adapter:adapter --junit out.xml

or from Python (under ``if __name__ == "__main__":`` in a script, as the child process needs)::

    from bbits_ref import conformance
    conformance.export("/tmp/bb-suite")
    report = conformance.check("/tmp/bb-suite", "my_package.adapter:adapter", timeout=60)

How the package is cut (each module imports only those above it):

* :mod:`~.protocol` — the contract: versions, methods and their parameters and outputs, the
  :class:`Case` / :class:`Suite` data model; :mod:`~.case_ids` — the case ids of each version;
* :mod:`~.reference` — the reference behind the protocol (the suite's expected values);
  :mod:`~.mutants` — wrong adapters the suite must catch; :mod:`~.official` — the official code
  behind the protocol, with :mod:`~.official_lenet5` driving its LeNet-5.  They stay at the top of the package because users name them in
  ``--impl bbits_ref.conformance.reference:adapter``;
* :mod:`~.families` — one module per case family (quantize, gates, regularizer, bops, lenet5,
  trajectory) and :func:`build_cases`;
* :mod:`~.storage` — :func:`export` and :func:`load`: files, schema, integrity;
* :mod:`~.worker` — running an adapter in a child process; :mod:`~.report` — verdicts, text,
  JSON and JUnit; :mod:`~.checker` — comparison, :func:`check`, :func:`check_in_process`;
* :mod:`~.cli` — ``bbits-ref conformance {export,check}``.

Notebook: ``notebooks/09_validating_fast_implementations.ipynb``.
"""
from bbits_ref.conformance.checker import check, check_in_process, compare
from bbits_ref.conformance.families import build_cases
from bbits_ref.conformance.protocol import (KEYWORDS, METHODS, OUTPUTS, SCHEMA_VERSION,
                                            SUITE_VERSION, Case, Suite)
from bbits_ref.conformance.report import Report
from bbits_ref.conformance.storage import SuiteError, export, load
from bbits_ref.conformance.worker import AdapterImportError, load_adapter

__all__ = ["SUITE_VERSION", "SCHEMA_VERSION", "METHODS", "KEYWORDS", "OUTPUTS", "Case", "Suite",
           "SuiteError", "Report", "AdapterImportError", "build_cases", "export", "load", "check",
           "check_in_process", "compare", "load_adapter"]

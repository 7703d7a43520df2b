"""The case families of the suite, one module each, and :func:`build_cases`, which joins them.

Every family is a ``cases(rng)`` function (LeNet-5 and the trajectories have their own seeds)
returning :class:`~bbits_ref.conformance.protocol.Case` objects without expected values;
:func:`build_cases` draws them from one generator seeded with
:data:`~bbits_ref.conformance.protocol.SEED`, in a fixed order, and fills in the expected outputs
with the float64 reference.  The same cases every time, bit for bit.

* :mod:`.quantize` — the quantizer and exact rounding ties (docs/method.md §2);
* :mod:`.gates` — hard-concrete and Gumbel-softmax samples, test-time gates (§3);
* :mod:`.regularizer` — R_t (§4.3);
* :mod:`.bops` — relative BOPs (§5);
* :mod:`.lenet5` — one LeNet-5 training step (§7.1);
* :mod:`.trajectory` — 20 LeNet-5 training steps under the MNIST recipe (§7.3).

Every input array is rounded to float32 first, so float32 and float64 implementations see the
same numbers.
"""
from __future__ import annotations

import numpy as np

from bbits_ref.conformance import reference
from bbits_ref.conformance.families import (bops, gates, lenet5, quantize, regularizer,
                                            trajectory)
from bbits_ref.conformance.protocol import CASE_IDS, SEED, SUITE_VERSION, call, flatten

__all__ = ["build_cases", "expected_outputs"]


def expected_outputs(adapter, case) -> dict:
    """The outputs ``adapter`` returns for ``case``, flattened, as float64 arrays (or None)."""
    out = call(adapter, case.method, case.inputs)
    flat = flatten(out) if isinstance(out, dict) else {"result": out}
    return {k: None if v is None else np.asarray(v, dtype=np.float64) for k, v in flat.items()}


def build_cases(adapter=None) -> list:
    """Every case of the suite, with expected outputs from ``adapter`` (default: the float64
    reference).  Deterministic: fixed seeds, so the same cases every time."""
    adapter = reference.adapter if adapter is None else adapter
    rng = np.random.default_rng(SEED)
    cases = (quantize.cases(rng) + gates.cases(rng) + regularizer.cases(rng) + bops.cases(rng)
             + lenet5.cases() + trajectory.cases())
    names = tuple(c.name for c in cases)
    if names != CASE_IDS[SUITE_VERSION]:
        raise RuntimeError(f"the case families generate other ids than suite {SUITE_VERSION} "
                           "lists in case_ids.py: a changed family needs a new suite version")
    for case in cases:
        case.expected = expected_outputs(adapter, case)
    return cases

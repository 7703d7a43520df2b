"""Predict-then-run exercises for the course notebooks 02–05, checked against the library.

An :class:`Exercise` has a prompt, a checker and a solution::

    from bbits_ref.course.exercises import exercise
    answer = ...                        # your turn: a number, a tuple, or a function
    exercise("02.1").check(answer)      # prints a ✓ line, a HINT, or "not answered yet"
    exercise("02.1").solution()         # a collapsed "Solution" block: text, code, its result

The framework holds no math.  The truth of every exercise is a call of a library function
(:mod:`bbits_ref.method.quantizer`, :mod:`~bbits_ref.method.gates`, :mod:`~bbits_ref.method.prior`,
:mod:`~bbits_ref.method.bops`, :mod:`~bbits_ref.method.readout`); a *mistake* is the value a common
wrong reasoning gives (the 2^b − 1 denominator where the chain divides by 2^b + 1, P(z ≠ 0) where
P(z = 1) was asked, …), written next to the hint it triggers.  A solution is runnable code that
defines ``answer``; the tests check that it passes its own checker.

An answer of ``None`` or ``...`` (the placeholder of the answer cells) is "not answered yet":
the checker prints that and returns False without raising, so a notebook runs top to bottom.
Notation and method sections: ``docs/notation.md`` and ``docs/method.md``.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bbits_ref._errors import DataFileError
from bbits_ref.autograd.engine import Tensor

__all__ = ["LEARNED_RUN", "Exercise", "Mistake", "Solution", "exercise", "exercise_ids",
           "learned_run_summary", "register"]

#: The committed 100-epoch LeNet-5 run whose learned configuration exercise 05.2 uses.
LEARNED_RUN = Path(__file__).resolve().parents[2] / "figures" / "mnist-lenet5-e100"

_PLACEHOLDERS = (None, Ellipsis)


class _NotAnswered(Exception):
    """The answer is still a placeholder (or a function whose body is still ``...``)."""


# =========================================================================== the framework

@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer: ``value()`` computes it (like ``truth``), ``hint`` explains it."""

    value: Callable[[], Any]
    hint: str


@dataclass(frozen=True)
class Solution:
    """A worked solution: shown collapsed in a notebook (click to open), as text elsewhere."""

    exercise_id: str
    text: str
    code: str
    result: str

    def __str__(self) -> str:
        return (f"Solution {self.exercise_id}\n{self.text}\n\n{self.code}\n\n"
                f"result: {self.result}")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return (f"<details><summary><b>Solution {html.escape(self.exercise_id)}</b> "
                f"(click to show)</summary><p>{html.escape(self.text)}</p>"
                f"<pre>{html.escape(self.code)}</pre>"
                f"<p>result: <code>{html.escape(self.result)}</code></p></details>")


@dataclass
class Exercise:
    """One exercise.

    ``truth()`` returns the right answer from library calls: a number or a tuple of numbers or,
    for a function exercise (``cases`` given), the library's outputs on ``cases()``, a list of
    argument tuples on which the student's function is called.  ``mistakes`` are checked in
    order when the answer is wrong.  ``solution_code`` is Python that defines ``answer``.
    """

    id: str
    title: str
    prompt: str
    truth: Callable[[], Any]
    solution_text: str
    solution_code: str
    mistakes: tuple = ()
    cases: Callable[[], list] | None = None
    rtol: float = 2e-3
    atol: float = 1e-12
    shape_hint: str = "a number"
    _truth_cache: Any = field(default=None, init=False, repr=False)

    # -- evaluation
    def expected(self) -> np.ndarray:
        """The right answer as a float64 array (computed once, by the library)."""
        if self._truth_cache is None:
            self._truth_cache = np.asarray(self.truth(), dtype=np.float64)
        return self._truth_cache

    def _evaluate(self, answer) -> np.ndarray:
        """The answer as a float64 array; a function is called on every case.  Raises
        ValueError with a one-line message when the answer has the wrong form."""
        if self.cases is not None:
            if not callable(answer):
                raise ValueError(f"expected a function (def my_fn(...): ...; answer = my_fn), "
                                 f"got {type(answer).__name__}")
            outputs = []
            for args in self.cases():
                try:
                    out = answer(*args)
                except Exception as exc:  # noqa: BLE001 (the student's code: any error, one line)
                    shapes = ", ".join(str(np.shape(a)) for a in args)
                    raise ValueError(f"your function raised {type(exc).__name__}: {exc} "
                                     f"(arguments of shapes {shapes})") from None
                if out is None:                  # the body is still the placeholder
                    raise _NotAnswered
                if isinstance(out, Tensor):
                    out = out.data
                out = self._as_float_array(out, "it returned")
                if out.size != 1:
                    raise ValueError(f"expected {self.shape_hint}; it returned an array of "
                                     f"shape {out.shape}")
                outputs.append(out.reshape(()))
            got = np.asarray(outputs, dtype=np.float64)
        else:
            got = self._as_float_array(answer, "your answer is")
        if got.shape != self.expected().shape:
            raise ValueError(f"expected {self.shape_hint}, got shape {got.shape}")
        return got

    @staticmethod
    def _as_float_array(value, what: str) -> np.ndarray:
        try:
            raw = np.asarray(value)
        except (TypeError, ValueError):       # e.g. a ragged tuple
            raw = np.asarray(None)
        if raw.dtype.kind not in "iuf":        # strings, booleans, None inside a tuple, …
            raise ValueError(f"{what} {value!r}, not a number or a tuple of numbers")
        arr = raw.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} {value!r}: not finite")
        return arr

    def _close(self, got, target) -> bool:
        target = np.asarray(target, dtype=np.float64)
        return got.shape == target.shape and bool(np.allclose(got, target, rtol=self.rtol,
                                                              atol=self.atol))

    # -- the student's side
    def check(self, answer) -> bool:
        """Print a ✓ line, a HINT for a known mistake, or what is wrong; return True if right."""
        try:
            if any(answer is p for p in _PLACEHOLDERS):
                raise _NotAnswered
            got = self._evaluate(answer)
        except _NotAnswered:
            print(f"… {self.id}: not answered yet. Replace the placeholder with your answer "
                  f"({self.shape_hint}) and run the cell again.")
            return False
        except ValueError as exc:
            print(f"✗ {self.id}: {exc}.")
            return False
        if self._close(got, self.expected()):
            print(f"✓ {self.id}: correct{self._shown(got)}.")
            return True
        for mistake in self.mistakes:
            if self._close(got, self._mistake_value(mistake)):
                print(f"HINT {self.id}: {mistake.hint}")
                return False
        if self.cases is not None:
            wrong = ~np.isclose(got, self.expected(), rtol=self.rtol, atol=self.atol)
            what = (f"your function differs from the library on {int(wrong.sum())} of "
                    f"{got.size} inputs")
        else:
            what = f"not yet{self._shown(got)}"
        print(f"✗ {self.id}: {what}. Check each step against the prompt; "
              f"exercise({self.id!r}).solution() shows a worked answer.")
        return False

    def _mistake_value(self, mistake: Mistake) -> np.ndarray:
        if self.cases is None:
            return np.asarray(mistake.value(), dtype=np.float64)
        return self._evaluate(mistake.value())

    def _shown(self, got: np.ndarray) -> str:
        if self.cases is not None:
            return f" on {got.size} random inputs"
        if got.ndim:
            return f" ({np.array2string(got, precision=6)})"
        return f" ({int(got):,})" if float(got).is_integer() else f" ({float(got):.6g})"

    def solution(self) -> Solution:
        """The worked solution: explanation, code, and the result of running that code."""
        answer = self.solution_answer()
        if self.cases is not None:
            ok = self._close(self._evaluate(answer), self.expected())
            result = (f"matches the library on {len(self.cases())} random inputs"
                      if ok else "does NOT match the library (please report this)")
        else:
            result = f"answer = {_format(answer)}"
        return Solution(self.id, self.solution_text, self.solution_code.strip(), result)

    def solution_answer(self):
        """Run ``solution_code`` and return the ``answer`` it defines."""
        namespace: dict = {"np": np}
        # the code shown to the student is the code that runs: our own source, never user input
        exec(compile(self.solution_code, f"<solution {self.id}>", "exec"), namespace)  # noqa: S102
        return namespace["answer"]

    def __repr__(self) -> str:
        return f"Exercise({self.id!r}: {self.title})"

    def _repr_markdown_(self) -> str:
        return f"**Exercise {self.id} · {self.title}**\n\n{self.prompt}"


def _format(value) -> str:
    """Numbers to 6 significant digits, tuples element by element (no numpy reprs)."""
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_format(v) for v in value) + ")"
    arr = np.asarray(value)
    if arr.ndim == 0 and arr.dtype.kind in "iu":
        return str(int(arr))
    if arr.ndim == 0 and arr.dtype.kind == "f":
        return f"{float(arr):.6g}"
    return repr(value)


_REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> Exercise:
    """Add an exercise to the registry (ids are unique)."""
    if ex.id in _REGISTRY:
        raise ValueError(f"exercise id {ex.id!r} is already registered; pick a new id")
    _REGISTRY[ex.id] = ex
    return ex


def exercise(exercise_id: str) -> Exercise:
    """The exercise with this id, e.g. ``exercise("02.1")``."""
    if exercise_id not in _REGISTRY:
        raise KeyError(f"no exercise {exercise_id!r}; the course has {exercise_ids()}")
    return _REGISTRY[exercise_id]


def exercise_ids() -> list:
    """Every registered id, in course order."""
    return sorted(_REGISTRY, key=lambda i: tuple(int(p) for p in i.split(".")))


def learned_run_summary() -> dict:
    """The ``summary.json`` of the committed 100-epoch LeNet-5 run (read as an untrusted file)."""
    from bbits_ref.training.runs import read_json

    path = LEARNED_RUN / "summary.json"
    data = read_json(path, "run summary (summary.json)")
    layers = data.get("layers") if isinstance(data, dict) else None
    if not (isinstance(layers, list) and layers and all(isinstance(x, dict) for x in layers)):
        raise DataFileError(f"{path} has no list of layers; it should be the summary.json a "
                            "bbits-ref train run writes")
    return data


def _learned_layers() -> list:
    """The learned configuration as LayerCosts (LayerCost checks every field)."""
    from bbits_ref.method.bops import LayerCost

    keys = ("name", "macs", "w_bits", "a_bits", "keep_out", "keep_in")
    layers = []
    for layer in learned_run_summary()["layers"]:
        if set(keys) - set(layer):
            raise DataFileError(f"a layer of {LEARNED_RUN / 'summary.json'} lacks "
                                f"{sorted(set(keys) - set(layer))}")
        layers.append(LayerCost(*(layer[k] for k in keys)))
    return layers


# =========================================================================== 02: quantizer

def _steps(beta, signed):
    from bbits_ref.method.quantizer import step_sizes
    return [float(s) for s in step_sizes(np.float64(beta), signed)]


register(Exercise(
    "02.1", "the step size s_8",
    "An unsigned activation has range β = 0.5. Compute s_8 by hand (to 4 significant digits).",
    truth=lambda: _steps(0.5, False)[2],
    mistakes=(
        Mistake(lambda: _steps(0.5, False)[0] / (2 ** 2 - 1) / (2 ** 4 - 1),
                "you divided by 2^b − 1 along the chain. The chain divides by 2^b + 1: "
                "s_4 = s_2/5, s_8 = s_4/17 (docs/method.md §2.3)."),
        Mistake(lambda: _steps(0.5, True)[2],
                "that is the signed step. An unsigned range is [0, β], so s_2 = β/3, not 2β/3."),
        Mistake(lambda: 0.5 / 2 ** 8,
                "an 8-bit grid has 2^8 levels but 2^8 − 1 steps between them."),
        Mistake(lambda: _steps(0.5, False)[1], "that is s_4; s_8 is one more step of the chain."),
        Mistake(lambda: _steps(0.5, False)[3], "that is s_16; stop one step earlier."),
    ),
    solution_text="s_2 = (β − α)/(2^2 − 1) = 0.5/3 with α = 0; then s_4 = s_2/5 and "
                  "s_8 = s_4/17, so s_8 = 0.5/255: the step of an ordinary 8-bit grid.",
    solution_code="""
from bbits_ref.method.quantizer import step_sizes
s2 = 0.5 / 3
answer = s2 / 5 / 17
assert np.isclose(answer, step_sizes(np.float64(0.5), signed=False)[2])
""",
))


def _decomposed(x, beta, signed):
    from bbits_ref.method.quantizer import decompose
    parts = decompose(np.array([x], np.float64), np.float64(beta), signed)  # 1-d: see report
    return float(parts["A2"][0]), float(parts["e4"][0])


def _direct(x, beta, bits, signed):
    from bbits_ref.method.quantizer import quantize_direct
    return float(quantize_direct(np.array([x], np.float64), np.float64(beta), bits, signed)[0])


register(Exercise(
    "02.2", "predict A_2 and e_4",
    "A weight (signed, β = 1) has the value x = 0.5. Predict A_2 and the residual e_4 "
    "(answer = (A_2, e_4)).",
    truth=lambda: _decomposed(0.5, 1.0, True),
    shape_hint="a pair (A_2, e_4)",
    mistakes=(
        Mistake(lambda: (_decomposed(0.5, 1, True)[0], sum(_decomposed(0.5, 1, True))),
                "your second number is A_4 = A_2 + e_4. e_4 is only what is added at 4 bits."),
        Mistake(lambda: (_decomposed(0.5, 1, True)[0], -_decomposed(0.5, 1, True)[1]),
                "check the sign of e_4 = s_4·R((x_c − A_2)/s_4): here x_c − A_2 is negative."),
        Mistake(lambda: (0.0, _direct(0.5, 1.0, 4, True)),
                "R rounds to the nearest level (x_c/s_2 = 0.75 rounds to 1), not down."),
    ),
    solution_text="s_2 = 2β/3 = 2/3 and x_c = 0.5: x_c/s_2 = 0.75 rounds to 1, so A_2 = 2/3. "
                  "s_4 = s_2/5 = 2/15; (x_c − A_2)/s_4 = −1.25 rounds to −1, so e_4 = −2/15 and "
                  "A_4 = A_2 + e_4 = 8/15, the nearest level of the 4-bit grid.",
    solution_code="""
from bbits_ref.method.quantizer import decompose
s2, s4 = 2 / 3, 2 / 15
A2 = s2 * np.round(0.5 / s2)
e4 = s4 * np.round((0.5 - A2) / s4)
answer = (A2, e4)
parts = decompose(np.array([0.5]), np.float64(1.0), True)
assert np.allclose(answer, (parts["A2"][0], parts["e4"][0]))
""",
))


def _levels(bits, signed):
    from bbits_ref.method.quantizer import clip_range, quantize_direct
    lo, hi = clip_range(np.float64(1.0), signed)
    sweep = np.linspace(float(lo), float(hi), 1 << 14)
    return np.unique(quantize_direct(sweep, np.float64(1.0), bits, signed)).size


register(Exercise(
    "02.3", "levels of a signed grid",
    "How many distinct values can a signed (weight) quantizer output at 4 bits?",
    truth=lambda: _levels(4, True),
    rtol=0.0, atol=0.0, shape_hint="a whole number",
    mistakes=(
        Mistake(lambda: _levels(4, False),
                "2^4 is the unsigned count. A signed grid is symmetric around 0 (restricted): "
                "2^b − 1 levels, no extra negative level."),
        Mistake(lambda: 2 ** 4 + 1,
                "2^4 + 1 is the number of values of the next residual's index (e_8), not of "
                "the 4-bit grid."),
        Mistake(lambda: _levels(2, True),
                "3 levels (ternary) is the 2-bit grid; count the 4-bit one."),
    ),
    solution_text="A signed grid spans [−β, β] with s_4 = 2β/15: the levels are k·s_4 for "
                  "k = −7 … 7, which is 2^4 − 1 = 15 values (0 included, symmetric).",
    solution_code="""
from bbits_ref.method.quantizer import clip_range, quantize_direct
lo, hi = clip_range(np.float64(1.0), True)
sweep = np.linspace(lo, hi, 10_000)
answer = np.unique(quantize_direct(sweep, np.float64(1.0), 4, True)).size   # 2^4 − 1
""",
))


# =========================================================================== 03: gates

def _hc(**kwargs):
    from bbits_ref.method.gates import HardConcrete
    return HardConcrete(**kwargs)


def _gumbel():
    from bbits_ref.method.gates import GumbelSoftmax
    return GumbelSoftmax()


register(Exercise(
    "03.1", "P(z = 1) of a hard-concrete gate",
    "For the official hard-concrete gate (τ = 2/3, γ = −0.1, ζ = 1.1) at φ = 1, derive "
    "P(z = 1), the point mass at exactly 1.",
    truth=lambda: _hc().prob_one(1.0).item(),
    mistakes=(
        Mistake(lambda: _hc().prob_nonzero(1.0).item(),
                "that is P(z ≠ 0). z = 1 needs the stretched s̄ ≥ 1, i.e. "
                "s ≥ (1 − γ)/(ζ − γ)."),
        Mistake(lambda: _gumbel().prob_nonzero(1.0).item(),
                "σ(φ) ignores the stretch (γ, ζ) and the temperature τ."),
        Mistake(lambda: _hc(temperature=1.0).prob_one(1.0).item(),
                "the logistic noise plus φ is divided by τ = 2/3: the offset is "
                "τ·log((1 − γ)/(ζ − 1)), not log((1 − γ)/(ζ − 1))."),
        Mistake(lambda: _hc().prob_zero(1.0).item(), "that is P(z = 0), the other point mass."),
    ),
    solution_text="z = 1 iff s̄ = s(ζ − γ) + γ ≥ 1 iff s ≥ (1 − γ)/(ζ − γ) = 11/12 iff "
                  "L + φ ≥ τ·log 11 with L logistic. So P(z = 1) = σ(φ − τ·log((1 − γ)/(ζ − 1))) "
                  "= σ(1 − 1.598597) ≈ 0.355 (docs/method.md §3.3).",
    solution_code="""
from bbits_ref.method.gates import HardConcrete
tau, gamma, zeta, phi = 2 / 3, -0.1, 1.1, 1.0
answer = 1 / (1 + np.exp(-(phi - tau * np.log((1 - gamma) / (zeta - 1)))))
assert np.isclose(answer, HardConcrete().prob_one(phi).item())
""",
))

register(Exercise(
    "03.2", "where the test-time gate flips",
    "At test time the official code sets z = 1 iff P(z = 0) < 0.34. At which logit φ does a "
    "hard-concrete gate flip?",
    truth=lambda: _hc().threshold_logit(),
    mistakes=(
        Mistake(lambda: _hc(threshold=1 - 0.34).threshold_logit(),
                "0.34 bounds P(z = 0): z = 1 needs π(φ) = P(z ≠ 0) > 0.66, not > 0.34."),
        Mistake(lambda: _gumbel().threshold_logit(),
                "φ > 0 is the Gumbel-softmax rule; the hard-concrete π is shifted by the stretch."),
        Mistake(lambda: math.log(0.66 / 0.34),
                "π(φ) = σ(φ + 1.598597), not σ(φ): subtract the stretch offset."),
        Mistake(lambda: _hc().threshold_logit() - 2 * _hc().prob_offset,
                "sign of the offset: π(φ) = σ(φ − τ·log(−γ/ζ)) and τ·log(−γ/ζ) = −1.598597."),
        Mistake(lambda: -2.0, "−2 is the hard cut of the chain gates, not the test-time rule."),
    ),
    solution_text="P(z = 0) = 1 − π(φ) < 0.34 iff σ(φ + 1.598597) > 0.66 iff "
                  "φ > log(0.66/0.34) − 1.598597 = −0.935303 (docs/method.md §3.4).",
    solution_code="""
from bbits_ref.method.gates import HardConcrete
offset = (2 / 3) * np.log(0.1 / 1.1)            # τ·log(−γ/ζ) = −1.598597
answer = offset + np.log(0.66 / 0.34)
assert np.isclose(answer, HardConcrete().threshold_logit())
""",
))

register(Exercise(
    "03.3", "the hard cut of a Gumbel-softmax gate",
    "The official hard cut switches a hard-concrete chain gate off for good at φ ≤ −2. A "
    "Gumbel-softmax gate is cut at the logit with the same on-probability. Which logit?",
    truth=lambda: _gumbel().hard_cut_logit,
    mistakes=(
        Mistake(lambda: -2.0, "−2 is the hard-concrete logit. Find φ with σ(φ) = π_hc(−2)."),
        Mistake(lambda: _hc().prob_nonzero(-2.0).item(),
                "0.401 is the on-probability at the cut; the answer is the logit whose σ is "
                "0.401."),
        Mistake(lambda: -2.0 + _hc().prob_offset,
                "check the sign of the shift: π_hc(φ) = σ(φ + 1.598597)."),
        Mistake(lambda: 0.0,
                "φ = 0 is where the Gumbel-softmax test-time gate flips, not its cut."),
    ),
    solution_text="π_hc(−2) = σ(−2 + 1.598597) = σ(−0.401403) ≈ 0.401, and a Gumbel-softmax gate "
                  "has q(z = 1) = σ(φ): the same on-probability at φ = −0.401403 "
                  "(docs/method.md §3.5, §3.7).",
    solution_code="""
from bbits_ref.method.gates import GumbelSoftmax
answer = -2.0 - (2 / 3) * np.log(0.1 / 1.1)
assert np.isclose(answer, GumbelSoftmax.hard_cut_logit)
""",
))


# =========================================================================== 04: prior

def _lenet5_mac_weights() -> dict:
    from bbits_ref.method.models import lenet5
    return {name: q.mac_weight for name, q in lenet5(rng=0).quantizers()}


def _lambda(mu, quantizer_name, bits):
    from bbits_ref.method.prior import PRUNED_BITS, prior_strengths
    return float(prior_strengths(mu, _lenet5_mac_weights()[quantizer_name])[
        PRUNED_BITS.index(bits)])


register(Exercise(
    "04.1", "a prior strength λ",
    "LeNet-5 is trained with μ = 0.1. What is λ_8, the prior strength of the 8-bit gate of "
    "conv1's activation quantizer (the output of conv1)?",
    truth=lambda: _lambda(0.1, "conv1.act_quantizer", 8),
    mistakes=(
        Mistake(lambda: _lambda(0.1, "conv1.weight_quantizer", 8),
                "an activation quantizer is charged by the MACs of the layer that consumes it "
                "(conv2), not of the layer that produces it."),
        Mistake(lambda: _lambda(0.1, "conv1.act_quantizer", 4), "that is λ_4; b = 8 here."),
        Mistake(lambda: _lambda(1.0, "conv1.act_quantizer", 8), "multiply by μ = 0.1."),
    ),
    solution_text="λ_{t,b} = μ·b·MAC_t/MAC_max. conv1's output feeds conv2, the largest layer, "
                  "so MAC_t/MAC_max = 1 and λ_8 = 0.1·8·1 = 0.8 (docs/method.md §4.4).",
    solution_code="""
from bbits_ref.method.bops import LENET5_LAYERS
from bbits_ref.method.prior import prior_strengths
macs = dict(LENET5_LAYERS)
w_t = macs["conv2"] / max(macs.values())       # conv1's output is consumed by conv2
answer = 0.1 * 8 * w_t
assert np.isclose(answer, prior_strengths(0.1, w_t)[2])     # λ for b = 2, 4, 8, 16, 32
""",
))


_R_PROBS = {"prob_z2": (1.0, 0.5, 0.0), "chain_probs": (0.9, 0.5, 0.0, 0.0), "mac_weight": 0.16}


def _regularizer_of(name, prob_z2=_R_PROBS["prob_z2"], mac_weight=_R_PROBS["mac_weight"]):
    return _library_regularizer(name)(np.asarray(prob_z2), np.asarray(_R_PROBS["chain_probs"]),
                                      mac_weight)


register(Exercise(
    "04.2", "the regularizer of a tensor with three channels",
    "A weight tensor with 3 output channels has π_2 = (1, 0.5, 0) per channel, one chain "
    "(π_4, π_8, π_16, π_32) = (0.9, 0.5, 0, 0) for the whole tensor, and w_t = 0.16. Compute "
    "its (autoregressive, official) regularizer R_t.",
    truth=lambda: _regularizer_of("bop_regularizer"),
    mistakes=(
        Mistake(lambda: _regularizer_of("bop_regularizer", prob_z2=(1.0,)),
                "z4…z32 are one scalar per tensor, but z2 is per channel: R_t uses the channel "
                "mean of π_2, not one channel's."),
        Mistake(lambda: 3 * _regularizer_of("bop_regularizer"),
                "average over the channels (mean_c π_{2,c}), do not sum."),
        Mistake(lambda: _regularizer_of("bop_regularizer", mac_weight=1.0),
                "multiply by the MAC weight w_t = 0.16."),
        Mistake(lambda: _regularizer_of("independent_regularizer"),
                "that is the independent prior. The official one multiplies along the chain: "
                "8 is paid with probability π_2·π_4·π_8."),
    ),
    solution_text="R_t = w_t·mean_c(π_{2,c})·[2 + 4π_4 + 8π_4π_8 + 16π_4π_8π_16 + 32·…] "
                  "= 0.16·0.5·(2 + 3.6 + 3.6) = 0.736 (docs/method.md §4.3).",
    solution_code="""
from bbits_ref.method.prior import bop_regularizer
p4, p8 = 0.9, 0.5
answer = 0.16 * np.mean([1.0, 0.5, 0.0]) * (2 + 4 * p4 + 8 * p4 * p8)
assert np.isclose(answer, bop_regularizer(np.array([1.0, 0.5, 0.0]),
                                          np.array([0.9, 0.5, 0.0, 0.0]), 0.16).item())
""",
))


def _regularizer_cases() -> list:
    rng = np.random.default_rng(20201206)
    cases = []
    for channels in (1, 3, 16, 5):
        cases.append((rng.uniform(0, 1, channels), rng.uniform(0, 1, 4),
                      float(rng.uniform(0.01, 1.0))))
    return cases


def _on_cases(fn) -> list:
    return [float(fn(*args)) for args in _regularizer_cases()]


def _library_regularizer(name, **kwargs):
    """A NumPy-in, float-out wrapper of a library regularizer (with float64 engine tensors)."""
    from bbits_ref.autograd.engine import default_dtype
    from bbits_ref.method import prior

    def fn(prob_z2, chain_probs, mac_weight):
        with default_dtype(np.float64):
            return getattr(prior, name)(np.asarray(prob_z2, np.float64),
                                        np.asarray(chain_probs, np.float64),
                                        kwargs.get("mac_weight", mac_weight),
                                        reg_type=kwargs.get("reg_type", "bop")).item()
    return fn


def _summed_over_channels(prob_z2, chain_probs, mac_weight):
    # the independent regularizer with Σ_c π_{2,c} in place of mean_c π_{2,c}
    extra = 2 * mac_weight * (np.sum(prob_z2) - np.mean(prob_z2))
    return _library_regularizer("independent_regularizer")(prob_z2, chain_probs, mac_weight) + extra


register(Exercise(
    "04.3", "write the independent prior's regularizer",
    "Write a NumPy function independent(prob_z2, chain_probs, mac_weight) for a weight tensor "
    "with pruning: prob_z2 holds π_{2,c} (one per output channel), chain_probs = (π_4, π_8, "
    "π_16, π_32), mac_weight = w_t; each gate b costs c(b) = w_t·b and pays c(b) times its own "
    "probability. Return a float. It is checked against the library on random inputs.",
    truth=lambda: _on_cases(_library_regularizer("independent_regularizer")),
    cases=_regularizer_cases, rtol=1e-9, shape_hint="a function returning one float",
    mistakes=(
        Mistake(lambda: _library_regularizer("bop_regularizer"),
                "you multiplied along the chain: that is the autoregressive regularizer. The "
                "independent prior charges each gate c(b)·π_b alone."),
        Mistake(lambda: _summed_over_channels,
                "π_2 enters as the channel mean, mean_c(π_{2,c}), not the sum over channels."),
        Mistake(lambda: _library_regularizer("independent_regularizer", mac_weight=1.0),
                "each gate costs c(b) = w_t·b: multiply by the MAC weight."),
        Mistake(lambda: _library_regularizer("independent_regularizer", reg_type="const"),
                "the cost of gate b is w_t·b (the README runs, reg_type 'bop'), not 1."),
    ),
    solution_text="R_t = c(2)·mean_c(π_{2,c}) + c(4)π_4 + c(8)π_8 + c(16)π_16 + c(32)π_32 with "
                  "c(b) = w_t·b: no products along the chain (the library's "
                  "independent_regularizer).",
    solution_code="""
def independent(prob_z2, chain_probs, mac_weight):
    probs = np.concatenate([[np.mean(prob_z2)], chain_probs])   # π_2 (channel mean), π_4 … π_32
    costs = mac_weight * np.array([2, 4, 8, 16, 32])            # c(b) = w_t·b
    return float(np.sum(costs * probs))

answer = independent
""",
))

# =========================================================================== 05: BOPs

def _lenet5_macs() -> dict:
    from bbits_ref.method.bops import LENET5_LAYERS
    return dict(LENET5_LAYERS)


def _conv_macs(c_in, c_out, out_hw):
    from bbits_ref.method.bops import conv_macs
    return conv_macs(c_in, c_out, 5, out_hw)


register(Exercise(
    "05.1", "the MACs of conv2",
    "LeNet-5: conv1 (1→32, 5×5, no padding) on a 28×28 image, 2×2 max-pooling, then conv2 "
    "(32→64, 5×5, no padding). How many MACs does conv2 take?",
    truth=lambda: _lenet5_macs()["conv2"],
    rtol=0.0, atol=0.0, shape_hint="a whole number",
    mistakes=(
        Mistake(lambda: _conv_macs(32, 64, (20, 20)),
                "conv2 sees conv1's output after the 2×2 max-pooling: 12×12, so its output "
                "is 8×8."),
        Mistake(lambda: _conv_macs(1, 64, (8, 8)),
                "each output sums over all 32 input channels: multiply by C_in = 32."),
        Mistake(lambda: _conv_macs(32, 64, (12, 12)),
                "no padding: the output is 12 − 5 + 1 = 8 wide, not 12."),
    ),
    solution_text="conv1: 28 − 5 + 1 = 24, pooled to 12; conv2: 12 − 5 + 1 = 8. MACs = "
                  "C_out·H_out·W_out·k_h·k_w·C_in = 64·8·8·5·5·32 = 3,276,800 "
                  "(docs/method.md §5.1).",
    solution_code="""
from bbits_ref.method.bops import conv_macs
answer = 64 * 8 * 8 * 5 * 5 * 32
assert answer == conv_macs(32, 64, 5, (8, 8))
""",
))


def _learned_relative_bops(keep_in=True, keep_out=True, scale=1.0):
    from bbits_ref.method.bops import LayerCost, relative_bops
    layers = [LayerCost(c.name, c.macs, c.w_bits, c.a_bits, c.keep_out if keep_out else 1.0,
                        c.keep_in if keep_in else 1.0) for c in _learned_layers()]
    return scale * relative_bops(layers)


register(Exercise(
    "05.2", "the relative BOPs of a learned configuration",
    "The committed 100-epoch LeNet-5 run (figures/mnist-lenet5-e100/summary.json, its "
    "\"layers\") learned, per layer, the weight bits, the bits of the activation that feeds "
    "the layer, and the kept fractions of output and input channels. Compute its relative BOPs "
    "in percent from that table, by hand.",
    truth=_learned_relative_bops,
    mistakes=(
        Mistake(lambda: _learned_relative_bops(keep_in=False),
                "pruning a layer's output channels also removes the next layer's inputs: "
                "multiply by keep_in as well as keep_out."),
        Mistake(lambda: _learned_relative_bops(keep_in=False, keep_out=False),
                "the configuration prunes channels: multiply each layer by keep_out·keep_in."),
        Mistake(lambda: _learned_relative_bops(scale=0.01),
                "give the answer in percent (100·Σ BOPs / Σ MAC·32·32)."),
    ),
    solution_text="Per layer BOPs_l = MAC_l·b_w·b_a·keep_out·keep_in; relative BOPs = "
                  "100·Σ_l BOPs_l / Σ_l MAC_l·32·32 (docs/method.md §5). About 0.351%.",
    solution_code="""
from bbits_ref.course.exercises import learned_run_summary
layers = learned_run_summary()["layers"]
bops = sum(l["macs"] * l["w_bits"] * l["a_bits"] * l["keep_out"] * l["keep_in"] for l in layers)
answer = 100 * bops / sum(l["macs"] * 32 * 32 for l in layers)
""",
))


def _expected_bits(chain_logits, hard_cut=True):
    from bbits_ref.method.bops import expected_bits
    from bbits_ref.method.layers import BBConfig, BBQuantizer
    from bbits_ref.method.readout import effective_chain_probs
    q = BBQuantizer("weight", None, BBConfig(hard_cut=hard_cut), dtype=np.float64)
    q.gate_logits.data[:] = chain_logits
    return expected_bits(effective_chain_probs(q))


_CHAIN = (1.0, -0.9, -6.0, -6.0)

register(Exercise(
    "05.3", "expected bits with the hard cut",
    "A quantizer has chain logits (φ4, φ8, φ16, φ32) = (1, −0.9, −6, −6) and hard-concrete "
    "gates with the official hard cut. Compute E[bit width | z_2 = 1] under the gate "
    "distribution q.",
    truth=lambda: _expected_bits(_CHAIN),
    mistakes=(
        Mistake(lambda: _expected_bits(_CHAIN, hard_cut=False),
                "φ16 = φ32 = −6 ≤ −2: the hard cut makes z16 and z32 the constant 0, so "
                "P(16 bits) = P(32 bits) = 0 exactly; use π16 = π32 = 0."),
        Mistake(lambda: 8.0,
                "8 is the test-time (deterministic) width; the question asks for the "
                "expectation under q."),
    ),
    solution_text="π4 = σ(1 + 1.598597), π8 = σ(−0.9 + 1.598597), π16 = π32 = 0 (cut). "
                  "E[b] = 2 + 2π4 + 4π4π8 ≈ 6.35 (docs/method.md §3.5, §5).",
    solution_code="""
from bbits_ref.method.gates import HardConcrete
p4, p8 = HardConcrete().prob_nonzero(np.array([1.0, -0.9])).data
answer = 2 + 2 * p4 + 4 * p4 * p8
""",
))

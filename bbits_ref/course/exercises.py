"""Predict-then-run exercises for the course notebooks 02–08, checked against the library.

An :class:`Exercise` has a prompt, a checker and a solution::

    from bbits_ref.course.exercises import exercise
    answer = ...                        # your turn: a number, a tuple, or a function
    exercise("02.1").check(answer)      # prints a ✓ line, a HINT, or "not answered yet"
    exercise("02.1").solution()         # a collapsed "Solution" block: text, code, its result

The framework holds no math.  The truth of every exercise is a call of a library function
(:mod:`bbits_ref.method.quantizer`, :mod:`~bbits_ref.method.gates`, :mod:`~bbits_ref.method.prior`,
:mod:`~bbits_ref.method.bops`, :mod:`~bbits_ref.method.readout`, the committed runs of
:mod:`bbits_ref.course.runs`); a *mistake* is the value a common
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
from typing import Any

import numpy as np

from bbits_ref._errors import DataFileError
from bbits_ref.autograd.engine import Tensor

__all__ = ["BOP_BUDGET", "Exercise", "Mistake", "Solution", "exercise", "exercise_ids",
           "learned_run_summary", "register"]

#: The committed 100-epoch LeNet-5 run whose learned configuration exercise 05.2 uses.

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


def learned_run_summary(root=None) -> dict:
    """The ``summary.json`` of the committed 100-epoch LeNet-5 run, checked with its history and
    config (:func:`bbits_ref.course.runs.paper_run`; ``root`` is the figures folder)."""
    from bbits_ref.course.runs import paper_run

    return paper_run(root).summary


def _learned_layers() -> list:
    """The learned configuration as LayerCosts (LayerCost checks every field)."""
    from bbits_ref.method.bops import LayerCost

    keys = ("name", "macs", "w_bits", "a_bits", "keep_out", "keep_in")
    layers = []
    for layer in learned_run_summary()["layers"]:
        if set(keys) - set(layer):
            raise DataFileError(f"a layer of the committed run's summary.json lacks "
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


_CHAINS = ((2, 4, 8), (2, 3, 4, 6, 8), (3, 6), (2, 6), (4, 6))


def _chains_equal_direct() -> tuple:
    """1 where every stage of the chain is direct quantization (the library's report), else 0."""
    from bbits_ref.method.decomposition import equality_report
    return tuple(int(all(row.equals_direct for row in equality_report(c))) for c in _CHAINS)


def _chain_flags(rule) -> tuple:
    """1/0 per chain from a (wrong) rule on consecutive widths ``rule(b, b_next)``."""
    return tuple(int(all(rule(b, b_next) for b, b_next in zip(c, c[1:]))) for c in _CHAINS)


register(Exercise(
    "02.4", "which chains reproduce direct quantization",
    "Five residual chains: (a) (2, 4, 8), (b) (2, 3, 4, 6, 8), (c) (3, 6), (d) (2, 6), "
    "(e) (4, 6). Each stage b uses the direct step s_b = (β − α)/(2^b − 1) and rounds what the "
    "previous stages left. For which chains is every stage A_b exactly direct b-bit "
    "quantization? Answer with five flags, 1 = yes, 0 = no, e.g. answer = (1, 1, 0, 0, 1).",
    truth=_chains_equal_direct,
    rtol=0.0, atol=0.0, shape_hint="a tuple of five 0/1 flags",
    mistakes=(
        Mistake(lambda: _chain_flags(lambda b, b_next: True),
                "finer steps alone are not enough: the coarse levels must lie on the fine grid, "
                "so s_b/s_b' = (2^b' − 1)/(2^b − 1) must be a whole number. For 2 → 3 it is "
                "7/3 (docs/method.md §2.8)."),
        Mistake(lambda: _chain_flags(lambda b, b_next: b_next == 2 * b),
                "doubling is enough but not necessary: b' only has to be a multiple of b. "
                "2 → 6 nests as well (s2/s6 = 63/3 = 21)."),
        Mistake(lambda: _chain_flags(lambda b, b_next: math.gcd(b, b_next) > 1),
                "a common factor is not enough: 4 does not divide 6, and s4/s6 = 63/15 = 21/5 "
                "is not a whole number, so A_6 falls between the 6-bit levels."),
        Mistake(lambda: tuple(int(c[-1] % c[0] == 0) for c in _CHAINS),
                "you compared the first and the last width only. Every stage counts: in "
                "(2, 3, 4, 6, 8) the 3-bit stage already leaves the grid (2 does not divide 3)."),
    ),
    solution_text="Stage b' equals direct quantization iff the value before it lies on the "
                  "b'-bit grid, i.e. iff every earlier width divides b' (2^b − 1 divides "
                  "2^b' − 1 iff b divides b'). (a), (c), (d) nest; in (b) 2 → 3 breaks and every "
                  "later stage inherits the offset; in (e) 4 does not divide 6.",
    solution_code="""
from bbits_ref.method.decomposition import equality_report
chains = [(2, 4, 8), (2, 3, 4, 6, 8), (3, 6), (2, 6), (4, 6)]
answer = tuple(int(all(b_next % b == 0 for k, b_next in enumerate(c) for b in c[:k]))
               for c in chains)
assert answer == tuple(int(all(r.equals_direct for r in equality_report(c))) for c in chains)
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


# =========================================================================== 06: LeNet-5 on MNIST

_LENET5_ORDER = ("conv1", "conv2", "fc1", "fc2")


def _paper_layers() -> dict:
    """The learned configuration of the committed 100-epoch run: layer name -> summary row."""
    from bbits_ref.course.runs import paper_run
    return {layer["name"]: layer for layer in paper_run().summary["layers"]}


def _most_bits_layer() -> int:
    layers = _paper_layers()
    bits = [layers[name]["w_bits"] for name in _LENET5_ORDER]
    return int(np.argmax(bits))


register(Exercise(
    "06.1", "which layer keeps the most bits",
    "Before you look at the learned configuration: the prior charges a gate of layer t in "
    "proportion to w_t = MAC_t/MAC_max (conv1 0.14, conv2 1, fc1 0.16, fc2 0.0016). Which "
    "layer's weights keep the most bits after the 100-epoch run? Answer its index in "
    "(conv1, conv2, fc1, fc2): 0, 1, 2 or 3.",
    truth=_most_bits_layer, rtol=0.0, atol=0.0, shape_hint="an index 0, 1, 2 or 3",
    mistakes=(
        Mistake(lambda: 1, "conv2 has the most MACs, so its gates are the most expensive "
                           "(w_t = 1): it is the first to lose bits, not the last."),
        Mistake(lambda: 0, "conv1 sees the raw image, but its gates still cost w_t = 0.14, "
                           "90 times those of the cheapest layer."),
        Mistake(lambda: 2, "fc1 is the biggest weight matrix, but the prior counts MACs, not "
                           "parameters: w_t = 0.16, a hundred times that of the cheapest layer."),
    ),
    solution_text="A bit of fc2 costs 5,120/3,276,800 = 0.0016 of a bit of conv2, so the prior "
                  "barely charges it, while the classifier's accuracy depends on it: fc2 keeps "
                  "8-bit weights, every other layer goes down to 2 bits (docs/method.md §4.4).",
    solution_code="""
from bbits_ref.course.runs import paper_run
from bbits_ref.method import bops, prior
weights = prior.mac_weights(dict(bops.lenet5_layer_macs()))
answer = ["conv1", "conv2", "fc1", "fc2"].index(min(weights, key=weights.get))
learned = {layer["name"]: layer["w_bits"] for layer in paper_run().summary["layers"]}
assert learned["fc2"] == max(learned.values())
""",
))


def _layer_bops(name: str, a_from_output: bool = False, keep_in: bool = True,
                keep_out: bool = True) -> float:
    from bbits_ref.course.runs import paper_run
    from bbits_ref.method.bops import LayerCost
    run = paper_run()
    layer = _paper_layers()[name]
    a_bits = layer["a_bits"]
    if a_from_output:          # the bits of the layer's own output, not of its input
        a_bits = run.summary["quantizers"][f"{name}.act_quantizer"]["bits"]
    return LayerCost(name, layer["macs"], layer["w_bits"], a_bits,
                     layer["keep_out"] if keep_out else 1.0,
                     layer["keep_in"] if keep_in else 1.0).bops


register(Exercise(
    "06.2", "read the learned configuration: the BOPs of fc1",
    "From summary['quantizers'] of the committed 100-epoch run (figures/mnist-lenet5-e100), "
    "compute the BOPs per image of fc1 (524,288 MACs): its weight bits, the bits of the "
    "activation that feeds it, and the kept fractions of its output and input channels "
    "(kept_channels / channels of the weight quantizers).",
    truth=lambda: _layer_bops("fc1"), shape_hint="a number (BOPs)",
    mistakes=(
        Mistake(lambda: _layer_bops("fc1", a_from_output=True),
                "fc1 multiplies its weights with its input, the output of conv2: use "
                "conv2.act_quantizer's bits, not fc1.act_quantizer's."),
        Mistake(lambda: _layer_bops("fc1", keep_in=False),
                "conv2's pruned output channels are fc1's missing inputs: multiply by conv2's "
                "kept fraction (keep_in) too."),
        Mistake(lambda: _layer_bops("fc1", keep_in=False, keep_out=False),
                "pruned channels cost nothing: multiply by the kept fractions of fc1's outputs "
                "and of its inputs."),
    ),
    solution_text="BOPs = MAC · b_w · b_a · keep_out · keep_in (docs/method.md §5) with "
                  "b_w = fc1.weight_quantizer's bits (2), b_a = conv2.act_quantizer's (2), "
                  "keep_out = 413/512, keep_in = 38/64: about 1.0 M BOPs, against "
                  "524,288·32·32 = 537 M at full precision.",
    solution_code="""
from bbits_ref.course.runs import paper_run
q = paper_run().summary["quantizers"]
fc1_w, conv2_w = q["fc1.weight_quantizer"], q["conv2.weight_quantizer"]
answer = (524_288 * fc1_w["bits"] * q["conv2.act_quantizer"]["bits"]
          * fc1_w["kept_channels"] / fc1_w["channels"]
          * conv2_w["kept_channels"] / conv2_w["channels"])
""",
))


def _paper_steps(per_epoch) -> int:
    from bbits_ref.course.runs import paper_run
    config = paper_run().config
    return int(per_epoch(60_000, config.batch_size) * config.epochs)


register(Exercise(
    "06.3", "how many optimizer steps in 100 epochs",
    "The 100-epoch run trains on the 60,000 MNIST training images with batch 128; the last, "
    "smaller batch of each epoch is kept. How many optimizer steps does it take?",
    truth=lambda: _paper_steps(lambda n, b: -(-n // b)), rtol=0.0, atol=0.0,
    shape_hint="a whole number",
    mistakes=(
        Mistake(lambda: _paper_steps(lambda n, b: n // b),
                "60,000/128 = 468.75: the last 96 images still make a (smaller) batch, so an "
                "epoch has 469 steps."),
        Mistake(lambda: _paper_steps(lambda n, b: n / b),
                "a step is a whole batch: round 60,000/128 up."),
        Mistake(lambda: 100 * 10_000 // 128, "the run uses all of MNIST (60,000 images), not "
                                             "the embedded 10,000."),
    ),
    solution_text="⌈60,000/128⌉ = 469 steps per epoch, 46,900 in 100 epochs: the 'steps' field "
                  "of the run's summary.json.",
    solution_code="""
from bbits_ref.course.runs import paper_run
answer = -(-60_000 // 128) * 100
assert answer == paper_run().summary["steps"]
""",
))



def _ptq_zero_threshold(signed=True, step_fraction=0.5) -> float:
    """|w|/β below which a 2-bit quantizer with β = max(w) rounds a weight to 0 (§2.3)."""
    from bbits_ref.method.quantizer import step_sizes
    return float(step_sizes(np.float64(1.0), signed)[0]) * step_fraction


register(Exercise(
    "06.4", "which weights does 2-bit PTQ set to zero",
    "Post-training quantization gives each weight quantizer the range β = max(w) of the trained "
    "weights (docs/method.md §2.1) and trains nothing. At 2 bits a signed tensor has three "
    "levels. Below which magnitude |w| does a weight round to 0? Answer the threshold as a "
    "fraction of β (answer = threshold / β).",
    truth=_ptq_zero_threshold, shape_hint="a fraction of β",
    mistakes=(
        Mistake(lambda: _ptq_zero_threshold(signed=False),
                "that is half the unsigned step β/3. Weights are signed: the grid spans "
                "[−β, β], so s_2 = 2β/3."),
        Mistake(lambda: _ptq_zero_threshold(step_fraction=1.0),
                "that is the step s_2 itself. Rounding sends a weight to 0 while it is within "
                "half a step of 0."),
        Mistake(lambda: 0.25,
                "you divided the range 2β by 2^2 = 4. Between the levels of a b-bit grid there "
                "are 2^b − 1 steps: s_2 = 2β/3 (docs/method.md §2.3)."),
        Mistake(lambda: 0.5,
                "the outer levels are ±2β/3 (= ±s_2), not ±β: x_c/s_2 stays below 1.5, so it "
                "rounds to −1, 0 or 1."),
    ),
    solution_text="Signed: s_2 = (β − (−β))/(2^2 − 1) = 2β/3, and w rounds to 0 while "
                  "|w|/s_2 < 1/2, i.e. |w| < β/3. A trained tensor's maximum lies far out in "
                  "its tail, so most weights sit inside ±β/3: 2-bit PTQ sets most of them to 0. "
                  "QAT can shrink β and move the weights to where the grid has levels.",
    solution_code="""
from bbits_ref.method.quantizer import quantize_direct, step_sizes
s2 = 2 / 3                                    # signed 2-bit step for β = 1
answer = s2 / 2
assert np.isclose(s2, step_sizes(np.float64(1.0), signed=True)[0])
w = np.array([-0.34, -0.33, 0.33, 0.34])      # just outside and inside ±β/3
assert list(quantize_direct(w, np.float64(1.0), 2, True)) == [-s2, 0.0, 0.0, s2]
""",
))

# =========================================================================== 07: VGG-7

def _vgg7_macs(width) -> dict:
    from bbits_ref.method.bops import vgg7_layer_macs
    return dict(vgg7_layer_macs(width))


def _vgg7_conv2_macs(width=0.25, out_hw=32, scale=1.0) -> float:
    from bbits_ref.method.bops import conv_macs, vgg7_widths
    c = vgg7_widths(width)[0]
    return scale * conv_macs(c, c, 3, (out_hw, out_hw))


register(Exercise(
    "07.1", "the MACs of a VGG-7 layer at width 0.25",
    "VGG-7 at width 0.25: conv1 (3 → 32 channels, 3×3, padding 1) on the 32×32 image, then "
    "conv2 (32 → 32, 3×3, padding 1), before the first pooling. How many MACs does conv2 take "
    "per image?",
    truth=lambda: _vgg7_macs(0.25)["conv2"],
    rtol=0.0, atol=0.0, shape_hint="a whole number",
    mistakes=(
        Mistake(lambda: _vgg7_conv2_macs(1.0, scale=0.25),
                "width scales both the input and the output channels: the MACs shrink by "
                "0.25² = 1/16, not by 0.25."),
        Mistake(lambda: _vgg7_conv2_macs(out_hw=30),
                "padding 1 keeps a 3×3 convolution's output at 32×32."),
        Mistake(lambda: _vgg7_conv2_macs(out_hw=16),
                "the first pooling comes after conv2: conv2 still works on 32×32."),
    ),
    solution_text="C_out·H·W·k·k·C_in = 32·32·32·3·3·32 = 9,437,184: 1/16 of the 150,994,944 "
                  "of the paper's width-1 conv2 (docs/method.md §5.1, §7.2).",
    solution_code="""
from bbits_ref.method import bops
answer = 32 * 32 * 32 * 3 * 3 * 32
assert answer == dict(bops.vgg7_layer_macs(0.25))["conv2"]
""",
))

_BN = {"weight": 0.8, "scale": 1.5, "shift": 0.2, "mean": 0.4, "var": 0.25}


def _folded(bn=None):
    """(folded weight, folded shift) of one channel, from the library's folded layer."""
    from bbits_ref.autograd.engine import Tensor, default_dtype, no_grad
    from bbits_ref.method.layers import BBConfig, QLinearBN
    bn = dict(_BN, **(bn or {}))
    with default_dtype(np.float64):
        layer = QLinearBN(1, 1, rng=0, config=BBConfig(quantize=False), relu=False,
                          act_quant=False, prune=False, dtype=np.float64)
        layer.weight.data[:] = bn["weight"]
        layer.bn.weight.data[:] = bn["scale"]
        layer.bn.bias.data[:] = bn["shift"]
        layer.bn.running_mean = np.array([bn["mean"]])
        layer.bn.running_var = np.array([bn["var"]])
        layer.eval()
        with no_grad():
            y0, y1 = layer(Tensor(np.array([[0.0], [1.0]]))).data[:, 0]
    return float(y1 - y0), float(y0)


def _fold_by_hand(sigma, sign=-1.0, with_scale=True):
    b = _BN
    s = b["scale"] if with_scale else 1.0
    return b["weight"] * b["scale"] / sigma, b["shift"] + sign * s * b["mean"] / sigma


register(Exercise(
    "07.2", "fold a batch-norm layer by hand",
    "One output channel of a VGG-7 layer has the raw weight W = 0.8; its batch norm has "
    "scale 1.5, shift 0.2, running mean 0.4, running variance 0.25 (eps = 1e-5). In evaluation "
    "the layer is one linear map W_fold·x + b_fold. Compute answer = (W_fold, b_fold).",
    truth=_folded, shape_hint="a pair (W_fold, b_fold)",
    mistakes=(
        Mistake(lambda: _fold_by_hand(0.25), "divide by the standard deviation σ = √(var + eps) "
                                             "= 0.5, not by the variance."),
        Mistake(lambda: _fold_by_hand(0.5, sign=1.0),
                "batch norm subtracts the mean: b_fold = shift − scale·mean/σ."),
        Mistake(lambda: _fold_by_hand(0.5, with_scale=False),
                "the mean is scaled too: b_fold = shift − scale·mean/σ, not shift − mean/σ."),
    ),
    solution_text="scale·(W·x − mean)/σ + shift = (W·scale/σ)·x + (shift − scale·mean/σ) with "
                  "σ = √(0.25 + 1e-5) ≈ 0.5: W_fold = 0.8·1.5/0.5 = 2.4, b_fold = "
                  "0.2 − 1.5·0.4/0.5 = −1.0 (docs/method.md §6). The quantizer sees W_fold.",
    solution_code="""
sigma = np.sqrt(0.25 + 1e-5)
answer = (0.8 * 1.5 / sigma, 0.2 - 1.5 * 0.4 / sigma)
""",
))


def _vgg7_init_bops(input_bits=8, w_bits=32) -> float:
    from bbits_ref.method import bops
    macs = bops.vgg7_layer_macs(0.25)
    layers = bops.sequential_layer_costs(macs, [w_bits] * len(macs), [32] * (len(macs) - 1),
                                         input_bits=input_bits)
    return bops.relative_bops(layers)


register(Exercise(
    "07.3", "the relative BOPs of VGG-7 at initialisation",
    "With the CIFAR-10 gate preset every weight and activation starts at 32 bits; only the "
    "network input counts as 8 bits. What are the relative BOPs (in percent) of VGG-7 at "
    "width 0.25 at initialisation? Use bops.vgg7_layer_macs(0.25) for the MACs.",
    truth=_vgg7_init_bops,
    mistakes=(
        Mistake(lambda: _vgg7_init_bops(input_bits=32),
                "the input image is counted as 8-bit (docs/method.md §5): conv1 costs 8/32 of "
                "its full-precision BOPs."),
        Mistake(lambda: 25.0, "only conv1 is fed by the 8-bit input; every other layer is fed "
                              "by a 32-bit activation."),
        Mistake(lambda: _vgg7_init_bops() / 100, "give the answer in percent."),
    ),
    solution_text="Every layer but conv1 costs its full MAC·32·32; conv1 costs MAC·32·8. So "
                  "relative BOPs = 100·(1 − ¾·MAC_conv1/Σ MAC) ≈ 98.3 % at width 0.25.",
    solution_code="""
from bbits_ref.method import bops
macs = np.array([m for _, m in bops.vgg7_layer_macs(0.25)], dtype=float)
answer = 100 * (macs[0] * 32 * 8 + (macs[1:] * 32 * 32).sum()) / (macs * 32 * 32).sum()
""",
))


# =========================================================================== 08: the μ sweep

#: The BOP budget (relative BOPs, %) of exercise 08.1.
BOP_BUDGET = 0.6


def _sweep() -> list:
    """The committed μ sweep (course-runs/mu*) as CommittedRuns, smallest μ first."""
    from bbits_ref.course.runs import SWEEP, course_runs
    return list(course_runs(SWEEP).values())


def _best_under(budget=BOP_BUDGET) -> float:
    """μ of the most accurate sweep run within the budget (found on the Pareto front)."""
    from bbits_ref.training.experiments import pareto_front
    points = [{"mu": r.mu, "relative_bops": r.relative_bops, "test_accuracy": r.test_accuracy}
              for r in _sweep()]
    within = [p for p in pareto_front(points) if p["relative_bops"] <= budget]
    return max(within, key=lambda p: p["test_accuracy"])["mu"]


register(Exercise(
    "08.1", "the best run under a BOP budget",
    f"A deployment allows at most {BOP_BUDGET}% relative BOPs. Among the committed μ sweep "
    "(runs.course_runs(runs.SWEEP)), which run has the highest test accuracy within that budget? "
    "Answer with its μ.",
    truth=_best_under,
    mistakes=(
        Mistake(lambda: max(_sweep(), key=lambda r: r.test_accuracy).mu,
                "that run is the most accurate, but it is over the budget: keep only the runs "
                "with relative BOPs ≤ the budget first."),
        Mistake(lambda: min(_sweep(), key=lambda r: r.relative_bops).mu,
                "that run has the fewest BOPs, but the budget allows more: among the runs "
                "within it, take the most accurate."),
    ),
    solution_text="Filter the runs by relative BOPs ≤ the budget, then take the most accurate. "
                  "Such a run is on the Pareto front, or tied with one: a run that dominated "
                  "it would be within the budget too and at least as accurate "
                  "(docs/method.md §7.4).",
    solution_code="""
from bbits_ref.course import runs
from bbits_ref.course.exercises import BOP_BUDGET
sweep = runs.course_runs(runs.SWEEP).values()
within = [r for r in sweep if r.relative_bops <= BOP_BUDGET]
answer = max(within, key=lambda r: r.test_accuracy).mu
""",
))


def _bops_ratio(low=0.01, high=0.1) -> float:
    by_mu = {r.mu: r.relative_bops for r in _sweep()}
    return by_mu[low] / by_mu[high]


register(Exercise(
    "08.2", "μ × 10",
    "Going from μ = 0.01 to μ = 0.1 makes every gate ten times more expensive (λ = μ·b·w_t). "
    "Predict, then compute from the committed sweep: by what factor do the relative BOPs fall? "
    "answer = relative BOPs at μ = 0.01 / relative BOPs at μ = 0.1.",
    truth=_bops_ratio,
    mistakes=(
        Mistake(lambda: 10.0, "the price rises tenfold, but the BOPs do not fall tenfold: bit "
                              "widths move in steps (8 → 4 → 2), and the cross-entropy resists "
                              "every step that costs accuracy."),
        Mistake(lambda: 1 / _bops_ratio(), "you divided the other way round: μ = 0.01's BOPs "
                                           "over μ = 0.1's, a factor above 1."),
        Mistake(lambda: 0.1, "that is the ratio of the prices, upside down: compare the runs' "
                             "relative BOPs."),
    ),
    solution_text="Read both runs' relative BOPs off their summaries and divide: the factor is "
                  "far below 10. The prior's price is linear in μ, but what it buys is not: "
                  "most tensors already sit at 2 or 4 bits, the floor below which only pruning "
                  "saves more (docs/method.md §4.4, §5).",
    solution_code="""
from bbits_ref.course import runs
answer = runs.course_run("mu0.01").relative_bops / runs.course_run("mu0.1").relative_bops
""",
))


def _lsq_levels(bits=4, signed=True) -> int:
    """Distinct values of a ``bits``-bit LSQ quantizer, counted on a sweep past both ends."""
    from bbits_ref.method.baselines import lsq_levels, lsq_quantize
    q_n, q_p = lsq_levels(bits, signed)
    sweep = np.linspace(-q_n - 2, q_p + 2, 1 << 14)
    return np.unique(lsq_quantize(sweep, 1.0, bits=bits, signed=signed).data).size


register(Exercise(
    "08.3", "levels of a signed LSQ grid",
    "How many distinct values can a signed (weight) LSQ quantizer output at 4 bits? Compare with "
    "exercise 02.3's Bayesian Bits grid.",
    truth=_lsq_levels,
    rtol=0.0, atol=0.0, shape_hint="a whole number",
    mistakes=(
        Mistake(lambda: _levels(4, True),
                "15 is the Bayesian Bits signed grid, symmetric around 0. LSQ's signed grid runs "
                "from −Q_N = −2^(b−1) to Q_P = 2^(b−1) − 1: one more negative level."),
        Mistake(lambda: 2 ** 3, "2^(b−1) = Q_N counts the negative levels only; add 0 and the Q_P "
                                "positive ones."),
        Mistake(lambda: 2 ** 4 + 1, "the grid runs from −Q_N to Q_P = 2^(b−1) − 1, not to "
                                    "2^(b−1): count again."),
    ),
    solution_text="LSQ rounds v/s to the integers −Q_N … Q_P with Q_N = 2^(b−1) = 8 and "
                  "Q_P = 2^(b−1) − 1 = 7: 8 + 1 + 7 = 16 = 2^4 values, every code of a 4-bit "
                  "integer. Bayesian Bits gives up one code to keep its grid symmetric "
                  "(docs/method.md §13).",
    solution_code="""
from bbits_ref.method.baselines import lsq_levels, lsq_quantize
q_n, q_p = lsq_levels(4, True)
sweep = np.linspace(-q_n - 2, q_p + 2, 10_000)          # in units of s = 1, past both ends
answer = np.unique(lsq_quantize(sweep, 1.0, bits=4, signed=True).data).size   # 2^4
""",
))

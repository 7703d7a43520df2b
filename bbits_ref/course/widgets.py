"""Interactive explorers for the course notebooks: ipywidgets controls wired to library functions.

Every explorer is thin wiring and holds no math of its own: each change of a control calls the
tested library functions again (:mod:`~bbits_ref.method.quantizer`, :mod:`~bbits_ref.method.gates`,
:mod:`~bbits_ref.method.prior`, :mod:`~bbits_ref.method.bops`, :mod:`~bbits_ref.autograd.gradcheck`) and shows what
they returned.  All explorers share one shape, so tests can drive them without a browser:

* ``controls`` — a dict of ipywidgets, e.g. ``explorer.controls["bits"].value = 4``;
* ``state``    — a dict of the numbers currently shown, recomputed on every change;
* ``output``   — an ``ipywidgets.HTML`` with those numbers as text (e.g. "max |error| = 0.0667");
* ``plot``     — an ``ipywidgets.Image`` with a small matplotlib figure (None with ``plot=False``);
* ``widget``   — the box to display.  A notebook cell can simply end with the explorer itself.

The explorers and their notebooks:

====================  ====================================================================
AutogradExplorer      01 — a primitive's math and a gradient check of its VJP
QuantizerExplorer     02 — range β, bits (0/1 gates) or fractional z4/z8, signed/unsigned (§2)
GateExplorer          03 — hard concrete / Gumbel-softmax: φ, temperature, (γ, ζ), threshold (§3)
PriorExplorer         04 — μ, MAC weight, logits: autoregressive vs independent prior (§4)
BopsExplorer          05 — per-layer bits and keep fractions, relative BOPs, baselines (§5)
TrainingReplay        00, 06 — the epochs of a training history, one slider (§5, readout)
MuSweepExplorer       08 — the committed μ sweep: a run's configuration and Pareto point (§4.4)
====================  ====================================================================

Figures are drawn on a plain :class:`matplotlib.figure.Figure` (no pyplot state) and shown as a
PNG, so they behave the same in JupyterLab, under nbval and in tests.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np

try:
    import ipywidgets as widgets
except ImportError as exc:       # an optional dependency: say how to get it
    raise ImportError("bbits_ref.course.widgets needs ipywidgets (the notebooks' sliders); install it "
                      "with: pip install 'bbits-ref[notebooks]' (or pip install ipywidgets)") from exc

from bbits_ref.method import bops
from bbits_ref.method import gates
from bbits_ref.autograd import gradcheck
from bbits_ref.method import prior
from bbits_ref.method import quantizer
from bbits_ref.autograd.engine import PRIMITIVES, Tensor, default_dtype, no_grad

__all__ = ["Explorer", "AutogradExplorer", "QuantizerExplorer", "GateExplorer", "PriorExplorer",
           "BopsExplorer", "TrainingReplay", "MuSweepExplorer"]

_FIGSIZE = (7.0, 2.8)
_DPI = 80


def _fmt(value, digits: int = 4) -> str:
    """A number for the HTML readout: fixed decimals for moderate values, else scientific."""
    if value is None:
        return "–"
    value = float(value)
    if value != 0 and (abs(value) < 10.0 ** -digits or abs(value) >= 1e6):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _table(header: list, rows: list) -> str:
    """A small HTML table (strings are escaped)."""
    head = "".join(f"<th style='padding:0 8px'>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:0 8px'>{html.escape(str(c))}</td>"
                                     for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _check_in_range(name: str, value, lo: float, hi: float, hint: str = "") -> float:
    """A number inside a slider's range, or a ValueError that says the range."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not lo <= float(value) <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}] (the slider's range); "
                         f"got {value!r}.{(' ' + hint) if hint else ''}")
    return float(value)


class Explorer:
    """Base class: controls → ``_compute()`` (library calls) → ``state`` → text and figure.

    Subclasses build ``self.controls`` and implement ``_compute`` (returns the new state),
    ``_render`` (HTML from the state) and, optionally, ``_draw(fig)``.
    """

    def __init__(self, controls: dict, plot: bool = True, title: str = "") -> None:
        self.controls = controls
        self.state: dict = {}
        self.error: str | None = None          # the last error raised by a control change
        self.output = widgets.HTML()
        self.plot = widgets.Image(format="png") if plot else None
        self.figure = None                      # the last matplotlib Figure drawn
        self._holding = False                   # True while controls are set programmatically
        parts = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        parts += [widgets.VBox(list(controls.values())), self.output]
        if self.plot is not None:
            parts.append(self.plot)
        self.widget = widgets.VBox(parts)
        for control in controls.values():
            control.observe(self._on_change, names="value")

    # -- updating
    def update(self) -> dict:
        """Recompute ``state`` from the controls (library calls) and redraw; returns the state."""
        self.state = self._compute()
        self.error = None
        self.output.value = self._render()
        if self.plot is not None:
            self.plot.value = self._png()
        return self.state

    def _on_change(self, change) -> None:
        if self._holding:
            return
        self._sync_controls()
        try:
            self.update()
        except Exception as exc:   # shown next to the sliders: a callback's traceback is hidden
            self.error = f"{type(exc).__name__}: {exc}"
            self.output.value = (f"<span style='color:#b00'>{html.escape(self.error)}</span>")

    def _sync_controls(self) -> None:
        """Enable/disable or re-fill controls that depend on other controls (default: none)."""

    def _set_quietly(self, **values) -> None:
        """Set control values without triggering a recomputation per control."""
        self._holding = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._holding = False

    # -- subclass hooks
    def _compute(self) -> dict:
        raise NotImplementedError

    def _render(self) -> str:
        raise NotImplementedError

    def _draw(self, fig) -> None:
        raise NotImplementedError

    # -- display
    def _png(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # a fixed layout: constrained layout doubles the drawing time of these small figures
        fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
        fig.subplots_adjust(left=0.09, right=0.97, bottom=0.17, top=0.89, wspace=0.25)
        FigureCanvasAgg(fig)
        self._draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.figure = fig
        return buf.getvalue()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def display(self) -> None:
        """Show the explorer in a notebook (the same as ending a cell with it)."""
        from IPython.display import display
        display(self.widget)


# =========================================================================== 01: autograd

class AutogradExplorer(Explorer):
    """Notebook 01: pick a primitive of :data:`bbits_ref.autograd.engine.PRIMITIVES`, see its math line and
    the result of a gradient check of its VJP (:func:`bbits_ref.autograd.gradcheck.check_primitive`).

    state: ``{"primitive", "math", "ok", "max_abs_err", "max_rel_err", "method", "seed"}``.
    """

    def __init__(self, primitive: str = "mul", method: str = "fd", seed: int = 0) -> None:
        if primitive not in PRIMITIVES:
            raise ValueError(f"unknown primitive {primitive!r}; choose one of {sorted(PRIMITIVES)}")
        if method not in ("fd", "projection"):
            raise ValueError(f"method must be 'fd' (every element) or 'projection' (random "
                             f"directions); got {method!r}")
        controls = {
            "primitive": widgets.Dropdown(options=sorted(PRIMITIVES), value=primitive,
                                          description="primitive"),
            "method": widgets.ToggleButtons(options=["fd", "projection"], value=method,
                                            description="check"),
            "seed": widgets.IntSlider(value=int(seed), min=0, max=20, description="seed"),
        }
        super().__init__(controls, plot=False, title="A primitive and its gradient check")
        self.update()

    def _compute(self) -> dict:
        name, method, seed = (self.controls[k].value for k in ("primitive", "method", "seed"))
        res = gradcheck.check_primitive(name, seed=seed, method=method)
        return {"primitive": name, "math": PRIMITIVES[name].math, "ok": bool(res),
                "max_abs_err": res.max_abs_err, "max_rel_err": res.max_rel_err,
                "method": method, "seed": seed}

    def _render(self) -> str:
        s = self.state
        verdict = "passed" if s["ok"] else "FAILED"
        return (f"<code>{html.escape(s['primitive'])}</code>: {html.escape(s['math'])}<br>"
                f"gradient check ({s['method']}, {len(gradcheck.CASE_SHAPES)} shapes): "
                f"<b>{verdict}</b>, max abs error = {_fmt(s['max_abs_err'])}, "
                f"max rel error = {_fmt(s['max_rel_err'])}")


# =========================================================================== 02: quantizer

class QuantizerExplorer(Explorer):
    """Notebook 02: the Bayesian Bits quantizer of docs/method.md §2 on a sweep of inputs x.

    Controls: ``beta`` (β, the range), ``bits`` (2/4/8/16 through 0/1 gates,
    :func:`~bbits_ref.method.quantizer.gates_for_bits`), ``gates`` ("bits" or "fractional"),
    ``z4`` and ``z8`` (fractional gates), ``signed`` (weights [−β, β] or activations [0, β]).

    x_q comes from :func:`~bbits_ref.method.quantizer.bb_quantize`; the errors are measured on a dense,
    evenly spaced sweep of the clipping range [lo, hi] (so clipping error is not included).

    state: ``beta, signed, mode, bits (None in fractional mode), z4, z8, step_sizes {b: s_b},
    step_size (s_bits; None in fractional mode), levels (distinct output values on the sweep),
    max_abs_error, mse, max_diff_direct`` (max |x_q − quantize_direct| in bits mode, else None).
    """

    BITS = (2, 4, 8, 16)     # 32 bits is float rounding noise (§2.4): left out here
    BETA_RANGE = (0.05, 4.0)

    def __init__(self, beta: float = 1.0, bits: int = 2, signed: bool = True,
                 gates_mode: str = "bits", z4: float = 0.5, z8: float = 0.5,
                 n_dense: int = 1 << 18, plot: bool = True) -> None:
        beta = _check_in_range("beta", beta, *self.BETA_RANGE,
                               "beta is the clipping range β > 0 of §2.1")
        quantizer.check_bits(bits)
        if bits not in self.BITS:
            raise ValueError(f"bits must be one of {self.BITS} here (32 bits is float rounding "
                             f"noise); got {bits!r}")
        if not isinstance(signed, (bool, np.bool_)):
            raise TypeError(f"signed must be True (weights) or False (activations); got {signed!r}")
        if gates_mode not in ("bits", "fractional"):
            raise ValueError(f"gates_mode must be 'bits' (0/1 gates) or 'fractional' (z4, z8 "
                             f"sliders); got {gates_mode!r}")
        z4 = _check_in_range("z4", z4, 0.0, 1.0, "gates lie in [0, 1]")
        z8 = _check_in_range("z8", z8, 0.0, 1.0, "gates lie in [0, 1]")
        if not (isinstance(n_dense, int) and n_dense >= 1000):
            raise ValueError(f"n_dense (points of the error sweep) must be an int >= 1000; got "
                             f"{n_dense!r}")
        self.n_dense = n_dense
        controls = {
            "beta": widgets.FloatSlider(value=beta, min=self.BETA_RANGE[0], max=self.BETA_RANGE[1],
                                        step=0.05, description="β", readout_format=".2f",
                                        continuous_update=False),
            "bits": widgets.SelectionSlider(options=list(self.BITS), value=bits,
                                            description="bits"),
            "signed": widgets.Checkbox(value=bool(signed), description="signed (weights)"),
            "gates": widgets.ToggleButtons(options=[("0/1 gates: bits", "bits"),
                                                    ("fractional z4, z8", "fractional")],
                                           value=gates_mode, description="gates"),
            "z4": widgets.FloatSlider(value=z4, min=0.0, max=1.0, step=0.05, description="z4",
                                      continuous_update=False),
            "z8": widgets.FloatSlider(value=z8, min=0.0, max=1.0, step=0.05, description="z8",
                                      continuous_update=False),
        }
        super().__init__(controls, plot=plot,
                         title="Bayesian Bits quantizer: x → x_q (§2)")
        self._sync_controls()
        self.update()

    def _sync_controls(self) -> None:
        fractional = self.controls["gates"].value == "fractional"
        self.controls["bits"].disabled = fractional
        self.controls["z4"].disabled = self.controls["z8"].disabled = not fractional

    def gate_values(self) -> tuple:
        """(z4, z8, z16, z32) as currently selected."""
        if self.controls["gates"].value == "bits":
            return quantizer.gates_for_bits(self.controls["bits"].value)
        return (self.controls["z4"].value, self.controls["z8"].value, 0.0, 0.0)

    def sweep(self) -> np.ndarray:
        """The dense, evenly spaced inputs in [lo, hi] on which the errors are measured."""
        lo, hi = quantizer.clip_range(self.controls["beta"].value, self.controls["signed"].value)
        return np.linspace(float(lo), float(hi), self.n_dense)

    def quantize(self, x) -> np.ndarray:
        """x_q = bb_quantize(x) with the current β, signedness and gates (float64, no graph)."""
        with no_grad():
            x_q = quantizer.bb_quantize(Tensor(np.asarray(x, dtype=np.float64)),
                                        np.float64(self.controls["beta"].value), None,
                                        *self.gate_values(),
                                        signed=bool(self.controls["signed"].value))
        return x_q.data

    def _compute(self) -> dict:
        beta, signed = self.controls["beta"].value, bool(self.controls["signed"].value)
        mode = self.controls["gates"].value
        z4, z8, _, _ = self.gate_values()
        bits = self.controls["bits"].value if mode == "bits" else None
        steps = quantizer.step_sizes(np.float64(beta), signed)
        step = None if bits is None else float(steps[quantizer.BIT_WIDTHS.index(bits)])
        x = self.sweep()
        x_q = self.quantize(x)
        error = x_q - x
        state = {"beta": beta, "signed": signed, "mode": mode, "bits": bits, "z4": z4, "z8": z8,
                 "step_sizes": {b: float(s) for b, s in zip(quantizer.BIT_WIDTHS, steps)},
                 "step_size": step,
                 # distinct values, to 1e-10·β so that sums of residuals that differ only in
                 # the last bits count as one level
                 "levels": int(np.unique(np.round(x_q / beta, 10)).size),
                 "max_abs_error": float(np.max(np.abs(error))),
                 "mse": float(np.mean(error ** 2)),
                 "max_diff_direct": None}
        if bits is not None:
            direct = quantizer.quantize_direct(x, np.float64(beta), bits, signed)
            state["max_diff_direct"] = float(np.max(np.abs(x_q - direct)))
        return state

    def _render(self) -> str:
        s = self.state
        gates_txt = (f"{s['bits']} bits (0/1 gates)" if s["mode"] == "bits"
                     else f"fractional gates z4 = {s['z4']:.2f}, z8 = {s['z8']:.2f}")
        step = "" if s["step_size"] is None else f"step size = {_fmt(s['step_size'], 5)}, "
        direct = ("" if s["max_diff_direct"] is None else
                  f"<br>max |x_q − direct {s['bits']}-bit quantization| = "
                  f"{_fmt(s['max_diff_direct'], 3)}")
        return (f"{'signed' if s['signed'] else 'unsigned'}, β = {s['beta']:.2f}, {gates_txt}: "
                f"levels = {s['levels']}, {step}"
                f"max |error| = {s['max_abs_error']:.4f}, mean squared error = {_fmt(s['mse'])}"
                f"{direct}")

    def _draw(self, fig) -> None:
        beta, signed = self.controls["beta"].value, bool(self.controls["signed"].value)
        lo = -1.25 * beta if signed else -0.25 * beta
        x = np.linspace(lo, 1.25 * beta, 1201)
        x_q = self.quantize(x)
        parts = quantizer.decompose(x, np.float64(beta), signed)
        ax_q, ax_r = fig.subplots(1, 2)
        ax_q.plot(x, parts["x_c"], color="0.7", linestyle="--", label="x_c (clipped)")
        ax_q.plot(x, x_q, color="C0", label="x_q")
        ax_q.set_xlabel("x")
        ax_q.set_title("x_q against x", fontsize="medium")
        ax_q.legend(fontsize="x-small")
        for name, color in (("A2", "C0"), ("e4", "C1"), ("e8", "C2")):
            ax_r.plot(x, parts[name], color=color, label=name)
        ax_r.set_xlabel("x")
        ax_r.set_title("residual terms (before gating)", fontsize="medium")
        ax_r.legend(fontsize="x-small")


# =========================================================================== 03: gates

class GateExplorer(Explorer):
    """Notebook 03: one gate z(φ), hard concrete (§3.2–3.5) or Gumbel-softmax (§3.7).

    Controls: ``kind``, ``logit`` (φ), ``temperature``, ``gamma`` and ``zeta`` (the stretch,
    hard concrete only), ``threshold`` (test-time threshold t on P(z = 0), hard concrete only),
    ``seed``.  ``n_samples`` samples are drawn with :meth:`Gate.sample` from uniform noise of a
    seeded Generator (the same noise for every φ, so the histogram moves smoothly).

    state: ``kind, logit, temperature, gamma, zeta, threshold, prob_nonzero, prob_zero,
    prob_one`` (hard concrete only; None for Gumbel-softmax), ``deterministic`` (the test-time
    0/1 gate), ``threshold_logit``, ``hard_cut_logit`` (the active gate's own cut: −2 for hard
    concrete, −0.401403 for Gumbel-softmax), ``hard_cut`` (φ ≤ hard_cut_logit would cut this gate
    if it were z4…z32),
    ``mc_prob_nonzero, mc_prob_one, sample_mean`` (from the samples), ``n_samples, seed``.
    """

    def __init__(self, kind: str = "hard_concrete", logit: float = 0.0,
                 temperature: float = gates.HC_TEMPERATURE, gamma: float = gates.HC_GAMMA,
                 zeta: float = gates.HC_ZETA, threshold: float = gates.HC_THRESHOLD,
                 n_samples: int = 20000, seed: int = 0, plot: bool = True) -> None:
        if kind not in ("hard_concrete", "gumbel_softmax"):
            raise ValueError(f"kind must be 'hard_concrete' or 'gumbel_softmax'; got {kind!r}")
        logit = _check_in_range("logit", logit, -8.0, 8.0, "φ is the gate logit")
        temperature = _check_in_range("temperature", temperature, 0.05, 3.0)
        gamma = _check_in_range("gamma", gamma, -0.5, -0.01, "the stretch needs gamma < 0")
        zeta = _check_in_range("zeta", zeta, 1.01, 1.5, "the stretch needs zeta > 1")
        threshold = _check_in_range("threshold", threshold, 0.01, 0.99,
                                    "it is a probability of z = 0")
        if not (isinstance(n_samples, int) and n_samples >= 100):
            raise ValueError(f"n_samples must be an int >= 100; got {n_samples!r}")
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.n_samples = n_samples
        # redraw when a slider is released: a redraw takes a few tenths of a second
        slider = dict(continuous_update=False, readout_format=".3f")
        controls = {
            "kind": widgets.Dropdown(options=[("hard concrete", "hard_concrete"),
                                              ("Gumbel-softmax", "gumbel_softmax")],
                                     value=kind, description="gate"),
            "logit": widgets.FloatSlider(value=logit, min=-8.0, max=8.0, step=0.05,
                                         description="φ", **slider),
            "temperature": widgets.FloatSlider(value=temperature, min=0.05, max=3.0, step=0.05,
                                               description="temperature", **slider),
            "gamma": widgets.FloatSlider(value=gamma, min=-0.5, max=-0.01, step=0.01,
                                         description="γ", **slider),
            "zeta": widgets.FloatSlider(value=zeta, min=1.01, max=1.5, step=0.01,
                                        description="ζ", **slider),
            "threshold": widgets.FloatSlider(value=threshold, min=0.01, max=0.99, step=0.01,
                                             description="threshold t", **slider),
            "seed": widgets.IntSlider(value=seed, min=0, max=99, description="seed",
                                      continuous_update=False),
        }
        super().__init__(controls, plot=plot, title="A stochastic gate z(φ) (§3)")
        self._sync_controls()
        self.update()

    def _sync_controls(self) -> None:
        gumbel = self.controls["kind"].value == "gumbel_softmax"
        for name in ("gamma", "zeta", "threshold"):
            self.controls[name].disabled = gumbel

    def gate(self) -> gates.Gate:
        """The gate object for the current controls (:func:`bbits_ref.method.gates.make_gate`)."""
        c = {k: w.value for k, w in self.controls.items()}
        if c["kind"] == "hard_concrete":
            return gates.make_gate("hard_concrete", temperature=c["temperature"],
                                   gamma=c["gamma"], zeta=c["zeta"], threshold=c["threshold"])
        return gates.make_gate("gumbel_softmax", temperature=c["temperature"])

    def noise(self) -> np.ndarray:
        """The uniform noise of the samples: ``uniform_noise(default_rng(seed), (n_samples,))``."""
        rng = np.random.default_rng(self.controls["seed"].value)
        return gates.uniform_noise(rng, (self.n_samples,))

    def samples(self) -> np.ndarray:
        """``n_samples`` gate samples at the current φ (float64)."""
        phi = np.full(self.n_samples, self.controls["logit"].value, dtype=np.float64)
        with no_grad():
            return self.gate().sample(phi, self.noise()).data

    def _compute(self) -> dict:
        gate, phi = self.gate(), np.float64(self.controls["logit"].value)
        z = self._samples = self.samples()          # _draw plots these same samples
        hard = isinstance(gate, gates.HardConcrete)
        # the official visit of the chain (§3.5): a first gate that comes back as None is cut
        chain = gates.chain_gates(gate, np.array([phi, 6.0, 6.0, 6.0]), None, training=False)
        cut = chain[0] is None
        return {
            "kind": self.controls["kind"].value, "logit": float(phi),
            "temperature": gate.temperature,
            "gamma": gate.gamma if hard else None, "zeta": gate.zeta if hard else None,
            "threshold": gate.threshold if hard else None,
            "prob_nonzero": gate.prob_nonzero(phi).item(),
            "prob_zero": gate.prob_zero(phi).item(),
            "prob_one": gate.prob_one(phi).item() if hard else None,
            "deterministic": float(gate.deterministic(phi)),
            "threshold_logit": gate.threshold_logit(),
            "hard_cut_logit": float(gate.hard_cut_logit),
            "hard_cut": bool(cut),
            "mc_prob_nonzero": float(np.mean(z != 0) if hard else np.mean(z > 0.5)),
            "mc_prob_one": float(np.mean(z == 1)),
            "sample_mean": float(np.mean(z)),
            "n_samples": self.n_samples, "seed": self.controls["seed"].value,
        }

    def _render(self) -> str:
        s = self.state
        hard = s["kind"] == "hard_concrete"
        nonzero = "P(z ≠ 0)" if hard else "q(z = 1) = P(z > 0.5)"
        mc_nonzero = "z ≠ 0" if hard else "z > 0.5"
        rows = [[nonzero, _fmt(s["prob_nonzero"]), _fmt(s["mc_prob_nonzero"])]]
        if hard:
            rows.append(["P(z = 1)", _fmt(s["prob_one"]), _fmt(s["mc_prob_one"])])
        rows.append(["E[z]", "", _fmt(s["sample_mean"])])
        rule = ("1[P(z = 0) < t]" if hard else "1[φ > 0]")
        cut = ("yes: as z4…z32 this gate (and every higher one) would be the constant 0"
               if s["hard_cut"] else "no")
        return (_table(["", "closed form", f"fraction of {s['n_samples']} samples ({mc_nonzero})"],
                        rows)
                + f"test-time gate {rule} = <b>{s['deterministic']:.0f}</b> "
                  f"(flips at φ = {s['threshold_logit']:.4f}); "
                + f"hard cut (φ ≤ {s['hard_cut_logit']:.4g}): {cut}")

    def _draw(self, fig) -> None:
        s, gate, z = self.state, self.gate(), self._samples
        ax = fig.subplots()
        interior = z[(z > 0) & (z < 1)]
        bins = np.linspace(0.0, 1.0, 41)
        # scaled by the total count, so the bars estimate the density of the continuous part
        ax.hist(interior, bins=bins, weights=np.full(interior.size, 1.0 / (z.size * bins[1])),
                color="C0", alpha=0.5, label="samples in (0, 1)")
        if isinstance(gate, gates.HardConcrete):
            grid = np.linspace(0.002, 0.998, 400)
            ax.plot(grid, gate.pdf(grid, s["logit"]), color="C0", label="density (continuous part)")
            top = ax.get_ylim()[1]
            for at, mass in ((0.0, s["prob_zero"]), (1.0, s["prob_one"])):
                ax.annotate(f"P(z={at:g}) = {mass:.3f}", xy=(at, 0.9 * top),
                            ha="left" if at == 0 else "right", fontsize="small", color="C3")
        ax.set_xlabel("z")
        ax.set_title(f"{s['kind'].replace('_', ' ')} gate, φ = {s['logit']:.2f}", fontsize="medium")
        ax.legend(fontsize="x-small", loc="upper center")


# =========================================================================== 04: prior

class PriorExplorer(Explorer):
    """Notebook 04: the gate prior of one weight quantizer with pruning (§4).

    Controls: ``mu`` (μ), ``mac_weight`` (w_t = MAC_t / MAC_max), ``phi2``, ``phi4``, ``phi8``
    (φ16, φ32 are fixed at construction, −6 as on MNIST).  Probabilities π_b come from
    :meth:`HardConcrete.prob_nonzero`; the penalties μ·R_t from
    :func:`~bbits_ref.method.prior.bop_regularizer` (autoregressive, the official one) and
    :func:`~bbits_ref.method.prior.independent_regularizer`; the gradients from the engine's backward.

    state: ``mu, mac_weight, logits {b: φ_b}, prob_nonzero {b: π_b}, lambdas {b: λ_b}``
    (:func:`~bbits_ref.method.prior.prior_strengths`), ``autoregressive, independent`` (μ·R_t),
    ``grad_autoregressive, grad_independent`` ({b: ∂(μ·R_t)/∂φ_b}), ``kl_exact`` (the exact
    autoregressive KL of §4.2).
    """

    BITS = prior.PRUNED_BITS     # (2, 4, 8, 16, 32)

    def __init__(self, mu: float = 0.1, mac_weight: float = 1.0, phi2: float = 6.0,
                 phi4: float = 6.0, phi8: float = 6.0, phi16: float = -6.0, phi32: float = -6.0,
                 plot: bool = True) -> None:
        mu = _check_in_range("mu", mu, 1e-3, 1.0, "μ is the regularization strength")
        mac_weight = _check_in_range("mac_weight", mac_weight, 0.01, 1.0,
                                     "it is MAC_t / MAC_max, see bbits_ref.method.prior.mac_weights")
        logits = [_check_in_range(f"phi{b}", v, -8.0, 8.0, "gate logits φ")
                  for b, v in zip(self.BITS, (phi2, phi4, phi8, phi16, phi32))]
        self.fixed_logits = tuple(logits[3:])
        logit = dict(min=-8.0, max=8.0, step=0.1, readout_format=".1f", continuous_update=False)
        controls = {
            "mu": widgets.FloatLogSlider(value=mu, base=10, min=-3, max=0, step=0.1,
                                         description="μ", readout_format=".3g",
                                         continuous_update=False),
            "mac_weight": widgets.FloatSlider(value=mac_weight, min=0.01, max=1.0, step=0.01,
                                              description="MAC weight", continuous_update=False),
            "phi2": widgets.FloatSlider(value=logits[0], description="φ2", **logit),
            "phi4": widgets.FloatSlider(value=logits[1], description="φ4", **logit),
            "phi8": widgets.FloatSlider(value=logits[2], description="φ8", **logit),
        }
        super().__init__(controls, plot=plot, title="The gate prior of one weight tensor (§4)")
        self.update()

    def logits(self) -> np.ndarray:
        """(φ2, φ4, φ8, φ16, φ32) as float64."""
        return np.array([self.controls[k].value for k in ("phi2", "phi4", "phi8")]
                        + list(self.fixed_logits), dtype=np.float64)

    def _penalty(self, regularizer) -> tuple[float, np.ndarray]:
        """μ·R_t and its gradient with respect to (φ2, …, φ32), by the engine."""
        mu, w = self.controls["mu"].value, self.controls["mac_weight"].value
        phi = Tensor(self.logits(), requires_grad=True)
        probs = gates.HardConcrete().prob_nonzero(phi)
        with default_dtype(np.float64):
            penalty = regularizer(probs[0:1], probs[1:5], w) * mu
        penalty.backward()
        return penalty.item(), phi.grad

    def _compute(self) -> dict:
        mu, w = self.controls["mu"].value, self.controls["mac_weight"].value
        phi = self.logits()
        probs = gates.HardConcrete().prob_nonzero(phi).data
        lambdas = prior.prior_strengths(mu, w)
        auto, g_auto = self._penalty(prior.bop_regularizer)
        ind, g_ind = self._penalty(prior.independent_regularizer)
        by_bits = lambda values: {b: float(v) for b, v in zip(self.BITS, values)}  # noqa: E731
        return {"mu": mu, "mac_weight": w, "logits": by_bits(phi), "prob_nonzero": by_bits(probs),
                "lambdas": by_bits(lambdas), "autoregressive": auto, "independent": ind,
                "grad_autoregressive": by_bits(g_auto), "grad_independent": by_bits(g_ind),
                "kl_exact": prior.autoregressive_kl(probs, lambdas, exact=True).item()}

    def _render(self) -> str:
        s = self.state
        rows = [[f"z{b}", f"{s['logits'][b]:.1f}", _fmt(s["prob_nonzero"][b]),
                 _fmt(s["lambdas"][b]), _fmt(s["grad_autoregressive"][b]),
                 _fmt(s["grad_independent"][b])] for b in self.BITS]
        return (_table(["gate", "φ", "π = P(z ≠ 0)", "λ = μ·b·w", "∂/∂φ autoregressive",
                        "∂/∂φ independent"], rows)
                + f"μ·R autoregressive (official) = {_fmt(s['autoregressive'])}, "
                  f"μ·R independent = {_fmt(s['independent'])}, "
                  f"exact autoregressive KL = {_fmt(s['kl_exact'])}")

    def _draw(self, fig) -> None:
        s = self.state
        ax = fig.subplots()
        at = np.arange(len(self.BITS))
        ax.bar(at - 0.2, [s["grad_autoregressive"][b] for b in self.BITS], width=0.4,
               label="autoregressive (official)")
        ax.bar(at + 0.2, [s["grad_independent"][b] for b in self.BITS], width=0.4,
               label="independent")
        ax.set_xticks(at, [f"φ{b}" for b in self.BITS])
        ax.set_ylabel("∂(μ·R)/∂φ")
        ax.set_title("how hard the prior pushes each logit down", fontsize="medium")
        ax.legend(fontsize="x-small")


# =========================================================================== 05: BOPs

class BopsExplorer(Explorer):
    """Notebook 05: relative BOPs of LeNet-5 or VGG-7 for a per-layer configuration (§5).

    Controls: ``model`` ("lenet5"/"vgg7"), ``width`` (VGG-7 only), ``layer`` (which layer the
    next three sliders edit), ``w_bits`` (its weight bits), ``a_bits`` (the bits of its output
    activation, which feeds the next layer; none for the last layer), ``keep`` (fraction of its
    output channels kept; none for the last layer), ``uniform_w`` / ``uniform_a`` (the uniform
    baseline).  Costs come from :func:`~bbits_ref.method.bops.sequential_layer_costs` and
    :func:`~bbits_ref.method.bops.relative_bops`; the baseline from
    :func:`~bbits_ref.method.bops.uniform_relative_bops`.

    state: ``model, width, w_bits [per layer], a_bits [per layer but the last], keep [per layer],
    layers`` (the LayerCost list), ``relative_bops, uniform_relative_bops, table`` (text).
    """

    MODELS = ("lenet5", "vgg7")

    def __init__(self, model: str = "lenet5", width: float = 1.0, w_bits: int = 8,
                 a_bits: int = 8, uniform_w: int = 4, uniform_a: int = 4,
                 plot: bool = True) -> None:
        if model not in self.MODELS:
            raise ValueError(f"model must be one of {self.MODELS}; got {model!r}")
        width = _check_in_range("width", width, 0.125, 1.0, "VGG-7's width multiplier")
        for bits in (w_bits, a_bits):
            quantizer.check_bits(bits)
        uniform_bits = (1,) + bops.BIT_WIDTHS        # 1 bit: the binary rows of §5.1
        for name, bits in (("uniform_w", uniform_w), ("uniform_a", uniform_a)):
            if bits not in uniform_bits:
                raise ValueError(f"{name} must be one of {uniform_bits}; got {bits!r}")
        self._defaults = (int(w_bits), int(a_bits))
        self.config: dict = {}
        controls = {
            "model": widgets.Dropdown(options=[("LeNet-5", "lenet5"), ("VGG-7", "vgg7")],
                                      value=model, description="model"),
            "width": widgets.FloatSlider(value=width, min=0.125, max=1.0, step=0.125,
                                         description="VGG width", readout_format=".3f",
                                         continuous_update=False),
            "layer": widgets.Dropdown(options=["-"], description="layer"),
            "w_bits": widgets.SelectionSlider(options=list(bops.BIT_WIDTHS), value=w_bits,
                                              description="weight bits"),
            "a_bits": widgets.SelectionSlider(options=list(bops.BIT_WIDTHS), value=a_bits,
                                              description="output act bits"),
            "keep": widgets.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05,
                                        description="keep", continuous_update=False),
            "uniform_w": widgets.SelectionSlider(options=list(uniform_bits), value=uniform_w,
                                                 description="uniform w"),
            "uniform_a": widgets.SelectionSlider(options=list(uniform_bits), value=uniform_a,
                                                 description="uniform a"),
        }
        super().__init__(controls, plot=plot, title="BOPs per layer (§5)")
        self._reset_model()
        self.update()

    def layer_macs(self) -> list[tuple[str, int]]:
        """(name, MACs) of the selected model (:mod:`bbits_ref.method.bops`)."""
        if self.controls["model"].value == "lenet5":
            return bops.lenet5_layer_macs()
        return bops.vgg7_layer_macs(self.controls["width"].value)

    def _reset_model(self) -> None:
        """A new model: every layer back to the default bits, nothing pruned."""
        names = [name for name, _ in self.layer_macs()]
        w, a = self._defaults
        self.config = {"w_bits": [w] * len(names), "a_bits": [a] * (len(names) - 1),
                       "keep": [1.0] * len(names)}
        self._holding = True
        try:
            self.controls["layer"].options = names
            self.controls["layer"].value = names[0]
        finally:
            self._holding = False
        self._show_layer()

    def _show_layer(self) -> None:
        """Put the selected layer's values on the sliders (the last layer has no act q / z2)."""
        i = self._index()
        last = i == len(self.config["w_bits"]) - 1
        values = {"w_bits": self.config["w_bits"][i], "keep": self.config["keep"][i]}
        if not last:
            values["a_bits"] = self.config["a_bits"][i]
        self._set_quietly(**values)
        self.controls["a_bits"].disabled = self.controls["keep"].disabled = last
        self.controls["width"].disabled = self.controls["model"].value != "vgg7"

    def _index(self) -> int:
        return list(self.controls["layer"].options).index(self.controls["layer"].value)

    def _on_change(self, change) -> None:
        if self._holding:
            return
        owner = change["owner"]
        if owner in (self.controls["model"], self.controls["width"]):
            self._reset_model()
        elif owner is self.controls["layer"]:
            self._show_layer()
        elif owner is self.controls["w_bits"]:
            self.config["w_bits"][self._index()] = owner.value
        elif owner is self.controls["a_bits"] and self._index() < len(self.config["a_bits"]):
            self.config["a_bits"][self._index()] = owner.value
        elif owner is self.controls["keep"] and self._index() < len(self.config["a_bits"]):
            self.config["keep"][self._index()] = owner.value
        super()._on_change(change)

    def set_layer(self, layer: str, w_bits=None, a_bits=None, keep=None) -> None:
        """Select ``layer`` and set its sliders, as a user would (for notebooks and tests)."""
        if layer not in self.controls["layer"].options:
            raise ValueError(f"unknown layer {layer!r}; this model has "
                             f"{list(self.controls['layer'].options)}")
        self.controls["layer"].value = layer
        for name, value in (("w_bits", w_bits), ("a_bits", a_bits), ("keep", keep)):
            if value is not None:
                if self.controls[name].disabled:
                    raise ValueError(f"layer {layer!r} is the last layer: its logits are not "
                                     f"quantized and it has no pruning gate, so it has no {name}")
                self.controls[name].value = value

    def _compute(self) -> dict:
        macs = self.layer_macs()
        c = self.config
        layers = bops.sequential_layer_costs(macs, c["w_bits"], c["a_bits"], c["keep"])
        uw, ua = self.controls["uniform_w"].value, self.controls["uniform_a"].value
        return {"model": self.controls["model"].value, "width": self.controls["width"].value,
                "w_bits": list(c["w_bits"]), "a_bits": list(c["a_bits"]), "keep": list(c["keep"]),
                "layers": layers, "relative_bops": bops.relative_bops(layers),
                "uniform_relative_bops": bops.uniform_relative_bops([m for _, m in macs], uw, ua),
                "table": bops.format_bops_table(layers)}

    def _render(self) -> str:
        s = self.state
        uw, ua = self.controls["uniform_w"].value, self.controls["uniform_a"].value
        return (f"<pre style='font-size:smaller'>{html.escape(s['table'])}</pre>"
                f"relative BOPs = <b>{s['relative_bops']:.4f}%</b>; uniform w{uw}/a{ua} "
                f"baseline = {s['uniform_relative_bops']:.4f}%")

    def _draw(self, fig) -> None:
        s = self.state
        ax = fig.subplots()
        names = [layer.name for layer in s["layers"]]
        at = np.arange(len(names))
        ax.bar(at, [layer.bops / layer.baseline_bops * 100 for layer in s["layers"]],
               color="C0")
        ax.axhline(s["relative_bops"], color="C3", linestyle="--",
                   label=f"whole network: {s['relative_bops']:.3f}%")
        ax.set_xticks(at, names, fontsize="small")
        ax.set_ylabel("BOPs / 32·32-bit BOPs (%)")
        ax.set_title("each layer against its full-precision cost", fontsize="medium")
        ax.legend(fontsize="x-small")


# =========================================================================== 06: training replay

def _load_history(history) -> list:
    """The records of a history (a list, or the path of a history.json / a run directory)."""
    if isinstance(history, (str, os.PathLike)):
        path = Path(history)
        if path.is_dir():
            path = path / "history.json"
        if not path.exists():
            raise FileNotFoundError(f"no training history at {path}; pass the list of records "
                                    "(Trainer.history) or the path of a run's history.json")
        history = json.loads(path.read_text())
    if not isinstance(history, (list, tuple)):
        raise TypeError(f"history must be a list of records (Trainer.history) or the path of a "
                        f"history.json; got {type(history).__name__}")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict):
            raise TypeError(f"history record {i} is a {type(rec).__name__}, not a dict; expected "
                            "the records of bbits_ref.training.trainer.history_record")
    return list(history)


def _epoch_records(history: list) -> list:
    """The epoch records (kind="epoch"), checked to carry what the replay shows."""
    epochs = [rec for rec in history if rec.get("kind") == "epoch"]
    if not epochs:
        raise ValueError("the history has no epoch records (kind='epoch'); they are written at "
                         "the end of every epoch, so train for at least one epoch")
    for rec in epochs:
        missing = [k for k in ("epoch", "relative_bops", "test_acc", "quantizers") if k not in rec]
        if missing:
            raise ValueError(f"epoch record {rec.get('epoch', '?')} has no {missing}; expected the "
                             "records of bbits_ref.training.trainer.history_record")
        for name, q in rec["quantizers"].items():
            if not isinstance(q, dict) or "bits" not in q or "kept" not in q:
                raise ValueError(f"epoch record {rec['epoch']}: quantizer {name!r} has no 'bits' "
                                 "or 'kept'; expected the records of history_record")
    return epochs


class TrainingReplay(Explorer):
    """Notebook 06: replay the epochs of a training history with one ``epoch`` slider.

    ``history`` is ``Trainer.history`` (or the path of a run's ``history.json``); only its epoch
    records (``kind="epoch"``) are used.  For the selected epoch it shows every quantizer's
    deterministic bits, E[bits] and kept channels, and the relative BOPs and test accuracy; the
    figure is :func:`bbits_ref.plotting.plot_bops_accuracy` with the epoch marked.

    state: ``{"epoch", "relative_bops", "test_acc", "bits": {name: bits}, "kept": {name: kept},
    "expected_bits": {name: E[bits]}, "channels": {name: channels},
    "expected_relative_bops"}``.  An epoch missing from the history shows the last one before it.
    """

    def __init__(self, history, plot: bool = True) -> None:
        self.history = _load_history(history)
        self.records = _epoch_records(self.history)
        epochs = [int(round(rec["epoch"])) for rec in self.records]
        controls = {"epoch": widgets.IntSlider(value=epochs[-1], min=epochs[0], max=epochs[-1],
                                               description="epoch", continuous_update=False)}
        super().__init__(controls, plot=plot, title="Training replay: what the gates decided")
        self.update()

    def record(self, epoch: int | None = None) -> dict:
        """The epoch record shown for ``epoch`` (default: the slider's)."""
        epoch = self.controls["epoch"].value if epoch is None else epoch
        earlier = [rec for rec in self.records if rec["epoch"] <= epoch]
        return earlier[-1] if earlier else self.records[0]

    def _compute(self) -> dict:
        rec = self.record()
        qs = rec["quantizers"]
        return {"epoch": rec["epoch"], "relative_bops": rec["relative_bops"],
                "test_acc": rec["test_acc"],
                "expected_relative_bops": rec.get("expected_relative_bops"),
                "bits": {n: q["bits"] for n, q in qs.items()},
                "kept": {n: q["kept"] for n, q in qs.items()},
                "expected_bits": {n: q.get("expected_bits") for n, q in qs.items()},
                "channels": {n: q.get("channels") for n, q in qs.items()}}

    def _render(self) -> str:
        s = self.state
        rows = [[name, s["bits"][name], _fmt(s["expected_bits"][name], 2),
                 "–" if s["channels"][name] is None else f"{s['kept'][name]}/{s['channels'][name]}"]
                for name in s["bits"]]
        return (f"epoch {s['epoch']}: relative BOPs = <b>{s['relative_bops']:.4f}%</b>, "
                f"test accuracy = <b>{s['test_acc']:.4f}</b>"
                + _table(["quantizer", "bits", "E[bits]", "kept channels"], rows))

    def _draw(self, fig) -> None:
        from bbits_ref.plotting import plot_bops_accuracy
        ax = fig.subplots()
        plot_bops_accuracy(self.history, ax=ax)
        s = self.state
        if s["relative_bops"] > 0:
            ax.plot([s["relative_bops"]], [s["test_acc"]], marker="o", markersize=12,
                    markerfacecolor="none", markeredgecolor="C3", markeredgewidth=2)


# =========================================================================== 08: the μ sweep

class MuSweepExplorer(Explorer):
    """Notebook 08: a ``mu`` slider over the runs of a committed μ sweep.

    ``runs`` are :class:`bbits_ref.course.runs.CommittedRun` objects (a dict or a list): the
    Bayesian Bits runs (``kind == "bb"``) become the slider's μ values, the others are drawn as
    baselines.  For the selected μ it shows that run's learned configuration (per layer: weight
    bits, bits of the activation feeding it, kept fractions) and marks its point on the Pareto plot
    of :func:`bbits_ref.plotting.plot_pareto`; the front is
    :func:`bbits_ref.training.experiments.pareto_front`.

    state: ``{"mu", "label", "relative_bops", "test_accuracy", "on_front", "layers": [dict per
    layer, as in summary.json], "bits": {quantizer: bits}}``.
    """

    def __init__(self, runs, mu: float | None = None, plot: bool = True) -> None:
        from bbits_ref.training import experiments
        runs = list(runs.values() if isinstance(runs, dict) else runs)
        self.sweep = sorted((r for r in runs if r.kind == "bb"), key=lambda r: r.mu)
        self.baselines = [r for r in runs if r.kind != "bb"]
        if not self.sweep:
            raise ValueError("no run of a μ sweep among the runs (names like 'mu0.1'); pass "
                             "bbits_ref.course.runs.course_runs()")
        mus = [r.mu for r in self.sweep]
        if len(set(mus)) != len(mus):
            raise ValueError(f"two runs share a μ ({mus}); give one run per μ")
        mu = mus[len(mus) // 2] if mu is None else mu
        if mu not in mus:
            raise ValueError(f"mu must be one of the sweep's values {mus}; got {mu!r}")
        self.front = experiments.pareto_front(
            [{"label": r.label, "relative_bops": r.relative_bops,
              "test_accuracy": r.test_accuracy} for r in self.sweep])
        controls = {"mu": widgets.SelectionSlider(options=[(f"{m:g}", m) for m in mus], value=mu,
                                                  description="μ", continuous_update=False)}
        super().__init__(controls, plot=plot, title="The μ sweep: what each price buys")
        self.update()

    def run(self, mu: float | None = None):
        """The committed run of the sweep with this μ (default: the slider's)."""
        mu = self.controls["mu"].value if mu is None else mu
        return next(r for r in self.sweep if r.mu == mu)

    def _compute(self) -> dict:
        r = self.run()
        return {"mu": r.mu, "label": r.label, "relative_bops": r.relative_bops,
                "test_accuracy": r.test_accuracy,
                "on_front": any(p["label"] == r.label for p in self.front),
                "layers": [dict(layer) for layer in r.summary["layers"]],
                "bits": {n: q["bits"] for n, q in r.summary["quantizers"].items()}}

    def _render(self) -> str:
        s = self.state
        rows = [[layer["name"], _fmt(layer["w_bits"], 0), _fmt(layer["a_bits"], 0),
                 f"{layer['keep_out']:.3f}", f"{layer['keep_in']:.3f}"] for layer in s["layers"]]
        front = "on the Pareto front" if s["on_front"] else "dominated by another μ"
        return (f"μ = {s['mu']:g} ({html.escape(s['label'])}): relative BOPs = "
                f"<b>{s['relative_bops']:.4f}%</b>, test accuracy = "
                f"<b>{s['test_accuracy']:.4f}</b>, {front}"
                + _table(["layer", "w bits", "a bits (input)", "keep out", "keep in"], rows))

    def _draw(self, fig) -> None:
        from bbits_ref.plotting import plot_pareto

        def point(r):
            return {"label": r.label, "mu": r.mu, "relative_bops": r.relative_bops,
                    "test_accuracy": r.test_accuracy}
        ax = fig.subplots()
        plot_pareto([point(r) for r in self.sweep], [point(r) for r in self.baselines], ax=ax)
        s = self.state
        if s["relative_bops"] > 0:
            ax.plot([s["relative_bops"]], [s["test_accuracy"]], marker="o", markersize=14,
                    markerfacecolor="none", markeredgecolor="C3", markeredgewidth=2)

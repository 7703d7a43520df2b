"""The rebuttal's claims on the committed data (figures/rebuttal) and the script that draws them."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bbits_ref._errors import DataFileError
from bbits_ref.course import runs
from bbits_ref.training.gate_trace import overregularization_example

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "rebuttal_figures.py"


def _script():
    spec = importlib.util.spec_from_file_location("rebuttal_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def traces():
    return runs.gate_traces()


def test_committed_traces_are_the_recipe_the_script_names(traces):
    script = _script()
    for prior, trace in traces.items():
        c = trace["config"]
        assert (c.dataset, c.epochs, c.lr_gates, c.mu, c.seed) == ("mnist-small", 15, 1e-2, 0.1, 0)
        assert c.method.prior == prior and c.method.hard_cut is False
        assert c.data_dir is None
        assert trace["step"][0] == 1 and np.all(np.diff(trace["step"]) == 2)   # --every 2
    assert tuple(traces) == script.PRIORS == runs.TRACE_PRIORS


def test_over_regularization_shows_in_the_committed_traces(traces):
    """Once z4 is off, the independent prior keeps pushing φ8 down; the autoregressive one fades."""
    pick = overregularization_example(traces, "z8")
    q = pick["index"]
    end = {p: t["probs"][-1, q, 1] for p, t in traces.items()}
    push = {p: t["grad_prior"][t["probs"][:, q, 0] < 0.1, q, 1].mean() for p, t in traces.items()}
    assert end["autoregressive"] > 4 * end["independent"]
    assert push["independent"] > 3 * push["autoregressive"]
    for t in traces.values():     # the data sends (almost) nothing once z4 is off: z4 is rarely
        off = t["probs"][:, q, 0] < 0.1           # sampled on, and z8 only acts when it is
        assert abs(t["grad_data"][off, q, 1].mean()) < 0.01 * t["grad_prior"][off, q, 1].mean()


def test_traces_that_differ_in_more_than_the_prior_are_refused(tmp_path):
    folder = tmp_path / runs.REBUTTAL
    folder.mkdir()
    for prior in runs.TRACE_PRIORS:
        shutil.copy(runs.figures_dir() / runs.REBUTTAL / f"overregularization-{prior}.json", folder)
    path = folder / "overregularization-independent.json"
    data = json.loads(path.read_text())
    data["config"]["mu"] = 0.3
    path.write_text(json.dumps(data))
    with pytest.raises(DataFileError, match="prior only.*mu"):
        runs.gate_traces(tmp_path)


def test_script_draws_both_figures(tmp_path):
    script = _script()
    out = tmp_path / "rebuttal"
    out.mkdir()
    for prior in script.PRIORS:
        shutil.copy(script.trace_path(script.OUT, prior), out)
    written = script.draw(out, REPO / "figures")
    assert [p.name for p in written] == ["overregularization.png", "bit_width_evolution.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 150_000


def test_script_refuses_to_replace_traces(tmp_path, capsys):
    script = _script()
    (tmp_path / "overregularization-autoregressive.json").write_text("{}")
    assert script.main(["--out", str(tmp_path), "--trace"]) == 1
    assert "move them away" in capsys.readouterr().err
    assert (tmp_path / "overregularization-autoregressive.json").read_text() == "{}"

"""scripts/make_figures.py: regenerate committed figures from committed histories and sweeps."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_figures.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 30   # small PNGs: the tests check files and bytes, not looks
RUN_PNGS = {"gate_probabilities.png", "bit_widths.png", "bops_accuracy.png", "kept_channels.png",
            "training_curves.png"}
SUMMARY_PNGS = RUN_PNGS | {"layer_bops.png"}     # a run with a summary.json also gets these
MAX_PNG_BYTES = 150_000
SUMMARY = {"model": "lenet5", "dataset": "mnist", "test_accuracy": 0.9, "relative_bops": 2.0,
           "config": {"gate": "hard_concrete", "hard_cut": True},
           "layers": [{"name": "conv1", "macs": 460800, "w_bits": 8.0, "a_bits": 8.0,
                       "keep_out": 0.5, "keep_in": 1.0},
                      {"name": "fc1", "macs": 5120, "w_bits": 4.0, "a_bits": 8.0,
                       "keep_out": 1.0, "keep_in": 0.5}]}


def _load_script():
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_figures_module = _load_script()


def _quantizers(t):
    """Readout of two quantizers at training progress t in [0, 1] (one of them pruned)."""
    return {
        "conv1.weight_quantizer": {"chain_probs": [1.0, 0.9 - 0.5 * t, 0.5 - 0.4 * t, 0.1],
                                   "prune_prob_mean": 0.95 - 0.3 * t, "expected_bits": 7.0 - 3 * t,
                                   "bits": 8 if t < 0.5 else 4, "kept": 20 - int(10 * t),
                                   "channels": 20},
        "conv1.act_quantizer": {"chain_probs": [1.0, 0.8, 0.3 - 0.2 * t, 0.05],
                                "prune_prob_mean": None, "expected_bits": 6.0 - t, "bits": 8,
                                "kept": None, "channels": None},
    }


def synthetic_history(epochs=3):
    history = []
    for e in range(1, epochs + 1):
        for s in range(2):
            t = (e - 1 + s / 2) / epochs
            history.append({"kind": "step", "step": 2 * (e - 1) + s, "epoch": e - 1 + s / 2,
                            "ce": 2.0 - t, "reg": 1.0 - 0.5 * t, "train_acc": 0.5 + 0.4 * t,
                            "relative_bops": 10 - 8 * t, "expected_relative_bops": 11 - 8 * t,
                            "quantizers": _quantizers(t)})
        t = e / epochs
        history.append({"kind": "epoch", "step": 2 * e, "epoch": float(e), "ce": 2.0 - t,
                        "reg": 1.0 - 0.5 * t, "train_acc": 0.5 + 0.4 * t, "test_acc": 0.6 + 0.3 * t,
                        "relative_bops": 10 - 8 * t, "expected_relative_bops": 11 - 8 * t,
                        "quantizers": _quantizers(t)})
    return history


@pytest.fixture
def committed(tmp_path):
    """A figures/ tree as the lead commits it: one run, one sweep (with a run inside)."""
    root = tmp_path / "figures"
    run = root / "mnist-lenet5"
    run.mkdir(parents=True)
    (run / "history.json").write_text(json.dumps(synthetic_history()))
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    sweep = root / "sweep-lenet5"
    (sweep / "mu0.1").mkdir(parents=True)
    (sweep / "mu0.1" / "history.json").write_text(json.dumps(synthetic_history(2)))
    rows = [{"label": label, "mu": mu, "kind": kind, "test_accuracy": acc, "relative_bops": bops}
            for label, mu, kind, acc, bops in [("mu0.01", 0.01, "bb", 0.95, 5.0),
                                               ("mu0.1", 0.1, "bb", 0.93, 2.0),
                                               ("mu1", 1.0, "bb", 0.90, 3.0),
                                               ("w4a4", 0.0, "baseline", 0.94, 1.6)]]
    (sweep / "sweep.json").write_text(json.dumps({"runs": rows}))
    return root


def _pngs(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_renders_every_run_and_sweep_next_to_its_data_idempotently(committed):
    written = make_figures_module.make_figures([committed], dpi=DPI, log=lambda *_: None)
    files = _pngs(committed)
    expected = ({f"mnist-lenet5/{n}" for n in SUMMARY_PNGS}
                | {f"sweep-lenet5/mu0.1/{n}" for n in RUN_PNGS} | {"sweep-lenet5/pareto.png"})
    assert set(files) == expected
    assert sorted(p.relative_to(committed).as_posix() for p in written) == sorted(expected)
    assert all(data.startswith(PNG_SIGNATURE) and len(data) > 500 for data in files.values())
    # No temp files left behind, and the JSON inputs are untouched.
    assert not [p for p in committed.rglob(".*")]
    history = json.loads((committed / "mnist-lenet5" / "history.json").read_text())
    assert history == synthetic_history()
    # Idempotent: a second run leaves the same files with the same bytes, nothing added.
    make_figures_module.make_figures([committed], dpi=DPI, log=lambda *_: None)
    assert _pngs(committed) == files


def test_figures_follow_the_history(committed):
    """A changed history gives a different figure: the PNGs are drawn from the data."""
    run = committed / "mnist-lenet5"
    make_figures_module.make_figures([run], dpi=DPI, log=lambda *_: None)
    before = (committed / "mnist-lenet5" / "bit_widths.png").read_bytes()
    (committed / "mnist-lenet5" / "history.json").write_text(json.dumps(synthetic_history(5)))
    make_figures_module.make_figures([committed / "mnist-lenet5"], dpi=DPI, log=lambda *_: None)
    assert (committed / "mnist-lenet5" / "bit_widths.png").read_bytes() != before


def test_sweep_baselines_are_separated(committed):
    points, baselines = make_figures_module._sweep_points(committed / "sweep-lenet5" / "sweep.json")
    assert [p["label"] for p in points] == ["mu0.01", "mu0.1", "mu1"]
    assert [b["label"] for b in baselines] == ["w4a4"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        make_figures_module.make_figures([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match="no history.json"):
        make_figures_module.make_figures([tmp_path])
    (tmp_path / "history.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        make_figures_module.make_figures([tmp_path])
    bad_sweep = tmp_path / "sweep"
    bad_sweep.mkdir()
    (bad_sweep / "sweep.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="runs"):
        make_figures_module.make_figures([bad_sweep])


def test_command_line(committed):
    """`python scripts/make_figures.py DIR` works from a checkout (no install needed)."""
    ok = subprocess.run([sys.executable, str(SCRIPT), str(committed / "mnist-lenet5"),
                         "--dpi", str(DPI)], capture_output=True, text=True, timeout=120,
                        cwd=committed)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 6 figure(s)" in ok.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), str(committed / "nothing")],
                         capture_output=True, text=True, timeout=120, cwd=committed)
    assert bad.returncode == 1 and "not a directory" in bad.stderr


def test_a_bad_summary_is_named(committed):
    (committed / "mnist-lenet5" / "summary.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="summary.json must hold a JSON object"):
        make_figures_module.make_figures([committed / "mnist-lenet5"], dpi=DPI,
                                         log=lambda *_: None)
    assert not list((committed / "mnist-lenet5").glob("*.png"))       # nothing half-written


COMMITTED = REPO / "figures" / "mnist-lenet5"


@pytest.mark.skipif(not (COMMITTED / "history.json").is_file(), reason="no committed run")
def test_committed_figures_are_regenerated_and_small():
    """The committed run has every figure beside its history, each small enough for a repo."""
    pngs = {p.name: p.stat().st_size for p in COMMITTED.glob("*.png")}
    assert set(pngs) == SUMMARY_PNGS
    assert max(pngs.values()) <= MAX_PNG_BYTES

"""Tests for bbits_ref.training.experiments: recipes, members, member folders, the sweep table."""
import json
import subprocess
import sys

import numpy as np
import pytest

from bbits_ref._errors import UsageError
from bbits_ref.training import experiments as ex
from bbits_ref.training.config import TrainConfig

BASE = TrainConfig(epochs=1, train_limit=256, test_limit=128, batch_size=64, mu=0.1, seed=3)


# --------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("kind, bits, changes", [
    ("quant-only", None, {"pruning": False}),
    ("full-precision", None, {"quantize": False, "mu": 0.0}),
    ("prune-only", (8, 4), {"learn_bits": False, "weight_bits": 8, "act_bits": 4}),
    ("prune-only", "8/4", {"learn_bits": False, "weight_bits": 8, "act_bits": 4}),
    ("fixed-bits", (4, 8), {"learn_bits": False, "pruning": False, "weight_bits": 4,
                            "act_bits": 8, "mu": 0.0}),
    ("independent-prior", None, {"prior": "independent"}),
    ("no-hard-cut", None, {"hard_cut": False}),
    ("no-ste", None, {"ste": False}),
])
def test_ablation_changes(kind, bits, changes):
    assert ex.ablation_changes(kind, bits) == changes
    assert set(ex.ABLATIONS) == {"quant-only", "prune-only", "fixed-bits", "full-precision",
                                 "independent-prior", "no-hard-cut", "no-ste"}


@pytest.mark.parametrize("kind, bits, message", [
    ("no-stochastic-gates", None, "unknown ablation 'no-stochastic-gates'; choose one of quant-only"),
    ("prune-only", None, "the prune-only ablation needs W/A bit widths"),
    ("quant-only", (8, 8), "the quant-only ablation takes no bit widths"),
    ("fixed-bits", "8", "fixed-bits takes W/A bit widths such as 8/8; got '8'"),
])
def test_ablation_errors_are_one_line(kind, bits, message):
    with pytest.raises(UsageError, match=message) as info:
        ex.ablation_changes(kind, bits)
    assert "\n" not in str(info.value)


def test_bits_pair():
    assert ex.bits_pair("8/4", "--prune-only") == (8, 4)
    for text in ("8", "8/x", "8/4/2", ""):
        with pytest.raises(UsageError, match=f"--prune-only takes W/A bit widths such as 8/8; "
                                             f"got '{text}'"):
            ex.bits_pair(text, "--prune-only")


def test_baseline_configs():
    q = ex.baseline_config(BASE, "quant-only")
    assert (q.method.pruning, q.method.learn_bits, q.mu) == (False, True, 0.1)
    p = ex.baseline_config(BASE, "prune-only-w8a4")
    assert (p.method.pruning, p.method.learn_bits, p.method.weight_bits, p.method.act_bits,
            p.mu) == (True, False, 8, 4, 0.1)
    u = ex.baseline_config(BASE, "w4a2")
    assert (u.method.pruning, u.method.learn_bits, u.method.weight_bits, u.method.act_bits,
            u.mu) == (False, False, 4, 2, 0.0)
    f = ex.baseline_config(BASE, "fp32")
    assert (f.method.quantize, f.mu) == (False, 0.0)
    assert ex.baseline_config(BASE, "independent-prior").method.prior == "independent"
    assert ex.baseline_config(BASE, "no-hard-cut").method.hard_cut is False
    # the base is left as it was, and everything else is carried over
    assert BASE.method.pruning and BASE.mu == 0.1
    assert (u.epochs, u.train_limit, u.seed) == (1, 256, 3)


@pytest.mark.parametrize("spec, message", [
    ("w8", "unknown baseline 'w8': use wXaY"),
    ("w8a", "unknown baseline 'w8a'"),
    ("prune-only-8/8", "unknown baseline 'prune-only-8/8'"),
    ("W8A8", "unknown baseline 'W8A8'"),
    ("int8", "unknown baseline 'int8'"),
    ("w3a3", "baseline 'w3a3': .*bits must be one of"),
])
def test_bad_baseline_spec_is_one_line(spec, message):
    with pytest.raises(UsageError, match=message) as info:
        ex.baseline_config(BASE, spec)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- members
def test_sweep_members_are_mus_and_baselines_times_seeds():
    members = ex.sweep_members(BASE, [0.01, 1], seeds=[0, 2], baselines=["w4a4"])
    assert [(m.name, m.label, m.kind, m.seed, m.mu) for m in members] == [
        ("mu0.01-seed0", "mu0.01", "bb", 0, 0.01), ("mu1-seed0", "mu1", "bb", 0, 1.0),
        ("w4a4-seed0", "w4a4", "baseline", 0, 0.0),
        ("mu0.01-seed2", "mu0.01", "bb", 2, 0.01), ("mu1-seed2", "mu1", "bb", 2, 1.0),
        ("w4a4-seed2", "w4a4", "baseline", 2, 0.0)]
    for m in members:
        assert m.config.seed == m.seed and m.config.epochs == 1
    assert members[2].config.method.weight_bits == 4
    # without seeds: the base config's seed; NumPy numbers are numbers too
    assert [m.name for m in ex.sweep_members(BASE, [0.1])] == ["mu0.1-seed3"]
    assert [m.name for m in ex.sweep_members(BASE, np.float32([0.5]), np.arange(1))] == [
        "mu0.5-seed0"]


@pytest.mark.parametrize("mus, seeds, baselines, message", [
    ([0.1, 0.1], None, (), "lists μ values more than once: mu0.1"),
    ([0.1], [1, 1], (), "lists seeds more than once: 1"),
    ([0.1], None, ["w8a8", "w8a8"], "more than once: w8a8"),
    ([float("nan")], None, (), "every μ must be a finite number ≥ 0; got nan"),
    ([-1.0], None, (), "every μ must be a finite number ≥ 0"),
    ([0.1], [-1], (), "every seed must be a whole number ≥ 0"),
    ([0.1], [0.5], (), "every seed must be a whole number ≥ 0"),
    ([], None, (), "at least one μ or baseline"),
])
def test_bad_sweeps_are_one_line_errors(mus, seeds, baselines, message):
    with pytest.raises(UsageError, match=message) as info:
        ex.sweep_members(BASE, mus, seeds, baselines)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- member folders
def write_member(d, config, *, summary=None, checkpoint=False):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config.to_dict()))
    if checkpoint:
        (d / "checkpoint.npz").write_bytes(b"only its presence is looked at")
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


def test_member_state(tmp_path):
    d = tmp_path / "m"
    assert ex.member_state(d, BASE) == ex.MemberState("new")
    write_member(d, BASE)                                   # started, no epoch finished
    assert ex.member_state(d, BASE).state == "new"
    write_member(d, BASE, checkpoint=True)
    assert ex.member_state(d, BASE).state == "interrupted"
    done = {"test_accuracy": 0.9, "relative_bops": 1.5, "config": BASE.to_dict()}
    write_member(d, BASE, summary=done)
    assert ex.member_state(d, BASE).state == "finished"
    # where the data comes from is not a difference
    assert ex.member_state(d, BASE.replace(data_dir="/elsewhere")).state == "finished"
    other = ex.member_state(d, BASE.replace(epochs=2, pruning=False))
    assert other.state == "other-settings"
    assert other.differences == ("epochs: 1 -> 2", "pruning: True -> False")


def test_member_state_distrusts_its_files(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "checkpoint.npz").write_bytes(b"x")
    assert ex.member_state(d, BASE) == ex.MemberState(
        "other-settings", ("checkpoint.npz without config.json",))
    (d / "config.json").write_text("{not json")
    assert ex.member_state(d, BASE) == ex.MemberState("other-settings",
                                                      ("config.json is unreadable",))
    (d / "config.json").write_text(json.dumps({"epochs": "many"}))
    assert ex.member_state(d, BASE).state == "other-settings"
    # a summary that is not a finished run's (NaN accuracy) does not count as finished
    write_member(d, BASE, checkpoint=True, summary={"test_accuracy": float("nan"),
                                                   "relative_bops": 1.0,
                                                   "config": BASE.to_dict()})
    assert ex.member_state(d, BASE).state == "interrupted"
    # a summary of other settings next to this config.json is a conflict, not a finished run
    write_member(d, BASE, summary={"test_accuracy": 0.9, "relative_bops": 1.0,
                                   "config": BASE.replace(mu=1.0).to_dict()})
    assert ex.member_state(d, BASE) == ex.MemberState(
        "other-settings", ("summary.json belongs to other settings",))


def test_config_differences_reads_flat_legacy_configs():
    legacy = {k: v for k, v in BASE.to_dict().items() if k != "method"}
    legacy.update(pruning=False, hard_cut=True)
    saved = ex._saved_config(legacy)
    assert ex.config_differences(saved, BASE.replace(pruning=False).to_dict()) == []
    assert ex.config_differences(saved, BASE.to_dict()) == ["pruning: False -> True"]


# --------------------------------------------------------------------------- the table
def rows_of(values):
    """Rows from (label, kind, seed, status, acc, bops)."""
    return [{"member": f"{label}-seed{seed}", "label": label, "kind": kind, "seed": seed,
             "mu": 0.0 if kind == "baseline" else float(label[2:]), "status": status,
             "test_accuracy": acc, "relative_bops": bops, "reason": None, "note": None}
            for label, kind, seed, status, acc, bops in values]


ROWS = rows_of([
    ("mu0.1", "bb", 0, "done", 0.90, 2.0), ("mu0.1", "bb", 1, "done", 0.94, 3.0),
    ("mu0.1", "bb", 2, "failed", None, None),
    ("mu1", "bb", 0, "done", 0.91, 1.0), ("mu1", "bb", 1, "pending", None, None),
    ("mu10", "bb", 0, "failed", None, None),
    ("w4a4", "baseline", 0, "done", 0.99, 0.5), ("w4a4", "baseline", 1, "done", 0.97, 0.5),
])


def test_sweep_table_means_and_stds_over_seeds():
    table = ex.sweep_table(ROWS)
    groups = {g["label"]: g for g in table["groups"]}
    g = groups["mu0.1"]
    assert (g["n"], g["seeds"], g["failed"]) == (2, [0, 1], ["mu0.1-seed2"])
    assert g["test_accuracy_mean"] == pytest.approx(0.92)
    assert g["test_accuracy_std"] == pytest.approx(np.std([0.90, 0.94], ddof=1))
    assert g["relative_bops_mean"] == pytest.approx(2.5)
    assert g["relative_bops_std"] == pytest.approx(np.sqrt(0.5))
    assert (groups["mu1"]["n"], groups["mu1"]["relative_bops_std"]) == (1, None)
    assert groups["mu1"]["test_accuracy_mean"] == pytest.approx(0.91)
    assert (groups["mu10"]["n"], groups["mu10"]["test_accuracy_mean"]) == (0, None)
    assert groups["w4a4"]["relative_bops_std"] == 0.0
    # Pareto: among finished Bayesian Bits runs (mu1-seed0 dominates mu0.1-seed0; the
    # baseline, which would dominate them all, is not on it)
    assert [r["member"] for r in table["runs"] if r["pareto"]] == ["mu0.1-seed1", "mu1-seed0"]
    assert [g["label"] for g in table["groups"] if g["pareto"]] == ["mu0.1", "mu1"]
    assert ex.sweep_points(table) == (
        [r for r in table["runs"] if r["kind"] == "bb" and r["status"] == "done"],
        [r for r in table["runs"] if r["kind"] == "baseline"])
    assert ROWS[0].get("pareto") is None                     # the input rows are not changed
    json.dumps(table)                                        # JSON-ready


def test_format_sweep_table():
    text = ex.format_sweep_table(ex.sweep_table(ROWS))
    lines = text.splitlines()
    assert lines[2].startswith("w4a4-seed0") or lines[2].startswith("w4a4-seed1")
    assert any(ln.startswith("mu10-seed0") and "failed" in ln for ln in lines)
    assert any(ln.startswith("mu1-seed1") and "pending" in ln for ln in lines)
    assert "mean ± std" in text
    assert any(ln.startswith("mu0.1 ") and "0.9200 ± 0.0283" in ln for ln in lines)
    one_seed = ex.sweep_table([r for r in ROWS if r["seed"] == 0])
    assert "mean ± std" not in ex.format_sweep_table(one_seed)
    # plain rows (label, mu, accuracy, BOPs) are accepted too
    plain = [{"label": "a", "mu": 0.1, "kind": "bb", "test_accuracy": 0.9, "relative_bops": 1.0}]
    assert ex.format_sweep_table(plain).splitlines()[2].startswith("a ")


POINTS = [
    {"mu": 0.01, "relative_bops": 0.9, "test_accuracy": 0.95},
    {"mu": 0.03, "relative_bops": 0.5, "test_accuracy": 0.94},
    {"mu": 0.1, "relative_bops": 0.3, "test_accuracy": 0.92},
    {"mu": 0.3, "relative_bops": 0.2, "test_accuracy": 0.80},
    {"mu": 1.0, "relative_bops": 0.3, "test_accuracy": 0.85},    # same BOPs, less accurate
    {"mu": 3.0, "relative_bops": 0.6, "test_accuracy": 0.94},    # same accuracy, more BOPs
]


def test_pareto_front_removes_dominated_and_sorts():
    front = ex.pareto_front(POINTS)
    assert [p["mu"] for p in front] == [0.3, 0.1, 0.03, 0.01]


def test_pareto_front_keeps_identical_points_and_is_order_free():
    twin = {"label": "twin", "relative_bops": 0.3, "test_accuracy": 0.92}
    front = ex.pareto_front([twin, *POINTS[::-1]])
    assert [p.get("mu", p.get("label")) for p in front] == [0.3, "twin", 0.1, 0.03, 0.01]
    assert ex.pareto_front([]) == []
    assert ex.pareto_front(POINTS[:1]) == POINTS[:1]


def test_pareto_front_bad_points():
    with pytest.raises(ValueError, match=r"points\[1\].*test_accuracy"):
        ex.pareto_front([POINTS[0], {"mu": 1, "relative_bops": 0.3}])
    with pytest.raises(ValueError, match="non-finite"):
        ex.pareto_front([POINTS[0], {"mu": 1, "relative_bops": 0.3, "test_accuracy": np.nan}])


def test_plotting_uses_this_pareto_front():
    from bbits_ref import plotting
    assert plotting.pareto_front is ex.pareto_front


def test_experiments_import_no_higher_layer():
    code = ("import sys, bbits_ref.training.experiments; "
            "bad = sorted(m for m in sys.modules if m.startswith(('bbits_ref.plotting', "
            "'bbits_ref.cli', 'bbits_ref.course', 'matplotlib'))); print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)



def test_the_no_ste_break_it_recipe():
    assert ex.baseline_changes("no-ste") == {"ste": False}
    assert ex.baseline_config(BASE, "no-ste").method.ste is False

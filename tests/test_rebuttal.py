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


def test_script_draws_every_figure(tmp_path):
    script = _script()
    out = tmp_path / "rebuttal"
    out.mkdir()
    for prior in script.PRIORS:
        shutil.copy(script.trace_path(script.OUT, prior), out)
    written = script.draw(out, REPO / "figures")
    assert [p.name for p in written] == ["overregularization.png", "bit_width_evolution.png",
                                         "pareto_seeds.png", "gate_seeds.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 150_000


def test_script_refuses_to_replace_traces(tmp_path, capsys):
    script = _script()
    (tmp_path / "overregularization-autoregressive.json").write_text("{}")
    assert script.main(["--out", str(tmp_path), "--trace"]) == 1
    assert "move them away" in capsys.readouterr().err
    assert (tmp_path / "overregularization-autoregressive.json").read_text() == "{}"


# ----------------------------------------------------------------------------- Pareto with seeds
def test_pareto_seed_runs_are_the_course_recipe_with_their_seeds():
    rows = runs.pareto_seed_rows()
    labels = {r["label"] for r in rows}
    assert set(runs.SWEEP) <= labels
    assert {"lsq-w4a4", "pact-w4a4", "quant-only", "w2a2"} <= labels
    for r in rows:
        assert r["status"] == "done" and 0 < r["test_accuracy"] <= 1
        assert r["member"] == f"{r['label']}-seed{r['seed']}"
    # seed 0 of the μ sweep is the course run itself
    course = runs.course_run("mu0.1")
    row = next(r for r in rows if r["member"] == "mu0.1-seed0")
    assert row["test_accuracy"] == course.test_accuracy
    table = runs.pareto_seeds_table()
    groups = {g["label"]: g for g in table["groups"]}
    assert max(g["n"] for g in groups.values()) >= 2
    # LSQ and PACT at 4/4 with 8-bit first and last layers: the BOPs of that uniform network
    assert groups["lsq-w4a4"]["relative_bops_mean"] == pytest.approx(2.0743, abs=1e-4)


def _copy_seeds(tmp_path):
    root = tmp_path / "figures"
    shutil.copytree(runs.figures_dir() / runs.COURSE_RUNS, root / runs.COURSE_RUNS)
    shutil.copytree(runs.figures_dir() / runs.PARETO_SEEDS, root / runs.PARETO_SEEDS)
    return root


def test_a_pareto_seed_run_with_another_recipe_is_refused(tmp_path):
    root = _copy_seeds(tmp_path)
    member = sorted((root / runs.PARETO_SEEDS).iterdir())[0]
    config = json.loads((member / "config.json").read_text())
    config["epochs"] = 3
    (member / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataFileError, match=f"{member.name}.*epochs"):
        runs.pareto_seed_rows(root)


@pytest.mark.parametrize("name", ["mu0.1-seed0", "w5a5-seed1", "notes"])
def test_foreign_folders_in_pareto_seeds_are_refused(tmp_path, name):
    root = _copy_seeds(tmp_path)
    member = sorted((root / runs.PARETO_SEEDS).iterdir())[0]
    shutil.copytree(member, root / runs.PARETO_SEEDS / name)
    with pytest.raises(DataFileError):
        runs.pareto_seed_rows(root)


def test_collect_copies_finished_members_and_keeps_what_is_there(tmp_path):
    script = _script()
    sweep = tmp_path / "sweep"
    member = sorted((runs.figures_dir() / runs.PARETO_SEEDS).iterdir())[0]
    shutil.copytree(member, sweep / member.name)
    (sweep / "sweep.json").write_text(json.dumps({"runs": [
        {"member": member.name, "status": "done"}, {"member": "mu1-seed9", "status": "failed"}]}))
    out = tmp_path / "out"
    written = script.collect([sweep], out)
    assert sorted(p.name for p in written) == ["config.json", "summary.json"]
    assert script.collect([sweep], out) == []                      # the same files: nothing to do
    (sweep / member.name / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="another run"):
        script.collect([sweep], out)
    assert (out / "pareto-seeds" / member.name / "summary.json").read_bytes() == \
        (member / "summary.json").read_bytes()


# ----------------------------------------------------------------------------- gates with seeds
def test_seed_runs_are_the_paper_recipe_with_their_gates_and_seeds():
    found = runs.seed_runs()
    assert set(found) == set(runs.SEED_GATES)
    for label, committed in found.items():
        assert [r.config.seed for r in committed] == [0, 1, 2], label
        for r in committed:
            assert r.config.epochs == 100 and r.config.dataset == "mnist"
            assert len(r.epochs) == 100 and r.summary["test_accuracy"] > 0.98
    assert found["hard-concrete"][0].name == runs.PAPER_RUN
    assert found["gumbel-softmax-st"][1].config.method.gate_options == {"straight_through": True}
    groups = {g["label"]: g for g in runs.seed_runs_table()["groups"]}
    for label, committed in found.items():
        acc = [r.test_accuracy for r in committed]
        assert groups[label]["n"] == 3
        assert groups[label]["test_accuracy_mean"] == pytest.approx(np.mean(acc))
        assert groups[label]["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))


def test_readme_reports_the_committed_seed_runs():
    """The README's table of the first claim: the mean ± std of the committed runs."""
    readme = (REPO / "README.md").read_text()
    for g in runs.seed_runs_table()["groups"]:
        row = next(line for line in readme.splitlines()
                   if line.startswith(f"| {g['label']} (3 seeds)"))
        acc = f"{100 * g['test_accuracy_mean']:.2f} ± {100 * g['test_accuracy_std']:.2f}%"
        bops = f"{g['relative_bops_mean']:.3f} ± {g['relative_bops_std']:.3f}%"
        assert acc in row and bops in row, (row, acc, bops)


def _copy_seed_runs(tmp_path):
    root = tmp_path / "figures"
    shutil.copytree(runs.figures_dir() / runs.PAPER_RUN, root / runs.PAPER_RUN,
                    ignore=shutil.ignore_patterns("*.png"))
    shutil.copytree(runs.figures_dir() / runs.SEED_RUNS, root / runs.SEED_RUNS)
    return root


def test_a_seed_run_with_another_recipe_is_refused(tmp_path):
    root = _copy_seed_runs(tmp_path)
    member = root / runs.SEED_RUNS / "gumbel-softmax-st-seed1"
    config = json.loads((member / "config.json").read_text())
    config["method"]["prune_init"] = 3.0
    (member / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataFileError, match="gumbel-softmax-st-seed1.*prune_init"):
        runs.seed_runs(root)


@pytest.mark.parametrize("name", ["hard-concrete-seed0", "hard-concrete-seed01", "soft-gumbel-seed1",
                                  "notes"])
def test_foreign_folders_in_the_seed_runs_are_refused(tmp_path, name):
    root = _copy_seed_runs(tmp_path)
    shutil.copytree(root / runs.SEED_RUNS / "hard-concrete-seed1", root / runs.SEED_RUNS / name)
    with pytest.raises(DataFileError):
        runs.seed_runs(root)


def test_collect_seeds_keeps_epoch_records_and_refuses_another_run(tmp_path):
    script = _script()
    member = runs.figures_dir() / runs.SEED_RUNS / "gumbel-softmax-st-seed2"
    run = tmp_path / "run"
    shutil.copytree(member, run)
    history = json.loads((run / "history.json").read_text())
    step = dict(history[0], kind="step")
    (run / "history.json").write_text(json.dumps([step] + history))   # a step record too
    root = tmp_path / "figures"
    written = script.collect_seeds([run], root)
    dest = root / runs.SEED_RUNS / "gumbel-softmax-st-seed2"
    assert sorted(p.name for p in written) == ["config.json", "history.json", "summary.json"]
    assert json.loads((dest / "history.json").read_text()) == history
    assert script.collect_seeds([run], root) == []                  # the same files: nothing to do
    summary = json.loads((run / "summary.json").read_text())
    summary["test_accuracy"] = 0.5
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(FileExistsError, match="another run"):
        script.collect_seeds([run], root)
    assert (dest / "summary.json").read_bytes() == (member / "summary.json").read_bytes()


def test_plot_seed_runs_draws_runs_means_and_references():
    from matplotlib.figure import Figure

    from bbits_ref.plotting import REBUTTAL_RESULTS, plot_seed_runs
    table = {"runs": [{"label": "a", "status": "done", "relative_bops": 0.35,
                       "test_accuracy": 0.991},
                      {"label": "a", "status": "done", "relative_bops": 0.37,
                       "test_accuracy": 0.993},
                      {"label": "b", "status": "failed", "relative_bops": None,
                       "test_accuracy": None}],
             "groups": [{"label": "a", "n": 2, "relative_bops_mean": 0.36,
                         "relative_bops_std": 0.014, "test_accuracy_mean": 0.992,
                         "test_accuracy_std": 0.0014},
                        {"label": "b", "n": 0}]}
    ax = Figure().add_subplot()
    art = plot_seed_runs(table, ax=ax)
    assert len(art.runs) == len(art.means) == 1 and len(art.references) == len(REBUTTAL_RESULTS)
    assert art.runs[0].get_offsets().tolist() == [[0.35, 99.1], [0.37, 99.3]]
    assert art.references[1].get_ydata()[0] == pytest.approx(99.38)
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_seed_runs({"runs": [], "groups": [{"label": "b", "n": 0}]}, ax=ax)


def test_collect_seeds_refuses_a_run_of_another_recipe_and_writes_nothing(tmp_path):
    script = _script()
    run = tmp_path / "run"
    shutil.copytree(runs.figures_dir() / runs.SEED_RUNS / "hard-concrete-seed1", run)
    config = json.loads((run / "config.json").read_text())
    config["seed"], config["mu"] = 7, 0.3
    (run / "config.json").write_text(json.dumps(config))
    root = tmp_path / "figures"
    with pytest.raises(DataFileError, match="seed 7.*mu"):
        script.collect_seeds([run], root)
    assert not root.exists()


@pytest.mark.parametrize("history", ["5", "[]", '[{"kind": "epoch", "epoch": 1}]'])
def test_collect_seeds_refuses_a_damaged_history_in_one_line(tmp_path, history):
    script = _script()
    run = tmp_path / "run"
    shutil.copytree(runs.figures_dir() / runs.SEED_RUNS / "hard-concrete-seed1", run)
    (run / "history.json").write_text(history)
    root = tmp_path / "figures"
    with pytest.raises(DataFileError, match="history.json"):
        script.collect_seeds([run], root)
    assert not root.exists()

"""bbits_ref.course.runs: the committed runs load, are what they claim to be, and a damaged file
is one clear DataFileError; the μ-sweep explorer of notebook 08 shows the committed numbers."""
import itertools
import json
import re
import shutil

import numpy as np
import pytest

from bbits_ref._errors import DataFileError
from bbits_ref.course import runs
from bbits_ref.training import experiments
from bbits_ref.training.config import PRESETS, TrainConfig

ALL = runs.SWEEP + runs.ABLATION_RUNS
MACHINE_PATHS = re.compile(r"(/wor[k]/|/root/|/home/\w+|/tmp/|[A-Z]:\\Users)")


@pytest.fixture(scope="module")
def committed():
    return runs.course_runs()


def test_every_committed_course_run_loads_and_is_the_recipe_it_claims(committed):
    assert list(committed) == list(ALL)
    quick = TrainConfig(**PRESETS["quick"])          # 15 epochs, gate lr 1e-2, embedded MNIST
    for name, run in committed.items():
        if name in runs.SWEEP:
            assert run.kind == "bb" and run.config == quick.replace(mu=run.mu), name
        else:
            assert run.kind == "baseline", name
            assert run.config == experiments.baseline_config(quick, name), name
        assert [r["epoch"] for r in run.epochs] == list(range(1, 16)), name
        assert run.summary["steps"] == 15 * 79, name
    assert [committed[n].mu for n in runs.SWEEP] == [0.01, 0.03, 0.1, 0.3, 1.0]


def test_committed_runs_hold_no_machine_path_and_no_checkpoint():
    for name in ALL + (runs.PAPER_RUN,):
        folder = runs.figures_dir() / (name if name == runs.PAPER_RUN else f"course-runs/{name}")
        assert not (folder / "checkpoint.npz").exists(), folder
        for f in ("config.json", "history.json", "summary.json"):
            text = (folder / f).read_text()
            assert not MACHINE_PATHS.search(text), (folder, f)
        assert json.loads((folder / "config.json").read_text())["data_dir"] is None


def test_what_the_course_teaches_holds_on_the_committed_runs(committed):
    table = runs.sweep_table(committed)
    sweep = [committed[n] for n in runs.SWEEP]
    # the prior trades BOPs for accuracy: more μ, fewer BOPs (monotone over the sweep)
    bops = [r.relative_bops for r in sweep]
    assert all(b2 <= b1 for b1, b2 in itertools.pairwise(bops)), bops
    assert bops[-1] < 0.5 * bops[0]
    # uniform baselines sit exactly at the BOPs of their bit widths
    from bbits_ref.method.bops import lenet5_layer_macs, uniform_relative_bops
    macs = [m for _, m in lenet5_layer_macs()]
    for name, bits in (("w8a8", 8), ("w4a4", 4), ("w2a2", 2)):
        assert np.isclose(committed[name].relative_bops, uniform_relative_bops(macs, bits, bits))
    assert all(q["channels"] is None for q in committed["quant-only"].summary["quantizers"].values())
    assert all(q["bits"] == 8 for q in committed["prune-only-w8a8"].summary["quantizers"].values())
    # every finished row is in the table; the front is over the μ sweep
    assert {r["label"] for r in table["runs"]} == set(ALL)
    assert {r["label"] for r in table["runs"] if r["pareto"]} <= set(runs.SWEEP)


def test_the_paper_run_is_the_100_epoch_run():
    paper = runs.paper_run()
    assert paper.config.epochs == 100 and paper.config.dataset == "mnist"
    assert paper.summary["steps"] == 46_900 and len(paper.epochs) == 100
    assert paper.relative_bops == pytest.approx(0.3512, abs=1e-4)
    assert "100 epochs" in repr(paper)


def _copy(tmp_path, name="course-runs/mu0.1"):
    shutil.copytree(runs.figures_dir() / name, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("damage, says", [
    (lambda d: (d / "summary.json").unlink(), "no run file (summary.json)"),
    (lambda d: (d / "history.json").write_text("[{"), "not a readable run file"),
    (lambda d: (d / "config.json").write_text('{"epochs": -3}'), "is not a run configuration"),
    (lambda d: (d / "history.json").write_text('{"kind": "epoch"}'), "list of records"),
    (lambda d: (d / "history.json").write_text('[{"kind": "step"}]'), "no epoch records"),
    (lambda d: (d / "history.json").write_text('[{"kind": "epoch", "epoch": 1}]'),
     "epoch record 1 is damaged"),
    (lambda d: (d / "summary.json").write_text('{"test_accuracy": 2, "relative_bops": 1}'),
     "test_accuracy in [0, 1]"),
    (lambda d: (d / "summary.json").write_text(
        '{"test_accuracy": 0.9, "relative_bops": 1, "layers": [], "quantizers": {}}'),
     "needs a list of layers"),
])
def test_a_damaged_run_is_one_clear_error(tmp_path, damage, says):
    damage(_copy(tmp_path))
    with pytest.raises(DataFileError, match=re.escape(says)) as info:
        runs.load_run("course-runs/mu0.1", root=tmp_path)
    assert "\n" not in str(info.value)


def test_files_from_different_runs_are_refused(tmp_path):
    d = _copy(tmp_path)
    shutil.copy(runs.figures_dir() / "course-runs/mu1/summary.json", d / "summary.json")
    with pytest.raises(DataFileError, match="disagree"):
        runs.load_run("course-runs/mu0.1", root=tmp_path)


def test_missing_folders_and_bad_names(tmp_path):
    with pytest.raises(DataFileError, match="ship with the repository"):
        runs.figures_dir(tmp_path / "nowhere")
    with pytest.raises(DataFileError, match="no committed run 'course-runs/mu0.1'"):
        runs.load_run("course-runs/mu0.1", root=tmp_path)
    with pytest.raises(ValueError, match="a run name is a folder"):
        runs.load_run("../../etc")
    with pytest.raises(ValueError, match="no course run 'mu7'"):
        runs.course_run("mu7")


# ----------------------------------------------------------------------------- the μ explorer
def test_mu_sweep_explorer_shows_the_committed_runs(committed):
    pytest.importorskip("ipywidgets")
    from bbits_ref.course.widgets import MuSweepExplorer
    explorer = MuSweepExplorer(committed, plot=False)
    options = [v for _, v in explorer.controls["mu"].options]
    assert options == [0.01, 0.03, 0.1, 0.3, 1.0]
    front = {p["label"] for p in experiments.pareto_front(
        [{"label": r.label, "relative_bops": r.relative_bops, "test_accuracy": r.test_accuracy}
         for r in (committed[n] for n in runs.SWEEP)])}
    for mu, name in zip(options, runs.SWEEP):
        explorer.controls["mu"].value = mu
        s = explorer.state
        assert (s["label"], s["relative_bops"], s["test_accuracy"]) == (
            name, committed[name].relative_bops, committed[name].test_accuracy)
        assert s["layers"] == committed[name].summary["layers"]
        assert s["on_front"] == (name in front)
        assert f"{committed[name].relative_bops:.4f}%" in explorer.output.value
    assert len(explorer.baselines) == len(runs.ABLATION_RUNS)


def test_mu_sweep_explorer_draws_and_refuses_bad_input(committed):
    pytest.importorskip("ipywidgets")
    from bbits_ref.course.widgets import MuSweepExplorer
    explorer = MuSweepExplorer([committed["mu0.01"], committed["mu1"], committed["w4a4"]], mu=1.0)
    assert explorer.plot.value[:4] == b"\x89PNG"
    marked = explorer.figure.axes[0].lines[-1]
    assert marked.get_xdata()[0] == committed["mu1"].relative_bops
    with pytest.raises(ValueError, match="no run of a μ sweep"):
        MuSweepExplorer([committed["w4a4"]])
    with pytest.raises(ValueError, match="one of the sweep's values"):
        MuSweepExplorer(committed, mu=0.5)

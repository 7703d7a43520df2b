"""bbits_ref.course.exercises: every exercise is solvable, its hints fire on the mistakes they
describe, placeholders are "not answered yet", and the notebooks use exactly the registered ids."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bbits_ref._errors import DataFileError
from bbits_ref.course import exercises as E
from bbits_ref.course.exercises import Exercise, Mistake, exercise, exercise_ids
from bbits_ref.method import bops, decomposition, gates, prior, quantizer

REPO = Path(__file__).resolve().parents[1]
COURSE_A = sorted((REPO / "notebooks").glob("0[2-5]_*.ipynb"))
COURSE_B = sorted((REPO / "notebooks").glob("0[6-8]_*.ipynb"))
TOUR = REPO / "notebooks" / "00_tour.ipynb"
IDS = exercise_ids()
EXERCISE_CALL = re.compile(r"""exercise\(\s*["']([\d.]+)["']\s*\)""")


def run_check(ex, answer, capsys):
    """(returned bool, printed text) of ex.check(answer)."""
    ok = ex.check(answer)
    return ok, capsys.readouterr().out


def notebook_cells(path):
    return [("".join(c["source"]), c["cell_type"]) for c in json.loads(path.read_text())["cells"]]


# --------------------------------------------------------------------------- each exercise

@pytest.mark.parametrize("ex_id", IDS)
def test_the_solution_passes_its_own_checker(ex_id, capsys):
    ex = exercise(ex_id)
    ok, out = run_check(ex, ex.solution_answer(), capsys)
    assert ok is True and out.startswith(f"✓ {ex_id}"), out
    shown = ex.solution()
    assert "does NOT match" not in shown.result
    assert shown.code in str(shown) and shown.text in str(shown)


@pytest.mark.parametrize("ex_id", IDS)
def test_every_mistake_gets_its_own_hint_and_is_not_the_truth(ex_id, capsys):
    ex = exercise(ex_id)
    assert ex.mistakes, f"{ex_id} has no typical mistakes to hint at"
    for mistake in ex.mistakes:
        ok, out = run_check(ex, mistake.value(), capsys)
        assert ok is False and "✓" not in out, (ex_id, out)
        assert out.strip() == f"HINT {ex_id}: {mistake.hint}", (ex_id, out)


@pytest.mark.parametrize("ex_id", IDS)
@pytest.mark.parametrize("placeholder", [None, ...])
def test_a_placeholder_is_not_answered_yet(ex_id, placeholder, capsys):
    ok, out = run_check(exercise(ex_id), placeholder, capsys)
    assert ok is False and out.startswith(f"… {ex_id}: not answered yet"), out


@pytest.mark.parametrize("ex_id", IDS)
def test_solutions_are_collapsed_in_a_notebook(ex_id):
    page = exercise(ex_id).solution()._repr_html_()
    assert page.startswith("<details>") and "<details open" not in page
    assert "click to show" in page


# --------------------------------------------------------------------------- the library's truth

def test_the_truths_are_library_values():
    assert exercise("02.1").expected() == quantizer.step_sizes(np.float64(0.5), False)[2]
    assert np.isclose(exercise("02.1").expected(), 0.5 / 255)
    parts = quantizer.decompose(np.array([0.5]), np.float64(1.0), True)
    assert np.array_equal(exercise("02.2").expected(), [parts["A2"][0], parts["e4"][0]])
    assert exercise("02.3").expected() == 15
    chains = ((2, 4, 8), (2, 3, 4, 6, 8), (3, 6), (2, 6), (4, 6))
    assert tuple(exercise("02.4").expected()) == (1, 0, 1, 1, 0) == tuple(
        int(all(r.equals_direct for r in decomposition.equality_report(c))) for c in chains)
    assert exercise("03.1").expected() == pytest.approx(gates.HardConcrete().prob_one(1.0).item())
    assert exercise("03.2").expected() == pytest.approx(-0.935303, abs=1e-6)
    assert exercise("03.3").expected() == gates.GumbelSoftmax.hard_cut_logit
    assert exercise("04.1").expected() == pytest.approx(0.8)
    assert exercise("04.2").expected() == pytest.approx(0.736)
    assert exercise("05.1").expected() == 3_276_800
    summary = json.loads((REPO / "figures/mnist-lenet5-e100/summary.json").read_text())
    assert exercise("05.2").expected() == pytest.approx(summary["relative_bops"], rel=1e-12)
    # the hard cut: π16 = π32 = 0, so E[bits] = 2 + 2π4 + 4π4π8, not the closed-form 6.41
    p4, p8 = gates.HardConcrete().prob_nonzero(np.array([1.0, -0.9])).data
    assert exercise("05.3").expected() == pytest.approx(2 + 2 * p4 + 4 * p4 * p8, rel=1e-12)
    assert round(float(exercise("05.3").expected()), 2) == 6.35


def test_the_function_exercise_compares_with_the_library_on_random_inputs(capsys):
    ex = exercise("04.3")
    cases = ex.cases()
    assert len(cases) >= 3 and len({args[0].size for args in cases}) >= 3   # several channel counts
    for prob_z2, chain, w in cases:
        ref = prior.independent_regularizer(prob_z2, chain, w).item()
        assert ref == pytest.approx(ex.solution_answer()(prob_z2, chain, w), rel=1e-12)

    def almost(prob_z2, chain_probs, mac_weight):      # right on one channel only: max, not mean
        probs = np.concatenate([[np.max(prob_z2)], chain_probs])
        return float(np.sum(mac_weight * np.array([2, 4, 8, 16, 32]) * probs))

    ok, out = run_check(ex, almost, capsys)
    assert ok is False and "differs from the library on" in out and "HINT" not in out

    def unfinished(prob_z2, chain_probs, mac_weight):
        ...

    ok, out = run_check(ex, unfinished, capsys)
    assert ok is False and "not answered yet" in out


# --------------------------------------------------------------------------- wrong forms of answers

@pytest.mark.parametrize("ex_id, answer, says", [
    ("02.2", 0.5, "expected a pair (A_2, e_4), got shape ()"),
    ("02.2", "0.5", "not a number"),
    ("02.1", float("nan"), "not finite"),
    ("04.3", 0.736, "expected a function"),
    ("04.3", lambda p, c, w: np.ones(3), "returned an array of shape (3,)"),
    ("04.3", lambda p, c, w: 1 / 0, "your function raised ZeroDivisionError"),
])
def test_a_wrong_form_is_one_line_not_an_exception(ex_id, answer, says, capsys):
    ok, out = run_check(exercise(ex_id), answer, capsys)
    assert ok is False and out.startswith(f"✗ {ex_id}:") and says in out
    assert out.count("\n") == 1


def test_an_unknown_wrong_answer_gets_no_hint_and_no_answer(capsys):
    ex = exercise("02.1")
    ok, out = run_check(ex, 0.0123, capsys)
    assert ok is False and out.startswith("✗ 02.1: not yet (0.0123)") and "solution()" in out
    assert f"{float(ex.expected()):.6g}" not in out


# --------------------------------------------------------------------------- the registry

def test_unknown_ids_and_duplicates_are_refused():
    with pytest.raises(KeyError, match="no exercise '9.9'; the course has"):
        exercise("9.9")
    with pytest.raises(ValueError, match="already registered"):
        E.register(Exercise("02.1", "t", "p", truth=lambda: 1.0, solution_text="",
                            solution_code="answer = 1.0", mistakes=(Mistake(lambda: 2, "h"),)))
    assert IDS == sorted(IDS, key=lambda i: tuple(map(int, i.split("."))))


def test_the_notebooks_use_exactly_the_registered_ids():
    assert [p.name[:2] for p in COURSE_A] == ["02", "03", "04", "05"]
    assert [p.name[:2] for p in COURSE_B] == ["06", "07", "08"]
    used = {}
    for path in COURSE_A + COURSE_B:
        cells = notebook_cells(path)
        code = [text for text, kind in cells if kind == "code"]
        ids = sorted({m for text in code for m in EXERCISE_CALL.findall(text)})
        assert 2 <= len(ids) <= 4, (path.name, ids)
        assert all(i.startswith(path.name[:2] + ".") for i in ids), (path.name, ids)
        for i in ids:
            prompts = [t for t, kind in cells if kind == "markdown" and f"### Exercise {i}" in t]
            checks = [t for t in code if f'exercise("{i}").check(answer)' in t]
            solutions = [t for t in code if f'exercise("{i}").solution()' in t]
            assert len(prompts) == len(checks) == len(solutions) == 1, (path.name, i)
            # the committed answer cell holds a placeholder, so the notebook runs top to bottom
            placeholder = r"^answer = (\.\.\.|None)|^\s+\.\.\.\s+# your turn"
            assert re.search(placeholder, checks[0], re.MULTILINE), checks[0]
        used[path.name] = ids
    assert sorted(i for ids in used.values() for i in ids) == IDS


def test_each_notebook_ends_with_references_and_discussion():
    for path in [TOUR] + COURSE_A + COURSE_B:
        cells = notebook_cells(path)
        assert cells[-1][1] == "code" and re.search(r"^\s*assert\b", cells[-1][0], re.MULTILINE)
        heads = [t.splitlines()[0] for t, kind in cells if kind == "markdown"]
        tail = heads[-3:]
        assert tail[0] == "## References" and tail[1] == "## Discussion", (path.name, tail)
        refs = next(t for t, kind in cells if t.startswith("## References"))
        assert "van Baalen" in refs and "NeurIPS 2020" in refs
        discussion = next(t for t, _ in cells if t.startswith("## Discussion"))
        questions = re.findall(r"^\d\. ", discussion, re.MULTILINE)
        assert 2 <= len(questions) <= 3, path.name


def test_notebooks_cite_the_method_and_use_tau_for_the_temperature():
    for path in [TOUR] + COURSE_A + COURSE_B:
        text = "\n".join(t for t, _ in notebook_cells(path))
        assert "docs/method.md" in text, path.name
        assert not re.search(r"\bspe[c]\b", text), path.name      # cite docs/method.md instead
    gates_nb = "\n".join(t for t, _ in notebook_cells(REPO / "notebooks/03_gates.ipynb"))
    assert "\\tau = 2/3" in gates_nb and "\\beta = 2/3" not in gates_nb
    assert "/\\beta" not in gates_nb and "{\\beta}" not in gates_nb
    references = next(t for t, _ in notebook_cells(REPO / "notebooks/03_gates.ipynb")
                      if t.startswith("## References"))
    for author in ("Louizos", "Maddison", "Jang"):
        assert author in references


# --------------------------------------------------------------------------- the committed run

def test_the_learned_run_summary_is_read_as_an_untrusted_file(tmp_path, monkeypatch):
    assert len(E.learned_run_summary()["layers"]) == len(bops.LENET5_LAYERS)
    with pytest.raises(DataFileError, match="no committed run"):
        E.learned_run_summary(root=tmp_path)
    run = tmp_path / "mnist-lenet5-e100"
    shutil.copytree(Path(__file__).resolve().parents[1] / "figures" / "mnist-lenet5-e100", run)
    (run / "summary.json").write_text("{not json")
    with pytest.raises(DataFileError):
        E.learned_run_summary(root=tmp_path)
    (run / "summary.json").write_text(json.dumps({"layers": "conv1"}))
    with pytest.raises(DataFileError, match="needs"):
        E.learned_run_summary(root=tmp_path)
    import bbits_ref.course.exercises as module
    monkeypatch.setattr(module, "learned_run_summary", lambda: {"layers": [{"name": "conv1"}]})
    with pytest.raises(DataFileError, match="lacks"):
        E._learned_layers()


# --------------------------------------------------------------------------- course B: 00, 06-08

def test_course_b_truths_come_from_the_committed_runs():
    from bbits_ref.course import runs
    paper = runs.paper_run()
    layers = {layer["name"]: layer for layer in paper.summary["layers"]}
    # 06.1: the layer with the smallest MAC weight is the one that keeps the most weight bits
    weights = prior.mac_weights(dict(bops.lenet5_layer_macs()))
    assert exercise("06.1").expected() == ["conv1", "conv2", "fc1", "fc2"].index(
        min(weights, key=weights.get)) == 3
    fc1 = layers["fc1"]
    assert exercise("06.2").expected() == pytest.approx(
        fc1["macs"] * fc1["w_bits"] * fc1["a_bits"] * fc1["keep_out"] * fc1["keep_in"])
    assert exercise("06.3").expected() == paper.summary["steps"] == 46_900
    assert exercise("07.1").expected() == 9_437_184
    sigma = np.sqrt(0.25 + 1e-5)
    assert np.allclose(exercise("07.2").expected(), (0.8 * 1.5 / sigma, 0.2 - 1.5 * 0.4 / sigma))
    assert 95 < exercise("07.3").expected() < 100
    sweep = runs.course_runs(runs.SWEEP)
    best = exercise("08.1").expected()
    within = [r for r in sweep.values() if r.relative_bops <= E.BOP_BUDGET]
    assert best == max(within, key=lambda r: r.test_accuracy).mu
    assert exercise("08.2").expected() == pytest.approx(
        sweep["mu0.01"].relative_bops / sweep["mu0.1"].relative_bops)
    assert 1 < exercise("08.2").expected() < 10


def _text(path):
    return "\n".join(t for t, _ in notebook_cells(path))


def test_course_b_notebooks_cite_the_papers_they_use():
    for path in [TOUR] + COURSE_B:
        refs = next(t for t, _ in notebook_cells(path) if t.startswith("## References"))
        for needle in ("van Baalen", "NeurIPS 2020", "Louizos", "ICLR 2018", "Jang", "Maddison"):
            assert needle in refs, (path.name, needle)


def test_course_b_notation():
    """A_b and e_b (not x₂, ε₄); β only for the range: batch norm's parameters are words."""
    tour = _text(TOUR)
    assert "A_2" in tour and "e_4" in tour
    assert not re.search(r"x_2 \+|\\epsilon_4|ε₄|x₂", tour)
    vgg = _text(REPO / "notebooks/07_vgg7_cifar10.ipynb")
    assert "\\text{shift}" in vgg and "\\text{scale}" in vgg
    assert not re.search(r"\\beta_c|\\gamma_c|\\beta -|\\gamma \\mu|\\mu_B|\\mu_c", vgg)
    lenet = _text(REPO / "notebooks/06_lenet5_mnist.ipynb")
    assert "\\tau \\log" in lenet and "\\beta \\log" not in lenet


def test_the_lecturers_errors_stay_fixed():
    vgg = _text(REPO / "notebooks/07_vgg7_cifar10.ipynb")
    # 300 CIFAR-10 epochs take days to months here, not "hours"; the notebook times a step itself
    assert "hours here" not in vgg
    assert "391" in vgg and "300" in vgg and "days" in vgg and "train_step" in vgg
    # 06 shows the 100-epoch run that matches the paper, not only a shorter one
    lenet = _text(REPO / "notebooks/06_lenet5_mnist.ipynb")
    assert "runs.paper_run()" in lenet and "paper.config.epochs == 100" in lenet
    # the tour shows the committed run before any training
    cells = [t for t, kind in notebook_cells(TOUR) if kind == "code"]
    first_replay = next(i for i, t in enumerate(cells) if "TrainingReplay(paper.history)" in t)
    first_train = next(i for i, t in enumerate(cells) if "train(" in t)
    assert first_replay < first_train


def test_06_4_the_2_bit_zero_threshold_is_a_third_of_the_range():
    """The truth of 06.4 is the library's: a signed 2-bit quantizer zeroes exactly |w| < β/3."""
    assert exercise("06.4").expected() == pytest.approx(1 / 3, rel=1e-12)
    beta = np.float64(0.147)
    w = np.random.default_rng(0).uniform(-beta, beta, 10_000)
    zero = quantizer.quantize_direct(w, beta, 2, True) == 0
    assert np.array_equal(zero, np.abs(w) < beta * exercise("06.4").expected())

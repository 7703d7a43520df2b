"""The course notebooks as committed: clean, well-formed, and thin over the library.

What is checked here is the notebook *files*; running them is a separate pytest call in
scripts/run_tests.sh (nbval in small mode):

    BBITS_SMALL=1 python -m pytest --nbval-lax --nbval-current-env notebooks/ -p no:xdist

Rules (each a function returning the problems it finds, each shown to fire on a bad notebook):

* valid nbformat v4, named ``NN_name.ipynb``, Python 3 kernel (so nbval and JupyterLab pick the
  default kernel without asking);
* committed without outputs and execution counts, without saved widget state, except golden
  cells (metadata ``keep_output: true``), which nbval must check (``# NBVAL_CHECK_OUTPUT``);
* opens with a markdown cell stating the learning goals; ends with a code cell that asserts what
  the notebook taught;
* holds no library code: no ``class`` and at most a few ``def`` (the library is the single source
  of truth, STYLE.md), imports bbits_ref, and no paths of one machine.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_DEFS = 3            # a few small helpers for a plot or a by-hand derivation, not a library
NAME_PATTERN = re.compile(r"^\d\d_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")
GOALS_PATTERN = re.compile(r"learning goals?", re.IGNORECASE)
NBVAL_CHECK = "# NBVAL_CHECK_OUTPUT"
MACHINE_PATHS = re.compile(r"(/wor[k]/|/root/|/home/\w+|/tmp/|[A-Z]:\\\\Users)")


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _is_golden(cell) -> bool:
    return bool(cell.get("metadata", {}).get("keep_output"))


def _nbval_checked(cell) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return NBVAL_CHECK in cell.source or "nbval-check-output" in tags


def _where(i, cell) -> str:
    first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else "(empty)"
    return f"cell {i} ({first!r})"


# ----------------------------------------------------------------------------- the rules
def _schema_problems(nb) -> list:
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        return [f"not a valid notebook: {exc.message}"]
    return []


def check_format(nb, path) -> list:
    problems = []
    if nb.nbformat != 4:
        problems.append(f"nbformat {nb.nbformat}.{nb.nbformat_minor}; write version 4 "
                        "(nbformat.v4.new_notebook())")
    else:   # the v4 schema only: nbformat cannot validate other versions against it
        problems += _schema_problems(nb)
    if not NAME_PATTERN.match(Path(path).name):
        problems.append(f"name {Path(path).name!r} should look like 07_vgg7_cifar10.ipynb "
                        "(two digits, underscore, lower-case words)")
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel not in (None, "python3"):
        problems.append(f"kernelspec {kernel!r}; use 'python3' so nbval and JupyterLab start the "
                        "default Python kernel")
    return problems


def check_no_outputs(nb, path=None) -> list:
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or _is_golden(cell):
            continue
        if cell.outputs:
            problems.append(f"{_where(i, cell)} has {len(cell.outputs)} output(s)")
        if cell.execution_count is not None:
            problems.append(f"{_where(i, cell)} has execution count {cell.execution_count}")
        if "execution" in cell.metadata:
            problems.append(f"{_where(i, cell)} keeps execution timing metadata")
    if "widgets" in nb.metadata:
        problems.append("the notebook metadata keeps saved widget state ('widgets')")
    if problems:
        problems.append("strip with `nbstripout --keep-id notebooks/*.ipynb` before committing")
    return problems


def check_golden_cells(nb, path=None) -> list:
    """keep_output cells are golden: they have outputs and nbval compares them (lax mode checks
    only marked cells); a marked cell must keep its outputs, or nbval compares against nothing."""
    problems = []
    for i, cell in enumerate(_code_cells(nb)):
        golden, checked = _is_golden(cell), _nbval_checked(cell)
        if golden and not checked:
            problems.append(f"code {_where(i, cell)} keeps its output but nbval --nbval-lax will "
                            f"not compare it: start the cell with {NBVAL_CHECK!r}")
        if golden and not cell.outputs:
            problems.append(f"code {_where(i, cell)} is a golden cell without outputs: run it and "
                            "commit its output")
        if checked and not golden:
            problems.append(f"code {_where(i, cell)} is checked by nbval but its output is "
                            "stripped: set cell metadata keep_output: true")
    return problems


def check_opens_with_goals(nb, path=None) -> list:
    if not nb.cells:
        return ["the notebook has no cells"]
    first = nb.cells[0]
    if first.cell_type != "markdown":
        return [f"the first cell is a {first.cell_type} cell; open with a markdown cell of "
                "learning goals"]
    if not GOALS_PATTERN.search(first.source):
        return ["the first markdown cell does not state the learning goals "
                "(say 'Learning goals' and list them)"]
    return []


def check_ends_with_asserts(nb, path=None) -> list:
    if not nb.cells:
        return ["the notebook has no cells"]
    last = nb.cells[-1]
    if last.cell_type != "code":
        return [f"the last cell is a {last.cell_type} cell; end with a code cell of assertions "
                "that check what the notebook taught"]
    if not re.search(r"^\s*assert\b", last.source, re.MULTILINE):
        return ["the last code cell has no assert statement; end with assertions that check "
                "what the notebook taught"]
    return []


def check_no_library_code(nb, path=None) -> list:
    problems = []
    defs = 0
    for i, cell in enumerate(_code_cells(nb)):
        if re.search(r"^\s*class\s+\w+", cell.source, re.MULTILINE):
            problems.append(f"code {_where(i, cell)} defines a class; library code belongs in "
                            "bbits_ref (tested there), the notebook imports it")
        defs += len(re.findall(r"^\s*(async\s+)?def\s+\w+", cell.source, re.MULTILINE))
    if defs > MAX_DEFS:
        problems.append(f"{defs} function definitions (at most {MAX_DEFS}); move them into "
                        "bbits_ref and import them")
    source = "\n".join(c.source for c in _code_cells(nb))
    if not re.search(r"^\s*(from\s+bbits_ref[\w.]*\s+import|import\s+bbits_ref)", source,
                     re.MULTILINE):
        problems.append("no code cell imports bbits_ref; the notebooks teach the library")
    for i, cell in enumerate(nb.cells):
        if m := MACHINE_PATHS.search(cell.source):
            problems.append(f"{_where(i, cell)} names a path of one machine ({m.group(0)!r}); "
                            "use paths relative to the repository or the notebook")
    return problems


RULES = {f.__name__: f for f in (check_format, check_no_outputs, check_golden_cells,
                                 check_opens_with_goals, check_ends_with_asserts,
                                 check_no_library_code)}


# ----------------------------------------------------------------------------- the notebooks
def test_the_course_has_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers), f"two notebooks share a number: {numbers}"


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(path, rule):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    problems = RULES[rule](nb, path)
    assert not problems, f"{path.relative_to(REPO)}:\n  " + "\n  ".join(problems)


def test_nbstripout_would_not_change_them():
    """The independent oracle for 'committed without outputs': nbstripout's own check."""
    if not NOTEBOOKS:
        pytest.skip("no notebooks")
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", "--keep-id",
                           *map(str, NOTEBOOKS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (f"nbstripout would change these notebooks; run `nbstripout "
                                  f"--keep-id notebooks/*.ipynb`:\n{done.stdout}{done.stderr}")


# ----------------------------------------------------------------------------- the rules fire
def good_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Test\n\n**Learning goals.** You can add."),
                nbformat.v4.new_code_cell("import numpy as np\nfrom bbits_ref import ops"),
                nbformat.v4.new_code_cell("def show(x):\n    return x"),
                nbformat.v4.new_code_cell("x = 1 + 1\nassert x == 2")]
    return nb


GOOD_PATH = Path("99_test_notebook.ipynb")


def test_a_good_notebook_passes_every_rule():
    nb = good_notebook()
    assert {name: rule(nb, GOOD_PATH) for name, rule in RULES.items()} == \
        {name: [] for name in RULES}


def _problems(rule, mutate, path=GOOD_PATH):
    nb = good_notebook()
    mutate(nb)
    return " | ".join(RULES[rule](nb, path))


def test_outputs_and_counts_are_found():
    def executed(nb):
        nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
        nb.cells[3].execution_count = 4
    found = _problems("check_no_outputs", executed)
    assert "1 output(s)" in found and "execution count 4" in found and "nbstripout" in found
    assert "widget state" in _problems("check_no_outputs",
                                       lambda nb: nb.metadata.update(widgets={"state": {}}))


def test_golden_cells_keep_outputs_and_are_checked():
    def golden(nb, marked, outputs):
        cell = nb.cells[3]
        cell.metadata["keep_output"] = True
        cell.source = (NBVAL_CHECK + "\n" if marked else "") + cell.source
        stream = nbformat.v4.new_output("stream", name="stdout", text="2\n")
        cell.outputs = [stream] if outputs else []
        cell.execution_count = 3
    # A checked golden cell is fine under both rules.
    assert _problems("check_no_outputs", lambda nb: golden(nb, True, True)) == ""
    assert _problems("check_golden_cells", lambda nb: golden(nb, True, True)) == ""
    assert "will not compare" in _problems("check_golden_cells", lambda nb: golden(nb, False, True))
    assert "without outputs" in _problems("check_golden_cells", lambda nb: golden(nb, True, False))

    def marked_only(nb):
        nb.cells[3].source = NBVAL_CHECK + "\nprint(2)"
    assert "keep_output: true" in _problems("check_golden_cells", marked_only)


def test_format_problems_are_found():
    assert "version 4" in _problems("check_format", lambda nb: setattr(nb, "nbformat", 3))
    assert "should look like" in _problems("check_format", lambda nb: None, Path("Tour.ipynb"))
    assert "kernelspec 'bbits'" in _problems(
        "check_format", lambda nb: nb.metadata["kernelspec"].update(name="bbits"))
    assert "not a valid notebook" in _problems(
        "check_format", lambda nb: nb.cells[1].update(cell_type="raw-ish"))


def test_goals_and_asserts_are_required():
    assert "first cell is a code cell" in _problems(
        "check_opens_with_goals", lambda nb: nb.cells.pop(0))
    assert "learning goals" in _problems(
        "check_opens_with_goals", lambda nb: nb.cells[0].update(source="# 99 · Test"))
    assert "last cell is a markdown cell" in _problems(
        "check_ends_with_asserts", lambda nb: nb.cells.append(nbformat.v4.new_markdown_cell("bye")))
    # The word alone is not an assertion.
    assert "no assert statement" in _problems(
        "check_ends_with_asserts", lambda nb: nb.cells[3].update(source="print('assert me')"))


def test_library_code_is_found():
    assert "defines a class" in _problems(
        "check_no_library_code",
        lambda nb: nb.cells.insert(2, nbformat.v4.new_code_cell("class Quantizer:\n    pass")))
    many = "\n".join(f"def f{i}():\n    return {i}" for i in range(MAX_DEFS))
    assert f"{MAX_DEFS + 1} function definitions" in _problems(
        "check_no_library_code", lambda nb: nb.cells.insert(2, nbformat.v4.new_code_cell(many)))
    assert "imports bbits_ref" in _problems(
        "check_no_library_code", lambda nb: nb.cells[1].update(source="import numpy as np"))
    assert "one machine" in _problems(
        "check_no_library_code",
        lambda nb: nb.cells[3].update(source="x = open('/home/someone/x.json')\nassert x"))


def test_real_notebook_files_round_trip(tmp_path):
    """The rules read files the way the tests above read the committed notebooks."""
    path = tmp_path / "05_bops_explained.ipynb"
    nb = good_notebook()
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    nbformat.write(nb, path)
    reread = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert check_format(reread, path) == []
    assert check_no_outputs(reread, path)
    assert json.loads(path.read_text())["nbformat"] == 4

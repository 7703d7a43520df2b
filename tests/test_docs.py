"""The repository stands on its own: its citations resolve, and it points at nothing outside itself.

* Every section citation ("§2.3a", "§6–§7", "§3.3–3.5") in the package, the notebooks, the
  README, the docs, the benchmarks, the scripts and the tests names a heading of
  ``docs/method.md``, the repository's own description of the method.
* No committed text file refers to a path outside the repository or to material that is not
  part of it (no file is exempt, see :data:`EXEMPT`).
* The committed run configurations under ``figures/`` record no machine paths.
* What docs/method.md names in the package (``bbits_ref.x.y``) and in the repository
  (``tests/…``, ``figures/…``) exists.

Files are found with ``git ls-files`` (tracked files plus new, not ignored ones), so the tests
need a git checkout; from an unpacked source archive they are skipped.
"""
from __future__ import annotations

import importlib
import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"

#: Where section citations are looked for (paths relative to the repository root).
CITING = ("bbits_ref/", "notebooks/", "benchmarks/", "scripts/", "docs/", "tests/",
          "README.md", "ARCHITECTURE.md")

#: Files allowed to mention paths outside the repository: none (not even the CI harness; the
#: full-MNIST tests find their data through BBITS_REF_DATA or the cache, and skip without it).
EXEMPT = frozenset()

#: References that must not appear in a committed file: paths outside the repository and
#: mentions of private material that users do not have.  Each pattern is written so that this
#: file's own source does not match it (this file is scanned too).
FORBIDDEN = [
    ("a path into the parent's shared folder", re.compile(r"\.\./shared")),
    ("an absolute path on the build machine", re.compile(r"/wor[k]/")),
    ("a path into the private shared folder", re.compile(r"shared/(?:spe[c]|dat[a])\b")),
    ("the private method file's name", re.compile(r"bayesian-bits\.m[d]")),
    # prose that names the private method document instead of docs/method.md
    ("a mention of the private method document", re.compile(
        r"\bthe\s+spe[c]\b"                   # "the [document]", "the [document]'s"
        r"|\bspe[c](?:'s)?\s*§"               # "[document] §2.1"
        r"|\bspe[c]\s+section[s]?\b"          # "[document] sections: ..."
        r"|(?<![\w.])\(spe[c]\)"              # "(…)" as a label, not a call such as f(spec)
        r"|\|\s*spe[c]\s*\|"                  # "| … |" in a table header
        r"|\bspe[c]\s+golde[n]\b",            # "[document] golden"
        re.I)),
]

#: Every section number docs/method.md must keep: code cites them, so renumbering breaks
#: citations.  §8, §11 and §12 are numbered lists whose items are headings of their own.
REQUIRED_SECTIONS = (
    ["0", "1", "2", "2.1", "2.2", "2.3", "2.3a", "2.4", "2.5", "2.6", "2.7",
     "3", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "4", "4.1", "4.2", "4.3", "4.4",
     "5", "5.1", "6", "7", "7.1", "7.2", "7.3", "7.4", "7.5", "8", "9", "9.1", "10", "11", "12",
     "13"]
    + [f"8.{i}" for i in range(1, 13)]
    + [f"11.{i}" for i in range(1, 7)]
    + [f"12.{i}" for i in range(1, 12)])

# A section number: 2, 2.3 or 2.3a (a letter directly followed by another letter is a word,
# not a subsection: "§2.3as" cites 2.3).
_NUM = r"\d+(?:\.\d+(?:[a-z](?![A-Za-z]))?)?"
#: "§N[.M[a]]", optionally followed, without spaces, by a range ("–", "—", "-") or an
#: alternative ("/") and a second number, with or without its own "§": "§6–§7", "§3.3–3.5".
CITATION = re.compile(rf"§\s?(?P<first>{_NUM})(?:(?P<sep>[–—/-])§?(?P<second>{_NUM}))?")
HEADING = re.compile(rf"^#{{1,6}}\s+§?\s*(?P<number>{_NUM})[.:]?(?:\s|$)")


# --------------------------------------------------------------------------- helpers

@lru_cache(maxsize=1)
def repository_files() -> tuple[str, ...]:
    """Tracked files plus new, not ignored ones (those will be committed), that exist on disk."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's file list comes from git ls-files")
    names = sorted({n for n in out.stdout.decode("utf-8").split("\0") if n})
    return tuple(n for n in names if (ROOT / n).is_file())


def read_text(name: str) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = (ROOT / name).read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def method_sections(text: str) -> list[str]:
    """Section numbers of the Markdown headings, in document order (fenced code skipped)."""
    numbers, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            numbers.append(m.group("number"))
    return numbers


def citations(text: str):
    """Yield (line number, cited text, [section numbers]) for every citation in ``text``."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in CITATION.finditer(line):
            numbers = [m.group("first")] + ([m.group("second")] if m.group("second") else [])
            yield lineno, m.group(0), numbers, m.group("sep")


def unresolved_citations(files: dict[str, str], sections: list[str]) -> list[str]:
    """``file:line: citation (why)`` for each citation that names no section, or a backward range."""
    order = {number: i for i, number in enumerate(sections)}
    problems = []
    for name, text in files.items():
        for lineno, cited, numbers, sep in citations(text):
            missing = [n for n in numbers if n not in order]
            if missing:
                problems.append(f"{name}:{lineno}: {cited} (no heading {', '.join(missing)} in "
                                f"docs/method.md)")
            elif sep in ("–", "—", "-") and order[numbers[0]] > order[numbers[1]]:
                problems.append(f"{name}:{lineno}: {cited} (the range runs backwards)")
    return problems


def forbidden_references(files: dict[str, str]) -> list[str]:
    """``file:line: what ('match'): the line`` for each match of :data:`FORBIDDEN`.

    Patterns run on the whole text, so a phrase broken across two lines is found too.
    """
    problems = []
    for name, text in files.items():
        if name in EXEMPT:
            continue
        lines = text.splitlines()
        for what, pattern in FORBIDDEN:
            for m in pattern.finditer(text):
                lineno = text.count("\n", 0, m.start()) + 1
                match = " ".join(m.group(0).split())
                problems.append((name, lineno, f"{name}:{lineno}: {what} ({match!r}): "
                                               f"{lines[lineno - 1].strip()[:120]}"))
    return [p for _, _, p in sorted(problems, key=lambda p: (p[0], p[1]))]


def machine_paths(value, where: str = "") -> list[str]:
    """Every string in a JSON value that is an absolute path or has a '..' component, and every
    ``data_dir`` that is not null; each as ``key path: value``."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "data_dir" and item is not None:
                found.append(f"{path}: {item!r} (data_dir must be null: it is machine specific)")
            else:
                found += machine_paths(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += machine_paths(item, f"{where}[{i}]")
    elif isinstance(value, str):
        absolute = value.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value)
        if absolute or re.search(r"(^|[\\/])\.\.([\\/]|$)", value):
            found.append(f"{where}: {value!r}")
    return found


def run_configs() -> dict[str, dict]:
    """The committed run configurations: figures/**/config.json and the ``config`` recorded in
    figures/**/summary.json."""
    configs = {}
    for name in repository_files():
        if not name.startswith("figures/"):
            continue
        if name.endswith("/config.json"):
            configs[name] = json.loads((ROOT / name).read_text(encoding="utf-8"))
        elif name.endswith("/summary.json"):
            summary = json.loads((ROOT / name).read_text(encoding="utf-8"))
            if isinstance(summary, dict) and "config" in summary:
                configs[f"{name}[config]"] = summary["config"]
    return configs


def _citing_files() -> dict[str, str]:
    files = {}
    for name in repository_files():
        if name.startswith(CITING) or name in CITING:
            text = read_text(name)
            if text is not None:
                files[name] = text
    return files


# --------------------------------------------------------------------------- the helpers themselves

S = "\u00a7"     # the section sign, escaped: the deliberately bad citations below must not
                # count as citations of this file


def test_citation_parser_reads_numbers_ranges_and_lists():
    text = (f"see {S}2.3a and {S}6–{S}7; {S}3.3–3.5, {S}4.2-4.3 and {S}11.4. {S}1. ({S} 5) "
            f"{S}2.3as {S}2.1/2.2 x")
    found = [(numbers, sep) for _, _, numbers, sep in citations(text)]
    assert found == [(["2.3a"], None), (["6", "7"], "–"), (["3.3", "3.5"], "–"),
                     (["4.2", "4.3"], "-"), (["11.4"], None), (["1"], None), (["5"], None),
                     (["2.3"], None), (["2.1", "2.2"], "/")]


def test_heading_parser_skips_code_and_unnumbered_headings():
    text = ("# Title\n## 0. Sources\n### 2.3a Parity\n```\n## 9. not a heading\n```\n"
            "#### 11.4 Golden vectors\n## Notation\n##12. no space\n")
    assert method_sections(text) == ["0", "2.3a", "11.4"]


def test_unresolved_citations_are_listed_with_file_and_line():
    files = {"a.py": f"ok {S}2.3a\nbad {S}2.8 and {S}14\n", "b.md": f"{S}3.5–3.3 and {S}6–{S}7\n"}
    assert unresolved_citations(files, ["2", "2.3a", "3.3", "3.5", "6", "7"]) == [
        f"a.py:2: {S}2.8 (no heading 2.8 in docs/method.md)",
        f"a.py:2: {S}14 (no heading 14 in docs/method.md)",
        f"b.md:1: {S}3.5–3.3 (the range runs backwards)"]


def test_forbidden_references_are_found_in_every_file_the_ci_harness_too():
    # assembled from pieces, so that this file's own source stays clean
    bad = "".join(["../", "shared/", "data/mnist\n", "/wo", "rk/x\n", "see the\n", "spec\n",
                   "Spec ", S, "3\n", "Spec ", "sections: x\n", "| ", "spec |\n",
                   "bayesian-bits", ".md\n",
                   "ok: spec = find_spec(name); (spec=x); len(spec); module_from_spec(spec)\n"])
    problems = forbidden_references({"x.md": bad, ".ci/run": bad})
    lines = [p.split(": ")[0] for p in problems]
    for name in ("x.md", ".ci/run"):
        assert sorted(set(l for l in lines if l.startswith(name + ":"))) == [
            f"{name}:{i}" for i in range(1, 9) if i != 4]                       # 3–4: one phrase
    assert lines.count("x.md:1") == 2                          # both patterns on line 1


def test_machine_paths_finds_absolute_and_parent_paths():
    config = {"data_dir": "data", "out": "/home/me/x", "nested": [{"p": "a/../b"}], "ok": "a/b",
              "model": "lenet5", "empty": None}
    assert machine_paths(config) == [
        "data_dir: 'data' (data_dir must be null: it is machine specific)",
        "out: '/home/me/x'", "nested[0].p: 'a/../b'"]


# --------------------------------------------------------------------------- the repository

def test_method_document_has_every_section_once():
    sections = method_sections(METHOD.read_text(encoding="utf-8"))
    duplicates = sorted({n for n in sections if sections.count(n) > 1})
    missing = [n for n in REQUIRED_SECTIONS if n not in sections]
    assert not duplicates, f"docs/method.md numbers these sections twice: {duplicates}"
    assert not missing, f"docs/method.md lacks the sections {missing} (code cites them)"


def test_every_section_citation_resolves_to_a_heading_of_the_method_document():
    sections = method_sections(METHOD.read_text(encoding="utf-8"))
    files = _citing_files()
    assert "README.md" in files and any(n.startswith("bbits_ref/") for n in files)
    problems = unresolved_citations(files, sections)
    assert not problems, (f"{len(problems)} citation(s) name no heading of docs/method.md:\n"
                          + "\n".join(problems))


def test_no_committed_file_points_outside_the_repository():
    files = {}
    for name in repository_files():
        text = read_text(name)
        if text is not None:
            files[name] = text
    assert "README.md" in files and "tests/test_docs.py" in files
    problems = forbidden_references(files)
    assert not problems, (f"{len(problems)} reference(s) to paths outside the repository or to "
                          "private material (cite docs/method.md §N.M instead):\n"
                          + "\n".join(problems))


def test_committed_run_configs_record_no_machine_paths():
    configs = run_configs()
    assert configs, "no figures/**/config.json found"
    problems = [f"{name}: {p}" for name, config in configs.items() for p in machine_paths(config)]
    assert not problems, ("committed run configs record machine-specific paths; set data_dir to "
                          "null and use relative paths:\n" + "\n".join(problems))


#: Backticked names of the package in docs/method.md, e.g. `bbits_ref.method.gates.HardConcrete`.
PACKAGE_NAME = re.compile(r"`(bbits_ref(?:\.\w+)+)")
#: Backticked repository paths in docs/method.md (benchmarks/ is left out: the official
#: repository has a folder of that name too, and the document names files in it).
REPO_PATH = re.compile(r"`((?:tests|figures|notebooks|scripts|docs|bbits_ref)/[^`\s:]*)")


def resolve(dotted: str):
    """Import the longest importable module prefix of ``dotted`` and getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name in ("torch",):
                pytest.skip("PyTorch is not installed: cannot check bbits_ref.torch_impl names")
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_names_in_the_method_document_exist():
    text = METHOD.read_text(encoding="utf-8")
    names = sorted(set(PACKAGE_NAME.findall(text)))
    paths = sorted(set(REPO_PATH.findall(text)))
    assert names and paths
    problems = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    problems += [f"{p}: no such file or directory" for p in paths if not (ROOT / p).exists()]
    assert not problems, ("docs/method.md names things that do not exist (update the document "
                          "when code moves):\n" + "\n".join(problems))

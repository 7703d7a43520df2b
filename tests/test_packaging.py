"""Packaging stays consistent: pyproject.toml (the single source of dependencies), environment.yml,
the console entry point, the test script that CI runs and the commands the README shows."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml  # pyyaml, from the [test] extra

ROOT = Path(__file__).resolve().parents[1]
SYNCED_EXTRAS = ("notebooks", "test")  # environment.yml mirrors runtime + these; torch stays optional
TEST_COMMAND = "bash scripts/run_tests.sh"

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?$")


def normalize(name: str) -> str:
    """PEP 503 name normalisation: PyYAML, pyyaml and py_yaml are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(lines) -> dict[str, str]:
    """{normalized name: version specifier without spaces} for pip or conda requirement strings."""
    out = {}
    for line in lines:
        m = _REQUIREMENT.match(line)
        if m is None:
            raise ValueError(f"cannot parse the requirement {line!r}")
        out[normalize(m.group(1))] = m.group(2).replace(" ", "")
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def pyproject_requirements() -> dict[str, str]:
    project = pyproject()["project"]
    lines = list(project["dependencies"])
    for extra in SYNCED_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return parse_requirements(lines)


def conda_requirements() -> tuple[dict[str, str], list[str]]:
    """(conda packages except python and pip, the pip: sub-list)."""
    conda, pip = [], []
    for dep in environment()["dependencies"]:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
        else:
            conda.append(dep)
    reqs = parse_requirements(conda)
    for tool in ("python", "pip"):
        reqs.pop(tool, None)
    return reqs, pip


def readme_code_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [b.strip() for b in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)]


# -- the parser the sync test relies on

def test_parse_requirements_reads_names_bounds_extras_and_markers():
    parsed = parse_requirements(["PyYAML>=6.0", "pytest_xdist >= 3.5", "torch[cpu]>=2.1",
                                 "numpy", "tomli>=2; python_version < '3.11'"])
    assert parsed == {"pyyaml": ">=6.0", "pytest-xdist": ">=3.5", "torch": ">=2.1", "numpy": "",
                      "tomli": ">=2"}


# -- pyproject.toml

def test_pyproject_declares_python_runtime_and_extras():
    project = pyproject()["project"]
    assert project["requires-python"] == ">=3.11"
    runtime = parse_requirements(project["dependencies"])
    assert set(runtime) == {"numpy", "autograd", "matplotlib", "tqdm"}
    extras = {k: set(parse_requirements(v)) for k, v in project["optional-dependencies"].items()}
    assert extras["notebooks"] == {"jupyterlab", "ipywidgets"}
    assert extras["test"] == {"pytest", "hypothesis", "nbval", "nbstripout", "pyyaml", "pytest-xdist",
                                "scipy"}
    assert extras["torch"] == {"torch", "numba"}


def test_dependencies_have_lower_bounds_and_no_pins():
    project = pyproject()["project"]
    lines = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for name, spec in parse_requirements(lines).items():
        assert spec.startswith(">="), f"{name}: give a lower bound (>=), got {spec!r}"
        assert "==" not in spec, f"{name}: no exact pins in a library, got {spec!r}"


def test_console_entry_point_is_declared_and_resolves():
    target = pyproject()["project"]["scripts"]["bbits-ref"]
    assert target == "bbits_ref.cli:main"
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_package_data_globs_the_data_folder():
    data = pyproject()["tool"]["setuptools"]["package-data"]["bbits_ref"]
    assert "datasets/embedded/*" in data


# -- environment.yml

def test_environment_yml_lists_the_same_packages_and_bounds_as_pyproject():
    conda, _ = conda_requirements()
    wanted = pyproject_requirements()
    assert sorted(set(wanted) - set(conda)) == [], "missing from environment.yml"
    assert sorted(set(conda) - set(wanted)) == [], "in environment.yml but not in pyproject.toml"
    assert conda == wanted, "lower bounds differ between environment.yml and pyproject.toml"


def test_environment_yml_uses_conda_forge_python_311_and_installs_the_package():
    env, (_, pip) = environment(), conda_requirements()
    assert env["channels"] == ["conda-forge"]
    assert "python>=3.11" in env["dependencies"]
    assert pip == ["-e .[notebooks,test]"]
    extras = set(re.search(r"\[(.*)\]", pip[0]).group(1).split(","))
    assert extras <= set(pyproject()["project"]["optional-dependencies"])


# -- the test script, CI and the README

def test_gradcheck_module_has_a_command_line():
    res = subprocess.run([sys.executable, "-m", "bbits_ref.autograd.gradcheck", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage: python -m bbits_ref.autograd.gradcheck" in res.stdout


def test_run_tests_script_is_valid_bash_and_installs_declared_extras():
    script = ROOT / "scripts" / "run_tests.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)  # syntax only, runs nothing
    text = script.read_text(encoding="utf-8")
    assert "set -euo pipefail" in text
    installs = re.findall(r"pip install[^\n]*-e '\.\[([^\]]*)\]'", text)
    assert installs == [",".join(SYNCED_EXTRAS)]
    assert "python -m bbits_ref.autograd.gradcheck" in text
    assert re.search(r'python -m pytest -n 2 -q "\$@"', text)


def test_ci_runs_the_test_script():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert "exec " + TEST_COMMAND in lines


def test_readme_opens_with_the_two_commands():
    blocks = readme_code_blocks()
    assert len(blocks) >= 2, "README.md should open with two code blocks: train, then test"
    train, test = blocks[:2]
    assert test == TEST_COMMAND
    entry_point = next(iter(pyproject()["project"]["scripts"]))
    assert "pip install -e ." in train and f"{entry_point} train" in train

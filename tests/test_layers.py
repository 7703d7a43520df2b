"""The package's structure, read from its source: import layers, no import cycles, no shadowed builtins.

The layers, lowest first.  A module may import any lower layer and, inside its own group, lower
ranks only; two groups of one layer may not import each other.  :data:`LAYERS` has every rank.

====  ===========================================================================================
0     ``bbits_ref._errors``, ``_version`` < ``_files``, ``_runtime``
1     ``bbits_ref.autograd`` (engine < ops < nn, gradcheck_cases < optim, gradcheck) and
      ``bbits_ref.datasets`` (only layer 0)
2     ``bbits_ref.method`` (constants < architectures, quantizer, gates < prior, decomposition <
      bops, baselines < layers < models < readout)
3     ``bbits_ref.torch_impl`` (may import method, not training)
4     ``bbits_ref.training``
5     ``bbits_ref.plotting``
6     ``bbits_ref.course`` and ``bbits_ref.conformance``
7     ``bbits_ref.cli``
====  ===========================================================================================

A package's ``__init__`` ranks above its modules (it may re-export them) and its ``__main__`` above
its ``__init__``.  The top-level ``bbits_ref/__init__.py`` re-exports everything and is exempt, but
no module may import it.  Every import counts: absolute, relative, inside a function, under
``TYPE_CHECKING``, and ``importlib.import_module("bbits_ref...")`` with a literal name.  A module
missing from :data:`LAYERS` fails, so a new module must be placed here.
"""
from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bbits_ref"
TOP = "bbits_ref"

# group -> (layer, {module inside the group: rank}).  A single-module group has {"": 0}; a module of
# a nested package is named relative to its group ("families.gates"), and a nested package's
# __init__ by its own name ("families").  The "bbits_ref" group holds the private layer-0 modules;
# the top-level package itself is exempt.
LAYERS: dict[str, tuple[int, dict[str, int]]] = {
    "bbits_ref": (0, {"_errors": 0, "_version": 0, "_files": 1, "_runtime": 1}),
    "bbits_ref.autograd": (1, {"engine": 0, "ops": 1, "nn": 2, "gradcheck_cases": 2,
                               "optim": 3, "gradcheck": 3}),
    "bbits_ref.datasets": (1, {"common": 0, "cache": 0, "download": 1, "mnist": 2, "cifar10": 2,
                               "catalog": 3}),
    "bbits_ref.method": (2, {"constants": 0, "architectures": 1, "quantizer": 1, "gates": 1,
                             "prior": 2, "decomposition": 2, "bops": 3, "baselines": 3,
                             "layers": 4, "models": 5, "readout": 6}),
    "bbits_ref.torch_impl": (3, {"kernels": 0, "quantizer": 1, "bops": 1, "gates": 2, "prior": 3,
                                 "layers": 4, "models": 5, "state": 6, "adapter": 7}),
    "bbits_ref.training": (4, {"checkpoints": 0, "config": 0, "runs": 0, "compare": 2, "engines": 0,
                               "experiments": 1, "trainer": 2, "ptq": 3, "gate_trace": 3}),
    "bbits_ref.plotting": (5, {"": 0}),
    "bbits_ref.course": (6, {"settings": 0, "runs": 0, "widgets": 0, "exercises": 1}),
    "bbits_ref.conformance": (6, {"case_ids": 0, "official_lenet5": 0, "reference": 0,
                                  "official": 1, "protocol": 1,
                                  "mutants": 1, "worker": 2, "report": 2, "families._common": 2,
                                  "families.bops": 3, "families.gates": 3, "families.lenet5": 3,
                                  "families.quantize": 3, "families.regularizer": 3,
                                  "families.trajectory": 4,
                                  "families": 5, "storage": 6, "checker": 7, "cli": 8}),
    "bbits_ref.cli": (7, {"options": 0, "compare": 0, "run": 1, "sweep": 2}),
}


@dataclass(frozen=True)
class Import:
    """One import of a bbits_ref module: who imports what, and where."""

    importer: str
    imported: str
    path: str
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


# --------------------------------------------------------------------------- reading the source

def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``bbits_ref/method/gates.py`` -> ``bbits_ref.method.gates``; an ``__init__`` is its package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def scan_imports(source: str, importer: str, is_package: bool, known: set[str],
                 path: str = "?") -> list[Import]:
    """Every import of a ``bbits_ref`` module in ``source``, wherever it stands.

    ``from pkg import name`` imports the submodule ``pkg.name`` when there is one, else ``pkg``.
    """
    package = importer if is_package else importer.rpartition(".")[0]
    found = []

    def add(target: str, line: int) -> None:
        if target == TOP or target.startswith(TOP + "."):
            found.append(Import(importer, target, path, line))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            add(node.args[0].value, node.lineno)
    return found


def package_imports(root: Path = PACKAGE) -> list[Import]:
    """The imports of every module of the package (paths relative to the repository)."""
    modules = package_modules(root)
    out = []
    for name, path in modules.items():
        out += scan_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py",
                            set(modules), str(path.relative_to(root.parent)))
    return out


# --------------------------------------------------------------------------- the checks

def place(module: str, layers=LAYERS) -> tuple[str, int, int] | None:
    """(group, layer, rank) of a module, or None if it is not placed (the top level is exempt).

    A group's ``__init__`` ranks above its modules (it may re-export them), its ``__main__`` above
    its ``__init__``.
    """
    if module == TOP:
        return None
    groups = [g for g in layers if module == g or module.startswith(g + ".")]
    if not groups:
        return None
    group = max(groups, key=len)
    layer, ranks = layers[group]
    rel = module[len(group) + 1:]
    if rel in ranks:
        return group, layer, ranks[rel]
    if rel in ("", "__main__"):
        return group, layer, max(ranks.values()) + (1 if rel == "" else 2)
    return None


def layer_problems(imports: list[Import], modules: dict[str, str], layers=LAYERS) -> list[str]:
    """One line per unplaced module and per import that goes up or sideways.

    ``modules`` maps each module name to its file, to name the files of unplaced modules.
    """
    problems = [f"{path}: module {name} has no layer: place it in LAYERS in tests/test_layers.py"
                for name, path in sorted(modules.items()) if name != TOP and place(name, layers) is None]
    for imp in imports:
        src = place(imp.importer, layers)
        if src is None:
            continue                        # the top level (exempt) or unplaced (reported above)
        if imp.imported == TOP:
            problems.append(f"{imp.where()}: {imp.importer} imports the top-level package "
                            f"{TOP}, which imports every layer; import the module it needs")
            continue
        dst = place(imp.imported, layers)
        if dst is None or imp.imported == imp.importer:
            continue
        (sg, sl, sr), (dg, dl, dr) = src, dst
        if sg == dg and sr > dr or sg != dg and sl > dl:
            continue
        why = (f"rank {sr} imports rank {dr} inside {sg}" if sg == dg else
               f"layer {sl} ({sg}) imports layer {dl} ({dg})")
        problems.append(f"{imp.where()}: {imp.importer} imports {imp.imported}: {why}; "
                        "a module may import only lower ranks of its own group or lower layers")
    return problems


def cycle_problems(imports: list[Import]) -> list[str]:
    """One line per group of modules that import each other in a circle: one such cycle with the
    file:line of each of its imports, and the other modules caught in the same circle."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.importer != imp.imported:
            edges.setdefault(imp.importer, {}).setdefault(imp.imported, imp)

    def reach(start: str) -> dict[str, str]:
        """Every module reachable from ``start``, with the module it was first reached from."""
        parent: dict[str, str] = {}
        todo = [start]
        while todo:
            m = todo.pop()
            for n in edges.get(m, {}):
                if n not in parent:
                    parent[n] = m
                    todo.append(n)
        return parent

    problems, done = [], set()
    for start in sorted(edges):
        if start in done:
            continue
        parent = reach(start)
        if start not in parent:
            continue
        path = [start]                       # walk back from start to start along first reaches
        while parent[path[-1]] != start:
            path.append(parent[path[-1]])
        path.append(start)
        path.reverse()
        component = {start} | {m for m in parent if start in reach(m)}   # mutually reachable
        done |= component
        steps = [edges[a][b] for a, b in zip(path, path[1:])]
        others = sorted(component - set(path))
        problems.append("import cycle " + " -> ".join(path) + ": "
                        + "; ".join(f"{s.where()} imports {s.imported}" for s in steps)
                        + (f" (also in the cycle: {', '.join(others)})" if others else ""))
    return problems


# --------------------------------------------------------------------------- the package itself

def test_every_module_is_placed_and_imports_only_downwards():
    modules = {n: str(p.relative_to(REPO)) for n, p in package_modules().items()}
    problems = layer_problems(package_imports(), modules)
    assert not problems, "layer violations:\n  " + "\n  ".join(problems)


def test_there_is_no_import_cycle():
    problems = cycle_problems(package_imports())
    assert not problems, "\n  ".join(["import cycles:"] + problems)


def test_the_scan_sees_the_package():
    """Guard against a scan that finds nothing (and so can never fail)."""
    imports = package_imports()
    pairs = {(i.importer, i.imported) for i in imports}
    assert ("bbits_ref.autograd.ops", "bbits_ref.autograd.engine") in pairs
    assert ("bbits_ref.method.layers", "bbits_ref.autograd.nn") in pairs
    assert len(package_modules()) > 30


# --------------------------------------------------------------------------- the checker on synthetic input

# A fixed map for the checker's own tests, so they do not change when the package does.
SYNTHETIC_LAYERS = {
    "bbits_ref": (0, {"_errors": 0, "_files": 1}),
    "bbits_ref.autograd": (1, {"engine": 0, "ops": 1, "gradcheck": 2}),
    "bbits_ref.datasets": (1, {"loaders": 0}),
    "bbits_ref.method": (2, {"gates": 0, "prior": 1}),
    "bbits_ref.training": (4, {"trainer": 0}),
    "bbits_ref.plotting": (5, {"": 0}),
    "bbits_ref.cli": (7, {"options": 0, "run": 1, "sweep": 2}),
}
KNOWN = {"bbits_ref", "bbits_ref.method", "bbits_ref.method.gates", "bbits_ref.method.prior",
         "bbits_ref.autograd", "bbits_ref.autograd.engine", "bbits_ref.plotting"}


def test_scanner_finds_every_kind_of_import():
    source = (
        "import numpy as np\n"
        "from bbits_ref.autograd.engine import Tensor\n"          # 2 absolute
        "from . import gates\n"                                    # 3 relative submodule
        "from .. import plotting\n"                                # 4 two levels up
        "def f():\n"
        "    from bbits_ref.method import HardConcrete\n"          # 6 name from a package
        "    import bbits_ref.autograd\n"                          # 7 plain import
        "    return importlib.import_module('bbits_ref.method.gates')\n"   # 8 by name
    )
    found = scan_imports(source, "bbits_ref.method.prior", False, KNOWN, "prior.py")
    assert [(i.imported, i.line) for i in found] == [
        ("bbits_ref.autograd.engine", 2), ("bbits_ref.method.gates", 3), ("bbits_ref.plotting", 4),
        ("bbits_ref.method", 6), ("bbits_ref.autograd", 7), ("bbits_ref.method.gates", 8)]
    assert found[0].where() == "prior.py:2"


def test_checker_reports_a_violation_and_a_cycle():
    imports = [
        Import("bbits_ref.autograd.engine", "bbits_ref.autograd.ops", "engine.py", 5),      # up a rank
        Import("bbits_ref.autograd.ops", "bbits_ref.autograd.engine", "ops.py", 7),
        Import("bbits_ref.datasets.loaders", "bbits_ref.training.trainer", "loaders.py", 9),  # up a layer
        Import("bbits_ref.datasets.loaders", "bbits_ref.autograd.ops", "loaders.py", 10),   # sideways
        Import("bbits_ref.method.prior", "bbits_ref.method.gates", "prior.py", 3),           # fine
        Import("bbits_ref.training.trainer", "bbits_ref.method.prior", "trainer.py", 4),     # fine
    ]
    modules = {i.importer: i.path for i in imports} | {"bbits_ref.newthing": "newthing.py"}
    problems = layer_problems(imports, modules, SYNTHETIC_LAYERS)
    assert problems[0].startswith("newthing.py: module bbits_ref.newthing has no layer")
    assert problems[1:] == [
        "engine.py:5: bbits_ref.autograd.engine imports bbits_ref.autograd.ops: rank 0 imports "
        "rank 1 inside bbits_ref.autograd; a module may import only lower ranks of its own group "
        "or lower layers",
        "loaders.py:9: bbits_ref.datasets.loaders imports bbits_ref.training.trainer: layer 1 "
        "(bbits_ref.datasets) imports layer 4 (bbits_ref.training); a module may import only "
        "lower ranks of its own group or lower layers",
        "loaders.py:10: bbits_ref.datasets.loaders imports bbits_ref.autograd.ops: layer 1 "
        "(bbits_ref.datasets) imports layer 1 (bbits_ref.autograd); a module may import only "
        "lower ranks of its own group or lower layers"]
    assert cycle_problems(imports) == [
        "import cycle bbits_ref.autograd.engine -> bbits_ref.autograd.ops -> "
        "bbits_ref.autograd.engine: engine.py:5 imports bbits_ref.autograd.ops; "
        "ops.py:7 imports bbits_ref.autograd.engine"]
    assert cycle_problems(imports[1:]) == []


def test_checker_places_inits_mains_and_the_top_level():
    def at(module):
        return place(module, SYNTHETIC_LAYERS)

    assert at("bbits_ref.cli") == ("bbits_ref.cli", 7, 3)          # above options, run, sweep
    assert at("bbits_ref.cli.__main__") == ("bbits_ref.cli", 7, 4)
    assert at("bbits_ref.plotting") == ("bbits_ref.plotting", 5, 0)
    assert at("bbits_ref._files") == ("bbits_ref", 0, 1)
    assert at("bbits_ref") is None and at("bbits_ref.method.nonexistent") is None
    imports = [Import("bbits_ref.cli", "bbits_ref.cli.run", "cli/__init__.py", 1),
               Import("bbits_ref.cli.run", "bbits_ref.cli", "cli/run.py", 2),
               Import("bbits_ref.autograd.gradcheck", "bbits_ref", "gradcheck.py", 3),
               Import("bbits_ref", "bbits_ref.cli", "__init__.py", 4)]
    problems = layer_problems(imports, {}, SYNTHETIC_LAYERS)
    assert len(problems) == 2
    assert problems[0].startswith("cli/run.py:2: bbits_ref.cli.run imports bbits_ref.cli: rank 1 "
                                  "imports rank 3")
    assert problems[1].startswith("gradcheck.py:3: bbits_ref.autograd.gradcheck imports the "
                                  "top-level package")


# --------------------------------------------------------------------------- shadowed builtins

BUILTIN_NAMES = {n for n in dir(builtins) if not n.startswith("__")}


class _ModuleScope(ast.NodeVisitor):
    """Collects the names a module binds at module level (not inside functions or classes)."""

    def __init__(self) -> None:
        self.bound: list[tuple[str, int]] = []

    def _scope(self, node) -> None:           # a def or class binds its name, its body is elsewhere
        self.bound.append((node.name, node.lineno))
        for d in node.decorator_list:
            self.visit(d)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Lambda(self, node) -> None:
        pass

    def visit_ListComp(self, node) -> None:  # comprehension variables are local to it
        pass

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp

    def visit_Name(self, node) -> None:
        if isinstance(node.ctx, ast.Store):
            self.bound.append((node.id, node.lineno))

    def visit_alias(self, node) -> None:
        if node.name != "*":
            self.bound.append(((node.asname or node.name).split(".")[0], node.lineno))

    def visit_ExceptHandler(self, node) -> None:
        if node.name:
            self.bound.append((node.name, node.lineno))
        self.generic_visit(node)


def shadowed_builtins(source: str, path: str = "?") -> list[str]:
    """``file:line: name`` for every module-level binding that hides a Python builtin."""
    scope = _ModuleScope()
    scope.visit(ast.parse(source))
    return [f"{path}:{line}: {name}" for name, line in scope.bound if name in BUILTIN_NAMES]


def test_no_module_shadows_a_builtin():
    problems = []
    for path in package_modules().values():
        problems += shadowed_builtins(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not problems, ("module-level names that hide a builtin (rename them, e.g. ops.reduce_sum "
                          "for sum):\n  " + "\n  ".join(problems))


def test_shadow_scan_sees_module_level_bindings_only():
    source = (
        "from numpy import abs, max as max\n"     # 1
        "import round\n"                          # 2
        "sum = 3\n"                               # 3
        "def min(x):\n"                           # 4
        "    len = 1\n"                           # local: fine
        "    return len\n"
        "class Tensor:\n"
        "    def abs(self): pass\n"               # a method: fine
        "for pow in range(3): pass\n"             # 9
        "try:\n"
        "    import json\n"
        "except ImportError as input:\n"          # 12
        "    squares = [len for len in range(3)]\n"   # comprehension variable: fine
        "f = lambda map: map\n"                   # lambda argument: fine
        "with open('x') as (a, id): pass\n"       # 15
    )
    assert shadowed_builtins(source, "m.py") == [
        "m.py:1: abs", "m.py:1: max", "m.py:2: round", "m.py:3: sum", "m.py:4: min",
        "m.py:9: pow", "m.py:12: input", "m.py:15: id"]


"""Every registered primitive against two gradient oracles, and the gradient-check tooling itself.

* finite differences (``check_grads``, method "fd") on inputs from ``make_case`` with hypothesis
  choosing shapes, seeds and broadcasting;
* the independent HIPS-autograd versions in ``tests/oracles`` (forward value and the VJP of a
  random cotangent, float64, to 1e-10);
* a deliberately wrong VJP is caught by both, and a primitive without a case or an oracle fails
  the coverage test;
* ``python -m bbits_ref.autograd.gradcheck``.

New primitives are picked up automatically: the tests are parametrized over ``PRIMITIVES``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import autograd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import collect_oracles, import_all_primitives, temporary_primitive

import_all_primitives()  # before the names are collected, so other modules' primitives count

from bbits_ref.autograd import gradcheck  # noqa: E402
from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import PRIMITIVES, Tensor  # noqa: E402
from bbits_ref.autograd.gradcheck import check_grads, make_case  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(PRIMITIVES)
ORACLES = collect_oracles()

# 15 examples per primitive keeps the file at a few seconds; the "thorough" profile keeps its own.
_EXAMPLES = 15 if settings.default.max_examples <= 25 else settings.default.max_examples
per_primitive = settings(max_examples=_EXAMPLES, deadline=None)

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------- helpers

def engine_forward_vjp(prim, case, cotangent_rng):
    """Forward value, the cotangent v and the engine's gradients of ⟨v, prim(args)⟩."""
    ts = [Tensor(a, requires_grad=i in case.argnums) for i, a in enumerate(case.args)]
    out = prim(*ts, **case.static)
    v = cotangent_rng.standard_normal(out.shape)
    out.backward(v)
    grads = [ts[i].grad if ts[i].grad is not None else np.zeros_like(case.args[i])
             for i in case.argnums]
    return out.data, v, grads


def oracle_forward_vjp(oracle, case, v):
    """Forward value and autograd's VJP of ``v`` for each differentiable argument."""
    def with_arg(i):
        return lambda xi: oracle(*case.args[:i], xi, *case.args[i + 1:], **case.static)

    value = oracle(*case.args, **case.static)
    grads = []
    for i in case.argnums:
        vjp, _ = autograd.make_vjp(with_arg(i))(case.args[i])
        grads.append(np.asarray(vjp(v), dtype=np.float64))
    return np.asarray(value), grads


def assert_matches_oracle(prim, oracle, case, seed=0):
    """The engine's forward value and VJP equal the oracle's to 1e-10 (float64)."""
    value, v, grads = engine_forward_vjp(prim, case, np.random.default_rng(seed))
    o_value, o_grads = oracle_forward_vjp(oracle, case, v)
    np.testing.assert_allclose(value, o_value, rtol=1e-10, atol=1e-12,
                               err_msg=f"{prim.name}: forward value differs from the oracle")
    for i, g, og in zip(case.argnums, grads, o_grads):
        assert g.shape == np.shape(case.args[i]), f"{prim.name}: gradient {i} has a wrong shape"
        np.testing.assert_allclose(g, og, rtol=1e-10, atol=1e-12,
                                   err_msg=f"{prim.name}: VJP of argument {i} differs from the oracle")


def coverage_gaps(names):
    """For each primitive, what it lacks: a gradient-check case and/or an oracle."""
    gaps = {}
    oracles = collect_oracles()
    for name in names:
        missing = []
        try:
            make_case(name, np.random.default_rng(0), (2, 3), False)
        except KeyError:
            missing.append("gradcheck case (gradcheck.register_case)")
        if name not in oracles:
            missing.append("oracle (an ORACLES entry in tests/oracles/)")
        if missing:
            gaps[name] = missing
    return gaps


# --------------------------------------------------------------------------- (a) finite differences

@pytest.mark.parametrize("name", NAMES)
@per_primitive
@given(shape=shapes, seed=seeds, broadcast=st.booleans())
def test_primitive_matches_finite_differences(name, shape, seed, broadcast):
    rng = np.random.default_rng(seed)
    case = make_case(name, rng, shape, broadcast)
    prim = PRIMITIVES[name]
    res = check_grads(lambda *a, **kw: prim(*a, **kw), *case.args, argnums=case.argnums,
                      static=case.static, method="fd", rng=rng)
    assert res, f"{name} {case.static} shapes {[np.shape(a) for a in case.args]}: {res}"


# --------------------------------------------------------------------------- (b) autograd oracle

@pytest.mark.parametrize("name", NAMES)
@per_primitive
@given(shape=shapes, seed=seeds, broadcast=st.booleans())
def test_primitive_matches_autograd_oracle(name, shape, seed, broadcast):
    if name not in ORACLES:
        pytest.fail(f"no autograd oracle for {name!r}: add it to an ORACLES dict in tests/oracles/")
    case = make_case(name, np.random.default_rng(seed), shape, broadcast)
    assert_matches_oracle(PRIMITIVES[name], ORACLES[name], case, seed)


@pytest.mark.parametrize("shape, axes", [((3, 3), (-1, 0)), ((2, 3, 4), (-1, 0, 1))])
def test_transpose_with_negative_axes(shape, axes):
    """make_case only draws non-negative permutations; x.transpose(-1, 0) is common in models."""
    case = gradcheck.GradCase((np.random.default_rng(0).standard_normal(shape),), {"axes": axes}, (0,))
    assert_matches_oracle(PRIMITIVES["transpose"], ORACLES["transpose"], case)


def test_oracles_are_collected_from_every_module(tmp_path, monkeypatch):
    """A new module in tests/oracles/ with an ORACLES dict is found; a duplicate name is an error."""
    import oracles
    extra = tmp_path / "oracles"
    extra.mkdir()
    (extra / "extra_oracle.py").write_text("ORACLES = {'tmp_extra': lambda x: x}\n")
    monkeypatch.setattr(oracles, "__path__", list(oracles.__path__) + [str(extra)])
    monkeypatch.delitem(sys.modules, "oracles.extra_oracle", raising=False)
    found = oracles.collect_oracles()
    assert "tmp_extra" in found and set(ORACLES) <= set(found)
    (extra / "extra_oracle.py").write_text("ORACLES = {'mul': lambda x, y: x * y}\n")
    monkeypatch.delitem(sys.modules, "oracles.extra_oracle", raising=False)
    with pytest.raises(ValueError, match="'mul' is defined in both"):
        oracles.collect_oracles()
    monkeypatch.delitem(sys.modules, "oracles.extra_oracle", raising=False)


# --------------------------------------------------------------------------- (c) a wrong VJP is caught

def test_wrong_vjp_is_caught_by_every_check():
    # x̄ = g·x instead of g·y: the classic slip in a product rule
    with temporary_primitive("tmp_wrong_mul", "z = x·y with a wrong x̄ = g·x", np.multiply,
                             lambda g, z, s, x, y: g * x, lambda g, z, s, x, y: g * x) as wrong:
        case = make_case("mul", np.random.default_rng(1), (3, 4), False)
        f = lambda x, y: wrong(x, y)  # noqa: E731
        assert not check_grads(f, *case.args, method="fd")
        assert not check_grads(f, *case.args, method="projection")
        with pytest.raises(AssertionError, match="VJP of argument 0 differs"):
            assert_matches_oracle(wrong, ORACLES["mul"], case)
        # the same inputs pass with the real primitive, so the failure is the rule's
        assert check_grads(lambda x, y: ops.mul(x, y), *case.args, method="fd")
        assert_matches_oracle(PRIMITIVES["mul"], ORACLES["mul"], case)
    assert "tmp_wrong_mul" not in PRIMITIVES


# --------------------------------------------------------------------------- (d) coverage

def test_every_primitive_has_a_case_and_an_oracle():
    gaps = coverage_gaps(sorted(PRIMITIVES))
    assert not gaps, "primitives without full test coverage:\n" + "\n".join(
        f"  {name}: missing {', '.join(m)}" for name, m in gaps.items())


def test_coverage_check_flags_an_uncovered_primitive():
    before = coverage_gaps(sorted(PRIMITIVES))
    with temporary_primitive("tmp_uncovered", "z = x", lambda x: x, lambda g, z, s, x: g):
        gaps = coverage_gaps(sorted(PRIMITIVES))
    assert len(gaps.pop("tmp_uncovered")) == 2      # neither a case nor an oracle
    assert gaps == before


def test_ops_binds_each_primitive_to_its_registered_name():
    """``ops.<name> is PRIMITIVES[name]``: the name a user calls is the name the table, the gradient
    check CLI and the oracles use; none of them hides a Python builtin."""
    import builtins

    bound = {attr: p for attr, p in vars(ops).items() if isinstance(p, type(PRIMITIVES["add"]))}
    assert {attr: p.name for attr, p in bound.items() if attr != p.name} == {}
    assert all(PRIMITIVES[attr] is p for attr, p in bound.items())
    assert not set(bound) & set(dir(builtins))
    assert {"power", "absolute", "reduce_sum", "reduce_max"} <= set(bound)


# --------------------------------------------------------------------------- (g) tooling and CLI

def _run_python(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_checks_every_primitive():
    proc = _run_python("-m", "bbits_ref.autograd.gradcheck")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    printed = [line.split()[0] for line in lines[:-1]]
    assert all(" ok " in line for line in lines[:-1]), proc.stdout
    assert len(printed) == len(set(printed))
    ops_names = {p.name for p in vars(ops).values() if isinstance(p, type(PRIMITIVES["add"]))}
    assert ops_names <= set(printed) == set(PRIMITIVES)     # the quantizer's bb_quantize too
    assert lines[-1] == f"{len(printed)} passed, 0 failed"


def test_cli_names_and_method_options(capsys):
    assert gradcheck.main(["mul", "conv2d", "--method", "projection", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["mul", "conv2d"]
    assert "projection" in lines[0]


def test_cli_reports_unknown_primitive(capsys):
    with pytest.raises(SystemExit) as exc:
        gradcheck.main(["nonexistent"])
    assert exc.value.code == 2
    assert "unknown primitive(s): nonexistent" in capsys.readouterr().err


def test_cli_exit_status_is_one_on_a_failure(capsys):
    with temporary_primitive("tmp_wrong_exp", "z = eˣ with a wrong x̄ = g", np.exp,
                             lambda g, z, s, x: g):
        # the case outlives the primitive, but a case without a primitive is never used
        gradcheck.register_case("tmp_wrong_exp", lambda rng, shape, bc: make_case("exp", rng, shape, bc))
        assert gradcheck.main(["tmp_wrong_exp"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("tmp_wrong_exp  FAILED") and out.splitlines()[-1] == "0 passed, 1 failed"


def test_cli_sees_cases_registered_by_other_modules():
    """``python -m`` runs gradcheck as __main__, a second copy of the module: the cases that other
    modules register must still be found (they live in bbits_ref.autograd.gradcheck_cases, not in gradcheck)."""
    code = (
        "import runpy, sys, numpy as np\n"
        "from bbits_ref.autograd import gradcheck\n"
        "from bbits_ref.autograd.engine import register\n"
        "register('tmp_double', 'z = 2x', lambda x: 2 * x, lambda g, z, s, x: 2 * g)\n"
        "gradcheck.register_case('tmp_double', lambda rng, shape, bc: "
        "gradcheck.GradCase((rng.standard_normal(shape),), {}, (0,)))\n"
        "sys.argv = ['gradcheck', 'tmp_double']\n"
        "runpy.run_module('bbits_ref.autograd.gradcheck', run_name='__main__', alter_sys=True)\n")
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tmp_double")


def test_check_grads_is_falsy_on_a_wrong_gradient():
    x = np.random.default_rng(0).standard_normal((3, 2))
    # d(x·x)/dx = 2x, but detaching one factor makes the engine report x
    wrong = lambda t: t * t.detach()  # noqa: E731
    for method in ("fd", "projection"):
        res = check_grads(wrong, x, method=method)
        assert not res and res.max_abs_err > 1e-3 and str(res).startswith("FAILED")
        assert check_grads(lambda t: t * t, x, method=method)


def test_check_grads_freezes_ste_rounding():
    """Without frozen offsets the difference quotient of round is 0 or huge; frozen it is the STE's 1."""
    x = np.array([0.3, 1.7, -2.2, 2.5])     # 2.5 rounds to 2 (half to even)
    assert check_grads(lambda t: ops.round_ste(t) * t, x)


def test_check_grads_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method must be 'fd' or 'projection'"):
        check_grads(lambda t: t, np.ones(2), method="central")
    with pytest.raises(TypeError, match="gradient checks need float inputs"):
        check_grads(lambda t: t, np.arange(3), argnums=[0])

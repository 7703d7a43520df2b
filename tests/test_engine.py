"""The autograd engine: graph recording, backward, broadcasting, dtypes and error messages.

The per-primitive gradients are checked in test_primitives.py; this file checks what the engine
does around them (accumulation, traversal order, deep graphs, no_grad, detach, the one
engine-level unbroadcast, dtype rules) and that bad input is refused with a clear message.
"""
from __future__ import annotations

import sys

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from oracles import import_all_primitives, temporary_primitive

import_all_primitives()

from bbits_ref.autograd import ops  # noqa: E402
from bbits_ref.autograd.engine import (PRIMITIVES, Tensor, default_dtype, get_default_dtype,  # noqa: E402
                              no_grad, set_default_dtype, unbroadcast)
from bbits_ref.autograd.gradcheck import make_case  # noqa: E402

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def leaf(values, dtype=np.float64):
    return Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# --------------------------------------------------------------------------- accumulation and order

def test_two_backward_calls_add_their_gradients():
    x = leaf([1.0, -2.0, 3.0])
    loss = (x * x).sum()
    loss.backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data)
    loss.backward()
    np.testing.assert_array_equal(x.grad, 4 * x.data)
    x.zero_grad()
    assert x.grad is None


def test_a_tensor_used_twice_gets_the_sum():
    x = leaf([1.5, -0.5])
    (x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    x.zero_grad()
    ops.mul(x, x).sum().backward()                  # the same tensor in both argument slots
    np.testing.assert_array_equal(x.grad, 2 * x.data)


def test_uneven_diamond_waits_for_every_path():
    """a feeds c directly and through a 3-step path; a's gradient must include both paths
    before it is passed on to x (a wrong traversal order drops the long path)."""
    x = leaf(2.0)
    a = x * 2.0
    b = ((a * 3.0) * 1.0) * 1.0
    (a + b).backward()
    assert x.grad == pytest.approx(2.0 + 6.0)


_BINARY = {"add": (ops.add, lambda a, b: a + b), "sub": (ops.sub, lambda a, b: a - b),
           "mul": (ops.mul, lambda a, b: a * b)}
_UNARY = {"sigmoid": (ops.sigmoid, lambda a: 1.0 / (1.0 + anp.exp(-a))),
          "neg": (ops.neg, lambda a: -a)}


@pytest.mark.parametrize("seed", range(6))
def test_random_graph_with_shared_nodes_matches_autograd(seed):
    """A random DAG with heavy reuse of intermediate nodes, differentiated by the engine and by
    HIPS autograd: checks traversal order and accumulation on shapes that broadcast."""
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s) for s in [(3, 1), (4,), (3, 4)]]
    program = []
    for k in range(25):
        n = len(inputs) + k
        if rng.random() < 0.3:
            program.append((str(rng.choice(list(_UNARY))), int(rng.integers(0, n))))
        else:
            program.append((str(rng.choice(list(_BINARY))), *rng.integers(0, n, 2).tolist()))

    def run(values, table_index, unary_sum):
        values = list(values)
        for op, *args in program:
            table = _UNARY if op in _UNARY else _BINARY
            values.append(table[op][table_index](*[values[i] for i in args]))
        return unary_sum(values[-4:])

    xs = [leaf(a) for a in inputs]
    loss = run(xs, 0, lambda vs: ops.reduce_sum(ops.sigmoid(vs[0] + vs[1] + vs[2] + vs[3])))
    loss.backward()

    def reference(*arrays):
        return anp.sum(run(arrays, 1, lambda vs: 1.0 / (1.0 + anp.exp(-(vs[0] + vs[1] + vs[2] + vs[3])))))

    assert loss.item() == pytest.approx(reference(*inputs), rel=1e-12)
    for i, x in enumerate(xs):
        expected = autograd.grad(reference, i)(*inputs)
        grad = np.zeros_like(inputs[i]) if x.grad is None else x.grad
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_deep_graph_does_not_hit_the_recursion_limit():
    depth = max(5000, 3 * sys.getrecursionlimit())
    x = leaf(1.0)
    y = x
    for _ in range(depth):
        y = y + x
    y.backward()
    assert x.grad == depth + 1
    del y                                           # freeing the chain must not recurse either


def test_gradient_flows_only_to_tensors_that_require_it():
    x, c = leaf([1.0, 2.0]), Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    assert c.grad is None
    logits, labels = leaf(np.zeros((2, 3))), Tensor(np.array([0, 2]))
    ops.cross_entropy(logits, labels).backward()    # labels are not differentiable
    assert labels.grad is None and logits.grad.shape == (2, 3)


# --------------------------------------------------------------------------- no_grad and detach

def test_no_grad_records_nothing_and_restores_recording():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = (x * 3.0).exp()
    assert not y.requires_grad and y.is_leaf and y.prim is None and y.parents == ()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        y.sum().backward()
    with pytest.raises(ZeroDivisionError), no_grad():
        1 / 0
    z = x * 3.0                                     # recording is back on, even after the error
    assert z.requires_grad and z.prim is PRIMITIVES["mul"]


def test_detach_cuts_the_graph_and_shares_data():
    x = leaf([1.0, -2.0])
    d = (x * 2.0).detach()
    assert d.is_leaf and not d.requires_grad and d.parents == ()
    (x * d).sum().backward()                        # d is a constant: the gradient is d, not 4x
    np.testing.assert_array_equal(x.grad, d.data)
    assert np.shares_memory(x.detach().data, x.data)


# --------------------------------------------------------------------------- broadcasting

@pytest.mark.parametrize("a_shape, b_shape", [((2, 3), (3,)), ((2, 1), (1, 3)), ((4, 2, 3), (2, 1)),
                                              ((3,), ())])
def test_broadcast_gradients_are_summed_back_to_each_shape(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = leaf(rng.standard_normal(a_shape)), leaf(rng.standard_normal(b_shape))
    out = a * b
    v = rng.standard_normal(out.shape)
    out.backward(v)
    assert a.grad.shape == a_shape and b.grad.shape == b_shape
    # summing v·a over the broadcast axes by hand: every axis where b is 1 or missing
    full = np.broadcast_to(v * a.data, out.shape)
    lead = full.ndim - len(b_shape)
    expected = full.sum(axis=tuple(range(lead)))
    expected = expected.sum(axis=tuple(i for i, s in enumerate(b_shape) if s == 1), keepdims=True)
    np.testing.assert_allclose(b.grad, expected.reshape(b_shape), rtol=1e-12)


def test_rules_return_the_broadcast_shape_and_the_engine_reduces_it():
    calls = []

    def vjp(g, z, s, x, y):
        calls.append(g.shape)
        return g                                    # deliberately not unbroadcast in the rule

    with temporary_primitive("tmp_plus", "z = x + y;  x̄ = ȳ = g", np.add, vjp, vjp) as plus:
        x, y = leaf(np.ones((2, 3))), leaf(np.ones((1, 3)))
        plus(x, y).backward(np.ones((2, 3)))
    assert calls == [(2, 3), (2, 3)]
    np.testing.assert_array_equal(y.grad, [[2.0, 2.0, 2.0]])


def test_unbroadcast_reduces_added_and_stretched_axes():
    g = np.arange(24.0).reshape(4, 2, 3)
    np.testing.assert_array_equal(unbroadcast(g, (2, 1)), g.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    assert unbroadcast(g, (4, 2, 3)) is g
    with pytest.raises(ValueError, match="primitive 'demo' returned a gradient of shape"):
        unbroadcast(g, (3, 3), "demo")


def test_wrong_shaped_gradient_raises_naming_the_primitive():
    with temporary_primitive("tmp_bad_vjp", "z = x with a transposed x̄", lambda x: x + 0.0,
                             lambda g, z, s, x: g.T):
        x = leaf(np.ones((2, 3)))
        y = PRIMITIVES["tmp_bad_vjp"](x)
        with pytest.raises(ValueError, match=r"primitive 'tmp_bad_vjp' returned a gradient of "
                                             r"shape \(3, 2\) for argument 0 of shape \(2, 3\)"):
            y.sum().backward()
    assert "tmp_bad_vjp" not in PRIMITIVES


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_float32_stays_float32_through_every_primitive(name):
    case = make_case(name, np.random.default_rng(0), (2, 3), True)
    args = [Tensor(a.astype(np.float32), requires_grad=i in case.argnums)
            if np.asarray(a).dtype.kind == "f" else a for i, a in enumerate(case.args)]
    out = PRIMITIVES[name](*args, **case.static)
    assert out.dtype == F32, f"{name} forward gives {out.dtype}"
    out.backward(np.ones(out.shape, dtype=np.float32))
    for i in case.argnums:
        assert args[i].grad.dtype == F32, f"{name} gradient {i} is {args[i].grad.dtype}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_numbers_follow_the_tensor_dtype(dtype):
    x = leaf([1.0, 2.0], dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    with default_dtype(other):                      # numbers follow the tensor, not the default
        results = [x + 1, 2 * x, x ** 2, 1.5 / x, 1 - x, x.relu(), x.clip(0.5, 1.5), ops.maximum(x, 0),
                   np.float64(2.0) * x, x * np.float32(2.0)]
    assert all(isinstance(r, Tensor) and r.dtype == np.dtype(dtype) for r in results)
    sum(r.sum() for r in results).backward()
    assert x.grad.dtype == np.dtype(dtype)


def test_ndarray_on_the_left_gives_a_tensor():
    x = leaf([1.0, 2.0])
    y = np.array([3.0, 4.0]) * x                     # Tensor.__rmul__, not an object array
    assert isinstance(y, Tensor) and y.prim is PRIMITIVES["mul"]


def test_default_dtype_context_and_setter():
    assert get_default_dtype() == F32
    assert Tensor(1.0).dtype == F32 and Tensor([1, 2]).dtype == F32
    with default_dtype(np.float64):
        assert Tensor([1.0]).dtype == F64 and ops.add(1.0, 2.0).dtype == F64
        with default_dtype(np.float32):
            assert Tensor(0.5).dtype == F32
        assert get_default_dtype() == F64
    assert get_default_dtype() == F32
    with pytest.raises(KeyError), default_dtype(np.float64):
        raise KeyError
    assert get_default_dtype() == F32
    try:
        set_default_dtype(np.float64)
        assert Tensor(1.0).dtype == F64
    finally:
        set_default_dtype(np.float32)
    # float arrays keep their dtype, integer arrays stay integer (labels, indices)
    assert Tensor(np.ones(2)).dtype == F64 and Tensor(np.arange(3)).dtype.kind == "i"


# --------------------------------------------------------------------------- introspection

def test_repr_parents_and_prim():
    x, w = leaf([1.0, 2.0]), Tensor(np.array([0.5, 0.25]))
    y = x * w
    assert y.prim is PRIMITIVES["mul"] and y.parents[0] is x and y.parents[1] is w
    assert "prim=mul" in repr(y) and "requires_grad=True" in repr(y)
    assert x.prim is None and x.parents == () and x.is_leaf
    assert "prim=" not in repr(x) and "requires_grad=True" in repr(x)
    z = x * 2                                       # a number becomes a constant leaf parent
    assert isinstance(z.parents[1], Tensor) and not z.parents[1].requires_grad
    assert "mul" in repr(PRIMITIVES["mul"]) and "g·y" in repr(PRIMITIVES["mul"])


# --------------------------------------------------------------------------- conventions

def test_primitive_conventions():
    def grad(f, values):
        x = leaf(values)
        y = f(x)
        y.backward(np.ones(y.shape))
        return x.grad

    np.testing.assert_array_equal(grad(ops.relu, [0.0, 1.0, -1.0]), [0.0, 1.0, 0.0])   # relu'(0) = 0
    np.testing.assert_array_equal(grad(lambda x: x.max(), [1.0, 3.0, 3.0]), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(ops.round_ste(Tensor([0.5, 1.5, 2.5, -0.5])).data,
                                  [0.0, 2.0, 2.0, -0.0])                                # half to even
    np.testing.assert_array_equal(grad(lambda x: x.round_ste(), [0.5, 1.7]), [1.0, 1.0])
    np.testing.assert_array_equal(grad(lambda x: x[[0, 0, 2]], [1.0, 2.0, 3.0]), [2.0, 0.0, 1.0])
    np.testing.assert_array_equal(grad(lambda x: x[x > 1.5], [1.0, 2.0, 3.0]), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(grad(lambda x: x.clip(0.0, 1.0), [0.0, 0.5, 1.0]), [0.0, 1.0, 0.0])


# --------------------------------------------------------------------------- Tensor's operators

# (what a student writes, the primitive it must record, the same computed with NumPy)
_X = np.array([[0.5, -1.5, 2.0], [1.0, 0.25, -0.75]])
_Y = np.array([[1.5, 2.0, 0.5], [0.5, 1.0, 2.5]])
OPERATORS = [
    ("x + y", lambda x, y: x + y, "add", _X + _Y),
    ("2 + x", lambda x, y: 2.0 + x, "add", 2.0 + _X),
    ("x - y", lambda x, y: x - y, "sub", _X - _Y),
    ("2 - x", lambda x, y: 2.0 - x, "sub", 2.0 - _X),
    ("x * y", lambda x, y: x * y, "mul", _X * _Y),
    ("2 * x", lambda x, y: 2.0 * x, "mul", 2.0 * _X),
    ("x / y", lambda x, y: x / y, "div", _X / _Y),
    ("2 / y", lambda x, y: 2.0 / y, "div", 2.0 / _Y),
    ("y ** x", lambda x, y: y ** x, "power", _Y ** _X),
    ("2 ** x", lambda x, y: 2.0 ** x, "power", 2.0 ** _X),
    ("x @ y.T", lambda x, y: x @ y.T, "matmul", _X @ _Y.T),
    ("ndarray @ y", lambda x, y: _X @ y.T, "matmul", _X @ _Y.T),
    ("-x", lambda x, y: -x, "neg", -_X),
    ("abs(x)", lambda x, y: abs(x), "absolute", np.abs(_X)),
    ("x.abs()", lambda x, y: x.abs(), "absolute", np.abs(_X)),
    ("x[1:, ::2]", lambda x, y: x[1:, ::2], "getitem", _X[1:, ::2]),
    ("x[Tensor index]", lambda x, y: x[Tensor(np.array([1, 0, 1]))], "getitem", _X[[1, 0, 1]]),
    ("x.exp()", lambda x, y: x.exp(), "exp", np.exp(_X)),
    ("y.log()", lambda x, y: y.log(), "log", np.log(_Y)),
    ("x.sigmoid()", lambda x, y: x.sigmoid(), "sigmoid", 1 / (1 + np.exp(-_X))),
    ("x.log_sigmoid()", lambda x, y: x.log_sigmoid(), "log_sigmoid", -np.log1p(np.exp(-_X))),
    ("x.softplus()", lambda x, y: x.softplus(), "softplus", np.log1p(np.exp(_X))),
    ("x.round_ste()", lambda x, y: x.round_ste(), "round_ste", np.round(_X)),
    ("x.relu()", lambda x, y: x.relu(), "maximum", np.maximum(_X, 0)),
    ("x.clip(-1, 1)", lambda x, y: x.clip(-1.0, 1.0), "clip", np.clip(_X, -1, 1)),
    ("x.sum()", lambda x, y: x.sum(), "reduce_sum", _X.sum()),
    ("x.sum(0, True)", lambda x, y: x.sum(axis=0, keepdims=True), "reduce_sum", _X.sum(0, keepdims=True)),
    ("x.mean(1)", lambda x, y: x.mean(axis=1), "mean", _X.mean(1)),
    ("x.max(-1)", lambda x, y: x.max(axis=-1), "reduce_max", _X.max(-1)),
    ("x.reshape(3, 2)", lambda x, y: x.reshape(3, 2), "reshape", _X.reshape(3, 2)),
    ("x.reshape((-1,))", lambda x, y: x.reshape((-1,)), "reshape", _X.reshape(-1)),
    ("x.T", lambda x, y: x.T, "transpose", _X.T),
    ("x.transpose(1, 0)", lambda x, y: x.transpose(1, 0), "transpose", _X.T),
    ("x.broadcast_to", lambda x, y: x.broadcast_to([4, 2, 3]), "broadcast_to",
     np.broadcast_to(_X, (4, 2, 3))),
    ("x.flatten(0)", lambda x, y: x.flatten(0), "reshape", _X.reshape(-1)),
]


@pytest.mark.parametrize("f, name, expected", [o[1:] for o in OPERATORS],
                         ids=[o[0] for o in OPERATORS])
def test_each_operator_records_its_primitive(f, name, expected):
    out = f(leaf(_X), leaf(_Y))
    assert out.prim is PRIMITIVES[name]
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)


def test_comparisons_give_plain_boolean_arrays():
    x, y = leaf(_X), leaf(_Y)
    for got, want in [(x < y, _X < _Y), (x <= 0.5, _X <= 0.5), (x > y, _X > _Y), (x >= 0.5, _X >= 0.5)]:
        assert type(got) is np.ndarray and got.dtype == bool
        np.testing.assert_array_equal(got, want)


def test_operators_are_declared_in_the_class_and_nothing_attaches_more():
    """Tensor reads as one piece: its operators are in the class body of engine.py, and no module
    adds or replaces attributes of Tensor at import time."""
    import ast
    from pathlib import Path

    engine = Path(__file__).resolve().parents[1] / "bbits_ref" / "autograd" / "engine.py"
    tree = ast.parse(engine.read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tensor"]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    wanted = {"__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__", "__neg__",
              "__abs__", "__getitem__", "__lt__", "__le__", "__gt__", "__ge__", "exp", "log",
              "abs", "sigmoid", "log_sigmoid", "softplus", "round_ste", "relu", "sum", "mean",
              "max", "clip", "reshape", "transpose", "broadcast_to", "flatten"}
    assert wanted <= set(methods), f"missing from the class body: {sorted(wanted - set(methods))}"
    assert all(ast.get_docstring(methods[m]) for m in wanted)
    # at run time (all of bbits_ref imported), Tensor has exactly what its class body declares
    declared = set(methods) | {t.id for n in cls.body if isinstance(n, ast.Assign)
                               for t in n.targets if isinstance(t, ast.Name)}
    implicit = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__",
                "__annotations__", "__firstlineno__", "__static_attributes__"}
    attached = set(vars(Tensor)) - declared - implicit
    assert not attached, f"attached to Tensor from outside its class body: {sorted(attached)}"
    for name in wanted:
        assert vars(Tensor)[name].__qualname__ == f"Tensor.{name}", f"Tensor.{name} was replaced"


def test_an_unregistered_primitive_is_a_clear_error(monkeypatch):
    monkeypatch.delitem(PRIMITIVES, "add")
    with pytest.raises(RuntimeError, match="primitive 'add' is not registered"):
        leaf([1.0]) + 1.0


# --------------------------------------------------------------------------- bad input

def test_shape_errors_are_clear():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: \(2, 3\) @ \(4, 5\)"):
        a @ b
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.matmul(Tensor(np.float64(2.0)), a)
    with pytest.raises(ValueError, match=r"add: .*could not be broadcast.*input shapes \(2, 3\), \(4,\)"):
        a + Tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"broadcast_to: .*input shapes \(2, 3\)"):
        ops.broadcast_to(a, shape=(3, 3))
    with pytest.raises(ValueError, match="reshape"):
        a.reshape(4, 2)


def test_conv2d_and_pool_errors_are_clear():
    x = Tensor(np.ones((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="the input has 3 channels but the weight expects 2"):
        ops.conv2d(x, Tensor(np.ones((4, 2, 1, 1))))
    with pytest.raises(ValueError, match="kernel 5×5 is larger than the padded input 3×3"):
        ops.conv2d(x, Tensor(np.ones((4, 3, 5, 5))))
    with pytest.raises(ValueError, match=r"conv2d expects input \(N, C, H, W\).*got \(3, 3, 3\)"):
        ops.conv2d(Tensor(np.ones((3, 3, 3))), Tensor(np.ones((4, 3, 1, 1))))
    with pytest.raises(ValueError, match="stride must be ≥ 1"):
        ops.conv2d(x, Tensor(np.ones((4, 3, 1, 1))), stride=0)
    with pytest.raises(ValueError, match="max_pool2d: window 4×4 larger than the input"):
        ops.max_pool2d(x, kernel_size=4)
    with pytest.raises(ValueError, match=r"avg_pool2d expects input \(N, C, H, W\)"):
        ops.avg_pool2d(Tensor(np.ones((3, 3))), kernel_size=2)


def test_integer_tensors_are_refused_where_a_gradient_could_flow():
    ints = Tensor(np.arange(3))
    with pytest.raises(TypeError, match=r"primitive 'exp': argument 0 must be a float32/float64 "
                                        r"tensor, got int64.*astype"):
        ops.exp(ints)
    with pytest.raises(TypeError, match="primitive 'add': argument 0 must be a float32/float64"):
        ops.add(np.arange(3), Tensor(np.ones(3)))
    with pytest.raises(TypeError, match="only float32/float64 tensors can require a gradient"):
        Tensor(np.arange(3), requires_grad=True)


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex128, "banana"])
def test_unsupported_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match="dtype must be float32"):
        Tensor([1.0, 2.0], dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be float32"):
        set_default_dtype(dtype)
    assert get_default_dtype() == F32


def test_float16_and_complex_arrays_are_refused():
    for arr in (np.ones(2, np.float16), np.ones(2, np.complex128)):
        with pytest.raises(TypeError, match=f"dtype {arr.dtype} is not supported; use float32"):
            Tensor(arr)


def test_backward_errors_are_clear():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(ValueError, match=r"needs a scalar; this tensor has shape \(2,\).*\.sum\(\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), the tensor \(2,\)"):
        y.backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        Tensor(np.ones(2)).sum().backward()
    assert x.grad is None                           # a failed call leaves no partial gradient


def test_cross_entropy_refuses_bad_labels():
    logits = leaf(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got \[0, 3\]"):
        ops.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got \[-1, 1\]"):
        ops.cross_entropy(logits, np.array([-1, 1]))
    with pytest.raises(ValueError, match="2 rows of logits but labels of shape"):
        ops.cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be integers; got float64"):
        ops.cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\)"):
        ops.cross_entropy(leaf(np.zeros(3)), np.array([0]))

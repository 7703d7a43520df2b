"""Tests of the PyTorch implementation (bbits_ref/torch_impl) against the NumPy reference.

Everything is compared with the reference on the same inputs, parameters and gate noise:
  * float64: the quantizer forward and its x gradient are equal bit for bit; sums (β and gate
    gradients) agree to ~1e−12 of their scale; whole networks to ~1e−9;
  * float32: the quantizer forward is still bit-exact (same IEEE operations in the same order);
    sums agree to 1e−6 of their scale; whole networks to 1e−5 on the logits.  Network gradients
    are looser in float32: a pre-activation that differs by one ulp between two convolution
    algorithms can fall on the other side of a ReLU/clip bound and switch one element's
    straight-through mask (measured: up to ~5e−3 of the gradient's max, more on β gradients
    of activations, which are sums with heavy cancellation).
"""
import ast
import subprocess
import zlib
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bbits_ref.torch_impl as ti  # noqa: E402
from bbits_ref.method import gates as ref_gates  # noqa: E402
from bbits_ref.method import models as ref_models  # noqa: E402
from bbits_ref.autograd import ops  # noqa: E402
from bbits_ref.method import prior as ref_prior
from bbits_ref.method import quantizer as ref_q  # noqa: E402
from bbits_ref.autograd.engine import Tensor, default_dtype  # noqa: E402
from bbits_ref.method.layers import BBConfig  # noqa: E402
from bbits_ref.method.readout import model_readout  # noqa: E402
from bbits_ref.torch_impl import bops as t_bops  # noqa: E402
from bbits_ref.torch_impl import gates as t_gates  # noqa: E402
from bbits_ref.torch_impl import prior as t_prior  # noqa: E402
from bbits_ref.torch_impl.adapter import adapter as torch_adapter  # noqa: E402
from bbits_ref.torch_impl import quantizer as t_q  # noqa: E402
from bbits_ref.torch_impl.quantizer import (_CPU_BLOCK, bb_quantize, fixed_quantize,  # noqa: E402
                                            round_ste)
from bbits_ref.method import architectures  # noqa: E402
from bbits_ref.method import bops as ref_bops  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TORCH = {np.float32: torch.float32, np.float64: torch.float64}
GATE_NAMES = ("z4", "z8", "z16", "z32")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: one thread is faster, and steadier when the test runner shares the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- helpers

def ref_quantize(x, beta, z2, gates, g, *, signed, clip="official", dtype=np.float64):
    """Reference forward + backward; returns x_q and every gradient (None: not an input)."""
    xt = Tensor(np.asarray(x, dtype), requires_grad=True)
    bt = Tensor(np.asarray(beta, dtype), requires_grad=True)
    zt = None if z2 is None else Tensor(np.asarray(z2, dtype), requires_grad=True)
    gt = [None if z is None else Tensor(np.asarray(z, dtype), requires_grad=True) for z in gates]
    out = ref_q.bb_quantize(xt, bt, zt, *gt, signed=signed, clip=clip)
    (out * Tensor(np.asarray(g, dtype))).sum().backward()
    grads = {"x": xt.grad, "beta": bt.grad, "z2": None if zt is None else zt.grad}
    for name, z in zip(GATE_NAMES, gt):
        grads[name] = None if z is None else (np.zeros(()) if z.grad is None else z.grad)
    return out.data, grads


def torch_quantize(x, beta, z2, gates, g, *, signed, clip="official", dtype=np.float64):
    td = TORCH[dtype]
    xt = torch.tensor(np.asarray(x, dtype), requires_grad=True)
    bt = torch.tensor(np.asarray(beta, dtype), requires_grad=True)
    zt = None if z2 is None else torch.tensor(np.asarray(z2, dtype), requires_grad=True)
    gt = [None if z is None else torch.tensor(float(z), dtype=td, requires_grad=True)
          for z in gates]
    out = bb_quantize(xt, bt, zt, *gt, signed=signed, clip=clip)
    out.backward(torch.tensor(np.asarray(g, dtype)))

    def grad(t):
        return None if t is None else (np.zeros(()) if t.grad is None else t.grad.numpy())
    grads = {"x": grad(xt), "beta": grad(bt), "z2": grad(zt)}
    grads.update({name: grad(z) for name, z in zip(GATE_NAMES, gt)})
    return out.detach().numpy(), grads


def make_values(rng, shape, beta, signed, dtype):
    """Values across (and beyond) the range, with exact ties, grid points and both bounds."""
    lo = -beta if signed else -0.3 * beta
    x = rng.uniform(lo * 1.3, 1.3 * beta, shape)
    flat = x.reshape(-1)
    steps = ref_q.step_sizes(dtype(beta), signed)
    n = flat.size
    k = rng.integers(-3, 4, n)
    pick = rng.integers(0, n, n // 4)
    flat[pick[: n // 8]] = (k[: n // 8] + 0.5) * steps[rng.integers(0, 3)]      # ties
    flat[pick[n // 8:]] = k[n // 8: n // 4] * steps[1]                           # grid points
    lo_c, hi_c = ref_q.clip_range(dtype(beta), signed)
    flat[:4] = [hi_c, lo_c, dtype(beta), 0.0]                                    # bounds
    return x.astype(dtype)


def assert_sums_close(a, b, scale, rel):
    np.testing.assert_allclose(np.asarray(b, np.float64), np.asarray(a, np.float64),
                               rtol=0, atol=rel * scale)


GATE_CASES = {
    "2bit": (0.0, 0.0, 0.0, 0.0),
    "4bit": (1.0, 0.0, 0.0, 0.0),
    "8bit": (1.0, 1.0, 0.0, 0.0),
    "16bit": (1.0, 1.0, 1.0, 0.0),
    "32bit": (1.0, 1.0, 1.0, 1.0),
    "fractional": (0.7, 0.4, 0.9, 0.2),
    "z8_zero": (0.6, 0.0, 0.5, 0.5),
    "none_above_z8": (0.3, 0.8, None, None),
}


# --------------------------------------------------------------------------- import hygiene

def test_bbits_ref_never_imports_torch():
    code = ("import sys, bbits_ref, bbits_ref.method.models, bbits_ref.training.trainer, bbits_ref.method.readout, "
            "bbits_ref.method.bops, bbits_ref.conformance; "
            "assert 'torch' not in sys.modules, 'bbits_ref imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_clear_import_error_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import bbits_ref.torch_impl\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    assert "pip install 'bbits_ref[torch]'" in out


# Modules of the reference torch_impl may import: the method's numbers, the networks'
# descriptions, and the settings object (data).  Anything else would let the port borrow a
# formula from the reference, and then agreeing with it would prove nothing.
SHARED_WITH_THE_REFERENCE = {"bbits_ref.method.constants": None,
                             "bbits_ref.method.architectures": None,
                             "bbits_ref.method.layers": {"BBConfig"}}


def _project_imports(tree):
    """(module, names, inside a function) of each import of bbits_ref outside torch_impl."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_function(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return True
        return False
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append(("relative import", set(), in_function(node)))
        elif isinstance(node, ast.ImportFrom) and (ROOT / node.module.replace(".", "/")).is_dir():
            # "from package import module": each name is a module of its own
            found += [(f"{node.module}.{a.name}", set(), in_function(node)) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module, {a.name for a in node.names}, in_function(node)))
        elif isinstance(node, ast.Import):
            found += [(a.name, set(), in_function(node)) for a in node.names]
    return [(m, n, f) for m, n, f in found if m == "relative import" or (
        m.split(".")[0] == "bbits_ref" and not m.startswith("bbits_ref.torch_impl"))]


def test_torch_impl_imports_only_constants_architectures_and_config():
    """The port computes every formula itself (AST over bbits_ref/torch_impl/*.py).

    The one exception is the weight transfer to_reference, which must build a reference model:
    it imports bbits_ref.method.models inside the function, so no computing module loads it.
    """
    seen = set()
    for path in sorted((ROOT / "bbits_ref" / "torch_impl").glob("*.py")):
        for module, names, in_function in _project_imports(ast.parse(path.read_text())):
            seen.add(module)
            if (path.name, module, names, in_function) == (
                    "state.py", "bbits_ref.method.models", {"build"}, True):
                continue
            assert module in SHARED_WITH_THE_REFERENCE, f"{path.name} imports {module}"
            allowed = SHARED_WITH_THE_REFERENCE[module]
            assert allowed is None or names <= allowed, f"{path.name}: {module} {names}"
    assert seen == set(SHARED_WITH_THE_REFERENCE) | {"bbits_ref.method.models"}
    assert _project_imports(ast.parse("from bbits_ref.method import quantizer")), \
        "the check must see a forbidden import"


def test_torch_impl_does_not_call_the_reference_formulas(monkeypatch):
    """With the reference's formulas replaced by bombs, torch_impl gives the same numbers."""
    ref, model, x, y, noise = _initialized_pair("lenet5", np.float64, seed=8)
    rng = np.random.default_rng(8)
    w = rng.uniform(-1.2, 1.2, (4, 7))
    chain = {"chain": np.array([1.0, 1.0, 0.0, 0.0]), "z2": np.array([1.0, 0.0, 1.0])}

    def run():
        model.zero_grad()
        logits = model(torch.tensor(x), noise=noise)
        loss = (torch.nn.functional.cross_entropy(logits, torch.tensor(y))
                + 0.1 * model.regularizer())
        loss.backward()
        out = {"logits": logits.detach().numpy(), "loss": loss.item()}
        out.update({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
        wt, beta = torch.tensor(w, requires_grad=True), torch.tensor(0.9, dtype=torch.float64)
        q = bb_quantize(wt, beta, None, 0.7, 0.4, signed=True)
        q.sum().backward()
        out.update(q=q.detach().numpy(), grad_w=wt.grad.numpy(),
                   fixed=fixed_quantize(wt.detach(), beta, 4, signed=False).numpy(),
                   steps=[s.item() for s in t_q.step_sizes(beta, True)],
                   clip=[v.item() for v in t_q.clip_range(beta, False)],
                   model_bops=model.relative_bops(),
                   bops=t_bops.relative_bops("vgg7", 0.5, {"conv1.weight_quantizer": chain}))
        model.eval()
        out["eval_logits"] = model(torch.tensor(x)).detach().numpy()
        model.train()
        step = torch_adapter.lenet5_step(ref.state_dict(), x[:, :, :, :], y, noise, mu=0.1)
        out["adapter_loss"] = step["loss"]
        return out

    before = run()
    want = ref(x, noise=noise).data                # the comparison is with the reference itself
    np.testing.assert_allclose(before["logits"], want, rtol=0, atol=1e-10)

    def bomb(*args, **kwargs):
        raise AssertionError("torch_impl called a formula of the reference")
    for owner, name in [(ref_q, "clip_range"), (ref_q, "step_sizes"), (ref_q, "bb_quantize"),
                        (ref_q, "gates_for_bits"), (ref_q, "init_range"),
                        (ref_bops, "relative_bops"), (ref_bops, "deterministic_bits"),
                        (ref_bops, "LayerCost"), (ref_bops, "lenet5_layer_macs"),
                        (ref_bops, "vgg7_layer_macs"), (ref_bops, "conv_macs"),
                        (ref_prior, "bop_regularizer"), (ref_prior, "independent_regularizer"),
                        (ref_gates, "chain_gates"), (ref_gates.HardConcrete, "sample"),
                        (ref_gates.HardConcrete, "prob_nonzero"),
                        (ref_gates.HardConcrete, "deterministic")]:
        monkeypatch.setattr(owner, name, bomb)
    with pytest.raises(AssertionError, match="called a formula"):   # the bombs are armed
        ref(x, noise=noise)
    after = run()
    assert before.keys() == after.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(value), err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_range_and_step_sizes_equal_the_reference_bit_for_bit(dtype):
    rng = np.random.default_rng(21)
    betas = np.concatenate([rng.uniform(1e-3, 10, 300), [1.0, 3.0, 0.1, 1e-30, 7e30]]).astype(dtype)
    td = TORCH[dtype]
    for beta in betas:
        for signed in (True, False):
            got = [v.item() for v in t_q.clip_range(torch.tensor(beta, dtype=td), signed)]
            assert got == [float(v) for v in ref_q.clip_range(beta, signed)], (beta, signed)
            got = [v.item() for v in t_q.step_sizes(torch.tensor(beta, dtype=td), signed)]
            assert got == [float(v) for v in ref_q.step_sizes(beta, signed)], (beta, signed)
            assert all(v.dtype == td for v in t_q.step_sizes(torch.tensor(beta, dtype=td), signed))
    assert t_q.step_sizes(1.5, True)[0].item() == 1.0            # s2 = 2β/3
    assert t_q.gates_for_bits(8) == (1.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="bits must be one of"):
        t_q.gates_for_bits(6)


def test_deterministic_bits_and_bops_errors():
    chains = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1.]])
    assert t_bops.deterministic_bits(chains).tolist() == [2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        t_bops.deterministic_bits([1, 0.5, 0, 0])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        t_bops.deterministic_bits([1, 1, 1])
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        t_bops.relative_bops("lenet5", 1.0, {"conv1.weight_quantizer": {
            "chain": np.ones(4), "z2": np.full(32, 0.5)}})
    with pytest.raises(TypeError, match="gates must be a dict"):
        t_bops.relative_bops("lenet5", 1.0, [])
    # pruning half of conv1's channels halves conv1's and conv2's BOPs (keep_out, keep_in)
    half = {"conv1.weight_quantizer": {"chain": np.ones(4), "z2": np.repeat([1.0, 0.0], 16)}}
    full = {"conv1.weight_quantizer": {"chain": np.ones(4), "z2": np.ones(32)}}
    macs = dict(t_bops.layer_macs("lenet5"))
    drop = (t_bops.relative_bops("lenet5", 1.0, full) - t_bops.relative_bops("lenet5", 1.0, half))
    total = sum(macs.values()) * 32 * 32
    assert drop == pytest.approx(100 * (macs["conv1"] * 32 * 8 + macs["conv2"] * 32 * 32) / 2
                                 / total, rel=1e-12)


def test_a_new_description_builds_the_same_network_in_torch():
    """Any architecture description builds in both implementations, with the same numbers."""
    hidden = dict(relu=True, act_quant=True, prune=True)
    tiny = architectures.Architecture("tiny", (2, 9, 9), (
        architectures.LayerSpec("conv1", "conv", 2, 4, kernel=3, stride=2, padding=1, **hidden),
        architectures.LayerSpec("pool1", "pool", kernel=2, stride=2),
        architectures.LayerSpec("flatten", "flatten"),
        architectures.LayerSpec("fc1", "linear", 16, 6, bias=False, batch_norm=True, **hidden),
        architectures.LayerSpec("fc2", "linear", 6, 3)), gate_preset="cifar10")
    ref = ref_models.build(tiny, rng=3, dtype=np.float64)
    x = np.random.default_rng(0).random((5, 2, 9, 9))
    ref.initialize(x[:2], np.random.default_rng(1))
    model = ti.from_reference(ref)
    assert model.architecture == tiny and model.layer_macs() == ref.layer_macs()
    fresh = ti.build(tiny, rng=3, dtype=torch.float64)            # same initial draws
    np.testing.assert_array_equal(fresh.fc1.weight.detach().numpy(), ref.fc1.weight.data)
    noise = ref.sample_noise(np.random.default_rng(2))
    np.testing.assert_allclose(model(torch.tensor(x), noise=noise).detach().numpy(),
                               ref(x, noise=noise).data, rtol=0, atol=1e-12)
    assert model.regularizer().item() == pytest.approx(float(ref.regularizer().data), rel=1e-13)
    with pytest.raises(ValueError, match="non-overlapping"):
        ti.models.make_layer(architectures.LayerSpec("p", "pool", kernel=3, stride=2))


def test_no_hard_coded_cuda():
    """Device agnostic: no .cuda() call and no "cuda" device string in the implementation."""
    for path in (ROOT / "bbits_ref" / "torch_impl").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr != "cuda", f"{path.name}: .cuda"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("cuda"), f"{path.name}: {node.value!r}"


# --------------------------------------------------------------------------- quantizer

@pytest.mark.parametrize("gates", GATE_CASES.values(), ids=GATE_CASES.keys())
@pytest.mark.parametrize("signed", [True, False])
def test_quantizer_float64_is_bit_exact(gates, signed):
    rng = np.random.default_rng(zlib.crc32(repr((gates, signed)).encode()))
    beta = rng.uniform(0.5, 2.0)
    x = make_values(rng, (6, 3, 5), beta, signed, np.float64)
    z2 = rng.uniform(0, 1, 6)
    z2[0] = 0.0
    g = rng.standard_normal(x.shape)
    want_q, want = ref_quantize(x, beta, z2, gates, g, signed=signed)
    got_q, got = torch_quantize(x, beta, z2, gates, g, signed=signed)
    np.testing.assert_array_equal(got_q, want_q)
    np.testing.assert_array_equal(got["x"], want["x"])
    scale = np.abs(g).sum() * beta
    for key in ("beta", "z2", *GATE_NAMES):
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert_sums_close(want[key], got[key], scale, 1e-12)


@pytest.mark.parametrize("clip", ["official", "numpy"])
@pytest.mark.parametrize("signed", [True, False])
def test_quantizer_float32_forward_is_bit_exact_and_sums_close(signed, clip):
    """Large enough for several CPU blocks; float32 forward equals the float32 reference."""
    rng = np.random.default_rng(7)
    beta = np.float32(1.37)
    shape = (3, 2 * _CPU_BLOCK // 3 + 17)
    x = make_values(rng, shape, float(beta), signed, np.float32)
    z2 = np.array([1.0, 0.25, 0.0], np.float32)
    gates = (np.float32(0.8), np.float32(0.6), np.float32(0.3), np.float32(0.9))
    g = rng.standard_normal(shape).astype(np.float32)
    want_q, want = ref_quantize(x, beta, z2, gates, g, signed=signed, clip=clip,
                                dtype=np.float32)
    got_q, got = torch_quantize(x, beta, z2, gates, g, signed=signed, clip=clip,
                                dtype=np.float32)
    assert got_q.dtype == np.float32
    np.testing.assert_array_equal(got_q, want_q)
    np.testing.assert_array_equal(got["x"], want["x"])
    scale = float(np.abs(g).sum()) * float(beta)
    for key in ("beta", "z2", *GATE_NAMES):
        assert_sums_close(want[key], got[key], scale, 1e-6)


def test_quantizer_golden_vectors():
    """docs/method.md §11.4 golden vectors (β = 1, z2 = 1)."""
    x = np.array([-1.3, -0.5, -0.1, 0, 0.07, 0.26, 0.49, 1.2, 2.0])
    xt = torch.tensor(x, requires_grad=True)
    beta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    out = bb_quantize(xt, beta, None, 0.0, 0.0, signed=True)
    out.backward(torch.ones_like(out))
    np.testing.assert_allclose(out.detach().numpy(), np.array([-2, -2, 0, 0, 0, 0, 2, 2, 2]) / 3)
    np.testing.assert_allclose(beta.grad.item(), np.sum(
        [-0.666667, -0.166667, 0.1, 0, -0.07, -0.26, 0.176667, 0.666667, 0.666667]), atol=1e-5)
    q8 = bb_quantize(torch.tensor(x), torch.tensor(1.0, dtype=torch.float64), None, 0.5, 0.8,
                     signed=True)
    np.testing.assert_allclose(q8.numpy(), [-0.825098, -0.587451, -0.054118, 0, 0.041569,
                                            0.130196, 0.581176, 0.825098, 0.825098], atol=1e-6)
    xt = torch.tensor(x, requires_grad=True)
    unsigned = bb_quantize(xt, torch.tensor(1.0, dtype=torch.float64), None, 0.0, 0.0,
                           signed=False)
    unsigned.sum().backward()
    np.testing.assert_allclose(unsigned.detach().numpy(), [0, 0, 0, 0, 0, 1 / 3, 1 / 3, 1, 1])
    np.testing.assert_array_equal(xt.grad.numpy(), [0, 0, 0, 0, 1, 1, 1, 0, 0])


def test_zero_gate_convention():
    """A gate exactly 0: same forward as the formula, gradient 0 for it and every gate above."""
    x = torch.linspace(-1.2, 1.2, 50, dtype=torch.float64)
    z = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.5, 0.0, 0.7, 0.4)]
    out = bb_quantize(x, torch.tensor(1.0, dtype=torch.float64), None, *z, signed=True)
    out.sum().backward()
    assert z[0].grad.item() != 0
    assert [t.grad.item() for t in z[1:]] == [0.0, 0.0, 0.0]
    d = ref_q.decompose(x.numpy(), 1.0, True)
    np.testing.assert_allclose(out.detach().numpy(), d["A2"] + 0.5 * d["e4"], atol=1e-15)


def test_fixed_quantize_is_direct_quantization():
    x = torch.linspace(-1.1, 1.1, 301, dtype=torch.float64)
    for bits in (2, 4, 8):
        got = fixed_quantize(x, torch.tensor(0.9, dtype=torch.float64), bits, signed=True)
        want = ref_q.quantize_direct(x.numpy(), 0.9, bits, True)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-15)


def test_round_ste():
    x = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.5, 0.49], requires_grad=True)
    y = round_ste(x)
    np.testing.assert_array_equal(y.detach().numpy(), [-2, -0, 0, 2, 2, 0])
    (y * torch.arange(6.0)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(6.0))


def test_channel_axis_and_scalar_z2():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (4, 5, 3))
    z2 = rng.uniform(0, 1, 5)
    want = ref_q.bb_quantize(Tensor(x), 1.0, Tensor(z2), 1.0, signed=True, channel_axis=1).data
    got = bb_quantize(torch.tensor(x), 1.0, torch.tensor(z2), 1.0, signed=True, channel_axis=1)
    np.testing.assert_array_equal(got.numpy(), want)
    zt = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = bb_quantize(torch.tensor(x), 1.0, zt, 1.0, signed=True)
    out.sum().backward()
    np.testing.assert_allclose(zt.grad.item(), out.detach().sum().item() / 0.5)


@pytest.mark.parametrize("call, error, match", [
    (lambda x: bb_quantize(x, 0.0, signed=True), ValueError, "beta"),
    (lambda x: bb_quantize(x, torch.ones(2), signed=True), ValueError, "scalar"),
    (lambda x: bb_quantize(x, 1.0, None, 1.5, signed=True), ValueError, r"z4 must lie in \[0, 1\]"),
    (lambda x: bb_quantize(x, 1.0, None, torch.ones(2), signed=True), ValueError,
     "z4 must be a scalar"),
    (lambda x: bb_quantize(x, 1.0, torch.ones(3), signed=True), ValueError, r"shape \(4,\)"),
    (lambda x: bb_quantize(x, 1.0, torch.tensor([1, 1, 1, -1.0]), signed=True), ValueError, "z2"),
    (lambda x: bb_quantize(x.int(), 1.0, signed=True), TypeError, "float32 or float64"),
    (lambda x: bb_quantize(x.numpy(), 1.0, signed=True), TypeError, "torch.Tensor"),
    (lambda x: bb_quantize(x, 1.0, signed=1), TypeError, "signed"),
    (lambda x: bb_quantize(x, 1.0, signed=True, clip="np"), ValueError, "clip"),
])
def test_quantizer_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.ones(4, 3))


# --------------------------------------------------------------------------- gates

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hard_concrete_matches_reference(dtype):
    rng = np.random.default_rng(11)
    logits = rng.uniform(-4, 4, 200).astype(dtype)
    u = ref_gates.uniform_noise(rng, 200)
    u[:3] = [0.0, 1.0, 0.5]                          # clamped noise, as in the reference
    g = rng.standard_normal(200).astype(dtype)
    lt = Tensor(logits, requires_grad=True)
    z_ref = ref_gates.HardConcrete().sample(lt, u)
    (z_ref * Tensor(g)).sum().backward()
    phi = torch.tensor(logits, requires_grad=True)
    z = t_gates.hard_concrete_sample(phi, u)
    z.backward(torch.tensor(g))
    tol = 1e-15 if dtype == np.float64 else 2e-7
    np.testing.assert_allclose(z.detach().numpy(), z_ref.data, rtol=0, atol=tol)
    np.testing.assert_allclose(phi.grad.numpy(), lt.grad, rtol=0, atol=10 * tol)
    assert ((z == 0) | (z == 1)).any() and (phi.grad[(z == 0) | (z == 1)] == 0).all()


@pytest.mark.parametrize("straight_through", [False, True])
def test_gumbel_softmax_matches_reference(straight_through):
    rng = np.random.default_rng(12)
    logits = rng.uniform(-4, 4, 100)
    u = ref_gates.uniform_noise(rng, 100)
    g = rng.standard_normal(100)
    with default_dtype(np.float64):
        lt = Tensor(logits, requires_grad=True)
        z_ref = ref_gates.GumbelSoftmax(0.5, straight_through).sample(lt, u)
        (z_ref * Tensor(g)).sum().backward()
    phi = torch.tensor(logits, requires_grad=True)
    z = t_gates.gumbel_softmax_sample(phi, u, temperature=0.5,
                                      straight_through=straight_through)
    z.backward(torch.tensor(g))
    np.testing.assert_allclose(z.detach().numpy(), z_ref.data, atol=1e-15)
    np.testing.assert_allclose(phi.grad.numpy(), lt.grad, atol=1e-14)
    if straight_through:
        assert set(np.unique(z.detach().numpy())) <= {0.0, 1.0}


def test_generator_noise_is_reproducible_and_clamped():
    phi = torch.zeros(1000)
    a = t_gates.hard_concrete_sample(phi, generator=torch.Generator().manual_seed(5))
    b = t_gates.hard_concrete_sample(phi, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    u = t_gates.uniform_noise((100000,), torch.Generator().manual_seed(0))
    assert u.min() >= 1e-6 and u.max() <= 1 - 1e-6


@pytest.mark.parametrize("gate", ["hard_concrete", "gumbel_softmax"])
def test_probabilities_and_test_time_gates_match_reference(gate):
    ref_gate = ref_gates.make_gate(gate)
    thr = ref_gate.threshold_logit()
    logits = np.concatenate([np.linspace(-8, 8, 161), [thr - 1e-6, thr, thr + 1e-6]])
    for dtype in (np.float32, np.float64):
        lg = logits.astype(dtype)
        np.testing.assert_allclose(t_gates.prob_nonzero(torch.tensor(lg), gate=gate).numpy(),
                                   ref_gate.prob_nonzero(Tensor(lg)).data, rtol=5e-7)  # a few ulps
        np.testing.assert_array_equal(
            t_gates.deterministic_gates(torch.tensor(lg), gate=gate).numpy(),
            ref_gate.deterministic(lg))
    pi = t_gates.prob_nonzero(torch.tensor([6.0, 0.0, -2.0, -6.0], dtype=torch.float64))
    np.testing.assert_allclose(pi.numpy(), [0.99950, 0.8318, 0.4010, 0.01211], atol=5e-5)


@pytest.mark.parametrize("phis", [(6, 6, -6, -6), (6, -2.0, 6, 6), (6, -1.999, 6, -6),
                                  (-0.9353, 6, 6, 6), (-0.9354, 6, 6, 6), (0.5, -1.0, 6, 6)])
@pytest.mark.parametrize("hard_cut", [True, False])
def test_chain_gates_match_reference(phis, hard_cut):
    logits = np.array(phis, dtype=np.float64)
    u = np.array([0.3, 0.6, 0.9, 0.1])
    hc = ref_gates.HardConcrete()
    want = ref_gates.chain_gates(hc, Tensor(logits), u, training=True, hard_cut=hard_cut)
    got = t_gates.chain_gates(torch.tensor(logits), u, training=True, hard_cut=hard_cut)
    assert [w is None for w in want] == [g is None for g in got]
    for w, g in zip(want, got):
        if w is not None:
            assert abs(float(w.data) - g.item()) < 1e-15
    want_eval = ref_gates.chain_gates(hc, Tensor(logits), None, training=False,
                                      hard_cut=hard_cut)
    got_eval = t_gates.chain_gates_eval(torch.tensor(logits), hard_cut=hard_cut)
    np.testing.assert_array_equal(got_eval.numpy(), [0.0 if w is None else w for w in want_eval])


def test_gate_bad_input():
    with pytest.raises(ValueError, match="noise u has shape"):
        t_gates.hard_concrete_sample(torch.zeros(3), np.full(4, 0.5))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        t_gates.hard_concrete_sample(torch.zeros(2), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        t_gates.prob_nonzero(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="gate must be one of"):
        t_gates.prob_nonzero(torch.zeros(2), gate="bernoulli")
    with pytest.raises(ValueError, match="temperature"):
        t_gates.gumbel_softmax_sample(torch.zeros(2), np.full(2, 0.5), temperature=0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        t_gates.chain_gates(torch.zeros(3), None, training=False)
    with pytest.raises(ValueError, match="needs uniform noise"):
        t_gates.chain_gates(torch.zeros(4), None, training=True)
    with pytest.raises(TypeError, match="torch.Generator"):
        t_gates.uniform_noise((2,), np.random.default_rng(0))


# --------------------------------------------------------------------------- regularizer

@pytest.mark.parametrize("prior", ["autoregressive", "independent"])
@pytest.mark.parametrize("reg_type", ["bop", "const"])
@pytest.mark.parametrize("pruned", [True, False])
def test_regularizer_matches_reference(prior, reg_type, pruned):
    rng = np.random.default_rng(13)
    prune = rng.uniform(-3, 6, 16) if pruned else None
    chain = np.array([2.0, -0.5, 1.0, -6.0])
    with default_dtype(np.float64):
        pt = None if prune is None else Tensor(prune, requires_grad=True)
        ct = Tensor(chain, requires_grad=True)
        hc = ref_gates.HardConcrete()
        fn = (ref_prior.bop_regularizer if prior == "autoregressive"
              else ref_prior.independent_regularizer)
        want = fn(None if pt is None else hc.prob_nonzero(pt), hc.prob_nonzero(ct), 0.16,
                  reg_type=reg_type)
        want.backward()
    pl = None if prune is None else torch.tensor(prune, requires_grad=True)
    cl = torch.tensor(chain, requires_grad=True)
    got = t_prior.regularizer(pl, cl, 0.16, prior=prior, reg_type=reg_type)
    got.backward()
    np.testing.assert_allclose(got.item(), float(want.data), rtol=1e-14)
    np.testing.assert_allclose(cl.grad.numpy(), ct.grad, rtol=1e-13, atol=1e-16)
    if pruned:
        np.testing.assert_allclose(pl.grad.numpy(), pt.grad, rtol=1e-13, atol=1e-16)


def test_regularizer_hand_value_and_bad_input():
    """All probabilities 1: R = w·(2 + 4 + 8 + 16 + 32) with pruning, 1 + w·60 without."""
    big = torch.full((4,), 50.0, dtype=torch.float64)
    assert t_prior.regularizer(torch.full((3,), 50.0, dtype=torch.float64), big,
                               0.5).item() == pytest.approx(31.0)
    assert t_prior.regularizer(None, big, 0.5).item() == pytest.approx(31.0)
    with pytest.raises(ValueError, match="mac_weight"):
        t_prior.regularizer(None, big, 0.0)
    with pytest.raises(ValueError, match="reg_type"):
        t_prior.regularizer(None, big, 1.0, reg_type="bits")
    with pytest.raises(ValueError, match="prior"):
        t_prior.regularizer(None, big, 1.0, prior="flat")
    with pytest.raises(ValueError, match="probabilities"):
        t_prior.bop_regularizer(None, big, 1.0)


# --------------------------------------------------------------------------- BOPs

@pytest.mark.parametrize("model, width, want", [("lenet5", 1.0, {(8, 8): 6.25, (2, 2): 0.517,
                                                                 (2, 32): 5.744}),
                                                ("vgg7", 1.0, {(4, 4): 1.571, (2, 4): 0.786})])
def test_relative_bops_uniform_table(model, width, want):
    """The §5.1 table: uniform w/a configurations without pruning."""
    layers = t_bops.layer_macs(model, width)
    for (w, a), percent in want.items():
        chain = {b: np.array([float(b >= k) for k in (4, 8, 16, 32)]) for b in (w, a)}
        gates = {}
        for i, (name, _) in enumerate(layers):
            gates[f"{name}.weight_quantizer"] = {"chain": chain[w]}
            if i + 1 < len(layers):
                gates[f"{name}.act_quantizer"] = {"chain": chain[a]}
        assert t_bops.relative_bops(model, width, gates) == pytest.approx(percent, abs=1e-3)
    with pytest.raises(KeyError, match="unknown quantizer"):
        t_bops.relative_bops(model, width, {"conv9.weight_quantizer": {"chain": np.ones(4)}})


def test_model_bops_match_the_reference_readout():
    rng = np.random.default_rng(14)
    ref = ref_models.vgg7(0.125, rng=0)
    for _, q in ref.quantizers():
        q.gate_logits.data = rng.uniform(-3, 3, 4).astype(np.float32)
        if q.prune_logits is not None:
            q.prune_logits.data = rng.uniform(-3, 3, q.prune_logits.shape).astype(np.float32)
    model = ti.from_reference(ref)
    assert model.relative_bops() == pytest.approx(model_readout(ref).relative_bops, rel=1e-12)


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("shape, k", [((3, 4, 8, 6), 2), ((2, 3, 7, 9), 2), ((2, 2, 9, 9), 3)])
def test_max_pool_routes_to_the_first_maximum(shape, k):
    """Many ties (values from {0, 1, 2}): same values and gradients as the reference's pool."""
    rng = np.random.default_rng(15)
    x = rng.integers(0, 3, shape).astype(np.float64)
    g = rng.standard_normal((shape[0], shape[1], shape[2] // k, shape[3] // k))
    xt = Tensor(x, requires_grad=True)
    want = ops.max_pool2d(xt, kernel_size=k)
    (want * Tensor(g)).sum().backward()
    xs = torch.tensor(x, requires_grad=True)
    got = ti.models.MaxPool2d(k)(xs)
    got.backward(torch.tensor(g))
    np.testing.assert_array_equal(got.detach().numpy(), want.data)
    np.testing.assert_array_equal(xs.grad.numpy(), xt.grad)
    xn = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xn, k).backward(torch.tensor(g))
    np.testing.assert_array_equal(xs.grad.numpy(), xn.grad.numpy())


def _initialized_pair(arch, dtype, seed=0, batch=6):
    rng = np.random.default_rng(seed)
    if arch == "lenet5":
        ref, shape = ref_models.lenet5(rng=seed, dtype=dtype), (1, 28, 28)
    else:
        ref, shape = ref_models.vgg7(0.125, rng=seed, dtype=dtype), (3, 32, 32)
    x = rng.random((batch,) + shape).astype(dtype)
    y = rng.integers(0, 10, batch)
    ref.initialize(x[:2], np.random.default_rng(seed + 1))
    for _, q in ref.quantizers():     # mixed gates: some fractional, some cut, some pruned
        q.gate_logits.data = np.array([rng.uniform(-1, 4), rng.uniform(-2.5, 4), 3.0, -3.0],
                                      dtype=dtype)
        if q.prune_logits is not None:
            q.prune_logits.data = rng.uniform(-2, 5, q.prune_logits.shape).astype(dtype)
    return ref, ti.from_reference(ref), x, y, ref.sample_noise(np.random.default_rng(seed + 2))


def _step(ref, model, x, y, noise, mu=0.1):
    logits = ref(x, noise=noise)
    loss = ops.cross_entropy(logits, y) + mu * ref.regularizer()
    loss.backward()
    t_logits = model(torch.tensor(x), noise=noise)
    t_loss = (torch.nn.functional.cross_entropy(t_logits, torch.tensor(y))
              + mu * model.regularizer())
    t_loss.backward()
    return (logits.data, float(loss.data), dict(ref.named_parameters()),
            t_logits.detach().numpy(), t_loss.item(), dict(model.named_parameters()))


def test_lenet5_init_and_names_match_the_reference():
    ref, model = ref_models.lenet5(rng=3), ti.LeNet5(rng=3)
    want, got = ref.state_dict(), ti.state_dict_to_numpy(model)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    assert model.layer_macs() == ref.layer_macs()
    assert [n for n, _ in model.quantizers()] == [n for n, _ in ref.quantizers()]


@pytest.mark.parametrize("arch", ["lenet5", "vgg7"])
def test_model_train_step_float64_matches_reference(arch):
    ref, model, x, y, noise = _initialized_pair(arch, np.float64)
    logits, loss, ref_params, t_logits, t_loss, t_params = _step(ref, model, x, y, noise)
    np.testing.assert_allclose(t_logits, logits, rtol=0, atol=1e-10)
    assert t_loss == pytest.approx(loss, rel=1e-12)
    scale = max(np.abs(p.grad).max() for p in ref_params.values())
    for name, p in t_params.items():
        np.testing.assert_allclose(p.grad.numpy(), ref_params[name].grad, rtol=0,
                                   atol=1e-9 * scale, err_msg=name)
    state, t_state = ref.state_dict(), ti.state_dict_to_numpy(model)   # BN running statistics
    for k in state:
        np.testing.assert_allclose(t_state[k], state[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert model.regularizer().item() == pytest.approx(float(ref.regularizer().data), rel=1e-13)


@pytest.mark.parametrize("arch", ["lenet5", "vgg7"])
def test_model_train_step_float32_matches_reference(arch):
    ref, model, x, y, noise = _initialized_pair(arch, np.float32)
    logits, loss, ref_params, t_logits, t_loss, t_params = _step(ref, model, x, y, noise)
    np.testing.assert_allclose(t_logits, logits, rtol=0, atol=1e-5)
    assert t_loss == pytest.approx(loss, rel=1e-5)
    for name, p in t_params.items():
        want = ref_params[name].grad
        # β: 1e-2 of the largest β gradient of the model (a sum with heavy cancellation)
        scale = (max(np.abs(q.grad).max() for n, q in ref_params.items() if n.endswith("beta"))
                 if name.endswith("beta") else np.abs(want).max())
        np.testing.assert_allclose(p.grad.numpy(), want, rtol=0, atol=1e-2 * scale + 1e-9,
                                   err_msg=name)


@pytest.mark.parametrize("arch", ["lenet5", "vgg7"])
def test_weight_transfer_both_ways(arch):
    ref, model, x, y, noise = _initialized_pair(arch, np.float32, seed=4)
    back = ti.to_reference(model)                 # torch -> reference: same state, same outputs
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    for net in (ref, back, model):
        net.eval()
    want = ref(x).data
    np.testing.assert_allclose(back(x).data, want, rtol=0, atol=0)
    np.testing.assert_allclose(model(torch.tensor(x)).detach().numpy(), want, rtol=0, atol=1e-5)
    for net in (ref, back, model):
        net.train()
    train_ref = ref(x, noise=noise).data
    np.testing.assert_allclose(model(torch.tensor(x), noise=noise).detach().numpy(), train_ref,
                               rtol=0, atol=1e-5)


def test_numpy_state_round_trip_creates_lazy_ranges():
    ref, model, x, *_ = _initialized_pair("lenet5", np.float32)
    fresh = ti.LeNet5(rng=9)
    assert not fresh.initialized
    ti.load_numpy_state(fresh, ti.state_dict_to_numpy(model))
    assert fresh.initialized
    fresh.eval()
    model.eval()
    assert torch.equal(fresh(torch.tensor(x)), model(torch.tensor(x)))
    state = ti.state_dict_to_numpy(model)
    del state["fc2.bias"]
    with pytest.raises(RuntimeError, match="fc2.bias"):
        ti.load_numpy_state(ti.LeNet5(), state)


def test_generator_training_and_parameter_groups():
    model = ti.LeNet5(rng=0)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="initialize"):
        model.parameter_groups()
    model.initialize(x[:2], generator=torch.Generator().manual_seed(1))
    groups = model.parameter_groups()
    assert [len(groups[k]) for k in ("weights", "gates", "ranges")] == [8, 10, 7]
    a = model(x, generator=torch.Generator().manual_seed(2))
    b = model(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="samples the gates"):
        model(x)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        model(torch.zeros(2, 3, 28, 28), generator=torch.Generator())
    with pytest.raises(KeyError, match="noise has no entry"):
        model(x, noise={})


def test_device_given_as_torch_device():
    device = torch.device("cpu")
    model = ti.VGG7(0.125, rng=0, device=device)
    x = torch.rand(3, 3, 32, 32, device=device)
    model.initialize(x[:2], generator=torch.Generator(device=device).manual_seed(0))
    out = model(x, noise=model.sample_noise(torch.Generator(device=device).manual_seed(1)))
    assert out.device == device
    assert all(p.device == device for p in model.parameters())
    model.eval()
    assert model(x).device == device


def test_ablation_configs_run():
    """Pruning-only (fixed bits), quantization-only and Gumbel-softmax models match too."""
    for cfg in (BBConfig(learn_bits=False, weight_bits=4, act_bits=8),
                BBConfig(pruning=False),
                BBConfig(gate="gumbel_softmax", gate_options={"straight_through": True})):
        ref = ref_models.lenet5(cfg, rng=0, dtype=np.float64)
        x = np.random.default_rng(0).random((3, 1, 28, 28))
        ref.initialize(x[:2], np.random.default_rng(1))
        model = ti.from_reference(ref)
        noise = ref.sample_noise(np.random.default_rng(2))
        np.testing.assert_allclose(model(torch.tensor(x), noise=noise).detach().numpy(),
                                   ref(x, noise=noise).data, atol=1e-10)
        assert model.regularizer().item() == pytest.approx(float(ref.regularizer().data))


# --------------------------------------------------------------------------- conformance

def test_adapter_passes_the_conformance_suite(tmp_path):
    conformance = pytest.importorskip("bbits_ref.conformance")
    conformance.export(tmp_path / "suite")
    report = conformance.check(tmp_path / "suite", torch_adapter)
    assert report.ok, str(report)
    assert not report.skipped, report.skipped


def test_chain_hard_cut_matches_the_reference_for_both_gate_kinds():
    # The reference cuts Gumbel-softmax gates at the logit with the official cut's on-probability
    # (−0.4014), hard-concrete ones at −2; the fast implementation must agree in training and eval.
    from bbits_ref.method import gates as ref_gates
    from bbits_ref.torch_impl import gates as tg
    u = np.full(4, 0.5)
    for kind, phi in [("gumbel_softmax", -1.0), ("gumbel_softmax", -0.3), ("hard_concrete", -1.0),
                      ("hard_concrete", -2.0)]:
        logits = np.array([3.0, phi, 3.0, 3.0])
        ref = ref_gates.chain_gates(ref_gates.make_gate(kind), logits, u, training=True)
        fast = tg.chain_gates(torch.tensor(logits), torch.tensor(u), training=True, gate=kind)
        assert [g is None for g in ref] == [g is None for g in fast], (kind, phi)

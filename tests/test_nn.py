"""Tests for bbits_ref.autograd.nn: layers against plain NumPy, PyTorch's init and naming, batch-norm
semantics, modes, state dicts, dtype casts, and (if installed) parity with torch.nn."""
import numpy as np
import pytest

from bbits_ref.autograd.engine import Tensor
from bbits_ref.autograd.gradcheck import check_grads
from bbits_ref.autograd.nn import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Module,
                          Parameter, ReLU, Sequential)


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- NumPy references

def conv2d_reference(x, w, b, stride, padding):
    """Direct convolution: for each kernel offset (i, j), add w[:, :, i, j] · (shifted input)."""
    sh, sw = stride
    ph, pw = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    o, _, kh, kw = w.shape
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            shifted = xp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw][:, :, :ho, :wo]
            out += np.einsum("nchw,oc->nohw", shifted, w[:, :, i, j].astype(np.float64))
    return out if b is None else out + b[None, :, None, None]


def max_pool_reference(x, k, s):
    ho, wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    out = np.empty(x.shape[:2] + (ho, wo), dtype=x.dtype)
    for h in range(ho):
        for w in range(wo):
            out[:, :, h, w] = x[:, :, h * s:h * s + k, w * s:w * s + k].max(axis=(2, 3))
    return out


# --------------------------------------------------------------------------- layer outputs

def test_linear_matches_numpy():
    rng = np.random.default_rng(0)
    layer = Linear(5, 3, rng=rng)
    x = rand(rng, 4, 5)
    y = layer(Tensor(x))
    assert y.dtype == np.float32 and y.shape == (4, 3)
    np.testing.assert_allclose(y.data, x @ layer.weight.data.T + layer.bias.data, rtol=1e-6)
    no_bias = Linear(5, 3, bias=False, rng=rng)
    np.testing.assert_allclose(no_bias(Tensor(x)).data, x @ no_bias.weight.data.T, rtol=1e-6)
    assert set(no_bias.state_dict()) == {"weight"}
    with pytest.raises(ValueError, match="got input with 4 features"):
        layer(Tensor(rand(rng, 2, 4)))


@pytest.mark.parametrize("kernel, stride, padding, bias", [
    (3, 1, 0, True), (3, 1, 1, True), (3, 2, 1, False), ((3, 2), (2, 1), (0, 2), True),
    (1, 1, 0, True), (5, 3, 2, True),
])
def test_conv2d_matches_a_direct_convolution(kernel, stride, padding, bias):
    rng = np.random.default_rng(1)
    conv = Conv2d(3, 4, kernel, stride=stride, padding=padding, bias=bias, rng=rng)
    x = rand(rng, 2, 3, 9, 8)
    pair = lambda v: (v, v) if np.isscalar(v) else v
    expected = conv2d_reference(x, conv.weight.data, None if conv.bias is None else conv.bias.data,
                                pair(stride), pair(padding))
    y = conv(Tensor(x))
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, s", [(2, None), (3, 2), (2, 1), (3, 3)])
def test_max_pool_matches_numpy(k, s):
    x = rand(np.random.default_rng(2), 2, 3, 7, 8)
    y = MaxPool2d(k, s)(Tensor(x))
    np.testing.assert_array_equal(y.data, max_pool_reference(x, k, s or k))


def test_relu_and_flatten():
    x = rand(np.random.default_rng(3), 2, 3, 4, 5)
    np.testing.assert_array_equal(ReLU()(Tensor(x)).data, np.maximum(x, 0))
    np.testing.assert_array_equal(Flatten()(Tensor(x)).data, x.reshape(2, 60))
    np.testing.assert_array_equal(Flatten(2)(Tensor(x)).data, x.reshape(2, 3, 20))


def test_sequential_applies_in_order_and_names_like_torch():
    rng = np.random.default_rng(4)
    model = Sequential(Conv2d(1, 2, 3, rng=rng), BatchNorm2d(2), ReLU(), Flatten(),
                       Linear(2 * 4 * 4, 3, rng=rng))
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight",
                                       "4.bias", "1.running_mean", "1.running_var",
                                       "1.num_batches_tracked"}
    assert len(model) == 5 and isinstance(model[1], BatchNorm2d)
    x = Tensor(rand(rng, 2, 1, 6, 6))
    by_hand = x
    for layer in model:
        by_hand = layer(by_hand)
    np.testing.assert_array_equal(model(x).data, by_hand.data)
    nested = Sequential(Sequential(Linear(2, 2, rng=0)), ReLU(), Linear(2, 1, rng=0))
    assert [n for n, _ in nested.named_parameters()] == ["0.0.weight", "0.0.bias", "2.weight",
                                                         "2.bias"]
    with pytest.raises(TypeError, match="Sequential takes Modules"):
        Sequential(Linear(2, 2, rng=0), np.tanh)


# --------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("make, fan_in", [
    (lambda rng: Linear(400, 300, rng=rng), 400),
    (lambda rng: Conv2d(16, 64, (3, 5), rng=rng), 16 * 15),
])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(make, fan_in):
    layer = make(np.random.default_rng(0))
    bound = 1 / np.sqrt(fan_in)
    for p in (layer.weight, layer.bias):
        assert p.dtype == np.float32
        assert np.abs(p.data).max() <= bound
    w = layer.weight.data
    assert np.abs(w).max() > 0.99 * bound                        # the bound is reached,
    assert abs(w.mean()) < 0.02 * bound                          # centred,
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)   # and uniform


def test_init_is_reproducible_from_the_generator():
    a = Conv2d(3, 4, 3, rng=np.random.default_rng(5))
    b = Conv2d(3, 4, 3, rng=np.random.default_rng(5))
    c = Conv2d(3, 4, 3, rng=5)                                   # an int seed is the same thing
    d = Conv2d(3, 4, 3, rng=6)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[name], value)
        np.testing.assert_array_equal(c.state_dict()[name], value)
    assert not np.array_equal(d.weight.data, a.weight.data)
    rng = np.random.default_rng(0)
    first, second = Linear(3, 3, rng=rng), Linear(3, 3, rng=rng)     # a shared stream moves on
    assert not np.array_equal(first.weight.data, second.weight.data)
    assert Linear(3, 2, rng=0, dtype=np.float64).weight.dtype == np.float64


@pytest.mark.parametrize("rng", [None, 1.5, True, "0", np.random.RandomState(0)])
def test_init_needs_an_explicit_generator(rng):
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        Linear(2, 2, rng=rng)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        Conv2d(2, 2, 3, rng=rng)


def test_init_without_rng_is_a_type_error():
    with pytest.raises(TypeError):
        Linear(2, 2)
    with pytest.raises(TypeError):
        Conv2d(2, 2, 3)


# --------------------------------------------------------------------------- batch norm

def _bn_with_affine(cls, c, rng, dtype=np.float32):
    bn = cls(c, dtype=dtype)
    bn.weight.data = rng.uniform(0.5, 2.0, c).astype(dtype)
    bn.bias.data = rng.standard_normal(c).astype(dtype)
    return bn


@pytest.mark.parametrize("cls, shape, axes", [(BatchNorm2d, (4, 3, 5, 6), (0, 2, 3)),
                                              (BatchNorm1d, (8, 3), (0,))])
def test_batch_norm_train_and_eval_semantics(cls, shape, axes):
    rng = np.random.default_rng(6)
    bn = _bn_with_affine(cls, 3, rng, np.float64)
    bshape = (1, 3) + (1,) * (len(shape) - 2)
    w, b = bn.weight.data.reshape(bshape), bn.bias.data.reshape(bshape)
    x1 = rng.standard_normal(shape) * 3 + 2
    x2 = rng.standard_normal(shape) * 0.5 - 1
    n = x1.size // 3

    # training: normalise with the batch mean and the *biased* batch variance
    y1 = bn(Tensor(x1)).data
    mean1, var1 = x1.mean(axis=axes, keepdims=True), x1.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(y1, (x1 - mean1) / np.sqrt(var1 + 1e-5) * w + b, rtol=1e-12)
    # running statistics: momentum 0.1, the *unbiased* variance
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean1.ravel(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var1.ravel() * n / (n - 1), rtol=1e-12)
    bn(Tensor(x2))
    mean2, uvar2 = x2.mean(axis=axes), x2.var(axis=axes, ddof=1)
    np.testing.assert_allclose(bn.running_mean, 0.9 * 0.1 * mean1.ravel() + 0.1 * mean2,
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 * (0.9 + 0.1 * var1.ravel() * n / (n - 1))
                               + 0.1 * uvar2, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 2

    # evaluation: running statistics, which stay as they are
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    bn.eval()
    y = bn(Tensor(x1)).data
    np.testing.assert_allclose(y, (x1 - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + 1e-5)
                               * w + b, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)
    assert int(bn.num_batches_tracked) == 2
    # back in training mode the output ignores the running statistics again
    bn.train()
    np.testing.assert_allclose(bn(Tensor(x1)).data, y1, rtol=1e-12)


def test_batch_norm_keeps_float32():
    bn = BatchNorm2d(3)
    y = bn(Tensor(rand(np.random.default_rng(0), 2, 3, 4, 4)))
    assert y.dtype == bn.running_mean.dtype == bn.running_var.dtype == np.float32


@pytest.mark.parametrize("cls, shape", [(BatchNorm2d, (3, 2, 3, 3)), (BatchNorm1d, (5, 4))])
def test_batch_norm_gradient_in_training_mode(cls, shape):
    rng = np.random.default_rng(7)
    c = shape[1]
    bn = cls(c, dtype=np.float64)
    owned = bn.weight, bn.bias

    def f(x, weight, bias):
        bn.weight, bn.bias = weight, bias        # let the checker perturb weight and bias
        try:
            return bn(x)
        finally:
            bn.weight, bn.bias = owned

    x = rng.standard_normal(shape) * 2 + 1
    result = check_grads(f, x, rng.uniform(0.5, 2, c), rng.standard_normal(c))
    assert result, result


def test_batch_norm_bad_input():
    with pytest.raises(ValueError, match="4 dims and 3 channels"):
        BatchNorm2d(3)(Tensor(np.zeros((2, 4, 5, 5), np.float32)))
    with pytest.raises(ValueError, match="2 dims and 3 channels"):
        BatchNorm1d(3)(Tensor(np.zeros((2, 3, 5), np.float32)))


# --------------------------------------------------------------------------- modes, state, dtype

class Net(Module):
    """A module with a list of layers and a nested Sequential, like the models will be."""

    def __init__(self, rng):
        super().__init__()
        self.features = [Conv2d(1, 2, 3, padding=1, rng=rng), BatchNorm2d(2), ReLU()]
        self.head = Sequential(Flatten(), Sequential(Linear(2 * 4 * 4, 3, rng=rng),
                                                     BatchNorm1d(3)))

    def forward(self, x):
        for layer in self.features:
            x = layer(x)
        return self.head(x)


def test_train_and_eval_reach_every_submodule():
    net = Net(np.random.default_rng(0))
    modules = list(net.modules())
    assert len(modules) == 9
    assert net.eval() is net and not any(m.training for m in modules)
    assert net.train() is net and all(m.training for m in modules)
    net.head.eval()
    assert net.training and net.features[1].training and not net.head[1][1].training


def test_state_dict_round_trip_with_buffers():
    rng = np.random.default_rng(8)
    a, b = Net(np.random.default_rng(0)), Net(np.random.default_rng(1))
    x = Tensor(rand(rng, 4, 1, 4, 4))
    a(x)                                                          # moves the running statistics
    sd = a.state_dict()
    assert set(sd) == {
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
        "head.1.0.weight", "head.1.0.bias", "head.1.1.weight", "head.1.1.bias",
        "head.1.1.running_mean", "head.1.1.running_var", "head.1.1.num_batches_tracked"}
    assert all(type(v) is np.ndarray for v in sd.values())
    b.load_state_dict(sd)
    for name, value in b.state_dict().items():
        np.testing.assert_array_equal(value, sd[name])
        assert value.dtype == sd[name].dtype
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)
    # both directions hold copies
    sd["features.0.weight"][:] = 0.0
    sd["features.1.running_mean"][:] = 7.0
    assert np.any(a.features[0].weight.data != 0) and np.any(b.features[0].weight.data != 0)
    assert not np.any(a.features[1].running_mean == 7.0)
    assert not np.any(b.features[1].running_mean == 7.0)


def test_load_state_dict_strict_and_shape_errors():
    net = Net(np.random.default_rng(0))
    sd = net.state_dict()
    missing = dict(sd)
    del missing["features.1.running_var"]
    with pytest.raises(KeyError, match=r"missing keys \['features.1.running_var'\]"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected keys \['extra.weight'\]"):
        net.load_state_dict({**sd, "extra.weight": np.zeros(2)})
    subset = {"head.1.0.bias": np.full(3, 0.5)}
    net.load_state_dict(subset, strict=False)
    np.testing.assert_array_equal(net.head[1][0].bias.data, [0.5, 0.5, 0.5])
    assert net.head[1][0].bias.dtype == np.float32
    with pytest.raises(ValueError, match="'features.0.weight' has shape"):
        net.load_state_dict({**sd, "features.0.weight": np.zeros((2, 1, 3, 2))})
    with pytest.raises(ValueError, match="buffer 'features.1.running_mean' has shape"):
        net.load_state_dict({**sd, "features.1.running_mean": np.zeros(3)})


def test_to_dtype_float64():
    net = Net(np.random.default_rng(0))
    x = rand(np.random.default_rng(1), 2, 1, 4, 4)
    y32 = net(Tensor(x)).data
    net.features[0].weight.grad = np.ones((2, 1, 3, 3), np.float32)
    assert net.to_dtype(np.float64) is net
    assert all(p.dtype == np.float64 and p.grad is None for p in net.parameters())
    buffers = dict(net.named_buffers())
    assert buffers["features.1.running_var"].dtype == np.float64
    assert buffers["features.1.num_batches_tracked"].dtype == np.int64
    y64 = net(Tensor(x.astype(np.float64)))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64.data, y32, rtol=1e-4, atol=1e-5)
    for bad in (np.float16, np.int32, "complex128"):
        with pytest.raises(TypeError, match="float32"):
            net.to_dtype(bad)


def test_register_buffer_needs_super_init():
    class Broken(Module):
        def __init__(self):
            self.register_buffer("stat", np.zeros(2))

    with pytest.raises(RuntimeError, match="super\\(\\).__init__"):
        Broken()


def test_parameters_are_parameters():
    layer = Linear(2, 2, rng=0)
    assert all(isinstance(p, Parameter) and p.requires_grad for p in layer.parameters())


# --------------------------------------------------------------------------- torch parity

def test_torch_parity_forward_backward_and_running_stats():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    ours = Sequential(Conv2d(3, 4, 3, stride=2, padding=1, rng=rng), BatchNorm2d(4), ReLU(),
                      MaxPool2d(2), Flatten(), Linear(4 * 2 * 2, 5, rng=rng)).to_dtype(np.float64)
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                 torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Flatten(), torch.nn.Linear(16, 5)).double()
    ours[1].weight.data = rng.uniform(0.5, 2, 4)
    ours[1].bias.data = rng.standard_normal(4)
    # the same names and shapes: torch loads our state dict strictly
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})

    x = rng.standard_normal((6, 3, 9, 9)) * 2 + 0.5
    v = rng.standard_normal((6, 5))
    for step in range(2):                        # two training steps move the running stats
        xt = Tensor(x + step)
        xt.requires_grad = True
        ours.zero_grad()
        out = ours(xt)
        (out * Tensor(v)).sum().backward()
        xq = torch.tensor(x + step, requires_grad=True)
        theirs.zero_grad()
        out_t = theirs(xq)
        (out_t * torch.tensor(v)).sum().backward()
        np.testing.assert_allclose(out.data, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xt.grad, xq.grad.numpy(), rtol=1e-9, atol=1e-12)
        for (name, p), (tname, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert name == tname
            np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=name)
    torch_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value, torch_state[name].numpy(), rtol=1e-12, err_msg=name)
    ours.eval(), theirs.eval()
    np.testing.assert_allclose(ours(Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_torch_parity_float32_linear_and_conv():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    conv, lin = Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0), rng=rng), Linear(6, 4, rng=rng)
    tconv = torch.nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0))
    tlin = torch.nn.Linear(6, 4)
    tconv.load_state_dict({k: torch.tensor(v) for k, v in conv.state_dict().items()})
    tlin.load_state_dict({k: torch.tensor(v) for k, v in lin.state_dict().items()})
    x, z = rand(rng, 2, 2, 5, 6), rand(rng, 7, 6)
    np.testing.assert_allclose(conv(Tensor(x)).data, tconv(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin(Tensor(z)).data, tlin(torch.tensor(z)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)

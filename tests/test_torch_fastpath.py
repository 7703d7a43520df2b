"""The speed-ups of bbits_ref.torch_impl change no value: the activation quantizer fused with the
max-pooling after it, the channels-last first layer on the CPU, and the hard-concrete sample as
one autograd node.

float64 throughout, except where a test says otherwise: the fused quantizer gives the same
values and the same x gradient bit for bit; its β and gate gradients are the same sums over
fewer (the non-zero) terms, so they agree to rounding."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bbits_ref.method.constants import HC_GAMMA, HC_ZETA  # noqa: E402
from bbits_ref.torch_impl import gates as tg  # noqa: E402
from bbits_ref.torch_impl.layers import MaxPool2d  # noqa: E402
from bbits_ref.torch_impl.models import LeNet5  # noqa: E402
from bbits_ref.torch_impl.quantizer import (bb_quantize, bb_quantize_maxpool,  # noqa: E402
                                            max_pool_first)

GATES = [(0.3, 0.7, 0.9, 0.5), (1.0, 0.4, None, None), (1.0, 1.0, 1.0, 1.0),
         (0.0, None, None, None)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=dtype, generator=g) * 2
    x[0, 0, 0, :3] = 0.5                        # ties inside a window
    x[:, :, 1, :] = -1.0                        # whole rows clipped to 0 (unsigned): more ties
    return x


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,k", [((3, 4, 8, 8), 2), ((2, 3, 9, 6), 3), ((2, 5, 4, 6), 2)])
@pytest.mark.parametrize("gates", GATES)
@pytest.mark.parametrize("signed", [False, True])
def test_fused_quantize_maxpool_equals_quantize_then_pool(layout, shape, k, gates, signed):
    x = _inputs(shape, torch.float64).contiguous(memory_format=layout)
    beta = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    zs = [None if z is None else torch.tensor(z, dtype=torch.float64, requires_grad=True)
          for z in gates]
    leaves = [beta] + [z for z in zs if z is not None]
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = MaxPool2d(k)(bb_quantize(xa, beta, None, *zs, signed=signed))
    got = bb_quantize_maxpool(xb, beta, *zs, signed=signed, kernel_size=k)
    g = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads_want = torch.autograd.grad(want, [xa] + leaves, g)
    grads_got = torch.autograd.grad(got, [xb] + leaves, g)
    assert torch.equal(got, want)
    assert torch.equal(grads_got[0], grads_want[0])         # same winners, same mask
    for a, b in zip(grads_got[1:], grads_want[1:]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert grads_got[0].is_contiguous(memory_format=layout)


def test_fused_quantize_maxpool_float32_sums_agree_to_rounding():
    x = _inputs((16, 8, 12, 12), torch.float32)
    beta = torch.tensor(1.7, requires_grad=True)
    z4 = torch.tensor(0.6, requires_grad=True)
    want = MaxPool2d(2)(bb_quantize(x, beta, None, z4, 1.0, signed=False))
    got = bb_quantize_maxpool(x, beta, z4, 1.0, signed=False, kernel_size=2)
    assert torch.equal(got, want)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    grads_got = torch.autograd.grad(got, [beta, z4], g)
    for a, b in zip(grads_got, torch.autograd.grad(want, [beta, z4], g)):
        assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_fused_quantize_maxpool_refuses_a_shape_it_cannot_pool():
    x = torch.rand(2, 3, 5, 4)
    with pytest.raises(ValueError, match="multiples of kernel_size=2"):
        bb_quantize_maxpool(x, 1.0, 1.0, signed=False, kernel_size=2)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        bb_quantize_maxpool(torch.rand(4, 4), 1.0, signed=False, kernel_size=2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_first_returns_max_pool2d_indices(layout):
    x = _inputs((3, 4, 6, 6), torch.float64).round().contiguous(memory_format=layout)   # ties
    out, index = max_pool_first(x, 2)
    ref_out, ref_index = torch.nn.functional.max_pool2d(x.contiguous(), 2, return_indices=True)
    assert torch.equal(out, ref_out) and torch.equal(index, ref_index)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantizer_keeps_the_memory_layout_and_values(layout):
    x = _inputs((2, 6, 5, 5), torch.float64)
    z2 = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z2.requires_grad_()
    beta = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    xa = x.clone().requires_grad_()
    xb = x.contiguous(memory_format=layout).requires_grad_()
    want = bb_quantize(xa, beta, z2, 0.5, 1.0, signed=True, channel_axis=1)
    got = bb_quantize(xb, beta, z2, 0.5, 1.0, signed=True, channel_axis=1)
    assert got.is_contiguous(memory_format=layout) and torch.equal(got, want)
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ga = torch.autograd.grad(want, [xa, beta, z2], g)
    gb = torch.autograd.grad(got, [xb, beta, z2], g)
    assert torch.equal(ga[0], gb[0]) and gb[0].is_contiguous(memory_format=layout)
    for a, b in zip(ga[1:], gb[1:]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_concrete_node_equals_autograd_of_its_formula(dtype):
    rng = np.random.default_rng(5)
    logits = torch.tensor(rng.normal(0, 4, 200), dtype=dtype)   # many clamped to 0 or 1
    u = rng.uniform(size=200)
    g = torch.tensor(rng.normal(size=200), dtype=dtype)
    a = logits.clone().requires_grad_()
    z = tg.hard_concrete_sample(a, u)
    z.backward(g)
    b = logits.clone().requires_grad_()         # the formula, differentiated by autograd
    noise = tg._logistic_noise(u, b, None)
    s = torch.sigmoid((noise + b) / tg._const(tg.HC_TEMPERATURE, dtype))
    stretched = s * tg._const(HC_ZETA - HC_GAMMA, dtype) + tg._const(HC_GAMMA, dtype)
    inside = (stretched > 0) & (stretched < 1)
    want = torch.where(inside, stretched, stretched.detach().clamp(0, 1))
    want.backward(g)
    assert torch.equal(z.detach(), want.detach()) and torch.equal(a.grad, b.grad)
    assert 0 < int(inside.sum()) < 200


def test_network_forward_is_the_same_with_and_without_the_fast_paths():
    """LeNet-5 in float64: the network's forward (channels-last first layer, quantizers fused
    with the pooling) against the layers called one by one (default layout, no fusion)."""
    net = LeNet5(rng=0, dtype=torch.float64)
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    net.initialize(x[:2], generator=torch.Generator().manual_seed(7))
    noise = net.sample_noise(torch.Generator().manual_seed(8))
    fast = net(x, noise=noise)
    fast_grads = torch.autograd.grad(fast.square().sum(), list(net.parameters()))
    for name, q in net.quantizers():
        q.noise = noise[name]
    slow = x
    for _, layer in net.layers():
        assert getattr(layer, "fused_pool", 0) == 0 and not getattr(layer, "fused", False)
        slow = layer(slow)
    slow_grads = torch.autograd.grad(slow.square().sum(), list(net.parameters()))
    assert torch.allclose(fast, slow, rtol=1e-9, atol=1e-9)
    for (name, _), a, b in zip(net.named_parameters(), fast_grads, slow_grads):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9 * max(1.0, float(b.abs().max()))), name

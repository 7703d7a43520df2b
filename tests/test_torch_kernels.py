"""The compiled CPU kernels of bbits_ref.torch_impl.kernels change no value: with them and with
the torch operations they replace, the quantizer (fused with the pooling or not) gives the same
outputs and the same gradients for x, β, z2 and every gate bit for bit, in float32 and float64,
for both clip modes, every depth of the chain, both memory layouts, tensors of many blocks, and
NaN inputs; a training step of the torch engine is the same bit for bit.  A kernel with one
operation changed (multiplying by 1/s instead of dividing by s) is caught."""
import functools
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from bbits_ref.torch_impl import kernels  # noqa: E402
from bbits_ref.torch_impl.quantizer import (_CPU_BLOCK, bb_quantize,  # noqa: E402
                                            bb_quantize_maxpool)

DTYPES = [torch.float32, torch.float64]
LAYOUTS = [torch.contiguous_format, torch.channels_last]
# (z4, z8, z16, z32): every depth of the chain (how many gates are on), gates of 1 and in (0, 1)
GATES = [(None, None, None, None), (0.0, None, None, None), (0.6, None, None, None),
         (1.0, 0.0, 0.5, None), (0.3, 0.7, None, None), (1.0, 1.0, 0.4, None),
         (0.3, 0.7, 0.9, 0.5), (1.0, 1.0, 1.0, 1.0)]


@pytest.fixture(autouse=True)
def _restore_setting():
    previous = kernels.set_enabled(True)
    yield
    kernels.set_enabled(previous)


def _inputs(shape, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5).to(dtype)
    flat = x.view(-1)
    flat[::97] = 1.3                            # exactly β: the clip's edge
    flat[5::101] = -1.3
    flat[7::89] = 0.0
    return x.contiguous(memory_format=layout)


def _quantize(x, gates, dtype, signed, clip, pool, z2=None):
    """Output and gradients of x, β, z2 and the gates (None where there is none)."""
    x = x.clone().requires_grad_()
    beta = torch.tensor(1.3, dtype=dtype, requires_grad=True)
    zs = [None if z is None else torch.tensor(z, dtype=dtype, requires_grad=True)
          for z in gates]
    if pool:
        y = bb_quantize_maxpool(x, beta, *zs, signed=signed, kernel_size=pool, clip=clip)
    else:
        z2 = None if z2 is None else z2.clone().requires_grad_()
        y = bb_quantize(x, beta, z2, *zs, signed=signed, clip=clip, channel_axis=1)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64).to(dtype)
    leaves = [x, beta] + [z for z in zs if z is not None] + ([z2] if z2 is not None and
                                                             not pool else [])
    grads = torch.autograd.grad(y, leaves, g, allow_unused=True)
    return [y.detach()] + list(grads)


def _both(*args, **kwargs):
    kernels.set_enabled(True)
    fast = _quantize(*args, **kwargs)
    kernels.set_enabled(False)
    slow = _quantize(*args, **kwargs)
    return fast, slow


def _assert_identical(fast, slow):
    assert len(fast) == len(slow)
    for i, (a, b) in enumerate(zip(fast, slow)):
        if a is None or b is None:
            assert a is None and b is None, i
            continue
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), i
        # bit for bit, NaN where NaN (equal_nan), and the same sign of every zero
        assert torch.equal(torch.isnan(a), torch.isnan(b)), i
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), i
        assert torch.equal(torch.signbit(a), torch.signbit(b)), i


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("clip", ["official", "numpy"])
@pytest.mark.parametrize("gates", GATES)
def test_quantizer_is_bit_for_bit_the_same_with_the_kernels(dtype, signed, clip, gates):
    for layout in LAYOUTS:
        x = _inputs((6, 5, 10, 8), dtype, layout)
        z2 = torch.rand(5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        _assert_identical(*_both(x, gates, dtype, signed, clip, 0, z2=z2.to(dtype)))
        _assert_identical(*_both(x, gates, dtype, signed, clip, 0))       # no pruning gate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("clip", ["official", "numpy"])
@pytest.mark.parametrize("gates", GATES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_pooling_is_bit_for_bit_the_same_with_the_kernels(dtype, signed, clip, gates,
                                                                 layout):
    for shape, k in (((4, 6, 8, 8), 2), ((3, 5, 9, 6), 3)):
        x = _inputs(shape, dtype, layout)
        x[0, 0, :2, :2] = 0.25                  # a tie in a window: the first one wins
        _assert_identical(*_both(x, gates, dtype, signed, clip, k))


@pytest.mark.parametrize("pool", [0, 2])
def test_tensors_of_many_blocks_are_the_same_with_the_kernels(pool):
    """Over 2.5 blocks of the backward's scratch: the block sums are the same sums."""
    x = _inputs((5, 4, 2 * _CPU_BLOCK // 80 + 8, 40), torch.float32, torch.channels_last)
    assert x.numel() > 2.5 * _CPU_BLOCK
    _assert_identical(*_both(x, (0.3, 0.7, 0.9, 0.5), torch.float32, False, "official", pool))


@pytest.mark.parametrize("pool", [0, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_inputs_give_the_same_outputs_with_the_kernels(pool, layout):
    x = _inputs((2, 3, 4, 4), torch.float32, layout)
    x[0, 1, 2, 3] = float("nan")                # a NaN wins its window, as in torch.max_pool2d
    x[1, 2, 0, 0] = float("nan")
    fast, slow = _both(x, (1.0, 0.5, None, None), torch.float32, False, "official", pool)
    assert torch.isnan(fast[0]).sum() == 2
    _assert_identical(fast, slow)


def test_a_training_step_of_the_torch_engine_is_the_same_with_the_kernels():
    """Three steps of LeNet-5 (float32, the official recipe): losses and every parameter equal."""
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer

    def run(enabled):
        kernels.set_enabled(enabled)
        config = TrainConfig().replace(train_limit=64, test_limit=16, batch_size=32, seed=4)
        t = Trainer(config, progress=False, verbose=False, engine="torch", device="cpu")
        t.optimizer.schedule(0)
        t._set_phase()
        t.engine.begin_epoch()
        t.model.train()
        losses = [t.engine.train_step(xb, yb, 0.1)[2]
                  for xb, yb in itertools.islice(t.engine.epoch_batches(32), 2)]
        losses += [t.engine.train_step(xb, yb, 0.1)[2]
                   for xb, yb in itertools.islice(t.engine.epoch_batches(32), 1)]
        t.engine.sync_state()
        return [float(v) for v in losses], t.model.state_dict()

    (loss_a, state_a), (loss_b, state_b) = run(True), run(False)
    assert loss_a == loss_b
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert np.array_equal(state_a[k], state_b[k]), k


def test_the_comparison_catches_a_kernel_with_one_operation_changed(monkeypatch):
    """Negative test: the gated sum reassociated, (A2 + z4·e4) + z4·z8·e8 instead of
    A2 + z4·(e4 + z8·e8), differs from the torch operations in the last bit at some values, and
    the comparison above says so."""
    import numba

    @functools.cache
    def reassociated_forward_kernel(depth, official):
        @numba.njit
        def kernel(x, out, lo, hl, hi, zero, s, g):
            for i in range(x.size):
                xc = hi - (hl - min(max(x[i] - lo, zero), hl))
                a2 = np.rint(xc / s[0]) * s[0]
                e4 = np.rint((xc - a2) / s[1]) * s[1]
                e8 = np.rint((xc - a2 - e4) / s[2]) * s[2]
                out[i] = (a2 + g[0] * e4) + g[0] * g[1] * e8
        return kernel

    x = torch.rand(100_000, dtype=torch.float32) * 1.3
    args = (x, torch.tensor(1.3), None, 0.7, 0.6)
    kernels.set_enabled(True)
    exact = bb_quantize(*args, signed=False)
    monkeypatch.setattr(kernels, "forward_kernel", reassociated_forward_kernel)
    fast = bb_quantize(*args, signed=False)
    kernels.set_enabled(False)
    slow = bb_quantize(*args, signed=False)
    _assert_identical([exact], [slow])
    assert not torch.equal(fast, slow)
    with pytest.raises(AssertionError):
        _assert_identical([fast], [slow])


def test_the_switches():
    assert kernels.available()
    assert kernels.set_enabled(False) is True and not kernels.enabled()
    assert kernels.set_enabled(True) is False and kernels.enabled()
    env = {**os.environ, "BBITS_REF_KERNELS": "0"}
    code = "from bbits_ref.torch_impl import kernels; print(kernels.enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_without_numba_the_torch_operations_are_used(monkeypatch):
    monkeypatch.setattr(kernels, "numba", None)
    assert not kernels.available() and not kernels.enabled()
    x = _inputs((2, 3, 4, 4), torch.float32, torch.channels_last)
    from bbits_ref.torch_impl import quantizer
    plan = quantizer._Plan(x, torch.tensor(1.0), (1.0, None, None, None), False, "official")
    assert not plan.kernel
    monkeypatch.undo()
    plan = quantizer._Plan(x, torch.tensor(1.0), (1.0, None, None, None), False, "official")
    assert plan.kernel

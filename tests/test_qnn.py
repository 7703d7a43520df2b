"""Tests for bbits_ref.method.layers: BBConfig, BBQuantizer, quantized and BN-folded layers (docs/method.md §2–§6)."""
import numpy as np
import pytest

from bbits_ref.method import bops
from bbits_ref.autograd import ops
from bbits_ref.method import prior
from bbits_ref.autograd.engine import Tensor, no_grad
from bbits_ref.method.gates import HardConcrete
from bbits_ref.autograd.nn import BatchNorm1d, BatchNorm2d
from bbits_ref.method.layers import (GATE_PRESETS, BBConfig, BBQuantizer, QConv2d, QConv2dBN, QLinear,
                           QLinearBN)
from bbits_ref.method.quantizer import bb_quantize, quantize_direct

HC = HardConcrete()
U_ONE = 1 - 1e-6          # uniform noise that makes a hard-concrete gate with φ ≥ −6 exactly 1


def hard_concrete_by_hand(phi, u):
    """z = clip(sigmoid((log u − log(1 − u) + φ)/(2/3))·1.2 − 0.1, 0, 1)   (§3.2)."""
    phi, u = np.asarray(phi, np.float64), np.asarray(u, np.float64)
    s = 1 / (1 + np.exp(-(np.log(u) - np.log1p(-u) + phi) * 1.5))
    return np.clip(s * 1.2 - 0.1, 0, 1)


# --------------------------------------------------------------------------- BBConfig

def test_config_presets_and_logits():
    assert GATE_PRESETS["mnist"] == (6.0, 6.0, -6.0, -6.0)
    assert GATE_PRESETS["cifar10"] == (6.0, 6.0, 6.0, 6.0)
    assert GATE_PRESETS["imagenet"] == (6.0, 6.0, 6.0, -6.0)
    np.testing.assert_array_equal(BBConfig().chain_logits, [6, 6, -6, -6])
    np.testing.assert_array_equal(BBConfig(chain_init=(1, 2, 3, 4)).chain_logits, [1, 2, 3, 4])
    assert BBConfig().prune_logit == 6.0
    gs = BBConfig(gate="gumbel_softmax", chain_init="cifar10", prune_init=2.0)
    np.testing.assert_allclose(gs.chain_logits, 6 + 1.598597, atol=1e-6)
    assert gs.prune_logit == pytest.approx(2 + 1.598597, abs=1e-6)
    cfg = BBConfig().with_(pruning=False)
    assert cfg.pruning is False and BBConfig().pruning is True


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(chain_init="svhn"), ValueError, "unknown gate preset"),
    (dict(chain_init=(6.0,) * 5), ValueError, "four finite logits"),
    (dict(chain_init=(6.0, 6.0, float("nan"), 6.0)), ValueError, "four finite logits"),
    (dict(prune_init=float("inf")), ValueError, "prune_init must be a finite number"),
    (dict(hard_cut="no"), ValueError, "hard_cut must be true or false"),
    (dict(gate_options=dict(straight_through=True)), ValueError,
     "hard_concrete gates take the options .*straight-through applies to Gumbel-softmax"),
    (dict(prior="flat"), ValueError, "prior must be one of"),
    (dict(reg_type="l2"), ValueError, "reg_type must be one of bop, const; got 'l2'"),
    (dict(clip="torch"), ValueError, "clip must be one of official, numpy; got 'torch'"),
    (dict(learn_bits=False, act_bits=8), ValueError, "set weight_bits"),
    (dict(learn_bits=False, weight_bits=4, act_bits=3), ValueError, "bits must be one of"),
    (dict(gate="relaxed"), ValueError, "gate must be one of hard_concrete, gumbel_softmax"),
    (dict(gate="hard_concrete", gate_options=dict(temperature=-1.0)), ValueError, "temperature"),
])
def test_config_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        BBConfig(**kwargs)


def test_full_precision_config_needs_no_bits():
    BBConfig(quantize=False, learn_bits=False)               # nothing to quantize: no error


# --------------------------------------------------------------------------- BBQuantizer

def test_quantizer_parameters_and_lazy_range():
    q = BBQuantizer("weight", 5, BBConfig())
    assert q.beta is None and q.signed is None
    assert q.gate_logits.shape == (4,) and q.prune_logits.shape == (5,)
    assert "lazy" in repr(q)
    w = np.array([[-0.9, 0.2], [0.5, -0.1], [0.3, 0.3], [0.1, 0.4], [-0.2, 0.0]], np.float32)
    q.eval()
    q(Tensor(w))
    assert float(q.beta.data) == pytest.approx(0.5) and q.signed is True   # max(w), not 0.9
    a = BBQuantizer("activation", None, BBConfig(pruning=True))
    assert a.prune_logits is None                            # activations: z2 ≡ 1
    a.eval()
    a(Tensor(np.array([0.0, 0.25, 2.0], np.float32)))
    assert float(a.beta.data) == 2.0 and a.signed is False
    with pytest.raises(ValueError, match="kind must be 'weight' or 'activation'"):
        BBQuantizer("bias", None, BBConfig())
    with pytest.raises(ValueError, match="range β would be 0"):
        BBQuantizer("activation", None, BBConfig()).initialize_range(np.zeros(3))
    # β takes the dtype of the tensor it quantizes (a model cast by to_dtype() after building)
    q64 = BBQuantizer("weight", 2, BBConfig())
    q64.initialize_range(np.array([0.1, 1 / 3]))
    assert q64.beta.dtype == np.float64 and float(q64.beta.data) == 1 / 3


def test_training_forward_wires_the_noise_to_the_right_gates():
    rng = np.random.default_rng(0)
    q = BBQuantizer("weight", 3, BBConfig(chain_init=(0.5, -1.0, 1.0, 3.0), hard_cut=False),
                    dtype=np.float64)
    q.prune_logits.data[:] = [0.0, 1.0, -0.5]
    w = Tensor(rng.normal(size=(3, 2, 2)))
    q.initialize_range(w.data)
    noise = q.sample_noise(np.random.default_rng(1))
    assert set(noise) == {"prune", "chain"}
    again = np.random.default_rng(1)                         # prune first, then the chain
    np.testing.assert_array_equal(noise["prune"], again.random(3))
    np.testing.assert_array_equal(noise["chain"], again.random(4))
    q.noise = noise
    got = q(w).data
    z2 = hard_concrete_by_hand(q.prune_logits.data, noise["prune"])
    chain = hard_concrete_by_hand(q.gate_logits.data, noise["chain"])
    want = bb_quantize(w, q.beta, z2, *chain, signed=True).data
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    zs = q.gate_values()
    np.testing.assert_allclose(zs[0].data, z2, rtol=1e-12)
    np.testing.assert_allclose([float(z.data) for z in zs[1:]], chain, rtol=1e-12)


def test_training_forward_without_noise_is_a_clear_error():
    q = BBQuantizer("activation", None, BBConfig())
    with pytest.raises(RuntimeError, match="rng=.*noise="):
        q(Tensor(np.ones(3, np.float32)))
    q.noise = {"prune": np.ones(1)}                          # no chain noise
    with pytest.raises(RuntimeError, match="uniform noise"):
        q(Tensor(np.ones(3, np.float32)))


def test_eval_gates_are_deterministic_and_need_no_noise():
    q = BBQuantizer("weight", 4, BBConfig(chain_init=(2.0, -0.9, -1.0, 5.0), hard_cut=False))
    q.prune_logits.data[:] = [6.0, -0.93, -0.94, -6.0]       # threshold φ = −0.935303 (§3.4)
    q.eval()
    z = q.gate_values()
    np.testing.assert_array_equal(z[0], [1, 1, 0, 0])
    assert z[1:] == (1.0, 1.0, 0.0, None)                    # stops after the first 0
    np.testing.assert_array_equal(q.kept_channels(), [True, True, False, False])
    np.testing.assert_array_equal(q.deterministic_chain(), [1, 1, 0, 0])


def test_fixed_gates_use_test_time_gates_in_training():
    q = BBQuantizer("weight", 2, BBConfig())
    q.fixed_gates = True
    z = q.gate_values()                                      # training, but no noise needed
    np.testing.assert_array_equal(z[0], [1, 1])
    assert z[1:] == (1.0, 1.0, None, None)


def test_hard_cut_and_deterministic_chain():
    q = BBQuantizer("activation", None, BBConfig(chain_init=(6.0, -2.0, 6.0, 6.0)))
    q.noise = {"chain": np.full(4, 0.5)}
    z = q.gate_values()
    assert float(z[1].data) == 1.0 and z[2] is None and z[3] is None and z[4] is None
    np.testing.assert_array_equal(q.deterministic_chain(), [1, 0, 0, 0])
    assert bops.deterministic_bits(q.deterministic_chain()) == 4
    # without the hard cut the same logits sample z8 and the later gates
    free = BBQuantizer("activation", None, BBConfig(chain_init=(6.0, -2.0, 6.0, 6.0),
                                                    hard_cut=False))
    free.noise = {"chain": np.full(4, 0.5)}
    assert all(v is not None for v in free.gate_values()[1:])


def test_fixed_bits_quantizer_has_no_chain_logits_and_quantizes_on_the_grid():
    cfg = BBConfig(learn_bits=False, weight_bits=4, act_bits=2)
    q = BBQuantizer("weight", 3, cfg, fixed_bits=cfg.weight_bits, dtype=np.float64)
    assert q.gate_logits is None
    np.testing.assert_array_equal(q.chain_probs().data, [1, 0, 0, 0])
    np.testing.assert_array_equal(q.deterministic_chain(), [1, 0, 0, 0])
    w = np.random.default_rng(0).normal(size=(3, 7))
    q.eval()
    out = q(Tensor(w)).data
    np.testing.assert_allclose(out, quantize_direct(w, w.max(), 4, signed=True), atol=1e-12)
    a = BBQuantizer("activation", None, cfg, fixed_bits=cfg.act_bits, dtype=np.float64)
    a.eval()
    x = np.abs(w)
    np.testing.assert_allclose(a(Tensor(x)).data, quantize_direct(x, x.max(), 2, signed=False),
                               atol=1e-12)
    # the regularizer has no chain gradient; with pruning its φ2 gradient remains
    q.train()
    reg = q.regularizer()
    reg.backward()
    assert np.all(q.prune_logits.grad > 0)


@pytest.mark.parametrize("kind, channels", [("weight", 6), ("weight", None), ("activation", None)])
@pytest.mark.parametrize("prior_kind, fn", [("autoregressive", prior.bop_regularizer),
                                            ("independent", prior.independent_regularizer)])
@pytest.mark.parametrize("reg_type", ["bop", "const"])
def test_regularizer_dispatch(kind, channels, prior_kind, fn, reg_type):
    cfg = BBConfig(chain_init=(1.0, -0.5, 0.3, -1.2), prior=prior_kind, reg_type=reg_type)
    q = BBQuantizer(kind, channels, cfg, dtype=np.float64)
    q.mac_weight = 0.37
    if channels:
        q.prune_logits.data[:] = np.linspace(-2, 3, channels)
    pi = 1 / (1 + np.exp(-(q.gate_logits.data + 1.598597)))
    want = fn(None if channels is None else q.prune_probs(), Tensor(pi), 0.37, reg_type=reg_type)
    assert float(q.regularizer().data) == pytest.approx(float(want.data), rel=1e-6)
    if prior_kind == "autoregressive" and reg_type == "bop" and channels is None:
        p4, p8, p16, p32 = pi                                 # §4.3, without pruning
        hand = 1 + 0.37 * (4 * p4 + 8 * p4 * p8 + 16 * p4 * p8 * p16 + 32 * p4 * p8 * p16 * p32)
        assert float(q.regularizer().data) == pytest.approx(hand, rel=1e-6)


# --------------------------------------------------------------------------- plain quantized layers

def test_qconv_and_qlinear_macs_and_full_precision_forward():
    rng = np.random.default_rng(0)
    conv = QConv2d(3, 4, 3, stride=2, padding=1, rng=rng, config=BBConfig(quantize=False),
                   dtype=np.float64)
    assert conv.out_shape((3, 9, 9)) == (4, 5, 5)
    assert conv.macs == bops.conv_macs(3, 4, 3, (5, 5))
    assert conv.weight_quantizer is None and conv.act_quantizer is None
    x = rng.normal(size=(2, 3, 9, 9))
    want = np.maximum(ops.conv2d(Tensor(x), conv.weight, stride=2, padding=1).data
                      + conv.bias.data[:, None, None], 0)
    np.testing.assert_allclose(conv(Tensor(x)).data, want, rtol=1e-12)
    lin = QLinear(6, 3, rng=rng, config=BBConfig(), relu=False, act_quant=False, prune=False)
    assert lin.out_shape((6,)) == (3,) and lin.macs == 18
    assert lin.act_quantizer is None and lin.weight_quantizer.prune_logits is None


# --------------------------------------------------------------------------- BatchNorm folding (§6)

def _bn_layer(kind, dtype, config, rng):
    if kind == "conv":
        layer = QConv2dBN(3, 5, rng=rng, config=config, relu=False, act_quant=False, dtype=dtype)
        x = rng.normal(size=(4, 3, 6, 6)).astype(dtype)
    else:
        layer = QLinearBN(7, 5, rng=rng, config=config, relu=False, act_quant=False, dtype=dtype)
        x = rng.normal(size=(16, 7)).astype(dtype)
    bn = layer.bn
    bn.weight.data = rng.uniform(0.5, 2.0, 5).astype(dtype)
    bn.bias.data = rng.normal(size=5).astype(dtype)
    bn.running_mean = rng.normal(size=5).astype(dtype)
    bn.running_var = rng.uniform(0.5, 2.0, 5).astype(dtype)
    return layer, x


def _op(layer, x, w):
    if isinstance(layer, QConv2dBN):
        return ops.conv2d(Tensor(x), Tensor(w), stride=1, padding=1).data
    return x @ w.T


def _per_channel(layer, v):
    return v.reshape((1, -1, 1, 1) if isinstance(layer, QConv2dBN) else (1, -1))


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_folded_bn_eval_uses_running_statistics(kind):
    layer, x = _bn_layer(kind, np.float64, BBConfig(), np.random.default_rng(0))
    bn = layer.bn
    layer.eval()
    out = layer(Tensor(x)).data
    sigma_run = np.sqrt(bn.running_var + bn.eps)
    w_fold = layer.weight.data * _per_channel(layer, bn.weight.data / sigma_run).reshape(
        (-1,) + (1,) * (layer.weight.ndim - 1))
    q = layer.weight_quantizer
    assert float(q.beta.data) == w_fold.max() and q.signed      # init from the folded weight
    w_q = quantize_direct(w_fold, w_fold.max(), 8, signed=True)  # MNIST preset: 8 bits
    shift = bn.bias.data - bn.weight.data * bn.running_mean / sigma_run
    np.testing.assert_allclose(out, _op(layer, x, w_q) + _per_channel(layer, shift),
                               rtol=1e-10, atol=1e-12)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    layer(Tensor(x))
    np.testing.assert_array_equal(bn.running_mean, rm)           # eval leaves the stats alone
    np.testing.assert_array_equal(bn.running_var, rv)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_folded_bn_training_corrects_with_batch_statistics(kind):
    """y = op(x, Q(W·scale/σ_run))·σ_run/σ_B + shift − scale·m_B/σ_B; m_B, σ_B from op(x, W) (§6)."""
    layer, x = _bn_layer(kind, np.float64, BBConfig(), np.random.default_rng(1))
    bn = layer.bn
    q = layer.weight_quantizer
    q.noise = {"prune": np.full(5, U_ONE), "chain": np.full(4, U_ONE)}   # z = 1: 8 bits
    rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
    sigma_run = np.sqrt(rv0 + bn.eps)
    out = layer(Tensor(x)).data
    w_fold = layer.weight.data * (bn.weight.data / sigma_run).reshape(
        (-1,) + (1,) * (layer.weight.ndim - 1))
    w_q = quantize_direct(w_fold, w_fold.max(), 8, signed=True)
    y_fp = _op(layer, x, layer.weight.data)
    axes = (0, 2, 3) if kind == "conv" else (0,)
    mu_b, var_b = y_fp.mean(axis=axes), y_fp.var(axis=axes)      # biased variance
    sigma_b = np.sqrt(var_b + bn.eps)
    want = (_op(layer, x, w_q) * _per_channel(layer, sigma_run / sigma_b)
            + _per_channel(layer, bn.bias.data - bn.weight.data * mu_b / sigma_b))
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    n = y_fp.size // 5                                           # unbiased var, momentum 0.1
    np.testing.assert_allclose(bn.running_mean, 0.9 * rm0 + 0.1 * mu_b, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 * rv0 + 0.1 * var_b * n / (n - 1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-9)])
def test_folded_bn_at_32_bits_equals_plain_batch_norm_in_training(kind, dtype, tol):
    layer, x = _bn_layer(kind, dtype, BBConfig(chain_init="cifar10"), np.random.default_rng(2))
    bn = layer.bn
    q = layer.weight_quantizer
    # A range that clips nothing (β = max(w) would clip the negative tail, §2.1), so that
    # the 32-bit Q is the identity up to ~s32/2 ≈ 2e−10·β.
    bound = 2 * float(np.abs(layer.weight.data).max() * bn.weight.data.max()
                      / np.sqrt(bn.running_var.min() + bn.eps))
    q.initialize_range(np.array([-bound, bound], dtype=dtype))
    q.noise = {"prune": np.full(5, U_ONE), "chain": np.full(4, U_ONE)}
    plain = (BatchNorm2d if kind == "conv" else BatchNorm1d)(5, dtype=np.float64)
    plain.weight.data, plain.bias.data = bn.weight.data.astype(np.float64), bn.bias.data.astype(
        np.float64)
    plain.running_mean = bn.running_mean.astype(np.float64)
    plain.running_var = bn.running_var.astype(np.float64)
    out = layer(Tensor(x)).data
    want = plain(Tensor(_op(layer, x.astype(np.float64), layer.weight.data.astype(np.float64))))
    scale = np.abs(want.data).max()
    np.testing.assert_allclose(out, want.data, rtol=0, atol=tol * scale)
    np.testing.assert_allclose(bn.running_mean, plain.running_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.running_var, plain.running_var, rtol=tol)


def test_folded_bn_without_quantization_is_plain_bn():
    rng = np.random.default_rng(3)
    layer, x = _bn_layer("conv", np.float64, BBConfig(quantize=False), rng)
    assert layer.weight_quantizer is None
    plain = BatchNorm2d(5, dtype=np.float64)
    plain.weight.data, plain.bias.data = layer.bn.weight.data, layer.bn.bias.data
    plain.running_mean, plain.running_var = layer.bn.running_mean, layer.bn.running_var
    layer.eval()
    plain.eval()
    np.testing.assert_allclose(layer(Tensor(x)).data,
                               plain(Tensor(_op(layer, x, layer.weight.data))).data, rtol=1e-10,
                               atol=1e-12)


def test_folded_bn_gradients_reach_weights_bn_and_range():
    layer, x = _bn_layer("conv", np.float64, BBConfig(), np.random.default_rng(4))
    q = layer.weight_quantizer
    q.prune_logits.data[:] = 0.0                             # fractional z2 samples
    q.noise = {"prune": np.full(5, 0.6), "chain": np.full(4, 0.6)}
    with no_grad():
        assert not layer(Tensor(x)).requires_grad
    q.noise = {"prune": np.full(5, 0.6), "chain": np.full(4, 0.6)}
    out = layer(Tensor(x))
    (out * out).sum().backward()
    for p in (layer.weight, layer.bn.weight, layer.bn.bias, q.beta, q.prune_logits):
        assert p.grad is not None and np.any(p.grad != 0)


def test_without_the_straight_through_estimator_no_gradient_reaches_the_quantized_tensor():
    """ste=False (a "break it" ablation): the rounding's true derivative, 0 almost everywhere,
    so no weight gets a gradient through its quantizer; the ranges β still get theirs."""
    from bbits_ref.method.models import lenet5

    x = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    grads = {}
    for ste in (True, False):
        model = lenet5(BBConfig(ste=ste), rng=1)
        model.initialize(x[:2], np.random.default_rng(2))
        out = model(Tensor(x), rng=np.random.default_rng(3))
        (out * out).sum().backward()
        grads[ste] = {name: p.grad for name, p in model.named_parameters()}
    weights = [n for n in grads[True] if n.endswith(".weight")]
    assert weights and all(np.abs(grads[True][n]).sum() > 0 for n in weights)
    assert all(grads[False][n] is None or not np.any(grads[False][n]) for n in weights)
    betas = [n for n in grads[False] if n.endswith(".beta")]
    assert betas and any(grads[False][n] is not None and np.any(grads[False][n]) for n in betas)
    with pytest.raises(ValueError, match="ste must be true or false"):
        BBConfig(ste="no")

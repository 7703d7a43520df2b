"""Tests for bbits_ref.method.models: LeNet-5 and VGG-7 with Bayesian Bits quantizers.

Sections of docs/method.md: §4.4, §6–§7.

Structure and counts (§7.1), lazy range init (§2.1), MAC tables and BOP weights (§4.4, §5.1),
noise feeding (§3.2), a whole-network gradient check, gates inside the model (§3.4, §3.5, §6),
the ablations, parameter groups (§7.3), bad input and state-dict round trips.
"""
import numpy as np
import pytest

from bbits_ref.method import bops
from bbits_ref.autograd import ops
from bbits_ref.method import prior
from bbits_ref.method import layers as qnn
from bbits_ref.autograd.engine import Tensor, no_grad
from bbits_ref.method.gates import HardConcrete
from bbits_ref.autograd.gradcheck import check_grads
from bbits_ref.method.models import BBNet, count_parameters, lenet5, vgg7
from bbits_ref.method.layers import BBConfig
from bbits_ref.method.quantizer import quantize_direct

HC = HardConcrete()


def assert_matches_direct(got, direct, step):
    """``got`` equals the direct grid quantizer, except a handful of float32 near-ties (§2.4).

    The residual decomposition and s_b·round(x_c/s_b) agree exactly in exact arithmetic; in float32
    a value within an ulp of a rounding tie may land on the neighbouring level (one step off).
    """
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(direct, np.float64))
    off = diff > 1e-3 * step
    assert off.sum() <= max(2, off.size // 100_000), f"{off.sum()} of {off.size} values differ"
    np.testing.assert_allclose(diff[off], step, rtol=1e-3)


def mnist_like(rng, n):
    """Images on the 8-bit grid in [0, 1], like ToTensor() MNIST pixels (§7.3)."""
    return (rng.integers(0, 256, size=(n, 1, 28, 28)) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def lenet_init():
    """A LeNet-5 initialised with two images, plus those images and the init seed."""
    model = lenet5(rng=0)
    x2 = mnist_like(np.random.default_rng(1), 2)
    model.initialize(x2, np.random.default_rng(2))
    return model, x2


@pytest.fixture(scope="module")
def vgg_full():
    return vgg7(1.0, rng=0)


# --------------------------------------------------------------------------- structure (§7.1)

def test_lenet5_counts_and_quantizer_layout():
    model = lenet5()
    assert count_parameters(model) == {"network": 582_026, "gates": 636, "ranges": 0}
    names = [n for n, _ in model.quantizers()]
    assert names == ["conv1.weight_quantizer", "conv1.act_quantizer",
                     "conv2.weight_quantizer", "conv2.act_quantizer",
                     "fc1.weight_quantizer", "fc1.act_quantizer", "fc2.weight_quantizer"]
    kinds = [q.kind for _, q in model.quantizers()]
    assert kinds.count("weight") == 4 and kinds.count("activation") == 3
    assert model.fc2.act_quantizer is None                  # the logits are full precision
    assert model.fc2.weight_quantizer.prune_logits is None   # the last layer is never pruned
    for n in ("conv1", "conv2", "fc1"):
        assert getattr(model, n).weight_quantizer.prune_logits.shape == \
            (getattr(model, n).weight.shape[0],)
        np.testing.assert_array_equal(getattr(model, n).weight_quantizer.prune_logits.data, 6.0)
    for _, q in model.quantizers():                          # MNIST preset (§3.1)
        np.testing.assert_array_equal(q.gate_logits.data, [6.0, 6.0, -6.0, -6.0])
    assert model.output_shape == (10,)


def test_vgg7_counts_and_layout(vgg_full):
    counts = count_parameters(vgg_full)
    assert counts["gates"] == 60 + 2816                      # §7.1, comparison paragraph
    # conv weights (no bias) + BN γ, β per conv; fc1 (no bias) + BN; fc2 with bias
    convs = [(3, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    expected = sum(o * i * 9 + 2 * o for i, o in convs) + 8192 * 1024 + 2 * 1024 + 1024 * 10 + 10
    assert counts["network"] == expected
    assert abs(counts["network"] - 12.98e6) < 0.01e6
    assert len(vgg_full.quantizers()) == 15
    assert vgg_full.fc2.act_quantizer is None and vgg_full.fc2.weight_quantizer.prune_logits is None
    assert all(isinstance(m, (qnn.QConv2dBN, qnn.QLinearBN))
               for n, m in vgg_full.quantized_layers() if n != "fc2")
    for _, q in vgg_full.quantizers():                       # CIFAR preset: all 6 (§3.1)
        np.testing.assert_array_equal(q.gate_logits.data, 6.0)


# --------------------------------------------------------------------------- lazy range init (§2.1)

def test_initialize_creates_ranges_from_weights_and_first_activations(monkeypatch):
    model = lenet5(rng=0)
    x2 = mnist_like(np.random.default_rng(1), 2)
    seen = {}
    original = qnn.BBQuantizer.forward

    def spy(self, x):
        seen.setdefault(id(self), []).append(np.array(x.data, copy=True))
        return original(self, x)

    monkeypatch.setattr(qnn.BBQuantizer, "forward", spy)
    assert not model.initialized
    model.initialize(x2, np.random.default_rng(2))
    assert model.initialized and model.training
    assert count_parameters(model)["ranges"] == 7
    for name, q in model.quantizers():
        first = seen[id(q)][0]
        if q.kind == "weight":
            w = getattr(model, name.split(".")[0]).weight.data
            assert q.signed is True
            assert float(q.beta.data) == float(w.max())       # max(w), not max|w|
            assert -w.min() != w.max()
        else:
            assert q.signed is False
            assert first.shape[0] == 2 and first.min() >= 0   # post-ReLU, two images
            assert float(q.beta.data) == pytest.approx(float(first.max()), rel=1e-7)
    # The input is not quantized: no quantizer sees the (2, 1, 28, 28) images.
    assert all(arr.shape != x2.shape for calls in seen.values() for arr in calls)


def test_first_activation_range_equals_an_independent_conv1_forward():
    model = lenet5(rng=0)
    x2 = mnist_like(np.random.default_rng(1), 2)
    model.initialize(x2, np.random.default_rng(2))
    noise = model.sample_noise(np.random.default_rng(2))     # the noise initialize() drew
    q_w = model.conv1.weight_quantizer
    q_w.noise = noise["conv1.weight_quantizer"]
    with no_grad():
        w_q = q_w(model.conv1.weight).data
    q_w.noise = None
    pre = ops.conv2d(Tensor(x2), Tensor(w_q)).data + model.conv1.bias.data[:, None, None]
    assert float(model.conv1.act_quantizer.beta.data) == pytest.approx(
        float(np.maximum(pre, 0).max()), rel=1e-6)


# --------------------------------------------------------------------------- MACs (§4.4, §5.1)

def test_mac_tables_match_bops(vgg_full):
    assert lenet5().layer_macs() == bops.lenet5_layer_macs()
    assert vgg_full.layer_macs() == bops.vgg7_layer_macs(1.0)
    assert vgg7(0.25).layer_macs() == bops.vgg7_layer_macs(0.25)
    # §5.1 numbers, independently of bops
    assert [m for _, m in lenet5().layer_macs()] == [460_800, 3_276_800, 524_288, 5_120]
    assert sum(m for _, m in vgg_full.layer_macs()) == 615_917_568


@pytest.mark.parametrize("build", [lambda: lenet5(), lambda: vgg7(0.25)], ids=["lenet5", "vgg7"])
def test_mac_weights_follow_spec_4_4(build):
    model = build()
    macs = [m for _, m in model.layer_macs()]
    mac_max = max(macs)
    layers = [m for _, m in model.quantized_layers()]
    for i, layer in enumerate(layers):
        assert layer.weight_quantizer.mac_weight == pytest.approx(macs[i] / mac_max, rel=1e-15)
        if layer.act_quantizer is not None:                   # consumer = the next layer
            assert layer.act_quantizer.mac_weight == pytest.approx(macs[i + 1] / mac_max,
                                                                   rel=1e-15)
    if model.name == "lenet5":                                # the §5.1 column
        got = [q.mac_weight for _, q in model.quantizers()]
        np.testing.assert_allclose(got, [0.140625, 1.0, 1.0, 0.16, 0.16, 0.0015625, 0.0015625])


# --------------------------------------------------------------------------- noise (§3.2)

def test_noise_feeding_is_explicit_and_reproducible(lenet_init):
    model, _ = lenet_init
    model.train()
    x = mnist_like(np.random.default_rng(5), 3)
    noise = model.sample_noise(np.random.default_rng(11))
    with no_grad():
        a = model(x, noise=noise).data
        b = model(x, noise=noise).data
        c = model(x, noise=model.sample_noise(np.random.default_rng(12))).data
        d = model(x, rng=np.random.default_rng(11)).data
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a, c)
    assert all(q.noise is None for _, q in model.quantizers())   # noise does not leak
    with pytest.raises(ValueError, match="rng=.*noise="):
        model(x)
    partial = dict(noise)
    del partial["fc1.act_quantizer"]
    with pytest.raises(KeyError, match="fc1.act_quantizer"):
        model(x, noise=partial)
    assert all(q.noise is None for _, q in model.quantizers())


def test_noise_layout():
    model = lenet5()
    noise = model.sample_noise(np.random.default_rng(0))
    assert list(noise) == [n for n, _ in model.quantizers()]
    assert noise["conv2.weight_quantizer"]["prune"].shape == (64,)
    assert noise["conv2.weight_quantizer"]["chain"].shape == (4,)
    assert set(noise["conv2.act_quantizer"]) == {"chain"}
    assert set(noise["fc2.weight_quantizer"]) == {"chain"}
    # drawn in network order, prune before chain
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(noise["conv1.weight_quantizer"]["prune"], rng.random(32))
    np.testing.assert_array_equal(noise["conv1.weight_quantizer"]["chain"], rng.random(4))


def test_eval_needs_no_noise_and_is_deterministic(lenet_init):
    model, _ = lenet_init
    x = mnist_like(np.random.default_rng(6), 3)
    model.eval()
    try:
        a, b = model(x).data, model(x).data
    finally:
        model.train()
    np.testing.assert_array_equal(a, b)


def test_one_gate_sample_per_forward_shared_by_the_batch(lenet_init, monkeypatch):
    model, _ = lenet_init
    model.train()
    shapes = []
    original = HardConcrete.sample

    def spy(self, logits, u):
        z = original(self, logits, u)
        shapes.append(z.shape)
        return z

    monkeypatch.setattr(HardConcrete, "sample", spy)
    x = mnist_like(np.random.default_rng(7), 5)
    noise = model.sample_noise(np.random.default_rng(8))
    with no_grad():
        full = model(x, noise=noise).data
        # one z2 of shape (C,) per weight quantizer and one scalar per chain gate, whatever N is
        assert sorted(s for s in shapes if s != ()) == [(32,), (64,), (512,)]
        assert len([s for s in shapes if s == ()]) == 7 * 2   # z4, z8 (z16, z32 are hard-cut)
        singles = np.concatenate([model(x[i:i + 1], noise=noise).data for i in range(5)])
    # every example saw the same gates: splitting the batch changes nothing
    np.testing.assert_allclose(full, singles, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- gradient check

def _gradcheck_model(seed=0):
    """LeNet-5 in float64 in a state where the STE loss is differentiable at the check point.

    Two genuine kinks of the frozen-rounding loss are moved away from the evaluation point:
    * a weight quantizer initialised with β = max(w) has its largest weight 1e−7·β above the
      clip bound hi = (1 − 1e−7)·β (§2.2), so β is scaled by 0.93;
    * an activation chain gate sampled at exactly 0 rounds small positive activations to 0,
      which ties them with ReLU zeros inside a max-pool window, so the activation chain noise is
      fixed at u = 0.5 (fractional gates) and the activation chain reaches 32 bits.
    """
    rng = np.random.default_rng(seed)
    model = lenet5(rng=seed, dtype=np.float64)
    x = rng.random((4, 1, 28, 28))
    y = np.array([0, 3, 5, 9])
    model.initialize(x[:2], np.random.default_rng(seed + 1))
    for _, q in model.quantizers():
        if q.kind == "weight":
            q.gate_logits.data[:] = [1.0, 0.5, -6.0, -6.0]    # hard cut of z16, z32 included
            q.beta.data = q.beta.data * 0.93
        else:
            q.gate_logits.data[:] = [1.0, 0.5, 1.0, 0.0]
        if q.prune_logits is not None:                        # fractional and clamped z2
            q.prune_logits.data[:] = rng.uniform(-0.5, 2.5, q.prune_logits.shape)
    noise = model.sample_noise(np.random.default_rng(seed + 2))
    for name, q in model.quantizers():
        if q.kind == "activation":
            noise[name]["chain"][:] = 0.5
    return model, x, y, noise


def _loss_of(model, x, y, noise, names, mu=0.1):
    """f(*arrays) = CE + μ·R with the named parameters replaced by the given tensors."""
    modules = dict(model.named_modules())

    def f(*tensors):
        saved = {}
        try:
            for name, t in zip(names, tensors):
                owner, attr = name.rsplit(".", 1)
                saved[name] = getattr(modules[owner], attr)
                setattr(modules[owner], attr, t)
            logits = model(x, noise=noise)
            return ops.cross_entropy(logits, y) + mu * model.regularizer()
        finally:
            for name, p in saved.items():
                owner, attr = name.rsplit(".", 1)
                setattr(modules[owner], attr, p)
    return f


GROUPS = {
    "conv_weight": lambda names: ["conv2.weight"],
    "bias": lambda names: ["conv1.bias"],
    "fc_weights": lambda names: ["fc1.weight", "fc2.weight"],
    "ranges": lambda names: [n for n in names if n.endswith(".beta")],
    "chain_logits": lambda names: [n for n in names if n.endswith(".gate_logits")],
    "prune_logits": lambda names: [n for n in names if n.endswith(".prune_logits")],
}


@pytest.fixture(scope="module")
def gradcheck_model():
    return _gradcheck_model()


def _check_group(setup, group, **kw):
    model, x, y, noise = setup
    params = dict(model.named_parameters())
    names = GROUPS[group](list(params))
    # eps = 1e−8: ReLU / max-pool / clip kinks within eps of the point are rare at this step
    return check_grads(_loss_of(model, x, y, noise, names), *[params[n].data for n in names],
                       method="projection", eps=1e-8, rtol=1e-4, atol=1e-7, n_directions=1,
                       rng=np.random.default_rng(3), **kw)


@pytest.mark.parametrize("group", list(GROUPS))
def test_lenet5_gradients_pass_the_projection_check(gradcheck_model, group):
    result = _check_group(gradcheck_model, group)
    assert result, f"{group}: {result}"


def test_gradient_check_catches_a_wrong_range_gradient(gradcheck_model, monkeypatch):
    """Negative control: the check fails when ∂/∂β of every quantizer is 1.5× too large."""
    original = qnn.bb_quantize

    def wrong_beta_rule(x, beta, *gates, **kw):
        # same forward value β, gradient 1.5: β' = 1.5·β − 0.5·β (the 0.5·β detached)
        scaled = beta * 1.5 - Tensor(0.5 * beta.data)
        return original(x, scaled, *gates, **kw)

    monkeypatch.setattr(qnn, "bb_quantize", wrong_beta_rule)
    result = _check_group(gradcheck_model, "ranges")
    assert not result and result.max_rel_err > 0.1


def test_gradient_check_catches_a_wrong_gate_gradient(gradcheck_model, monkeypatch):
    """Negative control: a gate sample whose gradient lost a factor 2 (say, of 1/β_hc) is caught.

    (A wrong ReLU gradient would not be: every ReLU is followed by an activation quantizer whose
    clip already gives the ReLU zeros no gradient, §2.2.)
    """
    original = HardConcrete.sample

    def halved_gradient(self, logits, u):
        z = original(self, logits, u)
        return z * 0.5 + Tensor(0.5 * z.data)                 # same value, half the gradient

    monkeypatch.setattr(HardConcrete, "sample", halved_gradient)
    result = _check_group(gradcheck_model, "prune_logits")
    assert not result and result.max_rel_err > 1e-2


# --------------------------------------------------------------------------- gates in the model

def test_pruned_channels_are_zero_but_bias_still_flows(lenet_init):
    model, _ = lenet_init
    layer, q = model.conv1, model.conv1.weight_quantizer
    old_logits, old_bias = q.prune_logits.data.copy(), layer.bias.data.copy()
    pruned = np.array([0, 3, 4, 17, 31])
    try:
        q.prune_logits.data[pruned] = -10.0
        layer.bias.data[pruned] = np.array([0.05, 0.1, 0.2, -0.3, 0.4], dtype=np.float32)
        model.eval()
        with no_grad():
            w_q = q(layer.weight).data
            out = layer(Tensor(mnist_like(np.random.default_rng(9), 2))).data
        assert np.all(w_q[pruned] == 0)
        kept = np.setdiff1d(np.arange(32), pruned)
        assert np.all(np.abs(w_q[kept]).sum(axis=(1, 2, 3)) > 0)
        # the pruned channel outputs Q_a(relu(bias)) everywhere (§6)
        beta_a = float(layer.act_quantizer.beta.data)
        expect = quantize_direct(np.maximum(layer.bias.data[pruned], 0), beta_a, 8, signed=False)
        np.testing.assert_allclose(out[:, pruned], np.broadcast_to(
            expect[None, :, None, None], out[:, pruned].shape), rtol=1e-6)
        assert np.any(out[:, pruned] > 0)
    finally:
        q.prune_logits.data[:] = old_logits
        layer.bias.data[:] = old_bias
        model.train()


def test_pruning_changes_kept_channels_and_bops_like_a_hand_computation():
    from bbits_ref.method.readout import model_readout
    model = lenet5()
    cut = {"conv1": 8, "conv2": 16, "fc1": 128}
    for name, k in cut.items():
        getattr(model, name).weight_quantizer.prune_logits.data[:k] = -10.0
    read = model_readout(model)
    assert read.by_name("conv1.weight_quantizer").kept_channels == 24
    assert read.by_name("conv2.weight_quantizer").kept_channels == 48
    assert read.by_name("fc1.weight_quantizer").kept_channels == 384
    assert read.by_name("fc2.weight_quantizer").kept_channels is None
    hand = [bops.LayerCost("conv1", 460_800, 8, 8, 24 / 32, 1.0),
            bops.LayerCost("conv2", 3_276_800, 8, 8, 48 / 64, 24 / 32),
            bops.LayerCost("fc1", 524_288, 8, 8, 384 / 512, 48 / 64),   # conv2's channel fraction
            bops.LayerCost("fc2", 5_120, 8, 8, 1.0, 384 / 512)]
    assert read.relative_bops == pytest.approx(bops.relative_bops(hand), rel=1e-12)
    assert read.relative_bops < 6.25
    for got, want in zip(read.layers, hand):
        assert (got.keep_out, got.keep_in) == pytest.approx((want.keep_out, want.keep_in))


@pytest.mark.parametrize("logits, bits", [((6.0, -10.0), 4), ((-10.0, -10.0), 2),
                                          ((6.0, 6.0), 8)])
def test_chain_logits_set_the_deterministic_bit_width(lenet_init, logits, bits):
    from bbits_ref.method.readout import model_readout
    model, _ = lenet_init
    q, w = model.fc1.weight_quantizer, model.fc1.weight
    old = q.gate_logits.data.copy()
    try:
        q.gate_logits.data[:2] = logits
        model.eval()
        with no_grad():
            w_q = q(w).data
        beta = float(q.beta.data)
        assert_matches_direct(w_q, quantize_direct(w.data, beta, bits, signed=True),
                              2 * beta / (2 ** bits - 1))
        assert len(np.unique(w_q)) <= 2 ** bits - 1           # signed: restricted grid
        if bits == 2:                                         # ternary {−2β/3, 0, 2β/3}
            np.testing.assert_allclose(np.unique(w_q), [-2 * beta / 3, 0, 2 * beta / 3],
                                       rtol=1e-6)
        read = model_readout(model)
        assert read.by_name("fc1.weight_quantizer").deterministic_bits == bits
        assert read.layers[2].w_bits == bits
    finally:
        q.gate_logits.data[:] = old
        model.train()


def test_hard_cut_removes_the_data_gradient_but_not_the_regularizer_gradient(lenet_init):
    model, _ = lenet_init
    model.train()
    q = model.conv2.act_quantizer
    old = q.gate_logits.data.copy()
    x = mnist_like(np.random.default_rng(10), 2)
    y = np.array([1, 7])
    noise = model.sample_noise(np.random.default_rng(0))
    noise["conv2.act_quantizer"]["chain"][:] = 0.8    # fractional z4 (φ4 = 0), z8 (φ8 ≈ −2)
    try:
        for phi8, cut in ((-2.0, True), (-1.999, False)):
            q.gate_logits.data[:2] = [0.0, phi8]
            q.noise = noise["conv2.act_quantizer"]
            z = q.gate_values()
            q.noise = None
            assert (z[2] is None) is cut and (z[3] is None) and (z[4] is None)
            if not cut:
                assert 0 < float(z[2].data) < 1
            q.gate_logits.grad = None
            ops.cross_entropy(model(x, noise=noise), y).backward()
            data_grad = q.gate_logits.grad.copy()
            assert data_grad[0] != 0
            assert bool(data_grad[1] == 0) is cut
            q.gate_logits.grad = None
            q.regularizer().backward()
            assert q.gate_logits.grad[1] > 0                  # R still pushes φ8 down
    finally:
        q.gate_logits.data[:] = old
        model.zero_grad()


# --------------------------------------------------------------------------- ablations

def test_quantization_only_ablation_has_no_pruning():
    model = lenet5(BBConfig(pruning=False))
    assert all(q.prune_logits is None for _, q in model.quantizers())
    assert count_parameters(model)["gates"] == 28
    model.initialize(mnist_like(np.random.default_rng(0), 2), np.random.default_rng(0))
    for name, noise in model.sample_noise(np.random.default_rng(0)).items():
        assert "prune" not in noise
    q = model.conv1.weight_quantizer
    q.noise = {"chain": np.full(4, 0.5)}
    assert q.gate_values()[0] is None                        # z2 ≡ 1
    q.noise = None


def test_pruning_only_ablation_quantizes_to_the_fixed_grid():
    from bbits_ref.method.readout import model_readout
    cfg = BBConfig(learn_bits=False, weight_bits=4, act_bits=8)
    model = lenet5(cfg)
    assert all(q.gate_logits is None for _, q in model.quantizers())
    assert count_parameters(model)["gates"] == 608
    x = mnist_like(np.random.default_rng(0), 2)
    model.initialize(x, np.random.default_rng(0))
    assert "chain" not in model.sample_noise(np.random.default_rng(0))["conv1.weight_quantizer"]
    read = model_readout(model)
    assert [r.deterministic_bits for r in read.quantizers] == [4, 8, 4, 8, 4, 8, 4]
    assert read.relative_bops == pytest.approx(3.125, abs=1e-12)      # §5.1 row 4/8
    for mode in ("eval", "train"):
        getattr(model, mode)()
        q = model.conv2.weight_quantizer
        q.noise = {"prune": np.full(64, 1 - 1e-6)}           # z2 = 1 in training
        with no_grad():
            w_q = q(model.conv2.weight).data
            a = model.conv1.act_quantizer
            a.noise = {}
            h = Tensor(np.abs(np.random.default_rng(1).normal(size=(2, 32, 4, 4)))
                       .astype(np.float32))
            a_q = a(h).data
        q.noise = a.noise = None
        beta = float(q.beta.data)
        assert_matches_direct(w_q, quantize_direct(model.conv2.weight.data, beta, 4, True),
                              2 * beta / 15)
        assert_matches_direct(a_q, quantize_direct(h.data, float(a.beta.data), 8, False),
                              float(a.beta.data) / 255)
    model.train()


def test_uniform_fixed_bit_baseline_has_no_gates():
    cfg = BBConfig(learn_bits=False, pruning=False, weight_bits=2, act_bits=4)
    model = lenet5(cfg)
    model.initialize(mnist_like(np.random.default_rng(0), 2), np.random.default_rng(0))
    assert count_parameters(model)["gates"] == 0
    groups = model.parameter_groups()
    assert groups["gates"] == [] and len(groups["ranges"]) == 7
    assert all(n == {} for n in model.sample_noise(np.random.default_rng(0)).values())
    from bbits_ref.method.readout import model_readout
    assert model_readout(model).relative_bops == pytest.approx(
        bops.uniform_relative_bops([m for _, m in bops.LENET5_LAYERS], 2, 4))
    # no gate parameters, so the regularizer is a constant
    assert not model.regularizer().requires_grad


def test_full_precision_config_equals_a_plain_float_network():
    model = lenet5(BBConfig(quantize=False), rng=3)
    assert model.quantizers() == [] and count_parameters(model)["gates"] == 0
    x = mnist_like(np.random.default_rng(4), 3)
    out = model(x).data                                      # training mode needs no noise
    p = {n: t.data for n, t in model.named_parameters()}
    h = ops.conv2d(Tensor(x), Tensor(p["conv1.weight"])).data + p["conv1.bias"][:, None, None]
    h = ops.max_pool2d(Tensor(np.maximum(h, 0)), kernel_size=2).data
    h = ops.conv2d(Tensor(h), Tensor(p["conv2.weight"])).data + p["conv2.bias"][:, None, None]
    h = ops.max_pool2d(Tensor(np.maximum(h, 0)), kernel_size=2).data.reshape(3, -1)
    h = np.maximum(h @ p["fc1.weight"].T + p["fc1.bias"], 0)
    ref = h @ p["fc2.weight"].T + p["fc2.bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    model.eval()
    np.testing.assert_allclose(model(x).data, ref, rtol=1e-5, atol=1e-6)


def test_gumbel_softmax_config_shifts_the_logits():
    model = lenet5(BBConfig(gate="gumbel_softmax"))
    hc = np.array([6.0, 6.0, -6.0, -6.0])
    for _, q in model.quantizers():
        assert q.gate.name == "gumbel_softmax"
        np.testing.assert_allclose(q.gate_logits.data, hc + 1.598597, atol=1e-5)
        # sigmoid(φ_GS) = π_HC(φ_HC): the same initial on-probability (§3.7)
        np.testing.assert_allclose(1 / (1 + np.exp(-q.gate_logits.data.astype(np.float64))),
                                   HC.prob_nonzero(hc).data, rtol=1e-6)
        if q.prune_logits is not None:
            np.testing.assert_allclose(q.prune_logits.data, 6.0 + 1.598597, atol=1e-5)
            np.testing.assert_allclose(q.prune_probs().data, HC.prob_nonzero(6.0).data,
                                       rtol=1e-6)


def test_independent_prior_config_uses_the_independent_regularizer():
    model = lenet5(BBConfig(prior="independent"))
    ref = lenet5(BBConfig())
    for (_, q), (_, r) in zip(model.quantizers(), ref.quantizers()):
        q.gate_logits.data[:] = r.gate_logits.data[:] = [0.5, -1.0, 1.0, -1.5]
        want = prior.independent_regularizer(q.prune_probs(), q.chain_probs(), q.mac_weight)
        other = prior.bop_regularizer(r.prune_probs(), r.chain_probs(), r.mac_weight)
        assert float(q.regularizer().data) == pytest.approx(float(want.data), rel=1e-6)
        assert float(r.regularizer().data) == pytest.approx(float(other.data), rel=1e-6)
        assert float(want.data) != pytest.approx(float(other.data), rel=1e-3)


# --------------------------------------------------------------------------- parameter groups

@pytest.mark.parametrize("build", [lambda: lenet5(), lambda: vgg7(0.0625)], ids=["lenet5", "vgg7"])
def test_parameter_groups(build):
    model = build()
    with pytest.raises(RuntimeError, match="initialize"):
        model.parameter_groups()
    shape = (2,) + model.input_shape
    model.initialize(np.random.default_rng(0).random(shape).astype(np.float32),
                     np.random.default_rng(0))
    groups = model.parameter_groups()
    assert list(groups) == ["weights", "gates", "ranges"]
    ids = {k: [id(p) for p in v] for k, v in groups.items()}
    flat = sum(ids.values(), [])
    assert len(flat) == len(set(flat))                        # disjoint
    assert set(flat) == {id(p) for p in model.parameters()}   # covering
    named = {id(p): n for n, p in model.named_parameters()}
    assert all(named[i].endswith(".beta") for i in ids["ranges"])
    assert all(named[i].endswith(("gate_logits", "prune_logits")) for i in ids["gates"])
    assert all("quantizer" not in named[i] for i in ids["weights"])
    if model.name.startswith("vgg7"):                         # BN γ/β are weights
        assert any(named[i].endswith("bn.weight") for i in ids["weights"])
    counts = count_parameters(model)
    assert sum(p.size for p in groups["gates"]) == counts["gates"]
    assert sum(p.size for p in groups["weights"]) == counts["network"]


# --------------------------------------------------------------------------- bad input

def test_bad_input_gives_clear_errors():
    model = lenet5()
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model(np.zeros((2, 3, 32, 32), dtype=np.float32), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model(np.zeros((1, 28, 28), dtype=np.float32), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown gate preset 'svhn'"):
        BBConfig(chain_init="svhn")
    with pytest.raises(ValueError, match="four finite logits"):
        BBConfig(chain_init=(6.0, 6.0, 6.0))
    with pytest.raises(ValueError, match="set weight_bits"):
        BBConfig(learn_bits=False)
    with pytest.raises(ValueError, match="set act_bits"):
        BBConfig(learn_bits=False, weight_bits=4)
    with pytest.raises(ValueError, match="bits must be one of"):
        BBConfig(learn_bits=False, weight_bits=3, act_bits=8)
    with pytest.raises(ValueError, match="gate must be one of hard_concrete, gumbel_softmax; got 'sigmoid'"):
        BBConfig(gate="sigmoid")
    with pytest.raises(TypeError, match="config must be a BBConfig; got dict"):
        lenet5({"pruning": False})
    with pytest.raises(TypeError, match="config must be a BBConfig"):
        vgg7(0.25, config="cifar10")
    for width in (0, -1.0, float("nan"), "wide", True):
        with pytest.raises(ValueError, match="width must be a positive number"):
            vgg7(width)
    assert vgg7(np.float32(0.25)).layer_macs() == bops.vgg7_layer_macs(0.25)
    with pytest.raises(ValueError, match="prior must be one of"):
        BBConfig(prior="laplace")


def test_activation_quantizer_without_positive_values_is_an_error():
    model = lenet5()
    model.conv1.bias.data[:] = -100.0                         # every conv1 output is ReLU'd to 0
    with pytest.raises(ValueError, match="range β would be 0"):
        model.initialize(mnist_like(np.random.default_rng(0), 2), np.random.default_rng(0))


# --------------------------------------------------------------------------- state dict

def _train_a_bit(model, shape, steps=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((4,) + shape).astype(np.float32)
    y = rng.integers(0, 10, size=4)
    model.initialize(x[:2], rng)
    for _ in range(steps):
        model.zero_grad()
        loss = ops.cross_entropy(model(x, rng=rng), y) + 0.1 * model.regularizer()
        loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                p.data = (p.data - 0.01 * np.sign(p.grad)).astype(p.dtype)   # signSGD step
    return x


@pytest.mark.parametrize("build", [lambda s: lenet5(rng=s), lambda s: vgg7(0.0625, rng=s)],
                         ids=["lenet5", "vgg7"])
def test_state_dict_round_trip_creates_the_lazy_ranges(build):
    model = build(0)
    x = _train_a_bit(model, model.input_shape)
    state = model.state_dict()
    fresh = build(1)
    assert not fresh.initialized
    fresh.load_state_dict(state)
    assert fresh.initialized
    assert [q.signed for _, q in fresh.quantizers()] == [q.signed for _, q in model.quantizers()]
    model.eval()
    fresh.eval()
    np.testing.assert_array_equal(fresh(x).data, model(x).data)
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    with pytest.raises(KeyError, match="missing keys"):
        build(2).load_state_dict({k: v for k, v in state.items() if not k.endswith("fc2.bias")})


def test_ranges_follow_a_model_cast_to_float64():
    model = lenet5().to_dtype(np.float64)
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    model.initialize(x, np.random.default_rng(0))
    assert all(q.beta.dtype == np.float64 for _, q in model.quantizers())
    assert float(model.conv1.weight_quantizer.beta.data) == model.conv1.weight.data.max()
    fresh = lenet5().to_dtype(np.float64)
    fresh.load_state_dict(model.state_dict())
    assert all(q.beta.dtype == np.float64 for _, q in fresh.quantizers())
    model.eval()
    fresh.eval()
    np.testing.assert_array_equal(fresh(x).data, model(x).data)


def test_bbnet_is_exported():
    assert isinstance(lenet5(), BBNet)

"""Tests for bbits_ref.method.bops: MAC counts, the BOP metric and its expected version.

Sections of docs/method.md: §4.4, §5, §5.1.
"""
import itertools
from fractions import Fraction

import numpy as np
import pytest

from bbits_ref import Tensor
from bbits_ref.method.bops import (BIT_WIDTHS, LENET5_LAYERS, VGG7_LAYERS, LayerCost, bit_width_distribution,
                            conv_macs, conv_output_hw, deterministic_bits, deterministic_layer_cost,
                            expected_bits, expected_layer_cost, format_bops_table, lenet5_layer_macs,
                            linear_macs, relative_bops, sequential_layer_costs, uniform_relative_bops,
                            vgg7_layer_macs)


def assert_printed(value, printed: str):
    """``value`` rounds to the digits printed in docs/method.md (within half a unit of the last digit)."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    assert abs(value - float(printed)) <= 0.5 * 10.0 ** -decimals + 1e-12, (value, printed)


# --------------------------------------------------------------------------- §5.1 MAC table

LENET_TABLE = [("conv1", 460_800, "0.14063"), ("conv2", 3_276_800, "1"),
               ("fc1", 524_288, "0.16"), ("fc2", 5_120, "0.0015625")]
VGG_TABLE = [("conv1", 3_538_944, "0.02344"), ("conv2", 150_994_944, "1"),
             ("conv3", 75_497_472, "0.5"), ("conv4", 150_994_944, "1"),
             ("conv5", 75_497_472, "0.5"), ("conv6", 150_994_944, "1"),
             ("fc1", 8_388_608, "0.05556"), ("fc2", 10_240, "0.0000678")]


@pytest.mark.parametrize("layers, table, total", [(LENET5_LAYERS, LENET_TABLE, 4_267_008),
                                                  (VGG7_LAYERS, VGG_TABLE, 615_917_568)])
def test_mac_table(layers, table, total):
    assert [name for name, _ in layers] == [name for name, _, _ in table]
    assert [m for _, m in layers] == [m for _, m, _ in table]
    assert sum(m for _, m in layers) == total
    mac_max = max(m for _, m in layers)
    for (_, macs), (_, _, ratio) in zip(layers, table):
        if ratio == "0.0000678":    # printed with 3 significant digits
            assert abs(macs / mac_max - 6.78e-5) <= 0.005e-5
        else:
            assert_printed(macs / mac_max, ratio)


def test_layer_lists_are_the_functions():
    assert lenet5_layer_macs() == LENET5_LAYERS
    assert vgg7_layer_macs(1.0) == VGG7_LAYERS


def test_mac_formulas_by_hand():
    assert conv_output_hw(28, 5) == (24, 24)
    assert conv_output_hw((32, 30), 3, stride=1, padding=1) == (32, 30)
    assert conv_output_hw(24, 2, 2) == (12, 12)
    assert conv_output_hw(7, 3, stride=2) == (3, 3)               # floor((7 - 3) / 2) + 1
    assert conv_macs(32, 64, 5, 8) == 64 * 8 * 8 * 5 * 5 * 32
    assert conv_macs(8, 16, (3, 1), (4, 5), groups=4) == 16 * 4 * 5 * 3 * 1 * 2
    assert linear_macs(1024, 512) == 524_288


def test_vgg7_width_scaling():
    half = dict(vgg7_layer_macs(0.5))
    assert half["conv1"] == 64 * 32 * 32 * 9 * 3                   # input channels stay 3
    assert half["conv2"] == 64 * 32 * 32 * 9 * 64
    assert half["fc1"] == (256 * 4 * 4) * 512
    assert half["fc2"] == 512 * 10                                 # 10 classes stay 10
    tiny = dict(vgg7_layer_macs(1e-6))                             # at least one channel
    assert tiny["conv2"] == 1 * 32 * 32 * 9 * 1 and tiny["fc2"] == 10


# --------------------------------------------------------------------------- §5.1 uniform table

UNIFORM_TABLE = [((2, 32), "5.744", "6.223"), ((1, 32), "2.872", "3.112"),
                 ((8, 8), "6.250", "6.250"), ((4, 8), "3.125", "3.125"),
                 ((2, 8), "1.5625", "1.5625"), ((4, 4), "1.731", "1.571"),
                 ((2, 4), "0.866", "0.786"), ((2, 2), "0.517", "0.397")]


@pytest.mark.parametrize("config, lenet, vgg", UNIFORM_TABLE)
def test_uniform_table(config, lenet, vgg):
    w_bits, a_bits = config
    assert_printed(uniform_relative_bops([m for _, m in LENET5_LAYERS], w_bits, a_bits), lenet)
    assert_printed(uniform_relative_bops([m for _, m in VGG7_LAYERS], w_bits, a_bits), vgg)


def test_uniform_8_8_is_exactly_6_25_percent():
    for layers in (LENET5_LAYERS, VGG7_LAYERS):
        assert uniform_relative_bops([m for _, m in layers], 8, 8) == 6.25


def test_uniform_first_layer_uses_8_bit_input():
    # 2/32 on LeNet by hand: conv1 is fed by the 8-bit input, the others by 32-bit activations
    macs = [m for _, m in LENET5_LAYERS]
    by_hand = Fraction(100 * (macs[0] * 2 * 8 + sum(macs[1:]) * 2 * 32), sum(macs) * 1024)
    assert uniform_relative_bops(macs, 2, 32) == pytest.approx(float(by_hand), rel=1e-15)
    # with a 32-bit input the first layer costs more, so the percentage differs
    assert uniform_relative_bops(macs, 2, 32, input_bits=32) == pytest.approx(100 * 2 * 32 / 1024)


# --------------------------------------------------------------------------- pruning by hand

def test_pruning_example_by_hand():
    # LeNet-5 with conv1 16/32, conv2 48/64, fc1 256/512 channels kept; fc2 (no z2) keeps all.
    # weights (8, 4, 2, 8) bits; outputs of conv1/conv2/fc1 at (4, 2, 8) bits; input 8 bits.
    #   conv1: 460800  · 8 · 8 · 1/2 · 1   = 14,745,600
    #   conv2: 3276800 · 4 · 4 · 3/4 · 1/2 = 19,660,800
    #   fc1:   524288  · 2 · 2 · 1/2 · 3/4 =    786,432   (keep_in = conv2's CHANNEL fraction 48/64)
    #   fc2:   5120    · 8 · 8 · 1   · 1/2 =    163,840
    total = 14_745_600 + 19_660_800 + 786_432 + 163_840
    expected = 100 * total / (4_267_008 * 1024)
    costs = sequential_layer_costs(LENET5_LAYERS, [8, 4, 2, 8], [4, 2, 8], [0.5, 0.75, 0.5, 1.0])
    assert [c.bops for c in costs] == [14_745_600, 19_660_800, 786_432, 163_840]
    assert relative_bops(costs) == pytest.approx(expected, rel=1e-15)

    # the same from 0/1 gates, as the model would hand them over
    z2_conv1 = np.repeat([1.0, 0.0], 16)
    z2_conv2 = np.repeat([1.0, 0.0], [48, 16])
    z2_fc1 = np.tile([1.0, 0.0], 256)
    chain = {8: [1, 1, 0, 0], 4: [1, 0, 0, 0], 2: [0, 1, 1, 1]}     # z8=1 after z4=0 is still 2 bits
    from_gates = [
        deterministic_layer_cost("conv1", 460_800, chain[8], 8, z2_conv1, None),
        deterministic_layer_cost("conv2", 3_276_800, chain[4], chain[4], z2_conv2, z2_conv1),
        # fc1 sees 64 channels x 16 positions: keep_in comes from conv2's per-channel z2
        deterministic_layer_cost("fc1", 524_288, chain[2], chain[2], z2_fc1, z2_conv2),
        deterministic_layer_cost("fc2", 5_120, chain[8], chain[8], None, z2_fc1),
    ]
    assert [c.bops for c in from_gates] == [c.bops for c in costs]
    assert from_gates[2].keep_in == 0.75 == np.repeat(z2_conv2, 16).mean()   # flattened mask agrees


def test_layer_cost_bops_formula():
    cost = LayerCost("x", 1000, 4, 2, keep_out=0.25, keep_in=0.5)
    assert cost.bops == 1000 * 4 * 2 * 0.25 * 0.5
    assert cost.keep == 0.125 and cost.baseline_bops == 1000 * 1024


# --------------------------------------------------------------------------- bit widths

def prefix_width(gates):
    """Independent definition: the largest b whose whole chain z4…zb is 1 (§1)."""
    bits = 2
    for g in gates:
        if not g:
            break
        bits *= 2
    return bits


def test_deterministic_bits_all_chains():
    chains = list(itertools.product([0, 1], repeat=4))
    for chain in chains:
        assert deterministic_bits(chain) == prefix_width(chain), chain
        assert isinstance(deterministic_bits(chain), int)
    batched = deterministic_bits(np.array(chains, dtype=float))
    assert batched.tolist() == [prefix_width(c) for c in chains]


def test_deterministic_bits_accepts_chain_gates_output():
    # chain_gates (eval) returns floats, and None for hard-cut gates
    assert deterministic_bits([1.0, 1.0, None, None]) == 8
    assert deterministic_bits([Tensor(1.0), None, None, None]) == 4
    assert deterministic_bits(np.array([True, True, True, False])) == 16


@pytest.mark.parametrize("chain_probs", [[0.9, 0.5, 0.1, 0.7], [0.3, 0.99, 0.6, 0.0],
                                         [1.0, 1.0, 1.0, 1.0], [0.0, 0.8, 0.8, 0.8]])
def test_bit_width_distribution_sums_to_one_and_matches_monte_carlo(chain_probs):
    dist = bit_width_distribution(chain_probs)
    assert list(dist) == list(BIT_WIDTHS)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-15)
    assert all(p >= 0 for p in dist.values())

    rng = np.random.default_rng(0)
    n = 200_000
    gates = rng.random((n, 4)) < np.asarray(chain_probs)      # independent Bernoulli gates
    widths = 2 * 2 ** np.cumprod(gates, axis=1).sum(axis=1)   # prefix rule, independent of the library
    for b, p in dist.items():
        freq = np.mean(widths == b)
        assert abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12, (b, freq, p)
    assert expected_bits(chain_probs) == pytest.approx(widths.mean(), abs=4 * widths.std() / np.sqrt(n))


def test_expected_bits_closed_form():
    p4, p8, p16, p32 = 0.9, 0.5, 0.1, 0.7
    by_hand = 2 + 2 * p4 + 4 * p4 * p8 + 8 * p4 * p8 * p16 + 16 * p4 * p8 * p16 * p32
    assert expected_bits([p4, p8, p16, p32]) == pytest.approx(by_hand, rel=1e-15)
    dist = bit_width_distribution([p4, p8, p16, p32])
    assert dist[8] == pytest.approx(p4 * p8 * (1 - p16), rel=1e-15)
    assert dist[32] == pytest.approx(p4 * p8 * p16 * p32, rel=1e-15)


def test_expected_equals_deterministic_for_01_probabilities():
    rng = np.random.default_rng(1)
    for w_chain in itertools.product([0.0, 1.0], repeat=4):
        a_chain = rng.integers(0, 2, size=4).astype(float)
        z2_out = (rng.random(32) < 0.6).astype(float)
        z2_in = (rng.random(16) < 0.4).astype(float)
        det = deterministic_layer_cost("l", 12_345, w_chain, a_chain, z2_out, z2_in)
        exp = expected_layer_cost("l", 12_345, w_chain, a_chain, z2_out, z2_in)
        assert exp.bops == det.bops
        assert expected_bits(w_chain) == deterministic_bits(w_chain)
    # first layer: the activation is the fixed 8-bit input in both
    assert (expected_layer_cost("c1", 10, [1, 1, 0, 0], 8).bops
            == deterministic_layer_cost("c1", 10, [1, 1, 0, 0], 8).bops == 10 * 8 * 8)


def test_expected_layer_cost_by_hand():
    w, a = [0.9, 0.5, 0.1, 0.7], [0.5, 0.5, 0.0, 0.0]
    keep_out, keep_in = np.array([0.2, 0.6]), 0.5
    cost = expected_layer_cost("l", 1000, w, a, keep_out, keep_in)
    e_bw = 2 + 2 * 0.9 + 4 * 0.45 + 8 * 0.045 + 16 * 0.0315
    e_ba = 2 + 2 * 0.5 + 4 * 0.25
    assert cost.bops == pytest.approx(1000 * e_bw * 0.4 * e_ba * 0.5, rel=1e-14)


def test_format_bops_table():
    costs = sequential_layer_costs(LENET5_LAYERS, [8, 4, 2, 8], [4, 2, 8], [0.5, 0.75, 0.5, 1.0])
    text = format_bops_table(costs)
    lines = text.splitlines()
    for name in ("conv1", "conv2", "fc1", "fc2", "total"):
        assert sum(line.startswith(name) for line in lines) == 1
    assert "19,660,800" in text and "35,356,672" in text
    assert "55.61%" in text                                   # conv2's share: 19,660,800 / 35,356,672
    assert f"{relative_bops(costs):.4f}%" in lines[-1]


# --------------------------------------------------------------------------- bad input

def test_bad_input_errors():
    with pytest.raises(ValueError, match="macs .* must be >= 0"):
        LayerCost("x", -5, 8, 8)
    with pytest.raises(TypeError, match="whole number"):
        LayerCost("x", 10.5, 8, 8)
    with pytest.raises(ValueError, match="c_out must be >= 1"):
        conv_macs(3, -1, 3, 32)
    with pytest.raises(ValueError, match="n_in must be >= 1"):
        linear_macs(0, 10)
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_hw(4, 5)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        conv_macs(8, 16, 3, 4, groups=3)
    with pytest.raises(ValueError, match="width must be a positive"):
        vgg7_layer_macs(0.0)

    # bits where a deterministic Bayesian Bits width is required
    with pytest.raises(ValueError, match=r"one of the Bayesian Bits widths \(2, 4, 8, 16, 32\)"):
        deterministic_layer_cost("x", 10, 3, 8)
    with pytest.raises(ValueError, match="Bayesian Bits widths"):
        expected_layer_cost("x", 10, [1, 1, 0, 0], 6)
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        deterministic_bits([1, 0.5, 0, 0])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        deterministic_bits([1, 1, 1])
    with pytest.raises(ValueError, match=r"\(0, 32\]"):
        LayerCost("x", 10, 64, 8)
    with pytest.raises(ValueError, match="whole number of bits"):
        uniform_relative_bops([10, 20], 2.5, 8)

    # keep fractions and probabilities outside [0, 1]
    with pytest.raises(ValueError, match=r"keep_out .* \[0, 1\]"):
        LayerCost("x", 10, 8, 8, keep_out=1.2)
    with pytest.raises(ValueError, match=r"keep_in .* \[0, 1\]"):
        LayerCost("x", 10, 8, 8, keep_in=float("nan"))
    with pytest.raises(ValueError, match=r"keep_out_prob must lie in \[0, 1\]"):
        expected_layer_cost("x", 10, [1, 1, 0, 0], 8, [0.5, -0.1])
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        deterministic_layer_cost("x", 10, 8, 8, out_gates01=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"chain_probs must lie in \[0, 1\]"):
        bit_width_distribution([0.5, 1.5, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"chain_probs must lie in \[0, 1\]"):
        expected_bits([0.5, np.nan, 0.0, 0.0])

    # empty layer lists and wrong list contents
    with pytest.raises(ValueError, match="empty"):
        relative_bops([])
    with pytest.raises(ValueError, match="empty"):
        format_bops_table([])
    with pytest.raises(ValueError, match="empty"):
        uniform_relative_bops([], 8, 8)
    with pytest.raises(TypeError, match="not \\(name, MACs\\) pairs"):
        uniform_relative_bops(LENET5_LAYERS, 8, 8)
    with pytest.raises(TypeError, match="must be a LayerCost"):
        relative_bops([("conv1", 100)])
    with pytest.raises(ValueError, match="3 out_a_bits"):
        sequential_layer_costs(LENET5_LAYERS, [8] * 4, [8] * 4)
    with pytest.raises(ValueError, match="0 MACs"):
        relative_bops([LayerCost("x", 0, 8, 8)])

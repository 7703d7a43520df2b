"""Tests for bbits_ref.method.readout: gate readouts per quantizer and model BOPs (docs/method.md §3.3–§3.5, §5)."""
import json

import numpy as np
import pytest

from bbits_ref.method import bops
from bbits_ref.method.models import lenet5, vgg7
from bbits_ref.method.layers import BBConfig
from bbits_ref.method.readout import (BIT_CHOICES, effective_chain_probs, model_readout,
                               quantizer_readout)

OFFSET = 1.598597                                            # −β_hc·log(−γ/ζ), §3.3
LENET_MACS = [460_800, 3_276_800, 524_288, 5_120]            # §5.1
VGG_MACS = [3_538_944, 150_994_944, 75_497_472, 150_994_944, 75_497_472, 150_994_944,
            8_388_608, 10_240]


def pi(phi):
    """π(φ) = sigmoid(φ + 1.598597), in float64 from the stored (float32) logits."""
    return 1 / (1 + np.exp(-(np.asarray(phi, np.float64) + OFFSET)))


# --------------------------------------------------------------------------- at initialisation

def test_lenet5_readout_at_init_prints_6_25_percent(capsys):
    read = model_readout(lenet5())
    print(read)
    text = capsys.readouterr().out
    assert read.relative_bops == 6.25                        # exact: 8/8 bits, nothing pruned
    assert "relative BOPs (deterministic, official): 6.2500%" in text
    for name in ("conv1.weight_quantizer", "fc1.act_quantizer", "fc2.weight_quantizer",
                 "conv2", "fc1", "512/512"):
        assert name in text
    assert [(c.w_bits, c.a_bits) for c in read.layers] == [(8, 8)] * 4
    assert all(r.deterministic_bits == 8 for r in read.quantizers)
    # Expected BOPs (our addition): π = π(6) for every live gate, z16/z32 hard-cut (§3.5)
    p = pi(6.0)
    e_bits = 2 + 2 * p + 4 * p * p                           # E[b | on], 8 bits at most
    terms = [LENET_MACS[0] * e_bits * p * 8,                 # keep_out = π2, input 8 bits
             LENET_MACS[1] * e_bits * p * e_bits * p,        # keep_in = conv1's π2
             LENET_MACS[2] * e_bits * p * e_bits * p,
             LENET_MACS[3] * e_bits * e_bits * p]            # no pruning gate on fc2
    expected = 100 * sum(terms) / (sum(LENET_MACS) * 1024)
    assert read.expected_relative_bops == pytest.approx(expected, rel=1e-6)
    assert 6.2 < read.expected_relative_bops < 6.25


def test_vgg7_readout_at_init_is_32_bits_but_the_8_bit_input():
    read = model_readout(vgg7(1.0))
    total = sum(VGG_MACS) * 32 * 32
    expected = 100 * (total - VGG_MACS[0] * 32 * (32 - 8)) / total
    assert read.relative_bops == pytest.approx(expected, rel=1e-12)
    assert read.relative_bops == pytest.approx(99.569, abs=1e-3)
    assert [c.w_bits for c in read.layers] == [32] * 8
    assert [c.a_bits for c in read.layers] == [8] + [32] * 7


def test_readout_works_before_and_after_initialisation():
    model = lenet5()
    assert model_readout(model).by_name("conv1.weight_quantizer").beta is None
    model.initialize(np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32),
                     np.random.default_rng(0))
    read = model_readout(model)
    assert read.by_name("conv1.weight_quantizer").beta == pytest.approx(
        float(model.conv1.weight.data.max()))
    assert read.by_name("conv1.weight_quantizer").signed is True
    assert read.by_name("conv1.act_quantizer").signed is False


# --------------------------------------------------------------------------- one quantizer

@pytest.fixture
def tuned_lenet():
    """LeNet-5 whose fc1 weight quantizer has chosen logits (φ32 is hard-cut at −3 ≤ −2)."""
    model = lenet5()
    q = model.fc1.weight_quantizer
    q.gate_logits.data[:] = [1.0, 0.0, -1.5, -3.0]
    q.prune_logits.data[:] = np.linspace(-3.0, 3.0, 512)
    return model


def test_bit_probs_match_a_hand_computation(tuned_lenet):
    r = model_readout(tuned_lenet).by_name("fc1.weight_quantizer")
    p4, p8, p16 = pi([1.0, 0.0, -1.5])
    p32 = 0.0                                                # hard-cut gate: constant 0
    on = pi(np.linspace(-3.0, 3.0, 512).astype(np.float32)).mean()
    hand = {0: 1 - on, 2: on * (1 - p4), 4: on * p4 * (1 - p8), 8: on * p4 * p8 * (1 - p16),
            16: on * p4 * p8 * p16 * (1 - p32), 32: on * p4 * p8 * p16 * p32}
    assert list(r.bit_probs) == list(BIT_CHOICES)
    for b in BIT_CHOICES:
        assert r.bit_probs[b] == pytest.approx(hand[b], rel=1e-6, abs=1e-12)
    assert sum(r.bit_probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert r.expected_bits == pytest.approx(sum(b * p for b, p in hand.items()), rel=1e-6)
    assert r.expected_bits == pytest.approx(sum(b * p for b, p in r.bit_probs.items()), rel=1e-12)
    assert r.log2_expected_bits == pytest.approx(np.log2(r.expected_bits), rel=1e-12)
    np.testing.assert_allclose(r.chain_probs, [p4, p8, p16, 0.0], rtol=1e-6)
    # test-time gates: φ4 = 1, φ8 = 0 on; φ16 = −1.5 < −0.935303 off → 8 bits (§3.4)
    assert r.deterministic_bits == 8
    kept = int((np.linspace(-3.0, 3.0, 512).astype(np.float32) > -0.935303).sum())
    assert r.kept_channels == kept and r.channels == 512
    assert r.kept_fraction == pytest.approx(kept / 512)
    np.testing.assert_allclose(r.prune_probs, pi(np.linspace(-3.0, 3.0, 512).astype(np.float32)),
                               rtol=1e-6)


def test_without_the_hard_cut_the_32_bit_gate_counts():
    model = lenet5(BBConfig(hard_cut=False))
    q = model.fc1.act_quantizer
    q.gate_logits.data[:] = [1.0, 0.0, -1.5, -3.0]
    probs = effective_chain_probs(q)
    np.testing.assert_allclose(probs, pi([1.0, 0.0, -1.5, -3.0]), rtol=1e-6)
    r = quantizer_readout("fc1.act_quantizer", q)
    assert r.bit_probs[32] > 0 and r.bit_probs[0] == 0       # activations are never pruned
    assert r.channels is None and r.kept_fraction == 1.0


def test_hard_cut_zeroes_every_later_gate():
    q = lenet5(BBConfig(chain_init=(6.0, -2.5, 6.0, 6.0))).conv1.act_quantizer
    np.testing.assert_allclose(effective_chain_probs(q), [pi(6.0), 0, 0, 0], rtol=1e-6)
    r = quantizer_readout("a", q)
    assert r.bit_probs[8] == r.bit_probs[16] == r.bit_probs[32] == 0
    assert r.deterministic_bits == 4


def test_chain_changes_flow_into_the_bop_table(tuned_lenet):
    read = model_readout(tuned_lenet)
    kept = int((np.linspace(-3.0, 3.0, 512).astype(np.float32) > -0.935303).sum()) / 512
    hand = [bops.LayerCost("conv1", LENET_MACS[0], 8, 8),
            bops.LayerCost("conv2", LENET_MACS[1], 8, 8),
            bops.LayerCost("fc1", LENET_MACS[2], 8, 8, kept, 1.0),
            bops.LayerCost("fc2", LENET_MACS[3], 8, 8, 1.0, kept)]
    assert read.relative_bops == pytest.approx(bops.relative_bops(hand), rel=1e-12)
    # the activation feeding fc2 comes from fc1's act quantizer: 2 bits when its chain is off
    tuned_lenet.fc1.act_quantizer.gate_logits.data[:] = -10.0
    read = model_readout(tuned_lenet)
    assert read.layers[3].a_bits == 2 and read.layers[2].a_bits == 8
    hand[3] = bops.LayerCost("fc2", LENET_MACS[3], 8, 2, 1.0, kept)
    assert read.relative_bops == pytest.approx(bops.relative_bops(hand), rel=1e-12)


def test_full_precision_model_counts_32_bits():
    read = model_readout(lenet5(BBConfig(quantize=False)))
    assert read.quantizers == []
    total = sum(LENET_MACS) * 1024
    assert read.relative_bops == pytest.approx(100 * (total - LENET_MACS[0] * 32 * 24) / total)


# --------------------------------------------------------------------------- API

def test_to_dict_is_json_serialisable(tuned_lenet):
    read = model_readout(tuned_lenet)
    data = json.loads(json.dumps(read.to_dict()))
    assert data["model"] == "lenet5"
    assert data["relative_bops"] == pytest.approx(read.relative_bops)
    assert data["expected_relative_bops"] == pytest.approx(read.expected_relative_bops)
    fc1 = data["quantizers"]["fc1.weight_quantizer"]
    assert fc1["bits"] == 8 and fc1["channels"] == 512
    assert fc1["kept_channels"] == read.by_name("fc1.weight_quantizer").kept_channels
    assert len(fc1["chain_probs"]) == 4 and fc1["beta"] is None
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert data["layers"][0]["a_bits"] == 8 and data["layers"][3]["keep_out"] == 1.0


def test_by_name_error_lists_the_names(tuned_lenet):
    read = model_readout(tuned_lenet)
    with pytest.raises(KeyError, match="no quantizer named 'conv3.weight_quantizer'.*conv1"):
        read.by_name("conv3.weight_quantizer")


def test_str_contains_both_tables(tuned_lenet):
    text = str(model_readout(tuned_lenet))
    lines = text.splitlines()
    assert lines[0] == "Bayesian Bits readout: lenet5"
    kept = int((np.linspace(-3.0, 3.0, 512).astype(np.float32) > -0.935303).sum())
    assert any(line.startswith("fc1.weight_quantizer") and f"{kept}/512" in line for line in lines)
    assert "π4" in text and "MACs" in text and "w bits" in text
    assert any(line.startswith("fc2 ") and "5,120" in line for line in lines)
    assert "expected under q (addition)" in text

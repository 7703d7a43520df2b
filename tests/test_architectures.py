"""Tests for bbits_ref.method.architectures: the one description of LeNet-5 and VGG-7.

The numbers are written out by hand here (docs/method.md §5.1 MAC table, §7.1 parameter counts,
§4.4 BOP weights), independently of the code that derives them; the reference models are
checked to be built from the descriptions (names, shapes, MACs, quantizers).
"""
import ast
import math
from pathlib import Path

import numpy as np
import pytest

from bbits_ref.method import architectures as arch
from bbits_ref.method import models
from bbits_ref.method.architectures import Architecture, LayerSpec
from bbits_ref.method.layers import BBConfig

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- LeNet-5 (§7.1)

def test_lenet5_description_shapes_macs_and_counts():
    a = arch.lenet5()
    assert [(s.name, s.kind) for s in a.layers] == [
        ("conv1", "conv"), ("pool1", "pool"), ("conv2", "conv"), ("pool2", "pool"),
        ("flatten", "flatten"), ("fc1", "linear"), ("fc2", "linear")]
    assert a.shapes() == [("conv1", (32, 24, 24)), ("pool1", (32, 12, 12)),
                          ("conv2", (64, 8, 8)), ("pool2", (64, 4, 4)), ("flatten", (1024,)),
                          ("fc1", (512,)), ("fc2", (10,))]
    assert a.layer_macs() == [("conv1", 32 * 24 * 24 * 25), ("conv2", 64 * 8 * 8 * 25 * 32),
                              ("fc1", 1024 * 512), ("fc2", 5120)]
    assert [m for _, m in a.layer_macs()] == [460_800, 3_276_800, 524_288, 5_120]   # §5.1
    assert a.parameter_counts() == {"network": 582_026, "gates": 636, "ranges": 7}
    assert a.input_bits == 8 and a.name == "lenet5" and a.gate_preset == "mnist"


def test_lenet5_quantizers_and_bop_weights():
    q = arch.lenet5().quantizers()
    assert [(s.name, s.kind, s.channels) for s in q] == [
        ("conv1.weight_quantizer", "weight", 32), ("conv1.act_quantizer", "activation", None),
        ("conv2.weight_quantizer", "weight", 64), ("conv2.act_quantizer", "activation", None),
        ("fc1.weight_quantizer", "weight", 512), ("fc1.act_quantizer", "activation", None),
        ("fc2.weight_quantizer", "weight", None)]          # logits: FP, last layer never pruned
    # §5.1 column; an activation quantizer is weighted by the layer that consumes it (§4.4)
    np.testing.assert_allclose([s.mac_weight for s in q],
                               [0.140625, 1.0, 1.0, 0.16, 0.16, 0.0015625, 0.0015625],
                               rtol=1e-15)
    assert [s.macs for s in q] == [460_800, 3_276_800, 3_276_800, 524_288, 524_288, 5_120, 5_120]


# --------------------------------------------------------------------------- VGG-7 (§7.2)

def test_vgg7_description_at_full_width():
    a = arch.vgg7()
    assert [m for _, m in a.layer_macs()] == [3_538_944, 150_994_944, 75_497_472, 150_994_944,
                                              75_497_472, 150_994_944, 8_388_608, 10_240]
    convs = [(3, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    network = (sum(9 * i * o + 2 * o for i, o in convs)            # no conv bias; BN γ and β
               + 8192 * 1024 + 2 * 1024 + 1024 * 10 + 10)
    assert a.parameter_counts() == {"network": network, "gates": 60 + 2816, "ranges": 15}
    assert a.output_shape == (10,) and a.name == "vgg7(width=1)"
    assert sum(s.kind == "weight" for s in a.quantizers()) == 8
    assert sum(s.kind == "activation" for s in a.quantizers()) == 7


def test_vgg7_width_scales_every_hidden_width():
    assert arch.vgg7_widths(0.5) == (64, 128, 256, 512)
    assert arch.vgg7_widths(1e-6) == (1, 1, 1, 1)                 # at least one channel
    a = arch.vgg7(0.25)
    assert [s.out_size for s in a.quantized_layers()] == [32, 32, 64, 64, 128, 128, 256, 10]
    assert dict(a.shapes())["flatten"] == (128 * 4 * 4,)
    assert a.name == "vgg7(width=0.25)"
    for width in (0, -1.0, float("nan"), float("inf"), "wide", True):
        with pytest.raises(ValueError, match="width must be a positive number"):
            arch.vgg7(width)


def test_get_architecture():
    assert arch.get_architecture("vgg7", 0.5) == arch.vgg7(0.5)
    assert arch.get_architecture("lenet5") == arch.lenet5()
    with pytest.raises(ValueError, match="no width multiplier"):
        arch.get_architecture("lenet5", 0.5)
    with pytest.raises(ValueError, match="'lenet5' or 'vgg7'"):
        arch.get_architecture("resnet18")


# --------------------------------------------------------------------------- the reference uses it

@pytest.mark.parametrize("config", [BBConfig(), BBConfig(pruning=False),
                                    BBConfig(learn_bits=False, weight_bits=4, act_bits=8),
                                    BBConfig(quantize=False)],
                         ids=["default", "no_pruning", "fixed_bits", "full_precision"])
@pytest.mark.parametrize("description", [arch.lenet5(), arch.vgg7(0.125)], ids=["lenet5", "vgg7"])
def test_state_layout_is_the_reference_models(description, config):
    model = models.build(description, config, rng=0)
    x = np.random.default_rng(0).random((2,) + description.input_shape).astype(np.float32)
    model.initialize(x, np.random.default_rng(1))
    state = model.state_dict()
    flags = dict(quantize=config.quantize, learn_bits=config.learn_bits, pruning=config.pruning)
    shapes = description.state_shapes(**flags)
    assert list(shapes) == sorted(state, key=list(shapes).index) and set(shapes) == set(state)
    for name, (shape, _) in shapes.items():
        assert state[name].shape == shape, name
    counts = models.count_parameters(model)
    assert counts == description.parameter_counts(**flags)
    assert model.layer_macs() == description.layer_macs()
    assert [n for n, _ in model.quantizers()] == [s.name for s in description.quantizers()
                                                  if config.quantize]


def test_a_new_description_builds_a_reference_model():
    """Any consistent description builds: a stride-2, padded conv, then a pool and two fcs."""
    hidden = dict(relu=True, act_quant=True, prune=True)
    tiny = Architecture("tiny", (2, 9, 9), (
        LayerSpec("conv1", "conv", 2, 4, kernel=3, stride=2, padding=1, **hidden),   # 5×5
        LayerSpec("pool1", "pool", kernel=2, stride=2),                              # 2×2
        LayerSpec("flatten", "flatten"),
        LayerSpec("fc1", "linear", 16, 6, **hidden),
        LayerSpec("fc2", "linear", 6, 3)), gate_preset="cifar10")
    assert tiny.layer_macs() == [("conv1", 4 * 5 * 5 * 9 * 2), ("fc1", 96), ("fc2", 18)]
    model = models.build(tiny, rng=0)
    out = model(np.random.default_rng(0).random((5, 2, 9, 9)), rng=np.random.default_rng(1))
    assert out.shape == (5, 3)
    assert model.fc1.act_quantizer.mac_weight == 18 / 1800          # fc2 over conv1


# --------------------------------------------------------------------------- bad descriptions

@pytest.mark.parametrize("layers, match", [
    ((LayerSpec("c", "conv", 3, 4, kernel=3),),
     r"'c' \(conv\) expects inputs of shape \(3, H, W\)"),
    ((LayerSpec("c", "conv", 1, 4, kernel=3), LayerSpec("f", "linear", 4, 2)),
     r"'f' \(linear\) expects inputs of shape \(4,\)"),
    ((LayerSpec("c", "conv", 1, 4, kernel=9),), "does not fit"),
    ((LayerSpec("c", "conv", 1, 4, kernel=3), LayerSpec("c", "pool", kernel=2, stride=2)),
     "unique"),
    ((LayerSpec("p", "pool", kernel=2, stride=2),), "at least one conv or linear"),
])
def test_inconsistent_descriptions_are_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        Architecture("bad", (1, 8, 8), layers, gate_preset="mnist")


def test_bad_layer_specs_are_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        LayerSpec("x", "attention")
    with pytest.raises(ValueError, match="in_size must be a whole number"):
        LayerSpec("x", "linear", 2.5, 3)
    with pytest.raises(ValueError, match="needs in_size and out_size >= 1"):
        LayerSpec("x", "linear", 0, 3)
    last_quantized = Architecture("bad", (4,), (LayerSpec("fc", "linear", 4, 2, act_quant=True),),
                                  gate_preset="mnist")
    with pytest.raises(ValueError, match="no activation quantizer"):
        last_quantized.quantizers()
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 1, 28, 28\)"):
        arch.lenet5().check_input((2, 28, 28))


def test_description_modules_import_no_engine():
    """architectures and constants sit at the bottom of method/: any implementation may use them."""
    for name in ("architectures", "constants"):
        tree = ast.parse((ROOT / "bbits_ref" / "method" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for a in node.names}
        project = {m for m in imported if m.split(".")[0] == "bbits_ref"}
        assert project <= {"bbits_ref.method.constants"}, (name, project)
        assert not {m.split(".")[0] for m in imported} & {"numpy", "torch"}, (name, imported)
    assert math.prod(arch.lenet5().output_shape) == 10

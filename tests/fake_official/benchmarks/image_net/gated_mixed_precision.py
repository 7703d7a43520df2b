"""STAND-IN for the official gated_mixed_precision.py: NOT the official code (see the README).

Imports torchvision and the MNIST data-loader module at import time, as §9.1 says the original
does.  ``set_rn_q``, ``gate_loss``, ``assign_macs`` and ``print_bitops`` behave as §4.3–§5 and
§9.1 describe.
"""
import torchvision  # noqa: F401
from torchvision import transforms  # noqa: F401

from anonymized_compression_package.quantization.straight_through import BayesianBitsQuantizer
from benchmarks.image_net.mixed_precision_utils import get_groups_and_macs  # noqa: F401
from benchmarks.mnist.mnist_data_loader import MNIST_TRANSFORM  # noqa: F401

INPUT_BITS = 8


def set_rn_q(model, weights, acts):
    for m in model.modules():
        if hasattr(m, "quantize_weights"):
            m.quantize_weights, m.quantize_acts = bool(weights), bool(acts)


def gate_loss(model):
    return sum(m.regularizer() for m in model.modules() if isinstance(m, BayesianBitsQuantizer))


def assign_macs(per_layer_macs, groups, model_name):
    """w_t = MAC_t / MAC_max: a weight quantizer its layer's MACs, an activation quantizer the
    MACs of the layer that consumes it (§4.4)."""
    top = max(per_layer_macs.values())
    by_name = {g["layer"]: g for g in groups}
    for g in groups:
        g["module"].weight_quantizer.quantizer.mac_weight = per_layer_macs[g["layer"]] / top
        if g["input_from"] is not None:
            producer = by_name[g["input_from"]]["module"].activation_quantizer
            producer.quantizer.mac_weight = per_layer_macs[g["layer"]] / top


def print_bitops(per_layer_macs, groups, model_name, model, no_print=False):
    """Deterministic relative BOPs in percent (§5) and a text summary."""
    model.eval()
    by_name = {g["layer"]: g for g in groups}
    total = base = 0.0
    lines = []
    for g in groups:
        m = g["module"]
        wq = m.weight_quantizer.quantizer
        keep = wq.keep_ratio()
        if g["input_from"] is None:
            a_bits = INPUT_BITS
        else:
            prev = by_name[g["input_from"]]["module"]
            a_bits = prev.activation_quantizer.quantizer.bit_width()
            keep *= prev.weight_quantizer.quantizer.keep_ratio()
        macs = per_layer_macs[g["layer"]]
        total += macs * wq.bit_width() * a_bits * keep
        base += macs * 32 * 32
        lines.append(f"{g['layer']}: w{wq.bit_width()} a{a_bits} keep {keep:.3f}")
    text = "\n".join(lines)
    if not no_print:
        print(text)
    return 100.0 * total / base, text

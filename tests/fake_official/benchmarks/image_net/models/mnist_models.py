"""STAND-IN for the official mnist_models.py: NOT the official code.

Written for the bbits_ref tests from the description in docs/method.md §7.1 and §9.1 (class
name, constructor arguments, parameter names, which quantizers exist); nothing is copied from
Qualcomm-AI-research/BayesianBits.  Like the original it needs only
``anonymized_compression_package`` (and torch).
"""
import torch
import torch.nn.functional as F
from torch import nn

from anonymized_compression_package.quantization.straight_through import BayesianBitsQuantizer


class Quantizer(nn.Module):
    """Holds one BayesianBitsQuantizer as ``.quantizer`` (the parameter path of §9.1)."""

    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, x):
        return self.quantizer(x)


class _Quantized:
    """Weight and activation quantizers around a conv or linear op; ReLU inside the layer."""

    def _setup(self, relu, prune, qargs, label):
        self.relu = relu
        self.quantize_weights = self.quantize_acts = False
        self.weight_quantizer = Quantizer(BayesianBitsQuantizer(
            include_pruning=prune, label=label + ".w", **qargs))
        self.activation_quantizer = Quantizer(BayesianBitsQuantizer(label=label + ".a", **qargs))
        self._cached = None

    def train(self, mode=True):
        self._cached = None
        return super().train(mode)

    def quantized_weight(self):
        if not self.quantize_weights:
            return self.weight
        if self.training:
            return self.weight_quantizer(self.weight)
        if self._cached is None:                      # eval mode caches the quantized weight
            self._cached = self.weight_quantizer(self.weight).detach()
        return self._cached

    def finish(self, y):
        if self.relu:
            y = F.relu(y)
        if self.quantize_acts and self.activation_quantizer is not None:
            y = self.activation_quantizer(y)
        return y


class QuantConv(_Quantized, nn.Conv2d):
    def __init__(self, c_in, c_out, kernel, relu, prune, qargs, label):
        nn.Conv2d.__init__(self, c_in, c_out, kernel)
        self._setup(relu, prune, qargs, label)

    def forward(self, x):
        return self.finish(F.conv2d(x, self.quantized_weight(), self.bias))


class QuantLinear(_Quantized, nn.Linear):
    def __init__(self, n_in, n_out, relu, prune, qargs, label):
        nn.Linear.__init__(self, n_in, n_out)
        self._setup(relu, prune, qargs, label)

    def forward(self, x):
        return self.finish(F.linear(x, self.quantized_weight(), self.bias))


class LeNet5Quantized(nn.Module):
    """conv 1→32 5×5, ReLU, pool, conv 32→64 5×5, ReLU, pool, fc 1024→512, ReLU, fc 512→10."""

    def __init__(self, method="bayesian_bits", n_bits=16, n_bits_act=16,
                 per_channel_weights=False, percentile=False, gating_method="l0",
                 gamma_4_init=6.0, gamma_8_init=6.0, gamma_16_init=6.0, gamma_32_init=6.0,
                 learned_scale="range", clip_input="range", checkpointing=False,
                 include_pruning=True, prune_only=False, reg_type="bop", fixed_8bit=False,
                 fixed_48bit=False):
        super().__init__()
        if method != "bayesian_bits" or gating_method != "l0" or reg_type != "bop":
            raise NotImplementedError("the stand-in knows only the MNIST recipe of §9.1")
        qargs = dict(n_bits=n_bits, gamma_4_init=gamma_4_init, gamma_8_init=gamma_8_init,
                     gamma_16_init=gamma_16_init, gamma_32_init=gamma_32_init)
        self.features = nn.Sequential(
            QuantConv(1, 32, 5, True, include_pruning, qargs, "conv1"), nn.MaxPool2d(2),
            QuantConv(32, 64, 5, True, include_pruning, qargs, "conv2"), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            QuantLinear(1024, 512, True, include_pruning, qargs, "fc1"),
            QuantLinear(512, 10, False, include_pruning, qargs, "fc2"))

    def set_full_precision_logits(self):
        last = self.classifier[1]
        last.activation_quantizer = None
        last.weight_quantizer.quantizer.include_pruning = False

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

"""STAND-IN for the official mixed_precision_utils.py: NOT the official code (see the README).

Imports torchvision at import time, as §9.1 says the original does, so the adapter's stand-in
modules are exercised when torchvision is not installed.
"""
from collections import OrderedDict

import torch
import torchvision  # noqa: F401  (imported by the original at import time, §9.1)
from torch import nn

from benchmarks.mnist import mnist_data_loader  # noqa: F401


def get_groups_and_macs(model, dataset, model_name):
    """MACs per conv/linear layer from one eval-mode pass of batch 1 (§4.4), and the groups."""
    if dataset != "mnist" or model_name != "lenet5quantized":
        raise NotImplementedError("the stand-in knows only MNIST LeNet-5")
    macs, hooks = OrderedDict(), []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def hook(name):
        def count(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
                macs[name] = int(output[0].numel() * k)
            else:
                macs[name] = module.in_features * module.out_features
        return count

    for name, m in layers:
        hooks.append(m.register_forward_hook(hook(name)))
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28, dtype=dtype))
    for h in hooks:
        h.remove()
    groups = []
    previous = None
    for name, m in layers:
        groups.append({"layer": name, "module": m, "input_from": previous})
        previous = name
    return macs, groups

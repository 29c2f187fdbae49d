"""Parameter and multiply-accumulate counts measured on real modules with forward hooks."""
from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, *inputs: torch.Tensor, **kwargs) -> int:
    """Multiply-accumulates of every Conv2d and Linear call during one forward pass."""
    total = 0

    def conv_hook(layer: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = layer.kernel_size
        total += out.numel() // out.shape[0] * (layer.in_channels // layer.groups) * kh * kw

    def linear_hook(layer: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * layer.in_features

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*inputs, **kwargs)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return total

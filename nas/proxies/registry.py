"""The proxy registry and what every proxy receives."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..registry import Registry

PROXIES: Registry = Registry("zero-cost proxy")


@dataclass
class ProxyInputs:
    """One fixed minibatch (inputs, integer targets) and the loss the network is scored with."""

    inputs: torch.Tensor
    targets: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy


def weighted_layers(net: nn.Module) -> list[nn.Module]:
    """The layers every proxy scores: convolutions and linear layers (their weights, not biases)."""
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 inside: float32 convolutions and matrix products round their operands to 10 bits there.

    cuDNN's default is TF32. On an H100 it moved the gradient-based scores (fisher, grad_norm, grasp,
    snip) 0.1-0.5 % from the CPU's values, enough to swap architectures whose scores are close; a
    proxy is one cheap measurement, so it gets full precision (then the GPU agrees to 1e-6).
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def score_network(name: str, net: nn.Module, batch: ProxyInputs) -> float:
    """Score ``net`` (images -> logits) with proxy ``name`` on a private copy, so ``net`` is untouched."""
    proxy = PROXIES.get(name)
    with full_float32():
        return float(proxy(copy.deepcopy(net), batch))

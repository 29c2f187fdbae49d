"""The proxy registry and what every proxy receives."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

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


def score_network(name: str, net: nn.Module, batch: ProxyInputs) -> float:
    """Score ``net`` (images -> logits) with proxy ``name`` on a private copy, so ``net`` is untouched."""
    proxy = PROXIES.get(name)
    return float(proxy(copy.deepcopy(net), batch))

"""The proxy registry and what every proxy receives."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..registry import ConfigError, Registry

PROXIES: Registry = Registry("zero-cost proxy")

NETWORKS = ("benchmark", "standalone")
# Whose code each proxy follows. With ``proxies.network: benchmark`` a proxy scores the NB201 network
# that code builds: zero-cost-nas (Abdelfattah et al.) rebuilds the cells itself (its nasbench2.py:
# cells' BN without affine parameters or running statistics); NASWOT (Mellor et al.) takes the
# benchmark's own network from the NB201 API (``get_cell_based_tiny_net``), which is our stand-alone one.
NASWOT_PROXIES = frozenset({"naswot"})


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


def build_proxy_backbone(space: Any, arch: tuple[int, ...], in_channels: int, proxy: str, network: str) -> nn.Module:
    """The untrained backbone proxy ``proxy`` scores under ``proxies.network`` (``network``)."""
    check_network(space, network)
    if network == "standalone" or proxy in NASWOT_PROXIES:
        return space.build_network(arch, in_channels)
    return space.build_zero_cost_network(arch, in_channels)


def check_network(space: Any, network: str) -> None:
    """ConfigError unless ``proxies.network`` is allowed and ``space`` can build that network."""
    if network not in NETWORKS:
        raise ConfigError(f"config key 'proxies.network': {network!r} is not allowed; allowed: {', '.join(NETWORKS)}")
    if network == "benchmark" and not hasattr(space, "build_zero_cost_network"):
        raise ConfigError(f"config key 'proxies.network': 'benchmark' needs zero-cost-nas's network for space "
                          f"{space.name!r}, which this project does not build; use 'standalone'")


def batch_setting(proxies_cfg: dict[str, Any], proxy: str) -> tuple[int, bool]:
    """(batch size, augmented?) of the minibatch ``proxy`` sees, as its paper's code draws it by default."""
    if proxy in NASWOT_PROXIES:
        return int(proxies_cfg["naswot_batch_size"]), bool(proxies_cfg["naswot_augment"])
    return int(proxies_cfg["batch_size"]), bool(proxies_cfg["augment"])

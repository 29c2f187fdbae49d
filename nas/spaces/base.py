"""What every search space provides: encoding, sampling, networks, costs and the RLNAS angle vector."""
from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..registry import ConfigError

Arch = tuple[int, ...]
"""An architecture is a tuple of gene values; gene g takes values in range(space.choices[g])."""


@dataclass(frozen=True)
class ArchCost:
    params: int
    flops: int  # multiply-accumulates of conv and linear layers, the convention NAS papers call FLOPs


class Backbone(nn.Module):
    """A network trunk: maps images to a feature map (B, out_channels, h, w) after its final activation."""

    out_channels: int


class Supernet(Backbone):
    """A weight-sharing network; ``forward(x, arch=...)`` runs one path, ``forward(x, mixture=...)`` all ops."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, arch: Arch | None = None, mixture: torch.Tensor | None = None) -> torch.Tensor:
        ...


class SearchSpace(abc.ABC):
    name: str
    choices: Sequence[int]

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    # ---- encoding -------------------------------------------------------------------------------
    @abc.abstractmethod
    def num_archs(self) -> int: ...

    @abc.abstractmethod
    def to_str(self, arch: Arch) -> str: ...

    @abc.abstractmethod
    def from_str(self, text: str) -> Arch: ...

    @abc.abstractmethod
    def to_index(self, arch: Arch) -> int: ...

    @abc.abstractmethod
    def from_index(self, index: int) -> Arch: ...

    # ---- sampling ---------------------------------------------------------------------------------
    def is_trainable(self, arch: Arch) -> bool:
        """Whether single-path supernet training may draw this architecture."""
        return True

    def sample(self, rng: random.Random) -> Arch:
        """Uniform single-path sample, redrawn until it is trainable."""
        while True:
            arch = tuple(rng.randrange(n) for n in self.choices)
            if self.is_trainable(arch):
                return arch

    def sample_distinct(self, count: int, rng: random.Random) -> list[Arch]:
        if count > self.num_archs():
            raise ConfigError(
                f"cannot sample {count} distinct architectures: space {self.name!r} holds {self.num_archs()}"
            )
        chosen = rng.sample(range(self.num_archs()), count)
        return [self.from_index(i) for i in chosen]

    # ---- networks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_network(self, arch: Arch, in_channels: int) -> Backbone: ...

    @abc.abstractmethod
    def build_supernet(self, in_channels: int) -> Supernet: ...

    @abc.abstractmethod
    def cost(self, arch: Arch, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ArchCost: ...

    @abc.abstractmethod
    def angle_vector(self, supernet: Supernet, head: nn.Module, arch: Arch) -> torch.Tensor | None:
        """The RLNAS weight vector of ``arch`` in ``supernet``; None when no input-output path survives."""

    def describe(self) -> dict[str, Any]:
        return {"space": self.name, **self.cfg}

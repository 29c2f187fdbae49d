"""Search spaces, one module each, chosen by ``space.name``."""
from __future__ import annotations

from typing import Any

from . import darts, nb101, nb201  # noqa: F401  (each registers its space)
from .base import Arch, ArchCost, Backbone, SearchSpace, Supernet
from .registry import SPACES


def build_space(space_cfg: dict[str, Any]) -> SearchSpace:
    return SPACES.get(space_cfg["name"])(space_cfg)


__all__ = ["Arch", "ArchCost", "Backbone", "SearchSpace", "Supernet", "SPACES", "build_space"]

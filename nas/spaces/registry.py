"""The search-space registry; each space module registers itself on import."""
from __future__ import annotations

from ..registry import Registry

SPACES: Registry = Registry("space")

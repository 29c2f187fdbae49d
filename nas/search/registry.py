"""The search-method registry and the bookkeeping every method shares (cache, trace, ranking)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import Registry
from ..spaces import Arch, SearchSpace

METHODS: Registry = Registry("search method")


@dataclass(frozen=True)
class Evaluated:
    arch: Arch
    fitness: float
    generation: int
    order: int  # evaluation order, for the trace


class Scorer:
    """Scores each architecture once and records the trace of every evaluation."""

    def __init__(self, space: SearchSpace, fitness: Callable[[Arch], float]) -> None:
        self.space = space
        self.fitness = fitness
        self.cache: dict[Arch, Evaluated] = {}

    def score(self, arch: Arch, generation: int) -> float:
        if arch not in self.cache:
            self.cache[arch] = Evaluated(arch, float(self.fitness(arch)), generation, len(self.cache))
        return self.cache[arch].fitness

    def ranked(self, limit: int | None = None) -> list[Evaluated]:
        """Best first; ties broken by the benchmark index so the order is reproducible."""
        items = sorted(self.cache.values(), key=lambda e: (-e.fitness, self.space.to_index(e.arch)))
        return items if limit is None else items[:limit]

    def trace(self) -> list[Evaluated]:
        return sorted(self.cache.values(), key=lambda e: e.order)

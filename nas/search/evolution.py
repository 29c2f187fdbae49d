"""Evolutionary search with the RLNAS/SPOS settings: keep the top parents, mutate, cross over, refill randomly."""
from __future__ import annotations

import random
from typing import Any, Callable

from ..spaces import Arch, SearchSpace
from .registry import METHODS, Evaluated, Scorer


def _mutate(parent: Arch, space: SearchSpace, prob: float, allow_none: bool, rng: random.Random) -> Arch:
    genes = list(parent)
    low = 0 if allow_none else 1  # RLNAS draws randint(1, n): never `none`
    for g, choices in enumerate(space.choices):
        if rng.random() < prob:
            genes[g] = rng.randrange(low, choices)
    return tuple(genes)


def _crossover(a: Arch, b: Arch, rng: random.Random) -> Arch:
    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))


def _children(count: int, make: Callable[[], Arch], space: SearchSpace, seen: set[Arch], batch: list[Arch]) -> list[Arch]:
    """Up to ``count`` new, trainable, never-seen children; bounded tries as in SPOS (10 x count)."""
    out: list[Arch] = []
    for _ in range(10 * count):
        if len(out) >= count:
            break
        child = make()
        if child in seen or child in batch or child in out or not space.is_trainable(child):
            continue
        out.append(child)
    return out


@METHODS.register("evolution")
def evolution(space: SearchSpace, fitness: Callable[[Arch], float], cfg: dict[str, Any], rng: random.Random) -> Scorer:
    scorer = Scorer(space, fitness)
    population: list[Arch] = []
    population.extend(_children(cfg["population"], lambda: space.sample(rng), space, set(), population))
    parents: list[Evaluated] = []
    for generation in range(cfg["generations"]):
        for arch in population:
            scorer.score(arch, generation)
        parents = scorer.ranked(limit=cfg["parents"])
        if generation == cfg["generations"] - 1:
            break
        seen = set(scorer.cache)
        parent_archs = [p.arch for p in parents]
        mutated = _children(cfg["mutations"], lambda: _mutate(rng.choice(parent_archs), space, cfg["mutate_prob"],
                                                              cfg["mutate_allow_none"], rng), space, seen, [])
        crossed = _children(cfg["crossovers"], lambda: _crossover(rng.choice(parent_archs), rng.choice(parent_archs), rng),
                            space, seen, mutated)
        population = mutated + crossed
        population += _children(cfg["population"] - len(population), lambda: space.sample(rng), space, seen, population)
    return scorer

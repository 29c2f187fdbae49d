"""Random search: score distinct uniformly drawn architectures, keep the best.

``search.candidates`` decides what is drawn, as for evolution: ``rlnas``, uniform over every cell of the
space; ``trainable``, only cells a single-path supernet step can reach, drawn as such a step draws one.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from ..spaces import Arch, SearchSpace
from .registry import METHODS, Scorer


@METHODS.register("random")
def random_search(space: SearchSpace, fitness: Callable[[Arch], float], cfg: dict[str, Any], rng: random.Random,
                  admissible: Callable[[Arch], bool] | None = None) -> Scorer:
    scorer = Scorer(space, fitness)
    draw = space.sample if cfg["candidates"] == "trainable" else space.sample_uniform
    seen: set[Arch] = set()
    for _ in range(20 * cfg["random_samples"]):
        if len(seen) >= cfg["random_samples"]:
            break
        arch = draw(rng)
        if arch not in seen and (admissible is None or admissible(arch)):
            seen.add(arch)
            scorer.score(arch, 0)
    return scorer

"""Random search: score distinct uniformly drawn trainable architectures, keep the best."""
from __future__ import annotations

import random
from typing import Any, Callable

from ..spaces import Arch, SearchSpace
from .registry import METHODS, Scorer


@METHODS.register("random")
def random_search(space: SearchSpace, fitness: Callable[[Arch], float], cfg: dict[str, Any], rng: random.Random) -> Scorer:
    scorer = Scorer(space, fitness)
    seen: set[Arch] = set()
    for _ in range(20 * cfg["random_samples"]):
        if len(seen) >= cfg["random_samples"]:
            break
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            scorer.score(arch, 0)
    return scorer

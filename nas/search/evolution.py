"""Evolutionary search with the RLNAS/SPOS settings: keep the top parents, mutate, cross over, refill randomly.

``search.candidates`` decides which cells a generation takes in:

- ``rlnas``, RLNAS's NB201 ``EvolutionTrainer`` (``random_can``, ``get_mutation``, ``get_crossover``,
  ``legal``): the initial population and the random refills are uniform over every cell of the space;
  a drawn cell is kept exactly when no earlier draw of this search was kept, with no other check.
  Mutation and the random draws go on until they have their count (upstream without bound; here
  at most ``RLNAS_DRAWS_PER_CELL`` draws per cell wanted), crossover stops after 10 x (count + 1) draws.
- ``trainable``: only cells a single-path supernet step can reach are kept, besides never seen; the
  initial population and the refills are drawn as a supernet step draws a cell (``space.sample``); at
  most 10 x count draws per kind, as in SPOS.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from ..spaces import Arch, SearchSpace
from .registry import METHODS, Evaluated, Scorer

# Upstream's mutation and random draws loop until they have their count; this bound only stops a
# search that could never fill it (e.g. mutate_prob 0), far above what RLNAS's settings need.
RLNAS_DRAWS_PER_CELL = 1000
TRAINABLE_DRAWS_PER_CELL = 10


class _Candidates:
    """Draws the cells of a generation under one ``search.candidates`` rule; remembers every cell it kept."""

    def __init__(self, space: SearchSpace, rule: str, rng: random.Random,
                 admissible: Callable[[Arch], bool] | None = None) -> None:
        self.space = space
        self.trainable_only = rule == "trainable"
        self.rng = rng
        self.admissible = admissible
        self.kept: set[Arch] = set()

    def _keep(self, count: int, draw: Callable[[], Arch], max_draws: int) -> list[Arch]:
        out: list[Arch] = []
        for _ in range(max_draws):
            if len(out) >= count:
                break
            cell = draw()
            if cell in self.kept or (self.trainable_only and not self.space.is_trainable(cell)):
                continue
            if self.admissible is not None and not self.admissible(cell):
                continue
            self.kept.add(cell)
            out.append(cell)
        return out

    def _per_cell(self) -> int:
        return TRAINABLE_DRAWS_PER_CELL if self.trainable_only else RLNAS_DRAWS_PER_CELL

    def random(self, count: int) -> list[Arch]:
        draw = self.space.sample if self.trainable_only else self.space.sample_uniform
        return self._keep(count, lambda: draw(self.rng), self._per_cell() * count)

    def mutations(self, count: int, parents: list[Arch], prob: float, allow_none: bool, cells: str) -> list[Arch]:
        return self._keep(count, lambda: self.space.mutate(self.rng.choice(parents), self.rng, prob, allow_none, cells),
                          self._per_cell() * count)

    def crossovers(self, count: int, parents: list[Arch]) -> list[Arch]:
        # RLNAS: at most count + 1 batches of 10 draws
        max_draws = 10 * count if self.trainable_only else 10 * (count + 1)
        return self._keep(count, lambda: self.space.crossover(self.rng.choice(parents), self.rng.choice(parents), self.rng),
                          max_draws)


@METHODS.register("evolution")
def evolution(space: SearchSpace, fitness: Callable[[Arch], float], cfg: dict[str, Any], rng: random.Random,
              admissible: Callable[[Arch], bool] | None = None) -> Scorer:
    """``admissible`` (e.g. a FLOPs cap, RLNAS ``legal``) must hold for every cell a generation takes in."""
    scorer = Scorer(space, fitness)
    candidates = _Candidates(space, cfg["candidates"], rng, admissible)
    population = candidates.random(cfg["population"])
    parents: list[Evaluated] = []
    for generation in range(cfg["generations"]):
        for arch in population:
            scorer.score(arch, generation)
        parents = scorer.ranked(limit=cfg["parents"])
        if generation == cfg["generations"] - 1:
            break
        parent_archs = [p.arch for p in parents]
        population = candidates.mutations(cfg["mutations"], parent_archs, cfg["mutate_prob"], cfg["mutate_allow_none"],
                                           cfg["mutate_cells"])
        population += candidates.crossovers(cfg["crossovers"], parent_archs)
        population += candidates.random(cfg["population"] - len(population))
    return scorer

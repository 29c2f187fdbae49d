"""Evolution's candidates: RLNAS's NB201 rule (uniform over all cells, never-seen children) or trainable cells only."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from nas.config import load_config
from nas.search import METHODS
from nas.spaces import build_space


def _fitness(arch):
    return float(sum((i + 1) * gene for i, gene in enumerate(arch)) % 17)  # deterministic, many ties broken by index


def _search(*overrides, seed=0):
    cfg = load_config(None, list(overrides))
    space = build_space(cfg["space"])
    scorer = METHODS.get("evolution")(space, _fitness, cfg["search"], random.Random(seed))
    return space, cfg["search"], scorer


def _initial(scorer):
    return [e.arch for e in scorer.trace() if e.generation == 0]


def test_rlnas_initial_population_is_uniform_over_all_cells_and_seeded():
    space, cfg, scorer = _search("search.generations=1")
    population = _initial(scorer)
    assert len(population) == cfg["population"] == 100 and len(set(population)) == 100
    untrainable = [a for a in population if not space.is_trainable(a)]
    # about 24 % of the 15,625 cells have a node whose inputs are all none
    assert 10 <= len(untrainable) <= 40, len(untrainable)
    assert any(a[0] == 0 for a in population)  # node 1's only input is none: never drawn by a supernet step
    assert _initial(_search("search.generations=1")[2]) == population
    assert _initial(_search("search.generations=1", seed=1)[2]) != population


def test_trainable_rule_never_takes_an_untrainable_cell():
    space, cfg, scorer = _search("search.candidates=trainable")
    trace = scorer.trace()
    assert len(trace) == cfg["population"] * cfg["generations"]
    assert all(space.is_trainable(e.arch) for e in trace)


def test_rlnas_rule_keeps_untrainable_children_too():
    space, cfg, scorer = _search()
    later = [e.arch for e in scorer.trace() if e.generation > 0]
    assert any(not space.is_trainable(a) for a in later)


@pytest.mark.parametrize("rule", ["rlnas", "trainable"])
def test_sizes_follow_the_config_and_no_cell_is_scored_twice(rule):
    space, cfg, scorer = _search(f"search.candidates={rule}", "search.population=40", "search.parents=7",
                                 "search.mutations=15", "search.crossovers=10", "search.generations=5",
                                 "search.topk=4")
    trace = scorer.trace()
    per_generation = Counter(e.generation for e in trace)
    assert per_generation == {g: 40 for g in range(5)}
    assert len({e.arch for e in trace}) == len(trace)
    ranked = scorer.ranked(limit=cfg["topk"])
    assert len(ranked) == 4
    assert [e.fitness for e in ranked] == sorted((e.fitness for e in trace), reverse=True)[:4]


def test_mutation_children_come_first_and_never_draw_none():
    # mutate_prob 1: every gene of a mutated child is redrawn from 1..4 (RLNAS randint(1, n))
    _, cfg, scorer = _search("search.population=30", "search.mutations=12", "search.crossovers=0",
                             "search.mutate_prob=1.0", "search.generations=2")
    second = [e.arch for e in scorer.trace() if e.generation == 1]
    assert len(second) == 30
    assert all(0 not in arch for arch in second[:12])
    assert any(0 in arch for arch in second[12:])  # the random refill may draw none


def test_mutate_allow_none():
    space = build_space(load_config(None)["space"])
    rng = random.Random(0)
    parent = (1, 2, 3, 4, 1, 2)
    without = {g for _ in range(500) for g in space.mutate(parent, rng, 1.0, False, 'normal')}
    with_none = {g for _ in range(500) for g in space.mutate(parent, rng, 1.0, True, 'normal')}
    assert without == {1, 2, 3, 4} and with_none == {0, 1, 2, 3, 4}


def test_crossover_children_take_each_gene_from_one_of_the_parents():
    space, _, scorer = _search("search.population=30", "search.parents=2", "search.mutations=0",
                               "search.crossovers=6", "search.generations=2")
    first = [e for e in scorer.trace() if e.generation == 0]
    parents = [e.arch for e in sorted(first, key=lambda e: (-e.fitness, space.to_index(e.arch)))[:2]]
    child = next(e.arch for e in scorer.trace() if e.generation == 1)  # crossovers come before the refill
    assert child not in parents and all(g in (p, q) for g, p, q in zip(child, *parents))


@pytest.mark.parametrize("rule", ["rlnas", "trainable"])
def test_children_that_cannot_be_new_end_their_draws(rule):
    # one parent, no mutation: every child is the parent itself, already seen; the random refill fills up
    _, cfg, scorer = _search(f"search.candidates={rule}", "search.population=20", "search.parents=1",
                             "search.mutations=5", "search.crossovers=5", "search.mutate_prob=0.0",
                             "search.generations=3")
    assert Counter(e.generation for e in scorer.trace()) == {0: 20, 1: 20, 2: 20}


@pytest.mark.parametrize("rule", ["rlnas", "trainable"])
def test_random_search_draws_as_the_candidates_rule_says(rule):
    cfg = load_config(None, [f"search.candidates={rule}", "search.method=random", "search.random_samples=200"])
    space = build_space(cfg["space"])
    scorer = METHODS.get("random")(space, _fitness, cfg["search"], random.Random(0))
    drawn = [e.arch for e in scorer.trace()]
    assert len(drawn) == len(set(drawn)) == 200
    untrainable = sum(not space.is_trainable(a) for a in drawn)
    if rule == "trainable":
        assert untrainable == 0
    else:  # about 24 % of all cells cannot be reached by a supernet step
        assert 25 <= untrainable <= 75, untrainable

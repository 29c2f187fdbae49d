"""DARTS-space encoding: text forms, shipped genotypes, RLNAS's edge form, check_cand repair and operators."""
from __future__ import annotations

import random

import pytest

from nas.registry import ConfigError
from nas.spaces import darts_genotype as dg

# DARTS_V2 as quark0/darts genotypes.py writes it, and its genes worked out by hand.
DARTS_V2_GENOTYPE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
# each node's pairs by (input, op): DARTS lists normal node 2 as sep_conv_3x3~1, skip_connect~0
DARTS_V2_GENES = (4, 0, 4, 1, 4, 0, 4, 1, 3, 0, 4, 1, 3, 0, 6, 2,
                  1, 0, 1, 1, 1, 1, 3, 2, 1, 0, 3, 2, 1, 1, 3, 2)
DARTS_V2_NORMAL_EDGES = (4, 4, 4, 4, 0, 3, 4, 0, 0, 3, 0, 6, 0, 0)
VALID = dg.to_text(DARTS_V2_GENES)
PUBLISHED_NAMES = [
    "DARTS_V1", "DARTS_V2", "PDARTS", "PCDARTS_C10", "PCDARTS_IN1K",
    "UNNAS_IMAGENET_CLS", "UNNAS_IMAGENET_ROT", "UNNAS_IMAGENET_COL", "UNNAS_IMAGENET_JIG",
    "UNNAS_IMAGENET22K_CLS", "UNNAS_IMAGENET22K_ROT", "UNNAS_IMAGENET22K_COL", "UNNAS_IMAGENET22K_JIG",
    "UNNAS_CITYSCAPES_SEG", "UNNAS_CITYSCAPES_ROT", "UNNAS_CITYSCAPES_COL", "UNNAS_CITYSCAPES_JIG",
    "RLNAS_CIFAR10", "RLNAS_IMAGENET", "RLNAS_IMAGENET_600M", "GDAS_V1", "UNAS_CIFAR10", "UNAS_CIFAR100", "UNAS_IMAGENET",
]


def _node_inputs(arch):
    """(cell, node, [(op, input), (op, input)]) read straight off the 32 genes."""
    for cell in range(2):
        for node in range(4):
            g = arch[16 * cell + 4 * node:16 * cell + 4 * node + 4]
            yield cell, node, [(g[0], g[1]), (g[2], g[3])]


def _assert_rlnas_valid(arch):
    """Every node: two live (non-none) inputs from two distinct earlier nodes."""
    assert len(arch) == 32
    for cell, node, ins in _node_inputs(arch):
        assert all(op != 0 for op, _ in ins), (cell, node, arch)
        assert ins[0][1] != ins[1][1], (cell, node, arch)
        assert all(0 <= src < 2 + node for _, src in ins), (cell, node, arch)


def _pair_sets(arch):
    """Each node's two (op, input) pairs as a set: the node is their sum, so their order is immaterial."""
    return [frozenset(pair) for _c, _n, pair in _node_inputs(arch)]


def _none_counts(cell_edges):
    return [sum(cell_edges[dg._EDGE_OFFSET[j] + k] == 0 for k in range(j + 2)) for j in range(4)]


class LowestRandom(random.Random):
    """Every coin lands below any probability and every draw takes the lowest value allowed."""

    def random(self):
        return 0.0

    def randrange(self, start, stop=None, step=1):
        return 0 if stop is None else start

    def sample(self, population, k, **_kwargs):
        return list(population)[:k]


class HighestRandom(LowestRandom):
    """Like LowestRandom, but every draw takes the highest value allowed."""

    def randrange(self, start, stop=None, step=1):
        return start - 1 if stop is None else stop - 1


# ---- encoding -------------------------------------------------------------------------------------------
def test_constants():
    assert dg.OPS[0] == "none" and len(dg.OPS) == 8
    # op genes take the 8 DARTS ops and UNAS's sep_conv_7x7
    assert dg.CHOICES == (9, 2, 9, 2, 9, 3, 9, 3, 9, 4, 9, 4, 9, 5, 9, 5) * 2
    assert dg.EDGES_PER_CELL == len(dg.EDGE_INPUTS) == 14
    assert dg.EDGE_INPUTS[:5] == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)) and dg.EDGE_INPUTS[-1] == (3, 4)


def test_published_names_and_darts_v2_genes():
    named = dg.published()
    assert list(named) == PUBLISHED_NAMES
    assert named["DARTS_V2"] == DARTS_V2_GENES
    assert dg.pairs(named["DARTS_V2"], 0)[6:] == [(3, 3, 0), (3, 6, 2)]
    assert dg.to_edges(named["DARTS_V2"])[:14] == DARTS_V2_NORMAL_EDGES
    # UNAS_CIFAR10 normal node 0: inputs [0, 0], UNAS ops [4, 0] = sep_conv_5x5, skip_connect (here by op index)
    assert named["UNAS_CIFAR10"][:4] == (dg.OPS.index("skip_connect"), 0, dg.OPS.index("sep_conv_5x5"), 0)


def test_a_node_s_pairs_in_either_order_are_one_arch():
    text = dg.to_text(DARTS_V2_GENES)
    normal, reduce = text.split(";")
    nodes = normal.removeprefix("normal=").split("|")
    nodes[2] = "+".join(reversed(nodes[2].split("+")))
    swapped = "normal=" + "|".join(nodes) + ";" + reduce
    assert swapped != text and dg.parse(swapped) == DARTS_V2_GENES


def test_text_round_trip_published_and_unnas():
    archs = list(dg.published().values()) + [a for _, a in dg.unnas_samples()]
    assert len(archs) == 24 + 500
    for arch in archs:
        text = dg.to_text(arch)
        assert " " not in text and "\n" not in text
        assert dg.parse(text) == arch


def test_genotype_form_name_and_id():
    by_name = dg.parse("DARTS_V2")
    assert dg.parse(DARTS_V2_GENOTYPE) == by_name == dg.parse("darts_v2")
    ranged = DARTS_V2_GENOTYPE.replace("concat=[2, 3, 4, 5]", "concat=range(2, 6)")
    assert dg.parse("genotypes." + ranged) == by_name
    samples = dg.unnas_samples()
    assert [i for i, _ in samples] == sorted(i for i, _ in samples)
    assert samples[0][0] == "00004" and samples[-1][0] == "02771" and len(samples) == 500
    assert dg.parse("00004") == samples[0][1]
    # 00004's normal node 0 takes both inputs from c_{k-1}: avg_pool_3x3~1 + sep_conv_3x3~1
    assert samples[0][1][:4] == (2, 1, 4, 1)


@pytest.mark.parametrize("text,shown", [
    ("normal=sep_conv_3x3~0", "normal=sep_conv_3x3~0"),
    ("what is this?", "what is this?"),
    ("Genotype(normal=[", "Genotype(normal=["),
    (VALID.replace("sep_conv_3x3~0", "sep_conv_9x9~0", 1), "sep_conv_9x9"),
    (VALID.replace("sep_conv_3x3~0+sep_conv_3x3~1|", "sep_conv_3x3~0|", 1), "sep_conv_3x3~0|"),
    (VALID.replace("sep_conv_3x3~1|", "sep_conv_3x3~1+skip_connect~0|", 1), "+skip_connect~0|"),
    (VALID.replace("sep_conv_3x3~1|", "sep_conv_3x3~2|", 1), "input 2"),  # node 0 from itself
    (VALID.replace("sep_conv_3x3~1|", "sep_conv_3x3~3|", 1), "input 3"),  # node 0 from a later node
    (VALID.replace("sep_conv_3x3~1|", "sep_conv_3x3~²|", 1), "~²"),
    (VALID.replace("dil_conv_3x3~2", "dil_conv_3x3~5"), "input 5"),  # node 3 from itself
    (VALID.replace(";reduce=", ";normal=", 1), "normal="),
    (DARTS_V2_GENOTYPE.replace("('dil_conv_3x3', 2)], normal_concat", "], normal_concat"), "7 (op, input) pairs"),
    (DARTS_V2_GENOTYPE.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "input 5"),
    (DARTS_V2_GENOTYPE.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', True)"), "True"),
    (DARTS_V2_GENOTYPE.replace("('dil_conv_3x3', 2)", "('conv_7x1_1x7', 2)"), "conv_7x1_1x7"),
    (DARTS_V2_GENOTYPE.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), "[4, 5]"),
    (DARTS_V2_GENOTYPE.replace("normal=[", "normal=__import__('os').getcwd() or ["), "__import__"),
    (DARTS_V2_GENOTYPE.replace("reduce_concat", "weights"), "weights"),
    ("DARTS_V9", "DARTS_V9"),
    ("99999", "99999"),
])
def test_refusals_name_the_value(text, shown):
    with pytest.raises(ConfigError) as err:
        dg.parse(text)
    message = str(err.value)
    assert shown in message
    assert text[:40] in message or text in ("DARTS_V9", "99999")


def test_unknown_name_lists_allowed():
    with pytest.raises(ConfigError, match="DARTS_V2.*RLNAS_CIFAR10"):
        dg.parse("NOT_AN_ARCH")
    with pytest.raises(ConfigError, match="00004"):
        dg.parse("00005")


# ---- edge form ------------------------------------------------------------------------------------------
def test_unnas_samples_include_non_edge_representable():
    """The data README: `none` occurs and nodes take both inputs from one node; RLNAS's form cannot hold them."""
    none_pair = same_input = 0
    for _id, arch in dg.unnas_samples():
        ins = [pair for _c, _n, pair in _node_inputs(arch)]
        has_none = any(op == 0 for pair in ins for op, _ in pair)
        has_same = any(pair[0][1] == pair[1][1] for pair in ins)
        none_pair += has_none
        same_input += has_same
        assert dg.is_trainable(arch) == (not has_none and not has_same)
        if has_none or has_same:
            with pytest.raises(ValueError):
                dg.to_edges(arch)
        else:
            assert _pair_sets(dg.from_edges(dg.to_edges(arch))) == _pair_sets(arch)
    assert none_pair > 0 and same_input > 0


def test_published_edge_form_where_trainable():
    for name, arch in dg.published().items():
        if dg.is_trainable(arch):
            edges = dg.to_edges(arch)
            assert _none_counts(edges[:14]) == _none_counts(edges[14:]) == [0, 1, 2, 3]
            assert _pair_sets(dg.from_edges(edges)) == _pair_sets(arch), name
            assert dg.to_edges(dg.from_edges(edges)) == edges, name
        else:
            with pytest.raises(ValueError):
                dg.to_edges(arch)
    assert not dg.is_trainable(dg.published()["UNAS_CIFAR10"])  # node 0 takes both inputs from c_{k-2}


def test_from_edges_refuses_wrong_live_count():
    edges = list(dg.to_edges(DARTS_V2_GENES))
    edges[4] = 5  # node 1 of the normal cell: three live edges
    with pytest.raises(ValueError, match="node 1"):
        dg.from_edges(edges)


# ---- check_cand ---------------------------------------------------------------------------------------
def test_repair_cell_keeps_valid_and_fixes_invalid():
    rng = random.Random(0)
    valid = list(DARTS_V2_NORMAL_EDGES)
    assert dg.repair_cell(valid, rng) == valid
    for cell in ([0] * 14, [7] * 14, [3, 0, 1, 1, 1, 0, 0, 0, 0, 2, 2, 2, 2, 2]):
        before = list(cell)
        fixed = dg.repair_cell(cell, rng)
        assert cell == before  # the argument is left as it is
        assert _none_counts(fixed) == [0, 1, 2, 3]
        # live edges that stay live keep their op; revived edges take a non-none op
        assert all(f == b or f == 0 or b == 0 for f, b in zip(fixed, before))
        assert all(0 <= f < 8 for f in fixed)
    mixed = list(DARTS_V2_NORMAL_EDGES[:9]) + [0, 0, 0, 0, 0]  # node 3 dead, nodes 0-2 valid
    fixed = dg.repair_cell(mixed, rng)
    assert fixed[:9] == mixed[:9] and _none_counts(fixed)[3] == 3
    with pytest.raises(ValueError):
        dg.repair_cell([0] * 13, rng)


def test_sample_mutate_crossover_always_rlnas_valid():
    rng = random.Random(1)
    archs = [dg.sample(rng) for _ in range(2000)]
    seen_ops = set()
    for arch in archs:
        _assert_rlnas_valid(arch)
        assert dg.is_trainable(arch)
        assert dg.from_edges(dg.to_edges(arch)) == arch
        seen_ops.update(arch[0::2])
    assert seen_ops == set(range(1, 8))
    assert len(set(archs)) == 2000
    children = []
    for i in range(0, 1000, 2):
        children.append(dg.mutate(archs[i], rng, 0.3, allow_none=True, cells="all"))
        children.append(dg.mutate(archs[i], rng, 0.3, allow_none=False, cells="normal"))
        children.append(dg.crossover(archs[i], archs[i + 1], rng))
    for child in children:
        _assert_rlnas_valid(child)
    assert dg.sample(random.Random(5)) == dg.sample(random.Random(5))


def test_mutate_normal_keeps_reduce_cell():
    rng = random.Random(2)
    changed = 0
    parents = [dg.sample(rng) for _ in range(300)] + [a for a in dg.published().values() if dg.is_trainable(a)]
    for parent in parents:
        for allow_none in (True, False):
            child = dg.mutate(parent, rng, 1.0, allow_none=allow_none, cells="normal")
            assert dg.to_edges(child)[14:] == dg.to_edges(parent)[14:]
            changed += dg.to_edges(child)[:14] != dg.to_edges(parent)[:14]
    assert changed > 0.9 * 2 * len(parents)


def test_mutate_allow_none_false_draws_no_none():
    """With every gene mutated to the lowest drawable value: 1 (max_pool_3x3) without none, 0 with it."""
    parent = dg.published()["DARTS_V2"]
    without = dg.to_edges(dg.mutate(parent, LowestRandom(), 1.0, allow_none=False, cells="all"))
    # every edge drawn max_pool_3x3, then check_cand turns the first j edges of node j into none
    assert without[:14] == (1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1)
    with_none = dg.to_edges(dg.mutate(parent, LowestRandom(), 1.0, allow_none=True, cells="all"))
    # every edge drawn none, then check_cand revives the first two edges of each node with op 1
    assert with_none[:14] == (1, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0)


def test_crossover_takes_genes_from_parents():
    rng = random.Random(3)
    for _ in range(200):
        a, b = dg.sample(rng), dg.sample(rng)
        child = dg.to_edges(dg.crossover(a, b, rng))
        ea, eb = dg.to_edges(a), dg.to_edges(b)
        # a live gene from neither parent was revived by the repair, which only revives a none pick
        assert all(c == 0 or c in (x, y) or 0 in (x, y) for c, x, y in zip(child, ea, eb))
    a, b = dg.sample(rng), dg.sample(rng)
    assert dg.crossover(a, a, rng) == a
    assert dg.crossover(a, b, LowestRandom()) == a and dg.crossover(a, b, HighestRandom()) == b


def test_operators_refuse_bad_input():
    rng = random.Random(4)
    not_rlnas = dg.published()["UNAS_CIFAR10"]
    with pytest.raises(ConfigError, match="skip_connect~0\\+sep_conv_5x5~0"):
        dg.mutate(not_rlnas, rng, 0.1, allow_none=True, cells="all")
    with pytest.raises(ConfigError, match="parent b"):
        dg.crossover(DARTS_V2_GENES, not_rlnas, rng)
    with pytest.raises(ConfigError, match="'reduce'.*normal, all"):
        dg.mutate(DARTS_V2_GENES, rng, 0.1, allow_none=True, cells="reduce")
    with pytest.raises(ConfigError):
        dg.to_text((0,) * 31)

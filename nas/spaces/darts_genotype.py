"""DARTS-space architectures: the genotype encoding, its text forms, the shipped genotypes and RLNAS's operators.

An ``Arch`` is 32 ints, the DARTS genotype form: for cell in (normal, reduce), for node in 0..3,
``(op_a, input_a, op_b, input_b)``. ``op`` indexes ``GENOTYPE_OPS``: the 8 DARTS ops of ``OPS`` (DARTS
PRIMITIVES order, 0 = none) and UNAS's sep_conv_7x7 (8); ``input`` is 0 (cell input c_{k-2}), 1 (c_{k-1}) or
2 + m for an earlier intermediate node m. Every cell concatenates nodes 2..5. The form holds every published
DARTS-space cell, UnNAS's 500 sample-based ones (which use ``none`` and may take both inputs of a node from
one node) and UNAS's cells. Everything that draws or searches (RLNAS's sampling and operators, the
DARTS/GDAS mixture and its derive rules) stays on the 8 ``OPS``; UNAS's search draws over ``UNAS_OPS``.

Canonical text (``to_text``), one line without spaces: ``normal=<node>|<node>|<node>|<node>;reduce=...``,
each node ``op~input+op~input`` (pairs by input, then op), e.g. ``normal=sep_conv_3x3~0+sep_conv_3x3~1|...;reduce=max_pool_3x3~0+...``.
``parse`` also takes DARTS's ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=..., reduce=...,
reduce_concat=...)`` (read with ``ast``, never evaluated), a published name (``published()``, any case) and
an UnNAS sample ID such as ``00004``.

Published names: the ``genotypes`` of ``nas/resources/darts_genotypes.json`` (DARTS_V1/V2, GDAS_V1, PDARTS,
PCDARTS_C10/IN1K, UnNAS's 12 searched cells, RLNAS's three) and UNAS_CIFAR10, UNAS_CIFAR100, UNAS_IMAGENET
(UNAS's paired-input form, ops indexing ``UNAS_OPS``; UNAS_CIFAR100's reduction cell uses sep_conv_7x7).

RLNAS searches the 28-gene EDGE form: per cell its 14 edges in DARTS order (``EDGE_INPUTS``), one ``OPS`` index
each, and exactly two non-none edges per node after its ``check_cand`` repair (a cell with sep_conv_7x7 has
no edge form). ``sample``, ``mutate`` and
``crossover`` follow RLNAS's DARTS code (``train_supernet/train.py``, ``utils.check_cand``,
``evolution_search/search.py``) with Python's ``random.Random`` in place of numpy's global RNG. They return
the genotype form of ``from_edges`` (each node's pairs in increasing input order). Every Arch lists a node's
two pairs in that one order, by (input, op), whatever order its text gave: a node is the sum of its two
inputs, so equal cells are one Arch (and one ``to_index``).
"""
from __future__ import annotations

import ast
import functools
import gzip
import json
import random
from importlib import resources
from typing import Any, Sequence

from ..registry import ConfigError
from .base import MUTATE_CELLS, Arch

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5")
GENOTYPE_OPS = OPS + ("sep_conv_7x7",)
# UNAS's search list in its order (NVlabs/unas darts/genotypes.py set_primitives); num_ops keeps a prefix
UNAS_OPS = ("skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3", "sep_conv_5x5", "avg_pool_3x3",
            "sep_conv_7x7")
NUM_NODES = 4
CELLS = ("normal", "reduce")
CONCAT = (2, 3, 4, 5)
CHOICES: tuple[int, ...] = tuple(
    n for _cell in CELLS for node in range(NUM_NODES)
    for n in (len(GENOTYPE_OPS), 2 + node, len(GENOTYPE_OPS), 2 + node)
)
GENES_PER_CELL = 4 * NUM_NODES
EDGE_INPUTS: tuple[tuple[int, int], ...] = tuple((node, src) for node in range(NUM_NODES) for src in range(2 + node))
EDGES_PER_CELL = len(EDGE_INPUTS)
_EDGE_OFFSET = tuple(sum(2 + m for m in range(node)) for node in range(NUM_NODES))  # first edge of each node
_GENOTYPES_RESOURCE = "resources/darts_genotypes.json"
_UNNAS_RESOURCE = "resources/unnas_darts_500.json.gz"
_GENOTYPE_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_FORMS = ("the canonical text normal=op~input+op~input|...;reduce=..., a DARTS Genotype(...), "
          "a published name or an UnNAS sample ID")


# ---- the genotype form ------------------------------------------------------------------------------
def _check_arch(arch: Sequence[int]) -> None:
    if len(arch) != len(CHOICES) or any(not 0 <= g < n for g, n in zip(arch, CHOICES)):
        raise ConfigError(f"invalid DARTS architecture {tuple(arch)!r}: expected {len(CHOICES)} genes, "
                          f"gene g in range(CHOICES[g]) with CHOICES = {CHOICES}")


def pairs(arch: Arch, cell: int) -> list[tuple[int, int, int]]:
    """The 8 (node, op, input) of cell 0 (normal) or 1 (reduce), node-major, each node's two in stored order."""
    _check_arch(arch)
    genes = arch[cell * GENES_PER_CELL:(cell + 1) * GENES_PER_CELL]
    return [(node, genes[4 * node + 2 * k], genes[4 * node + 2 * k + 1])
            for node in range(NUM_NODES) for k in range(2)]


def to_text(arch: Arch) -> str:
    """The canonical one-line text (module docstring); ``parse`` reads it back to the same Arch."""
    cells = []
    for cell, name in enumerate(CELLS):
        cell_pairs = pairs(arch, cell)
        nodes = ["+".join(f"{GENOTYPE_OPS[op]}~{src}" for _node, op, src in cell_pairs[2 * n:2 * n + 2])
                 for n in range(NUM_NODES)]
        cells.append(f"{name}=" + "|".join(nodes))
    return ";".join(cells)


def _cell_genes(cell_pairs: Sequence[Any], cell: str, text: str) -> list[int]:
    """Genes of one cell from its (op name, input) pairs, two per node in node order; ConfigError otherwise."""
    if len(cell_pairs) != 2 * NUM_NODES:
        raise ConfigError(f"invalid DARTS architecture {text!r}: cell {cell} has {len(cell_pairs)} (op, input) "
                          f"pairs; each of its {NUM_NODES} nodes takes exactly two inputs ({2 * NUM_NODES} pairs)")
    genes: list[int] = []
    for i, pair in enumerate(cell_pairs):
        node = i // 2
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ConfigError(f"invalid DARTS architecture {text!r}: {pair!r} in cell {cell} is not an "
                              "(op, input) pair")
        op, src = pair
        if op not in GENOTYPE_OPS:
            raise ConfigError(f"invalid DARTS architecture {text!r}: unknown op {op!r} in cell {cell}; "
                              f"allowed: {', '.join(GENOTYPE_OPS)}")
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < 2 + node:
            raise ConfigError(f"invalid DARTS architecture {text!r}: node {node} of cell {cell} takes input {src!r}; "
                              f"allowed: 0..{1 + node} (the two cell inputs and earlier nodes, never itself or a "
                              f"later node)")
        genes += [GENOTYPE_OPS.index(op), src]
    # A node is the sum of its two inputs: one order of the pairs, by (input, op), makes equal cells one Arch.
    for node in range(NUM_NODES):
        first, second = genes[4 * node:4 * node + 2], genes[4 * node + 2:4 * node + 4]
        if (second[1], second[0]) < (first[1], first[0]):
            genes[4 * node:4 * node + 4] = second + first
    return genes


def _check_concat(concat: Sequence[Any], cell: str, text: str) -> None:
    if tuple(concat) != CONCAT:
        raise ConfigError(f"invalid DARTS architecture {text!r}: {cell}_concat {list(concat)!r}; "
                          f"allowed: only {list(CONCAT)} (every intermediate node)")


# ---- parsing ------------------------------------------------------------------------------------------
def parse(text: str) -> Arch:
    """An Arch from any of the forms of the module docstring; ConfigError naming the value otherwise."""
    value = text.strip()
    if "(" in value:
        return _parse_genotype(value)
    if "=" in value:
        return _parse_canonical(value)
    if value.isascii() and value.isdecimal():
        samples = _unnas_by_id()
        if value.zfill(5) not in samples:
            ids = sorted(samples)
            raise ConfigError(f"unknown UnNAS sample ID {value!r}; allowed: {len(ids)} IDs {ids[0]}..{ids[-1]}, "
                              f"e.g. {', '.join(ids[:4])}")
        return samples[value.zfill(5)]
    if value.isidentifier():
        named = _published()
        if value.upper() not in named:
            raise ConfigError(f"unknown DARTS architecture name {value!r}; allowed: {', '.join(named)}")
        return named[value.upper()]
    raise ConfigError(f"invalid DARTS architecture {text!r}; expected {_FORMS}")


def _parse_canonical(text: str) -> Arch:
    compact = "".join(text.split())
    cells: dict[str, list[int]] = {}
    for part in compact.split(";"):
        name, sep, body = part.partition("=")
        if not sep or name not in CELLS or name in cells:
            raise ConfigError(f"invalid DARTS architecture {text!r}: {part!r} is not one of normal=..., reduce=...; "
                              f"expected {_FORMS}")
        nodes = body.split("|")
        if len(nodes) != NUM_NODES:
            raise ConfigError(f"invalid DARTS architecture {text!r}: cell {name} has {len(nodes)} nodes separated "
                              f"by '|'; expected {NUM_NODES}")
        cell_pairs: list[tuple[str, int | str]] = []
        for node, node_text in enumerate(nodes):
            inputs = node_text.split("+")
            if len(inputs) != 2:
                raise ConfigError(f"invalid DARTS architecture {text!r}: node {node} of cell {name} has "
                                  f"{len(inputs)} input(s) {node_text!r}; every node takes exactly two, "
                                  "op~input+op~input")
            for item in inputs:
                op, tilde, src = item.partition("~")
                if not tilde or not (src.isascii() and src.isdecimal()):
                    raise ConfigError(f"invalid DARTS architecture {text!r}: {item!r} in cell {name} is not op~input")
                cell_pairs.append((op, int(src)))
        cells[name] = _cell_genes(cell_pairs, name, text)
    if set(cells) != set(CELLS):
        raise ConfigError(f"invalid DARTS architecture {text!r}: missing cell "
                          f"{', '.join(c for c in CELLS if c not in cells)}; expected normal=...;reduce=...")
    return tuple(cells["normal"] + cells["reduce"])


def _literal(node: ast.expr, text: str) -> Any:
    """A literal, or ``range(...)`` of integer literals (DARTS writes ``normal_concat=range(2, 6)``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords:
        args = [_literal(a, text) for a in node.args]
        if all(isinstance(a, int) for a in args) and 1 <= len(args) <= 3:
            return list(range(*args))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):
        raise ConfigError(f"invalid DARTS architecture {text!r}: {ast.unparse(node)!r} is not a literal") from None


def _parse_genotype(text: str) -> Arch:
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ConfigError(f"invalid DARTS architecture {text!r}: not a Genotype(...) expression") from None
    func = getattr(call, "func", None)
    if not (isinstance(call, ast.Call) and "Genotype" in (getattr(func, "id", None), getattr(func, "attr", None))):
        raise ConfigError(f"invalid DARTS architecture {text!r}: not a Genotype(...) expression")
    fields: dict[str, Any] = {}
    if len(call.args) > len(_GENOTYPE_FIELDS):
        raise ConfigError(f"invalid DARTS architecture {text!r}: more than {len(_GENOTYPE_FIELDS)} fields")
    named = list(zip(_GENOTYPE_FIELDS, call.args)) + [(k.arg, k.value) for k in call.keywords]
    for key, node in named:
        if key not in _GENOTYPE_FIELDS or key in fields:
            raise ConfigError(f"invalid DARTS architecture {text!r}: field {key!r} unknown or repeated; "
                              f"allowed: {', '.join(_GENOTYPE_FIELDS)}")
        fields[key] = _literal(node, text)
    genes: list[int] = []
    for cell in CELLS:
        if cell not in fields:
            raise ConfigError(f"invalid DARTS architecture {text!r}: field {cell!r} missing")
        if not isinstance(fields[cell], (list, tuple)):
            raise ConfigError(f"invalid DARTS architecture {text!r}: field {cell!r} is not a list of (op, input) pairs")
        genes += _cell_genes(fields[cell], cell, text)
        concat = fields.get(f"{cell}_concat", CONCAT)
        if not isinstance(concat, (list, tuple)):
            raise ConfigError(f"invalid DARTS architecture {text!r}: {cell}_concat {concat!r} is not a list")
        _check_concat(concat, cell, text)
    return tuple(genes)


# ---- shipped architectures ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _published() -> dict[str, Arch]:
    data = json.loads(resources.files("nas").joinpath(_GENOTYPES_RESOURCE).read_text())
    named: dict[str, Arch] = {}
    for name, geno in data["genotypes"].items():
        named[name] = _from_pair_lists(geno, f"{_GENOTYPES_RESOURCE}:{name}")
    unas = data["unas_paired_input"]
    for name, geno in unas["genotypes"].items():
        cells = {cell: [(unas["ops"][op], src) for node in geno[cell] for op, src in zip(node["ops"], node["inputs"])]
                 for cell in CELLS}
        named[name] = _from_pair_lists({**cells, "normal_concat": CONCAT, "reduce_concat": CONCAT}, name)
    return named


def _from_pair_lists(geno: dict[str, Any], label: str) -> Arch:
    """An Arch from a JSON genotype: ``normal``/``reduce`` as [op, input] pairs and their concat lists."""
    genes: list[int] = []
    for cell in CELLS:
        genes += _cell_genes(geno[cell], cell, label)
        _check_concat(geno[f"{cell}_concat"], cell, label)
    return tuple(genes)


def from_pairs(normal: Sequence[tuple[int, int]], reduce: Sequence[tuple[int, int]]) -> Arch:
    """An Arch from each cell's 8 (``GENOTYPE_OPS`` index, input) pairs in node order; ConfigError when they do
    not form one."""
    named = {cell: [[GENOTYPE_OPS[op], src] for op, src in cell_pairs] for cell, cell_pairs in (("normal", normal),
                                                                                    ("reduce", reduce))}
    return _from_pair_lists({**named, "normal_concat": CONCAT, "reduce_concat": CONCAT}, "derived cell")


def published() -> dict[str, Arch]:
    """The published DARTS-space genotypes by name (module docstring), in the data file's order."""
    return dict(_published())


@functools.lru_cache(maxsize=1)
def _unnas_samples() -> tuple[tuple[str, Arch], ...]:
    data = json.loads(gzip.decompress(resources.files("nas").joinpath(_UNNAS_RESOURCE).read_bytes()))
    archs = sorted(data["archs"], key=lambda item: item["id"])
    return tuple((item["id"], _from_pair_lists(item, f"UnNAS sample {item['id']}")) for item in archs)


@functools.lru_cache(maxsize=1)
def _unnas_by_id() -> dict[str, Arch]:
    return dict(_unnas_samples())


def unnas_samples() -> list[tuple[str, Arch]]:
    """UnNAS's 500 sample-based DARTS-space architectures as (ID, Arch), in ID order (00004..02771)."""
    return list(_unnas_samples())


# ---- RLNAS's edge form ------------------------------------------------------------------------------------
def to_edges(arch: Arch) -> tuple[int, ...]:
    """The 28 edge genes (14 per cell, ``EDGE_INPUTS`` order, 0 = no edge); ValueError when a node has a
    ``none`` pair, both pairs on one input or an op outside ``OPS`` (the edge form cannot hold it)."""
    edges = [0] * (len(CELLS) * EDGES_PER_CELL)
    for cell in range(len(CELLS)):
        for node, op, src in pairs(arch, cell):
            pos = cell * EDGES_PER_CELL + _EDGE_OFFSET[node] + src
            if op == 0 or op >= len(OPS) or edges[pos]:
                if op == 0:
                    why = "a none input"
                elif op >= len(OPS):
                    why = f"op {GENOTYPE_OPS[op]}, which is not one of RLNAS's"
                else:
                    why = f"two inputs from node {src}"
                raise ValueError(f"DARTS architecture {to_text(arch)!r} has no edge form: node {node} of cell "
                                 f"{CELLS[cell]} has {why}")
            edges[pos] = op
    return tuple(edges)


def from_edges(edges: Sequence[int]) -> Arch:
    """The genotype form of 28 edge genes; each node's two live edges in increasing input order. ValueError
    unless every node has exactly two non-none edges."""
    if len(edges) != len(CELLS) * EDGES_PER_CELL or any(not 0 <= g < len(OPS) for g in edges):
        raise ValueError(f"edge genes {tuple(edges)!r}: expected {len(CELLS) * EDGES_PER_CELL} op indices "
                         f"in 0..{len(OPS) - 1}")
    genes: list[int] = []
    for cell in range(len(CELLS)):
        for node in range(NUM_NODES):
            start = cell * EDGES_PER_CELL + _EDGE_OFFSET[node]
            live = [(edges[start + src], src) for src in range(2 + node) if edges[start + src]]
            if len(live) != 2:
                raise ValueError(f"edge genes {tuple(edges)!r}: node {node} of cell {CELLS[cell]} has {len(live)} "
                                 f"non-none edges; the edge form needs exactly two")
            genes += [g for pair in live for g in pair]
    return tuple(genes)


def is_trainable(arch: Arch) -> bool:
    """RLNAS's rule: every node has two non-none inputs of ``OPS`` from distinct nodes (the edge form can hold it)."""
    for cell in range(len(CELLS)):
        cell_pairs = pairs(arch, cell)
        for (_, op_a, src_a), (_, op_b, src_b) in zip(cell_pairs[0::2], cell_pairs[1::2]):
            if not (0 < op_a < len(OPS) and 0 < op_b < len(OPS)) or src_a == src_b:
                return False
    return True


def repair_cell(edges: list[int], rng: random.Random) -> list[int]:
    """RLNAS ``check_cand`` on one cell's 14 edge genes: a copy in which node j (j + 2 edges) has exactly j
    ``none`` edges, i.e. two live ones. ``edges`` itself is left as it is.

    Draw order as upstream, per node in order: with too few ``none`` edges, which live edges become ``none``
    (``np.random.choice(..., replace=False)`` -> ``rng.sample`` over the live positions in increasing order);
    with too many, which ``none`` edges revive (``rng.sample`` likewise), then for each revived edge, in the
    order sampled, its op uniform over the 7 non-none ops (``1 + np.random.randint(7)`` ->
    ``1 + rng.randrange(7)``). A node that already has two live edges draws nothing.
    """
    if len(edges) != EDGES_PER_CELL or any(not 0 <= g < len(OPS) for g in edges):
        raise ValueError(f"cell edge genes {edges!r}: expected {EDGES_PER_CELL} op indices in 0..{len(OPS) - 1}")
    cell = list(edges)
    for node in range(NUM_NODES):
        positions = range(_EDGE_OFFSET[node], _EDGE_OFFSET[node] + 2 + node)
        dead = [p for p in positions if cell[p] == 0]
        if len(dead) < node:
            for p in rng.sample([p for p in positions if cell[p] != 0], node - len(dead)):
                cell[p] = 0
        elif len(dead) > node:
            for p in rng.sample(dead, len(dead) - node):
                cell[p] = 1 + rng.randrange(len(OPS) - 1)
    return cell


def _repair(edges: Sequence[int], rng: random.Random) -> Arch:
    """Both cells repaired (normal first, as RLNAS), in genotype form."""
    repaired = [g for cell in range(len(CELLS))
                for g in repair_cell(list(edges[cell * EDGES_PER_CELL:(cell + 1) * EDGES_PER_CELL]), rng)]
    return from_edges(repaired)


def _parent_edges(arch: Arch, role: str) -> list[int]:
    try:
        return list(to_edges(arch))
    except ValueError as err:
        raise ConfigError(f"{role} {to_text(arch)!r} cannot be mutated or crossed over: RLNAS's operators need "
                          f"every node to take two non-none inputs from distinct nodes ({err})") from None


def sample(rng: random.Random) -> Arch:
    """RLNAS's draw: an op uniform over all 8 for each of the 28 edges (normal cell first), then each cell
    repaired by ``repair_cell`` (normal first). One draw is one training step's path for every cell of the
    supernet (RLNAS runs the normal part in every normal cell, the reduce part in both reduction cells)
    and one random candidate of the evolution."""
    edges = [rng.randrange(len(OPS)) for _ in range(len(CELLS) * EDGES_PER_CELL)]
    return _repair(edges, rng)


def mutate(arch: Arch, rng: random.Random, prob: float, allow_none: bool, cells: str) -> Arch:
    """RLNAS ``get_mutation`` in edge form: each edge gene of the normal cell (``cells='normal'``, upstream's
    loop over the first 14 genes) or of both cells (``'all'``) redrawn with probability ``prob``, uniformly
    over 0..7 (``allow_none``, RLNAS CIFAR) or 1..7 (RLNAS ImageNet); then both cells repaired."""
    if cells not in MUTATE_CELLS:
        raise ConfigError(f"config key 'search.mutate_cells': {cells!r} is not allowed; "
                          f"allowed: {', '.join(MUTATE_CELLS)}")
    edges = _parent_edges(arch, "parent")
    low = 0 if allow_none else 1
    for g in range(EDGES_PER_CELL if cells == "normal" else len(edges)):
        if rng.random() < prob:
            edges[g] = rng.randrange(low, len(OPS))
    return _repair(edges, rng)


def crossover(a: Arch, b: Arch, rng: random.Random) -> Arch:
    """RLNAS ``get_crossover``: each of the 28 edge genes from ``a`` or ``b`` with probability 1/2
    (``choice([i, j])`` -> ``(i, j)[rng.randrange(2)]``), then both cells repaired."""
    pairs_ab = zip(_parent_edges(a, "parent a"), _parent_edges(b, "parent b"))
    return _repair([pair[rng.randrange(2)] for pair in pairs_ab], rng)

"""NB101 space: hash and pruning against NB101's own figures, UnNAS's 500 cells, refusals, sampling, network, costs."""
from __future__ import annotations

import collections
import itertools
import json
import random

import pytest
import torch

from nas.registry import ConfigError
from nas.spaces import nb101 as nb101_module
from nas.spaces.nb101 import EDGES, OPS, NB101Space, vertex_channels

pytestmark = pytest.mark.usefixtures("single_thread")

C3, C1, MP = OPS

# NB101's README Inception-like cell, as its README writes it and as its dataset stores it (the colab's
# query answer); NB101 counts 2,694,282 trainable parameters for it (NASBench.ipynb, first query).
INCEPTION = ([[0, 1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0, 0],
              [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0] * 7], [C1, C3, C3, C3, MP])
INCEPTION_STORED = ([[0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1],
                     [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0] * 7], [C3, C1, MP, C3, C3])
INCEPTION_PARAMS = 2_694_282
# The NB101 dataset row of hash 00005c142e6f48ac74fdcf73e3439874 (microsoft/nni docs/en_US/NAS/
# BenchmarksExample.ipynb: 8.55553 M parameters; 8,555,530 in dumps of the dataset).
NNI_CELL = ([[0, 1, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0],
             [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0] * 7], [C3, MP, C3, C3, C1])
NNI_HASH = "00005c142e6f48ac74fdcf73e3439874"
NNI_PARAMS = 8_555_530


def _json(matrix, interior_ops) -> str:
    return json.dumps({"matrix": matrix, "ops": ["input", *interior_ops, "output"]})


def _relabel(matrix, interior_ops, order):
    """The same graph with vertex ``order[k]`` moved to position k (input first, output last)."""
    new = [[matrix[a][b] for b in order] for a in order]
    return new, [interior_ops[v - 1] for v in order[1:-1]]


def _topological_orders(matrix):
    """Every order of the interior vertices that keeps the matrix upper-triangular."""
    n = len(matrix)
    for inner in itertools.permutations(range(1, n - 1)):
        order = (0, *inner, n - 1)
        if all(not matrix[a][b] for i, a in enumerate(order) for b in order[:i]):
            yield order


@pytest.fixture
def space(cfg) -> NB101Space:
    return NB101Space(cfg("space.name=nb101")["space"])


def _tiny(stacks: int = 1, modules: int = 1, channels: int = 8) -> NB101Space:
    network = {"stacks": stacks, "modules_per_stack": modules, "channels": channels}
    return NB101Space({"name": "nb101", "nb101": network})


# ---- configuration and encoding -------------------------------------------------------------------------
def test_space_reads_its_config_section(space):
    assert (space.stacks, space.modules_per_stack, space.channels) == (3, 3, 128)
    assert (space.name, space.enumerable, space.has_supernet) == ("nb101", False, False)
    assert space.num_archs() == 423_624
    assert len(space.choices) == 26 and len(EDGES) == 21


def test_hash_is_nb101s_dataset_key(space):
    assert space.hash(space.from_str(_json(*NNI_CELL))) == NNI_HASH
    assert space.to_index(space.from_str(_json(*NNI_CELL))) == int(NNI_HASH[:15], 16)


@pytest.mark.parametrize("cell", [INCEPTION, NNI_CELL], ids=["inception", "nni"])
def test_isomorphic_cells_share_hash_and_index_not_tuple(space, cell):
    base = space.from_str(_json(*cell))
    orders = list(_topological_orders(cell[0]))
    assert len(orders) > 1
    for order in orders:
        other = space.from_str(_json(*_relabel(*cell, order)))
        assert space.hash(other) == space.hash(base)
        assert space.to_index(other) == space.to_index(base) < 2 ** 63
        assert (other == base) == (list(order) == sorted(order))  # the canonical form keeps the vertex order


def test_readme_and_stored_inception_cells_are_one_architecture(space):
    a, b = space.from_str(_json(*INCEPTION)), space.from_str(_json(*INCEPTION_STORED))
    assert a != b and space.to_index(a) == space.to_index(b)


@pytest.mark.parametrize("first,second", [
    # a chain with its labels moved (breaks a hash that ignores the vertex's own label)
    (([[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0] * 5], [C1, C3, C3]),
     ([[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0] * 5], [C3, C3, C1])),
    # edge direction matters
    (([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0] * 4], [C1, C3]),
     ([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0] * 4], [C3, C1])),
    # one op changed
    (INCEPTION, (INCEPTION[0], [C1, C3, C3, C1, MP])),
    # one edge moved: vertex 1 feeds vertex 4 instead of the output
    (INCEPTION, (INCEPTION[0][:1] + [[0, 0, 0, 0, 1, 0, 0]] + INCEPTION[0][2:], INCEPTION[1])),
], ids=["labels", "direction", "op", "edge"])
def test_different_cells_differ(space, first, second):
    assert space.hash(space.from_str(_json(*first))) != space.hash(space.from_str(_json(*second)))


def test_pruning_drops_dangling_and_unreachable_vertices(space):
    # vertex 2 (maxpool) is read from the input but reaches nothing; vertex 4 (conv3x3) feeds the output but
    # nothing reaches it; the edges 0->2 and 4->6 go with them
    big = ([[0, 1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0] * 7], [C3, MP, C1, C3, MP])
    small = ([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0] * 5], [C3, C1, MP])
    a, b = space.from_str(_json(*big)), space.from_str(_json(*small))
    assert a == b and space.hash(a) == space.hash(b)
    assert space.to_str(a) == "01010|00100|00001|00001|00000:conv3x3-bn-relu|conv1x1-bn-relu|maxpool3x3"
    # padding: the two dropped vertices sit just before the output, without edges and with op 0
    assert a == (1, 0, 1, 0, 0, 0,  1, 0, 0, 0, 0,  0, 0, 0, 1,  0, 0, 1,  0, 0,  0) + (0, 1, 2, 0, 0)


def test_edges_are_counted_after_pruning(space):
    # 10 edges, one of them (0->5) into a vertex that reaches nothing: 9 after pruning, a valid cell
    matrix = [[0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0], [0] * 7]
    matrix[1][3] = 1
    assert sum(map(sum, matrix)) == 10
    arch = space.from_str(_json(matrix, [C3, C3, C3, C3, MP]))
    assert space.cell(arch).num_edges == 9 and space.cell(arch).num_vertices == 6


def test_unnas_cells_parse_round_trip_and_resolve_by_id(space):
    listed = space.unnas_samples()
    assert len(listed) == 500 and [key for key, _ in listed] == sorted(key for key, _ in listed)
    assert (listed[0][0], listed[-1][0]) == ("000907", "423150")
    assert collections.Counter(space.cell(a).num_vertices for _, a in listed) == {7: 428, 6: 69, 5: 3}
    assert len({space.to_index(a) for _, a in listed}) == 500
    for key, arch in listed:
        text = space.to_str(arch)
        assert " " not in text and "\n" not in text
        assert space.from_str(text) == arch
        assert space.from_str(key) == arch == space.from_str(str(int(key)))
        assert space.canonical(arch) == arch


def test_unnas_cell_matches_its_upstream_config(space):
    # configs/sample_based/nas_bench/cifar10/cls/000907.yaml, NAS.MATRIX and NAS.OPS
    assert space.to_str(space.from_str("000907")) == (
        "0101000|0010100|0001000|0000100|0000011|0000001|0000000:"
        "conv3x3-bn-relu|conv1x1-bn-relu|conv1x1-bn-relu|maxpool3x3|conv1x1-bn-relu")


def test_resource_keeps_its_source():
    from importlib import resources

    data = json.loads(resources.files("nas").joinpath(nb101_module.UNNAS_RESOURCE).read_text())
    assert data["source"].startswith("facebookresearch/unnas")


# ---- refusals ---------------------------------------------------------------------------------------------
CHAIN8 = [[int(j == i + 1) for j in range(8)] for i in range(8)]
TEN_EDGES = [[0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 1, 0, 0],
             [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0] * 7]


@pytest.mark.parametrize("text,shown", [
    ("conv3x3 then output", "conv3x3 then output"),
    ("01|00;", "01|00;"),
    ('{"matrix": [[0, 1], [0, 0]], "ops": ["input", "output"], "id": 3}', "exactly the keys"),
    ('{"matrix": [[0, 1], [0, 0]', "not JSON"),
    (json.dumps({"matrix": [[0, 1, 0], [0, 0]], "ops": ["input", C3, "output"]}), "[[0, 1, 0], [0, 0]]"),
    (json.dumps({"matrix": [[0, 2], [0, 0]], "ops": ["input", "output"]}), "[[0, 2], [0, 0]]"),
    ("01|10:", "[[0, 1], [1, 0]]"),
    ("11|00:", "[[1, 1], [0, 0]]"),
    (_json(CHAIN8, [C3] * 6), "8 vertices"),
    (_json(TEN_EDGES, [C3, C1, MP, C3, C1]), "10 edges"),
    ("01|00:conv3x3-bn-relu", "['input', 'conv3x3-bn-relu', 'output']"),
    (json.dumps({"matrix": [[0, 1], [0, 0]], "ops": ["output", "input"]}), "['output', 'input']"),
    (json.dumps({"matrix": [[0, 1, 0], [0, 0, 1], [0, 0, 0]], "ops": ["input", C3, C1]}),
     "['input', 'conv3x3-bn-relu', 'conv1x1-bn-relu']"),
    ("011|001|000:conv5x5", "conv5x5"),
    ("0100|0000|0001|0000:conv3x3-bn-relu|conv3x3-bn-relu", "disconnected"),
    ("12", "'12'"),
    ("999999", "'999999'"),
])
def test_bad_cells_are_refused_naming_the_value(space, text, shown):
    with pytest.raises(ConfigError) as err:
        space.from_str(text)
    assert shown in str(err.value)


def test_refusals_name_what_is_allowed(space):
    with pytest.raises(ConfigError, match="allowed: conv3x3-bn-relu, conv1x1-bn-relu, maxpool3x3"):
        space.from_str("011|001|000:conv5x5")
    with pytest.raises(ConfigError, match="000907..423150"):
        space.from_str("12")
    with pytest.raises(ConfigError, match="not enumerable"):
        space.from_index(5)
    with pytest.raises(ConfigError, match="not a valid cell"):
        space.to_str((0,) * 26)


# ---- sampling -----------------------------------------------------------------------------------------------
def test_samples_are_valid_canonical_cells(space):
    rng = random.Random(0)
    sizes = collections.Counter()
    for _ in range(300):
        arch = space.sample(rng)
        assert all(0 <= g < n for g, n in zip(arch, space.choices))
        cell = space.cell(arch)
        assert cell.num_edges <= 9 and space.is_trainable(arch)
        assert space.from_str(space.to_str(arch)) == arch == space.canonical(arch)
        sizes[cell.num_vertices] += 1
    assert len(sizes) >= 5  # NB101's random cell prunes to every size from 2 to 7 vertices
    assert space.sample_uniform(random.Random(3)) == space.sample(random.Random(3))


def test_sample_distinct_gives_distinct_hashes(space):
    archs = space.sample_distinct(60, random.Random(1))
    assert len({space.to_index(a) for a in archs}) == 60


# ---- network and costs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_channels,out_channels,matrix,expected", [
    # the values of nasbench/tests/model_builder_test.py
    (8, 16, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0] * 4], [8, 16, 16, 16]),
    (8, 8, [[0, 1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0] * 5], [8, 3, 3, 2, 8]),
    (8, 15, [[0, 1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0] * 5], [8, 5, 5, 5, 15]),
    (8, 9, [[0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0] * 5], [8, 5, 5, 4, 9]),
    (8, 15, [[0, 1, 0, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0] * 5], [8, 8, 7, 7, 15]),
    (1, 5, [[0, 1], [0, 0]], [1, 5]),
])
def test_vertex_channels_match_nb101(in_channels, out_channels, matrix, expected):
    assert vertex_channels(in_channels, out_channels, matrix) == expected


@pytest.mark.parametrize("text", [
    "01|00:",  # input straight to output: the module is the projection
    "007657",  # UnNAS cell: the input feeds the output and one conv vertex does (UnNAS's in-place add)
    # vertex 1 (3 channels) feeds vertex 4 (2 channels): truncation
    "010000|001110|000001|000001|000001|000000:conv3x3-bn-relu|conv1x1-bn-relu|maxpool3x3|conv3x3-bn-relu",
])
def test_network_runs_forward_and_backward(text):
    space = _tiny(stacks=2)
    net = space.build_network(space.from_str(text), in_channels=3)
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, net.out_channels, 8, 8) and net.out_channels == 16
    out.square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_truncation_cell_has_the_channels_nb101_gives():
    space = _tiny()
    net = space.build_network(space.from_str(
        "010000|001110|000001|000001|000001|000000:conv3x3-bn-relu|conv1x1-bn-relu|maxpool3x3|conv3x3-bn-relu"), 3)
    assert net.layers[0].channels == [8, 3, 3, 3, 2, 8]


def test_unnas_choices_where_tf_nb101_differs():
    net = _tiny(stacks=2).build_network(_tiny().from_str("000907"), 3)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all((m.momentum, m.eps) == (0.1, 1e-5) for m in norms)  # TF: decay 0.997 (momentum 0.003)
    assert net(torch.randn(1, 3, 15, 15)).shape[-1] == 7  # floor after the 2x2 max-pool; TF 'same' gives 8


def test_smallest_network_cost_by_hand():
    # stem conv 3x3x3x8 + BN 2x8; projection conv 8x8 + BN 2x8; Linear 8x10 + 10
    cost = _tiny().cost(_tiny().from_str("01|00:"), num_classes=10, in_channels=3, image_size=16)
    assert cost.params == (216 + 16) + (64 + 16) + 90
    assert cost.flops == (216 + 64) * 16 * 16 + 80


@pytest.mark.parametrize("cell,params,macs", [
    (INCEPTION, INCEPTION_PARAMS, 402_002_944),
    (INCEPTION_STORED, INCEPTION_PARAMS, 402_002_944),
    (NNI_CELL, NNI_PARAMS, 1_261_835_264),
], ids=["inception-readme", "inception-stored", "nni"])
def test_full_network_matches_nb101s_parameter_counts(space, cell, params, macs):
    # params: NB101's published counts (CIFAR-10, 10 classes); macs: measured here at 32 px
    cost = space.cost(space.from_str(_json(*cell)), num_classes=10)
    assert (cost.params, cost.flops) == (params, macs)


def test_cost_is_cached_per_canonical_arch():
    space = _tiny()
    canonical = space.from_str("01|00:")
    # the same cell with a dangling vertex 1 (read from the input, reading nothing onwards) and other op genes
    raw = list(canonical)
    raw[EDGES.index((0, 1))] = 1
    raw[21:] = [2, 1, 1, 0, 2]
    raw = tuple(raw)
    assert raw != canonical and space.canonical(raw) == canonical
    assert space.cost(raw, 10, 3, 16) is space.cost(canonical, 10, 3, 16)
    assert space.to_str(raw) == space.to_str(canonical)


def test_space_has_no_supernet(space):
    for call in (lambda: space.build_supernet(3), lambda: space.angle_vector(None, None, (0,) * 26),
                 lambda: space.num_cells, lambda: space.supernet_sampler("per_cell")):
        with pytest.raises(ConfigError, match="space nb101 has no supernet"):
            call()

"""DARTS space: published parameter/FLOP counts, the cost table, networks, supernet paths and the angle vector."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nas.config import load_config
from nas.registry import ConfigError
from nas.spaces import ArchCost, build_space
from nas.spaces import darts_genotype as genotype
from nas.spaces.cost import count_macs, count_params
from nas.spaces.darts import DartsSpace, path_copies
from nas.spaces.darts_genotype import EDGE_INPUTS, OPS
from nas.spaces.darts_ops import EDGE_POS, FactorizedReduce, drop_path, make_op

pytestmark = pytest.mark.usefixtures("single_thread")

NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)

# Hand-made archs: (op_a, input_a, op_b, input_b) per node, normal cell then reduction cell.
WITH_NONE_AND_REPEATS = (
    SEP3, 0, SKIP, 1,   DIL3, 2, NONE, 0,   AVG, 1, SEP5, 3,   MAX, 2, DIL5, 4,
    SKIP, 0, SEP3, 0,   NONE, 1, NONE, 2,   MAX, 3, DIL5, 1,   AVG, 4, SKIP, 2,
)
ALL_NONE = (NONE, 0) * 16
DEAD_FROM_INPUTS = (NONE, 0, NONE, 1, SEP3, 2, DIL3, 2, SKIP, 3, MAX, 2, SEP5, 4, AVG, 3) * 2
NO_POOLING = (
    SEP3, 0, SEP5, 0,   DIL5, 2, SKIP, 1,   NONE, 3, DIL3, 3,   SKIP, 0, SEP3, 4,
    SKIP, 1, SEP5, 1,   SKIP, 0, NONE, 2,   DIL3, 3, DIL5, 3,   NONE, 0, NONE, 1,
)


def _space(*overrides: str) -> DartsSpace:
    return build_space(load_config(None, ["space.name=darts", *overrides])["space"])


def _network_space(stem: str, cells: int, channels: int | None, *extra: str) -> DartsSpace:
    width = "null" if channels is None else str(channels)
    return _space(f"space.darts.network.stem={stem}", f"space.darts.network.cells={cells}",
                  f"space.darts.network.channels={width}", *extra)


def _measured(space: DartsSpace, arch, num_classes: int, in_channels: int, image_size: int) -> tuple[int, int]:
    """Params and MACs of the really built network + GAP + Linear classifier (no auxiliary head)."""
    net = space.build_network(arch, in_channels)
    full = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(net.out_channels, num_classes))
    return count_params(full), count_macs(full, torch.zeros(1, in_channels, image_size, image_size))


def _randomize_bn(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


# ---- published counts ----------------------------------------------------------------------------------
# CIFAR-10 evaluation networks: 20 cells, C=36, 10 classes, auxiliary head excluded (DARTS
# count_parameters_in_MB skips it). Published: DARTS (2nd order) 3.3 M, DARTS paper (arXiv 1806.09055)
# Table 1; P-DARTS 3.4 M, P-DARTS paper (arXiv 1904.12760) Table 1; PC-DARTS 3.6 M, PC-DARTS paper (arXiv
# 1907.05737) Table 1. Each measured count rounds to its published figure at 0.1 M.
@pytest.mark.parametrize("name,params,published_m", [
    ("DARTS_V2", 3_349_342, 3.3),
    ("PDARTS", 3_433_798, 3.4),
    ("PCDARTS_C10", 3_634_678, 3.6),
])
def test_cifar_evaluation_networks_have_published_parameter_counts(name, params, published_m):
    space = _network_space("cifar", 20, 36)
    arch = genotype.published()[name]
    measured_params, measured_macs = _measured(space, arch, 10, 3, 32)
    assert measured_params == params
    assert round(params / 1e6, 1) == published_m
    assert space.cost(arch, 10) == ArchCost(params=params, flops=measured_macs)


# ImageNet evaluation networks (14 cells, stem imagenet, 224 px, 1000 classes, aux excluded) against RLNAS
# Table 3 (shared/reference/rlnas.md sec. 8) and, for DARTS_V2, the DARTS paper's 4.7 M (Table 3).
# FLOPs = multiply-accumulates of convolutions and the classifier. RLNAS's thop counts the classifier as
# (2 * 768 - 1) * 1000 operations, 0.77 M more at C=48: 628.36 M here, 629.12 M with that count.
@pytest.mark.parametrize("name,channels,params,macs,published_params,published_flops", [
    ("RLNAS_CIFAR10", 48, 5_674_720, 628_356_864, 5.7e6, 629e6),
    ("RLNAS_CIFAR10", 46, 5_257_581, 579_815_648, 5.3e6, 581e6),
    ("RLNAS_IMAGENET_600M", 48, 5_463_616, 595_983_936, 5.5e6, 597e6),
    ("DARTS_V2", 48, 4_718_752, 529_911_552, 4.7e6, None),
])
def test_imagenet_evaluation_networks_match_rlnas_table_3(name, channels, params, macs, published_params,
                                                          published_flops):
    space = _network_space("imagenet", 14, channels)
    cost = space.cost(genotype.published()[name], 1000, image_size=224)
    assert (cost.params, cost.flops) == (params, macs)
    assert abs(cost.params / published_params - 1) < 0.01
    if published_flops is not None:
        assert abs(cost.flops / published_flops - 1) < 0.01


def test_imagenet_count_of_the_built_network_equals_the_table():
    space = _network_space("imagenet", 14, 48)
    arch = genotype.published()["RLNAS_IMAGENET_600M"]
    assert _measured(space, arch, 1000, 3, 224) == (5_463_616, 595_983_936)


# ---- cost table --------------------------------------------------------------------------------------
def _table_archs() -> list[tuple[int, ...]]:
    unnas = dict(genotype.unnas_samples())
    with_none = next(a for a in unnas.values() if NONE in a[0::2])
    same_input = next(a for a in unnas.values() if any(a[i + 1] == a[i + 3] for i in range(0, 32, 4)))
    return [genotype.published()["DARTS_V1"], genotype.published()["RLNAS_IMAGENET"], with_none, same_input,
            WITH_NONE_AND_REPEATS, ALL_NONE, DEAD_FROM_INPUTS, NO_POOLING, genotype.sample(random.Random(3))]


@pytest.mark.parametrize("stem,cells,channels,num_classes,in_channels,image_size", [
    ("cifar", 5, 4, 10, 3, 16),
    ("cifar", 4, 3, 7, 1, 15),      # odd width, odd resolution: the reductions round up
    ("imagenet", 5, 6, 100, 3, 64),
    ("imagenet", 3, 4, 5, 2, 37),
])
def test_cost_table_equals_counts_of_the_built_network(stem, cells, channels, num_classes, in_channels, image_size):
    space = _network_space(stem, cells, channels, "space.darts.network.auxiliary=true")
    for arch in _table_archs():
        cost = space.cost(arch, num_classes, in_channels, image_size)
        assert (cost.params, cost.flops) == _measured(space, arch, num_classes, in_channels, image_size), \
            genotype.to_text(arch)


def test_table_archs_cover_none_and_repeated_inputs():
    archs = _table_archs()
    assert any(NONE in a[0::2] for a in archs[2:4])
    assert any(a[i + 1] == a[i + 3] for a in archs[2:4] for i in range(0, 32, 4))


def test_cost_of_none_ops_is_zero_and_order_of_pairs_does_not_matter():
    space = _network_space("cifar", 5, 4)
    base = space.cost(ALL_NONE, 10)
    one_sep = list(ALL_NONE)
    one_sep[0] = SEP3
    swapped = list(ALL_NONE)
    swapped[2] = SEP3
    assert space.cost(tuple(one_sep), 10) == space.cost(tuple(swapped), 10)
    assert space.cost(tuple(one_sep), 10).params > base.params


# ---- widths from a FLOPs budget ---------------------------------------------------------------------------
@pytest.mark.parametrize("stem,cells,budget,step", [("cifar", 5, 2e6, 1), ("imagenet", 4, 3e6, 2)])
def test_null_channels_picks_the_widest_width_within_the_budget(stem, cells, budget, step):
    space = _network_space(stem, cells, None, f"space.darts.network.flops_budget={budget}")
    size, classes = {"cifar": (32, 10), "imagenet": (224, 1000)}[stem]
    arch = genotype.published()["DARTS_V2"]
    width = space.network_channels(arch)
    assert width % step == 0 and width > step
    fits = _network_space(stem, cells, width).cost(arch, classes, image_size=size).flops
    too_big = _network_space(stem, cells, width + step).cost(arch, classes, image_size=size).flops
    assert fits <= budget < too_big
    network = space.build_network(arch, 3)
    assert network.cells[0].channels == width
    assert space.cost(arch, classes, image_size=size).flops == fits


def test_flops_budget_of_600m_gives_rlnas_imagenet_600m_its_width_48():
    # RLNAS's ImageNet evolution caps FLOPs at 600 M at C=48; its pick has 596 M there (Table 3: 597 M)
    space = _network_space("imagenet", 14, None, "space.darts.network.flops_budget=600e6")
    assert space.network_channels(genotype.published()["RLNAS_IMAGENET_600M"]) == 48


def test_bad_widths_raise_config_error():
    with pytest.raises(ConfigError, match="flops_budget"):
        _network_space("cifar", 5, None)
    with pytest.raises(ConfigError, match="flops_budget"):
        _network_space("cifar", 5, None, "space.darts.network.flops_budget=1000").build_network(
            genotype.published()["DARTS_V2"], 3)
    with pytest.raises(ConfigError, match="even"):
        _network_space("imagenet", 5, 7)
    with pytest.raises(ConfigError, match="even"):
        _space("space.darts.supernet.stem=imagenet", "space.darts.supernet.channels=5")


# ---- encoding ------------------------------------------------------------------------------------------
def test_encoding_round_trips_and_is_not_enumerable():
    space = _space()
    arch = genotype.published()["PDARTS"]
    assert space.from_str(space.to_str(arch)) == arch
    assert space.from_str("pdarts") == arch
    assert space.to_index(arch) == space.to_index(tuple(arch)) != space.to_index(genotype.published()["DARTS_V2"])
    assert not space.enumerable and space.num_archs() == 9 ** 16 * (2 * 3 * 4 * 5) ** 4
    with pytest.raises(ConfigError, match="not enumerable"):
        space.from_index(0)
    rng = random.Random(0)
    assert all(space.is_trainable(space.sample_uniform(rng)) for _ in range(20))
    assert space.num_cells == 8


# ---- stand-alone network ------------------------------------------------------------------------------------
def test_network_trains_with_aux_head_and_drop_path():
    space = _network_space("cifar", 3, 4, "space.darts.network.auxiliary=true")
    torch.manual_seed(0)
    net = space.build_network(WITH_NONE_AND_REPEATS, 3)
    assert net.aux_channels == 4 * 16  # cell 2 (= 2*3//3) is the second reduction: 4 nodes x 4C
    head = net.build_aux_head(10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 2  # CIFAR head keeps both BNs
    classifier = nn.Linear(net.out_channels, 10)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    net.drop_path_prob = 0.3
    features = net(x)
    assert features.shape == (4, net.out_channels, 8, 8)
    assert net.aux_features is not None and net.aux_features.shape == (4, 64, 8, 8)
    loss = classifier(features.mean((2, 3))).logsumexp(1).mean() + head(net.aux_features).logsumexp(1).mean()
    loss.backward()
    assert net.stem.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())
    # drop path draws a fresh mask each forward; without it the training forward is deterministic
    with torch.no_grad():
        torch.manual_seed(1)
        a = net(x)
        torch.manual_seed(2)
        b = net(x)
        net.drop_path_prob = 0.0
        c, d = net(x), net(x)
    assert not torch.allclose(a, b) and torch.equal(c, d)
    net.eval()
    with torch.no_grad():
        net(x)
    assert net.aux_features is None


def test_imagenet_aux_head_second_bn_is_optional():
    for second_bn, count in ((False, 1), (True, 2)):
        space = _network_space("imagenet", 3, 4, f"space.darts.network.aux_second_bn={str(second_bn).lower()}")
        net = space.build_network(NO_POOLING, 3)
        head = net.build_aux_head(5)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == count
        assert head(torch.randn(2, net.aux_channels, 7, 7)).shape == (2, 5)
        with pytest.raises(ValueError, match="auxiliary head"):
            head(torch.randn(2, net.aux_channels, 9, 9))
    no_aux = _network_space("cifar", 3, 4, "space.darts.network.auxiliary=false").build_network(NO_POOLING, 3)
    assert no_aux.aux_channels == 0


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(2000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1))
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.04


# ---- supernet ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem,size,out_hw", [("cifar", 16, 4), ("imagenet", 32, 1)])
def test_supernet_path_and_mixture_forwards(stem, size, out_hw):
    space = _space(f"space.darts.supernet.stem={stem}", "space.darts.supernet.cells=4",
                   "space.darts.supernet.channels=4")
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    assert supernet.num_cells == 4 and [c.reduction for c in supernet.cells] == [False, True, True, False]
    x = torch.randn(2, 3, size, size)
    rng = random.Random(0)
    per_cell = tuple(space.sample(rng) for _ in range(4))
    for arch in (space.sample(rng), per_cell, WITH_NONE_AND_REPEATS, DEAD_FROM_INPUTS):
        out = supernet(x, arch=arch)
        assert out.shape == (2, 4 * 16, out_hw, out_hw)
    mixture = torch.softmax(torch.randn(2, 14, 8), dim=-1).requires_grad_()
    out = supernet(x, mixture=mixture)
    assert out.shape == (2, 64, out_hw, out_hw)
    out.sum().backward()
    assert mixture.grad[:, :, 1:].abs().sum() > 0 and torch.all(mixture.grad[:, :, 0] == 0)
    with pytest.raises(ValueError, match="per-cell"):
        supernet(x, arch=per_cell[:3])
    with pytest.raises(ValueError, match="shape"):
        supernet(x, mixture=torch.zeros(14, 8))
    with pytest.raises(ValueError, match="exactly one"):
        supernet(x)


def test_supernet_runs_each_cell_types_half_and_per_cell_archs():
    space = _space("space.darts.supernet.cells=3", "space.darts.supernet.channels=4")
    torch.manual_seed(0)
    supernet = space.build_supernet(3).eval()
    x = torch.randn(2, 3, 16, 16)
    a, b = genotype.published()["DARTS_V2"], genotype.published()["PDARTS"]
    with torch.no_grad():
        assert torch.equal(supernet(x, arch=a), supernet(x, arch=(a, a, a)))
        # cells 1 and 2 are reductions: b's reduce half with a's normal half runs like (a, b, b)
        mixed = a[:16] + b[16:]
        assert torch.equal(supernet(x, arch=mixed), supernet(x, arch=(a, b, b)))
        assert not torch.allclose(supernet(x, arch=(a, b, b)), supernet(x, arch=(b, b, b)))


def test_supernet_one_hot_mixture_equals_path():
    space = _space("space.darts.supernet.cells=3", "space.darts.supernet.channels=4")
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    _randomize_bn(supernet, 1)
    supernet.eval()
    x = torch.randn(2, 3, 16, 16)
    rng = random.Random(5)
    for _ in range(3):
        arch = space.sample(rng)
        edges = genotype.to_edges(arch)
        mixture = torch.zeros(2, 14, 8)
        for cell in range(2):
            for pos in range(14):
                if edges[14 * cell + pos]:
                    mixture[cell, pos, edges[14 * cell + pos]] = 1.0
        with torch.no_grad():
            assert torch.allclose(supernet(x, arch=arch), supernet(x, mixture=mixture), atol=1e-5)


def test_supernet_path_equals_stand_alone_network_with_copied_weights():
    """Pooling aside (the supernet follows it with a BN), a path is the stand-alone network's cell."""
    sup_space = _space("space.darts.supernet.cells=4", "space.darts.supernet.channels=4")
    net_space = _network_space("cifar", 4, 4, "space.darts.network.auxiliary=false")
    torch.manual_seed(0)
    supernet = sup_space.build_supernet(3)
    _randomize_bn(supernet, 2)
    supernet.eval()
    x = torch.randn(2, 3, 16, 16)
    for arch in (NO_POOLING, genotype.published()["DARTS_V2"][:16] + NO_POOLING[16:]):
        network = net_space.build_network(arch, 3).eval()
        network.stem.load_state_dict(supernet.stem.state_dict())
        for net_cell, sup_cell in zip(network.cells, supernet.cells):
            net_cell.preprocess0.load_state_dict(sup_cell.preprocess0.state_dict())
            net_cell.preprocess1.load_state_dict(sup_cell.preprocess1.state_dict())
            for j, (node, op, src) in enumerate(net_cell.pairs):
                if op:
                    net_cell.ops[str(j)].load_state_dict(sup_cell.edges[EDGE_POS[(node, src)]][OPS[op]].state_dict())
        with torch.no_grad():
            assert torch.allclose(network(x), supernet(x, arch=arch), atol=1e-5)


# ---- angle vector ---------------------------------------------------------------------------------------
def _tiny_supernet(*overrides: str):
    space = _space("space.darts.supernet.cells=3", "space.darts.supernet.channels=2", *overrides)
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    _randomize_bn(supernet, 3)
    return space, supernet, nn.Linear(supernet.out_channels, 10)


def _op_vector(cell, node: int, op: int, src: int, dil_bn_twice: bool = True) -> torch.Tensor:
    """One pair's tensors as RLNAS test_server.py collects them, by module index."""
    module = cell.edges[EDGE_POS[(node, src)]][OPS[op]]
    flat = lambda t: t.reshape(-1)  # noqa: E731
    if op in (SEP3, SEP5):
        return torch.cat([flat(module[i].weight) for i in (1, 2, 5, 6)] +
                         [module[3].weight, module[3].bias, module[7].weight, module[7].bias])
    if op in (DIL3, DIL5):
        bn = [module[3].weight, module[3].weight] if dil_bn_twice else [module[3].weight, module[3].bias]
        return torch.cat([flat(module[1].weight), flat(module[2].weight)] + bn)
    if op in (MAX, AVG):
        return torch.cat([torch.full((cell.channels * 9,), 1 / 9), module[1].weight, module[1].bias])
    if isinstance(module, FactorizedReduce):
        return torch.cat([flat(module.conv_1.weight), flat(module.conv_2.weight), module.bn.weight, module.bn.bias])
    return torch.eye(cell.channels).reshape(-1)


def _fixed_parts(supernet, head) -> list[torch.Tensor]:
    stem = supernet.stem.stem
    out = [torch.cat([stem[0].weight.reshape(-1), stem[1].weight, stem[1].bias])]
    for cell in supernet.cells:
        for pre in (cell.preprocess0, cell.preprocess1):
            if isinstance(pre, FactorizedReduce):
                out.append(torch.cat([pre.conv_1.weight.reshape(-1), pre.conv_2.weight.reshape(-1), pre.bn.weight,
                                      pre.bn.bias]))
            else:
                out.append(torch.cat([pre[1].weight.reshape(-1), pre[2].weight, pre[2].bias]))
    return out + [head.weight.reshape(-1)]


def _same_multiset(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to order: the angle between two such vectors does not depend on the order, only on which
    tensors are in them and how many times."""
    return a.shape == b.shape and torch.equal(a.sort().values, b.sort().values)


def test_path_copies_by_hand():
    # normal half of WITH_NONE_AND_REPEATS; paths (states 0, 1 inputs, 2..5 nodes; pair used on each step):
    # to 2: 0-sep3, 1-skip; to 3: via 2 (x2); to 4: 1-avg, and via 3 (x2); to 5: via 2-max (x2), via 4-dil5
    # (x3). sep3/skip into node 2 lie on 1 x 5 paths, dil3 on 2 x 3, avg 1 x 2, sep5 2 x 2, max 2 x 1, dil5 3 x 1.
    assert path_copies(genotype.pairs(WITH_NONE_AND_REPEATS, 0)) == [5, 5, 6, 0, 2, 4, 2, 3]
    # reduce half: node 1 (state 3) has two none pairs, so max (reading it) is on no path; both pairs of node 0
    # read input 0 (two distinct steps, two paths each: ending at state 2, and through skip into state 5)
    assert path_copies(genotype.pairs(WITH_NONE_AND_REPEATS, 1)) == [2, 2, 0, 0, 0, 2, 1, 2]
    assert path_copies(genotype.pairs(DEAD_FROM_INPUTS, 0)) == [0] * 8


def test_angle_vector_assembled_by_hand():
    """3 cells (cell 0 normal; cells 1, 2 reductions), C=2, arch WITH_NONE_AND_REPEATS, paths written out."""
    space, supernet, head = _tiny_supernet()
    arch = WITH_NONE_AND_REPEATS
    # (pair index in the cell half, ...) for each live path, by hand from the cell drawings
    normal_paths = [(0,), (1,), (0, 2), (1, 2), (4,), (0, 2, 5), (1, 2, 5), (0, 6), (1, 6), (4, 7), (0, 2, 5, 7),
                    (1, 2, 5, 7)]
    reduce_paths = [(0,), (1,), (5,), (5, 6), (0, 7), (1, 7)]
    pieces = _fixed_parts(supernet, head)
    for cell in supernet.cells:
        half, paths = (1, reduce_paths) if cell.reduction else (0, normal_paths)
        cell_pairs = genotype.pairs(arch, half)
        for path in paths:
            pieces += [_op_vector(cell, *cell_pairs[j]) for j in path]
    expected = torch.cat(pieces)
    got = space.angle_vector(supernet, head, arch)
    assert _same_multiset(got, expected)
    # a skip at stride 2 is a FactorizedReduce, at stride 1 eye(C): both in the reduction cells' vectors
    assert isinstance(supernet.cells[1].edges[EDGE_POS[(0, 0)]]["skip_connect"], FactorizedReduce)


def _rlnas_vector(supernet, head, arch, dil_bn_twice=True) -> torch.Tensor:
    """RLNAS get_arch_vector over its 30 explicit paths on the 14-edge form of ``arch``."""
    paths = [[0, 2, 3, 4, 5], [0, 2, 3, 5], [0, 2, 4, 5], [0, 2, 5], [0, 3, 4, 5], [0, 3, 5], [0, 4, 5], [0, 5],
             [1, 2, 3, 4, 5], [1, 2, 3, 5], [1, 2, 4, 5], [1, 2, 5], [1, 3, 4, 5], [1, 3, 5], [1, 4, 5], [1, 5],
             [0, 2, 3, 4], [0, 2, 4], [0, 3, 4], [0, 4], [1, 2, 3, 4], [1, 2, 4], [1, 3, 4], [1, 4],
             [0, 2, 3], [0, 3], [1, 2, 3], [1, 3], [0, 2], [1, 2]]
    edges = genotype.to_edges(arch)
    pieces = []
    for cell in supernet.cells:
        cand = edges[14:] if cell.reduction else edges[:14]
        for path in paths:
            steps = [(j - 2, k) for k, j in zip(path, path[1:])]
            ops = [cand[EDGE_INPUTS.index(step)] for step in steps]
            if all(ops):
                pieces += [_op_vector(cell, node, op, src, dil_bn_twice) for (node, src), op in zip(steps, ops)]
    return torch.cat(_fixed_parts(supernet, head) + pieces)


@pytest.mark.parametrize("dil_bn_twice", [True, False])
def test_angle_vector_equals_rlnas_on_edge_form_archs(dil_bn_twice):
    space, supernet, head = _tiny_supernet(f"space.darts.angle.dil_bn_twice={str(dil_bn_twice).lower()}")
    rng = random.Random(11)
    archs = [space.sample(rng) for _ in range(6)] + [genotype.published()["RLNAS_CIFAR10"]]
    for arch in archs:
        assert _same_multiset(space.angle_vector(supernet, head, arch),
                              _rlnas_vector(supernet, head, arch, dil_bn_twice))
    # the angle itself between two weight states
    trained = space.build_supernet(3)
    for p, q in zip(trained.parameters(), supernet.parameters()):
        with torch.no_grad():
            p.copy_(q + 0.1 * torch.randn_like(q))
    cos = nn.functional.cosine_similarity
    for arch in archs[:2]:
        ours = cos(space.angle_vector(supernet, head, arch), space.angle_vector(trained, head, arch), dim=0)
        theirs = cos(_rlnas_vector(supernet, head, arch, dil_bn_twice),
                     _rlnas_vector(trained, head, arch, dil_bn_twice), dim=0)
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_dil_bn_twice_decides_the_dil_conv_bn_tensors():
    arch = (DIL3, 0, DIL5, 1) * 8
    lengths = {}
    for twice in (True, False):
        space, supernet, head = _tiny_supernet(f"space.darts.angle.dil_bn_twice={str(twice).lower()}")
        with torch.no_grad():
            for cell in supernet.cells:
                for edge in cell.edges:
                    for name in ("dil_conv_3x3", "dil_conv_5x5"):
                        edge[name][3].bias.fill_(7.0)
        vec = space.angle_vector(supernet, head, arch)
        lengths[twice] = vec.numel()
        assert (vec == 7.0).any() != twice  # a dil_conv BN bias only without dil_bn_twice ...
    assert lengths[True] == lengths[False]  # ... in place of the weight's second copy


@pytest.mark.parametrize("arch", [ALL_NONE, DEAD_FROM_INPUTS])
def test_angle_vector_is_none_when_every_path_is_dropped(arch):
    space, supernet, head = _tiny_supernet()
    assert space.angle_vector(supernet, head, arch) is None


@pytest.mark.parametrize("stride", [1, 2])
def test_average_pool_does_not_count_padding(stride):
    pool = make_op("avg_pool_3x3", 3, stride, affine=True, track_stats=True)
    side = {1: 5, 2: 3}[stride]
    assert torch.equal(pool(torch.ones(1, 3, 5, 5)), torch.ones(1, 3, side, side))

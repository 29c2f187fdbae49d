"""NB201 space: encoding against the published tables, costs, sampling, supernet paths and the angle vector."""
from __future__ import annotations

import csv
import random

import pytest
import torch
from torch import nn

from nas.registry import ConfigError
from nas.spaces import build_space
from nas.spaces.cost import count_macs, count_params
from nas.spaces.base import HardMixture
from nas.spaces.nb201 import EDGES, OPS
from nas.spaces.nb201_ops import AvgPool3x3
from nas.tasks.base import LinearHead

RESNET_LIKE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NUM_ARCHS = 5 ** 6

pytestmark = pytest.mark.usefixtures("single_thread")


def _read_column(path, column):
    with open(path, newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def _has_dead_node(arch) -> bool:
    """A node (1..3) all of whose incoming edges are ``none``, computed from EDGES independently of the space."""
    for node in (1, 2, 3):
        incoming = [pos for pos, (dst, _src) in enumerate(EDGES) if dst == node]
        if all(arch[pos] == 0 for pos in incoming):
            return True
    return False


def _randomize_bn(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            if m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


# ---- encoding against the published tables --------------------------------------------------------
@pytest.mark.parametrize(
    "filename,column",
    [("nb201_cifar10-valid_200ep.csv", "arch_str"), ("nb201_200ep_test.csv", "ArchitectureString"),
     ("nb201_12ep.csv", "cellstr")],
)
def test_encoding_matches_published_index_order(nb201_tables, space_cfg, filename, column):
    space = build_space(space_cfg)
    strings = _read_column(nb201_tables / filename, column)
    assert len(strings) == NUM_ARCHS == space.num_archs()
    seen = set()
    for index, text in enumerate(strings):
        arch = space.from_str(text)
        assert space.to_str(arch) == text, index
        assert space.to_index(arch) == index, text
        assert space.from_index(index) == arch, (index, text)
        seen.add(arch)
    assert len(seen) == NUM_ARCHS


def test_published_index_column_is_the_row_number(nb201_tables):
    # guards the assumption "row i is index i" the test above relies on
    assert _read_column(nb201_tables / "nb201_cifar10-valid_200ep.csv", "index") == [str(i) for i in range(NUM_ARCHS)]
    assert _read_column(nb201_tables / "nb201_12ep.csv", "arch") == [str(i) for i in range(NUM_ARCHS)]


def test_round_trips_over_the_whole_space(space_cfg):
    space = build_space(space_cfg)
    indices = set()
    for index in range(space.num_archs()):
        arch = space.from_index(index)
        assert len(arch) == len(EDGES) and all(0 <= g < len(OPS) for g in arch)
        assert space.to_index(arch) == index
        assert space.from_str(space.to_str(arch)) == arch
        indices.add(arch)
    assert len(indices) == NUM_ARCHS
    # two hand-checked rows of the benchmark
    assert space.to_str(space.from_index(0)) == (
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")
    assert space.from_index(1) == (3, 3, 4, 1, 3, 1)


def test_to_str_uses_edge_order(space_cfg):
    space = build_space(space_cfg)
    assert space.to_str((0, 1, 2, 3, 4, 0)) == (
        "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|none~2|")
    assert space.from_str(" |none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|none~2|\n") == (
        0, 1, 2, 3, 4, 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|",  # two nodes only
        "|nor_conv_3x3~0|+|conv_5x5~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # unknown op
        "|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # bad ~j
        "nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # no bar
        "|NOR_CONV_3X3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    ],
)
def test_invalid_cell_string_raises_config_error_naming_it(space_cfg, text):
    space = build_space(space_cfg)
    with pytest.raises(ConfigError) as err:
        space.from_str(text)
    assert repr(text) in str(err.value)


def test_unknown_op_is_named(space_cfg):
    space = build_space(space_cfg)
    with pytest.raises(ConfigError, match="conv_5x5"):
        space.from_str("|nor_conv_3x3~0|+|conv_5x5~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")


@pytest.mark.parametrize("index", [-1, NUM_ARCHS, NUM_ARCHS + 10])
def test_from_index_out_of_range(space_cfg, index):
    with pytest.raises(ConfigError, match=str(index)):
        build_space(space_cfg).from_index(index)


# ---- parameter counts ----------------------------------------------------------------------------------
def test_resnet_like_cell_has_published_parameter_count(space_cfg):
    space = build_space(space_cfg)
    arch = space.from_str(RESNET_LIKE)
    assert space.cost(arch, 10).params == 1_288_506
    network = space.build_network(arch, 3)
    assert network.out_channels == 64
    assert count_params(network) + count_params(LinearHead(network.out_channels, 10)) == 1_288_506


def test_supernet_parameter_count(space_cfg):
    space = build_space(space_cfg)
    supernet = space.build_supernet(3)
    assert supernet.out_channels == 64
    assert count_params(supernet) + count_params(nn.Linear(64, 10)) == 1_692_826


@pytest.mark.parametrize("in_channels,image_size,num_classes", [(3, 32, 10), (1, 16, 7)])
def test_cost_table_equals_measured_cost(tiny_space_cfg, in_channels, image_size, num_classes):
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=2))
    rng = random.Random(1234)
    archs = [(0,) * 6, (3,) * 6, (1,) * 6, (4,) * 6, (2, 0, 0, 0, 0, 0)]
    archs += [tuple(rng.randrange(5) for _ in range(6)) for _ in range(25)]
    x = torch.zeros(1, in_channels, image_size, image_size)
    seen = set()
    for arch in archs:
        network = space.build_network(arch, in_channels)
        model = nn.Sequential(network, LinearHead(network.out_channels, num_classes))
        cost = space.cost(arch, num_classes, in_channels=in_channels, image_size=image_size)
        assert cost.params == count_params(model), arch
        assert cost.flops == count_macs(model, x), arch
        seen.add((cost.params, cost.flops))
    assert len(seen) > 10  # costs really depend on the arch


def test_cost_by_hand_for_a_tiny_network(tiny_space_cfg):
    """C=4, N=1, 3x32x32, 10 classes: all-none cell vs one 3x3 conv on edge 0, counted by hand."""
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=1))
    # stem 3*4*9 + BN 8; reduction 4->8: 288+16 + 576+16 + 32; 8->16: 1152+32 + 2304+32 + 128; last BN 32; head 170
    fixed_params = 116 + 928 + 3648 + 32 + 170
    assert space.cost((0,) * 6, 10).params == fixed_params
    # one ReLUConvBN 3x3 per stage: 9c^2 + 2c for c = 4, 8, 16
    conv3 = sum(9 * c * c + 2 * c for c in (4, 8, 16))
    assert space.cost((3, 0, 0, 0, 0, 0), 10).params == fixed_params + conv3
    # MACs of that conv: 9c^2 * hw at 32x32, 16x16, 8x8
    conv3_macs = 9 * 16 * 1024 + 9 * 64 * 256 + 9 * 256 * 64
    assert space.cost((3, 0, 0, 0, 0, 0), 10).flops - space.cost((0,) * 6, 10).flops == conv3_macs


# ---- sampling ------------------------------------------------------------------------------------------
def test_sample_never_has_a_dead_node_and_covers_every_op(space_cfg):
    space = build_space(space_cfg)
    rng = random.Random(0)
    seen = [set() for _ in EDGES]
    for _ in range(3000):
        arch = space.sample(rng)
        assert len(arch) == 6
        assert not _has_dead_node(arch), arch
        for pos, gene in enumerate(arch):
            seen[pos].add(gene)
    # edge (1, 0) is node 1's only input, so it can never be none; every other edge sees every op
    assert EDGES[0] == (1, 0)
    assert seen[0] == {1, 2, 3, 4}
    for pos in range(1, len(EDGES)):
        assert seen[pos] == set(range(len(OPS))), (EDGES[pos], seen[pos])


def test_sample_is_reproducible(space_cfg):
    space = build_space(space_cfg)
    a = [space.sample(random.Random(5)) for _ in range(3)]
    first = random.Random(5)
    second = random.Random(5)
    assert [space.sample(first) for _ in range(50)] == [space.sample(second) for _ in range(50)]
    assert a[0] == a[1] == a[2]


def test_is_trainable_agrees_with_dead_node_rule(space_cfg):
    space = build_space(space_cfg)
    for index in range(space.num_archs()):
        arch = space.from_index(index)
        assert space.is_trainable(arch) == (not _has_dead_node(arch)), arch


def test_sample_distinct(space_cfg):
    space = build_space(space_cfg)
    archs = space.sample_distinct(200, random.Random(3))
    assert len(archs) == len(set(archs)) == 200
    assert archs == space.sample_distinct(200, random.Random(3))
    assert len(set(space.sample_distinct(NUM_ARCHS, random.Random(0)))) == NUM_ARCHS
    with pytest.raises(ConfigError, match=str(NUM_ARCHS + 1)):
        space.sample_distinct(NUM_ARCHS + 1, random.Random(0))


# ---- supernet ------------------------------------------------------------------------------------------
def test_supernet_path_equals_discrete_network_with_copied_weights(tiny_space_cfg):
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=1, bn_affine=True))
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    _randomize_bn(supernet, 1)
    supernet.eval()
    state = supernet.state_dict()
    x = torch.randn(2, 3, 16, 16)
    archs = [space.from_str(RESNET_LIKE), (1, 2, 4, 3, 0, 2), (4, 4, 4, 4, 4, 4), (0, 3, 0, 2, 0, 1), (2, 1, 1, 3, 4, 0)]
    outputs = []
    for arch in archs:
        network = space.build_network(arch, 3)
        wanted = network.state_dict()
        assert set(wanted) <= set(state), sorted(set(wanted) - set(state))
        network.load_state_dict({k: state[k] for k in wanted}, strict=True)
        network.eval()
        with torch.no_grad():
            expected = network(x)
            got = supernet(x, arch=arch)
        assert got.shape == (2, 16, 4, 4)
        assert torch.allclose(got, expected, atol=1e-5), (arch, (got - expected).abs().max())
        outputs.append(got)
    assert not torch.allclose(outputs[0], outputs[1])  # the path matters


def test_supernet_one_hot_mixture_equals_path(tiny_space_cfg):
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=1))
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    _randomize_bn(supernet, 2)
    supernet.eval()
    x = torch.randn(2, 3, 16, 16)
    rng = random.Random(7)
    for _ in range(5):
        arch = space.sample(rng)
        mixture = torch.zeros(len(EDGES), len(OPS))
        mixture[torch.arange(len(EDGES)), torch.tensor(arch)] = 1.0
        with torch.no_grad():
            by_path = supernet(x, arch=arch)
            by_mixture = supernet(x, mixture=mixture)
        assert torch.allclose(by_path, by_mixture, atol=1e-5), arch
    # a non-one-hot mixture is not any single path
    with torch.no_grad():
        mixed = supernet(x, mixture=torch.full((len(EDGES), len(OPS)), 0.2))
    assert not torch.allclose(mixed, by_path)


def test_supernet_bad_calls_raise_value_error(tiny_space_cfg):
    space = build_space(tiny_space_cfg())
    supernet = space.build_supernet(3)
    x = torch.randn(1, 3, 8, 8)
    arch = (1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        supernet(x)
    with pytest.raises(ValueError):
        supernet(x, arch=arch, mixture=torch.zeros(6, 5))
    for shape in [(5, 6), (6, 4), (6, 5, 1), (30,)]:
        with pytest.raises(ValueError, match="shape"):
            supernet(x, mixture=torch.zeros(*shape))


# ---- angle vector --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [(0, 0, 3, 0, 3, 3), (3, 0, 3, 0, 0, 0), (0, 0, 0, 0, 0, 0), (1, 0, 4, 0, 0, 0)])
def test_angle_vector_none_when_every_path_is_cut(tiny_space_cfg, arch):
    space = build_space(tiny_space_cfg())
    supernet = space.build_supernet(3)
    assert space.angle_vector(supernet, nn.Linear(16, 10), arch) is None


def test_angle_vector_length_and_content_by_hand(tiny_space_cfg):
    """C=4, N=1, 10 classes. Arch: e0=3x3, e1=none, e2=pool, e3=skip, e4=1x1, e5=3x3.

    Paths: 0->3 (e3 skip, live, contributes nothing); 0->2->3 (e1 none, dead); 0->1->2->3 (e0, e2, e5 live);
    0->1->3 (e0, e4 live). Edge 0 lies on two live paths and contributes twice.
    """
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=1))
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    head = nn.Linear(16, 10)
    arch = (3, 0, 4, 1, 2, 3)
    vec = space.angle_vector(supernet, head, arch)
    assert vec is not None and vec.dim() == 1
    fixed = (3 * 4 * 9 + 2 * 4) + (9 * 4 * 8 + 16 + 9 * 8 * 8 + 16 + 4 * 8) + (
        9 * 8 * 16 + 32 + 9 * 16 * 16 + 32 + 8 * 16) + 2 * 16 + (16 * 10 + 10)
    assert fixed == 4894
    per_cell = lambda c: (9 * c * c + 9 * c + 9 * c * c) + (9 * c * c + c * c)  # noqa: E731
    assert vec.numel() == fixed + sum(per_cell(c) for c in (4, 8, 16)) == 4894 + 9660

    # content of the first cell's slice: path 0->1->2->3 then path 0->1->3
    cells = [layer for layer in supernet.layers if hasattr(layer, "edges")]
    assert len(cells) == 3
    first = cells[0]
    conv = lambda pos, name: first.edges[pos][name][1].weight.reshape(-1)  # noqa: E731
    expected = torch.cat([
        conv(0, "nor_conv_3x3"), torch.full((4 * 9,), 1.0 / 9.0), conv(5, "nor_conv_3x3"),
        conv(0, "nor_conv_3x3"), conv(4, "nor_conv_1x1"),
    ])
    assert torch.equal(vec[fixed:fixed + per_cell(4)], expected)
    # the head's weights are part of the fixed block
    assert torch.equal(vec[fixed - 170:fixed - 10], head.weight.reshape(-1))


def test_angle_vector_moves_with_shared_weights(tiny_space_cfg):
    space = build_space(tiny_space_cfg())
    supernet = space.build_supernet(3)
    head = nn.Linear(16, 10)
    arch = (3, 3, 3, 3, 3, 3)
    before = space.angle_vector(supernet, head, arch).clone()
    with torch.no_grad():
        supernet.layers[0].edges[0]["nor_conv_3x3"][1].weight.add_(1.0)
    after = space.angle_vector(supernet, head, arch)
    changed = (before != after).sum().item()
    # edge 0's 4*4*9 weights lie on two live paths (0->1->2->3 and 0->1->3) in the first cell
    assert changed == 2 * 4 * 4 * 9


def test_channels_last_layout_changes_no_result(tiny_space_cfg, monkeypatch):
    """Activations and weights are channels_last for speed; the numbers are those of the NCHW network."""
    from nas.spaces import nb201

    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=2))
    torch.manual_seed(0)
    supernet = space.build_supernet(3)
    network = space.build_network(space.from_str(RESNET_LIKE), 3)
    x = torch.randn(4, 3, 16, 16)
    arch = (4, 3, 4, 2, 1, 4)  # pools, convs and a skip
    fast = supernet(x, arch=arch), network(x)
    assert nb201.ACTIVATION_FORMAT == torch.channels_last
    assert fast[0].is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in network.parameters() if p.dim() == 4)
    monkeypatch.setattr(nb201, "ACTIVATION_FORMAT", torch.contiguous_format)
    supernet.to(memory_format=torch.contiguous_format)
    network.to(memory_format=torch.contiguous_format)
    plain = supernet(x, arch=arch), network(x)
    assert plain[0].is_contiguous()
    for got, expected in zip(fast, plain):
        assert torch.allclose(got, expected, atol=1e-5)


def _outputs_and_grads(model: nn.Module, run) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = run()
    out.square().mean().backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5)], ids=str)
def test_avg_pool_padded_beforehand_equals_pytorchs_padded_pool(layout, size):
    """The CUDA path of the cells' average pool (padding outside the pool) is the same function, forward and backward."""
    pool = AvgPool3x3()
    x = torch.randn(3, 4, *size, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    grad_out = torch.randn(3, 4, *size, dtype=torch.float64)
    expected = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    actual = pool.pool_padded_beforehand(x)
    (actual_grad,) = torch.autograd.grad(actual, x, grad_out)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pool(x), expected, rtol=0, atol=0)  # on the CPU: PyTorch's own pool


@pytest.mark.parametrize("kind", ["network", "supernet path", "supernet mixture"])
def test_shared_node_relu_equals_one_relu_per_op(tiny_space_cfg, kind):
    """Cells rectify a node once for all its ReLU-conv-BN readers; outputs and gradients are those of one ReLU per
    op, which is what runs when a hook watches the ReLU modules (each then sees exactly one call per forward)."""
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=2))
    torch.manual_seed(0)
    arch = space.from_str(RESNET_LIKE)  # node 0 and node 1 each feed two 3x3 convolutions
    if kind == "network":
        model = space.build_network(arch, 3)
        run = lambda: model(x)  # noqa: E731
    else:
        model = space.build_supernet(3)
        mixture = torch.softmax(torch.randn(len(EDGES), len(OPS)), dim=1)
        run = (lambda: model(x, arch=arch)) if kind == "supernet path" else (lambda: model(x, mixture=mixture))
    x = torch.randn(4, 3, 16, 16)
    shared = _outputs_and_grads(model, run)
    calls: dict[nn.Module, int] = {}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1)) for m in relus]
    separate = _outputs_and_grads(model, run)
    for handle in handles:
        handle.remove()
    assert len(shared) == len(separate) > 1
    for got, expected in zip(shared, separate):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    used = 12 if kind == "supernet mixture" else 5  # ReLU-conv-BN ops per cell that the forward runs
    assert sorted(set(calls.values())) == [1]
    assert len(calls) == 6 * used + 2 * 2 + 1  # 6 cells, the two reduction blocks' convs, the last activation


# ---- the mixture path against the plain weighted sum ---------------------------------------------------------
def _mixture_cell(tiny_space_cfg, bn_affine: bool, bn_track_stats: bool, seed: int):
    """The first cell of a tiny supernet in float64 (so that sums in another order agree to 1e-10), training mode."""
    space = build_space(tiny_space_cfg(channels=4, bn_affine=bn_affine, bn_track_stats=bn_track_stats))
    torch.manual_seed(seed)
    cell = space.build_supernet(3).double().train().layers[0]
    _randomize_bn(cell, seed)
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    return cell, x


def _explicit_cell(cell, x: torch.Tensor, weights: torch.Tensor, ops_of_edge, extras: bool) -> torch.Tensor:
    """node i = sum over its edges (and their listed ops k) of weights[edge, k] * op_k(node j), each op module called
    whole; with ``extras`` each edge also adds its unlisted ops' weights as scalars (GDAS)."""
    nodes = [x]
    for node in (1, 2, 3):
        total = torch.zeros_like(x)
        for src in range(node):
            pos = EDGES.index((node, src))
            for k in ops_of_edge(pos):
                if OPS[k] != "none":
                    total = total + weights[pos, k] * cell.edges[pos][OPS[k]](nodes[src])
            if extras:
                total = total + sum(weights[pos, k] for k in range(len(OPS)) if k not in ops_of_edge(pos))
        nodes.append(total)
    return nodes[-1]


def _run_and_grads(cell, x: torch.Tensor, weights: torch.Tensor, forward) -> list[torch.Tensor]:
    """Output, gradients of input, op weights and every cell parameter, then the BN buffers the forward updated."""
    x, weights = x.clone().requires_grad_(), weights.detach().clone().requires_grad_()
    out = forward(cell, x, weights)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    params = [p for p in cell.parameters()]
    grads = torch.autograd.grad(out, [x, weights, *params], grad_out, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [x, weights, *params])]
    return [out.detach(), *grads, *[b.clone() for b in cell.buffers()]]


@pytest.mark.parametrize("bn_affine,bn_track_stats", [(False, True), (True, False)])
def test_soft_mixture_equals_the_weighted_sum_of_its_ops(tiny_space_cfg, bn_affine, bn_track_stats):
    """The mixture path folds each ReLU-conv-BN op's weight into its BN; output, every gradient (input, op weights,
    parameters) and the BN running statistics are those of sum_k w_k * op_k(node), ops called whole."""
    import copy

    cell, x = _mixture_cell(tiny_space_cfg, bn_affine, bn_track_stats, seed=3)
    weights = torch.softmax(torch.randn(len(EDGES), len(OPS), dtype=torch.float64), dim=-1)
    every_op = lambda pos: range(len(OPS))  # noqa: E731
    reference = _run_and_grads(copy.deepcopy(cell), x, weights,
                               lambda c, x, w: _explicit_cell(c, x, w, every_op, extras=False))
    got = _run_and_grads(cell, x, weights, lambda c, x, w: c.forward_mixture(x, w))
    assert len(got) == len(reference)
    for g, r in zip(got, reference):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    none = OPS.index("none")
    assert (reference[2][:, none] == 0).all()  # none adds nothing: its weight gets no gradient ...
    assert (torch.cat([reference[2][:, :none], reference[2][:, none + 1:]], dim=1) != 0).all()  # ... every other does


@pytest.mark.parametrize("grad_all", [True, False])
def test_hard_mixture_runs_only_the_chosen_ops_and_grad_all_reaches_every_weight(tiny_space_cfg, grad_all):
    """GDAS's mixture: only each edge's chosen op runs (hooks on the convolutions and pools count the calls); the
    result and gradients equal w_chosen * op_chosen(node) plus, with grad_all, the other weights as scalars, so
    that every weight gets a gradient; without it the unchosen weights get none."""
    import copy

    cell, x = _mixture_cell(tiny_space_cfg, False, True, seed=4)
    chosen = [3, 2, 1, 4, 0, 3]  # 3x3, 1x1, skip, pool, none, 3x3
    weights = torch.rand(len(EDGES), len(OPS), dtype=torch.float64) + 0.5
    reference = _run_and_grads(copy.deepcopy(cell), x, weights,
                               lambda c, x, w: _explicit_cell(c, x, w, lambda pos: [chosen[pos]], extras=grad_all))
    calls: list[nn.Module] = []
    watched = [m for m in cell.modules() if isinstance(m, (nn.Conv2d, AvgPool3x3))]
    handles = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in watched]
    got = _run_and_grads(cell, x, weights, lambda c, x, w: c.forward_mixture(x, HardMixture(w, chosen, grad_all)))
    for handle in handles:
        handle.remove()
    ran = [cell.edges[pos][OPS[k]] for pos, k in enumerate(chosen) if OPS[k] in ("nor_conv_1x1", "nor_conv_3x3")]
    assert sorted(map(id, calls)) == sorted([id(op[1]) for op in ran] + [id(cell.edges[3]["avg_pool_3x3"])])
    for g, r in zip(got, reference):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    unchosen = torch.ones(len(EDGES), len(OPS), dtype=torch.bool)
    unchosen[range(len(EDGES)), chosen] = False
    weight_grad = got[2]
    assert (weight_grad[unchosen] != 0).all() if grad_all else (weight_grad[unchosen] == 0).all()
    assert (weight_grad[~unchosen][[pos for pos, k in enumerate(chosen) if k != 0]] != 0).all()

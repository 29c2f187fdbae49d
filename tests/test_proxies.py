"""Zero-cost proxies against hand computations on tiny networks, and the ground-truth table adapter."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from nas.proxies import PROXIES, ProxyInputs, score_network


@pytest.fixture
def linear():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(5, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1])
    return net, ProxyInputs(x, y)


def _loss_grad(net, batch):
    net.zero_grad()
    nn.functional.cross_entropy(net(batch.inputs), batch.targets).backward()
    return net[1].weight.grad.clone()


def test_registry_holds_every_proxy():
    assert set(PROXIES.names()) == {"synflow", "snip", "grad_norm", "grasp", "fisher", "jacob_cov", "naswot"}


def test_grad_norm_and_snip_by_hand(linear):
    net, batch = linear
    grad = _loss_grad(net, batch)
    assert score_network("grad_norm", net, batch) == pytest.approx(float(grad.norm()), rel=1e-6)
    assert score_network("snip", net, batch) == pytest.approx(float((net[1].weight.detach() * grad).abs().sum()),
                                                              rel=1e-6)
    assert net[1].weight.grad is not None and torch.equal(net[1].weight.grad, grad)  # scoring used a copy


def test_synflow_of_a_linear_layer_is_the_sum_of_absolute_weights(linear):
    net, batch = linear
    # R = sum_c (|W_c| . 1 + |b_c|)  =>  dR/dW = 1  =>  synflow = sum |W|
    assert score_network("synflow", net, batch) == pytest.approx(float(net[1].weight.detach().double().abs().sum()), rel=1e-12)


def test_synflow_ignores_batchnorm_and_signs():
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 1, bias=False)
    net = nn.Sequential(conv, nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 1, bias=False))
    batch = ProxyInputs(torch.randn(4, 1, 3, 3), torch.zeros(4, dtype=torch.int64))
    w1 = conv.weight.detach().abs().double().view(2)
    w2 = net[3].weight.detach().abs().double().view(2, 9)
    # ones in -> each conv channel c is w1[c] everywhere -> R = sum_c w1[c] * sum_p w2[c, p]
    expected = float((w1 * w2.sum(1)).sum() * 2)  # |w * dR/dw| summed over both layers, each term = w1[c] * sum w2[c]
    assert score_network("synflow", net, batch) == pytest.approx(expected, rel=1e-9)


class _Reduction(nn.Sequential):
    """Marked as zero-cost-nas's NB201 reduction blocks are: their BN stays in synflow's BN-free copy."""

    keeps_bn_when_bn_free = True


def test_synflow_by_hand_on_the_network_zero_cost_nas_builds():
    # stem-like conv with bias and a non-affine BN (removed), then a reduction whose BN stays, in training mode
    torch.manual_seed(4)
    conv1, conv2, fc = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False), nn.Linear(2, 3)
    net = nn.Sequential(conv1, nn.BatchNorm2d(2, affine=False, track_running_stats=False), nn.ReLU(),
                        _Reduction(conv2, nn.BatchNorm2d(2)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    with torch.no_grad():
        net[3][1].weight.uniform_(-2, 2)  # negative BN scales and shifts: made non-negative as well
        net[3][1].bias.uniform_(-1, 1)
    w1, b1, w2, w3, b3 = (t.detach().double().abs().requires_grad_(True)
                          for t in (conv1.weight, conv1.bias, conv2.weight, fc.weight, fc.bias))
    gamma, beta = (t.detach().double().abs() for t in (net[3][1].weight, net[3][1].bias))
    ones = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    c = nn.functional.conv2d(nn.functional.relu(nn.functional.conv2d(ones, w1, b1, padding=1)), w2, stride=2, padding=1)
    mean, var = c.mean(dim=(0, 2, 3), keepdim=True), c.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    bn = (c - mean) / torch.sqrt(var + 1e-5) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    r = nn.functional.linear(bn.mean(dim=(2, 3)), w3, b3).sum()
    grads = torch.autograd.grad(r, [w1, w2, w3])
    expected = float(sum((w * g).abs().sum() for w, g in zip((w1, w2, w3), grads)).detach())
    batch = ProxyInputs(torch.randn(2, 1, 6, 6), torch.zeros(2, dtype=torch.int64))
    assert score_network("synflow", net, batch) == pytest.approx(expected, rel=1e-10)
    net[3].keeps_bn_when_bn_free = False  # that BN removed too: another score
    assert score_network("synflow", net, batch) != pytest.approx(expected, rel=1e-3)


def test_grasp_by_hand(linear):
    net, batch = linear
    w = net[1].weight
    loss = lambda: nn.functional.cross_entropy(net(batch.inputs), batch.targets)  # noqa: E731
    g = torch.autograd.grad(loss(), w)[0]
    gg = torch.autograd.grad(loss(), w, create_graph=True)[0]
    hg = torch.autograd.grad((g * gg).sum(), w)[0]
    assert score_network("grasp", net, batch) == pytest.approx(float((-w * hg).sum().detach()), rel=1e-5)


def test_fisher_by_hand(linear):
    net, batch = linear
    out = net(batch.inputs)
    out.retain_grad()
    nn.functional.cross_entropy(out, batch.targets).backward()
    # each output unit's value counted once per weight it owns: 4 inputs
    expected = float(0.5 * (out * out.grad).pow(2).mean(0).sum().detach()) * 4
    assert score_network("fisher", net, batch) == pytest.approx(expected, rel=1e-6)


def test_fisher_counts_each_channel_once_per_weight_it_owns():
    """Conv (bias) -> BN without affine parameters -> ReLU -> pool -> linear, as zero-cost-nas builds NB201 cells."""
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    fc = nn.Linear(3, 4)
    net = nn.Sequential(conv, nn.BatchNorm2d(3, affine=False, track_running_stats=False), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    x, y = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    a1 = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    h = nn.functional.relu(nn.functional.batch_norm(a1, None, None, training=True)).mean(dim=(2, 3))
    a2 = nn.functional.linear(h, fc.weight, fc.bias)
    g1, g2 = torch.autograd.grad(nn.functional.cross_entropy(a2, y), [a1, a2])
    per_channel_conv = 0.5 * (a1 * g1).sum(dim=(2, 3)).pow(2).mean(0)  # 3 channels
    per_unit_fc = 0.5 * (a2 * g2).pow(2).mean(0)  # 4 units
    expected = float(per_channel_conv.sum().detach() * (2 * 3 * 3) + per_unit_fc.sum().detach() * 3)
    unspread = float((per_channel_conv.sum() + per_unit_fc.sum()).detach())
    score = score_network("fisher", net, ProxyInputs(x, y))
    assert score == pytest.approx(expected, rel=1e-5)
    assert score != pytest.approx(unspread, rel=0.1)


def test_jacob_cov_by_hand():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(6, 1, 2, 2)
    batch = ProxyInputs(x, torch.zeros(6, dtype=torch.int64))
    xg = x.clone().requires_grad_(True)
    net(xg).sum().backward()
    v = torch.linalg.eigvalsh(torch.corrcoef(xg.grad.reshape(6, -1).double()))
    expected = float(-(torch.log(v + 1e-5) + 1 / (v + 1e-5)).sum())
    assert score_network("jacob_cov", net, batch) == pytest.approx(expected, rel=1e-6)


def test_naswot_counts_agreeing_relus():
    net = nn.Sequential(nn.Flatten(), nn.ReLU())
    x = torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, -3.0], [-1.0, -1.0, -1.0]]).view(3, 1, 1, 3)
    batch = ProxyInputs(x, torch.zeros(3, dtype=torch.int64))
    codes = (x.view(3, 3) > 0).double()
    k = codes @ codes.T + (1 - codes) @ (1 - codes).T  # [[3,1,1],[1,3,1],[1,1,3]]
    assert k.tolist() == [[3, 1, 1], [1, 3, 1], [1, 1, 3]]
    assert score_network("naswot", net, batch) == pytest.approx(math.log(20.0), rel=1e-9)  # det = 20


# ---- the network scored and the minibatch -----------------------------------------------------------
ALL_CONVS = (3, 2, 3, 3, 2, 3)  # every edge a convolution, every node reachable


def _cell_convs(net):
    from nas.spaces.nb201 import Cell
    from nas.spaces.nb201_ops import ReLUConvBN

    return [op for layer in net.layers if isinstance(layer, Cell) for edge in layer.edges for op in edge.values()
            if isinstance(op, ReLUConvBN)]


def test_zero_cost_network_is_built_as_zero_cost_nas_builds_it(cfg):
    from nas.proxies.scores import _without_batchnorm
    from nas.spaces import build_space
    from nas.spaces.nb201_ops import ResidualReduction

    space = build_space(cfg(["space.channels=4", "space.cells_per_stage=1"])["space"])
    for net, cell_affine in ((space.build_zero_cost_network(ALL_CONVS, 3), False), (space.build_network(ALL_CONVS, 3), True)):
        ops = _cell_convs(net)
        assert len(ops) == 18
        for _, conv, bn in ops:  # nasbench2_ops.ReLUConvBN: conv bias = not affine
            assert (bn.affine, bn.track_running_stats, conv.bias is None) == (cell_affine, cell_affine, cell_affine)
        assert net.stem[0].bias is None and net.stem[1].affine and net.lastact[0].affine
        reductions = [layer for layer in net.layers if isinstance(layer, ResidualReduction)]
        assert len(reductions) == 2
        for block in reductions:  # nasbench2_ops.reduction: always affine BN, convolutions without bias
            assert all(m.affine and m.track_running_stats for m in block.modules() if isinstance(m, nn.BatchNorm2d))
            assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv2d))
            assert block.keeps_bn_when_bn_free is not cell_affine
        left = [m for m in _without_batchnorm(copy.deepcopy(net)).modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(left) == (0 if cell_affine else 4)  # zero-cost-nas's bn=False copy keeps the reductions' BN


def test_proxies_network_option(cfg):
    from nas.proxies.registry import build_proxy_backbone
    from nas.registry import ConfigError
    from nas.spaces import build_space
    from nas.tasks.base import LinearHead

    config = cfg(["space.channels=4", "space.cells_per_stage=1"])
    assert config["proxies"]["network"] == "benchmark"
    space = build_space(config["space"])

    def cell_bn_affine(proxy, network):
        return _cell_convs(build_proxy_backbone(space, ALL_CONVS, 3, proxy, network))[0][2].affine

    assert not cell_bn_affine("synflow", "benchmark") and not cell_bn_affine("snip", "benchmark")
    assert cell_bn_affine("naswot", "benchmark")  # NASWOT scores the NB201 API's network, the stand-alone one
    assert cell_bn_affine("synflow", "standalone") and cell_bn_affine("naswot", "standalone")
    batch = ProxyInputs(torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.int64))
    scores = {}
    for network in ("benchmark", "standalone"):
        torch.manual_seed(0)
        backbone = build_proxy_backbone(space, ALL_CONVS, 3, "synflow", network)
        scores[network] = score_network("synflow", nn.Sequential(backbone, LinearHead(backbone.out_channels, 10)), batch)
    assert scores["benchmark"] != pytest.approx(scores["standalone"], rel=1e-3)
    with pytest.raises(ConfigError, match="proxies.network.*'supernet'.*allowed: benchmark, standalone"):
        build_proxy_backbone(space, ALL_CONVS, 3, "synflow", "supernet")


def test_each_proxy_sees_its_papers_default_batch(cfg):
    from nas.proxies.registry import batch_setting

    proxies = cfg()["proxies"]
    assert batch_setting(proxies, "naswot") == (128, False)  # nas-without-training: --batch_size 128, --augtype none
    for name in ("snip", "grad_norm", "grasp", "fisher", "jacob_cov", "synflow"):
        assert batch_setting(proxies, name) == (64, True)  # zero-cost-nas: --batch_size 64, its training loader


@pytest.mark.slow
def test_nas_proxies_scores_the_configured_network(tmp_path):
    from jobs import nas, read_rows, write_config

    config = write_config(tmp_path)
    nas("sample", "--config", str(config), "--out", str(tmp_path / "sample"))
    rows = {}
    for network in ("benchmark", "standalone"):
        out = tmp_path / network
        nas("proxies", "--config", str(config), "--archs", str(tmp_path / "sample" / "archs.json"), "--out", str(out),
            f"proxies.network={network}", "proxies.names=[synflow,snip,naswot]")
        rows[network] = read_rows(out / "proxies.csv")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["inputs"]["network"] == network
        assert summary["inputs"]["batch_sizes"] == {"synflow": 64, "snip": 64, "naswot": 128}
    pairs = list(zip(rows["benchmark"], rows["standalone"]))
    assert len(pairs) == 4
    assert all(a["naswot"] == b["naswot"] for a, b in pairs)  # the same network either way
    assert all(a["synflow"] != b["synflow"] and a["snip"] != b["snip"] for a, b in pairs)


# ---- ground truth ----------------------------------------------------------------------------------
def _gt_cfg(cfg, table_path, **extra):
    gt = {"source": "table", "path": str(table_path), "cell_column": "ArchitectureString",
          "metrics": {"c10_test": "CIFAR10TestAccuracy200Epochs"}, "truth": "c10_test"}
    gt.update(extra)
    return cfg([f"ground_truth.{k}={json.dumps(v)}" for k, v in gt.items()])


def test_table_adapter_on_the_published_table(nb201_tables, cfg):
    from nas.groundtruth import load_ground_truth
    from nas.spaces import build_space

    config = _gt_cfg(cfg, nb201_tables / "nb201_200ep_test.csv")
    table, truth = load_ground_truth(config["ground_truth"], build_space(config["space"]))
    best = table.loc[table[truth].idxmax()]
    assert len(table) == 15625 and table["index"].tolist() == list(range(15625))
    assert int(best["index"]) == 6111 and round(float(best[truth]), 2) == 94.37


@pytest.mark.parametrize("change, message", [
    ({"path": "/no/such/table.csv"}, "does not exist"),
    ({"truth": "c100_test"}, "'c100_test' is not one of the metrics"),
    ({"cell_column": "arch_string"}, "has no column 'arch_string'"),
    ({"metrics": {"c10_test": "NoSuchColumn"}}, "NoSuchColumn"),
])
def test_table_adapter_errors(nb201_tables, cfg, change, message):
    from nas.groundtruth import load_ground_truth
    from nas.registry import ConfigError
    from nas.spaces import build_space

    config = _gt_cfg(cfg, nb201_tables / "nb201_200ep_test.csv", **change)
    with pytest.raises(ConfigError, match=message):
        load_ground_truth(config["ground_truth"], build_space(config["space"]))


def test_nats_bench_source_names_what_is_missing(cfg, tmp_path):
    from nas.groundtruth import load_ground_truth
    from nas.registry import ConfigError
    from nas.spaces import build_space

    config = cfg(["ground_truth.source=nats_bench", f"ground_truth.path={tmp_path / 'NATS-tss-v1_0-3ffb9-simple'}"])
    with pytest.raises(ConfigError, match="nats_bench|does not exist"):
        load_ground_truth(config["ground_truth"], build_space(config["space"]))

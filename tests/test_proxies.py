"""Zero-cost proxies against hand computations on tiny networks, and the ground-truth table adapter."""
from __future__ import annotations

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
    expected = float(0.5 * (out * out.grad).pow(2).mean(0).sum().detach())
    assert score_network("fisher", net, batch) == pytest.approx(expected, rel=1e-6)


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

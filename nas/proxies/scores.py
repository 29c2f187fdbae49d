"""The zero-cost proxies of Abdelfattah et al. (ICLR 2021) and Mellor et al. (NASWOT), one function each.

As in those papers' code (SamsungLabs/zero-cost-nas foresight/pruners, BayesWatch/nas-without-training):
weights of Conv2d/Linear layers only, summed over layers; one minibatch; the network in training mode
(BN normalises with the batch's statistics). Synflow is data-free: a BN-free copy of the network, in
float64, on |parameters| with one all-ones input.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import PROXIES, ProxyInputs, weighted_layers


def _loss_grads(net: nn.Module, batch: ProxyInputs) -> list[nn.Module]:
    net.train()
    net.zero_grad()
    batch.loss(net(batch.inputs), batch.targets).backward()
    return weighted_layers(net)


def _grad_or_zero(layer: nn.Module) -> torch.Tensor:
    return layer.weight.grad if layer.weight.grad is not None else torch.zeros_like(layer.weight)


def _sum_over_layers(layers: list[nn.Module], per_layer) -> float:
    with torch.no_grad():
        return sum(float(per_layer(layer)) for layer in layers)


@PROXIES.register("grad_norm")
def grad_norm(net: nn.Module, batch: ProxyInputs) -> float:
    """Sum over layers of the L2 norm of the loss gradient of the layer's weights."""
    return _sum_over_layers(_loss_grads(net, batch), lambda layer: _grad_or_zero(layer).norm())


@PROXIES.register("snip")
def snip(net: nn.Module, batch: ProxyInputs) -> float:
    """Connection sensitivity: sum |w * dL/dw|."""
    return _sum_over_layers(_loss_grads(net, batch), lambda layer: (layer.weight * _grad_or_zero(layer)).abs().sum())


@PROXIES.register("grasp")
def grasp(net: nn.Module, batch: ProxyInputs) -> float:
    """GraSP: sum of -w * (H g), the Hessian-gradient product of the loss taken at w."""
    net.train()
    layers = weighted_layers(net)
    weights = [layer.weight for layer in layers]
    grads = torch.autograd.grad(batch.loss(net(batch.inputs), batch.targets), weights, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, weights)]
    net.zero_grad()
    grads_with_graph = torch.autograd.grad(batch.loss(net(batch.inputs), batch.targets), weights,
                                           create_graph=True, allow_unused=True)
    z = sum((g.detach() * gg).sum() for g, gg in zip(grads, grads_with_graph) if gg is not None)
    if not torch.is_tensor(z) or not z.requires_grad:
        return 0.0
    z.backward()
    return _sum_over_layers(layers, lambda layer: (-layer.weight * _grad_or_zero(layer)).sum())


@PROXIES.register("fisher")
def fisher(net: nn.Module, batch: ProxyInputs) -> float:
    """Per output channel k of every layer, 0.5 * mean over images of (sum_hw a_k * dL/da_k)^2, a = the layer's
    output (bias included); each channel counted once per weight it owns (prod(weight.shape[1:]) times).

    The count is zero-cost-nas's: it spreads each channel's value over that channel's weights before
    summing the per-weight array, so a channel of a 3x3 convolution over C inputs weighs 9*C.
    """
    net.train()
    net.zero_grad()
    outputs: dict[nn.Module, list[torch.Tensor]] = {}

    def keep(layer, _inp, out):
        out.retain_grad()
        outputs.setdefault(layer, []).append(out)

    handles = [layer.register_forward_hook(keep) for layer in weighted_layers(net)]
    try:
        batch.loss(net(batch.inputs), batch.targets).backward()
    finally:
        for handle in handles:
            handle.remove()
    total = 0.0
    with torch.no_grad():
        for layer, acts in outputs.items():
            per_channel = torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=layer.weight.device)
            for act in acts:
                if act.grad is not None:
                    g = (act * act.grad).sum(dim=tuple(range(2, act.dim()))) if act.dim() > 2 else act * act.grad
                    per_channel += 0.5 * g.double().pow(2).mean(dim=0)
            total += float(per_channel.abs().sum()) * layer.weight[0].numel()
    return total


@PROXIES.register("jacob_cov")
def jacob_cov(net: nn.Module, batch: ProxyInputs) -> float:
    """Mellor et al.'s first score: -sum(log(v + k) + 1/(v + k)) over eigenvalues v of the Jacobian correlation.

    Undefined (NaN) when the Jacobian rows are constant, e.g. for a network whose output ignores its input.
    """
    net.train()
    inputs = batch.inputs.clone().requires_grad_(True)
    net(inputs).sum().backward()
    if inputs.grad is None:  # the output does not depend on the input (every path of a cell is `none`)
        return float("nan")
    jacobian = inputs.grad.reshape(inputs.shape[0], -1).double()
    corr = torch.corrcoef(jacobian)
    if not torch.isfinite(corr).all():
        return float("nan")
    eigenvalues = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-(torch.log(eigenvalues + k) + 1.0 / (eigenvalues + k)).sum())


@PROXIES.register("naswot")
def naswot(net: nn.Module, batch: ProxyInputs) -> float:
    """NASWOT: log|K_H|, K_H[i, j] = number of ReLUs on which images i and j agree (both on or both off)."""
    net.train()
    codes: list[torch.Tensor] = []

    def record(_layer, inp, _out):
        codes.append((inp[0].detach().reshape(inp[0].shape[0], -1) > 0).double())

    handles = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not codes:
        return float("nan")
    c = torch.cat(codes, dim=1)
    kernel = c @ c.T + (1.0 - c) @ (1.0 - c).T
    return float(torch.linalg.slogdet(kernel)[1])


def _without_batchnorm(net: nn.Module) -> nn.Module:
    """BN layers replaced by identities, except inside modules marked ``keeps_bn_when_bn_free``."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.Identity())
        elif not getattr(child, "keeps_bn_when_bn_free", False):
            _without_batchnorm(child)
    return net


@PROXIES.register("synflow")
def synflow(net: nn.Module, batch: ProxyInputs) -> float:
    """SynFlow (data-free): sum |w * dR/dw|, R = sum of the outputs of the BN-free, |w| network on ones, in float64.

    BN-free as zero-cost-nas builds it: without BN, except where a module keeps it (their NB201 network's
    reduction blocks); what BN remains normalises in training mode with the one image's statistics.
    Every tensor of the state dict is made non-negative, biases and BN parameters included.
    """
    net = _without_batchnorm(net).double()
    net.train()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.abs_()
    net.zero_grad()
    shape = (1, *batch.inputs.shape[1:])
    net(torch.ones(shape, dtype=torch.float64, device=batch.inputs.device)).sum().backward()
    return _sum_over_layers(weighted_layers(net), lambda layer: (layer.weight * _grad_or_zero(layer)).abs().sum())

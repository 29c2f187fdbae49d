"""The zero-cost proxies of Abdelfattah et al. (ICLR 2021) and Mellor et al. (NASWOT), one function each.

Conventions (as in those papers' code): weights of Conv2d/Linear layers only; one minibatch; BN in
training mode, except synflow, which is data-free and runs without BN (BN as identity), in float64,
on |weights| with an all-ones input.
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
    """Fisher information of each layer's output channels: 0.5 * mean over images of (sum_hw a * dL/da)^2."""
    net.train()
    net.zero_grad()
    outputs: list[torch.Tensor] = []

    def keep(_layer, _inp, out):
        out.retain_grad()
        outputs.append(out)

    handles = [layer.register_forward_hook(keep) for layer in weighted_layers(net)]
    try:
        batch.loss(net(batch.inputs), batch.targets).backward()
    finally:
        for handle in handles:
            handle.remove()
    total = 0.0
    with torch.no_grad():
        for act in outputs:
            if act.grad is None:
                continue
            per_channel = (act * act.grad).sum(dim=(2, 3)) if act.dim() == 4 else act * act.grad
            total += float(0.5 * per_channel.pow(2).mean(dim=0).sum())
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
    for name, child in list(net.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.Identity())
        else:
            _without_batchnorm(child)
    return net


@PROXIES.register("synflow")
def synflow(net: nn.Module, batch: ProxyInputs) -> float:
    """SynFlow (data-free): sum |w * dR/dw|, R = sum of the outputs of the BN-free, |w| network on ones, in float64."""
    net = _without_batchnorm(net).double()
    net.eval()
    with torch.no_grad():
        for param in net.parameters():
            param.abs_()
    net.zero_grad()
    shape = (1, *batch.inputs.shape[1:])
    net(torch.ones(shape, dtype=torch.float64, device=batch.inputs.device)).sum().backward()
    return _sum_over_layers(weighted_layers(net), lambda layer: (layer.weight * _grad_or_zero(layer)).abs().sum())

"""Differentiable searches as strategies of the one trainer's bi-level loop (``nas.train.Trainer(strategy=...)``).

Each strategy owns the architecture parameters (``alphas``, the space's ``mixture_shape``, one set shared by
every cell of a type as in xautodl and DARTS) and their Adam optimiser; the trainer runs ``arch_step`` on a
search-split batch before or after each weight step (``differentiable.step_order``):

- ``darts_v1``: the supernet mixes every op by softmax(alphas); the architecture gradient is first order.
- ``darts_v2``: the same mixture, with xautodl's ``backward_step_unrolled``: w' = w - xi (mu buf + dL_train/dw
  + wd w) with xi the current weight LR; grad = dL_val(w')/dalpha - xi [dL_train(w+)/dalpha -
  dL_train(w-)/dalpha] / 2R, w+- = w +- R dL_val(w')/dw', R = 0.01 / ||dL_val(w')/dw'||.
- ``gdas``: a Gumbel straight-through sample per forward (one for every cell), the chosen op alone run;
  tau falls linearly per epoch from ``tau_max`` to ``tau_min`` (xautodl ``search_model_gdas``).
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..registry import ConfigError
from ..spaces import Arch, SearchSpace
from ..spaces.base import HardMixture, Mixture
from ..train import TaskModel

METHODS = ("darts_v1", "darts_v2", "gdas", "unas")
REFERENCE_ARCH_FIRST = {"darts_v1": False, "darts_v2": True, "gdas": False, "unas": True}


def check_differentiable(space: SearchSpace, cfg: dict[str, Any]) -> str:
    """The derive rule the search uses; ConfigError for a method, space or rule it cannot run."""
    if cfg["method"] not in METHODS:
        raise ConfigError(f"config key 'differentiable.method': {cfg['method']!r} is not allowed; "
                          f"allowed: {', '.join(METHODS)}")
    if space.mixture_shape is None or not space.has_supernet:
        raise ConfigError(f"differentiable.method {cfg['method']!r} cannot search space {space.name!r}: it has no "
                          "supernet with an op mixture; spaces it can search: nb201, darts")
    if cfg["method"] == "unas":
        if space.name != "darts":
            raise ConfigError(f"differentiable.method 'unas' cannot search space {space.name!r}: its paired-input "
                              "parametrisation is of the DARTS space; spaces it can search: darts")
        if cfg["unas"]["estimator"] == "relax":
            raise ConfigError("config key 'differentiable.unas.estimator': 'relax' is not allowed (UNAS's argparse "
                              "accepts it but its code has no RELAX step); allowed: rebar, reinforce")
    if cfg["tau_min"] > cfg["tau_max"]:
        raise ConfigError(f"differentiable.tau_min {cfg['tau_min']} is above tau_max {cfg['tau_max']}: the "
                          "temperature would rise over the epochs; it must fall (or stay)")
    rule = cfg["derive"] or space.derive_rules[0]
    if rule not in space.derive_rules:
        raise ConfigError(f"config key 'differentiable.derive': {rule!r} is not a rule of space {space.name!r}; "
                          f"allowed: {', '.join(space.derive_rules)}")
    return rule


def edge_entropies(alphas: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each edge's softmax distribution, shape ``alphas.shape[:-1]``."""
    log_p = torch.log_softmax(alphas.detach().double(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


class Strategy:
    """What the DARTS variants and GDAS share: alphas, their optimiser, the first-order step, the derived cell."""

    def __init__(self, space: SearchSpace, cfg: dict[str, Any], epochs: int, device: torch.device) -> None:
        self.space = space
        self.cfg = cfg
        self.method = cfg["method"]
        self.epochs = epochs
        self.rule = check_differentiable(space, cfg)
        order = cfg["step_order"]
        self.arch_first = REFERENCE_ARCH_FIRST[self.method] if order == "reference" else order == "arch_first"
        self.alphas = nn.Parameter(cfg["alpha_init_std"] * torch.randn(space.mixture_shape, device=device))
        self.optimizer = torch.optim.Adam([self.alphas], lr=cfg["arch_lr"], betas=tuple(cfg["arch_betas"]),
                                          weight_decay=cfg["arch_weight_decay"])
        self._losses: list[torch.Tensor] = []
        self._hits, self._count = torch.zeros((), device=device), 0
        self.alpha_trace: list[torch.Tensor] = []  # the alphas after every epoch, on the CPU

    # ---- what the supernet runs ---------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self._losses, self._hits, self._count = [], torch.zeros_like(self._hits), 0

    def mixture(self) -> Mixture:
        return torch.softmax(self.alphas, dim=-1)

    def eval_mixture(self) -> Mixture:
        return torch.softmax(self.alphas.detach(), dim=-1)

    # ---- the architecture step ---------------------------------------------------------------------------------
    def arch_gradient(self, model: TaskModel, train_batch: tuple[torch.Tensor, torch.Tensor],
                      search_batch: tuple[torch.Tensor, torch.Tensor],
                      weight_optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d loss / d alphas, the search loss, its outputs) of the first-order step; only alphas get a gradient."""
        inputs, targets = search_batch
        outputs = model(inputs, mixture=self.mixture())
        loss = model.task.loss(outputs.float(), targets)
        (grad,) = torch.autograd.grad(loss, [self.alphas])
        return grad, loss.detach(), outputs.detach()

    def arch_step(self, model: TaskModel, train_batch: tuple[torch.Tensor, torch.Tensor],
                  search_batch: tuple[torch.Tensor, torch.Tensor], weight_optimizer: torch.optim.Optimizer
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
        grad, loss, outputs = self.arch_gradient(model, train_batch, search_batch, weight_optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.alphas.grad = grad
        self.optimizer.step()
        hits, count = model.task.correct(outputs, search_batch[1])
        self._losses.append(loss)
        self._hits += hits
        self._count += count
        return loss, hits, count

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's search loss and accuracy and its edges' entropies; keeps the alphas in ``alpha_trace``."""
        self.alpha_trace.append(self.alphas.detach().cpu().clone())
        entropies = edge_entropies(self.alphas)
        return {"search_loss": float(torch.stack(self._losses).mean()) if self._losses else math.nan,
                "search_acc": 100.0 * float(self._hits) / max(self._count, 1),
                "edge_entropy_mean": float(entropies.mean()), "edge_entropy_min": float(entropies.min())}

    # ---- result and checkpoint ---------------------------------------------------------------------------------
    def build_supernet(self, in_channels: int) -> nn.Module:
        """The supernet this search mixes: the space's own."""
        return self.space.build_supernet(in_channels)

    def derive(self) -> Arch:
        return self.space.derive(self.alphas.detach(), self.rule)

    def derive_at(self, epoch_index: int) -> Arch:
        """The cell derived from the alphas kept after epoch ``epoch_index`` (0-based)."""
        return self.space.derive(self.alpha_trace[epoch_index], self.rule)

    def alpha_rows(self) -> list[dict[str, Any]]:
        """Long form of the per-epoch alphas: epoch, edge position (``cell type.edge`` on darts), op, alpha, softmax."""
        rows = []
        for epoch, alphas in enumerate(self.alpha_trace, start=1):
            weights = alphas.softmax(dim=-1)
            for position in itertools.product(*map(range, alphas.shape[:-1])):
                for op, name in enumerate(self.space.mixture_ops):
                    rows.append({"epoch": epoch, "edge": ".".join(map(str, position)), "op": name,
                                 "alpha": float(alphas[position][op]), "weight": float(weights[position][op])})
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "alpha_trace": list(self.alpha_trace)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.alphas.copy_(state["alphas"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.alpha_trace = list(state["alpha_trace"])


class DartsV2(Strategy):
    """DARTS's second-order architecture gradient, as xautodl ``backward_step_unrolled`` computes it."""

    def arch_gradient(self, model, train_batch, search_batch, weight_optimizer):
        names, weights = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
        group = weight_optimizer.param_groups[0]
        xi, momentum, decay = group["lr"], group.get("momentum", 0.0), group["weight_decay"]
        train_inputs, train_targets = train_batch
        train_loss = model.task.loss(model(train_inputs, mixture=self.mixture()).float(), train_targets)
        grads = torch.autograd.grad(train_loss, weights)
        with torch.no_grad():
            unrolled = []
            for w, g in zip(weights, grads):
                buffer = weight_optimizer.state.get(w, {}).get("momentum_buffer")
                step = g + decay * w + (momentum * buffer if buffer is not None else 0.0)
                unrolled.append((w - xi * step).requires_grad_())
        # the unrolled network: its own copy of the BN statistics, as xautodl's deep-copied model
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        inputs, targets = search_batch
        outputs = functional_call(model, {**dict(zip(names, unrolled)), **buffers}, (inputs,),
                                  {"mixture": self.mixture()})
        loss = model.task.loss(outputs.float(), targets)
        d_alpha, *vector = torch.autograd.grad(loss, [self.alphas, *unrolled])
        implicit = self._hessian_vector(model, weights, vector, train_batch)
        return d_alpha - xi * implicit, loss.detach(), outputs.detach()

    def _hessian_vector(self, model: TaskModel, weights, vector, train_batch) -> torch.Tensor:
        """(dL_train(w + R v)/dalpha - dL_train(w - R v)/dalpha) / 2R, R = unrolled_r / ||v||."""
        radius = self.cfg["unrolled_r"] / torch.cat([v.reshape(-1) for v in vector]).norm()
        inputs, targets = train_batch
        grads = []
        for sign in (1.0, -2.0):
            with torch.no_grad():
                for w, v in zip(weights, vector):
                    w.add_(v, alpha=float(sign * radius))
            loss = model.task.loss(model(inputs, mixture=self.mixture()).float(), targets)
            grads.append(torch.autograd.grad(loss, [self.alphas])[0])
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=float(radius))
        return (grads[0] - grads[1]) / (2 * radius)


class Gdas(Strategy):
    """GDAS: hard Gumbel-softmax samples with straight-through gradients; one op per edge runs."""

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        span = max(self.epochs - 1, 1)
        self.tau = self.cfg["tau_max"] - (self.cfg["tau_max"] - self.cfg["tau_min"]) * epoch / span

    def mixture(self) -> HardMixture:
        """xautodl: g = -log(Exp(1)); p = softmax((log_softmax(alpha) + g) / tau); one-hot of argmax p minus
        p.detach() plus p; redrawn while g or p holds inf or NaN."""
        while True:
            gumbels = -torch.empty_like(self.alphas).exponential_().log()
            probs = torch.softmax((torch.log_softmax(self.alphas, dim=-1) + gumbels) / self.tau, dim=-1)
            index = probs.argmax(dim=-1, keepdim=True)
            if not (torch.isinf(gumbels).any() or torch.isinf(probs).any() or torch.isnan(probs).any()):
                break
        one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
        return HardMixture(one_hot - probs.detach() + probs, index.squeeze(-1).tolist(), self.cfg["gdas_grad_all"])

    def eval_mixture(self) -> HardMixture:
        """The derived cell itself: the argmax op of every edge, weight 1."""
        index = self.alphas.detach().argmax(dim=-1, keepdim=True)
        return HardMixture(torch.zeros_like(self.alphas).scatter_(-1, index, 1.0), index.squeeze(-1).tolist(), False)

    def epoch_metrics(self) -> dict[str, float]:
        return {**super().epoch_metrics(), "tau": self.tau}


STRATEGIES = {"darts_v1": Strategy, "darts_v2": DartsV2, "gdas": Gdas}


def build_strategy(space: SearchSpace, cfg: dict[str, Any], epochs: int, device: torch.device) -> Strategy:
    check_differentiable(space, cfg)
    if cfg["method"] == "unas":
        from .unas import UnasStrategy

        return UnasStrategy(space, cfg, epochs, device)
    return STRATEGIES[cfg["method"]](space, cfg, epochs, device)

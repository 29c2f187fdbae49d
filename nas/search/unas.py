"""UNAS (Vahdat et al., CVPR 2020; NVlabs/unas @cdd19b9) as a strategy of the one trainer, on the darts space.

Paired inputs (``darts/alphas.py``, ``darts/model_search.py`` CellPairedInput): per cell type and node i two
input selectors over the node's i + 2 inputs and two op selectors over ``UNAS_OPS[:num_ops]``, all zero at
the start (``differentiable.alpha_init_std`` is not read). A draw samples every selector once per sample (one
architecture per image) or once per batch (``same_alpha_minibatch``); the edge j -> i weighs op k by
sum_s input_s[j] op_s[k] and runs on a supernet whose edges hold UNAS's ops (``build_supernet``).

One step (``darts/train_search.py`` train, ``unas.py`` UNAS.step, ``gsm_utils.py``), the architecture first:
- c: Gumbel-softmax at constant ``tau`` of the (``soften_eps``-softened) logits; with REBAR it carries the
  conditional-Gumbel correction (value of the sample, gradient of sample minus conditional sample);
  d = softmax(1000 c) (one-hot up to rounding);
- per sample i (losses of reduction none): l(z) = CE(train_i) + gap_lambda |CE(search_i) - CE(train_i)|
  + pair_penalty sum_nodes <input_op0, input_op1>, train and search sample i run one architecture;
- REBAR: mean[log q(d) sg(l(d) - l(c))] + mean[l(c)]; REINFORCE: mean[log q(d)(l(d) - b)] + b, b the EMA
  b <- baseline_decay b + (1 - baseline_decay) mean l(d), read before its update;
- with ``target_latency`` T: one more single-architecture draw; its latency t (median of ``latency_repeats``
  timed forwards of ``latency_batch`` train inputs) enters as c_t relu(t - T), c_t = latency_weight
  min(step / latency_ramp_steps, 1); REBAR uses c_t relu(f(c) - T) of a ridge surrogate f (lambda 1, bias
  included; fitted at the first architecture step on ``latency_archs`` draws, 80/20) as control variate,
  REINFORCE an EMA baseline of its own;
- then the trainer's weight step on the same train batch with c detached (``mixture``).
The first ``init_epochs`` epochs draw c for the weight step only; afterwards the architecture LR follows a
cosine from ``arch_lr`` to ``arch_lr_min`` over the remaining epochs, epoch e at (e + 1) / epochs as
upstream's scheduler (stepped before each epoch). Evaluation and ``derive`` use the argmax of every selector.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ConfigError
from ..spaces import Arch, SearchSpace
from ..spaces.base import SampleMixture
from ..spaces.darts_genotype import NUM_NODES, UNAS_OPS
from ..train import TaskModel
from .differentiable import REFERENCE_ARCH_FIRST, check_differentiable
from .unas_estimator import (Selection, fit_ridge, gap_objective, moving_average, pack, rebar_objective,
                             reinforce_objective, relaxed_sample, sample_losses, soften, unpack)

EVAL_THRESHOLD = 0.5  # the derived cell's weights are 0, 1 or 2: ops of weight 0 do not run


class UnasStrategy:
    """UNAS's architecture search in the trainer's loop (module docstring); ``differentiable.unas`` configures it."""

    def __init__(self, space: SearchSpace, cfg: dict[str, Any], epochs: int, device: torch.device) -> None:
        self.rule = check_differentiable(space, cfg)
        self.space, self.cfg, self.epochs, self.device = space, cfg, epochs, device
        self.ucfg = u = cfg["unas"]
        if cfg["derive"] is not None:
            raise ConfigError(f"config key 'differentiable.derive': {cfg['derive']!r} is not read by method unas (it "
                              "derives every selector's argmax); allowed: null")
        if cfg["step_order"] == "weights_first":
            raise ConfigError("config key 'differentiable.step_order': 'weights_first' is not allowed with method "
                              "unas (its weight step trains on the architecture step's draw); allowed: reference, "
                              "arch_first")
        if u["init_epochs"] >= epochs:
            raise ConfigError(f"config key 'differentiable.unas.init_epochs': {u['init_epochs']} leaves none of the "
                              f"{epochs} epochs (differentiable.training.epochs) to the architecture; allowed: "
                              f"0..{epochs - 1}")
        if u["target_latency"] is not None and u["latency_batch"] > cfg["training"]["batch_size"]:
            raise ConfigError(f"config key 'differentiable.unas.latency_batch': {u['latency_batch']} is more than the "
                              f"batch of {cfg['training']['batch_size']} it is cut from; allowed: at most that")
        self.arch_first = REFERENCE_ARCH_FIRST["unas"]  # upstream: UNAS.step, then the weight step on its draw
        self.rebar = u["estimator"] == "rebar"
        self.op_names = UNAS_OPS[:u["num_ops"]]
        ops = len(self.op_names)
        self.input_alphas = nn.ParameterList(
            [nn.Parameter(torch.zeros(2, 2, i + 2, device=device)) for i in range(NUM_NODES)])
        self.op_alphas = nn.Parameter(torch.zeros(2, NUM_NODES, 2, ops, device=device))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg["arch_lr"], betas=tuple(cfg["arch_betas"]),
                                          weight_decay=cfg["arch_weight_decay"])
        self.baseline = 0.0  # upstream ExpMovingAvgrageMeter starts at 0
        self.latency_baseline = 0.0
        self.steps = 0
        self.surrogate: torch.Tensor | None = None
        self.surrogate_stats: dict[str, float] = {}
        self.alpha_trace: list[torch.Tensor] = []
        self._pending: SampleMixture | None = None
        # the epoch means this configuration has (every epoch the same keys: one metrics table)
        self._keys = ["search_loss", "objective", *(["gap", "gap_sign"] if u["gap_lambda"] > 0 else []),
                      *(["pair_overlap"] if u["pair_penalty"] > 0 else []), *(["baseline"] if not self.rebar else []),
                      *(["latency_ms", "latency_coeff"] if u["target_latency"] is not None else [])]
        self._sums: dict[str, torch.Tensor | float] = {}
        self._count, self._epoch = 0, 0

    def parameters(self) -> list[nn.Parameter]:
        return [self.op_alphas, *self.input_alphas]

    def alphas(self) -> Selection:
        return Selection([a.unsqueeze(-2) for a in self.input_alphas], self.op_alphas.unsqueeze(-2))

    def build_supernet(self, in_channels: int) -> nn.Module:
        """The space's supernet with UNAS's ops on every edge and no BN after pooling (upstream MixedOp)."""
        return self.space.build_supernet(in_channels, ops=self.op_names, pool_bn=False)

    # ---- drawing ---------------------------------------------------------------------------------------------
    def draw(self, samples: int) -> tuple[Selection, Selection]:
        """(c, the logits it was drawn from): one draw per sample, or one in all with ``same_alpha_minibatch``."""
        logits = self.alphas().map(lambda a: soften(a, self.ucfg["soften_eps"]))
        count = 1 if self.ucfg["same_alpha_minibatch"] else samples
        relaxed = logits.map(lambda a: relaxed_sample(a.expand(*a.shape[:-2], count, a.shape[-1]),
                                                      self.ucfg["tau"], self.rebar))
        return relaxed, logits

    def to_mixture(self, selection: Selection, threshold: float | None = None) -> SampleMixture:
        eps = self.ucfg["mixedop_prune_eps"] if threshold is None else threshold
        return SampleMixture.build(selection.edge_weights(), eps)

    # ---- the trainer's interface ---------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._count = epoch, 0
        self._sums = {}
        joint = epoch - self.ucfg["init_epochs"]
        if joint >= 0:
            low, high = self.ucfg["arch_lr_min"], self.cfg["arch_lr"]
            span = self.epochs - self.ucfg["init_epochs"]
            for group in self.optimizer.param_groups:
                group["lr"] = low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * (joint + 1) / span))

    def mixture(self) -> SampleMixture:
        """The relaxed draw of this step's architecture step, detached; each draw serves one weight step."""
        if self._pending is None:
            raise RuntimeError("UnasStrategy.mixture() follows arch_step(): the weight step trains on its draw")
        mixture, self._pending = self._pending, None
        return mixture

    def eval_mixture(self) -> SampleMixture:
        """The derived cell: every selector's argmax, weight 1."""
        with torch.no_grad():
            one_hot = self.alphas().map(lambda a: F.one_hot(a.argmax(-1), a.shape[-1]).to(a.dtype))
        return self.to_mixture(one_hot, EVAL_THRESHOLD)

    def objective(self, model: Callable[..., torch.Tensor], selection: Selection,
                  train_batch: tuple[torch.Tensor, torch.Tensor], search_batch: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(l per sample, the train outputs, its parts) of ``selection`` run by ``model(x, mixture=...)``."""
        mixture = self.to_mixture(selection)
        outputs = model(train_batch[0], mixture=mixture)
        ce_train = sample_losses(outputs, train_batch[1])
        loss, parts = ce_train, {}
        if self.ucfg["gap_lambda"] > 0:
            if len(search_batch[1]) != len(ce_train):
                raise ValueError(f"the gap term pairs train and search samples: {len(ce_train)} against "
                                 f"{len(search_batch[1])}")
            ce_search = sample_losses(model(search_batch[0], mixture=mixture), search_batch[1])
            loss = gap_objective(ce_train, ce_search, self.ucfg["gap_lambda"])
            parts["gap"] = (ce_search - ce_train).abs().mean()
            parts["gap_sign"] = (ce_search > ce_train).float().mean()
        if self.ucfg["pair_penalty"] > 0:
            overlap = selection.pair_overlap()
            loss = loss + self.ucfg["pair_penalty"] * overlap
            parts["pair_overlap"] = overlap.mean()
        return loss, outputs, parts

    def arch_step(self, model: TaskModel, train_batch: tuple[torch.Tensor, torch.Tensor],
                  search_batch: tuple[torch.Tensor, torch.Tensor], weight_optimizer: torch.optim.Optimizer
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
        samples = len(train_batch[1])
        if self._epoch < self.ucfg["init_epochs"]:
            with torch.no_grad():
                relaxed, _ = self.draw(samples)
            self._pending = self.to_mixture(relaxed)
            zero = torch.zeros((), device=self.device)
            return zero, zero, 0
        relaxed, logits = self.draw(samples)
        discrete = relaxed.discrete()
        with torch.no_grad():
            loss_d, outputs, parts = self.objective(model, discrete, train_batch, search_batch)
        log_q = discrete.log_prob(logits)
        if self.rebar:
            loss_c, _, _ = self.objective(model, relaxed, train_batch, search_batch)
            loss = rebar_objective(log_q, loss_d, loss_c)
        else:
            baseline = self.baseline
            self.baseline = moving_average(baseline, float(loss_d.mean()), self.ucfg["baseline_decay"])
            loss = reinforce_objective(log_q, loss_d, baseline)
            parts["baseline"] = torch.tensor(baseline)
        if self.ucfg["target_latency"] is not None:
            loss = loss + self._latency_term(model, train_batch[0], parts)
        grads = torch.autograd.grad(loss, self.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(self.parameters(), grads):
            param.grad = grad
        self.optimizer.step()
        self.steps += 1
        self._pending = self.to_mixture(relaxed.map(torch.Tensor.detach))
        hits, count = model.task.correct(outputs, train_batch[1])
        self._add({"search_loss": loss_d.mean(), "objective": loss.detach(), **parts}, hits, count)
        return loss_d.mean(), hits, count

    # ---- latency --------------------------------------------------------------------------------------------------
    def measure(self, model: TaskModel, inputs: torch.Tensor, arch: Arch) -> float:
        """Milliseconds of one forward of ``arch`` on ``latency_batch`` inputs: the median of ``latency_repeats``."""
        was_training = model.training
        model.eval()
        batch = inputs[:self.ucfg["latency_batch"]]
        times = []
        with torch.no_grad():
            for _ in range(self.ucfg["latency_repeats"]):
                if batch.is_cuda:
                    torch.cuda.synchronize(batch.device)
                start = time.perf_counter()
                model(batch, arch=arch)
                if batch.is_cuda:
                    torch.cuda.synchronize(batch.device)
                times.append(time.perf_counter() - start)
        model.train(was_training)
        return 1000.0 * statistics.median(times)

    def fit_surrogate(self, model: TaskModel, inputs: torch.Tensor) -> dict[str, float]:
        """Times ``latency_archs`` architectures drawn from the current alphas and fits the ridge surrogate."""
        with torch.no_grad():
            draws = [self.draw(1)[0].discrete() for _ in range(self.ucfg["latency_archs"])]
        features = torch.cat([d.features() for d in draws]).cpu()
        latency = torch.tensor([self.measure(model, inputs, d.arch(self.op_names)) for d in draws])
        weights, self.surrogate_stats = fit_ridge(features, latency)
        self.surrogate = weights.to(self.device)
        return self.surrogate_stats

    def predict_latency(self, selection: Selection) -> torch.Tensor:
        return selection.features() @ self.surrogate[:-1] + self.surrogate[-1]

    def _latency_term(self, model: TaskModel, inputs: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.ucfg
        if self.rebar and self.surrogate is None:
            self.fit_surrogate(model, inputs)
        relaxed, logits = self.draw(1)
        discrete = relaxed.discrete()
        measured = self.measure(model, inputs, discrete.arch(self.op_names))
        coeff = u["latency_weight"] * min(self.steps / u["latency_ramp_steps"], 1.0)
        loss_d = coeff * torch.relu(torch.tensor([measured - u["target_latency"]], device=self.device))
        log_q = discrete.log_prob(logits)
        parts.update(latency_ms=torch.tensor(measured), latency_coeff=torch.tensor(coeff))
        if self.rebar:
            loss_c = coeff * torch.relu(self.predict_latency(relaxed) - u["target_latency"])
            return rebar_objective(log_q, loss_d, loss_c)
        baseline = self.latency_baseline
        self.latency_baseline = moving_average(baseline, float(loss_d), u["baseline_decay"])
        return reinforce_objective(log_q, loss_d, baseline)

    # ---- metrics, result, checkpoint ---------------------------------------------------------------------------
    def _add(self, values: dict[str, torch.Tensor], hits: torch.Tensor, count: int) -> None:
        for key, value in {**values, "hits": hits}.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().to(self.device, torch.float32)
        self._count += 1
        self._sums["predictions"] = self._sums.get("predictions", 0.0) + count

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean l(d) (search_loss), the discrete draws' train accuracy, the objective's parts, the
        architecture LR, the selectors' entropies and the latency surrogate's fit; keeps the alphas."""
        self.alpha_trace.append(pack(Selection(list(self.input_alphas), self.op_alphas)))
        means = {k: float(self._sums[k]) / self._count if self._count else math.nan for k in self._keys}
        predictions = float(self._sums.get("predictions", 0.0))
        means["search_acc"] = 100.0 * float(self._sums["hits"]) / predictions if predictions else math.nan
        log_p = [torch.log_softmax(a.detach().double(), dim=-1) for a in self.parameters()]
        entropies = torch.cat([-(lp.exp() * lp).sum(-1).flatten() for lp in log_p])
        surrogate = {"latency_r2": self.surrogate_stats.get("test_r2", math.nan)} if "latency_ms" in self._keys \
            and self.rebar else {}
        return {**means, "arch_lr": self.optimizer.param_groups[0]["lr"], **surrogate,
                "selector_entropy_mean": float(entropies.mean()), "selector_entropy_min": float(entropies.min())}

    def derive(self) -> Arch:
        return self.alphas().arch(self.op_names)

    def derive_at(self, epoch_index: int) -> Arch:
        """The cell derived from the alphas kept after epoch ``epoch_index`` (0-based)."""
        return unpack(self.alpha_trace[epoch_index]).map(lambda a: a.unsqueeze(-2)).arch(self.op_names)

    def alpha_rows(self) -> list[dict[str, Any]]:
        """Long form of the per-epoch alphas: epoch, selector (cell.node.selector.kind), choice, alpha, softmax."""
        rows = []
        for epoch, packed in enumerate(self.alpha_trace, start=1):
            selection = unpack(packed)
            for cell, cell_name in enumerate(("normal", "reduce")):
                for node in range(NUM_NODES):
                    for sel in range(2):
                        for kind, logits, names in (("input", selection.inputs[node][cell, sel],
                                                     [f"input_{j}" for j in range(node + 2)]),
                                                    ("op", selection.ops[cell, node, sel], self.op_names)):
                            weights = logits.softmax(-1)
                            rows += [{"epoch": epoch, "edge": f"{cell_name}.{node}.{sel}.{kind}", "op": name,
                                      "alpha": float(logits[j]), "weight": float(weights[j])}
                                     for j, name in enumerate(names)]
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"alphas": [p.detach().clone() for p in self.parameters()], "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline, "latency_baseline": self.latency_baseline, "steps": self.steps,
                "surrogate": None if self.surrogate is None else self.surrogate.detach().clone(),
                "surrogate_stats": dict(self.surrogate_stats), "alpha_trace": list(self.alpha_trace)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for param, saved in zip(self.parameters(), state["alphas"]):
                param.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline, self.latency_baseline = state["baseline"], state["latency_baseline"]
        self.steps = state["steps"]
        self.surrogate = None if state["surrogate"] is None else state["surrogate"].to(self.device)
        self.surrogate_stats = dict(state["surrogate_stats"])
        self.alpha_trace = list(state["alpha_trace"])

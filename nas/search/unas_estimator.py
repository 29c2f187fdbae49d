"""UNAS's estimator parts (NVlabs/unas @cdd19b9 ``gsm_utils.py``, ``darts/alphas.py``, ``unas.py``,
``surrogate.py``): Gumbel-softmax draws with REBAR's correction, the paired-input selectors' weights, log q,
the per-sample objective's terms, REBAR and REINFORCE, and the ridge latency surrogate. ``nas.search.unas``
puts them together as a strategy of the trainer."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..spaces import Arch
from ..spaces.darts_genotype import GENOTYPE_OPS, NUM_NODES, from_pairs

MAX_INPUTS = NUM_NODES + 1
DISCRETE_SCALE = 1000.0
REBAR_U_CLAMP = 1e-3
GUMBEL_EPS = 1e-20


def soften(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """log(softmax(logits) + eps) (``--gsm_soften_eps``); the logits themselves when eps is 0."""
    return torch.log(torch.softmax(logits, dim=-1) + eps) if eps > 0 else logits


def relaxed_sample(logits: torch.Tensor, tau: float, rebar: bool) -> torch.Tensor:
    """A Gumbel-softmax sample over the last axis. ``rebar``: u clamped to [1e-3, 1 - 1e-3] and REBAR's
    correction: z~ = -log(-log v / q - log v_k) off the argmax k, -log(-log v_k) at k, with v the uniforms that
    give z~ = z (log v_k = log u_k / q_k, log v = log u - q log v_k) held fixed; the result has the value of
    softmax(z / tau) and the gradient of softmax(z / tau) - softmax(z~ / tau)."""
    if not rebar:
        u = torch.rand_like(logits)
        return torch.softmax((logits - torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)) / tau, dim=-1)
    log_q = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    q = log_q.exp()
    u = torch.rand_like(q).clamp(REBAR_U_CLAMP, 1.0 - REBAR_U_CLAMP)
    z = log_q - torch.log(-torch.log(u))
    sample = torch.softmax(z / tau, dim=-1)
    with torch.no_grad():
        k = z.argmax(dim=-1, keepdim=True)
        log_vk = torch.log(u.gather(-1, k)) / q.gather(-1, k)
        log_v = torch.log(u) - q * log_vk
        at_k = torch.zeros_like(q, dtype=torch.bool).scatter_(-1, k, True)
    z_cond = torch.where(at_k, -torch.log(-log_vk), -torch.log(-log_v / q - log_vk))
    cond = torch.softmax(z_cond / tau, dim=-1)
    return sample - cond + cond.detach()


def rebar_objective(log_q: torch.Tensor, loss_d: torch.Tensor, loss_c: torch.Tensor) -> torch.Tensor:
    return (log_q * (loss_d - loss_c).detach()).mean() + loss_c.mean()


def reinforce_objective(log_q: torch.Tensor, loss_d: torch.Tensor, baseline: float) -> torch.Tensor:
    return (log_q * (loss_d.detach() - baseline)).mean() + baseline


def moving_average(average: float, value: float, decay: float) -> float:
    """upstream ExpMovingAvgrageMeter with momentum 1 - decay: decay x average + (1 - decay) x value."""
    return decay * average + (1.0 - decay) * value


def gap_objective(ce_train: torch.Tensor, ce_search: torch.Tensor, gap_lambda: float) -> torch.Tensor:
    """Per sample CE_train + lambda |CE_search - CE_train| (``--gen_error_alpha``), sample i with sample i."""
    return ce_train + gap_lambda * (ce_search - ce_train).abs()


def sample_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every prediction unit (image, rotated image, tile set; a dense map's pixel mean)."""
    loss = F.cross_entropy(outputs.float(), targets, reduction="none")
    return loss.flatten(1).mean(dim=1) if loss.dim() > 1 else loss


class Selection:
    """Every selector's weights (or logits) for S samples: ``inputs[i]`` (cell type, selector, S, i + 2) for
    node i and ``ops`` (cell type, node, selector, S, ops)."""

    def __init__(self, inputs: list[torch.Tensor], ops: torch.Tensor) -> None:
        self.inputs, self.ops = list(inputs), ops

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Selection:
        return Selection([fn(t) for t in self.inputs], fn(self.ops))

    def tensors(self) -> list[torch.Tensor]:
        return [*self.inputs, self.ops]

    def discrete(self) -> Selection:
        return self.map(lambda w: torch.softmax(DISCRETE_SCALE * w.detach(), dim=-1))

    def edge_weights(self) -> torch.Tensor:
        """(cell type, edge, S, ops), edges in ``EDGE_INPUTS`` order: sum over the selectors of input x op."""
        return torch.cat([torch.einsum("csbj,csbk->cjbk", inp, self.ops[:, i]) for i, inp in enumerate(self.inputs)],
                         dim=1)

    def pair_overlap(self) -> torch.Tensor:
        """(S,): sum over cell types and nodes of <input_op0, input_op1> (``Alpha.alpha_loss``)."""
        total = torch.zeros((), device=self.ops.device)
        for i, inp in enumerate(self.inputs):
            ops = self.ops[:, i]
            total = total + ((inp[:, 0] * inp[:, 1]).sum(-1) * (ops[:, 0] * ops[:, 1]).sum(-1)).sum(0)
        return total

    def features(self) -> torch.Tensor:
        """(S, 4 * 14 * ops): every selector pair's input x op product, normal cell first, node by node, input_op0
        then input_op1 (``Alpha.get_arch_sample``)."""
        parts = [torch.einsum("sbj,sbk->bsjk", inp[cell], self.ops[cell, i]).flatten(1)
                 for cell in range(2) for i, inp in enumerate(self.inputs)]
        return torch.cat(parts, dim=1)

    def log_prob(self, logits: Selection) -> torch.Tensor:
        """(S,): log q of these weights under ``logits`` summed over every selector (``Alpha.log_prob``)."""
        total = torch.zeros((), device=self.ops.device)
        for d, a in zip(self.tensors(), logits.tensors()):
            per_row = (d * a).sum(-1) - torch.logsumexp(a, dim=-1)
            total = total + per_row.flatten(0, -2).sum(0)
        return total

    def arch(self, op_names: tuple[str, ...], sample: int = 0) -> Arch:
        """The darts Arch of sample ``sample``: each selector's argmax (first on ties), pairs (op, input)."""
        inputs = [inp[:, :, sample].argmax(-1).tolist() for inp in self.inputs]
        ops = self.ops[:, :, :, sample].argmax(-1).tolist()
        cells = [[(GENOTYPE_OPS.index(op_names[ops[c][i][s]]), inputs[i][c][s]) for i in range(NUM_NODES)
                  for s in range(2)] for c in range(2)]
        return from_pairs(*cells)


def pack(selection: Selection) -> torch.Tensor:
    """One (cell type, node, selector, 5 + ops) CPU tensor of alphas: input logits padded with -inf, op logits."""
    inputs = [F.pad(inp, (0, MAX_INPUTS - inp.shape[-1]), value=-math.inf) for inp in selection.inputs]
    return torch.cat([torch.stack(inputs, dim=1), selection.ops], dim=-1).detach().cpu().clone()


def unpack(packed: torch.Tensor) -> Selection:
    return Selection([packed[:, i, :, :i + 2] for i in range(NUM_NODES)], packed[..., MAX_INPUTS:])


def fit_ridge(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``surrogate.py`` SurrogateLinear.learn: ridge (lambda 1, on the bias too) on the first 80 %, scored on the
    rest. Returns the weights (features + bias) and train/test mean absolute errors and test R^2."""
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    y = targets.double()
    split = int(0.8 * len(x))
    x_fit, y_fit = x[:split], y[:split]
    w = torch.linalg.solve(x_fit.T @ x_fit + torch.eye(x.shape[1], dtype=torch.float64), x_fit.T @ y_fit)
    test_err = x[split:] @ w - y[split:]
    spread = ((y[split:] - y[split:].mean()) ** 2).sum()
    stats = {"train_mae": float((x_fit @ w - y_fit).abs().mean()), "test_mae": float(test_err.abs().mean()),
             "test_r2": float(1.0 - (test_err ** 2).sum() / spread) if spread > 0 else math.nan}
    return w.float(), stats

"""NAS-Bench-201 cell space (Dong & Yang, ICLR 2020): encoding, discrete network, supernet, costs, angle.

Facts followed exactly (see shared/reference/nb201-gdas-darts.md):
- ops none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3; edges in sorted "i<-j" order;
- node i = sum of its edges; the cell output is node 3;
- the benchmark's index order is the product order of the 6 edges (first edge most significant),
  shuffled by Python's ``random.seed(88); random.shuffle`` as in the benchmark's generator;
- macro: stem conv3x3+BN, N cells per stage at C/2C/4C, residual reduction blocks with an
  AvgPool+conv1x1 shortcut (no BN), final BN+ReLU.
"""
from __future__ import annotations

import functools
import itertools
import random
import re
from typing import Any

import torch
from torch import nn

from ..registry import ConfigError
from .base import Arch, ArchCost, Backbone, Mixture, SearchSpace, Supernet, SupernetPath, edge_terms, mixture_weights
from .cost import count_macs, count_params
from .nb201_ops import ACTIVATION_FORMAT, OPS, ResidualReduction, _NodeInputs, _NodeSum, make_op
from .registry import SPACES

EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), sorted "i<-j" keys
NUM_NODES = 4
# Input-to-output paths of the cell as node sequences (RLNAS angle definition).
PATHS = ((0, 3), (0, 2, 3), (0, 1, 2, 3), (0, 1, 3))
_EDGE_POS = {edge: pos for pos, edge in enumerate(EDGES)}
_STR_RE = re.compile(r"^\|(.+?)~0\|\+\|(.+?)~0\|(.+?)~1\|\+\|(.+?)~0\|(.+?)~1\|(.+?)~2\|$")
_BENCHMARK_SHUFFLE_SEED = 88


class Cell(nn.Module):
    """One cell holding, per edge, the candidate ops it may run (one for a discrete cell, all for the supernet)."""

    def __init__(self, channels: int, edge_ops: list[tuple[str, ...]], affine: bool, track_stats: bool) -> None:
        super().__init__()
        self.channels = channels
        self.edges = nn.ModuleList()
        for names in edge_ops:
            ops = nn.ModuleDict()
            for name in names:
                op = make_op(name, channels, affine, track_stats)
                if op is not None:
                    ops[name] = op
            self.edges.append(ops)

    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        nodes = [x]
        inputs = _NodeInputs(nodes)
        for node in range(1, NUM_NODES):
            total = _NodeSum()
            for src in range(node):
                pos = _EDGE_POS[(node, src)]
                name = OPS[arch[pos]]
                if name != "none":
                    total.add(*inputs.apply(self.edges[pos][name], src))
            nodes.append(total.result(like=x))
        return nodes[-1]

    def forward_mixture(self, x: torch.Tensor, mixture: Mixture) -> torch.Tensor:
        """Node = sum over its edges of the weighted ops (``none`` adds nothing; a hard mixture runs one op, and
        GDAS's zero-valued scalars are added to the node's sum in place)."""
        nodes = [x]
        inputs = _NodeInputs(nodes)
        for node in range(1, NUM_NODES):
            total = _NodeSum()
            extras = []
            for src in range(node):
                ops = self.edges[_EDGE_POS[(node, src)]]

                def run_op(k: int, ops: nn.ModuleDict = ops, src: int = src) -> torch.Tensor | None:
                    return None if OPS[k] == "none" else inputs.apply(ops[OPS[k]], src)[0]

                def run_weighted(k: int, weight: torch.Tensor, ops: nn.ModuleDict = ops,
                                 src: int = src) -> torch.Tensor | None:
                    return None if OPS[k] == "none" else inputs.apply_weighted(ops[OPS[k]], src, weight)

                terms, extra = edge_terms(mixture, (_EDGE_POS[(node, src)],), run_op, run_weighted)
                for term in terms:
                    total.add(term, owned=True)
                if extra is not None:
                    extras.append(extra)
            nodes.append(total.result(like=x, shift=sum(extras) if extras else None))
        return nodes[-1]


class _Macro(nn.Module):
    """Stem, three stages of cells with two residual reductions, final BN+ReLU."""

    def __init__(self, in_channels: int, channels: int, cells_per_stage: int, make_cell) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResidualReduction(c, 2 * c))
                c *= 2
            layers.extend(make_cell(c) for _ in range(cells_per_stage))
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.out_channels = c
        # Weights in the activations' layout: otherwise every convolution converts its weight forward and its
        # weight gradient back, two copies per convolution per step.
        self.to(memory_format=ACTIVATION_FORMAT)

    def _run(self, x: torch.Tensor, run_cell) -> torch.Tensor:
        x = self.stem(x.contiguous(memory_format=ACTIVATION_FORMAT))
        for layer in self.layers:
            x = run_cell(layer, x) if isinstance(layer, Cell) else layer(x)
        return self.lastact(x)


class NB201Network(_Macro, Backbone):
    """The discrete network for one cell.

    Defaults: the benchmark's own network (cells' BN affine, running statistics tracked). Zero-cost-nas
    (Abdelfattah et al.) scores its own rebuild instead (``NB201Space.build_zero_cost_network``): cells'
    BN without affine parameters or running statistics, so their convolutions carry a bias, and its
    BN-free copy for synflow keeps the reduction blocks' BN (``reductions_keep_bn``: those blocks are
    marked ``keeps_bn_when_bn_free``).
    """

    def __init__(self, arch: Arch, in_channels: int, channels: int, cells_per_stage: int,
                 cell_bn_affine: bool = True, cell_bn_track_stats: bool = True, reductions_keep_bn: bool = False) -> None:
        self.arch = tuple(arch)
        edge_ops = [(OPS[g],) for g in arch]
        super().__init__(
            in_channels, channels, cells_per_stage,
            lambda c: Cell(c, edge_ops, affine=cell_bn_affine, track_stats=cell_bn_track_stats),
        )
        for layer in self.layers:
            if isinstance(layer, ResidualReduction):
                layer.keeps_bn_when_bn_free = reductions_keep_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, lambda cell, h: cell.forward_path(h, self.arch))


class NB201Supernet(_Macro, Supernet):
    """Weight-sharing supernet: every edge holds every op; cells' BN flags follow the config."""

    def __init__(self, in_channels: int, channels: int, cells_per_stage: int, bn_affine: bool, bn_track_stats: bool):
        edge_ops = [OPS] * len(EDGES)
        super().__init__(
            in_channels,
            channels,
            cells_per_stage,
            lambda c: Cell(c, edge_ops, affine=bn_affine, track_stats=bn_track_stats),
        )
        self.num_cells = sum(isinstance(layer, Cell) for layer in self.layers)

    def forward(self, x: torch.Tensor, arch: SupernetPath | None = None,
                mixture: Mixture | None = None) -> torch.Tensor:
        if (arch is None) == (mixture is None):
            raise ValueError("NB201Supernet.forward needs exactly one of arch= (one path) or mixture= (op weights)")
        if arch is not None:
            cell_archs = iter(self._cell_archs(arch))
            return self._run(x, lambda cell, h: cell.forward_path(h, next(cell_archs)))
        if tuple(mixture_weights(mixture).shape) != (len(EDGES), len(OPS)):
            raise ValueError(f"mixture must have shape {(len(EDGES), len(OPS))}, got "
                             f"{tuple(mixture_weights(mixture).shape)}")
        return self._run(x, lambda cell, h: cell.forward_mixture(h, mixture))

    def _cell_archs(self, arch: SupernetPath):
        """One Arch per cell in network order: ``arch`` itself when it holds one per cell, else ``arch`` repeated."""
        if not (len(arch) and isinstance(arch[0], (tuple, list))):
            return itertools.repeat(arch, self.num_cells)
        if len(arch) != self.num_cells:
            raise ValueError(f"a per-cell path needs one cell per searchable cell ({self.num_cells}), got {len(arch)}")
        return arch


@functools.lru_cache(maxsize=1)
def _benchmark_order() -> tuple[Arch, ...]:
    archs = list(itertools.product(range(len(OPS)), repeat=len(EDGES)))
    random.Random(_BENCHMARK_SHUFFLE_SEED).shuffle(archs)
    return tuple(archs)


@functools.lru_cache(maxsize=1)
def _benchmark_index() -> dict[Arch, int]:
    return {arch: i for i, arch in enumerate(_benchmark_order())}


@SPACES.register("nb201")
class NB201Space(SearchSpace):
    name = "nb201"
    choices = (len(OPS),) * len(EDGES)
    ops = OPS

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.channels = int(cfg["channels"])
        self.cells_per_stage = int(cfg["cells_per_stage"])
        self.bn_affine = bool(cfg["supernet"]["bn_affine"])
        self.bn_track_stats = bool(cfg["supernet"]["bn_track_stats"])

    # ---- encoding -------------------------------------------------------------------------------
    def num_archs(self) -> int:
        return len(OPS) ** len(EDGES)

    def to_str(self, arch: Arch) -> str:
        names = [OPS[g] for g in arch]
        return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*names)

    def from_str(self, text: str) -> Arch:
        match = _STR_RE.match(text.strip())
        if not match:
            raise ConfigError(
                f"invalid nb201 cell string {text!r}; expected |op~0|+|op~0|op~1|+|op~0|op~1|op~2| "
                f"with op in {', '.join(OPS)}"
            )
        arch = []
        for name in match.groups():
            if name not in OPS:
                raise ConfigError(f"invalid nb201 cell string {text!r}: unknown op {name!r}; allowed: {', '.join(OPS)}")
            arch.append(OPS.index(name))
        return tuple(arch)

    def to_index(self, arch: Arch) -> int:
        return _benchmark_index()[tuple(arch)]

    def from_index(self, index: int) -> Arch:
        if not 0 <= index < self.num_archs():
            raise ConfigError(f"nb201 index {index} out of range 0..{self.num_archs() - 1}")
        return _benchmark_order()[index]

    # ---- sampling ---------------------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        return 3 * self.cells_per_stage

    def is_trainable(self, arch: Arch) -> bool:
        """SPOS rule of RLNAS: every node has at least one input that is not ``none``."""
        for node in range(1, NUM_NODES):
            if all(arch[_EDGE_POS[(node, src)]] == 0 for src in range(node)):
                return False
        return True

    def sample(self, rng: random.Random) -> Arch:
        """Uniform op per edge; a node whose inputs are all ``none`` is redrawn (RLNAS ``forward_urs``).

        Draw order as in ``forward_urs``: node 1, 2, 3; per node its input edges from node 0 up, all
        redrawn together while every one of them is ``none``.
        """
        arch = [0] * len(EDGES)
        for node in range(1, NUM_NODES):
            positions = [_EDGE_POS[(node, src)] for src in range(node)]
            while True:
                draw = [rng.randrange(len(OPS)) for _ in positions]
                if any(draw):
                    break
            for pos, gene in zip(positions, draw):
                arch[pos] = gene
        return tuple(arch)

    # ---- differentiable search ----------------------------------------------------------------------------
    mixture_shape = (len(EDGES), len(OPS))
    mixture_ops = OPS
    derive_rules = ("argmax",)

    def derive(self, weights: torch.Tensor, rule: str) -> Arch:
        """xautodl ``genotype()``: the op of largest weight on each edge, ``none`` included."""
        if rule not in self.derive_rules:
            raise ConfigError(f"config key 'differentiable.derive': {rule!r} is not a rule of space nb201; "
                              f"allowed: {', '.join(self.derive_rules)}")
        return tuple(int(k) for k in weights.detach().argmax(dim=-1).tolist())

    def op_names(self, arch: Arch) -> list[str]:
        return [OPS[g] for g in arch]

    # ---- networks ---------------------------------------------------------------------------------
    def build_network(self, arch: Arch, in_channels: int) -> NB201Network:
        return NB201Network(arch, in_channels, self.channels, self.cells_per_stage)

    def build_zero_cost_network(self, arch: Arch, in_channels: int) -> NB201Network:
        """The network zero-cost-nas builds for a cell (its ``nasbench2`` model), see ``NB201Network``."""
        return NB201Network(arch, in_channels, self.channels, self.cells_per_stage,
                            cell_bn_affine=False, cell_bn_track_stats=False, reductions_keep_bn=True)

    def build_supernet(self, in_channels: int) -> NB201Supernet:
        return NB201Supernet(in_channels, self.channels, self.cells_per_stage, self.bn_affine, self.bn_track_stats)

    @functools.lru_cache(maxsize=16)
    def _cost_table(self, num_classes: int, in_channels: int, image_size: int):
        """(params, macs) of the fixed parts and of every op at every stage, measured on real modules."""
        empty = self.build_network((0,) * len(EDGES), in_channels)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(empty.out_channels, num_classes))
        fixed_net = nn.Sequential(empty, head)
        x = torch.zeros(1, in_channels, image_size, image_size)
        fixed = (count_params(fixed_net), count_macs(fixed_net, x))
        # stage resolutions, read off the network itself
        shapes: list[tuple[int, int, int]] = []
        h = empty.stem(x)
        for layer in empty.layers:
            if isinstance(layer, Cell):
                if not shapes or shapes[-1][0] != layer.channels:
                    shapes.append(tuple(h.shape[1:]))
            else:
                h = layer(h)
        per_op = []
        for c, hh, ww in shapes:
            stage = []
            for name in OPS:
                op = make_op(name, c, affine=True, track_stats=True)
                if op is None:
                    stage.append((0, 0))
                else:
                    stage.append((count_params(op), count_macs(op, torch.zeros(1, c, hh, ww))))
            per_op.append(stage)
        return fixed, per_op

    def cost(self, arch: Arch, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ArchCost:
        (params, macs), per_op = self._cost_table(num_classes, in_channels, image_size)
        for stage in per_op:
            for gene in arch:
                params += self.cells_per_stage * stage[gene][0]
                macs += self.cells_per_stage * stage[gene][1]
        return ArchCost(params=params, flops=macs)

    def angle_vector(self, supernet: NB201Supernet, head: nn.Module, arch: Arch) -> torch.Tensor | None:
        """RLNAS angle vector: fixed parts once, then per cell and per surviving path the op weights on it.

        An edge on k surviving paths contributes k copies; a conv contributes its conv weight, a pooling
        op a constant [C,3,3] tensor of 1/9, a skip nothing; a path through ``none`` is dropped.
        """
        live_paths = []
        for path in PATHS:
            positions = [_EDGE_POS[(dst, src)] for src, dst in zip(path, path[1:])]
            if all(arch[p] != 0 for p in positions):
                live_paths.append(positions)
        if not live_paths:
            return None
        pieces = [p.reshape(-1) for p in supernet.stem.parameters()]
        for layer in supernet.layers:
            if isinstance(layer, ResidualReduction):
                pieces.extend(p.reshape(-1) for p in layer.parameters())
        pieces.extend(p.reshape(-1) for p in supernet.lastact.parameters())
        pieces.extend(p.reshape(-1) for p in head.parameters())
        for layer in supernet.layers:
            if not isinstance(layer, Cell):
                continue
            for positions in live_paths:
                for pos in positions:
                    name = OPS[arch[pos]]
                    if name.startswith("nor_conv"):
                        pieces.append(layer.edges[pos][name][1].weight.reshape(-1))
                    elif name == "avg_pool_3x3":
                        pieces.append(torch.full((layer.channels * 9,), 1.0 / 9.0, device=pieces[0].device))
        return torch.cat(pieces)

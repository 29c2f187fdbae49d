"""The DARTS cell space (Liu et al., ICLR 2019) as RLNAS, UnNAS and UNAS search it: encoding, networks, costs,
angle. UNAS's sep_conv_7x7 is an op of its architectures (``darts_genotype.GENOTYPE_OPS``) beside DARTS's eight.

Architectures, their text forms and RLNAS's sampling and evolution operators: ``darts_genotype``. Modules
and networks: ``darts_ops``. Config: ``space.darts`` (network, supernet, angle).
"""
from __future__ import annotations

import functools
import math
import random
from typing import Any

import torch
from torch import nn

from ..registry import ConfigError
from . import darts_genotype as genotype
from .base import Arch, ArchCost, SearchSpace, stable_index
from .cost import count_macs, count_params
from .darts_genotype import CHOICES, GENOTYPE_OPS, NUM_NODES, OPS
from .darts_ops import EDGE_POS, DartsNetwork, DartsSupernet, FactorizedReduce, SuperCell, make_op
from .registry import SPACES

# Where the FLOPs budget of ``network.flops_budget`` is measured: (image size, classes) per stem.
BUDGET_SETTING = {"imagenet": (224, 1000), "cifar": (32, 10)}
_SEP = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7")
_DIL, _POOL = ("dil_conv_3x3", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3")


def _min_channels(stem: str) -> int:
    """The imagenet stem feeds the first cell through a FactorizedReduce of C outputs, which needs C even."""
    return 2 if stem == "imagenet" else 1


def _check_channels(key: str, channels: int, stem: str) -> None:
    if stem == "imagenet" and channels % 2:
        raise ConfigError(f"config key '{key}': {channels} is not allowed with stem imagenet; allowed: an even "
                          "number (the first cell's FactorizedReduce splits C channels in two halves)")


@functools.lru_cache(maxsize=128)
def _cost_table(channels: int, cells: int, stem: str, num_classes: int, in_channels: int, image_size: int):
    """(params, macs) of the fixed parts (stem, preprocessing, classifier) and, summed over the network's
    cells of each type, of every op: ``normal[op]`` and ``reduce[op][strided]`` (strided: it reads a cell
    input). Every entry is measured on real modules at the resolution the network runs it."""
    empty = DartsNetwork((0,) * len(CHOICES), in_channels, channels, cells, stem, auxiliary=False,
                         aux_second_bn=False)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(empty.out_channels, num_classes))
    fixed_net = nn.Sequential(empty, head)
    # each cell's channels and input resolution, as its preprocess1 outputs them
    shapes: list[tuple[int, ...]] = []
    hooks = [cell.preprocess1.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
             for cell in empty.cells]
    fixed = (count_params(fixed_net), count_macs(fixed_net, torch.zeros(1, in_channels, image_size, image_size)))
    for hook in hooks:
        hook.remove()

    def measure(name: str, c: int, h: int, w: int, stride: int) -> tuple[int, int]:
        op = make_op(name, c, stride, affine=True, track_stats=True)
        return (0, 0) if op is None else (count_params(op), count_macs(op, torch.zeros(1, c, h, w)))

    normal = [[0, 0] for _ in GENOTYPE_OPS]
    reduce = [[[0, 0], [0, 0]] for _ in GENOTYPE_OPS]
    measured: dict[tuple, tuple[int, int]] = {}
    for cell, (_b, c, h, w) in zip(empty.cells, shapes):
        for k, name in enumerate(GENOTYPE_OPS):
            for strided in ((False, True) if cell.reduction else (False,)):
                hh, ww = ((h + 1) // 2, (w + 1) // 2) if cell.reduction and not strided else (h, w)
                key = (name, c, hh, ww, 2 if strided else 1)
                if key not in measured:
                    measured[key] = measure(*key)
                entry = reduce[k][strided] if cell.reduction else normal[k]
                entry[0] += measured[key][0]
                entry[1] += measured[key][1]
    return fixed, normal, reduce


@SPACES.register("darts")
class DartsSpace(SearchSpace):
    name = "darts"
    choices = CHOICES
    enumerable = False
    ops = OPS

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        darts = cfg["darts"]
        self.network_cfg = dict(darts["network"])
        self.supernet_cfg = dict(darts["supernet"])
        self.dil_bn_twice = bool(darts["angle"]["dil_bn_twice"])
        net = self.network_cfg
        if net["channels"] is None and net["flops_budget"] is None:
            raise ConfigError("config key 'space.darts.network.channels': null needs "
                              "'space.darts.network.flops_budget' (a number of multiply-accumulates); "
                              "set one of them")
        if net["channels"] is not None:
            _check_channels("space.darts.network.channels", int(net["channels"]), net["stem"])
        _check_channels("space.darts.supernet.channels", int(self.supernet_cfg["channels"]), self.supernet_cfg["stem"])

    # ---- encoding -------------------------------------------------------------------------------
    def num_archs(self) -> int:
        return math.prod(CHOICES)

    def to_str(self, arch: Arch) -> str:
        return genotype.to_text(arch)

    def from_str(self, text: str) -> Arch:
        return genotype.parse(text)

    def to_index(self, arch: Arch) -> int:
        return stable_index(self.to_str(arch))

    def from_index(self, index: int) -> Arch:
        raise ConfigError(f"space 'darts' is not enumerable: index {index} names no architecture; give "
                          "architectures as text (canonical, Genotype(...), a published name or an UnNAS ID)")

    # ---- sampling and evolution (RLNAS's DARTS rules) -------------------------------------------------
    @property
    def num_cells(self) -> int:
        return int(self.supernet_cfg["cells"])

    def is_trainable(self, arch: Arch) -> bool:
        return genotype.is_trainable(arch)

    def sample(self, rng: random.Random) -> Arch:
        return genotype.sample(rng)

    def sample_uniform(self, rng: random.Random) -> Arch:
        """RLNAS's random candidate is drawn as a training step's path: ``sample``."""
        return genotype.sample(rng)

    def mutate(self, parent: Arch, rng: random.Random, prob: float, allow_none: bool, cells: str) -> Arch:
        return genotype.mutate(parent, rng, prob, allow_none, cells)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return genotype.crossover(a, b, rng)

    def unnas_samples(self) -> list[tuple[str, Arch]]:
        return genotype.unnas_samples()

    # ---- networks and costs -----------------------------------------------------------------------
    def network_channels(self, arch: Arch, in_channels: int = 3) -> int:
        """``network.channels``, or with it null the widest C whose network for ``arch`` counts at most
        ``network.flops_budget`` multiply-accumulates (BUDGET_SETTING; imagenet stem: even C only)."""
        net = self.network_cfg
        if net["channels"] is not None:
            return int(net["channels"])
        budget, stem = float(net["flops_budget"]), net["stem"]
        image_size, num_classes = BUDGET_SETTING[stem]
        step = _min_channels(stem)

        def macs(c: int) -> int:
            return self._cost_at(arch, c, num_classes, in_channels, image_size).flops

        if macs(step) > budget:
            raise ConfigError(f"config key 'space.darts.network.flops_budget': {budget:g} is below the "
                              f"{macs(step)} multiply-accumulates of the narrowest network (C={step}) of "
                              f"{self.to_str(arch)!r} at {image_size} px and {num_classes} classes")
        low, high = 1, 2  # in units of step: macs(low * step) <= budget < macs(high * step)
        while macs(high * step) <= budget:
            low, high = high, 2 * high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if macs(mid * step) <= budget else (low, mid)
        return low * step

    def build_network(self, arch: Arch, in_channels: int) -> DartsNetwork:
        net = self.network_cfg
        return DartsNetwork(arch, in_channels, self.network_channels(arch, in_channels), int(net["cells"]),
                            net["stem"], bool(net["auxiliary"]), bool(net["aux_second_bn"]))

    def build_supernet(self, in_channels: int, ops: tuple[str, ...] = OPS, pool_bn: bool = True) -> DartsSupernet:
        """``space.darts.supernet``'s network; ``ops`` and ``pool_bn`` as ``DartsSupernet`` takes them (UNAS
        builds it with its own list)."""
        sup = self.supernet_cfg
        return DartsSupernet(in_channels, int(sup["channels"]), int(sup["cells"]), sup["stem"],
                             bool(sup["bn_affine"]), bool(sup["bn_track_stats"]), ops, pool_bn)

    def cost(self, arch: Arch, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ArchCost:
        """Parameters and multiply-accumulates of ``build_network(arch)`` plus a linear classifier; the
        auxiliary head is not counted (DARTS ``count_parameters_in_MB`` skips it)."""
        return self._cost_at(arch, self.network_channels(arch, in_channels), num_classes, in_channels, image_size)

    def _cost_at(self, arch: Arch, channels: int, num_classes: int, in_channels: int, image_size: int) -> ArchCost:
        net = self.network_cfg
        (params, macs), normal, reduce = _cost_table(channels, int(net["cells"]), net["stem"], num_classes,
                                                     in_channels, image_size)
        for _node, op, _src in genotype.pairs(arch, 0):
            params += normal[op][0]
            macs += normal[op][1]
        for _node, op, src in genotype.pairs(arch, 1):
            entry = reduce[op][src < 2]
            params += entry[0]
            macs += entry[1]
        return ArchCost(params=params, flops=macs)

    # ---- differentiable search ----------------------------------------------------------------------------
    mixture_shape = (2, len(genotype.EDGE_INPUTS), len(OPS))
    mixture_ops = OPS
    derive_rules = ("darts", "top2")

    def derive(self, weights: torch.Tensor, rule: str) -> Arch:
        """Each node's two (op, input) pairs from op weights (cell type, edge, op). ``darts`` (DARTS
        ``genotype()``, as UnNAS's): the two inputs whose best non-none op weighs most, each with that op;
        ``top2`` (xautodl's NASNet-space ``genotype``): the two largest (op != none, input) weights, which
        may share an input. Ties go to the lower input, then the lower op index."""
        if rule not in self.derive_rules:
            raise ConfigError(f"config key 'differentiable.derive': {rule!r} is not a rule of space darts; "
                              f"allowed: {', '.join(self.derive_rules)}")
        table = weights.detach().double().cpu().tolist()
        cells = []
        for cell in range(2):
            cell_pairs: list[tuple[int, int]] = []
            for node in range(NUM_NODES):
                rows = {src: table[cell][EDGE_POS[(node, src)]] for src in range(2 + node)}
                if rule == "darts":
                    best = {src: max(range(1, len(OPS)), key=lambda k, row=row: (row[k], -k)) for src, row in rows.items()}
                    chosen = sorted(rows, key=lambda src: (-rows[src][best[src]], src))[:2]
                    cell_pairs += [(best[src], src) for src in chosen]
                else:
                    ranked = sorted(((src, k) for src in rows for k in range(1, len(OPS))),
                                    key=lambda sk: (-rows[sk[0]][sk[1]], sk[0], sk[1]))
                    cell_pairs += [(k, src) for src, k in ranked[:2]]
            cells.append(cell_pairs)
        return genotype.from_pairs(*cells)

    def op_names(self, arch: Arch) -> list[str]:
        return [GENOTYPE_OPS[op] for cell in (0, 1) for _node, op, _src in genotype.pairs(arch, cell)]

    # ---- RLNAS angle vector ---------------------------------------------------------------------------
    def angle_vector(self, supernet: DartsSupernet, head: nn.Module, arch: Arch) -> torch.Tensor | None:
        """RLNAS ``get_arch_vector`` (``evolution_search/test_server.py``) on the arch's pairs.

        Fixed parts: every stem parameter, every parameter of each cell's preprocess0/1, and the head's
        parameters named ``*weight``. Per cell (its Arch half by cell type) and per input-to-node path
        (from cell input 0 or 1 through live pairs to any node; 30 when all 8 pairs are live and distinct)
        the tensors of each pair on it: a pair on k paths contributes k copies (``path_copies``).
        """
        cell_copies = []
        for cell in supernet.cells:
            cell_pairs = genotype.pairs(arch, int(cell.reduction))
            cell_copies.append((cell, cell_pairs, path_copies(cell_pairs)))
        if not any(any(copies) for _c, _p, copies in cell_copies):
            return None
        pieces = [p.reshape(-1) for p in supernet.stem.parameters()]
        for cell, cell_pairs, copies in cell_copies:
            pieces += [p.reshape(-1) for p in cell.preprocess0.parameters()]
            pieces += [p.reshape(-1) for p in cell.preprocess1.parameters()]
            for (node, op, src), k in zip(cell_pairs, copies):
                if k:
                    op_vector = torch.cat(self._op_tensors(cell, node, GENOTYPE_OPS[op], src))
                    pieces += [op_vector] * k
        pieces += [p.reshape(-1) for name, p in head.named_parameters() if name.endswith("weight")]
        return torch.cat(pieces)

    def _op_tensors(self, cell: SuperCell, node: int, name: str, src: int) -> list[torch.Tensor]:
        """One pair's tensors in the angle vector (RLNAS): sep_conv, its 4 convs and 2 BNs; dil_conv, its 2
        convs and its BN weight twice (``angle.dil_bn_twice``) or its BN weight and bias; pooling, a constant
        1/9 of the shape [C, 3, 3] and the following BN (none in UNAS's supernet); skip, the FactorizedReduce at stride 2, else eye(C)."""
        op = cell.edge_op(node, src, name)
        c = cell.channels
        like = cell.preprocess1[1].weight
        if name in _SEP or (name == "skip_connect" and isinstance(op, FactorizedReduce)):
            return [p.reshape(-1) for p in op.parameters()]
        if name in _DIL:
            convs = [op[1].weight.reshape(-1), op[2].weight.reshape(-1)]
            bn = op[3]
            if not bn.affine:
                return convs
            return convs + ([bn.weight, bn.weight] if self.dil_bn_twice else [bn.weight, bn.bias])
        if name in _POOL:
            # the BN after the pooling, where the supernet has one (not UNAS's)
            return [torch.full((c * 9,), 1.0 / 9.0, dtype=like.dtype, device=like.device)] + \
                [p.reshape(-1) for p in op.parameters()]
        return [torch.eye(c, dtype=like.dtype, device=like.device).reshape(-1)]


def path_copies(cell_pairs: list[tuple[int, int, int]]) -> list[int]:
    """For each pair, how many input-to-node paths run through it: the paths reaching its input (1 from a
    cell input) times the paths leaving its node (ending there, or continuing through later live pairs).
    A ``none`` pair is on no path; two pairs of a node on one input are two distinct steps."""
    reach = [1, 1] + [0] * NUM_NODES
    for node, op, src in cell_pairs:  # node-major, inputs precede their readers
        if op:
            reach[2 + node] += reach[src]
    leave = [0, 0] + [1] * NUM_NODES
    for node, op, src in reversed(cell_pairs):
        if op and src >= 2:
            leave[src] += leave[2 + node]
    return [reach[src] * leave[2 + node] if op else 0 for node, op, src in cell_pairs]

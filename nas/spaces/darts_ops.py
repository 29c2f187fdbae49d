"""DARTS-space modules: the operations (DARTS's eight and UNAS's sep_conv_7x7), stems, cells, auxiliary heads
and the two networks.

Facts followed (quark0/darts ``cnn/operations.py``, ``cnn/model.py``, ``cnn/model_search.py``; RLNAS
``darts_search_space/*/rlnas/train_supernet/super_model.py``; UnNAS ``pycls/models/nas/nas.py``):
- ops keep DARTS's module layouts (SepConv: ReLU, dw, pw, BN, ReLU, dw, pw, BN; DilConv: ReLU, dilated dw,
  pw, BN); convolutions carry no bias; average pooling does not count padding;
- skip_connect is the identity at stride 1 and a FactorizedReduce at stride 2; ``none`` builds nothing;
- a cell preprocesses its inputs (FactorizedReduce after a reduction, else ReLU-conv1x1-BN), runs node
  m = sum of its two pairs, and concatenates nodes 2..5; ops reading a cell input of a reduction cell
  have stride 2;
- stems: cifar, conv3x3 to 3C + BN (both cell inputs); imagenet, the stride-4 stem0 and stride-2 stem1;
- reductions at cells//3 and 2*cells//3; the auxiliary head reads the output of cell 2*cells//3;
- the supernet's edges hold the seven non-none DARTS ops, each pooling followed by a BN (MixedOp); a supernet
  built with UNAS's op list (NVlabs/unas ``darts/model_search.py``) holds those, its pooling without a BN.
"""
from __future__ import annotations

import math

from typing import Callable, Sequence

import torch
from torch import nn

from ..registry import ConfigError
from .base import Arch, Backbone, Mixture, SampleMixture, Supernet, SupernetPath, edge_terms, mixture_weights
from .darts_genotype import EDGE_INPUTS, GENOTYPE_OPS, NUM_NODES, OPS, pairs

STEMS = ("cifar", "imagenet")
CIFAR_STEM_MULTIPLIER = 3
EDGE_POS = {edge: pos for pos, edge in enumerate(EDGE_INPUTS)}


def _bn(channels: int, affine: bool, track_stats: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=track_stats)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool, track_stats: bool) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         _bn(c_out, affine, track_stats))


class SepConv(nn.Sequential):
    """Two ReLU - depthwise - pointwise - BN blocks; only the first is strided."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool, track_stats: bool) -> None:
        pad = kernel // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel, stride=stride, padding=pad, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            _bn(channels, affine, track_stats),
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel, stride=1, padding=pad, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            _bn(channels, affine, track_stats),
        )


class DilConv(nn.Sequential):
    """ReLU - depthwise conv of dilation 2 - pointwise - BN."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool, track_stats: bool) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel - 1, dilation=2,
                      groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            _bn(channels, affine, track_stats),
        )


class FactorizedReduce(nn.Module):
    """Halves the resolution: two stride-2 1x1 convs, the second on the input shifted by one pixel."""

    def __init__(self, c_in: int, c_out: int, affine: bool, track_stats: bool) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = _bn(c_out, affine, track_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def make_op(name: str, channels: int, stride: int, affine: bool, track_stats: bool,
            pool_bn: bool = False) -> nn.Module | None:
    """One DARTS operation; None for ``none``. ``pool_bn`` appends a BN to pooling (the supernet's MixedOp)."""
    if name == "none":
        return None
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (nn.MaxPool2d(3, stride=stride, padding=1) if name == "max_pool_3x3"
                else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        return nn.Sequential(pool, _bn(channels, affine, track_stats)) if pool_bn else pool
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine, track_stats)
    kind, _, size = name.rpartition("_")
    kernel = int(size[0])
    if kind == "sep_conv":
        return SepConv(channels, kernel, stride, affine, track_stats)
    if kind == "dil_conv":
        return DilConv(channels, kernel, stride, affine, track_stats)
    raise ValueError(f"unknown DARTS op {name!r}; allowed: {', '.join(GENOTYPE_OPS)}")


def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    """DARTS drop path: each sample's tensor zeroed with probability ``prob``, the rest divided by 1 - prob."""
    keep = 1.0 - prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Stem(nn.Module):
    """Maps images to the first cell's two inputs (s0, s1)."""

    def __init__(self, kind: str, in_channels: int, channels: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "cifar":
            c = CIFAR_STEM_MULTIPLIER * channels
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            self.out_channels, self.reduces = (c, c), False
        else:
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(inplace=False),
                nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            )
            self.stem1 = nn.Sequential(nn.ReLU(inplace=False),
                                       nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
                                       nn.BatchNorm2d(channels))
            # s0 has twice s1's resolution, so the first cell's preprocess0 reduces (DARTS reduction_prev=True)
            self.out_channels, self.reduces = (channels, channels), True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "cifar":
            s = self.stem(x)
            return s, s
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


class _Cell(nn.Module):
    """Preprocessing and the node loop shared by the discrete cell and the supernet cell."""

    def __init__(self, c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool,
                 affine: bool, track_stats: bool) -> None:
        super().__init__()
        self.channels, self.reduction = channels, reduction
        self.preprocess0 = (FactorizedReduce(c_prev_prev, channels, affine, track_stats) if reduction_prev
                            else ReLUConvBN(c_prev_prev, channels, 1, 1, affine, track_stats))
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, affine, track_stats)

    def stride(self, src: int) -> int:
        return 2 if self.reduction and src < 2 else 1

    def run_nodes(self, s0: torch.Tensor, s1: torch.Tensor,
                  node_terms: Callable[[int, list[torch.Tensor]], list[torch.Tensor]],
                  scalars: dict[int, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Concatenated nodes 2..5, node m the sum of ``node_terms(m, states)`` (zeros when it has none) and of
        the scalars ``node_terms`` left in ``scalars[m]``."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(NUM_NODES):
            terms = node_terms(node, states)
            if terms:
                total = terms[0]
                for term in terms[1:]:
                    total = total + term
            else:
                b, c, h, w = states[1].shape
                if self.reduction:
                    h, w = (h + 1) // 2, (w + 1) // 2
                total = states[1].new_zeros((b, c, h, w))
            if scalars and scalars.get(node):
                total = total + sum(scalars[node])
            states.append(total)
        return torch.cat(states[2:], dim=1)


class DiscreteCell(_Cell):
    """A cell of the stand-alone network: one op per live (node, op, input) pair."""

    def __init__(self, cell_pairs: Sequence[tuple[int, int, int]], c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__(c_prev_prev, c_prev, channels, reduction, reduction_prev, affine=True, track_stats=True)
        self.pairs = tuple(cell_pairs)
        self.ops = nn.ModuleDict()
        for j, (_node, op, src) in enumerate(self.pairs):
            module = make_op(GENOTYPE_OPS[op], self.channels, self.stride(src), affine=True, track_stats=True)
            if module is not None:
                self.ops[str(j)] = module

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        def terms(node: int, states: list[torch.Tensor]) -> list[torch.Tensor]:
            out = []
            for j in (2 * node, 2 * node + 1):
                if str(j) in self.ops:
                    op = self.ops[str(j)]
                    h = op(states[self.pairs[j][2]])
                    if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                        h = drop_path(h, drop_prob)
                    out.append(h)
            return out

        return self.run_nodes(s0, s1, terms)


class SuperCell(_Cell):
    """A supernet cell: each of the 14 edges holds the non-none ops of ``ops`` (the names along a mixture's op
    axis), pooling followed by a BN when ``pool_bn``."""

    def __init__(self, c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool,
                 affine: bool, track_stats: bool, ops: Sequence[str] = OPS, pool_bn: bool = True) -> None:
        super().__init__(c_prev_prev, c_prev, channels, reduction, reduction_prev, affine, track_stats)
        self.ops = tuple(ops)
        self.edges = nn.ModuleList()
        for _node, src in EDGE_INPUTS:
            self.edges.append(nn.ModuleDict(
                {name: make_op(name, self.channels, self.stride(src), affine, track_stats, pool_bn=pool_bn)
                 for name in self.ops if name != "none"}))

    def edge_op(self, node: int, src: int, name: str) -> nn.Module:
        """The module of op ``name`` on the edge from ``src`` to ``node``; ValueError when the edges lack it."""
        edge = self.edges[EDGE_POS[(node, src)]]
        if name not in edge:
            raise ValueError(f"this DARTS supernet's edges hold {', '.join(edge)}; the architecture's op {name!r} "
                             "is not one of them")
        return edge[name]

    def forward_path(self, s0: torch.Tensor, s1: torch.Tensor, cell_pairs: Sequence[tuple[int, int, int]]):
        def terms(node: int, states: list[torch.Tensor]) -> list[torch.Tensor]:
            return [self.edge_op(node, src, GENOTYPE_OPS[op])(states[src])
                    for n, op, src in cell_pairs if n == node and op != 0]

        return self.run_nodes(s0, s1, terms)

    def forward_mixture(self, s0: torch.Tensor, s1: torch.Tensor, mixture: Mixture, cell_type: int) -> torch.Tensor:
        """Node = sum over its edges of the weighted ops of ``mixture[cell_type]`` (``none`` adds nothing; a hard
        mixture runs one op per edge and may add GDAS's zero-valued scalars; a sample mixture weighs each
        sample's output by its own weights and skips the ops it marks inactive)."""
        extras: dict[int, list[torch.Tensor]] = {}

        def terms(node: int, states: list[torch.Tensor]) -> list[torch.Tensor]:
            out = []
            for src in range(2 + node):
                pos = EDGE_POS[(node, src)]
                edge = self.edges[pos]
                edge_out, extra = edge_terms(
                    mixture, (cell_type, pos),
                    lambda k, src=src, edge=edge: None if self.ops[k] == "none" else edge[self.ops[k]](states[src]))
                out += edge_out
                if extra is not None:
                    extras.setdefault(node, []).append(extra)
            return out

        return self.run_nodes(s0, s1, terms, extras)


class AuxiliaryHead(nn.Module):
    """DARTS's auxiliary classifier: ReLU, 5x5 average pool, conv1x1 to 128, BN, ReLU, conv2x2 to 768,
    [BN], ReLU, linear. CIFAR: pool stride 3 on an 8x8 map; ImageNet: stride 2 on 7x7, and DARTS and
    UnNAS leave out the second BN (``second_bn``)."""

    def __init__(self, channels: int, num_outputs: int, pool_stride: int, second_bn: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # not in place as upstream: the map is the next cells' input, read again by their backward
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if second_bn else []),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.features(features)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"the DARTS auxiliary head needs an 8x8 (cifar stem, 32 px) or 7x7 (imagenet stem, "
                             f"224 px) map; its input {tuple(features.shape[-2:])} pools to {tuple(x.shape[-2:])}")
        return self.classifier(x.flatten(1))


class _Macro(nn.Module):
    """Stem and cells; reductions (channels doubled) at cells//3 and 2*cells//3.

    ``make_cell(c_prev_prev, c_prev, channels, reduction, reduction_prev)`` builds each cell.
    """

    def __init__(self, stem: str, in_channels: int, channels: int, cells: int,
                 make_cell: Callable[[int, int, int, bool, bool], _Cell]) -> None:
        super().__init__()
        self.stem = Stem(stem, in_channels, channels)
        c_prev_prev, c_prev = self.stem.out_channels
        reduction_prev, c = self.stem.reduces, channels
        self.reduction_cells = (cells // 3, 2 * cells // 3)
        self.cells = nn.ModuleList()
        self.cell_channels: list[int] = []
        for i in range(cells):
            reduction = i in self.reduction_cells
            c = 2 * c if reduction else c
            self.cells.append(make_cell(c_prev_prev, c_prev, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, NUM_NODES * c
            self.cell_channels.append(c_prev)
        self.out_channels = c_prev
        self.num_cells = cells


class DartsNetwork(_Macro, Backbone):
    """The stand-alone network (DARTS NetworkCIFAR / NetworkImageNet) without pooling and classifier.

    ``drop_path_prob`` is set by the trainer; with ``auxiliary`` a training forward keeps the output of
    cell 2*cells//3 as ``aux_features`` for the head of ``build_aux_head``.
    """

    def __init__(self, arch: Arch, in_channels: int, channels: int, cells: int, stem: str,
                 auxiliary: bool, aux_second_bn: bool) -> None:
        self.arch = tuple(arch)
        cell_pairs = (pairs(arch, 0), pairs(arch, 1))
        super().__init__(stem, in_channels, channels, cells,
                         lambda c_pp, c_p, c, red, red_prev: DiscreteCell(cell_pairs[int(red)], c_pp, c_p, c, red,
                                                                          red_prev))
        self.drop_path_prob = 0.0
        self.aux_index = 2 * cells // 3
        self.aux_channels = self.cell_channels[self.aux_index] if auxiliary else 0
        self.aux_second_bn = aux_second_bn
        self.aux_features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.aux_features = None
        s0, s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.aux_channels and self.training:
                self.aux_features = s1
        return s1

    def check_aux_input(self, image_size: int) -> None:
        """ConfigError unless ``image_size`` images reach the auxiliary head as the map it pools to 1x1 (8x8 after
        the cifar stem, 7x7 after the imagenet stem: 32 and 224 px)."""
        size = image_size
        for _ in range(3 if self.stem.kind == "imagenet" else 0):  # three stride-2 convolutions, padding 1
            size = (size + 1) // 2
        size = math.ceil(size / 2 ** sum(i <= self.aux_index for i in self.reduction_cells))
        stride = 3 if self.stem.kind == "cifar" else 2
        if size < 5 or (size - 5) // stride + 1 != 2:
            raise ConfigError(
                f"the DARTS auxiliary head with stem {self.stem.kind} needs "
                f"{'8x8' if self.stem.kind == 'cifar' else '7x7'} maps at cell {self.aux_index} "
                f"({'32' if self.stem.kind == 'cifar' else '224'}-px images); {image_size}-px images give {size}x{size}: "
                "set space.darts.network.auxiliary to false (and train.aux_weight to 0) or use images of that size")

    def build_aux_head(self, num_outputs: int) -> AuxiliaryHead:
        if not self.aux_channels:
            raise ValueError("this DARTS network has no auxiliary head (space.darts.network.auxiliary: false)")
        if self.stem.kind == "cifar":
            return AuxiliaryHead(self.aux_channels, num_outputs, pool_stride=3, second_bn=True)
        return AuxiliaryHead(self.aux_channels, num_outputs, pool_stride=2, second_bn=self.aux_second_bn)


class DartsSupernet(_Macro, Supernet):
    """The weight-sharing network: DARTS's search network with every op of every edge (RLNAS super_model).

    ``ops`` names the op axis of its mixtures: DARTS's ``OPS`` by default (RLNAS, DARTS, GDAS), UNAS's list
    for UNAS (``pool_bn`` False as UNAS's MixedOp). A path (``arch=``) may use only ops its edges hold.
    """

    def __init__(self, in_channels: int, channels: int, cells: int, stem: str, bn_affine: bool,
                 bn_track_stats: bool, ops: Sequence[str] = OPS, pool_bn: bool = True) -> None:
        unknown = [name for name in ops if name not in GENOTYPE_OPS]
        if unknown or len(set(ops)) != len(ops):
            raise ValueError(f"supernet ops {list(ops)!r}: each must be one of {', '.join(GENOTYPE_OPS)}, once")
        self.ops = tuple(ops)
        super().__init__(stem, in_channels, channels, cells,
                         lambda *shape: SuperCell(*shape, affine=bn_affine, track_stats=bn_track_stats, ops=ops,
                                                  pool_bn=pool_bn))

    def forward(self, x: torch.Tensor, arch: SupernetPath | None = None,
                mixture: Mixture | None = None) -> torch.Tensor:
        if (arch is None) == (mixture is None):
            raise ValueError("DartsSupernet.forward needs exactly one of arch= (one path) or mixture= (op weights)")
        s0, s1 = self.stem(x)
        if mixture is not None:
            shape = tuple(mixture_weights(mixture).shape)
            per_sample = isinstance(mixture, SampleMixture)
            if (shape[:2] + shape[-1:]) != (2, len(EDGE_INPUTS), len(self.ops)) or len(shape) != 3 + per_sample:
                raise ValueError(f"mixture must have shape (2, {len(EDGE_INPUTS)}, {'batch, ' * per_sample}"
                                 f"{len(self.ops)}) (cell type, edge, {'sample, ' * per_sample}op), got {shape}")
            if per_sample:
                mixture = mixture.for_batch(x.shape[0])
            for cell in self.cells:
                s0, s1 = s1, cell.forward_mixture(s0, s1, mixture, int(cell.reduction))
            return s1
        for cell, cell_pairs in zip(self.cells, self._cell_pairs(arch)):
            s0, s1 = s1, cell.forward_path(s0, s1, cell_pairs)
        return s1

    def _cell_pairs(self, arch: SupernetPath) -> list[list[tuple[int, int, int]]]:
        """Each cell's pairs: the normal half of its Arch in a normal cell, the reduce half in a reduction cell."""
        per_cell = len(arch) and isinstance(arch[0], (tuple, list))
        if per_cell and len(arch) != self.num_cells:
            raise ValueError(f"a per-cell path needs one Arch per cell ({self.num_cells}), got {len(arch)}")
        archs = arch if per_cell else (arch,) * self.num_cells
        cache: dict[tuple[Arch, bool], list] = {}
        out = []
        for cell, cell_arch in zip(self.cells, archs):
            key = (tuple(cell_arch), cell.reduction)
            if key not in cache:
                cache[key] = pairs(key[0], int(cell.reduction))
            out.append(cache[key])
        return out

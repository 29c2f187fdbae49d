"""NAS-Bench-101 cell space (Ying et al., ICML 2019) for UnNAS's sample-based protocol: encoding, hash, network, costs.

It has no supernet: its architectures are trained stand-alone or scored by zero-cost proxies.

Facts followed (google-research/nasbench ``lib/model_spec.py``, ``lib/graph_util.py``, ``lib/model_builder.py``,
``api.py``, ``lib/config.py``; UnNAS's PyTorch port ``pycls/models/nas_bench/``, which is what UnNAS trained):
- a cell is a DAG of at most 7 vertices and 9 edges with an upper-triangular 0/1 adjacency matrix; vertex 0 is
  the input, the last vertex the output, every other vertex runs conv3x3-bn-relu, conv1x1-bn-relu or maxpool3x3;
- vertices off every input->output path are pruned; a cell is invalid when its input and output are
  disconnected, or when the pruned cell has more than 7 vertices or 9 edges (``api._check_spec`` counts both
  on the pruned cell);
- the isomorphism-invariant hash is ``hash_module`` of the pruned cell, op labels being the index in the op
  list below (``config['available_ops']``), -1 for the input and -2 for the output;
- network: a conv3x3-BN-ReLU stem to ``channels``; ``stacks`` stacks of ``modules_per_stack`` modules, a 2x2
  stride-2 max-pool and doubled channels before every stack but the first; in a module, the output channels
  are split over the vertices feeding the output (remainder one each to the first ones) and every other
  vertex takes the largest count among its successors; a vertex reading the module input reads a 1x1
  conv-BN-ReLU projection of it, one reading another vertex reads that vertex's first channels; an interior
  vertex sums its inputs and applies its op; the output concatenates the vertices feeding it and adds a
  projection of the module input when the input feeds it directly.
Where UnNAS's port and TF NB101 differ, the port is followed: BN momentum 0.1 (TF: decay 0.997), a stride-2
max-pool that floors odd sizes (TF's 'same' rounds up; equal for 32 px), PyTorch's default initialisation
(UnNAS's network sets none of its own). Checked in tests/test_space_nb101.py: the hash reproduces the dataset
key of a published NB101 row, and the default network the published parameter counts of two cells.

Encoding (26 genes): the 21 upper-triangle entries of a 7x7 matrix in row-major order ((0,1), (0,2), ...,
(0,6), (1,2), ..., (5,6)), then the ops of vertices 1..5 (0 conv3x3, 1 conv1x1, 2 maxpool). Canonical form:
the pruned cell with k interior vertices keeps them, in their order, at 1..k; the padding vertices k+1..5 have
no edge and op 0; the output sits at 6. Isomorphic cells with different vertex orders stay distinct tuples
(their networks can differ by the +1 channels of an uneven split) and share ``hash`` and ``to_index``.

Text (``to_str``): the rows of the pruned matrix as bit strings joined by ``|``, a ``:``, then the interior
ops joined by ``|``, e.g. ``01010|00100|00001|00001|00000:conv3x3-bn-relu|conv1x1-bn-relu|maxpool3x3`` (input ->
conv3x3 -> conv1x1 -> output and input -> maxpool -> output).
"""
from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import torch
from torch import nn

from ..registry import ConfigError
from .base import Arch, ArchCost, Backbone, SearchSpace, Supernet
from .cost import count_macs, count_params
from .nb201_ops import ACTIVATION_FORMAT
from .registry import SPACES

OPS = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")
INPUT, OUTPUT = "input", "output"
MAX_VERTICES = 7
MAX_EDGES = 9
NUM_INTERIOR = MAX_VERTICES - 2
EDGES = tuple((src, dst) for src in range(MAX_VERTICES) for dst in range(src + 1, MAX_VERTICES))
# "exactly 423,624 computationally unique modules": NB101's README and paper (Ying et al. 2019, section 2.2).
NUM_UNIQUE_CELLS = 423_624
# UnNAS's port builds nn.BatchNorm2d with PyTorch's defaults; TF NB101 (base_ops.py) uses decay 0.997, i.e.
# PyTorch momentum 0.003, and the same epsilon.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5
NO_SUPERNET = "space nb101 has no supernet: it is for stand-alone training and zero-cost proxies"
UNNAS_RESOURCE = "resources/unnas_nb101_500.json"
_TEXT_RE = re.compile(r"[01]+(?:\|[01]+)*:(?:[^|:\s]+(?:\|[^|:\s]+)*)?")
_ID_RE = re.compile(r"\d+")
_FORMS = ("the to_str text (rows of 0/1 joined by '|', ':', interior ops joined by '|'), "
          'JSON {"matrix": [[...]], "ops": ["input", ..., "output"]}, or an UnNAS ID such as 000907')

Matrix = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Cell:
    """A pruned cell: its V x V adjacency matrix and the op index of each of its V-2 interior vertices."""

    matrix: Matrix
    ops: tuple[int, ...]

    @property
    def num_vertices(self) -> int:
        return len(self.matrix)

    @property
    def num_edges(self) -> int:
        return sum(map(sum, self.matrix))


def _reachable(start: int, successors) -> set[int]:
    seen, frontier = {start}, [start]
    while frontier:
        for w in successors(frontier.pop()):
            if w not in seen:
                seen.add(w)
                frontier.append(w)
    return seen


def prune(matrix: Sequence[Sequence[int]], ops: Sequence[int]) -> Cell | None:
    """The cell restricted to vertices on an input->output path (``ModelSpec._prune``); None when the input
    and output are disconnected. ``ops`` holds the ops of the interior vertices 1..V-2."""
    n = len(matrix)
    from_input = _reachable(0, lambda v: [w for w in range(v + 1, n) if matrix[v][w]])
    if n - 1 not in from_input:
        return None
    to_output = _reachable(n - 1, lambda v: [w for w in range(v) if matrix[w][v]])
    keep = sorted(from_input & to_output)
    return Cell(tuple(tuple(int(matrix[i][j]) for j in keep) for i in keep), tuple(ops[v - 1] for v in keep[1:-1]))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=65536)
def cell_hash(cell: Cell) -> str:
    """NB101's graph hash (``graph_util.hash_module``): each vertex starts from md5 of (out-degree, in-degree,
    label), then V times takes md5 of its sorted in-neighbour hashes, '|', sorted out-neighbour hashes, '|',
    its own; the hash is md5 of the sorted vertex hashes, built from the same texts as upstream's."""
    m, n = cell.matrix, cell.num_vertices
    labels = (-1, *cell.ops, -2)
    hashes = [_md5(str((sum(m[v]), sum(m[u][v] for u in range(n)), labels[v]))) for v in range(n)]
    for _ in range(n):
        hashes = [_md5("".join(sorted(hashes[u] for u in range(n) if m[u][v])) + "|"
                       + "".join(sorted(hashes[w] for w in range(n) if m[v][w])) + "|" + hashes[v])
                  for v in range(n)]
    return _md5(str(sorted(hashes)))


def _full_cell(arch: Arch) -> Cell | None:
    """The pruned cell of any 26-gene tuple, canonical or not; None when it is not a valid NB101 cell."""
    bits = dict(zip(EDGES, arch))
    matrix = [[bits.get((i, j), 0) for j in range(MAX_VERTICES)] for i in range(MAX_VERTICES)]
    cell = prune(matrix, arch[len(EDGES):])
    return cell if cell is not None and cell.num_edges <= MAX_EDGES else None


def canonical_arch(cell: Cell) -> Arch:
    """The 26 genes of a pruned cell: interior vertices kept in order, padding vertices just before the output."""
    k = cell.num_vertices - 2
    position = [*range(k + 1), MAX_VERTICES - 1]
    edges = {(position[i], position[j]) for i, row in enumerate(cell.matrix) for j, bit in enumerate(row) if bit}
    return tuple(int(e in edges) for e in EDGES) + cell.ops + (0,) * (NUM_INTERIOR - k)


def parse_spec(matrix: Any, ops: Any, text: str) -> Cell:
    """The pruned cell of an NB101 (matrix, ops) spec; ConfigError naming ``text`` and the rule it breaks."""
    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"invalid nb101 cell {text!r}: {problem}")

    if not (isinstance(matrix, list) and matrix and all(isinstance(row, list) for row in matrix)):
        raise refuse(f"the matrix {matrix!r} is not a list of rows")
    n = len(matrix)
    if any(len(row) != n for row in matrix):
        raise refuse(f"the matrix {matrix!r} is not square")
    if any(type(bit) is not int or bit not in (0, 1) for row in matrix for bit in row):
        raise refuse(f"the matrix {matrix!r} holds values other than 0 and 1")
    if any(matrix[i][j] for i in range(n) for j in range(i + 1)):
        raise refuse(f"the matrix {matrix!r} is not upper-triangular (its diagonal and below must be 0)")
    if not isinstance(ops, list) or len(ops) != n:
        raise refuse(f"ops {ops!r} do not match the {n} vertices of the matrix (one op per vertex)")
    if ops[0] != INPUT or ops[-1] != OUTPUT:
        raise refuse(f"ops {ops!r} must start with {INPUT!r} and end with {OUTPUT!r}")
    unknown = [op for op in ops[1:-1] if op not in OPS]
    if unknown:
        raise refuse(f"unknown op {unknown[0]!r}; allowed: {', '.join(OPS)}")
    cell = prune(matrix, [OPS.index(op) for op in ops[1:-1]])
    if cell is None:
        raise refuse("its input and output are disconnected")
    if cell.num_vertices > MAX_VERTICES:
        raise refuse(f"{cell.num_vertices} vertices after pruning; allowed: at most {MAX_VERTICES}")
    if cell.num_edges > MAX_EDGES:
        raise refuse(f"{cell.num_edges} edges after pruning; allowed: at most {MAX_EDGES}")
    return cell


def _parse_text(text: str) -> Cell:
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"invalid nb101 cell {text!r}: not JSON ({err.msg}); allowed: {_FORMS}") from None
        if not isinstance(spec, dict) or set(spec) != {"matrix", "ops"}:
            raise ConfigError(f"invalid nb101 cell {text!r}: JSON must hold exactly the keys 'matrix' and 'ops'")
        return parse_spec(spec["matrix"], spec["ops"], text)
    if not _TEXT_RE.fullmatch(text):
        raise ConfigError(f"invalid nb101 cell {text!r}; allowed: {_FORMS}")
    rows, ops = text.split(":")
    matrix = [[int(bit) for bit in row] for row in rows.split("|")]
    return parse_spec(matrix, [INPUT, *(ops.split("|") if ops else []), OUTPUT], text)


@functools.lru_cache(maxsize=1)
def _unnas_cells() -> tuple[tuple[str, Arch], ...]:
    data = json.loads(resources.files("nas").joinpath(UNNAS_RESOURCE).read_text())
    rows = sorted(data["archs"], key=lambda item: int(item["id"]))
    return tuple((item["id"], canonical_arch(parse_spec(item["matrix"], item["ops"], item["id"]))) for item in rows)


@functools.lru_cache(maxsize=1)
def _unnas_by_number() -> dict[int, Arch]:
    return {int(key): arch for key, arch in _unnas_cells()}


def vertex_channels(in_channels: int, out_channels: int, matrix: Matrix) -> list[int]:
    """Output channels of every vertex of a pruned cell (``compute_vertex_channels``)."""
    n = len(matrix)
    channels = [in_channels] + [0] * (n - 2) + [out_channels]
    feeding = [v for v in range(1, n - 1) if matrix[v][n - 1]]
    if not feeding:
        return channels
    share, remainder = divmod(out_channels, len(feeding))
    for rank, v in enumerate(feeding):
        channels[v] = share + (rank < remainder)
    for v in range(n - 3, 0, -1):
        if not matrix[v][n - 1]:
            channels[v] = max(channels[w] for w in range(v + 1, n - 1) if matrix[v][w])
    return channels


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


def _vertex_op(name: str, channels: int) -> nn.Module:
    if name == "maxpool3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    return conv_bn_relu(channels, channels, 3 if name == "conv3x3-bn-relu" else 1)


class CellModule(nn.Module):
    """One module: the cell wired as ``build_module`` wires it, from ``in_channels`` to ``out_channels``."""

    def __init__(self, cell: Cell, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.matrix = cell.matrix
        self.channels = vertex_channels(in_channels, out_channels, cell.matrix)
        self.ops = nn.ModuleList(_vertex_op(OPS[op], c) for op, c in zip(cell.ops, self.channels[1:-1]))
        self.projections = nn.ModuleDict({
            str(v): conv_bn_relu(in_channels, self.channels[v], 1)
            for v in range(1, cell.num_vertices) if cell.matrix[0][v]
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n = self.matrix, len(self.matrix)
        values = [x]
        concat = []
        for v in range(1, n - 1):
            # Another vertex's output is cut to this vertex's channels (it has at most one more).
            terms = [values[u][:, : self.channels[v]] for u in range(1, v) if m[u][v]]
            if m[0][v]:
                terms.append(self.projections[str(v)](x))
            values.append(self.ops[v - 1](sum(terms[1:], terms[0])))
            if m[v][n - 1]:
                concat.append(values[v])
        if not concat:
            return self.projections[str(n - 1)](x)
        out = concat[0] if len(concat) == 1 else torch.cat(concat, dim=1)
        if m[0][n - 1]:
            # Out of place: UnNAS's ``outputs +=`` writes into a lone vertex's ReLU output, which that
            # ReLU's backward still needs.
            out = out + self.projections[str(n - 1)](x)
        return out


class NB101Network(Backbone):
    """NB101's CIFAR network without its final pooling and linear layer (the task head holds those)."""

    def __init__(self, cell: Cell, in_channels: int, channels: int, stacks: int, modules_per_stack: int) -> None:
        super().__init__()
        self.cell = cell
        self.stem = conv_bn_relu(in_channels, channels, 3)
        layers: list[nn.Module] = []
        c_in = c_out = channels
        for stack in range(stacks):
            if stack > 0:
                layers.append(nn.MaxPool2d(2, stride=2))
                c_out *= 2
            for _ in range(modules_per_stack):
                layers.append(CellModule(cell, c_in, c_out))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_out
        self.to(memory_format=ACTIVATION_FORMAT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x.contiguous(memory_format=ACTIVATION_FORMAT)))


@SPACES.register("nb101")
class NB101Space(SearchSpace):
    name = "nb101"
    choices = (2,) * len(EDGES) + (len(OPS),) * NUM_INTERIOR
    enumerable = False
    has_supernet = False

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        network = cfg["nb101"]
        self.stacks = int(network["stacks"])
        self.modules_per_stack = int(network["modules_per_stack"])
        self.channels = int(network["channels"])

    # ---- encoding -------------------------------------------------------------------------------
    def cell(self, arch: Arch) -> Cell:
        """The pruned cell of ``arch`` (any valid 26-gene tuple; ConfigError otherwise)."""
        arch = tuple(arch)
        if len(arch) != len(self.choices) or any(not 0 <= g < n for g, n in zip(arch, self.choices)):
            raise ConfigError(f"nb101 arch {arch} is not {len(self.choices)} genes within {self.choices}")
        cell = _full_cell(arch)
        if cell is None:
            raise ConfigError(f"nb101 arch {arch} is not a valid cell: input and output disconnected, "
                              f"or more than {MAX_EDGES} edges after pruning")
        return cell

    def canonical(self, arch: Arch) -> Arch:
        return canonical_arch(self.cell(arch))

    def num_archs(self) -> int:
        return NUM_UNIQUE_CELLS

    def to_str(self, arch: Arch) -> str:
        cell = self.cell(arch)
        rows = "|".join("".join(map(str, row)) for row in cell.matrix)
        return rows + ":" + "|".join(OPS[op] for op in cell.ops)

    def from_str(self, text: str) -> Arch:
        """The canonical arch of a ``to_str`` text, a JSON (matrix, ops) spec or an UnNAS ID (zero-padded or not)."""
        text = text.strip()
        if _ID_RE.fullmatch(text):
            found = _unnas_by_number().get(int(text))
            if found is None:
                first, last = _unnas_cells()[0][0], _unnas_cells()[-1][0]
                raise ConfigError(f"unknown UnNAS nb101 ID {text!r}; allowed: the IDs of UnNAS's "
                                  f"{len(_unnas_cells())} sample-based cells, {first}..{last}")
            return found
        return canonical_arch(_parse_text(text))

    def hash(self, arch: Arch) -> str:
        """NB101's isomorphism-invariant hash of the pruned cell, the key of its dataset."""
        return cell_hash(self.cell(arch))

    def to_index(self, arch: Arch) -> int:
        return int(self.hash(arch)[:15], 16)

    def from_index(self, index: int) -> Arch:
        raise ConfigError(f"nb101 index {index}: space nb101 is not enumerable (an index is a hash of a cell); "
                          f"give a cell as {_FORMS}")

    # ---- sampling ---------------------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        raise ConfigError(NO_SUPERNET)

    def sample_uniform(self, rng: random.Random) -> Arch:
        """NB101's random cell (its API colab's ``random_spec``): every upper-triangle entry 0 or 1 and every
        interior op uniform, drawn in gene order, redrawn whole until the cell is valid; returned canonical."""
        while True:
            cell = _full_cell(super().sample_uniform(rng))
            if cell is not None:
                return canonical_arch(cell)

    def unnas_samples(self) -> list[tuple[str, Arch]]:
        return list(_unnas_cells())

    # ---- networks ---------------------------------------------------------------------------------
    def build_network(self, arch: Arch, in_channels: int) -> NB101Network:
        return NB101Network(self.cell(arch), in_channels, self.channels, self.stacks, self.modules_per_stack)

    def build_supernet(self, in_channels: int) -> Supernet:
        raise ConfigError(NO_SUPERNET)

    def angle_vector(self, supernet: Supernet, head: nn.Module, arch: Arch) -> torch.Tensor | None:
        raise ConfigError(NO_SUPERNET)

    def cost(self, arch: Arch, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ArchCost:
        """Params and multiply-accumulates of the network plus GAP and Linear(out_channels, num_classes)."""
        return self._cost(self.canonical(arch), num_classes, in_channels, image_size)

    @functools.lru_cache(maxsize=1024)
    def _cost(self, arch: Arch, num_classes: int, in_channels: int, image_size: int) -> ArchCost:
        net = self.build_network(arch, in_channels)
        model = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(net.out_channels, num_classes))
        x = torch.zeros(1, in_channels, image_size, image_size)
        return ArchCost(params=count_params(model), flops=count_macs(model, x))

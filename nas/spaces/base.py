"""What every search space provides: encoding, sampling, networks, costs and the RLNAS angle vector."""
from __future__ import annotations

import abc
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..registry import ConfigError

Arch = tuple[int, ...]
"""An architecture is a tuple of gene values; gene g takes values in range(space.choices[g])."""

SupernetPath = Arch | tuple[Arch, ...]
"""What one supernet step runs: one Arch for every cell, or one Arch per cell in network order."""


@dataclass(frozen=True)
class HardMixture:
    """GDAS's straight-through sample (xautodl ``search_model_gdas``): ``weights`` hold one-hot values that carry
    the softmax's gradient; ``chosen`` (nested lists of ints, ``weights.shape[:-1]``) the op each edge runs, the
    only one it runs. With ``grad_all`` the other ops' weights (value 0) are added to the node as scalars, so
    that every alpha gets a gradient (xautodl ``gdas``; ``gdas_v1`` leaves them out)."""

    weights: torch.Tensor
    chosen: list
    grad_all: bool = True


@dataclass(frozen=True)
class SampleMixture:
    """UNAS's per-sample relaxation (NVlabs/unas ``darts/model_search.py`` MixedOp): ``weights`` (positions...,
    samples, ops) hold one row of op weights per sample, or a single row for the whole batch (samples = 1);
    ``active`` (nested lists of bools, ``weights.shape[:-2] + (ops,)``) marks the ops that run, the others
    (upstream: weight below 0.05 for every sample) add nothing. A backbone batch that is a multiple of the
    samples (a jigsaw's tiles) gives each sample's rows to its consecutive inputs."""

    weights: torch.Tensor
    active: list

    @staticmethod
    def build(weights: torch.Tensor, threshold: float) -> "SampleMixture":
        """Ops run where some sample's weight reaches ``threshold`` (one host transfer for all edges)."""
        return SampleMixture(weights, (weights.detach().amax(dim=-2) >= threshold).tolist())

    def for_batch(self, batch: int) -> "SampleMixture":
        samples = self.weights.shape[-2]
        if samples in (1, batch):
            return self
        if batch % samples:
            raise ValueError(f"a mixture of {samples} samples cannot weigh a batch of {batch} inputs")
        return SampleMixture(self.weights.repeat_interleave(batch // samples, dim=-2), self.active)


Mixture = torch.Tensor | HardMixture | SampleMixture
"""What a supernet's mixture mode runs: op weights per edge (softmax, all ops run), a ``HardMixture`` or a
``SampleMixture``."""


def edge_terms(mixture: Mixture, position: tuple[int, ...], run_op: Callable[[int], torch.Tensor | None],
               run_weighted: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
               ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """One edge of a mixture: its weighted op outputs (``run_op(k)`` is op k's output, None for ``none``) and
    a scalar for its node (GDAS's zero-valued terms), or None. ``run_weighted(k, w)``, where a space has it,
    returns ``w * run_op(k)`` for a one-element weight ``w`` computed its own cheaper way (a weight folded
    into the op's BatchNorm); sample mixtures weigh per input and always use ``run_op``."""
    if run_weighted is None:
        def run_weighted(k: int, weight: torch.Tensor) -> torch.Tensor | None:
            out = run_op(k)
            return None if out is None else weight * out
    if isinstance(mixture, HardMixture):
        row = mixture.weights[position]
        chosen = mixture.chosen
        for i in position:
            chosen = chosen[i]
        out = run_weighted(chosen, row[chosen])
        terms = [] if out is None else [out]
        return terms, (row.sum() - row[chosen]) if mixture.grad_all else None
    if isinstance(mixture, SampleMixture):
        rows = mixture.weights[position]
        active = mixture.active
        for i in position:
            active = active[i]
        terms = []
        for k, runs in enumerate(active):
            if runs and (out := run_op(k)) is not None:
                terms.append(rows[:, k].view(-1, *(1,) * (out.dim() - 1)) * out)
        return terms, None
    row = mixture[position]
    return [out for k in range(row.shape[-1]) if (out := run_weighted(k, row[k])) is not None], None


def mixture_weights(mixture: Mixture) -> torch.Tensor:
    return mixture.weights if isinstance(mixture, (HardMixture, SampleMixture)) else mixture

SUPERNET_SAMPLING = ("per_cell", "shared")
MUTATE_CELLS = ("normal", "all")
# Distinct draws tried per architecture wanted, for spaces too large to enumerate.
DRAWS_PER_DISTINCT_ARCH = 100


def stable_index(canonical_text: str) -> int:
    """A stable 60-bit integer for an architecture of a space without a benchmark order (fits int64 tables)."""
    return int(hashlib.sha256(canonical_text.encode()).hexdigest()[:15], 16)


@dataclass(frozen=True)
class ArchCost:
    params: int
    flops: int  # multiply-accumulates of conv and linear layers, the convention NAS papers call FLOPs


class Backbone(nn.Module):
    """A network trunk: maps images to the feature map (B, out_channels, h, w) the task head reads."""

    out_channels: int


class Supernet(Backbone):
    """A weight-sharing network; ``forward(x, arch=...)`` runs one path, ``forward(x, mixture=...)`` all ops.

    ``arch`` is one Arch (every cell runs it) or a sequence of one Arch per cell, in network order.
    """

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, arch: SupernetPath | None = None,
                mixture: Mixture | None = None) -> torch.Tensor:
        ...


class SearchSpace(abc.ABC):
    name: str
    choices: Sequence[int]
    enumerable = True
    """Whether ``from_index`` enumerates the space (NB201: the benchmark's order); if not, ``to_index`` is
    ``stable_index`` of the canonical text and architectures are drawn, never listed."""
    has_supernet = True

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    # ---- encoding -------------------------------------------------------------------------------
    @abc.abstractmethod
    def num_archs(self) -> int: ...

    @abc.abstractmethod
    def to_str(self, arch: Arch) -> str: ...

    @abc.abstractmethod
    def from_str(self, text: str) -> Arch: ...

    @abc.abstractmethod
    def to_index(self, arch: Arch) -> int: ...

    @abc.abstractmethod
    def from_index(self, index: int) -> Arch: ...

    # ---- sampling ---------------------------------------------------------------------------------
    def is_trainable(self, arch: Arch) -> bool:
        """Whether single-path supernet training may draw this architecture."""
        return True

    def sample(self, rng: random.Random) -> Arch:
        """Uniform single-path sample, redrawn until it is trainable."""
        while True:
            arch = self.sample_uniform(rng)
            if self.is_trainable(arch):
                return arch

    def sample_uniform(self, rng: random.Random) -> Arch:
        """Uniform over every architecture of the space, trainable or not: one draw per gene, in gene order."""
        return tuple(rng.randrange(n) for n in self.choices)

    @property
    @abc.abstractmethod
    def num_cells(self) -> int:
        """Searchable cells of the supernet (``supernet_sampler('per_cell')`` draws one architecture for each)."""

    def supernet_sampler(self, sampling: str) -> Callable[[random.Random], SupernetPath]:
        """The path of one SPOS training step: ``shared``, one ``sample`` run by every cell; ``per_cell``, one
        ``sample`` per cell, drawn cell after cell in network order."""
        if sampling == "shared":
            return self.sample
        if sampling == "per_cell":
            cells = self.num_cells
            return lambda rng: tuple(self.sample(rng) for _ in range(cells))
        raise ConfigError(f"config key 'supernet.sampling': {sampling!r} is not allowed; "
                          f"allowed: {', '.join(SUPERNET_SAMPLING)}")

    def sample_distinct(self, count: int, rng: random.Random, trainable_only: bool = False) -> list[Arch]:
        """``count`` distinct architectures: an enumerable space draws indices without replacement (only
        trainable ones with ``trainable_only``); any other draws ``sample`` (trainable) or ``sample_uniform``
        until it has ``count`` distinct ones."""
        if not self.enumerable:
            # distinct by index: two encodings of one architecture (NB101's isomorphic cells) count once
            draw = self.sample if trainable_only else self.sample_uniform
            chosen: dict[int, Arch] = {}
            for _ in range(DRAWS_PER_DISTINCT_ARCH * count):
                if len(chosen) == count:
                    break
                arch = draw(rng)
                chosen.setdefault(self.to_index(arch), arch)
            if len(chosen) < count:
                raise ConfigError(f"config key 'sample.num_archs': {count} distinct architectures of space "
                                  f"{self.name!r} were not found in {DRAWS_PER_DISTINCT_ARCH * count} draws")
            return list(chosen.values())
        if trainable_only:
            pool = [i for i in range(self.num_archs()) if self.is_trainable(self.from_index(i))]
            if count > len(pool):
                raise ConfigError(f"config key 'sample.num_archs': {count} is more than the {len(pool)} trainable "
                                  f"architectures of space {self.name!r}")
            return [self.from_index(i) for i in rng.sample(pool, count)]
        if count > self.num_archs():
            raise ConfigError(
                f"cannot sample {count} distinct architectures: space {self.name!r} holds {self.num_archs()}"
            )
        chosen_indices = rng.sample(range(self.num_archs()), count)
        return [self.from_index(i) for i in chosen_indices]

    def unnas_samples(self) -> list[tuple[str, Arch]]:
        """UnNAS's sample-based architectures of this space as (ID, Arch), in ID order (``sample.source: unnas``)."""
        raise ConfigError(f"config key 'sample.source': 'unnas' is not available for space {self.name!r}; "
                          "UnNAS's sample-based architectures exist for spaces darts and nb101")

    # ---- evolution operators (RLNAS ``get_mutation``, ``get_crossover``) --------------------------------
    def mutable_genes(self, cells: str) -> range:
        """Genes a mutation may change: ``all``, or ``normal`` (the normal cell's; every gene of a one-cell space)."""
        if cells not in MUTATE_CELLS:
            raise ConfigError(f"config key 'search.mutate_cells': {cells!r} is not allowed; "
                              f"allowed: {', '.join(MUTATE_CELLS)}")
        return range(len(self.choices))

    def mutate(self, parent: Arch, rng: random.Random, prob: float, allow_none: bool, cells: str) -> Arch:
        """Each mutable gene redrawn with probability ``prob``; without ``allow_none`` never to value 0 (RLNAS
        NB201 draws ``randint(1, n)``)."""
        genes = list(parent)
        low = 0 if allow_none else 1
        for g in self.mutable_genes(cells):
            if rng.random() < prob:
                genes[g] = rng.randrange(low, self.choices[g])
        return tuple(genes)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover: each gene from either parent with probability 1/2."""
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    # ---- networks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_network(self, arch: Arch, in_channels: int) -> Backbone: ...

    @abc.abstractmethod
    def build_supernet(self, in_channels: int) -> Supernet: ...

    @abc.abstractmethod
    def cost(self, arch: Arch, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ArchCost: ...

    @abc.abstractmethod
    def angle_vector(self, supernet: Supernet, head: nn.Module, arch: Arch) -> torch.Tensor | None:
        """The RLNAS weight vector of ``arch`` in ``supernet``; None when no input-output path survives."""

    # ---- differentiable search ---------------------------------------------------------------------------
    mixture_shape: tuple[int, ...] | None = None
    """Shape of the op weights the supernet's mixture mode takes (..., ops); None: no differentiable search."""
    mixture_ops: tuple[str, ...] = ()
    """Names of the ops along the last axis of ``mixture_shape``."""
    derive_rules: tuple[str, ...] = ()
    """Rules ``derive`` knows, the space's reference first."""

    def derive(self, weights: torch.Tensor, rule: str) -> Arch:
        """The discrete architecture that op weights of ``mixture_shape`` stand for, by ``rule``."""
        raise ConfigError(f"space {self.name!r} has no differentiable search")

    def op_names(self, arch: Arch) -> list[str]:
        """The op of every edge (or input pair) of ``arch``, for shares such as DARTS's skip-connection collapse."""
        raise ConfigError(f"space {self.name!r} does not list its ops")

    def describe(self) -> dict[str, Any]:
        return {"space": self.name, **self.cfg}

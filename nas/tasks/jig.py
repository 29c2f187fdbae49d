"""UnNAS jigsaw: tiles of a g x g grid shuffled by one of a fixed set of permutations; predict which.

2x2 grid with all 24 permutations for small images, 3x3 with a maximal-Hamming permutation set for
large ones. Each tile is a random crop of ``tile_ratio`` of its grid cell; a shared trunk embeds every
tile and the features are concatenated in slot order.

By default as UnNAS's ``prepare_jig``: training flips (no pad-and-crop) and turns 30 % of the images
gray with scikit-image's ``rgb2gray`` weights; every image is normalised with the dataset statistics,
then each tile with one mean and (population) standard deviation over all its channels and pixels.
Evaluation draws tile offsets and the permutation at random as training does. The ``task.jig`` keys
restore the project's earlier choices one by one.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import nn

from ..registry import ConfigError
from .base import TASKS, Task, normalize

AUTO_GRID_THRESHOLD = 64  # images smaller than this use a 2x2 grid (UnNAS: CIFAR 2x2, ImageNet 3x3)
# Luma of a gray image: scikit-image's rgb2gray (UnNAS), or ITU-R BT.601 (the project's earlier choice)
GRAY_WEIGHTS = {"skimage": (0.2125, 0.7154, 0.0721), "rec601": (0.299, 0.587, 0.114)}


@functools.lru_cache(maxsize=8)
def permutation_set(grid: int, count: int, seed: int) -> torch.Tensor:
    """All (g*g)! permutations when they number at most ``count``, else a greedy maximal-Hamming set."""
    tiles = grid * grid
    total = math.factorial(tiles)
    if total <= count:
        return torch.tensor(list(itertools.permutations(range(tiles))), dtype=torch.int64)
    every = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)
    rng = np.random.RandomState(seed)
    chosen = [int(rng.randint(total))]
    min_distance = (every != every[chosen[0]]).sum(axis=1)
    for _ in range(count - 1):
        best = int(np.argmax(min_distance))  # first of the farthest: deterministic
        chosen.append(best)
        min_distance = np.minimum(min_distance, (every != every[best]).sum(axis=1))
    return torch.from_numpy(every[chosen].astype(np.int64))


class JigsawHead(nn.Module):
    """Pools each tile's features and classifies their slot-ordered concatenation."""

    def __init__(self, in_channels: int, num_tiles: int, num_permutations: int) -> None:
        super().__init__()
        self.num_tiles = num_tiles
        self.classifier = nn.Linear(in_channels * num_tiles, num_permutations)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        return self.classifier(pooled.view(-1, self.num_tiles * pooled.shape[1]))


@TASKS.register("jig")
class Jigsaw(Task):
    name = "jig"
    image_level = False  # one prediction per tile set, from a trunk run on tiles

    def __init__(self, cfg, info, seed):
        super().__init__(cfg, info, seed)
        jig = cfg["jig"]
        grid = jig["grid"]
        self.grid = (2 if info.image_size < AUTO_GRID_THRESHOLD else 3) if grid == "auto" else int(grid)
        self.cell = info.image_size // self.grid
        self.tile = int(self.cell * float(jig["tile_ratio"]))
        if self.tile < 4:
            raise ConfigError(
                f"task.jig: {info.image_size}-px images in a {self.grid}x{self.grid} grid give {self.tile}-px tiles; "
                "need at least 4 px (use a smaller task.jig.grid or larger dataset.image_size)"
            )
        self.permutations = permutation_set(self.grid, int(jig["num_permutations"]), int(jig["permutation_seed"]))
        self.gray_prob = float(jig["gray_prob"]) if info.channels == 3 else 0.0
        self.gray_weights = GRAY_WEIGHTS[jig["gray_weights"]]
        self.tile_norm = jig["tile_norm"]
        self.test_offsets = jig["test_offsets"]
        self.test_perm = jig["test_perm"]
        self.crop = bool(jig["crop"])
        # task.jig.test_perm fixed: one permutation per image for every evaluation (a steadier metric than UnNAS's).
        fixed = torch.Generator().manual_seed(seed + 7_919)
        self.eval_perm = torch.randint(len(self.permutations), (info.num_images,), generator=fixed)

    @property
    def num_outputs(self) -> int:
        return len(self.permutations)

    @property
    def num_tiles(self) -> int:
        return self.grid * self.grid

    def prepare(self, images, labels, ids, train, generator):
        device = images.device
        batch = images.shape[0]
        gray = None
        if train:
            images = self.augment(images, generator)
            if self.gray_prob > 0:
                gray = (torch.rand(batch, generator=generator) < self.gray_prob).to(device)
        slack = self.cell - self.tile
        if train or self.test_offsets == "random":
            offsets = torch.randint(0, slack + 1, (batch, self.num_tiles, 2), generator=generator)
        else:
            offsets = torch.full((batch, self.num_tiles, 2), slack // 2, dtype=torch.int64)
        if train or self.test_perm == "redraw":
            perm_index = torch.randint(len(self.permutations), (batch,), generator=generator)
        else:
            perm_index = self.eval_perm[ids.cpu()]
        tiles = self._placed_tiles(images, offsets, self.permutations[perm_index])
        # Gray and the dataset normalisation act per pixel: the same on the tiles as on the whole image (UnNAS's
        # order: gray, then normalisation), on less data.
        if gray is not None:
            weights = torch.tensor(self.gray_weights, device=device).view(1, 1, 3, 1, 1)
            luma = (tiles * weights).sum(2, True)
            tiles = torch.where(gray[:, None, None, None, None], luma.expand_as(tiles), tiles)
        return self._standardised(tiles), perm_index.to(device)

    def _standardised(self, tiles: torch.Tensor) -> torch.Tensor:
        """Each tile of (B, T, C, t, t) brought to zero mean and unit standard deviation, as ``task.jig.tile_norm`` says."""
        if self.tile_norm == "tile":
            # UnNAS: after the dataset normalisation, one np.mean / np.std (ddof 0) over the whole tile
            tiles = normalize(tiles.flatten(0, 1), self.info).view_as(tiles)
            centered = tiles - tiles.mean(dim=(2, 3, 4), keepdim=True)
            std = torch.linalg.vector_norm(centered, dim=(2, 3, 4), keepdim=True) / math.sqrt(tiles.shape[2] * self.tile * self.tile)
            # a constant tile has std 0: UnNAS divides by it (NaN); here it stays all zeros
            return centered / torch.where(std > 0, std, torch.ones_like(std))
        # per channel (unbiased std, + 1e-5), two-pass; torch.std_mean over the two trailing dims is ~8x slower
        # on the CPU than a mean and a norm
        centered = tiles - tiles.mean(dim=(3, 4), keepdim=True)
        std = torch.linalg.vector_norm(centered, dim=(3, 4), keepdim=True) / math.sqrt(self.tile * self.tile - 1)
        return centered / (std + 1e-5)

    def _placed_tiles(self, images: torch.Tensor, offsets: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(B, T, C, t, t): slot slots[b, k] holds the crop at ``offsets[b, k]`` inside grid cell k.

        One gather builds every tile already in its slot, instead of a gather per tile and a scatter.
        """
        batch, channels, height, width = images.shape
        source = torch.argsort(slots, dim=1)  # inverse permutation: the grid cell whose tile lands in each slot
        cell_row = torch.div(source, self.grid, rounding_mode="floor") * self.cell
        cell_col = torch.remainder(source, self.grid) * self.cell
        chosen = offsets.gather(1, source[:, :, None].expand(-1, -1, 2))
        span = torch.arange(self.tile)
        rows = (cell_row + chosen[:, :, 0])[:, :, None] + span  # (B, T, t)
        cols = (cell_col + chosen[:, :, 1])[:, :, None] + span
        pixels = rows[:, :, None, :, None] * width + cols[:, :, None, None, :]  # (B, T, 1, t, t)
        index = pixels + (torch.arange(channels) * (height * width)).view(1, 1, channels, 1, 1)
        flat = images.reshape(batch, channels * height * width)
        tiles = flat.gather(1, index.reshape(batch, -1).to(images.device))
        return tiles.view(batch, self.num_tiles, channels, self.tile, self.tile)

    def forward(self, backbone, head, inputs):
        return head(backbone(inputs.flatten(0, 1)))

    def build_head(self, feature_channels):
        return JigsawHead(feature_channels, self.num_tiles, self.num_outputs)

    def describe(self):
        return {**super().describe(), "grid": self.grid, "tile": self.tile}

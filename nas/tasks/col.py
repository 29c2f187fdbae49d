"""UnNAS colorization: L channel in, hard nearest-bin target over quantised ab, per-pixel cross-entropy.

Bins (``task.col.bins``): ``zhang313``, the 313 ab bins of Zhang et al. that UnNAS uses
(``pts_in_hull.npy``, shipped here as ``nas/resources/ab_gamut_313.csv``); ``srgb_gamut``, every
point of the ab grid of spacing ``task.col.grid`` that is the nearest grid point
(``round(ab / grid) * grid``) of at least one of the 256^3 8-bit sRGB colours (D65, CIE Lab as in
kornia; 261 bins with grid 10); ``file``, the (K, 2) array of ``task.col.bins_file``.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..registry import ConfigError
from .base import TASKS, Task


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """CIE Lab of sRGB images in [0, 1] (kornia's; imported here, as kornia adds ~0.5 s to every job's start-up)."""
    from kornia.color import rgb_to_lab as kornia_rgb_to_lab

    return kornia_rgb_to_lab(images)


@functools.lru_cache(maxsize=4)
def gamut_bins(grid: float) -> torch.Tensor:
    """(K, 2) ab bin centres occupied by the sRGB gamut, sorted by (a, b)."""
    levels = torch.arange(256, dtype=torch.float32) / 255.0
    green, blue = torch.meshgrid(levels, levels, indexing="ij")
    keys = []
    for red in levels.split(32):  # 32 red levels (2M colours) per chunk bounds memory
        rgb = torch.stack(torch.broadcast_tensors(red.view(-1, 1, 1), green, blue), dim=1)
        cells = torch.round(rgb_to_lab(rgb)[:, 1:] / grid).to(torch.int64)
        keys.append(torch.unique(cells[:, 0] * 4096 + cells[:, 1]))  # one int per (a, b) cell
    occupied = torch.unique(torch.cat(keys))
    a = torch.div(occupied + 2048, 4096, rounding_mode="floor")
    b = occupied - a * 4096
    return torch.stack([a, b], dim=1).to(torch.float32) * grid


ZHANG_GRID = 10.0  # the spacing of the ab grid the 313 bins lie on


@functools.lru_cache(maxsize=1)
def zhang_bins() -> torch.Tensor:
    """(313, 2) ab bin centres of Zhang et al.'s ``pts_in_hull.npy``, in its order."""
    text = resources.files("nas").joinpath("resources/ab_gamut_313.csv").read_text()
    bins = np.loadtxt(text.splitlines(), delimiter=",", skiprows=1, dtype=np.float32)
    return torch.from_numpy(bins)


def load_bins(path: str) -> torch.Tensor:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"task.col.bins_file: {str(file)!r} does not exist")
    try:
        bins = np.load(file)
    except Exception as err:  # numpy raises several types for a bad file
        raise ConfigError(f"task.col.bins_file: {str(file)!r} is not a readable .npy file ({err})") from None
    if bins.ndim != 2 or bins.shape[1] != 2 or len(bins) < 2:
        raise ConfigError(f"task.col.bins_file: expected an array of shape (K, 2) of ab points, got {bins.shape}")
    return torch.from_numpy(bins.astype(np.float32))


def nearest_bin(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """ab (B, 2, H, W) -> index (B, H, W) of the nearest bin centre."""
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    index = torch.cdist(flat, bins.to(ab.device)).argmin(dim=1)
    return index.view(ab.shape[0], ab.shape[2], ab.shape[3])


class BinIndex:
    """Nearest-bin lookup for a fixed bin set: a table lookup where the bins sit on a square grid.

    Rounding each coordinate of ab to the grid gives its nearest grid point; when that point is a bin it
    is also the nearest bin (the bins are grid points), so one table read replaces a distance to every
    bin. Only pixels whose grid point is not a bin (possible with a sparse ``bins_file``) fall back to
    :func:`nearest_bin`, and bins off the grid use it throughout.
    """

    def __init__(self, bins: torch.Tensor, grid: float) -> None:
        self.bins = bins
        self.grid = grid
        cells = bins / grid
        self.on_grid = bool(torch.equal(cells, cells.round()))
        if self.on_grid:
            cells = cells.round().to(torch.int64)
            self.origin = cells.min(dim=0).values  # (2,) lattice coordinates of the table's first row/column
            self.extent = cells.max(dim=0).values - self.origin + 1
            table = torch.full((int(self.extent[0]) * int(self.extent[1]),), -1, dtype=torch.int64)
            local = cells - self.origin
            table[local[:, 0] * self.extent[1] + local[:, 1]] = torch.arange(len(bins))
            self.table = table
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in (self.table, self.origin, self.extent))
        return self._on_device[device]

    def __call__(self, ab: torch.Tensor) -> torch.Tensor:
        """ab (B, 2, H, W) -> index (B, H, W) of the nearest bin, as :func:`nearest_bin` gives it."""
        if not self.on_grid:
            return nearest_bin(ab, self.bins)
        table, origin, extent = self._tensors(ab.device)
        local = torch.round(ab / self.grid).to(torch.int64) - origin.view(1, 2, 1, 1)
        inside = ((local >= 0) & (local < extent.view(1, 2, 1, 1))).all(dim=1)
        flat = local[:, 0] * extent[1] + local[:, 1]
        index = table[torch.where(inside, flat, 0)].masked_fill_(~inside, -1)
        missing = index < 0
        if bool(missing.any()):
            points = ab.permute(0, 2, 3, 1)[missing]  # (M, 2)
            index[missing] = torch.cdist(points, self.bins.to(ab.device)).argmin(dim=1)
        return index


def bilinear_weights(size_out: int, size_in: int) -> torch.Tensor:
    """(size_out, size_in) matrix of 1-D linear interpolation with ``align_corners=True``.

    ``W_h @ x @ W_w.T`` is ``F.interpolate(x, mode="bilinear", align_corners=True)``: each output row
    mixes the two nearest input rows with the same weights.
    """
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    if size_in == 1:
        return weights.fill_(1.0)
    position = torch.arange(size_out, dtype=torch.float64) * ((size_in - 1) / max(size_out - 1, 1))
    low = position.floor().long().clamp(max=size_in - 2)
    fraction = position - low
    rows = torch.arange(size_out)
    weights[rows, low] = 1.0 - fraction
    weights[rows, low + 1] = fraction
    return weights


class ColorizationHead(nn.Module):
    """1x1 conv to bin logits, bilinearly upsampled (align_corners=True) to the input size.

    The upsampling is two matrix products rather than ``F.interpolate``: CUDA has no deterministic
    backward for bilinear interpolation, and a matrix product's is (see ``nas.devices``).
    """

    def __init__(self, in_channels: int, num_bins: int, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_bins, 1)
        self.output_size = output_size
        # (rows, transposed columns) per input size, device and dtype: made once, not per step
        self._weights: dict[tuple[int, int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _interpolation(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = logits.shape[2:]
        key = (height, width, logits.device, logits.dtype)
        if key not in self._weights:
            out_h, out_w = self.output_size
            as_logits = {"device": logits.device, "dtype": logits.dtype}
            self._weights[key] = (bilinear_weights(out_h, height).to(**as_logits),
                                  bilinear_weights(out_w, width).T.contiguous().to(**as_logits))
        return self._weights[key]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(features)
        rows, cols_t = self._interpolation(logits)
        return rows @ logits @ cols_t


@TASKS.register("col")
class Colorization(Task):
    name = "col"
    image_level = False  # per-pixel predictions
    metric_name = "pixel_acc"

    def __init__(self, cfg, info, seed):
        super().__init__(cfg, info, seed)
        col = cfg["col"]
        kind, path = col["bins"], col["bins_file"]  # their agreement is checked with the config (nas.config)
        if kind == "zhang313":
            self.bins, grid = zhang_bins(), ZHANG_GRID
        elif kind == "srgb_gamut":
            grid = float(col["grid"])
            self.bins = gamut_bins(grid)
        else:
            self.bins, grid = load_bins(path), float(col["grid"])
        self.bin_index = BinIndex(self.bins, grid)
        self.crop = bool(col["crop"])
        # UnNAS normalises L/100 with the mean of the RGB channel statistics.
        self.l_mean = float(np.mean(info.mean))
        self.l_std = float(np.mean(info.std))

    requires_rgb = True

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def num_outputs(self) -> int:
        return len(self.bins)

    def prepare(self, images, labels, ids, train, generator):
        if train:  # before Lab, so the target is flipped with the input (UnNAS flips the RGB image)
            images = self.augment(images, generator)
        lab = rgb_to_lab(images)
        inputs = (lab[:, :1] / 100.0 - self.l_mean) / self.l_std
        return inputs, self.bin_index(lab[:, 1:])

    def build_head(self, feature_channels):
        return ColorizationHead(feature_channels, self.num_outputs, (self.info.image_size, self.info.image_size))

    def describe(self):
        col = self.cfg["col"]
        bins = {"zhang313": "zhang313", "srgb_gamut": f"srgb-gamut-grid{col['grid']}", "file": col["bins_file"]}
        return {**super().describe(), "num_bins": self.num_outputs, "bins": bins[col["bins"]]}

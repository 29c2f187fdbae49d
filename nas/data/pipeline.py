"""Batches straight from the in-memory tensor, and augmentation applied to a whole batch at once."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .datasets import DatasetInfo, ImageData


def iterate_batches(
    data: ImageData,
    split: str,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    max_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images uint8, labels, global ids); the order is drawn from ``generator`` on the CPU."""
    ids = data.splits[split]
    if shuffle:
        ids = ids[torch.randperm(len(ids), generator=generator)]
    stop = len(ids) - (len(ids) % batch_size if drop_last else 0)
    for count, start in enumerate(range(0, stop, batch_size)):
        if max_batches is not None and count >= max_batches:
            return
        batch = ids[start:start + batch_size].to(data.images.device, non_blocking=True)
        yield data.images[batch], data.labels[batch], batch


def augment(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, as batched tensor ops.

    ``images`` is float in [0, 1]; the random draws come from the CPU ``generator`` so that a resumed
    job draws the same numbers on any device.
    """
    batch, _, height, width = images.shape
    pad = info.crop_padding
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        offset_y = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
        offset_x = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
        rows = (offset_y[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (offset_x[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        index_b = torch.arange(batch, device=images.device)[:, None, None, None]
        index_c = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[index_b, index_c, rows, cols]
    if info.flip:
        flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images

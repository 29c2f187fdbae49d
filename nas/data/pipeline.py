"""Batches straight from the in-memory tensor, and augmentation applied to a whole batch at once."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .datasets import DatasetInfo, ImageData

AUGMENT_STYLES = ("torchvision", "pycls")


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


def augment(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator, crop: bool = True,
            style: str = "torchvision") -> torch.Tensor:
    """Random crop with padding (when ``crop``) and random horizontal flip, per image, as batched tensor ops.

    ``images`` is float in [0, 1]; the random draws come from the CPU ``generator`` so that a resumed
    job draws the same numbers on any device. Crop and flip are one gather from the padded batch: a
    pixel is copied, never computed, so the result is exactly that of cropping and then flipping.

    ``style`` is the pad-and-crop of a seed's code. ``torchvision`` (``RandomCrop(padding=p)`` on the
    image, then ``ToTensor`` and ``Normalize``): a black border, crop offsets 0..2p, crop then flip.
    ``pycls`` (UnNAS's ``prepare_im`` on CIFAR: normalise, flip, then ``random_crop`` with zero padding):
    the border is the normalised 0, i.e. the dataset mean here before normalising; offsets
    ``randint(0, 2p)`` = 0..2p-1; flip before crop, which as crop-then-flip mirrors the column offset
    to 2p - x (1..2p) on flipped images.
    """
    if style not in AUGMENT_STYLES:
        raise ValueError(f"unknown augmentation style {style!r}; expected one of {AUGMENT_STYLES}")
    batch, channels, height, width = images.shape
    pad = info.crop_padding if crop else 0
    if pad == 0 and not info.flip:
        return images
    # The draws (crop rows, crop columns, then flips) and their order define what a seed means.
    span = 2 * pad + (1 if style == "torchvision" else 0)
    no_offset = torch.zeros(batch, dtype=torch.int64)
    offset_y = torch.randint(0, span, (batch,), generator=generator) if pad > 0 else no_offset
    offset_x = torch.randint(0, span, (batch,), generator=generator) if pad > 0 else no_offset
    flip = torch.rand(batch, generator=generator) < 0.5 if info.flip else torch.zeros(batch, dtype=torch.bool)
    if style == "pycls":
        offset_x = torch.where(flip, 2 * pad - offset_x, offset_x)
    padded_width = width + 2 * pad
    columns = torch.arange(width)
    # a flipped image reads its crop's columns right to left
    cols = offset_x[:, None] + torch.where(flip[:, None], columns.flip(0), columns)
    rows = offset_y[:, None] + torch.arange(height)
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(batch, 1, height * width).to(images.device)
    if pad > 0 and style == "pycls":
        # the dataset mean is what normalising maps to 0; pixels are copied, so the interior stays exact
        fill = torch.tensor(info.mean, dtype=images.dtype, device=images.device).view(1, channels, 1, 1)
        padded = fill.expand(batch, channels, height + 2 * pad, padded_width).clone()
        padded[:, :, pad:pad + height, pad:pad + width] = images
    else:
        padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    flat = padded.reshape(batch, channels, -1)
    return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


def cutout(inputs: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """DARTS's Cutout on a batch (B, C, H, W): per image, zero a ``length`` square centred on a uniformly drawn
    pixel, clipped at the borders (so it may be smaller), on the normalised input."""
    batch, _, height, width = inputs.shape
    centre_y = torch.randint(height, (batch, 1, 1), generator=generator).to(inputs.device)
    centre_x = torch.randint(width, (batch, 1, 1), generator=generator).to(inputs.device)
    rows = torch.arange(height, device=inputs.device).view(1, -1, 1)
    cols = torch.arange(width, device=inputs.device).view(1, 1, -1)
    half = length // 2
    inside = ((rows >= centre_y - half) & (rows < centre_y + half) & (cols >= centre_x - half) & (cols < centre_x + half))
    return inputs * (~inside).unsqueeze(1).to(inputs.dtype)

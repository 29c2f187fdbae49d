"""UnNAS rotation: every image in all four rotations (batch B -> 4B), label k for k quarter turns."""
from __future__ import annotations

import torch

from .base import TASKS, Task, normalize


def all_rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (4B, C, H, W) with image i's rotations at rows 4i..4i+3, and labels 0..3."""
    rotated = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(4)], dim=1)
    labels = torch.arange(4, device=images.device).repeat(images.shape[0])
    return rotated.flatten(0, 1), labels


@TASKS.register("rot")
class Rotation(Task):
    name = "rot"

    @property
    def num_outputs(self) -> int:
        return 4

    def prepare(self, images, labels, ids, train, generator):
        if train:
            images = self.augment(images, generator)
        # Normalising is per channel, so doing it before the rotations gives the same values on 4x less data.
        return all_rotations(normalize(images, self.info))

"""Supervised classification with the dataset's own labels."""
from __future__ import annotations

import torch

from .base import TASKS, Task, normalize


@TASKS.register("cls")
class Classification(Task):
    name = "cls"

    @property
    def num_outputs(self) -> int:
        return self.info.num_classes

    def prepare(self, images, labels, ids, train, generator):
        if train:
            images = self.augment(images, generator)
        return normalize(images, self.info), self.targets(labels, ids)

    def targets(self, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return labels

"""RLNAS random labels: one fixed label per image, uniform over the dataset's own classes, seeded."""
from __future__ import annotations

import numpy as np
import torch

from .base import TASKS
from .cls import Classification


def random_labels(num_images: int, num_classes: int, seed: int) -> torch.Tensor:
    """Label of image i = ``RandomState(seed).randint(0, num_classes, num_images)[i]``: RLNAS's draw.

    On ImageNet16-120 RLNAS draws ``randint(1, 121)`` and its ImageNet16 loader subtracts 1 from every
    label it serves; that is the same stream shifted by one, so these labels equal the ones its
    120-output classifier is trained on (tests/test_tasks.py checks it).
    """
    return torch.from_numpy(np.random.RandomState(seed).randint(0, num_classes, num_images).astype(np.int64))


@TASKS.register("rand")
class RandomLabels(Classification):
    name = "rand"

    def __init__(self, cfg, info, seed):
        super().__init__(cfg, info, seed)
        label_seed = cfg["rand"]["label_seed"]
        self.label_seed = seed if label_seed is None else int(label_seed)
        self.labels = random_labels(info.num_images, info.num_classes, self.label_seed)

    def targets(self, labels, ids):
        if self.labels.device != ids.device:
            self.labels = self.labels.to(ids.device)
        return self.labels[ids]

    def describe(self):
        return {**super().describe(), "label_seed": self.label_seed}

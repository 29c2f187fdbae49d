"""A label source ("task"): input transform, targets, head, loss and metric, defined in one place."""
from __future__ import annotations

import abc
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DatasetInfo, augment
from ..registry import ConfigError, Registry

TASKS: Registry = Registry("task")


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


class LinearHead(nn.Module):
    """Global average pooling and a linear classifier."""

    def __init__(self, in_channels: int, num_outputs: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean(dim=(2, 3)))


class Task(abc.ABC):
    """Turns a batch of augmented images in [0, 1] into (inputs, targets) and scores the outputs."""

    name: str
    metric_name = "top1"
    requires_rgb = False
    # Training augmentation: the dataset's flip always, its pad-and-crop only where ``crop`` (UnNAS on
    # CIFAR: cls and rot flip and crop, col and jig only flip).
    crop = True
    # One prediction per input image from the trunk's pooled features: what an auxiliary head (DARTS) predicts too.
    image_level = True

    def __init__(self, cfg: dict[str, Any], info: DatasetInfo, seed: int) -> None:
        self.check(info)
        self.cfg = cfg
        self.info = info
        self.seed = seed

    @classmethod
    def check(cls, info: DatasetInfo) -> None:
        """Raise ConfigError when this task cannot run on the dataset described by ``info``."""
        check_channels(cls.name, cls.requires_rgb, info.name, info.channels)

    @property
    def in_channels(self) -> int:
        return self.info.channels

    @property
    @abc.abstractmethod
    def num_outputs(self) -> int: ...

    @abc.abstractmethod
    def prepare(self, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, train: bool,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """This task's training augmentation of images in [0, 1] (``task.crop_style`` picks the seed's pad-and-crop)."""
        return augment(images, self.info, generator, crop=self.crop, style=self.cfg["crop_style"])

    def build_head(self, feature_channels: int) -> nn.Module:
        return LinearHead(feature_channels, self.num_outputs)

    def forward(self, backbone: Callable[[torch.Tensor], torch.Tensor], head: nn.Module,
                inputs: torch.Tensor) -> torch.Tensor:
        return head(backbone(inputs))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        if outputs.dim() > 2:
            # Dense predictions (N, K, H, W) as (N*H*W, K) rows, the same mean: CUDA's 2-D NLL kernel has
            # no deterministic version, the 1-D one is deterministic.
            outputs = outputs.movedim(1, -1).reshape(-1, outputs.shape[1])
            targets = targets.reshape(-1)
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Number of correct predictions (a tensor, no host sync) and the number of predictions."""
        return (outputs.argmax(dim=1) == targets).sum(), targets.numel()

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "num_outputs": self.num_outputs, "metric": self.metric_name}


def check_channels(task: str, requires_rgb: bool, dataset: str, channels: int) -> None:
    if requires_rgb and channels != 3:
        raise ConfigError(
            f"task {task!r} cannot run on dataset {dataset!r}: it needs RGB images and the dataset has "
            f"{channels} channel(s); choose a colour dataset or another task"
        )

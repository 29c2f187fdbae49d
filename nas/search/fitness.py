"""Fitness of an architecture from a trained supernet: the RLNAS angle, or accuracy after BN recalibration."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ..data import ImageData
from ..spaces import Arch, SearchSpace
from ..train import TaskModel, evaluate, recalibrate_bn


class AngleFitness:
    """theta(a) = arccos(cos(V(W0, a), V(WT, a))); larger is better; 0 when no input-output path survives."""

    name = "angle"

    def __init__(self, space: SearchSpace, initial: TaskModel, final: TaskModel) -> None:
        self.space = space
        self.initial = initial
        self.final = final

    @torch.no_grad()
    def __call__(self, arch: Arch) -> float:
        v0 = self.space.angle_vector(self.initial.backbone, self.initial.head, arch)
        if v0 is None:
            return 0.0
        vt = self.space.angle_vector(self.final.backbone, self.final.head, arch)
        v0, vt = v0.double(), vt.double()
        cosine = torch.dot(v0, vt) / (v0.norm() * vt.norm())
        return math.acos(max(-1.0, min(1.0, float(cosine))))


class AccuracyFitness:
    """Supernet accuracy (%) of the path on a held-out split after re-estimating BN statistics for it."""

    name = "accuracy"

    def __init__(self, model: TaskModel, data: ImageData, score_cfg: dict[str, Any], device: torch.device,
                 seed: int, amp: bool) -> None:
        self.model = copy.deepcopy(model)
        self.data = data
        self.cfg = score_cfg
        self.device = device
        self.seed = seed
        self.amp = amp

    def __call__(self, arch: Arch) -> float:
        recalibrate_bn(self.model, self.data, "train", self.cfg["batch_size"], self.cfg["bn_recal_batches"],
                       self.device, arch, self.seed)
        result = evaluate(self.model, self.data, self.cfg["split"], self.cfg["batch_size"], self.device, arch=arch,
                          max_batches=self.cfg["eval_batches"], seed=self.seed, amp=self.amp)
        return result["acc"]

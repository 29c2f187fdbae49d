"""The one trainer every stage shares: supernets (one sampled path per step) and stand-alone networks.

A checkpoint (model, optimizer, scheduler, every RNG, history) is written atomically after every
epoch; a restarted job resumes from it and ends with the same metrics as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from .data import ImageData, cutout, iterate_batches
from .errors import NonFiniteLoss
from .io import atomic_torch_save
from .registry import ConfigError
from .spaces import Arch
from .spaces.base import Mixture
from .tasks import Task

CHECKPOINT_FORMAT = 1
EVAL_STREAM, PRECISE_BN_STREAM, SEARCH_STREAM = 0, 1, 2  # purposes of the per-epoch generators (see stream_seed)


class TaskModel(nn.Module):
    """A backbone (network or supernet) with the task's head; ``arch`` selects a supernet path.

    A backbone with an auxiliary output (``aux_channels`` > 0, DARTS evaluation networks) gets the auxiliary
    head it builds, when the task predicts one label per image; ``aux_logits`` reads it after a training forward.
    """

    def __init__(self, backbone: nn.Module, task: Task) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = task.build_head(backbone.out_channels)
        self.task = task
        has_aux = getattr(backbone, "aux_channels", 0) > 0 and task.image_level
        self.aux_head = backbone.build_aux_head(task.num_outputs) if has_aux else None

    def aux_logits(self) -> torch.Tensor | None:
        features = getattr(self.backbone, "aux_features", None)
        return None if self.aux_head is None or features is None else self.aux_head(features)

    def forward(self, inputs: torch.Tensor, arch: Arch | None = None, mixture: Mixture | None = None) -> torch.Tensor:
        if arch is None and mixture is None:
            return self.task.forward(self.backbone, self.head, inputs)
        if mixture is not None:
            return self.task.forward(lambda x: self.backbone(x, mixture=mixture), self.head, inputs)
        return self.task.forward(lambda x: self.backbone(x, arch=arch), self.head, inputs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(step: int, total: int, cfg: dict[str, Any]) -> float:
    """Multiplier of the base LR at schedule step ``step`` of ``total`` (warm-up, then the decay)."""
    warmup = cfg["warmup_epochs"] if cfg["lr_step"] == "epoch" else 0
    if step < warmup:
        return cfg["warmup_factor"] + (1.0 - cfg["warmup_factor"]) * step / warmup
    if cfg["schedule"] == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg["lr_min"] / cfg["lr"]
    if cfg["schedule"] == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - floor) * progress


def build_optimizer(params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD multi-tensor (a few ops over all parameters at once) and Adam fused (one kernel); PyTorch's default on the
    CPU is a Python loop of five small ops per tensor: 5.0 ms against 3.6 (SGD, multi-tensor) and 0.9 ms (fused) per
    step of the stand-alone NB201 network here. SGD is multi-tensor rather than fused: the fused kernel fails once a
    supernet path reaches parameters that have no momentum buffer yet while others have one."""
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
                               weight_decay=cfg["weight_decay"], foreach=True)
    return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)


@torch.no_grad()
def evaluate(model: TaskModel, data: ImageData, split: str, batch_size: int, device: torch.device,
             arch: Arch | None = None, max_batches: int | None = None, seed: int = 0, amp: bool = True,
             mixture: Mixture | None = None) -> dict[str, float]:
    """Mean loss and accuracy (%) of ``model`` on ``split``; ``arch`` picks a supernet path, ``mixture`` its op mixture."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    seen = 0
    for images, labels, ids in iterate_batches(data, split, batch_size, shuffle=False, max_batches=max_batches):
        inputs, targets = model.task.prepare(images.float() / 255.0, labels, ids, train=False, generator=generator)
        with _autocast(device, amp):
            outputs = model(inputs, arch=arch, mixture=mixture)
        loss_sum += model.task.loss(outputs.float(), targets) * targets.shape[0]
        hits, total = model.task.correct(outputs, targets)
        correct += hits
        count += total
        seen += targets.shape[0]
    if seen == 0:
        raise ConfigError(f"split {split!r} of dataset {data.info.name!r} yields no batches; enlarge dataset.splits.{split}")
    return {"loss": float(loss_sum) / seen, "acc": 100.0 * float(correct) / count}


@torch.no_grad()
def recalibrate_bn(model: TaskModel, data: ImageData, split: str, batch_size: int, batches: int,
                   device: torch.device, arch: Arch | None, seed: int, augment: bool = False,
                   variance: str = "within", amp: bool = False) -> None:
    """Re-estimate BN running statistics for ``arch`` from ``batches`` shuffled batches of ``split``, in train mode.

    Each BN layer's mean becomes the mean of the batch means. Its variance: ``within``, the mean of the
    unbiased batch variances (PyTorch's cumulative average); ``total``, that plus the spread of the batch
    means, mean(var + mean^2) - mean(mean)^2 (pycls ``compute_precise_bn_stats``, as UnNAS has it).
    ``augment`` prepares the batches as training does. Batch order and augmentation come from a generator
    seeded with ``seed``; the momentum of every layer is restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    batches = min(batches, math.ceil(len(data.splits[split]) / batch_size))  # as pycls: at most the loader's length
    if not norms or batches == 0:
        return
    momenta = [norm.momentum for norm in norms]
    if variance == "within":
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
    elif variance == "total":
        for norm in norms:
            norm.momentum = 1.0  # running statistics = the last batch's
        means = [torch.zeros_like(norm.running_mean) for norm in norms]
        squares = [torch.zeros_like(norm.running_var) for norm in norms]
    else:
        raise ValueError(f"unknown BN variance estimate {variance!r}; expected 'within' or 'total'")
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for images, labels, ids in iterate_batches(data, split, batch_size, shuffle=True, generator=generator,
                                               max_batches=batches):
        inputs, _ = model.task.prepare(images.float() / 255.0, labels, ids, train=augment, generator=generator)
        with _autocast(device, amp):
            model(inputs, arch=arch)
        if variance == "total":
            for norm, mean, square in zip(norms, means, squares):
                mean += norm.running_mean / batches
                square += (norm.running_var + norm.running_mean * norm.running_mean) / batches
    if variance == "total":
        for norm, mean, square in zip(norms, means, squares):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(square - mean * mean)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def precise_bn_batches(images: int, batch_size: int, train_images: int) -> int:
    """pycls's number of precise-BN batches: int(images / batch_size), at most the epoch's full batches."""
    return min(images // batch_size, train_images // batch_size)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed of its own for (job seed, epoch, purpose): the same numbers whether or not the job was resumed."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint a job resumes from, or None if there is none yet.

    Read before the job opens its tracking run, so that an unreadable checkpoint or one of another
    job is refused as bad input, with nothing started.
    """
    if not path.exists():
        return None
    try:
        # onto the CPU: RNG states must stay CPU byte tensors; model and optimizer state move to the
        # parameters' device as they are loaded
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read ({err}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != identity:
        held = state.get("identity") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"checkpoint {str(path)!r} belongs to another job: it holds {held}, this job is {identity}; "
                          "delete it or choose another --out")
    return state


class ArchStrategy(Protocol):
    """A differentiable search plugged into the trainer's loop (``nas/search/differentiable.py``): it owns the
    architecture parameters and their optimiser; the trainer runs its architecture step on a search-split batch
    before (``arch_first``) or after every weight step, and saves its state in the checkpoint."""

    arch_first: bool

    def start_epoch(self, epoch: int) -> None: ...

    def mixture(self) -> Mixture: ...

    def eval_mixture(self) -> Mixture: ...

    def arch_step(self, model: TaskModel, train_batch: tuple[torch.Tensor, torch.Tensor],
                  search_batch: tuple[torch.Tensor, torch.Tensor], weight_optimizer: torch.optim.Optimizer
                  ) -> tuple[torch.Tensor, torch.Tensor, int]: ...

    def epoch_metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainer:
    """Trains ``model`` on the ``train`` split for ``cfg['epochs']`` epochs and evaluates after each.

    ``path_sampler`` (supernets) draws the path of each step from a seeded ``random.Random``; a ``strategy``
    (differentiable search) mixes the supernet's ops and steps its architecture on the ``search`` split.
    ``identity`` is stored in the checkpoint and must match on resume.
    """

    def __init__(self, model: TaskModel, data: ImageData, cfg: dict[str, Any], device: torch.device,
                 checkpoint: Path, identity: dict[str, Any], seed: int,
                 path_sampler: Callable[[random.Random], Arch] | None = None,
                 eval_arch: Arch | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 progress: bool = True, label: str = "train", strategy: ArchStrategy | None = None) -> None:
        self.strategy = strategy
        self.model = model.to(device)
        self.data = data
        self.cfg = cfg
        self.device = device
        self.checkpoint = Path(checkpoint)
        self.identity = identity
        self.seed = seed
        self.path_sampler = path_sampler
        self.eval_arch = eval_arch
        self.on_epoch = on_epoch
        self.progress = progress
        self.label = label
        self.optimizer = build_optimizer(model.parameters(), cfg)
        steps_per_epoch = self._steps_per_epoch()
        total = cfg["epochs"] * (steps_per_epoch if cfg["lr_step"] == "iter" else 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total, cfg))
        self.generator = torch.Generator().manual_seed(seed)
        self.path_rng = random.Random(seed)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self._check_precise_bn()
        self._check_network_options()
        if strategy is not None and len(data.splits["search"]) < cfg["batch_size"]:
            raise ConfigError(f"the search split of dataset {data.info.name!r} holds {len(data.splits['search'])} "
                              f"images, fewer than one batch of {cfg['batch_size']}: a differentiable search steps its "
                              "architecture on it; give dataset.splits.search (or this stage's splits) a share")

    def _check_network_options(self) -> None:
        """aux_weight and drop_path need a network that has them; refused before any training."""
        if self.cfg["aux_weight"] and self.model.aux_head is None:
            raise ConfigError(
                f"aux_weight {self.cfg['aux_weight']}: this network has no auxiliary head; it needs a network "
                "with one (space.darts.network.auxiliary: true) and a task with one label per image (cls, rot, "
                f"rand), here task {self.model.task.name!r}; set aux_weight to 0")
        if self.cfg["aux_weight"]:
            self.model.backbone.check_aux_input(self.data.info.image_size)
        if self.cfg["drop_path"] and not hasattr(self.model.backbone, "drop_path_prob"):
            raise ConfigError(f"drop_path {self.cfg['drop_path']}: this network has no drop-path (DARTS evaluation "
                              "networks have); set drop_path to 0")

    def _check_precise_bn(self) -> None:
        images, batch_size = self.cfg["precise_bn_images"], self.cfg["batch_size"]
        if 0 < images < batch_size:
            raise ConfigError(f"precise_bn_images {images} is less than one batch of {batch_size}; "
                              "use 0 (off) or at least batch_size images")

    def _steps_per_epoch(self) -> int:
        count = len(self.data.splits["train"]) // self.cfg["batch_size"]
        if self.cfg["max_batches_per_epoch"]:
            count = min(count, self.cfg["max_batches_per_epoch"])
        if count == 0 and self.cfg["epochs"] > 0:
            raise ConfigError(
                f"the train split of dataset {self.data.info.name!r} holds {len(self.data.splits['train'])} images, "
                f"fewer than one batch of {self.cfg['batch_size']}; lower the batch_size or enlarge the split"
            )
        return count

    # ---- checkpoints ------------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": self.identity,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "path_rng": self.path_rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "history": self.history,
            "strategy": self.strategy.state_dict() if self.strategy else None,
        }

    def resume(self, state: dict[str, Any] | None) -> bool:
        """Continue from ``state`` (see ``load_checkpoint``); True when there was one to continue from."""
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.path_rng.setstate(state["path_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.history = state["history"]
        self.start_epoch = state["epoch"]
        if self.strategy is not None:
            self.strategy.load_state_dict(state["strategy"])
        return True

    # ---- loop -------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        cfg, task = self.cfg, self.model.task
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        count, seen = 0, 0
        batches = iterate_batches(self.data, "train", cfg["batch_size"], shuffle=True, generator=self.generator,
                                  drop_last=True, max_batches=cfg["max_batches_per_epoch"])
        bar = tqdm(batches, total=self._steps_per_epoch(), desc=f"{self.label} epoch {epoch + 1}/{cfg['epochs']}",
                   disable=not self.progress, mininterval=2.0, leave=False)
        if cfg["drop_path"]:
            self.model.backbone.drop_path_prob = cfg["drop_path"] * epoch / cfg["epochs"]  # DARTS train.py
        strategy = self.strategy
        if strategy is not None:
            strategy.start_epoch(epoch)
            search_batches = self._search_batches(epoch)
        for step, (images, labels, ids) in enumerate(bar):
            inputs, targets = task.prepare(images.float() / 255.0, labels, ids, train=True, generator=self.generator)
            if cfg["cutout"] and inputs.dim() == 4:
                inputs = cutout(inputs, cfg["cutout"], self.generator)
            if strategy is not None:
                search_batch = next(search_batches)
                if strategy.arch_first:
                    strategy.arch_step(self.model, (inputs, targets), search_batch, self.optimizer)
            arch = self.path_sampler(self.path_rng) if self.path_sampler else None
            mixture = strategy.mixture() if strategy is not None else None
            with _autocast(self.device, cfg["amp"]):
                outputs = self.model(inputs, arch=arch, mixture=mixture)
                aux = self.model.aux_logits() if cfg["aux_weight"] else None
            loss = task.loss(outputs.float(), targets, cfg["label_smoothing"])
            if aux is not None:
                loss = loss + cfg["aux_weight"] * task.loss(aux.float(), targets, cfg["label_smoothing"])
            if self.device.type == "cpu" or step % 50 == 0:
                self._check_finite(loss, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"]:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
            self.optimizer.step()
            if strategy is not None and not strategy.arch_first:
                strategy.arch_step(self.model, (inputs, targets), search_batch, self.optimizer)
            if cfg["lr_step"] == "iter":
                self.scheduler.step()
            loss_sum += loss.detach() * targets.shape[0]
            hits, total = task.correct(outputs.detach(), targets)
            correct += hits
            count += total
            seen += targets.shape[0]
        self._check_finite(loss_sum, epoch, None)
        if cfg["lr_step"] == "epoch":
            self.scheduler.step()
        record = {"train_loss": float(loss_sum) / max(seen, 1), "train_acc": 100.0 * float(correct) / max(count, 1)}
        return {**record, **strategy.epoch_metrics()} if strategy is not None else record

    def _search_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The architecture steps' batches of one epoch: the search split in shuffled passes, prepared and
        augmented as training batches (xautodl, UnNAS), from a generator of their own per (seed, epoch)."""
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, SEARCH_STREAM))
        while True:
            for images, labels, ids in iterate_batches(self.data, "search", self.cfg["batch_size"], shuffle=True,
                                                       generator=generator, drop_last=True):
                yield self.model.task.prepare(images.float() / 255.0, labels, ids, train=True, generator=generator)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int | None) -> None:
        if not torch.isfinite(loss):
            where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
            raise NonFiniteLoss(
                f"{self.label}: the loss became {float(loss)} at {where} (lr {self.optimizer.param_groups[0]['lr']:.4g}); "
                "lower the learning rate, enable grad_clip, or check the data"
            )

    def fit(self) -> list[dict[str, Any]]:
        """Train (resuming if a checkpoint exists); return the per-epoch history."""
        for epoch in range(self.start_epoch, self.cfg["epochs"]):
            lr = self.optimizer.param_groups[0]["lr"]
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, **self._train_epoch(epoch)}
            if self.strategy is not None:
                evaluated = evaluate(self.model, self.data, self.cfg["eval_split"], self.cfg["batch_size"], self.device,
                                     mixture=self.strategy.eval_mixture(),
                                     seed=stream_seed(self.seed, epoch, EVAL_STREAM), amp=self.cfg["amp"])
                record.update({"eval_loss": evaluated["loss"], "eval_acc": evaluated["acc"]})
            elif self.path_sampler is None or self.eval_arch is not None:
                if self.cfg["precise_bn_images"]:
                    batches = precise_bn_batches(self.cfg["precise_bn_images"], self.cfg["batch_size"],
                                                 len(self.data.splits["train"]))
                    recalibrate_bn(self.model, self.data, "train", self.cfg["batch_size"], batches, self.device,
                                   self.eval_arch, stream_seed(self.seed, epoch, PRECISE_BN_STREAM), augment=True,
                                   variance="total", amp=self.cfg["amp"])
                # a seed per epoch: random evaluation inputs (jig's tiles) are drawn anew at each evaluation
                evaluated = evaluate(self.model, self.data, self.cfg["eval_split"], self.cfg["batch_size"], self.device,
                                     arch=self.eval_arch, seed=stream_seed(self.seed, epoch, EVAL_STREAM),
                                     amp=self.cfg["amp"])
                record.update({"eval_loss": evaluated["loss"], "eval_acc": evaluated["acc"]})
            self.history.append(record)
            atomic_torch_save(self._state(epoch + 1), self.checkpoint)
            if self.on_epoch:
                self.on_epoch(record)
        return self.history

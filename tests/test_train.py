"""Precise BN (pycls compute_precise_bn_stats, as UnNAS trains): the statistics, when they are computed, and resuming."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nas.registry import ConfigError
from nas.spaces import build_space
from nas.tasks import build_task
from nas.train import (EVAL_STREAM, PRECISE_BN_STREAM, TaskModel, Trainer, evaluate, load_checkpoint,
                       precise_bn_batches, recalibrate_bn, stream_seed)

pytestmark = pytest.mark.usefixtures("single_thread")

ARCH = (3, 1, 2, 4, 3, 1)  # every op kind of NB201 on some edge
CPU = torch.device("cpu")


class Interrupted(Exception):
    """Raised after the first epoch's checkpoint, standing in for a job killed there."""


def _trainer(cfg, tiny_space_cfg, data, name: str, checkpoint, *overrides: str, on_epoch=None) -> Trainer:
    config = cfg(f"task.name={name}", "train.epochs=3", "train.batch_size=16", "train.precise_bn_images=32",
                 "train.lr=0.05", *overrides)
    task = build_task(config["task"], data.info, seed=0)
    torch.manual_seed(0)
    backbone = build_space(tiny_space_cfg(channels=4, cells_per_stage=1)).build_network(ARCH, task.in_channels)
    return Trainer(TaskModel(backbone, task), data, config["train"], CPU, checkpoint, identity={"test": name},
                   seed=0, on_epoch=on_epoch, progress=False)


def test_precise_bn_batches_as_pycls():
    # int(NUM_SAMPLES_PRECISE / batch size), at most the train loader's (drop_last) length
    assert precise_bn_batches(1024, 128, 50_000) == 8   # cls, col
    assert precise_bn_batches(1024, 32, 50_000) == 32   # rot, jig
    assert precise_bn_batches(1024, 100, 50_000) == 10
    assert precise_bn_batches(1024, 128, 500) == 3
    assert precise_bn_batches(100, 128, 50_000) == 0


@pytest.mark.parametrize("variance", ["total", "within"])
def test_precise_bn_statistics_by_hand(cfg, random_images, tiny_space_cfg, tmp_path, variance):
    """Every BN layer sees int(32 / 16) = 2 training-augmented batches in train mode; its running statistics
    become pycls's average of them: mean of the batch means; variance mean(var + mean^2) - mean(mean)^2 (total)
    or the mean of the unbiased batch variances (within)."""
    data = random_images()
    model = _trainer(cfg, tiny_space_cfg, data, "jig", tmp_path / "c.pt").model
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {norm: [] for norm in norms}

    def record(module, inputs, output):
        assert module.training
        x = inputs[0].double()
        seen[module].append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)))

    hooks = [norm.register_forward_hook(record) for norm in norms]
    modes = []
    prepare = model.task.prepare

    def spy(*args, **kwargs):
        modes.append(kwargs["train"])
        return prepare(*args, **kwargs)

    model.task.prepare = spy
    model.eval()
    momenta = [norm.momentum for norm in norms]
    recalibrate_bn(model, data, "train", 16, precise_bn_batches(32, 16, 64), CPU, None, seed=5, augment=True,
                   variance=variance)
    for hook in hooks:
        hook.remove()
    assert modes == [True, True]  # prepared as training batches: flip, gray, random tiles and permutations
    assert [norm.momentum for norm in norms] == momenta
    for norm in norms:
        means = torch.stack([m for m, _ in seen[norm]])
        variances = torch.stack([v for _, v in seen[norm]])
        assert len(means) == 2
        mean = means.mean(0)
        if variance == "total":
            expected_var = (variances + means ** 2).mean(0) - mean ** 2
        else:
            expected_var = variances.mean(0)
        torch.testing.assert_close(norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var.double(), expected_var, rtol=1e-4, atol=1e-6)
    # the batches come from the seed: the same seed, the same statistics
    again = copy.deepcopy(model)
    again.task.prepare = prepare
    model.task.prepare = prepare
    recalibrate_bn(again, data, "train", 16, 2, CPU, None, seed=5, augment=True, variance=variance)
    recalibrate_bn(model, data, "train", 16, 2, CPU, None, seed=5, augment=True, variance=variance)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_fit_recomputes_bn_before_each_evaluation(cfg, random_images, tiny_space_cfg, tmp_path):
    """The last evaluation used BN statistics recomputed with the (seed, epoch) generator, and its own eval draws."""
    data = random_images()
    trainer = _trainer(cfg, tiny_space_cfg, data, "jig", tmp_path / "c.pt")
    history = trainer.fit()
    last = len(history) - 1
    replay = copy.deepcopy(trainer.model)
    for norm in (m for m in replay.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(7.0)
    recalibrate_bn(replay, data, "train", 16, 2, CPU, None, stream_seed(0, last, PRECISE_BN_STREAM), augment=True,
                   variance="total", amp=False)
    for key, value in trainer.model.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # a count of forward passes, 2 more in the replay
            assert torch.equal(replay.state_dict()[key], value), key
    result = evaluate(replay, data, "valid", 16, CPU, seed=stream_seed(0, last, EVAL_STREAM), amp=False)
    assert (result["loss"], result["acc"]) == (history[-1]["eval_loss"], history[-1]["eval_acc"])
    # precise BN off: the running averages of training are evaluated instead
    plain = _trainer(cfg, tiny_space_cfg, data, "jig", tmp_path / "d.pt", "train.precise_bn_images=0").fit()
    assert [h["train_loss"] for h in plain] == [h["train_loss"] for h in history]
    assert plain[-1]["eval_loss"] != history[-1]["eval_loss"]


def test_stream_seeds_differ_by_epoch_and_purpose():
    seeds = {stream_seed(s, e, p) for s in (0, 1) for e in range(3) for p in (EVAL_STREAM, PRECISE_BN_STREAM)}
    assert len(seeds) == 12
    assert stream_seed(1, 2, PRECISE_BN_STREAM) == stream_seed(1, 2, PRECISE_BN_STREAM)


@pytest.mark.parametrize("name", ["rot", "jig"])
def test_killed_and_resumed_training_with_precise_bn_is_bit_identical(cfg, random_images, tiny_space_cfg, tmp_path, name):
    data = random_images()
    whole = _trainer(cfg, tiny_space_cfg, data, name, tmp_path / "whole.pt")
    whole_history = whole.fit()

    def stop_after_first_epoch(record):
        raise Interrupted

    cut = tmp_path / "cut.pt"
    with pytest.raises(Interrupted):
        _trainer(cfg, tiny_space_cfg, data, name, cut, on_epoch=stop_after_first_epoch).fit()
    resumed = _trainer(cfg, tiny_space_cfg, data, name, cut)
    assert resumed.resume(load_checkpoint(cut, {"test": name}))
    assert resumed.fit() == whole_history  # every figure of every epoch, to the last bit
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_precise_bn_of_less_than_a_batch_is_refused(cfg, random_images, tiny_space_cfg, tmp_path):
    with pytest.raises(ConfigError, match="precise_bn_images 8 is less than one batch of 16"):
        _trainer(cfg, tiny_space_cfg, random_images(), "cls", tmp_path / "c.pt", "train.precise_bn_images=8")

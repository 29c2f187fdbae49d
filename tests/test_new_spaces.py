"""The DARTS and NB101 spaces through the tool: every task trains on each, the CLI's describe, bad input, and
the stages end to end on the embedded data."""
from __future__ import annotations

import json
import random

import pytest
import torch

from jobs import nas, read_rows, write_config
from nas.cli import main
from nas.config import load_config
from nas.data import ImageData
from nas.spaces import build_space
from nas.tasks import build_task
from nas.train import TaskModel, Trainer

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
TINY_SPACES = {
    "darts": ["space.name=darts", "space.darts.network.cells=3", "space.darts.network.channels=4",
              "space.darts.supernet.cells=3", "space.darts.supernet.channels=4"],
    "nb101": ["space.name=nb101", "space.nb101.stacks=1", "space.nb101.modules_per_stack=1",
              "space.nb101.channels=8"],
}


def _arch(space, name: str):
    # DARTS: UnNAS's sample 00004 has a `none` input and a node fed twice by one node; NB101: a sampled cell
    return space.from_str("00004") if name == "darts" else space.sample(random.Random(0))


def _images_32(tiny_info) -> ImageData:
    """48 random 32x32 RGB images of 6 classes: 32 train, 16 valid."""
    info = tiny_info(num_classes=6, channels=3, image_size=32, num_images=48, flip=True, crop_padding=4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 6, (48,), generator=generator)
    return ImageData(images, labels, info, {"train": torch.arange(32), "valid": torch.arange(32, 48),
                                            "search": torch.arange(32, 48)})


def _weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


@pytest.mark.parametrize("space_name", ["darts", "nb101"])
@pytest.mark.parametrize("task_name", ["cls", "rot", "col", "jig", "rand"])
def test_every_task_trains_one_step_on_each_new_space(cfg, random_images, tiny_info, tmp_path, space_name, task_name):
    image_level = task_name in ("cls", "rot", "rand")
    extra = []
    if space_name == "darts":  # DARTS's evaluation options: auxiliary head (one label per image), drop-path, cutout
        extra = ["train.drop_path=0.2", "train.cutout=4"] + (["train.aux_weight=0.4"] if image_level else [])
    config = cfg(*TINY_SPACES[space_name], f"task.name={task_name}", "train.epochs=1", "train.batch_size=16",
                 "train.max_batches_per_epoch=1", "train.lr=0.05", *extra)
    # DARTS's CIFAR auxiliary head reads the 8x8 maps of 32-px images
    data = _images_32(tiny_info) if space_name == "darts" else random_images()
    space = build_space(config["space"])
    task = build_task(config["task"], data.info, seed=0)
    torch.manual_seed(0)
    model = TaskModel(space.build_network(_arch(space, space_name), task.in_channels), task)
    before = _weights(model.backbone)
    aux_before = _weights(model.aux_head) if model.aux_head is not None else None
    history = Trainer(model, data, config["train"], CPU, tmp_path / "c.pt", identity={"t": 1}, seed=0,
                      progress=False).fit()
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    assert not torch.equal(before, _weights(model.backbone))
    if space_name == "darts" and image_level:
        assert not torch.equal(aux_before, _weights(model.aux_head))  # the auxiliary loss reached its head
        assert model.backbone.drop_path_prob == 0.0  # DARTS: drop_path * epoch / epochs, epoch 0


@pytest.mark.parametrize("sampling", ["shared", "per_cell"])
def test_darts_supernet_trains_one_step(cfg, random_images, tmp_path, sampling):
    config = cfg(*TINY_SPACES["darts"], "task.name=rand", "supernet.epochs=1", "supernet.batch_size=16",
                 "supernet.max_batches_per_epoch=2", f"supernet.sampling={sampling}")
    data = random_images()
    space = build_space(config["space"])
    task = build_task(config["task"], data.info, seed=0)
    model = TaskModel(space.build_supernet(task.in_channels), task)
    before = _weights(model)
    Trainer(model, data, config["supernet"], CPU, tmp_path / "c.pt", identity={"t": 1}, seed=0,
            path_sampler=space.supernet_sampler(sampling), progress=False).fit()
    assert not torch.equal(before, _weights(model))


def _describe(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as done:
        main(["describe", *args])
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_describe_prints_published_sizes(capsys):
    darts_v2 = _describe(capsys, "--space", "darts", "--arch", "DARTS_V2", "--num-classes", "10")
    assert round(darts_v2["params"] / 1e6, 1) == 3.3  # DARTS paper, Table 1: 3.3 M (20 cells, C=36, aux excluded)
    assert darts_v2 == _describe(capsys, "--space", "darts", "--arch", darts_v2["arch"], "--num-classes", "10")
    by_id = _describe(capsys, "--space", "nb101", "--arch", "000907", "--num-classes", "10")
    by_text = _describe(capsys, "--space", "nb101", "--arch", by_id["arch"], "--num-classes", "10")
    assert by_id == by_text and by_id["params"] > 0 and by_id["flops"] > 0


def _space_cfg(name: str) -> dict:
    return load_config(None, [f"space.name={name}"])["space"]


ONE_LINE_DARTS = ("normal=sep_conv_3x3~0+sep_conv_3x3~1|sep_conv_3x3~0+sep_conv_3x3~1|skip_connect~0+sep_conv_3x3~1|"
                  "skip_connect~0+dil_conv_3x3~2;reduce=max_pool_3x3~0+max_pool_3x3~1|max_pool_3x3~1+skip_connect~2|"
                  "max_pool_3x3~0+skip_connect~2|max_pool_3x3~1+skip_connect~2")
FULL_DAG = [[int(j > i) for j in range(7)] for i in range(7)]  # 21 edges
NB101_OPS = ["input"] + ["conv3x3-bn-relu"] * 5 + ["output"]
CHAIN = [[int(j == i + 1) for j in range(7)] for i in range(7)]


@pytest.mark.parametrize("space_name, arch, names", [
    ("darts", "normal=sep_conv_3x3~0", ["'normal=sep_conv_3x3~0'"]),
    ("darts", ONE_LINE_DARTS.replace("dil_conv_3x3", "conv_9x9"), ["'conv_9x9'", "sep_conv_5x5"]),
    ("darts", ONE_LINE_DARTS.replace("skip_connect~0+sep_conv_3x3~1|", "sep_conv_3x3~1|", 1), ["two"]),
    ("darts", ONE_LINE_DARTS.replace("sep_conv_3x3~0+sep_conv_3x3~1", "sep_conv_3x3~4+sep_conv_3x3~1", 1), ["4"]),
    ("darts", "DARTS_V9", ["'DARTS_V9'", "DARTS_V2"]),
    ("nb101", json.dumps({"matrix": [row[:] for row in CHAIN[:6]] + [[1, 0, 0, 0, 0, 0, 0]], "ops": NB101_OPS}),
     ["upper-triangular"]),
    ("nb101", json.dumps({"matrix": FULL_DAG, "ops": NB101_OPS}), ["9"]),
    ("nb101", json.dumps({"matrix": [[int(j == i + 1) for j in range(8)] for i in range(8)],
                          "ops": ["input"] + ["conv3x3-bn-relu"] * 6 + ["output"]}), ["7"]),
    ("nb101", "999999", ["'999999'"]),
])
def test_bad_architectures_are_refused_with_exit_2(capsys, space_name, arch, names):
    with pytest.raises(SystemExit) as done:
        main(["describe", "--space", space_name, "--arch", arch, "--num-classes", "10"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nas: error:") and "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


def test_nb101_has_no_supernet_and_describe_all_needs_a_listable_space(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["describe", "--space", "darts", "--all", "--num-classes", "10"])
    assert done.value.code == 2 and "darts" in capsys.readouterr().err
    cfg = write_config(tmp_path, **{"space.name": "nb101"})
    result = nas("train-supernet", "--config", str(cfg), "task.name=rand", "--out", str(tmp_path / "sn"), check=False)
    assert result.returncode == 2 and "has no supernet" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_darts_stages_end_to_end(tmp_path):
    """UnNAS samples trained stand-alone and scored by proxies and on a random-label supernet (angle, accuracy);
    the supernet searched under a FLOPs cap by angle, its pick retrained with DARTS's evaluation options."""
    cfg = write_config(tmp_path, **{
        "space.name": "darts", "space.darts.network": {"cells": 3, "channels": 4, "auxiliary": True},
        "space.darts.supernet": {"cells": 3, "channels": 4}, "sample.source": "unnas", "sample.num_archs": 3,
        "supernet.sampling": "shared", "proxies.network": "standalone", "proxies.names": ["synflow", "params"],
        "search.mutate_allow_none": True,
    })
    info = tmp_path / "results" / "tracking.json"
    nas("tracking-init", "--config", str(cfg), "--out", str(info))
    common = ["--config", str(cfg), "--tracking-info", str(info)]
    nas("sample", *common, "--out", str(tmp_path / "sample"))
    archs = json.loads((tmp_path / "sample" / "archs.json").read_text())["archs"]
    assert len(archs) == 3
    unnas = {build_space(_space_cfg("darts")).to_str(a) for _, a in build_space(_space_cfg("darts")).unnas_samples()}
    assert all(a["arch"] in unnas for a in archs)
    archs_file = str(tmp_path / "sample" / "archs.json")
    nas("train", *common, "task.name=rot", "--archs", archs_file, "--out", str(tmp_path / "train"))
    assert len(read_rows(tmp_path / "train" / "results.csv")) == 3
    nas("proxies", *common, "--archs", archs_file, "--out", str(tmp_path / "proxies"))
    assert len(read_rows(tmp_path / "proxies" / "proxies.csv")) == 3

    nas("train-supernet", *common, "task.name=rand", "--out", str(tmp_path / "sn"))
    nas("score", *common, "task.name=rand", "--supernet", str(tmp_path / "sn"), "--archs", archs_file,
        "--out", str(tmp_path / "score"))
    scores = read_rows(tmp_path / "score" / "scores.csv")
    assert [r["arch"] for r in scores] == [a["arch"] for a in archs]
    assert all(0.0 <= float(r["angle"]) < 3.1416 and 0.0 <= float(r["supernet_acc"]) <= 100.0 for r in scores)
    space = build_space(load_config(str(cfg))["space"])
    # mnist5k (TINY): 10 classes, one channel, 12 px
    flops = [space.cost(space.sample(random.Random(s)), 10, 1, 12).flops for s in range(20)]
    cap = sorted(flops)[10]  # about half of the candidates pass
    nas("search", *common, "task.name=rand", f"search.max_flops={cap}", "--supernet", str(tmp_path / "sn"),
        "--out", str(tmp_path / "search"))
    trace = read_rows(tmp_path / "search" / "trace.csv")
    assert trace and all(space.cost(space.from_str(r["arch"]), 10, 1, 12).flops <= cap for r in trace)
    retrain = ["task.name=cls", "train.drop_path=0.2", "train.cutout=4", "--archs", str(tmp_path / "search" / "topk.json"),
               "--top", "1", "--out", str(tmp_path / "retrain")]
    refused = nas("train", *common, "train.aux_weight=0.4", *retrain, check=False)
    assert refused.returncode == 2 and "8x8" in refused.stderr and "12-px" in refused.stderr  # mnist5k here: 12 px
    nas("train", *common, *retrain)
    assert len(read_rows(tmp_path / "retrain" / "results.csv")) == 1

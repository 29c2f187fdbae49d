"""SPOS supernet sampling: per-cell draws as RLNAS's NB201 supernet (xautodl ``forward_urs``), or one shared cell."""
from __future__ import annotations

import random

import pytest
import torch

from nas.config import load_config
from nas.data import load_dataset
from nas.registry import ConfigError
from nas.spaces import build_space
from nas.spaces.nb201 import Cell
from nas.tasks import build_task
from nas.train import TaskModel, Trainer, load_checkpoint


def test_per_cell_draws_one_cell_per_cell_in_network_order(tiny_space_cfg):
    space = build_space(tiny_space_cfg(cells_per_stage=2))
    assert space.num_cells == 6
    path = space.supernet_sampler("per_cell")(random.Random(0))
    assert len(path) == 6 and all(len(cell) == 6 for cell in path)
    assert len(set(path)) > 1  # different cells within one step
    # cell after cell from the one generator, each drawn as `sample` draws a cell
    again = random.Random(0)
    assert path == tuple(space.sample(again) for _ in range(6))


def test_shared_draws_one_cell_for_every_cell(tiny_space_cfg):
    space = build_space(tiny_space_cfg(cells_per_stage=2))
    path = space.supernet_sampler("shared")(random.Random(0))
    assert path == space.sample(random.Random(0)) and all(isinstance(gene, int) for gene in path)


def test_unknown_sampling_is_refused(tiny_space_cfg):
    with pytest.raises(ConfigError, match="supernet.sampling"):
        build_space(tiny_space_cfg()).supernet_sampler("per_edge")


def test_no_node_is_ever_all_none(tiny_space_cfg):
    space = build_space(tiny_space_cfg(cells_per_stage=5))
    sampler = space.supernet_sampler("per_cell")
    rng = random.Random(1)
    cells = [cell for _ in range(700) for cell in sampler(rng)]
    assert len(cells) == 10_500 and all(space.is_trainable(cell) for cell in cells)
    assert len(set(cells)) > 5000  # and they spread over the space


class _Scripted(random.Random):
    """A generator whose ``randrange`` returns scripted values, to read the order of draws."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = list(values)

    def randrange(self, *args):
        return self.values.pop(0)


def test_draw_order_and_redraw_are_those_of_forward_urs(tiny_space_cfg):
    space = build_space(tiny_space_cfg())
    # node 1: none (redrawn), conv3x3; node 2: none+none (redrawn), then none, conv1x1;
    # node 3: skip, none, none (kept: one input is not none)
    rng = _Scripted([0, 3, 0, 0, 0, 2, 1, 0, 0])
    assert space.sample(rng) == (3, 0, 2, 1, 0, 0) and not rng.values


def test_supernet_runs_each_cell_with_its_own_draw(tiny_space_cfg, monkeypatch):
    space = build_space(tiny_space_cfg(cells_per_stage=2))
    supernet = space.build_supernet(3).eval()
    seen = []
    original = Cell.forward_path

    def spy(self, x, arch):
        seen.append(arch)
        return original(self, x, arch)

    monkeypatch.setattr(Cell, "forward_path", spy)
    x = torch.randn(2, 3, 8, 8)
    path = space.supernet_sampler("per_cell")(random.Random(3))
    with torch.no_grad():
        per_cell = supernet(x, arch=path)
        assert seen == list(path)
        seen.clear()
        one = supernet(x, arch=path[0])
        assert seen == [path[0]] * 6
        repeated = supernet(x, arch=(path[0],) * 6)
    assert torch.equal(one, repeated)  # one cell for every cell, given either way
    assert not torch.equal(per_cell, one)
    with pytest.raises(ValueError, match="6"):
        supernet(x, arch=path[:5])


def _trainer(cfg, data, task, checkpoint, sampling):
    torch.manual_seed(cfg["seed"])
    space = build_space(cfg["space"])
    model = TaskModel(space.build_supernet(task.in_channels), task)
    identity = {"test": "per-cell resume", "sampling": sampling}
    return Trainer(model, data, cfg["supernet"], torch.device("cpu"), checkpoint, identity, cfg["seed"],
                   path_sampler=space.supernet_sampler(sampling), progress=False, label="supernet"), identity


class _Killed(Exception):
    pass


def _stop_after_first_epoch(record):
    raise _Killed  # the checkpoint of the epoch is written before this is called, as in a killed job


def test_a_resumed_per_cell_supernet_equals_an_uninterrupted_one(tmp_path, single_thread):
    cfg = load_config(None, ["space.channels=4", "space.cells_per_stage=1", "dataset.limit=300",
                             "dataset.image_size=12", "supernet.epochs=3", "supernet.batch_size=50",
                             "supernet.lr=0.05", "task.name=rand"])
    data = load_dataset(cfg["dataset"])
    task = build_task(cfg["task"], data.info, cfg["seed"])

    whole, _ = _trainer(cfg, data, task, tmp_path / "whole.pt", "per_cell")
    whole_history = whole.fit()

    cut, _ = _trainer(cfg, data, task, tmp_path / "cut.pt", "per_cell")
    cut.on_epoch = _stop_after_first_epoch
    with pytest.raises(_Killed):
        cut.fit()
    resumed, identity = _trainer(cfg, data, task, tmp_path / "cut.pt", "per_cell")
    assert resumed.resume(load_checkpoint(tmp_path / "cut.pt", identity)) and resumed.start_epoch == 1
    assert resumed.fit() == whole_history
    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)

    shared, _ = _trainer(cfg, data, task, tmp_path / "shared.pt", "shared")
    assert shared.fit() != whole_history  # the sampling rule is in effect

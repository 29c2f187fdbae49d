"""Shared fixtures: the packaged NAS-Bench-201 table in the published layouts, space configs, datasets, configs."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from nas.config import load_config
from nas.data import DatasetInfo, ImageData

# tests/jobs.py (job helpers) is importable from every test folder, tests/faults included.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The three published NB201 tables the packaged one is built from (tools/build_nb201_table.py):
# file name -> {column: packaged column}, in the files' own column names and row order.
NB201_LAYOUTS = {
    "nb201_200ep_test.csv": {"CIFAR10TestAccuracy200Epochs": "cifar10_test_200ep",
                             "CIFAR100TestAccuracy200Epochs": "cifar100_test_200ep",
                             "ImageNetTestAccuracy200Epochs": "imagenet16_test_200ep", "ArchitectureString": "arch"},
    "nb201_cifar10-valid_200ep.csv": {"index": "index", "arch_str": "arch",
                                      "valid-accuracy": "cifar10valid_valid_200ep",
                                      "test-accuracy": "cifar10valid_test_200ep"},
    "nb201_12ep.csv": {"arch": "index", "cellstr": "arch", "cifar10-test": "cifar10_test_12ep",
                       "cifar10-val": "cifar10valid_valid_12ep", "cifar100-test": "cifar100_test_12ep",
                       "cifar100-val": "cifar100_valid_12ep", "imagenet-test": "imagenet16_test_12ep",
                       "imagenet-val": "imagenet16_valid_12ep"},
}

_SPACE_CFG = {
    "name": "nb201",
    "channels": 16,
    "cells_per_stage": 5,
    "supernet": {"bn_affine": False, "bn_track_stats": True},
}


@pytest.fixture
def single_thread():
    """Run a test with one torch CPU thread (tiny tensors gain nothing from more; a busy 2-core machine loses a lot)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def nb201_tables(tmp_path_factory) -> Path:
    """A folder of the packaged NAS-Bench-201 table written out in the published tables' layouts
    (``NB201_LAYOUTS``: file names, columns, row order), for tests written against those files."""
    from nas.groundtruth import nb201_table

    folder = tmp_path_factory.mktemp("nb201_tables")
    table = nb201_table()
    for filename, columns in NB201_LAYOUTS.items():
        table.rename(columns={ours: theirs for theirs, ours in columns.items()})[list(columns)].to_csv(
            folder / filename, index=False)
    return folder


@pytest.fixture
def space_cfg() -> dict:
    """The NB201 space config of the benchmark (C=16, N=5); a fresh copy per test, free to modify."""
    return copy.deepcopy(_SPACE_CFG)


@pytest.fixture
def tiny_space_cfg(space_cfg) -> Callable[..., dict]:
    """Factory for a small NB201 space config (default C=4, N=1) to keep networks fast on a CPU."""

    def make(channels: int = 4, cells_per_stage: int = 1, bn_affine: bool = False, bn_track_stats: bool = True) -> dict:
        cfg = copy.deepcopy(space_cfg)
        cfg.update(channels=channels, cells_per_stage=cells_per_stage)
        cfg["supernet"] = {"bn_affine": bn_affine, "bn_track_stats": bn_track_stats}
        return cfg

    return make


@pytest.fixture
def tiny_info() -> Callable[..., DatasetInfo]:
    """Factory for a DatasetInfo describing a tiny dataset, so tasks can be built without loading data."""

    def make(name: str = "tiny", num_classes: int = 10, channels: int = 3, image_size: int = 16,
             num_images: int = 32, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
             flip: bool = False, crop_padding: int = 0) -> DatasetInfo:
        return DatasetInfo(
            name=name,
            num_classes=num_classes,
            channels=channels,
            image_size=image_size,
            num_images=num_images,
            mean=tuple(mean) if mean is not None else (0.5,) * channels,
            std=tuple(std) if std is not None else (0.25,) * channels,
            flip=flip,
            crop_padding=crop_padding,
        )

    return make


@pytest.fixture
def cfg() -> Callable[..., dict]:
    """Factory: ``cfg("a.b=1", "c=2")`` (or a list) -> ``nas.config.load_config(None, overrides)``."""

    def make(*overrides) -> dict:
        flat: list[str] = []
        for item in overrides:
            flat.extend([item] if isinstance(item, str) else list(item))
        return load_config(None, flat)

    return make


@pytest.fixture
def random_images(tiny_info) -> Callable[..., ImageData]:
    """Factory: ``count`` random 16x16 RGB images of 6 classes; the first 64 are the train split, the rest valid and search."""

    def make(count: int = 96) -> ImageData:
        info = tiny_info(num_classes=6, channels=3, image_size=16, num_images=count, flip=True, crop_padding=2)
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 6, (count,), generator=generator)
        return ImageData(images, labels, info, {"train": torch.arange(64), "valid": torch.arange(64, count),
                                                "search": torch.arange(64, count)})

    return make

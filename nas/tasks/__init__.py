"""Label sources ("tasks"), one module each, chosen by ``task.name``."""
from __future__ import annotations

from typing import Any

from ..data import DATASETS, DatasetInfo
from . import cls, col, jig, rand, rot  # noqa: F401  (register the tasks)
from .base import TASKS, Task, check_channels


def build_task(task_cfg: dict[str, Any], info: DatasetInfo, seed: int) -> Task:
    """The task named in ``task_cfg``; raises ConfigError if it cannot run on the dataset."""
    return TASKS.get(task_cfg["name"])(task_cfg, info, seed)


def check_task_on_dataset(task: str, dataset: str) -> None:
    """Refuse a (task, dataset) pair before any data is loaded or any work starts."""
    check_channels(task, TASKS.get(task).requires_rgb, dataset, DATASETS.get(dataset).channels)


__all__ = ["TASKS", "Task", "build_task", "check_task_on_dataset"]

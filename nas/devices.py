"""Pick the device for a job: CUDA_VISIBLE_DEVICES when set, else lease one free GPU with a file lock.

Snakemake's ``gpu`` resource only counts jobs and never names an index, so each job takes a
non-blocking ``flock`` on ``<lock dir>/gpu<i>.lock`` and holds it until the process exits.
"""
from __future__ import annotations

import fcntl
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from .registry import ConfigError

_held_locks: list = []  # keep lock files open for the life of the process


def lock_dir() -> Path:
    return Path(os.environ.get("NAS_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "nas-gpu-locks"))


def _lease_gpu(count: int, poll_seconds: float = 2.0) -> int:
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited = 0.0
    while True:
        for index in random.sample(range(count), count):
            handle = open(folder / f"gpu{index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held_locks.append(handle)
            return index
        if waited == 0.0 or int(waited) % 60 < poll_seconds:
            print(f"[nas] all {count} GPUs are leased by other jobs; waiting", file=sys.stderr, flush=True)
        pause = poll_seconds * (0.5 + random.random())
        time.sleep(pause)
        waited += pause


def select_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise ConfigError("config key 'device': 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    if not has_cuda:
        return torch.device("cpu")
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", 0)
    return torch.device("cuda", _lease_gpu(torch.cuda.device_count()))

"""Pick the device for a job: CUDA_VISIBLE_DEVICES when set, else lease one free GPU with a file lock.

Snakemake's ``gpu`` resource only counts jobs and never names an index, so each job takes a
non-blocking ``flock`` on ``<lock dir>/gpu<i>.slot<j>.lock`` and holds it until the process exits.
``gpu_slots`` jobs may share a GPU: one job training a small network keeps an H100 busy only part of
the time, its own CPU thread being the bottleneck (benchmarks/gpu_training.py --concurrent).
On a GPU the job runs deterministic kernels only, so that a resumed job ends bit for bit where an
uninterrupted one does (cuDNN's default backward convolutions accumulate with atomics).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from .registry import ConfigError

_held_locks: list = []  # keep lock files open for the life of the process

# mallopt parameters from glibc's malloc.h, and glibc's ceiling for the mmap threshold on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int


def keep_freed_host_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of handing them back to the kernel.

    By default glibc maps every block above its (adaptive) mmap threshold freshly and unmaps it when
    freed, and returns the top of its heap to the kernel beyond 128 KiB. A training step allocates and
    frees hundreds of activation and gradient tensors of megabytes each, so a step could page-fault
    its memory in again: about 20,000 faults (the kernel zeroing 80 MB) per step of a plain training
    loop of the stand-alone C=16 NB201 network at batch 64, 4-10 % of its time on the 2-core
    development machine; how many depends on what the process freed before (docs/PERFORMANCE.md).
    With the threshold at its ceiling and trimming off, a step faults 6-10x less (tests/test_devices.py);
    the process keeps its peak heap, which a training job reaches in its first step anyway.
    Returns False, changing nothing, where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def lock_dir() -> Path:
    return Path(os.environ.get("NAS_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "nas-gpu-locks"))


def _lease_gpu(count: int, slots: int = 1, poll_seconds: float = 2.0) -> int:
    """Index of a GPU with a free slot, waiting while every slot is held; slot 0 of every GPU goes first."""
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited = 0.0
    while True:
        for slot in range(slots):
            for index in random.sample(range(count), count):
                handle = open(folder / f"gpu{index}.slot{slot}.lock", "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                _held_locks.append(handle)
                return index
        if waited == 0.0 or int(waited) % 60 < poll_seconds:
            print(f"[nas] all {count} GPUs x {slots} slot(s) are leased by other jobs; waiting", file=sys.stderr,
                  flush=True)
        pause = poll_seconds * (0.5 + random.random())
        time.sleep(pause)
        waited += pause


def use_deterministic_cuda_kernels() -> None:
    """Make every CUDA kernel of this process deterministic; an op that has no such kernel raises.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when its first handle is created, i.e. before the first
    matrix product, which is why this runs before any tensor reaches the device. Filling fresh
    allocations with NaN (PyTorch's guard against reads of uninitialised memory) is switched off: no
    op of ours reads memory it has not written, and the fill is one extra kernel per new tensor.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def select_device(choice: str, gpu_slots: int = 1) -> torch.device:
    """The job's device for config key ``device`` (auto, cpu or cuda); on a GPU, deterministic kernels only.

    Without ``CUDA_VISIBLE_DEVICES`` the job leases one of ``gpu_slots`` slots of some GPU.
    """
    device = _pick_device(choice, gpu_slots)
    if device.type == "cuda":
        use_deterministic_cuda_kernels()
    return device


def _pick_device(choice: str, gpu_slots: int) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise ConfigError("config key 'device': 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    if not has_cuda:
        return torch.device("cpu")
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", 0)
    return torch.device("cuda", _lease_gpu(torch.cuda.device_count(), gpu_slots))

"""Helpers the speed benchmarks share: interleaved timing, medians, the machine line and the markdown table.

Timings on a shared 2-core machine drift with whatever else runs, so every benchmark alternates the
contenders (ours, peer, ours, peer, ...) and reports medians: a burst of load then hits both sides
instead of whichever happened to run during it.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to the platform string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1-minute load average: other work on a small machine slows multi-threaded runs a lot."""
    try:
        with open("/proc/loadavg") as handle:
            return handle.read().split()[0]
    except OSError:
        return "unknown"


def host_speed(threads: int = 2) -> float:
    """GFLOP/s of one fixed convolution (3x3, 16 -> 16 channels, 64 x 32 x 32, channels-last, forward).

    A virtual machine's speed moves with its neighbours' load, which the load average inside it does
    not show; this figure does (about 150 on this project's machine when its host is quiet), so that
    absolute times from different runs can be told apart from host slow-downs.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(64, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):
            conv(x)
        seconds = median([time_call(lambda: conv(x)) for _ in range(15)])
    torch.set_num_threads(previous)
    return 2 * 64 * 32 * 32 * 16 * 16 * 9 / seconds / 1e9


def machine_line(threads: int) -> str:
    """One line naming what the figures were measured on, how busy it and its host were, and when."""
    return (f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
            f"{threads} torch thread(s), python {platform.python_version()}, load average {load_average()} "
            f"at start, host speed {host_speed():.0f} GFLOP/s (conv probe); "
            f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")


def set_threads(threads: int) -> None:
    """Use exactly ``threads`` intra-op threads for both contenders (the main process's pool)."""
    torch.set_num_threads(threads)


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synchronised(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn``, then (on a GPU) a device synchronisation, so that a host clock around it times the device's work."""
    if device.type != "cuda":
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize(device)

    return run


def interleaved(contenders: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> list[list[float]]:
    """Seconds per call of each contender, ``repeats`` rounds of one call each in turn after ``warmup`` rounds.

    Warm-up rounds are discarded: the first calls pay for allocator growth, oneDNN kernel selection and
    (for data loaders) worker start-up.
    """
    for _ in range(warmup):
        for fn in contenders:
            fn()
    times: list[list[float]] = [[] for _ in contenders]
    for _ in range(repeats):
        for slot, fn in enumerate(contenders):
            times[slot].append(time_call(fn))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """The range of the repetitions relative to their median, e.g. '±12 %', to show how noisy a row was."""
    mid = median(values)
    if mid == 0 or len(values) < 2:
        return ""
    return f"±{100.0 * (max(values) - min(values)) / (2 * mid):.0f} %"


@dataclass
class Row:
    """One line of the results table; ``ours``/``peer`` are display strings, ``ratio`` is ours' speed-up.

    ``judged``: whether the target applies to this row (not to a diagnostic row such as a ceiling).
    """

    benchmark: str
    ours: str
    peer: str
    ratio: float | None = None
    note: str = ""
    judged: bool = True


def markdown_table(rows: Sequence[Row], peer_name: str, target: float | None = None) -> str:
    """The results as a markdown table; with ``target`` each ratio is marked as meeting it or not."""
    lines = [f"| benchmark | ours | {peer_name} | ratio ours-speedup |", "|---|---|---|---|"]
    for row in rows:
        if row.ratio is None:
            ratio = row.note or "n/a"
        else:
            ratio = f"{row.ratio:.2f}x"
            if target is not None and row.judged:
                ratio += " (meets target)" if row.ratio >= target else f" (below {target:g}x target)"
            if row.note:
                ratio += f"; {row.note}"
        lines.append(f"| {row.benchmark} | {row.ours} | {row.peer} | {ratio} |")
    return "\n".join(lines)

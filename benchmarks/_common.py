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


def machine_line(threads: int) -> str:
    """One line naming what the figures were measured on, how busy it was at the start, and when."""
    return (f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
            f"{threads} torch thread(s), python {platform.python_version()}, load average {load_average()} "
            f"at start; {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")


def set_threads(threads: int) -> None:
    """Use exactly ``threads`` intra-op threads for both contenders (the main process's pool)."""
    torch.set_num_threads(threads)


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
    """One line of the results table; ``ours``/``peer`` are display strings, ``ratio`` is ours' speed-up."""

    benchmark: str
    ours: str
    peer: str
    ratio: float | None = None
    note: str = ""


def markdown_table(rows: Sequence[Row], peer_name: str, target: float | None = None) -> str:
    """The results as a markdown table; with ``target`` each ratio is marked as meeting it or not."""
    lines = [f"| benchmark | ours | {peer_name} | ratio ours-speedup |", "|---|---|---|---|"]
    for row in rows:
        if row.ratio is None:
            ratio = row.note or "n/a"
        else:
            ratio = f"{row.ratio:.2f}x"
            if target is not None:
                ratio += " (meets target)" if row.ratio >= target else f" (below {target:g}x target)"
            if row.note:
                ratio += f"; {row.note}"
        lines.append(f"| {row.benchmark} | {row.ours} | {row.peer} | {ratio} |")
    return "\n".join(lines)

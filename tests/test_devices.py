"""GPU leasing: concurrent jobs get distinct GPU slots from per-slot file locks."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

LEASE = textwrap.dedent("""
    import sys, time
    from nas.devices import _lease_gpu
    print(_lease_gpu(int(sys.argv[1]), int(sys.argv[3]), poll_seconds=0.1), flush=True)
    time.sleep(float(sys.argv[2]))
""")


@pytest.mark.parametrize("gpus,slots,expected", [(2, 1, [0, 1]), (1, 2, [0, 0]), (2, 2, [0, 0, 1, 1])])
def test_concurrent_jobs_lease_distinct_gpu_slots(tmp_path, monkeypatch, gpus, slots, expected):
    monkeypatch.setenv("NAS_GPU_LOCK_DIR", str(tmp_path))
    args = [str(gpus), "4", str(slots)]
    holders = [subprocess.Popen([sys.executable, "-c", LEASE, *args], stdout=subprocess.PIPE, text=True)
               for _ in range(gpus * slots)]
    leased = sorted(int(p.stdout.readline()) for p in holders)
    assert leased == expected  # every slot of every GPU, none twice
    all_leased_at = time.monotonic()
    # one more job waits until a slot is free again (the holders keep theirs for 4 s)
    waiter = subprocess.Popen([sys.executable, "-c", LEASE, str(gpus), "0", str(slots)], stdout=subprocess.PIPE,
                              text=True)
    assert int(waiter.stdout.readline()) in range(gpus)
    assert time.monotonic() - all_leased_at > 3.0, "a job got a GPU slot while every slot was leased"
    for p in [*holders, waiter]:
        assert p.wait(timeout=30) == 0


def test_cpu_is_chosen_without_cuda():
    import torch

    from nas.devices import select_device

    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")

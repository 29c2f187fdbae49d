"""GPU leasing: concurrent jobs get distinct GPU indices from per-GPU file locks."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

LEASE = textwrap.dedent("""
    import sys, time
    from nas.devices import _lease_gpu
    print(_lease_gpu(int(sys.argv[1]), poll_seconds=0.1), flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_concurrent_jobs_lease_distinct_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_GPU_LOCK_DIR", str(tmp_path))
    holders = [subprocess.Popen([sys.executable, "-c", LEASE, "2", "4"], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    leased = sorted(int(p.stdout.readline()) for p in holders)
    assert leased == [0, 1]
    both_leased_at = time.monotonic()
    # a third job waits until one of the two GPUs is free again (the holders keep theirs for 4 s)
    waiter = subprocess.Popen([sys.executable, "-c", LEASE, "2", "0"], stdout=subprocess.PIPE, text=True)
    assert int(waiter.stdout.readline()) in (0, 1)
    assert time.monotonic() - both_leased_at > 3.0, "the third job got a GPU while both were leased"
    for p in [*holders, waiter]:
        assert p.wait(timeout=30) == 0


def test_cpu_is_chosen_without_cuda():
    import torch

    from nas.devices import select_device

    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")

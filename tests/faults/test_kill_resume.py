"""A job killed with SIGKILL mid-training resumes from its last checkpoint to the very same metrics."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from jobs import arch_index, job_env, nas, read_rows, runs, wait_for_epoch, write_config

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_metrics(tmp_path):
    cfg = write_config(tmp_path, **{"train.epochs": 4})
    nas("train", "--config", str(cfg), "--arch", ARCH, "--out", str(tmp_path / "whole"))
    whole = read_rows(next((tmp_path / "whole").glob("arch-*/metrics.csv")))

    args = [sys.executable, "-m", "nas", "train", "--config", str(cfg), "--arch", ARCH, "--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(args, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arch_dir = tmp_path / "cut" / f"arch-{arch_index(ARCH):05d}"
    wait_for_epoch(arch_dir / "metrics.csv", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "summary.json").exists() and not (arch_dir / "summary.json").exists()
    assert not list(arch_dir.glob("*.tmp"))
    killed_epochs = len(read_rows(arch_dir / "metrics.csv"))
    assert killed_epochs < 4

    resumed = nas("train", "--config", str(cfg), "--arch", ARCH, "--out", str(tmp_path / "cut"))
    assert "resuming after epoch" in resumed.stdout
    assert read_rows(arch_dir / "metrics.csv") == whole  # every logged figure identical, to the last digit
    statuses = sorted(r.info.status for r in runs(tmp_path))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]  # the killed attempt is not left RUNNING

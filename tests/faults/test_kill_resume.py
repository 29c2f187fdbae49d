"""A job killed with SIGKILL mid-training resumes from its last checkpoint to the very same metrics."""
from __future__ import annotations

import json
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


@pytest.mark.slow
def test_a_shard_killed_before_confirming_a_finished_training_logs_it_again(tmp_path):
    """A shard confirms each training's end while training the next; killed before that, the re-run
    logs the finished training again (no retraining) and marks its first run KILLED, though the store
    had taken its end: no training is left with two FINISHED runs."""
    other = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    cfg = write_config(tmp_path, **{"train.epochs": 4})
    shard = ["--arch", ARCH, "--arch", other]
    nas("train", "--config", str(cfg), *shard, "--out", str(tmp_path / "whole"))

    args = [sys.executable, "-m", "nas", "train", "--config", str(cfg), *shard, "--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(args, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, second = (tmp_path / "cut" / f"arch-{arch_index(a):05d}" for a in (ARCH, other))
    wait_for_epoch(second / "metrics.csv", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_rows(first / "metrics.csv")) == 4 and (first / ".mlflow_run_train.json").exists()

    resumed = nas("train", "--config", str(cfg), *shard, "--out", str(tmp_path / "cut"))
    assert "resuming after epoch 4" in resumed.stdout  # the first training: nothing left to train
    for arch_dir in (first, second):
        assert read_rows(arch_dir / "metrics.csv") == read_rows(tmp_path / "whole" / arch_dir.name / "metrics.csv")
        summary = json.loads((arch_dir / "summary.json").read_text())
        assert summary["tracked"] is True and not (arch_dir / ".mlflow_run_train.json").exists()
    statuses = sorted(r.info.status for r in runs(tmp_path))
    assert statuses == ["FINISHED"] * 4 + ["KILLED"] * 2

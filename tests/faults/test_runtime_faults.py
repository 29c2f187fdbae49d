"""Faults during a job: NaN loss, a full disk, SIGTERM; and determinism of a re-run.

Each failure must end the job's MLflow run FAILED, say what happened, exit non-zero, and leave no
output that a later stage could take as complete.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from jobs import BEST_CELL, arch_index, job_env, nas, read_rows, runs, wait_for_epoch, write_config
from nas.cli import main


def _statuses(folder) -> list[str]:
    return sorted(r.info.status for r in runs(folder))


def test_nan_loss_fails_the_run(tmp_path):
    cfg = write_config(tmp_path, **{"train.lr": 1.0e30, "train.grad_clip": None, "train.epochs": 1})
    result = nas("train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(tmp_path / "nan"), check=False)
    assert result.returncode == 1
    assert "loss became nan" in result.stderr.lower() or "loss became inf" in result.stderr.lower()
    assert _statuses(tmp_path) == ["FAILED"]
    assert not list((tmp_path / "nan").rglob("summary.json"))


def test_a_full_disk_fails_the_run_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch, capsys):
    """A write error of the checkpoint (what a full disk raises) ends the run FAILED with exit 1."""
    import nas.io

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real_write = nas.io.os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, payload):
            self.handle.write(payload[: len(payload) // 2])  # part of it lands, as on a real full disk
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_write(fd, mode, *args, **kwargs)
        return FullDisk(handle) if "b" in mode and fdopen.armed else handle

    fdopen.armed = False
    monkeypatch.setattr(nas.io.os, "fdopen", fdopen)
    import nas.train

    real_save = nas.train.atomic_torch_save

    def save(obj, path):  # only the checkpoint write hits the full disk
        fdopen.armed = True
        try:
            real_save(obj, path)
        finally:
            fdopen.armed = False

    monkeypatch.setattr(nas.train, "atomic_torch_save", save)
    cfg = write_config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(tmp_path / "job")])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "No space left on device" in stderr and "checkpoint.pt" in stderr
    assert _statuses(tmp_path) == ["FAILED"]
    arch_dir = tmp_path / "job" / f"arch-{arch_index(BEST_CELL):05d}"
    assert not (arch_dir / "checkpoint.pt").exists() and not list(arch_dir.glob("*.tmp"))
    assert not list((tmp_path / "job").rglob("summary.json"))


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [False, True], ids=["job", "process-group"])
def test_sigterm_ends_the_run_failed(tmp_path, whole_group):
    """Also when the signal reaches the job's tracking courier too (a scheduler or Ctrl-C signals the group)."""
    cfg = write_config(tmp_path, **{"train.epochs": 30})
    proc = subprocess.Popen([sys.executable, "-m", "nas", "train", "--config", str(cfg), "--arch", BEST_CELL,
                             "--out", str(tmp_path / "t")], env=job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=whole_group)
    wait_for_epoch(tmp_path / "t" / f"arch-{arch_index(BEST_CELL):05d}" / "metrics.csv", proc)
    if whole_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert _statuses(tmp_path) == ["FAILED"]
    assert not (tmp_path / "t" / "summary.json").exists()


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    cfg = write_config(tmp_path, **{"train.epochs": 1})
    arch = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|"
    for name in ("a", "b"):
        nas("train", "--config", str(cfg), "--arch", arch, "task.name=rot", "--out", str(tmp_path / name))
    a, b = (read_rows(next((tmp_path / name).glob("arch-*/metrics.csv"))) for name in ("a", "b"))
    assert a == b  # every figure of every epoch, to the last digit
    assert read_rows(tmp_path / "a" / "results.csv")[0]["mlflow_run_id"] != read_rows(tmp_path / "b" / "results.csv")[0]["mlflow_run_id"]

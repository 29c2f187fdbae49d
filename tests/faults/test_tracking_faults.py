"""The tracking store failing: silent at start (fail fast), gone mid-run (finish, journal, sync later)."""
from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from jobs import BEST_CELL, arch_index, read_rows, runs, write_config
from nas.cli import main


def test_a_silent_store_fails_the_job_within_the_connect_timeout(tmp_path, monkeypatch, capsys):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        cfg = write_config(tmp_path, **{"tracking.uri": uri, "tracking.connect_timeout_s": 1})
        started = time.time()
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(tmp_path / "job")])
        elapsed = time.time() - started
    assert exit_info.value.code == 3
    assert f"tracking store '{uri}' did not answer within 1 s" in capsys.readouterr().err
    assert elapsed < 5
    assert not (tmp_path / "job").exists()  # nothing was started


def _lose_the_courier_after_first_epoch(monkeypatch) -> None:
    """SIGKILL the job's tracking courier right after the job hands it the first epoch's metrics.

    From the job's side this is the store going away: every call it has not confirmed, and every
    later one, fails. (The courier's own handling of a failing store is tested in test_courier.py.)
    """
    import nas.tracking

    real_log_metrics = nas.tracking.TrackedRun.log_metrics

    def log_metrics(run, metrics, step):
        real_log_metrics(run, metrics, step)
        if run.courier.alive:
            run.courier.process.send_signal(signal.SIGKILL)
            run.courier.process.wait()

    monkeypatch.setattr(nas.tracking.TrackedRun, "log_metrics", log_metrics)


def test_a_store_lost_mid_run_is_completed_by_tracking_sync(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = write_config(tmp_path, **{"train.epochs": 3})
    _lose_the_courier_after_first_epoch(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(tmp_path / "job")])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "journals its tracking calls" in capsys.readouterr().out
    monkeypatch.undo()

    arch_dir = tmp_path / "job" / f"arch-{arch_index(BEST_CELL):05d}"
    summary = json.loads((arch_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["tracked"] is False
    assert "tracking courier" in summary["tracking_error"] and "exited" in summary["tracking_error"]
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["tracked"] is False
    (run,) = runs(tmp_path)
    assert run.info.status == "RUNNING"

    with pytest.raises(SystemExit) as exit_info:
        main(["tracking-sync", str(tmp_path / "job")])
    assert exit_info.value.code == 0
    assert "1 runs completed" in capsys.readouterr().out
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    local = read_rows(arch_dir / "metrics.csv")
    for key in ("train_loss", "eval_acc", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(int(r["epoch"]), float(r[key])) for r in local]
    assert "summary.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert json.loads((arch_dir / "summary.json").read_text())["tracked"] is True
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["tracked"] is True
    assert not list(arch_dir.glob(".tracking/*.pending.json"))

    with pytest.raises(SystemExit):  # a second sync has nothing left to send
        main(["tracking-sync", str(tmp_path / "job")])
    assert "0 runs completed" in capsys.readouterr().out


def test_sync_to_an_unreachable_store_keeps_the_journal(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = write_config(tmp_path, **{"train.epochs": 1})
    _lose_the_courier_after_first_epoch(monkeypatch)
    with pytest.raises(SystemExit):
        main(["train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(tmp_path / "job")])
    monkeypatch.undo()
    capsys.readouterr()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["tracking-sync", str(tmp_path / "job"), "--uri", f"http://127.0.0.1:{port}"])
    assert exit_info.value.code == 3
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().err
    assert list((tmp_path / "job").rglob(".tracking/*.pending.json"))

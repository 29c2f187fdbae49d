"""The CLI stages end to end on the embedded data: summaries, MLflow runs, kill-and-resume, NaN, determinism."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TINY = {
    "threads": 1,
    "progress": False,
    "study": {"name": "tiny"},
    "space": {"channels": 4, "cells_per_stage": 1},
    "dataset": {"limit": 400, "image_size": 12},
    "supernet": {"epochs": 2, "batch_size": 50, "lr": 0.05},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.05},
    "sample": {"num_archs": 4},
    "score": {"bn_recal_batches": 2, "batch_size": 100},
    "search": {"population": 6, "parents": 3, "mutations": 2, "crossovers": 2, "generations": 2, "topk": 2},
}


def write_config(folder: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["results_dir"] = str(folder / "results")
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def nas(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    run_env.update(env or {})
    result = subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, env=run_env)
    if check and result.returncode != 0:
        raise AssertionError(f"nas {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def runs(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow
def test_pipeline_rand_supernet_score_search_train(tmp_path):
    cfg = write_config(tmp_path)
    info = tmp_path / "results" / "tracking.json"
    nas("tracking-init", "--config", str(cfg), "--out", str(info))
    common = ["--config", str(cfg), "--tracking-info", str(info)]
    nas("sample", *common, "--out", str(tmp_path / "sample"))
    archs = json.loads((tmp_path / "sample" / "archs.json").read_text())["archs"]
    assert len(archs) == 4 and len({a["index"] for a in archs}) == 4

    nas("train-supernet", *common, "task.name=rand", "--out", str(tmp_path / "sn"), "--tag", "rule=test")
    for name in ("weights_init.pt", "weights_final.pt", "metrics.csv", "summary.json"):
        assert (tmp_path / "sn" / name).is_file(), name
    assert len(read_rows(tmp_path / "sn" / "metrics.csv")) == 2

    nas("score", *common, "task.name=rand", "--supernet", str(tmp_path / "sn"),
        "--archs", str(tmp_path / "sample" / "archs.json"), "--out", str(tmp_path / "score"))
    scores = read_rows(tmp_path / "score" / "scores.csv")
    assert [int(r["index"]) for r in scores] == [a["index"] for a in archs]
    assert all(0.0 < float(r["angle"]) < 3.1416 for r in scores)
    assert all(0.0 <= float(r["supernet_acc"]) <= 100.0 for r in scores)

    nas("search", *common, "task.name=rand", "search.fitness=angle", "--supernet", str(tmp_path / "sn"),
        "--out", str(tmp_path / "search"))
    topk = json.loads((tmp_path / "search" / "topk.json").read_text())["archs"]
    trace = read_rows(tmp_path / "search" / "trace.csv")
    assert len(topk) == 2 and float(topk[0]["fitness"]) == max(float(r["fitness"]) for r in trace)

    nas("train", *common, "--archs", str(tmp_path / "search" / "topk.json"), "--top", "1",
        "--out", str(tmp_path / "train"))
    result = read_rows(tmp_path / "train" / "results.csv")
    assert len(result) == 1 and result[0]["arch"] == topk[0]["arch"]

    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text())
                 for name in ("sample", "sn", "score", "search", "train")}
    assert all(s["status"] == "complete" for s in summaries.values())
    found = {r.info.run_id: r for r in runs(tmp_path)}
    for name in ("sample", "sn", "score", "search"):
        run = found[summaries[name]["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == json.loads(info.read_text())["parent_run_id"]
        for tag in ("stage", "git_sha", "config_hash", "seed", "space"):
            assert tag in run.data.tags, (name, tag)
    train_run = found[result[0]["mlflow_run_id"]]
    assert train_run.info.status == "FINISHED"
    assert train_run.data.tags["arch"] == topk[0]["arch"]
    assert train_run.data.tags["task"] == "cls" and train_run.data.tags["dataset"] == "mnist5k"
    sn_run = found[summaries["sn"]["mlflow_run_id"]]
    assert sn_run.data.tags["rule"] == "test" and sn_run.data.params["supernet.epochs"] == "2"


def _wait_for_epoch(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if path.is_file() and len(read_rows(path)) >= 1:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no epoch finished in time")


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_metrics(tmp_path):
    cfg = write_config(tmp_path, **{"train.epochs": 4})
    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    nas("train", "--config", str(cfg), "--arch", arch, "--out", str(tmp_path / "whole"))
    whole = read_rows(next((tmp_path / "whole").glob("arch-*/metrics.csv")))

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, "-m", "nas", "train", "--config", str(cfg), "--arch", arch, "--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "arch-{:05d}".format(int(read_rows(tmp_path / "whole" / "results.csv")[0]["index"])) / "metrics.csv"
    _wait_for_epoch(metrics, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "results.csv").exists()
    killed_epochs = len(read_rows(metrics))
    assert killed_epochs < 4

    resumed = nas("train", "--config", str(cfg), "--arch", arch, "--out", str(tmp_path / "cut"))
    assert "resuming after epoch" in resumed.stdout
    cut = read_rows(metrics)
    assert len(cut) == 4
    for a, b in zip(whole, cut):
        assert a == b  # every logged figure identical, to the last digit
    statuses = sorted(r.info.status for r in runs(tmp_path))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]


def test_nan_loss_fails_with_a_clear_message(tmp_path):
    cfg = write_config(tmp_path, **{"train.lr": 1.0e30, "train.grad_clip": None, "train.epochs": 1})
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    result = nas("train", "--config", str(cfg), "--arch", arch, "--out", str(tmp_path / "nan"), check=False)
    assert result.returncode == 1
    assert "loss became nan" in result.stderr.lower() or "loss became inf" in result.stderr.lower()
    assert [r.info.status for r in runs(tmp_path)] == ["FAILED"]
    assert not (tmp_path / "nan" / "results.csv").exists()


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = write_config(tmp_path, **{"train.epochs": 1})
    arch = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|"
    for name in ("a", "b"):
        nas("train", "--config", str(cfg), "--arch", arch, "task.name=rot", "--out", str(tmp_path / name))
    a = read_rows(tmp_path / "a" / "results.csv")[0]
    b = read_rows(tmp_path / "b" / "results.csv")[0]
    assert a["eval_acc_final"] == b["eval_acc_final"] and a["train_loss_final"] == b["train_loss_final"]
    assert a["mlflow_run_id"] != b["mlflow_run_id"]


@pytest.mark.parametrize("args, message", [
    (["task.name=col"], "task 'col' cannot run on dataset 'mnist5k'"),
    (["task.name=nope"], "'task.name': 'nope' is not allowed"),
    (["train.epochz=1"], "unknown config key 'train.epochz'"),
    (["--arch", "|bogus~0|"], "invalid nb201 cell string"),
    (["--archs", "/does/not/exist.json"], "does not exist"),
    (["--shard", "3/2", "--arch", "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "--shard '3/2'"),
])
def test_bad_input_is_refused_before_work(tmp_path, args, message):
    cfg = write_config(tmp_path)
    if "--arch" not in args and "--archs" not in args:
        args = [*args, "--arch", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"]
    result = nas("train", "--config", str(cfg), *args, "--out", str(tmp_path / "bad"), check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "results" / "mlflow.db").exists()  # refused before any tracking or training


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    cfg = write_config(tmp_path, **{"train.epochs": 1})
    first = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    nas("train", "--config", str(cfg), "--arch", first, "--out", str(tmp_path / "a"))
    arch_dir = next((tmp_path / "a").glob("arch-*"))
    # a checkpoint from a different job placed where this job would resume
    other = tmp_path / "b" / arch_dir.name
    other.mkdir(parents=True)
    (tmp_path / "b" / ".job_state.json").write_text('{"state": "running"}')
    (other / "checkpoint.pt").write_bytes((arch_dir / "checkpoint.pt").read_bytes())
    result = nas("train", "--config", str(cfg), "train.lr=0.01", "--arch", first, "--out", str(tmp_path / "b"), check=False)
    assert result.returncode == 2 and "belongs to another job" in result.stderr


@pytest.mark.slow
def test_sigterm_ends_the_run_failed(tmp_path):
    cfg = write_config(tmp_path, **{"train.epochs": 30})
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "train", "--config", str(cfg), "--arch", arch,
                             "--out", str(tmp_path / "t")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "t" / "arch-{:05d}".format(_index_of(arch)) / "metrics.csv"
    _wait_for_epoch(metrics, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert [r.info.status for r in runs(tmp_path)] == ["FAILED"]


def _index_of(arch: str) -> int:
    from nas.config import load_config
    from nas.spaces import build_space

    space = build_space(load_config(None)["space"])
    return space.to_index(space.from_str(arch))

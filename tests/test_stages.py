"""The CLI stages end to end on the embedded data: summaries, MLflow runs and their tags.

Interruptions, bad input, NaN, determinism and tracking failures are in tests/faults/.
"""
from __future__ import annotations

import json

import pytest

from jobs import nas, read_rows, runs, write_config


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
    # in shards: the same rows, split in order (2 + 2 of the 4 cells)
    shards = []
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"score{shard[0]}"
        nas("score", *common, "task.name=rand", "--supernet", str(tmp_path / "sn"),
            "--archs", str(tmp_path / "sample" / "archs.json"), "--shard", shard, "--out", str(out))
        shards.append(read_rows(out / "scores.csv"))
        assert json.loads((out / "summary.json").read_text())["inputs"]["shard"] == shard
    assert [len(rows) for rows in shards] == [2, 2] and shards[0] + shards[1] == scores

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
    assert all(s["status"] == "complete" and s["tracked"] for s in summaries.values())
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

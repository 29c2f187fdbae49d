"""The Snakemake workflow through its Python API, in a temporary folder: a tiny study end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_STUDY = {
    "threads": 1,
    "progress": False,
    "study": {"name": "tiny", "tasks": ["cls", "rot", "rand"], "supernet_tasks": ["rand"],
              "fitnesses": ["angle", "accuracy"], "seeds": [0], "shard_size": 4, "bootstrap": 50},
    "sample": {"num_archs": 6},
    "space": {"channels": 4, "cells_per_stage": 1},
    "dataset": {"limit": 300, "image_size": 12},
    "supernet": {"epochs": 1, "batch_size": 50, "lr": 0.05},
    "train": {"epochs": 1, "batch_size": 50, "lr": 0.05},
    "score": {"bn_recal_batches": 1, "batch_size": 100},
    "search": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 2, "topk": 2},
}


def run_workflow(workdir: Path, config: dict, targets=("all_figures",), dryrun: bool = False):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    configfile = workdir / "study.yaml"
    configfile.write_text(yaml.safe_dump(config))
    with SnakemakeApi(OutputSettings(quiet=None, show_failed_logs=True)) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=2, resources={"gpu": 2}),
            config_settings=ConfigSettings(configfiles=[configfile]),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
        )
        dag = workflow.dag(DAGSettings(targets=set(targets)))
        dag.execute_workflow(executor="local", pseudo_executor="dryrun" if dryrun else None)


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = dict(TINY_STUDY, results_dir=str(tmp_path / "results"))
    run_workflow(tmp_path, config)
    study = tmp_path / "results" / "tiny"
    standalone = pd.read_csv(study / "tables" / "standalone.csv")
    assert len(standalone) == 6 * 3  # architectures x tasks x seeds
    assert set(standalone.task) == {"cls", "rot", "rand"}
    proxies = pd.read_csv(study / "tables" / "proxies.csv")
    assert len(proxies) == 6 and proxies.angle.gt(0).all()
    search = pd.read_csv(study / "tables" / "search.csv")
    assert sorted(search.fitness) == ["accuracy", "angle"] and set(search.retrain_task) == {"cls"}
    correlations = pd.read_csv(study / "correlations" / "correlations.csv")
    assert {"standalone:rot", "standalone:rand", "angle:rand", "supernet_acc:rand", "params", "flops"} <= set(
        correlations.proxy)
    assert {"spearman", "kendall"} == set(correlations.method)
    for column in ("coef", "ci_low", "ci_high", "n", "seeds"):
        assert column in correlations.columns
    figures = json.loads((study / "figures" / "summary.json").read_text())["outputs"]["files"]
    names = {Path(f).name for f in figures}
    for stem in ("pretext_vs_reference", "rank_correlation_heatmap", "angle_vs_accuracy", "best_of_m",
                 "search_outcomes"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (study / "figures" / f"{stem}.png").stat().st_size > 1000

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("stage") != "study"]
    assert jobs and all(r.info.status == "FINISHED" for r in jobs)
    assert all("rule" in r.data.tags and "mlflow.parentRunId" in r.data.tags for r in jobs)
    stages = {r.data.tags["stage"] for r in jobs}
    assert {"sample", "train-supernet", "score", "search", "train", "correlate", "figures"} <= stages


@pytest.mark.parametrize("change, message", [
    ({"study": {"tasks": ["cls", "col"]}}, "task 'col' cannot run on dataset 'mnist5k'"),
    ({"study": {"seeds": [0, 0]}}, "seeds"),
    ({"study": {"taks": ["cls"]}}, "taks"),
    ({"train": {"epochs": -1}}, "epochs"),
    ({"study": {"task_overrides": {"rot": {"train.lrr": 0.1}}}}, "train.lrr"),
    ({"study": {"spaces": ["nb101"]}, "space": {"name": "nb101"}}, "space 'nb101' has no supernet"),
    ({"study": {"spaces": ["darts"], "score_archs": "all"}, "space": {"name": "darts"}}, "too large to list"),
])
def test_malformed_study_is_rejected_before_any_job(tmp_path, monkeypatch, change, message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = json.loads(json.dumps(dict(TINY_STUDY, results_dir=str(tmp_path / "results"))))
    assert_refused_before_any_job(tmp_path, config, change, message)


def assert_refused_before_any_job(tmp_path: Path, config: dict, change: dict, message: str) -> None:
    """``config`` with each section of ``change`` updated fails to start, naming ``message``, before any job."""
    for section, values in change.items():
        config.setdefault(section, {}).update(values)
    with pytest.raises(Exception) as caught:
        run_workflow(tmp_path, config)
    assert message in str(caught.value)
    assert not (tmp_path / "results" / config["study"]["name"] / "tracking.json").exists()


def test_default_and_paper_configs_plan(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    studies = sorted((REPO / "configs" / "studies").glob("*.yaml"))
    assert len(studies) >= 9  # NB201 (3), DARTS and NB101 (3) and their CPU-scale twins (3)
    for path in [REPO / "configs" / "default.yaml", *studies]:
        config = yaml.safe_load(path.read_text())
        config["results_dir"] = str(tmp_path / "results")
        run_workflow(tmp_path, config, dryrun=True)


@pytest.mark.slow
def test_ground_truth_study_end_to_end(tmp_path, monkeypatch):
    """The packaged NB201 truth (the default source), scores in shards, the angle search's pick in the figure."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = json.loads(json.dumps(dict(TINY_STUDY, results_dir=str(tmp_path / "results"))))
    config["study"].update({"tasks": [], "supernet_tasks": ["rand"], "fitnesses": ["angle"], "zero_cost": True,
                            "proxy_shard_size": 3, "score_shard_size": 4})
    config["sample"] = {"num_archs": 6, "trainable_only": False}
    config["proxies"] = {"batch_size": 8, "names": ["params", "synflow", "snip", "naswot"]}
    run_workflow(tmp_path, config)
    study = tmp_path / "results" / "tiny"
    zero_cost = pd.read_csv(study / "tables" / "zero_cost.csv")
    assert len(zero_cost) == 6 and {"params", "synflow", "snip", "naswot"} <= set(zero_cost.columns)
    score = study / "score" / "nb201" / "mnist5k" / "rand" / "seed0"
    assert [len(pd.read_csv(score / f"shard{i}" / "scores.csv")) for i in (0, 1)] == [3, 3]
    archs = json.loads((study / "archs" / "nb201" / "archs.json").read_text())["archs"]
    assert sorted(pd.read_csv(study / "tables" / "proxies.csv")["index"]) == sorted(a["index"] for a in archs)
    out = study / "groundtruth" / "correlations"
    corr = pd.read_csv(out / "correlations.csv")
    assert {"params", "synflow", "snip", "naswot", "angle:rand", "supernet_acc:rand"} <= set(corr.proxy)
    assert {"spearman", "kendall", "kendall_rlnas", "top10_precision"} == set(corr.method)
    assert set(corr.truth) == {"cifar10_test_200ep", "cifar100_test_200ep", "imagenet16_test_200ep"}
    for name in ("proxies_vs_truth", "tau_per_proxy", "angle_vs_truth_mnist5k_rand_seed0"):
        for suffix in (".png", ".pdf"):
            assert (out / f"{name}{suffix}").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["inputs"]["searches"]) == 1  # the angle search whose pick the figure marks
    assert not (study / "figures").exists()  # no stand-alone tasks: no study figures were asked for


def plan(workdir: Path, config: dict) -> dict[str, int]:
    """Jobs per rule of a dry run (``snakemake -n --quiet rules``)."""
    configfile = workdir / "study.yaml"
    configfile.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                             "--configfile", str(configfile), "-n", "--quiet", "rules", "--cores", "2"],
                            capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                 if k != "MLFLOW_TRACKING_URI"})
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def test_every_cell_is_scored_in_shards_while_the_sample_trains(tmp_path):
    """study.score_archs: all (RLNAS cal_correlation.py) scores all 15,625 cells in parallel jobs; stand-alone
    training keeps the sampled list."""
    config = json.loads(json.dumps(dict(TINY_STUDY, results_dir=str(tmp_path / "results"))))
    config["study"].update({"fitnesses": ["angle"], "score_archs": "all", "score_shard_size": 4000})
    jobs = plan(tmp_path, config)
    assert jobs["score_shard"] == 4 and jobs["sample_all"] == 1  # ceil(15625 / 4000) on the one supernet
    assert jobs["train_shard"] == 2 * 3 and jobs["correlate_truth"] == 1  # 6 sampled cells in shards of 4, 3 tasks
    config["study"].update({"score_archs": "sampled", "score_shard_size": 4})
    jobs = plan(tmp_path, config)
    assert jobs["score_shard"] == 2 and "sample_all" not in jobs


def test_empty_grid_is_rejected(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = json.loads(json.dumps(dict(TINY_STUDY, results_dir=str(tmp_path / "results"))))
    config["study"].update({"tasks": [], "supernet_tasks": []})
    with pytest.raises(Exception, match="grid is empty"):
        run_workflow(tmp_path, config)


def test_missing_ground_truth_table_is_rejected_before_any_job(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = json.loads(json.dumps(dict(TINY_STUDY, results_dir=str(tmp_path / "results"))))
    config["ground_truth"] = {"source": "table", "path": str(tmp_path / "missing.csv"), "metrics": {"a": "b"},
                              "truth": "a"}
    with pytest.raises(Exception, match="missing.csv"):
        run_workflow(tmp_path, config)
    assert not (tmp_path / "results" / "tiny" / "tracking.json").exists()

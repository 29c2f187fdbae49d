"""Differentiable searches in the Snakemake workflow: the study configs plan, a tiny study runs end to end
(searches, retraining of the derived cells, tables, figures), and impossible searches are refused before any job."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import REPO, assert_refused_before_any_job, plan, run_workflow

TINY_DIFFERENTIABLE = {
    "threads": 1,
    "progress": False,
    "study": {"name": "tinyd", "tasks": [], "supernet_tasks": [], "fitnesses": [], "seeds": [0],
              "differentiable_methods": ["gdas", "darts_v1"], "differentiable_tasks": ["rot"],
              "retrain_derived": True},
    "space": {"channels": 4, "cells_per_stage": 1},
    "dataset": {"limit": 300, "image_size": 12},
    "differentiable": {"training": {"epochs": 2, "batch_size": 50, "lr": 0.05,
                                    "splits": {"train": 0.5, "valid": 0.0, "search": 0.5}, "eval_split": "search"}},
    "train": {"epochs": 1, "batch_size": 50, "lr": 0.05},
}

# jobs per rule of each study's plan: searches = spaces x datasets x tasks x seeds x methods
STUDY_PLANS = {
    "nb201_differentiable_gdas_cifar10.yaml": {"search_differentiable": 5 * 3},
    "nb201_differentiable_darts_cifar10.yaml": {"search_differentiable": 5 * 3 * 2},
    "nb201_differentiable_cpu.yaml": {"search_differentiable": 5 * 2 * 2},
    "unnas_search_darts_cifar10.yaml": {"search_differentiable": 4, "retrain_derived": 4},
    "unas_darts_cifar10.yaml": {"search_differentiable": 1, "retrain_derived": 1},
}


def tiny(tmp_path: Path, **study) -> dict:
    config = json.loads(json.dumps(dict(TINY_DIFFERENTIABLE, results_dir=str(tmp_path / "results"))))
    config["study"].update(study)
    return config


@pytest.mark.parametrize("name", sorted(STUDY_PLANS))
def test_differentiable_study_plans(tmp_path, name):
    config = yaml.safe_load((REPO / "configs" / "studies" / name).read_text())
    config["results_dir"] = str(tmp_path / "results")
    jobs = plan(tmp_path, config)
    for rule, count in STUDY_PLANS[name].items():
        assert jobs[rule] == count
    # a differentiable-only study runs nothing else: no sample, supernet, stand-alone shard or truth panel
    expected = {"tracking_init", "collect_differentiable", "figures_differentiable", "all_figures", *STUDY_PLANS[name]}
    assert set(jobs) - {"total"} == expected
    assert jobs["collect_differentiable"] == 1 and jobs["figures_differentiable"] == 1


@pytest.mark.slow
def test_tiny_differentiable_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_workflow(tmp_path, tiny(tmp_path))
    study = tmp_path / "results" / "tinyd"
    table = pd.read_csv(study / "tables" / "differentiable.csv")
    assert sorted(table.method) == ["darts_v1", "gdas"] and set(table.task) == {"rot"}
    assert table.derived_arch.str.startswith("|").all() and table.skip_share.between(0, 1).all()
    assert table.truth_cifar10_test_200ep.between(10, 95).all()  # the NB201 truth of each derived cell
    assert set(table.retrain_task) == {"cls"} and table.eval_acc_best.notna().all()
    assert table.search_run_id.notna().all() and table.retrain_run_id.notna().all()
    epochs = pd.read_csv(study / "tables" / "differentiable_epochs.csv")
    assert len(epochs) == 2 * 2 and {"arch", "skip_share", "edge_entropy_mean", "truth_cifar10_test_200ep"} <= set(
        epochs.columns)
    assert epochs.tau.notna().sum() == 2  # gdas's temperature, one per epoch
    out = study / "figures" / "differentiable"
    files = {Path(f).name for f in json.loads((out / "summary.json").read_text())["outputs"]["files"]}
    for stem in ("alphas_nb201_mnist5k_gdas_rot_seed0", "alphas_nb201_mnist5k_darts_v1_rot_seed0",
                 "derived_accuracy", "skip_share_over_epochs", "truth_over_epochs"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= files
        assert (out / f"{stem}.png").stat().st_size > 1000

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tinyd").experiment_id], max_results=100)
    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("stage"), []).append(run)
    assert len(by_stage["search-differentiable"]) == 2 and len(by_stage["train"]) == 2
    figures_run = by_stage["figures-differentiable"][0]
    logged = {a.path for a in client.list_artifacts(figures_run.info.run_id)}
    assert "derived_accuracy.png" in logged and "skip_share_over_epochs.pdf" in logged
    assert {r.data.tags["wildcard.method"] for r in by_stage["search-differentiable"]} == {"gdas", "darts_v1"}


@pytest.mark.parametrize("study, extra, message", [
    ({"differentiable_methods": ["unas"]}, {}, "'unas' cannot search space 'nb201'"),
    ({"spaces": ["nb101"]}, {"space": {"name": "nb101"}}, "cannot search space 'nb101'"),
    ({"differentiable_tasks": ["col"]}, {}, "task 'col' cannot run on dataset 'mnist5k'"),
    ({"differentiable_tasks": []}, {}, "'study.differentiable_tasks' is empty"),
    ({"differentiable_methods": [], "differentiable_tasks": []}, {}, "grid is empty"),
    ({}, {"differentiable": {"tau_min": 20.0}}, "tau_min 20.0 is above tau_max"),
])
def test_impossible_search_is_refused_before_any_job(tmp_path, monkeypatch, study, extra, message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert_refused_before_any_job(tmp_path, tiny(tmp_path, **study), extra, message)

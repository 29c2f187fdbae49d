"""Helpers for tests (and benchmarks/faults.py) that run real `nas` jobs on a tiny slice of the embedded data."""
from __future__ import annotations

import copy
import csv
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

# Seconds, not minutes: 400 digits at 12x12, a 4-channel one-cell network, two epochs.
TINY: dict[str, Any] = {
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
BEST_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def tiny_config(folder: Path, **changes: Any) -> dict[str, Any]:
    """TINY with results under ``folder`` and dotted-key ``changes`` applied."""
    cfg = copy.deepcopy(TINY)
    cfg["results_dir"] = str(folder / "results")
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def write_config(folder: Path, **changes: Any) -> Path:
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(folder, **changes)))
    return path


def job_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without a tracking URI (each test has its own store) plus ``env``."""
    run_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    run_env.update(env or {})
    return run_env


def nas(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, env=job_env(env))
    if check and result.returncode != 0:
        raise AssertionError(f"nas {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def runs(folder: Path, experiment: str = "tiny") -> list:
    """The MLflow runs of ``experiment`` in the SQLite store under ``folder``/results."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=5000) if found else []


def count_runs(db: Path) -> int:
    """Runs in an MLflow SQLite store, read directly (cheap, no MLflow import); 0 when there is no store."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        try:
            return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.OperationalError:  # a store whose tables were never created
            return 0


def wait_for_epoch(path: Path, proc: subprocess.Popen, epochs: int = 1, timeout: float = 180.0) -> None:
    """Block until the job's metrics.csv holds ``epochs`` rows."""
    start = time.time()
    while time.time() - start < timeout:
        if path.is_file() and len(read_rows(path)) >= epochs:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no epoch finished within {timeout:.0f} s")


def arch_index(arch: str) -> int:
    from nas.config import load_config
    from nas.spaces import build_space

    space = build_space(load_config(None)["space"])
    return space.to_index(space.from_str(arch))

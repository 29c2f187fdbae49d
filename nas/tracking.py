"""The one place that talks to MLflow.

Every stage is an MLflow run (experiment = study name), a child of the study's parent run when the
workflow created one with ``nas tracking-init``. Metrics are logged synchronously; a run ends
FINISHED or FAILED, also on SIGTERM/SIGINT; a run left RUNNING by a killed job is marked KILLED
when the job is re-run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .config import config_hash, flatten
from .io import atomic_write_json, read_json

PARAM_VALUE_LIMIT = 6000
BATCH_LIMIT = 100


def tracking_uri(cfg: dict[str, Any]) -> str:
    if cfg["tracking"]["uri"]:
        return cfg["tracking"]["uri"]
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(cfg['results_dir']).resolve() / 'mlflow.db')}"


def experiment_name(cfg: dict[str, Any]) -> str:
    return cfg["tracking"]["experiment"] or cfg["study"]["name"]


def artifact_root(cfg: dict[str, Any]) -> str:
    return (Path(cfg["results_dir"]).resolve() / "mlartifacts").as_uri()


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, cfg: dict[str, Any]) -> str:
    name = experiment_name(cfg)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root(cfg))


def init_store(cfg: dict[str, Any], out_file: str | Path) -> dict[str, Any]:
    """Create the store's schema, the study's experiment and its parent run, once, before any job."""
    uri = tracking_uri(cfg)
    client = _client(uri)
    experiment_id = ensure_experiment(client, cfg)
    parent = client.create_run(
        experiment_id,
        run_name=f"study-{cfg['study']['name']}",
        tags={"stage": "study", "study": cfg["study"]["name"], "config_hash": config_hash(cfg), "git_sha": git_sha()},
    )
    _log_params(client, parent.info.run_id, cfg)
    client.set_terminated(parent.info.run_id, "FINISHED")
    info = {"uri": uri, "experiment": experiment_name(cfg), "experiment_id": experiment_id,
            "parent_run_id": parent.info.run_id}
    atomic_write_json(out_file, info)
    return info


def _log_params(client, run_id: str, cfg: dict[str, Any]) -> None:
    from mlflow.entities import Param

    params = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in sorted(flatten(cfg).items())]
    for start in range(0, len(params), BATCH_LIMIT):
        client.log_batch(run_id, params=params[start:start + BATCH_LIMIT])


class TrackedRun:
    """One MLflow run; use as a context manager so that it always ends FINISHED or FAILED."""

    def __init__(self, cfg: dict[str, Any], stage: str, tags: dict[str, Any], out_dir: str | Path,
                 tracking_info: dict[str, Any] | None = None, run_name: str | None = None) -> None:
        self.cfg = cfg
        self.uri = tracking_info["uri"] if tracking_info else tracking_uri(cfg)
        self.client = _client(self.uri)
        self.out_dir = Path(out_dir)
        self.marker = self.out_dir / f".mlflow_run_{stage}.json"
        self._mark_stale_run_killed()
        experiment_id = tracking_info["experiment_id"] if tracking_info else ensure_experiment(self.client, cfg)
        all_tags = {"stage": stage, "study": cfg["study"]["name"], "git_sha": git_sha(),
                    "config_hash": config_hash(cfg), **{k: str(v) for k, v in tags.items() if v is not None}}
        if tracking_info and tracking_info.get("parent_run_id"):
            all_tags["mlflow.parentRunId"] = tracking_info["parent_run_id"]
        self.run_id = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
        atomic_write_json(self.marker, {"run_id": self.run_id, "uri": self.uri})
        _log_params(self.client, self.run_id, cfg)
        self._previous_handlers: dict[int, Any] = {}
        self.status: str | None = None

    def _mark_stale_run_killed(self) -> None:
        if not self.marker.exists():
            return
        try:
            stale = read_json(self.marker)["run_id"]
            if self.client.get_run(stale).info.status == "RUNNING":
                self.client.set_terminated(stale, "KILLED")
        except Exception as err:  # the old run may live in another store; never block a re-run on it
            print(f"[nas] could not mark the earlier run of {self.out_dir} as KILLED: {err}", flush=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(batch), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=batch[start:start + BATCH_LIMIT], synchronous=True)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        if self.status is None:
            self.client.set_terminated(self.run_id, status)
            self.status = status

    def __enter__(self) -> "TrackedRun":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, _raise_exit)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.end("FINISHED" if exc_type is None else "FAILED")
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)


def _raise_exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)

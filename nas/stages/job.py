"""What every job shares: its state and summary files, tables, tracking-run helpers, setup and inputs."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from ..config import config_hash, stage_dataset
from ..data import ImageData, load_dataset
from ..devices import keep_freed_host_memory, select_device
from ..io import atomic_write_json, atomic_write_text, read_json
from ..registry import ConfigError
from ..spaces import Arch, SearchSpace
from ..tasks import Task, build_task, check_task_on_dataset
from ..tracking import TrackedRun
from ..train import Trainer, seed_everything

SUMMARY = "summary.json"
JOB_STATE = ".job_state.json"
# What a job leaves in its output folder; a fresh (not resumed) run clears exactly these.
JOB_FILES = ("checkpoint.pt", "weights_init.pt", "weights_final.pt", "metrics.csv", SUMMARY, "results.csv",
             "scores.csv", "trace.csv", "topk.json", "alphas.csv", "derived.csv")


def begin_job(out_dir: Path) -> bool:
    """Mark ``out_dir`` as running; True when an earlier attempt did not finish, so the job resumes.

    A job whose last attempt completed (or that never ran) starts afresh: a re-run is a new run,
    while a killed or failed attempt is continued from its checkpoints.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / JOB_STATE
    resume = state.is_file() and read_json(state).get("state") == "running"
    for folder in [out_dir, *sorted(out_dir.glob("arch-*"))]:
        for partial in folder.glob(".*.tmp"):  # an atomic write cut short by a kill; never a complete file
            partial.unlink()
    if not resume:
        for folder in [out_dir, *sorted(out_dir.glob("arch-*"))]:
            for name in JOB_FILES:
                (folder / name).unlink(missing_ok=True)
        atomic_write_json(state, {"state": "running", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return resume


def end_job(out_dir: Path) -> None:
    atomic_write_json(out_dir / JOB_STATE, {"state": "complete", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_summary(out_dir: Path, stage: str, cfg: dict[str, Any], run: TrackedRun | None, started: float,
                  metrics: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
                  tracked: bool = True, confirm_later: bool = False) -> dict[str, Any]:
    """Write the job's summary and end its run FINISHED: the last act of every stage.

    ``tracked`` says whether everything the job logged reached the tracking store; a run that went
    offline mid-job is recorded here, so that ``nas tracking-sync`` can complete it later. The summary
    is logged as the run's artifact before the store has confirmed anything, then rewritten with the
    final word on tracking. With ``confirm_later`` the run's end is not waited for: the caller passes
    the returned summary to ``confirm_summary`` later (a shard does, while training the next
    architecture, so that it does not wait on the store once per architecture); until then the run's
    marker says that the summary is not final.
    """
    summary = {
        "stage": stage,
        "status": "complete",
        "metrics": metrics,
        "inputs": inputs,
        "outputs": outputs,
        "config_hash": config_hash(cfg),
        **(run.summary_fields(wait=False) if run else {"mlflow_run_id": None, "tracking_uri": None, "tracked": tracked}),
        "wall_seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out_dir / SUMMARY, summary)
    if run is not None:
        run.log_artifact(out_dir / SUMMARY)
        run.end("FINISHED", wait=not confirm_later)
        if confirm_later:
            return summary
        confirm_summary(out_dir, summary, run)
    end_job(out_dir)
    return summary


def confirm_summary(out_dir: Path, summary: dict[str, Any], run: TrackedRun) -> dict[str, Any]:
    """Wait for the store to confirm the run's calls, then write the summary with the final word on tracking."""
    summary.update(run.summary_fields())
    atomic_write_json(out_dir / SUMMARY, summary)
    run.forget_marker()
    return summary


def read_summary(folder: str | Path, stage: str) -> dict[str, Any]:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist: the {stage} stage has not completed in {str(folder)!r}")
    summary = read_json(path)
    if summary.get("stage") != stage or summary.get("status") != "complete":
        raise ConfigError(f"{str(path)!r} is not a completed {stage} summary (stage {summary.get('stage')!r})")
    return summary


def _setup(cfg: dict[str, Any]) -> torch.device:
    keep_freed_host_memory()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    seed_everything(cfg["seed"])
    return select_device(cfg["device"], cfg["gpu_slots"])


def _data_and_task(cfg: dict[str, Any], device: torch.device, section: str | None = None) -> tuple[ImageData, Task]:
    """The job's data and task; ``section`` (``supernet``, ``train``) names the stage whose splits the data takes."""
    check_task_on_dataset(cfg["task"]["name"], cfg["dataset"]["name"])
    data = load_dataset(stage_dataset(cfg, section) if section else cfg["dataset"])
    task = build_task(cfg["task"], data.info, cfg["seed"])
    return data.to(device), task


def _save_config(out_dir: Path, cfg: dict[str, Any]) -> None:
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))


def _tags(cfg: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"space": cfg["space"]["name"], "task": cfg["task"]["name"], "dataset": cfg["dataset"]["name"],
            "seed": cfg["seed"], **extra}


def _history_writer(path: Path, run: TrackedRun):
    history: list[dict[str, Any]] = []

    def on_epoch(record: dict[str, Any]) -> None:
        history.append(record)
        write_table(path, history)
        run.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])

    return on_epoch, history


def _resume_and_fit(trainer: Trainer, run: TrackedRun, metrics_csv: Path, checkpoint: dict[str, Any] | None,
                    enrich: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Resume from ``checkpoint`` if any and train; every epoch's record (``enrich``-ed, e.g. with a search's
    derived cell) goes to ``metrics_csv`` and the run, the resumed epochs' again."""
    write, history = _history_writer(metrics_csv, run)
    trainer.on_epoch = write if enrich is None else (lambda record: write(enrich(record)))
    on_epoch = trainer.on_epoch
    if trainer.resume(checkpoint):
        print(f"[nas] {trainer.label}: resuming after epoch {trainer.start_epoch} from {trainer.checkpoint}", flush=True)
        for record in trainer.history:  # the new run carries the whole curve
            on_epoch(record)
    return trainer.fit()


def read_archs(space: SearchSpace, path: str | Path) -> list[Arch]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"architecture file {str(file)!r} does not exist")
    try:
        content = read_json(file)
    except json.JSONDecodeError as err:
        raise ConfigError(f"architecture file {str(file)!r} is not valid JSON ({err})") from None
    if content.get("space") != space.name:
        raise ConfigError(f"architecture file {str(file)!r} is for space {content.get('space')!r}, not {space.name!r}")
    return [space.from_str(item["arch"]) for item in content["archs"]]


def _arch_rows(space: SearchSpace, archs: Iterable[Arch]) -> list[dict[str, Any]]:
    return [{"index": space.to_index(a), "arch": space.to_str(a)} for a in archs]


def shard_of(items: list[Any], shard: str | None) -> tuple[list[Any], int, int]:
    if not shard:
        return items, 0, 1
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {shard!r} must look like i/n with 0 <= i < n") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {shard!r} must look like i/n with 0 <= i < n")
    size = math.ceil(len(items) / count)
    return items[index * size:(index + 1) * size], index, count


def _read_optional(path: Path | None):
    import pandas as pd

    if path is None:
        return None
    frame = pd.read_csv(path)
    return frame if len(frame) else None

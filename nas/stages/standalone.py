"""Stand-alone training of single architectures (one or a shard of several), and their description."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ..data import ImageData
from ..io import read_json
from ..registry import ConfigError
from ..spaces import Arch, SearchSpace, build_space
from ..tasks import Task
from ..tracking import TrackedRun, unconfirmed_run_marker
from ..train import TaskModel, Trainer, load_checkpoint, seed_everything
from .job import (SUMMARY, _data_and_task, _resume_and_fit, _setup, _tags, begin_job, confirm_summary, read_archs,
                  shard_of, write_summary, write_table)


def _train_identity(cfg: dict[str, Any], space: SearchSpace, arch: Arch, data: ImageData) -> dict[str, Any]:
    """What a stand-alone training's checkpoint must match to be resumed."""
    return {"stage": "train", "space": cfg["space"], "arch": space.to_str(arch), "task": cfg["task"],
            "dataset": cfg["dataset"], "data": data.fingerprint, "seed": cfg["seed"], "training": cfg["train"]}


def _arch_dir(out_dir: Path, space: SearchSpace, arch: Arch) -> Path:
    return out_dir / f"arch-{space.to_index(arch):05d}"


def _finished_training(arch_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of this very training if an earlier attempt of the shard completed and confirmed it."""
    done = arch_dir / SUMMARY
    if done.is_file() and not unconfirmed_run_marker(arch_dir, "train").exists():
        previous = read_json(done)
        if previous.get("inputs", {}).get("identity") == identity:
            return previous
    return None


def _train_one(cfg: dict[str, Any], space: SearchSpace, arch: Arch, data: ImageData, task: Task, device: torch.device,
               arch_dir: Path, identity: dict[str, Any], checkpoint: dict[str, Any] | None,
               tracking_info: dict | None, tags: dict[str, str]) -> tuple[dict[str, Any], TrackedRun]:
    """Train one architecture of a shard; its summary is written now and final once ``confirm_summary`` confirms its run."""
    started = time.time()
    arch_str = space.to_str(arch)
    arch_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])
    model = TaskModel(space.build_network(arch, task.in_channels), task)
    cost = space.cost(arch, task.num_outputs, task.in_channels, data.info.image_size)
    trainer = Trainer(model, data, cfg["train"], device, arch_dir / "checkpoint.pt", identity, cfg["seed"],
                      progress=cfg["progress"], label=f"{cfg['task']['name']} #{space.to_index(arch)}")
    with TrackedRun(cfg, "train", _tags(cfg, {"arch": arch_str, **tags}), arch_dir, tracking_info,
                    run_name=f"train-{cfg['task']['name']}-{space.to_index(arch)}") as run:
        history = _resume_and_fit(trainer, run, arch_dir / "metrics.csv", checkpoint)
        accs = [r["eval_acc"] for r in history]
        metrics = {
            "eval_acc_final": accs[-1] if accs else float("nan"),
            "eval_acc_best": max(accs) if accs else float("nan"),
            "train_loss_final": history[-1]["train_loss"] if history else float("nan"),
            "epochs": len(history), "params": cost.params, "flops": cost.flops,
        }
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=len(history))
        summary = write_summary(arch_dir, "train", cfg, run, started, metrics,
                                {"identity": identity, "arch": arch_str, "index": space.to_index(arch)},
                                {"metrics": str(arch_dir / "metrics.csv")}, confirm_later=True)
    return summary, run


def train(cfg: dict[str, Any], out_dir: Path, archs: list[str] | None, archs_file: Path | None, shard: str | None,
          top: int | None, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    space = build_space(cfg["space"])
    if top is not None and (top < 1 or archs_file is None):
        raise ConfigError(f"--top {top}: must be at least 1 and comes with --archs FILE")
    if archs_file is not None:
        arch_list = read_archs(space, archs_file)
        if top is not None:
            if top > len(arch_list):
                raise ConfigError(f"--top {top}: {str(archs_file)!r} lists only {len(arch_list)} architectures")
            arch_list = arch_list[:top]
    elif archs:
        arch_list = [space.from_str(a) for a in archs]
    else:
        raise ConfigError("nas train needs --arch STR (repeatable) or --archs FILE")
    arch_list, shard_index, shard_count = shard_of(arch_list, shard)
    device = _setup(cfg)
    data, task = _data_and_task(cfg, device, "train")
    begin_job(out_dir)
    # Every checkpoint a resumed shard would continue from is read (once) before any training, so
    # that a foreign or broken one is refused as bad input.
    plan = []
    for arch in arch_list:
        arch_dir, identity = _arch_dir(out_dir, space, arch), _train_identity(cfg, space, arch, data)
        finished = _finished_training(arch_dir, identity)
        checkpoint = None if finished else load_checkpoint(arch_dir / "checkpoint.pt", identity)
        plan.append((arch, arch_dir, identity, finished, checkpoint))
    rows, summaries = [], []
    # Trainings whose run has ended but whose end the store has not confirmed yet; the store takes it
    # while the next architecture trains, so the confirmation then costs no wait.
    unconfirmed: list[tuple[Path, dict[str, Any], TrackedRun]] = []

    def confirm_all() -> None:
        while unconfirmed:
            confirm_summary(*unconfirmed.pop(0))

    try:
        for arch, arch_dir, identity, finished, checkpoint in plan:
            if finished:
                print(f"[nas] {space.to_str(arch)}: already trained in {arch_dir}; reusing its summary", flush=True)
                summary = finished
            else:
                summary, run = _train_one(cfg, space, arch, data, task, device, arch_dir, identity, checkpoint,
                                          tracking_info, tags)
                confirm_all()
                unconfirmed.append((arch_dir, summary, run))
            rows.append({"space": space.name, "dataset": cfg["dataset"]["name"], "task": cfg["task"]["name"],
                         "seed": cfg["seed"], "index": space.to_index(arch), "arch": space.to_str(arch),
                         **summary["metrics"], "source": str(archs_file) if archs_file else "",
                         "mlflow_run_id": summary["mlflow_run_id"]})
            summaries.append(summary)
    finally:
        confirm_all()
    tracked = [summary.get("tracked", True) for summary in summaries]
    write_table(out_dir / "results.csv", rows)
    metrics = {"num_archs": len(rows),
               "mean_eval_acc_best": sum(r["eval_acc_best"] for r in rows) / max(len(rows), 1)}
    return write_summary(out_dir, "train", cfg, None, started, metrics,
                         {"archs": str(archs_file) if archs_file else archs, "shard": f"{shard_index}/{shard_count}",
                          "dataset_fingerprint": data.fingerprint},
                         {"results": str(out_dir / "results.csv"), "runs": [r["mlflow_run_id"] for r in rows]},
                         tracked=all(tracked))


def describe(space_cfg: dict[str, Any], archs: list[str] | None, all_archs: bool, num_classes: int,
             in_channels: int, image_size: int) -> Iterable[str]:
    space = build_space(space_cfg)
    if all_archs:
        chosen: Iterable[Arch] = (space.from_index(i) for i in range(space.num_archs()))
    elif archs:
        chosen = [space.from_str(a) for a in archs]
    else:
        raise ConfigError("nas describe needs --arch STR or --all")
    for arch in chosen:
        cost = space.cost(arch, num_classes, in_channels, image_size)
        yield json.dumps({"index": space.to_index(arch), "arch": space.to_str(arch), "params": cost.params,
                          "flops": cost.flops})

"""Supernet jobs: training, scoring listed cells on it, and searching it."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..config import stage_dataset
from ..io import atomic_torch_save, atomic_write_json
from ..registry import ConfigError
from ..search import METHODS, AccuracyFitness, AngleFitness
from ..spaces import Arch, build_space
from ..tracking import TrackedRun
from ..train import TaskModel, Trainer, load_checkpoint
from .job import (_data_and_task, _file_digest, _resume_and_fit, _save_config, _setup, _tags, begin_job, read_archs,
                  read_summary, shard_of, write_summary, write_table)

# Config sections that define a supernet's weights; score/search must use the same ones.
MODEL_SECTIONS = ("space", "dataset", "task", "seed")


def _supernet_space(cfg: dict[str, Any]):
    space = build_space(cfg["space"])
    if not space.has_supernet:
        raise ConfigError(f"space {space.name!r} has no supernet: train-supernet, score and search need a space "
                          "with one (nb201, darts); use train and proxies on it")
    return space


def train_supernet(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    space = _supernet_space(cfg)
    device = _setup(cfg)
    data, task = _data_and_task(cfg, device, "supernet")
    model = TaskModel(space.build_supernet(task.in_channels), task)
    begin_job(out_dir)
    _save_config(out_dir, cfg)
    init_path = out_dir / "weights_init.pt"
    if not init_path.exists():  # W0: the weights before the first update (RLNAS angle)
        atomic_torch_save(model.state_dict(), init_path)
    identity = {"stage": "train-supernet", "space": cfg["space"], "task": cfg["task"], "dataset": cfg["dataset"],
                "data": data.fingerprint, "seed": cfg["seed"], "training": cfg["supernet"]}
    checkpoint = load_checkpoint(out_dir / "checkpoint.pt", identity)
    # The trainer first: building it (torch.optim imports torch._dynamo) overlaps the courier's start.
    trainer = Trainer(model, data, cfg["supernet"], device, out_dir / "checkpoint.pt", identity, cfg["seed"],
                      path_sampler=space.supernet_sampler(cfg["supernet"]["sampling"]), progress=cfg["progress"],
                      label="supernet")
    with TrackedRun(cfg, "train-supernet", _tags(cfg, tags), out_dir, tracking_info) as run:
        history = _resume_and_fit(trainer, run, out_dir / "metrics.csv", checkpoint)
        atomic_torch_save(model.state_dict(), out_dir / "weights_final.pt")
        final = history[-1] if history else {}
        metrics = {k: v for k, v in final.items() if k != "epoch"}
        return write_summary(out_dir, "train-supernet", cfg, run, started, {**metrics, "epochs": len(history)},
                             {"dataset_fingerprint": data.fingerprint, "task": task.describe()},
                             {"weights_init": str(init_path), "weights_final": str(out_dir / "weights_final.pt"),
                              "metrics": str(out_dir / "metrics.csv")})


def _load_supernet(cfg: dict[str, Any], supernet_dir: Path, device: torch.device):
    _supernet_space(cfg)
    summary = read_summary(supernet_dir, "train-supernet")
    trained_cfg = yaml.safe_load((supernet_dir / "config.yaml").read_text())
    differing = [s for s in MODEL_SECTIONS if trained_cfg.get(s) != cfg.get(s)]
    if differing:
        raise ConfigError(
            f"supernet {str(supernet_dir)!r} was trained with other {', '.join(differing)} settings than this job "
            f"(e.g. {differing[0]}: {trained_cfg.get(differing[0])!r} vs {cfg.get(differing[0])!r})"
        )
    # score and search read the supernet's own splits: its held-out images are the ones it never trained on
    trained_splits = (trained_cfg.get("supernet") or {}).get("splits") or trained_cfg["dataset"]["splits"]
    if trained_splits != stage_dataset(cfg, "supernet")["splits"]:
        raise ConfigError(f"supernet {str(supernet_dir)!r} was trained on other splits than this job's supernet.splits "
                          f"(or dataset.splits): {trained_splits!r} vs {stage_dataset(cfg, 'supernet')['splits']!r}")
    data, task = _data_and_task(cfg, device, "supernet")
    space = build_space(cfg["space"])
    models = {}
    for which in ("init", "final"):
        model = TaskModel(space.build_supernet(task.in_channels), task).to(device)
        path = supernet_dir / f"weights_{which}.pt"
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(state)
        except Exception as err:
            raise ConfigError(f"supernet weights {str(path)!r} cannot be loaded into a {space.name} supernet ({err})") from None
        models[which] = model
    inputs = {"supernet": str(supernet_dir), "supernet_run_id": summary["mlflow_run_id"]}
    return data, task, space, models, inputs


def score(cfg: dict[str, Any], out_dir: Path, supernet_dir: Path, archs_file: Path, tracking_info: dict | None,
          tags: dict[str, str], shard: str | None = None) -> dict[str, Any]:
    """Angle, supernet accuracy after BN recalibration, parameters and FLOPs of the listed cells (or shard i/n of them)."""
    started = time.time()
    space = _supernet_space(cfg)
    device = _setup(cfg)
    archs, shard_index, shard_count = shard_of(read_archs(space, archs_file), shard)
    data, task, space, models, inputs = _load_supernet(cfg, supernet_dir, device)
    begin_job(out_dir)
    angle = AngleFitness(space, models["init"], models["final"])
    accuracy = AccuracyFitness(models["final"], data, cfg["score"], device, cfg["seed"], cfg["supernet"]["amp"])
    rows = []
    shard_tag = f"{shard_index}/{shard_count}"
    with TrackedRun(cfg, "score", _tags(cfg, {"shard": shard_tag, **tags}), out_dir, tracking_info) as run:
        for arch in archs:
            cost = space.cost(arch, task.num_outputs, task.in_channels, data.info.image_size)
            rows.append({"space": space.name, "dataset": cfg["dataset"]["name"], "task": cfg["task"]["name"],
                         "seed": cfg["seed"], "index": space.to_index(arch), "arch": space.to_str(arch), "angle": angle(arch),
                         "supernet_acc": accuracy(arch), "params": cost.params, "flops": cost.flops})
        write_table(out_dir / "scores.csv", rows)
        run.log_artifact(out_dir / "scores.csv")
        metrics = {"num_archs": len(rows)}
        if rows:
            metrics.update(mean_angle=sum(r["angle"] for r in rows) / len(rows),
                           mean_supernet_acc=sum(r["supernet_acc"] for r in rows) / len(rows))
        run.log_metrics(metrics, step=0)
        return write_summary(out_dir, "score", cfg, run, started, metrics,
                             {**inputs, "archs": str(archs_file), "archs_sha": _file_digest(archs_file),
                              "shard": shard_tag},
                             {"scores": str(out_dir / "scores.csv")})


def _flops_cap(cfg: dict[str, Any], space, task, data) -> Callable[[Arch], bool] | None:
    """search.max_flops as a test of a candidate's stand-alone network (RLNAS: thop on the evaluation network)."""
    cap = cfg["search"]["max_flops"]
    if cap is None:
        return None
    image_size = cfg["search"]["flops_image_size"] or data.info.image_size
    return lambda arch: space.cost(arch, task.num_outputs, task.in_channels, image_size).flops <= cap


def search(cfg: dict[str, Any], out_dir: Path, supernet_dir: Path, tracking_info: dict | None,
           tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    device = _setup(cfg)
    data, task, space, models, inputs = _load_supernet(cfg, supernet_dir, device)
    begin_job(out_dir)
    search_cfg = cfg["search"]
    if search_cfg["fitness"] == "angle":
        fitness = AngleFitness(space, models["init"], models["final"])
    else:
        fitness = AccuracyFitness(models["final"], data, cfg["score"], device, cfg["seed"], cfg["supernet"]["amp"])
    method = METHODS.get(search_cfg["method"])
    tags = _tags(cfg, {"fitness": search_cfg["fitness"], "method": search_cfg["method"], **tags})
    with TrackedRun(cfg, "search", tags, out_dir, tracking_info) as run:
        scorer = method(space, fitness, search_cfg, random.Random(cfg["seed"]), _flops_cap(cfg, space, task, data))
        trace = scorer.trace()
        write_table(out_dir / "trace.csv", [
            {"order": e.order, "generation": e.generation, "index": space.to_index(e.arch), "arch": space.to_str(e.arch),
             "fitness": e.fitness} for e in trace])
        best_by_generation: dict[int, float] = {}
        for e in trace:
            best_by_generation[e.generation] = max(e.fitness, best_by_generation.get(e.generation, -math.inf))
        running = -math.inf
        for generation in sorted(best_by_generation):
            running = max(running, best_by_generation[generation])
            run.log_metrics({"best_fitness": running}, step=generation)
        top = scorer.ranked(limit=search_cfg["topk"])
        topk = [{"rank": r + 1, "index": space.to_index(e.arch), "arch": space.to_str(e.arch), "fitness": e.fitness}
                for r, e in enumerate(top)]
        atomic_write_json(out_dir / "topk.json", {"space": space.name, "fitness": search_cfg["fitness"], "archs": topk})
        for name in ("trace.csv", "topk.json"):
            run.log_artifact(out_dir / name)
        best = top[0]
        run.set_tags({"best_arch": space.to_str(best.arch)})
        metrics = {"best_fitness": best.fitness, "evaluations": len(trace)}
        return write_summary(out_dir, "search", cfg, run, started, metrics,
                             {**inputs, "task": cfg["task"]["name"], "method": search_cfg["method"],
                              "fitness": search_cfg["fitness"]},
                             {"trace": str(out_dir / "trace.csv"), "topk": str(out_dir / "topk.json"),
                              "best_arch": space.to_str(best.arch), "best_index": space.to_index(best.arch)})

"""The pipeline stages behind the CLI. Each ends by writing ``summary.json``, the file the next stage reads."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import yaml

from .config import config_hash, stage_dataset
from .data import ImageData, iterate_batches, load_dataset
from .devices import keep_freed_host_memory, select_device
from .io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from .registry import ConfigError
from .search import METHODS, AccuracyFitness, AngleFitness
from .spaces import Arch, SearchSpace, build_space
from .tasks import Task, build_task, check_task_on_dataset
from .tracking import TrackedRun, init_store, unconfirmed_run_marker
from .train import TaskModel, Trainer, load_checkpoint, seed_everything

SUMMARY = "summary.json"
# Config sections that define a supernet's weights; score/search must use the same ones.
MODEL_SECTIONS = ("space", "dataset", "task", "seed")


# ---- shared helpers -----------------------------------------------------------------------------
JOB_STATE = ".job_state.json"
# What a job leaves in its output folder; a fresh (not resumed) run clears exactly these.
JOB_FILES = ("checkpoint.pt", "weights_init.pt", "weights_final.pt", "metrics.csv", SUMMARY, "results.csv",
             "scores.csv", "trace.csv", "topk.json")


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


def _resume_and_fit(trainer: Trainer, run: TrackedRun, metrics_csv: Path,
                    checkpoint: dict[str, Any] | None) -> list[dict[str, Any]]:
    on_epoch, history = _history_writer(metrics_csv, run)
    trainer.on_epoch = on_epoch
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


# ---- stages -------------------------------------------------------------------------------------
def tracking_init(cfg: dict[str, Any], out_file: Path) -> dict[str, Any]:
    return init_store(cfg, out_file)


def sample(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    space = build_space(cfg["space"])
    count = cfg["sample"]["num_archs"]
    rng = random.Random(cfg["seed"])
    if cfg["sample"]["trainable_only"]:
        pool = [i for i in range(space.num_archs()) if space.is_trainable(space.from_index(i))]
        if count > len(pool):
            raise ConfigError(f"config key 'sample.num_archs': {count} is more than the {len(pool)} trainable "
                              f"architectures of space {space.name!r}")
        archs = [space.from_index(i) for i in rng.sample(pool, count)]
    else:
        archs = space.sample_distinct(count, rng)
    begin_job(out_dir)
    with TrackedRun(cfg, "sample", {"space": space.name, "seed": cfg["seed"], **tags}, out_dir, tracking_info) as run:
        atomic_write_json(out_dir / "archs.json", {"space": space.name, "archs": _arch_rows(space, archs)})
        run.log_artifact(out_dir / "archs.json")
        run.log_metrics({"num_archs": len(archs)}, step=0)
        return write_summary(out_dir, "sample", cfg, run, started, {"num_archs": len(archs)},
                             {"space": cfg["space"], "seed": cfg["seed"]}, {"archs": str(out_dir / "archs.json")})


def train_supernet(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    device = _setup(cfg)
    data, task = _data_and_task(cfg, device, "supernet")
    space = build_space(cfg["space"])
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
    device = _setup(cfg)
    space = build_space(cfg["space"])
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
        scorer = method(space, fitness, search_cfg, random.Random(cfg["seed"]))
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


def proxies(cfg: dict[str, Any], out_dir: Path, archs_file: Path, shard: str | None, tracking_info: dict | None,
            tags: dict[str, str]) -> dict[str, Any]:
    """Zero-cost proxies of untrained networks, each from the first minibatch of one seeded shuffle of the task's
    inputs (its size and augmentation per proxy, ``proxies.batch_size`` or ``proxies.naswot_batch_size``)."""
    from .proxies import ProxyInputs, score_network
    from .proxies.registry import batch_setting, build_proxy_backbone, check_network

    started = time.time()
    space = build_space(cfg["space"])
    check_network(space, cfg["proxies"]["network"])
    arch_list, shard_index, shard_count = shard_of(read_archs(space, archs_file), shard)
    device = _setup(cfg)
    job_cfg = {**cfg, "task": {**cfg["task"], "name": cfg["proxies"]["task"]}}
    data, task = _data_and_task(job_cfg, device)
    names = cfg["proxies"]["names"]
    batches: dict[tuple[int, bool], ProxyInputs] = {}
    for name in names:
        setting = batch_setting(cfg["proxies"], name)
        if name in ("params", "flops") or setting in batches:
            continue
        size, augment = setting
        if len(data.splits["train"]) < size:
            key = "proxies.naswot_batch_size" if name == "naswot" else "proxies.batch_size"
            raise ConfigError(f"{key}: the train split of {data.info.name!r} holds fewer than {size} images")
        # A fresh generator per setting: every batch starts the same shuffle, so a smaller one is a prefix.
        generator = torch.Generator().manual_seed(cfg["seed"])
        images, labels, ids = first_batch(data, size, generator)
        inputs, targets = task.prepare(images.float() / 255.0, labels, ids, train=augment, generator=generator)
        batches[setting] = ProxyInputs(inputs, targets, task.loss)
    begin_job(out_dir)
    rows = []
    with TrackedRun(cfg, "proxies", _tags(job_cfg, {"shard": f"{shard_index}/{shard_count}", **tags}), out_dir,
                    tracking_info) as run:
        for arch in arch_list:
            cost = space.cost(arch, task.num_outputs, task.in_channels, data.info.image_size)
            row = {"space": space.name, "dataset": cfg["dataset"]["name"], "seed": cfg["seed"],
                   "index": space.to_index(arch), "arch": space.to_str(arch)}
            for name in names:
                if name in ("params", "flops"):
                    row[name] = getattr(cost, name)
                    continue
                torch.manual_seed(cfg["seed"])  # the same initialisation scheme for every architecture
                backbone = build_proxy_backbone(space, arch, task.in_channels, name, cfg["proxies"]["network"])
                model = TaskModel(backbone, task).to(device)
                row[name] = score_network(name, model, batches[batch_setting(cfg["proxies"], name)])
            rows.append(row)
        write_table(out_dir / "proxies.csv", rows)
        run.log_artifact(out_dir / "proxies.csv")
        run.log_metrics({"num_archs": len(rows)}, step=0)
        return write_summary(out_dir, "proxies", cfg, run, started, {"num_archs": len(rows)},
                             {"archs": str(archs_file), "shard": f"{shard_index}/{shard_count}", "task": task.name,
                              "batch_sizes": {n: batch_setting(cfg["proxies"], n)[0] for n in names
                                              if n not in ("params", "flops")},
                              "network": cfg["proxies"]["network"], "dataset_fingerprint": data.fingerprint},
                             {"proxies": str(out_dir / "proxies.csv")})


def first_batch(data: ImageData, batch_size: int, generator: torch.Generator):
    """The one fixed minibatch the proxies see: the first of a seeded shuffle of the train split."""
    batch = next(iterate_batches(data, "train", batch_size, shuffle=True, generator=generator, drop_last=True), None)
    if batch is None:
        raise ConfigError(f"proxies.batch_size: the train split of {data.info.name!r} holds fewer than {batch_size} images")
    return batch


# ---- analysis -----------------------------------------------------------------------------------
def collect(kind: str, inputs: list[Path], out_file: Path) -> int:
    """Tidy one table from the per-job files: stand-alone results, proxy scores, or search outcomes."""
    from .analysis import tables

    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"collect {kind}: missing input files {missing[:3]}")
    frame = tables.search_outcomes(inputs) if kind == "search" else tables.concat(inputs)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_file, frame.to_csv(index=False))
    return len(frame)


def _read_optional(path: Path | None):
    import pandas as pd

    if path is None:
        return None
    frame = pd.read_csv(path)
    return frame if len(frame) else None


def correlate(cfg: dict[str, Any], out_dir: Path, standalone: Path, proxies: Path | None, zero_cost: Path | None,
              tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    import pandas as pd

    from .analysis import tables

    started = time.time()
    study = cfg["study"]
    long = tables.proxy_frame(pd.read_csv(standalone), _read_optional(proxies), study["reference_task"],
                              study["acc_epoch"], _read_optional(zero_cost))
    begin_job(out_dir)
    with TrackedRun(cfg, "correlate", {"reference_task": study["reference_task"], **tags}, out_dir, tracking_info) as run:
        corr = tables.correlation_table(long, study["bootstrap"], cfg["seed"])
        atomic_write_text(out_dir / "correlations.csv", corr.to_csv(index=False))
        atomic_write_text(out_dir / "proxies_long.csv", long.to_csv(index=False))
        run.log_artifact(out_dir / "correlations.csv")
        pooled = corr[(corr.seed == "mean") & (corr.method == "spearman")]
        metrics = {f"spearman.{r.dataset}.{r.proxy.replace(':', '.')}": r.coef for r in pooled.itertuples()
                   if np.isfinite(r.coef)}
        run.log_metrics(metrics, step=0)
        return write_summary(out_dir, "correlate", cfg, run, started, {"rows": len(corr)},
                             {"standalone": str(standalone), "proxies": str(proxies) if proxies else None,
                              "zero_cost": str(zero_cost) if zero_cost else None},
                             {"correlations": str(out_dir / "correlations.csv"),
                              "proxies_long": str(out_dir / "proxies_long.csv")})


def figures(cfg: dict[str, Any], out_dir: Path, correlations_dir: Path, search_table: Path | None,
            tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    import pandas as pd

    from .analysis import figures as fig
    from .analysis import tables

    started = time.time()
    study = cfg["study"]
    reference = study["reference_task"]
    corr = pd.read_csv(correlations_dir / "correlations.csv", dtype={"seed": str})
    long = pd.read_csv(correlations_dir / "proxies_long.csv")
    search_rows = _read_optional(search_table)
    if search_rows is None:
        search_rows = pd.DataFrame(columns=["dataset", "search_task", "fitness", "best_fitness", "eval_acc_best"])
    begin_job(out_dir)
    with TrackedRun(cfg, "figures", {"reference_task": reference, **tags}, out_dir, tracking_info) as run:
        paths = []
        paths += fig.pretext_vs_reference(long, corr, reference, out_dir)
        paths += fig.rank_heatmap(tables.heatmap_table(corr), reference, out_dir)
        paths += fig.angle_vs_accuracy(long, corr, search_rows, reference, out_dir)
        best_paths, best_table = fig.best_of_m_figure(long, reference, study["best_of_draws_seed"], out_dir)
        paths += best_paths
        atomic_write_text(out_dir / "best_of_m.csv", best_table.to_csv(index=False))
        paths += fig.search_outcomes_figure(search_rows, long, reference, out_dir)
        for path in paths:
            run.log_artifact(path)
        return write_summary(out_dir, "figures", cfg, run, started, {"figures": len(paths)},
                             {"correlations": str(correlations_dir), "search": str(search_table)},
                             {"files": [str(p) for p in paths]})


def ground_truth(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    """The configured ground truth as a table (index, arch, metrics); the MLflow run records which metric is the truth."""
    from .groundtruth import load_ground_truth

    started = time.time()
    space = build_space(cfg["space"])
    table, truth = load_ground_truth(cfg["ground_truth"], space)
    begin_job(out_dir)
    with TrackedRun(cfg, "ground-truth", {"space": space.name, "truth": truth, **tags}, out_dir, tracking_info) as run:
        atomic_write_text(out_dir / "truth.csv", table.to_csv(index=False))
        best = table.loc[table[truth].idxmax()]
        metrics = {"num_archs": len(table), "best_truth": float(best[truth]), "best_index": int(best["index"])}
        run.log_metrics(metrics, step=0)
        return write_summary(out_dir, "ground-truth", cfg, run, started, metrics,
                             {"ground_truth": cfg["ground_truth"], "truth": truth},
                             {"truth": str(out_dir / "truth.csv"), "truth_metric": truth})


def _searched_by_angle(searches: list[Path]):
    """The best cell of each angle search: dataset, task and seed of its supernet, index and angle."""
    import pandas as pd

    rows = []
    for folder in searches:
        summary = read_summary(folder, "search")
        if summary["inputs"]["fitness"] != "angle":
            continue
        supernet_cfg = yaml.safe_load((Path(summary["inputs"]["supernet"]) / "config.yaml").read_text())
        best = read_json(Path(folder) / "topk.json")["archs"][0]
        rows.append({"dataset": supernet_cfg["dataset"]["name"], "task": summary["inputs"]["task"],
                     "seed": supernet_cfg["seed"], "index": best["index"], "angle": best["fitness"]})
    return pd.DataFrame(rows, columns=["dataset", "task", "seed", "index", "angle"])


def correlate_truth(cfg: dict[str, Any], out_dir: Path, truth_dir: Path, standalone: Path | None,
                    proxies_table: Path | None, zero_cost: Path | None, tracking_info: dict | None,
                    tags: dict[str, str], searches: list[Path] | None = None) -> dict[str, Any]:
    """Every proxy of the study against the ground truth (Spearman, Kendall tau-b, Kendall tau by RLNAS's rank
    lists, top-10 % precision, bootstrap CIs); the angle against the truth with the angle searches' picks marked."""
    import pandas as pd

    from .analysis import figures as fig
    from .analysis import tables
    from .analysis.correlation import TRUTH_METHODS

    started = time.time()
    truth_summary = read_summary(truth_dir, "ground-truth")
    truth_metric = truth_summary["outputs"]["truth_metric"]
    truth = pd.read_csv(truth_dir / "truth.csv")
    values = tables.proxy_values(_read_optional(standalone), _read_optional(proxies_table), _read_optional(zero_cost),
                                 cfg["study"]["acc_epoch"])
    # kendall_rlnas breaks ties in the order the cells come in. Upstream's order is its enumeration of the
    # space: the product over the edges with the first edge most significant, i.e. ascending gene tuples.
    space = build_space(cfg["space"])
    enumeration = {index: rank for rank, index in
                   enumerate(sorted(values["index"].unique(), key=lambda i: space.from_index(int(i))))}
    values = values.sort_values("index", key=lambda column: column.map(enumeration), kind="stable",
                                ignore_index=True)
    searched = _searched_by_angle(list(searches or []))
    metrics = [c for c in truth.columns if c not in ("index", "arch")]
    begin_job(out_dir)
    with TrackedRun(cfg, "correlate-truth", {"truth": truth_metric, **tags}, out_dir, tracking_info) as run:
        corr = pd.concat(  # every metric of the table; the configured truth drives the figure grid
            [tables.correlation_table(tables.truth_frame(values, truth, metric), cfg["study"]["bootstrap"],
                                      cfg["seed"], methods=TRUTH_METHODS).assign(truth=metric) for metric in metrics],
            ignore_index=True)
        atomic_write_text(out_dir / "correlations.csv", corr.to_csv(index=False))
        paths = [out_dir / "correlations.csv"]
        primary = corr[corr.truth == truth_metric]
        paths += fig.proxies_vs_truth(tables.truth_frame(values, truth, truth_metric), primary, truth_metric, out_dir)
        paths += fig.tau_bars(corr, out_dir)
        paths += fig.angle_vs_truth(values[values.proxy.str.startswith("angle:") & (values.seed >= 0)], corr, truth,
                                    [truth_metric] + [m for m in metrics if m != truth_metric], searched, out_dir)
        for path in paths:
            run.log_artifact(path)
        kendall = primary[(primary.seed == "mean") & primary.method.isin(["kendall", "kendall_rlnas"])]
        run.log_metrics({f"{r.method}.{r.dataset}.{r.proxy.replace(':', '.')}": r.coef for r in kendall.itertuples()
                         if np.isfinite(r.coef)}, step=0)
        return write_summary(out_dir, "correlate-truth", cfg, run, started, {"rows": len(corr)},
                             {"truth": str(truth_dir), "truth_metric": truth_metric, "standalone": str(standalone),
                              "searches": [str(p) for p in searches or []],
                              "proxies": str(proxies_table), "zero_cost": str(zero_cost)},
                             {"correlations": str(out_dir / "correlations.csv"), "files": [str(p) for p in paths]})

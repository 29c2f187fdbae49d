"""A differentiable search (DARTS, GDAS, UNAS) as one job: the bi-level loop, its alphas and derived cell per epoch.

A strategy with alphas other than one tensor of the space's ``mixture_shape`` (UNAS) provides ``build_supernet``,
``derive_at`` and ``alpha_rows`` itself."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..groundtruth import load_ground_truth
from ..io import atomic_write_json
from ..search.differentiable import build_strategy, check_differentiable
from ..spaces import Arch, SearchSpace, build_space
from ..tracking import TrackedRun
from ..train import TaskModel, Trainer, load_checkpoint
from .job import _data_and_task, _resume_and_fit, _save_config, _setup, _tags, begin_job, write_summary, write_table


def _truth_lookup(cfg: dict[str, Any], space: SearchSpace):
    """arch -> {truth_<metric>: accuracy} from the configured ground truth; None when there is none."""
    if cfg["ground_truth"]["source"] == "none":
        return None
    table, _ = load_ground_truth(cfg["ground_truth"], space)
    metrics = [c for c in table.columns if c not in ("index", "arch")]
    rows = table.set_index("index")[metrics].to_dict("index")
    return lambda arch: {f"truth_{m}": float(v) for m, v in rows.get(space.to_index(arch), {}).items()}


def skip_share(space: SearchSpace, arch: Arch) -> float:
    """The share of skip-connections among the cell's ops (DARTS's collapse shows as it rising)."""
    names = space.op_names(arch)
    return sum(name == "skip_connect" for name in names) / len(names)


def search_differentiable(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None,
                          tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    space = build_space(cfg["space"])
    dcfg = cfg["differentiable"]
    rule = check_differentiable(space, dcfg)
    truth = _truth_lookup(cfg, space) if space.enumerable else None
    device = _setup(cfg)
    data, task = _data_and_task(cfg, device, "differentiable")
    strategy = build_strategy(space, dcfg, dcfg["training"]["epochs"], device)
    model = TaskModel(strategy.build_supernet(task.in_channels), task)
    identity = {"stage": "search-differentiable", "space": cfg["space"], "task": cfg["task"], "dataset": cfg["dataset"],
                "data": data.fingerprint, "seed": cfg["seed"], "differentiable": dcfg}
    checkpoint = load_checkpoint(out_dir / "checkpoint.pt", identity)
    trainer = Trainer(model, data, dcfg["training"], device, out_dir / "checkpoint.pt", identity, cfg["seed"],
                      progress=cfg["progress"], label=dcfg["method"], strategy=strategy)
    begin_job(out_dir)
    _save_config(out_dir, cfg)
    tags = _tags(cfg, {"method": dcfg["method"], "derive": rule, **tags})
    derived_rows: list[dict[str, Any]] = []
    with TrackedRun(cfg, "search-differentiable", tags, out_dir, tracking_info) as run:
        def enrich(record: dict[str, Any]) -> dict[str, Any]:
            """The epoch's derived cell (from the alphas the checkpoint keeps per epoch) and its truth."""
            arch = strategy.derive_at(record["epoch"] - 1)
            extra = {"skip_share": skip_share(space, arch), **(truth(arch) if truth else {})}
            del derived_rows[record["epoch"] - 1:]
            derived_rows.append({"epoch": record["epoch"], "index": space.to_index(arch), "arch": space.to_str(arch),
                                 **extra})
            write_table(out_dir / "derived.csv", derived_rows)
            run.set_tags({"derived_arch": space.to_str(arch)})
            return {**record, **extra}

        history = _resume_and_fit(trainer, run, out_dir / "metrics.csv", checkpoint, enrich)
        # once, at the end: every epoch's alphas are in the checkpoint until then
        write_table(out_dir / "alphas.csv", strategy.alpha_rows())
        best = strategy.derive()
        final = {k: v for k, v in (derived_rows[-1] if derived_rows else {}).items() if k.startswith("truth_")}
        last = history[-1] if history else {}
        atomic_write_json(out_dir / "topk.json", {"space": space.name, "fitness": dcfg["method"], "archs": [
            {"rank": 1, "index": space.to_index(best), "arch": space.to_str(best), "fitness": last.get("search_acc")}]})
        for name in ("derived.csv", "alphas.csv", "topk.json"):
            if (out_dir / name).exists():
                run.log_artifact(out_dir / name)
        metrics = {**{k: v for k, v in last.items() if k != "epoch"}, **final, "epochs": len(history),
                   "skip_share": skip_share(space, best)}
        return write_summary(out_dir, "search-differentiable", cfg, run, started, metrics,
                             {"dataset_fingerprint": data.fingerprint, "task": task.describe(), "method": dcfg["method"],
                              "derive": rule},
                             {"derived_arch": space.to_str(best), "derived_index": space.to_index(best),
                              "topk": str(out_dir / "topk.json"), "derived": str(out_dir / "derived.csv"),
                              "alphas": str(out_dir / "alphas.csv"), "metrics": str(out_dir / "metrics.csv")})


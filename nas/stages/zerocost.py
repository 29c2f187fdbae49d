"""Zero-cost proxies of untrained networks."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData, iterate_batches
from ..registry import ConfigError
from ..spaces import build_space
from ..tracking import TrackedRun
from ..train import TaskModel
from .job import _data_and_task, _setup, _tags, begin_job, read_archs, shard_of, write_summary, write_table


def proxies(cfg: dict[str, Any], out_dir: Path, archs_file: Path, shard: str | None, tracking_info: dict | None,
            tags: dict[str, str]) -> dict[str, Any]:
    """Zero-cost proxies of untrained networks, each from the first minibatch of one seeded shuffle of the task's
    inputs (its size and augmentation per proxy, ``proxies.batch_size`` or ``proxies.naswot_batch_size``)."""
    from ..proxies import ProxyInputs, score_network
    from ..proxies.registry import batch_setting, build_proxy_backbone, check_network

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

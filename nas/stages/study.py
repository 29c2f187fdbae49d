"""The study's first jobs: its tracking store and its sample of architectures."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..registry import ConfigError
from ..spaces import build_space
from ..tracking import TrackedRun, init_store
from .job import _arch_rows, begin_job, write_summary


def tracking_init(cfg: dict[str, Any], out_file: Path) -> dict[str, Any]:
    return init_store(cfg, out_file)


def sample(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    started = time.time()
    space = build_space(cfg["space"])
    count = cfg["sample"]["num_archs"]
    rng = random.Random(cfg["seed"])
    if cfg["sample"]["source"] == "unnas":
        listed = space.unnas_samples()
        if count > len(listed):
            raise ConfigError(f"config key 'sample.num_archs': {count} is more than UnNAS's {len(listed)} "
                              f"sample-based architectures of space {space.name!r}")
        archs = [arch for _, arch in (listed if count == len(listed) else rng.sample(listed, count))]
    else:
        archs = space.sample_distinct(count, rng, cfg["sample"]["trainable_only"])
    begin_job(out_dir)
    with TrackedRun(cfg, "sample", {"space": space.name, "seed": cfg["seed"], **tags}, out_dir, tracking_info) as run:
        atomic_write_json(out_dir / "archs.json", {"space": space.name, "archs": _arch_rows(space, archs)})
        run.log_artifact(out_dir / "archs.json")
        run.log_metrics({"num_archs": len(archs)}, step=0)
        return write_summary(out_dir, "sample", cfg, run, started, {"num_archs": len(archs)},
                             {"space": cfg["space"], "seed": cfg["seed"], "source": cfg["sample"]["source"]}, {"archs": str(out_dir / "archs.json")})

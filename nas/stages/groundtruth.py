"""Ground-truth jobs: the truth table and every proxy against it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..io import atomic_write_text, read_json
from ..spaces import build_space
from ..tracking import TrackedRun
from .job import _read_optional, begin_job, read_summary, write_summary


def ground_truth(cfg: dict[str, Any], out_dir: Path, tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    """The configured ground truth as a table (index, arch, metrics); the MLflow run records which metric is the truth."""
    from ..groundtruth import load_ground_truth

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

    from ..analysis import figures as fig
    from ..analysis import tables
    from ..analysis.correlation import TRUTH_METHODS

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

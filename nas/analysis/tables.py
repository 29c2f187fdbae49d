"""Tidy tables built from the stages' summary files (never from logs or the tracking store)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..io import read_json
from .correlation import METHODS, correlate

KEYS = ["space", "dataset", "seed", "index"]


def concat(paths: Iterable[str | Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise ValueError("no rows in any of the input tables")
    return pd.concat(frames, ignore_index=True)


def search_outcomes(retrain_tables: Iterable[str | Path]) -> pd.DataFrame:
    """One row per (search, retraining): what the search found and how it trained on the reference task."""
    rows = []
    for path in retrain_tables:
        for row in pd.read_csv(path).to_dict("records"):
            search_summary = read_json(Path(row["source"]).parent / "summary.json")
            search_cfg = read_json(Path(row["source"]))  # topk.json
            rows.append({
                "space": row["space"], "dataset": row["dataset"], "seed": row["seed"],
                "search_task": search_summary["inputs"]["task"],
                "fitness": search_cfg["fitness"], "method": search_summary["inputs"]["method"],
                "best_index": row["index"], "best_arch": row["arch"],
                "best_fitness": search_summary["metrics"]["best_fitness"],
                "retrain_task": row["task"], "eval_acc_best": row["eval_acc_best"],
                "eval_acc_final": row["eval_acc_final"], "params": row["params"], "flops": row["flops"],
                "search_run_id": search_summary["mlflow_run_id"], "retrain_run_id": row["mlflow_run_id"],
            })
    return pd.DataFrame(rows)


def proxy_frame(standalone: pd.DataFrame, proxies: pd.DataFrame | None, reference_task: str,
                acc_epoch: str) -> pd.DataFrame:
    """Long table (space, dataset, seed, index, proxy, value, reference) for every proxy of every architecture.

    The reference is the stand-alone ``reference_task`` accuracy averaged over seeds (UnNAS); a proxy's
    value is per seed, and a seed-mean row (seed = -1) is added for each proxy.
    """
    acc = f"eval_acc_{acc_epoch}"
    ref = (standalone[standalone.task == reference_task].groupby(["space", "dataset", "index"])[acc].mean()
           .rename("reference"))
    if ref.empty:
        raise ValueError(f"no stand-alone results for the reference task {reference_task!r}")
    parts = []
    for task, group in standalone.groupby("task"):
        if task != reference_task:
            parts.append(group.assign(proxy=f"standalone:{task}", value=group[acc])[KEYS + ["proxy", "value"]])
    cost = standalone[standalone.task == reference_task]
    for column in ("params", "flops"):
        parts.append(cost.assign(proxy=column, value=cost[column])[KEYS + ["proxy", "value"]])
    if proxies is not None and len(proxies):
        for task, group in proxies.groupby("task"):
            for column in ("supernet_acc", "angle"):
                parts.append(group.assign(proxy=f"{column}:{task}", value=group[column])[KEYS + ["proxy", "value"]])
    long = pd.concat(parts, ignore_index=True)
    mean = long.groupby(["space", "dataset", "index", "proxy"], as_index=False)["value"].mean().assign(seed=-1)
    long = pd.concat([long, mean[KEYS + ["proxy", "value"]]], ignore_index=True)
    return long.join(ref, on=["space", "dataset", "index"]).dropna(subset=["reference"])


def correlation_table(long: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    """Every proxy against the reference, per (space, dataset), per seed and for seed-mean values."""
    rows = []
    for (space, dataset, proxy, proxy_seed), group in long.groupby(["space", "dataset", "proxy", "seed"]):
        seeds = sorted(long[(long.space == space) & (long.dataset == dataset) & (long.proxy == proxy)
                            & (long.seed >= 0)].seed.unique()) if proxy_seed < 0 else [proxy_seed]
        for method in METHODS:
            result = correlate(group.value.to_numpy(), group.reference.to_numpy(), method, n_resamples, seed)
            rows.append({"space": space, "dataset": dataset, "proxy": proxy,
                         "seed": "mean" if proxy_seed < 0 else str(proxy_seed),
                         "seeds": ";".join(str(int(s)) for s in seeds), **result})
    return pd.DataFrame(rows)


def heatmap_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the per-seed coefficients, per (dataset, proxy, method)."""
    per_seed = correlations[correlations.seed != "mean"]
    return per_seed.groupby(["space", "dataset", "proxy", "method"], as_index=False)["coef"].agg(
        lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"))

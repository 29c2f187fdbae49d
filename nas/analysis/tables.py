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


def seed_means(long: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Mean ``value`` over seeds per (``group``, index), for the architectures with a value in every seed of their group.

    An architecture missing from one seed (a training that did not finish, an undefined value) gets no mean,
    as UnNAS's figs/fig234.py keeps only the architectures present in every run: a mean over fewer seeds
    would not be comparable with the others.
    """
    seeds = long.groupby(group)["seed"].nunique().rename("group_seeds")
    valued = long.dropna(subset=["value"])
    means = valued.groupby(group + ["index"], as_index=False).agg(value=("value", "mean"), seeds=("seed", "nunique"))
    means = means.join(seeds, on=group)
    return means[means.seeds == means.group_seeds].drop(columns=["seeds", "group_seeds"])


def proxy_values(standalone: pd.DataFrame | None, proxies: pd.DataFrame | None, zero_cost: pd.DataFrame | None,
                 acc_epoch: str, exclude_task: str | None = None) -> pd.DataFrame:
    """Long table (space, dataset, seed, index, proxy, value) of every proxy the study computed.

    Stand-alone accuracy of each task (but ``exclude_task``), supernet accuracy and angle of each
    supernet task, zero-cost scores; parameters and FLOPs from the zero-cost table, else from the
    stand-alone results. A seed-mean row (seed = -1) is added for each proxy and each architecture that
    has a value in every seed of that proxy (``seed_means``).
    """
    acc = f"eval_acc_{acc_epoch}"
    parts = []
    if standalone is not None:
        for task, group in standalone.groupby("task"):
            if task != exclude_task:
                parts.append(group.assign(proxy=f"standalone:{task}", value=group[acc])[KEYS + ["proxy", "value"]])
    if zero_cost is not None:
        for column in [c for c in zero_cost.columns if c not in KEYS + ["arch"]]:
            parts.append(zero_cost.assign(proxy=column, value=zero_cost[column])[KEYS + ["proxy", "value"]])
    elif standalone is not None:
        cost = standalone[standalone.task == standalone.task.iloc[0]]
        for column in ("params", "flops"):
            parts.append(cost.assign(proxy=column, value=cost[column])[KEYS + ["proxy", "value"]])
    if proxies is not None:
        for task, group in proxies.groupby("task"):
            for column in ("supernet_acc", "angle"):
                parts.append(group.assign(proxy=f"{column}:{task}", value=group[column])[KEYS + ["proxy", "value"]])
    if not parts:
        raise ValueError("the study computed no proxies")
    long = pd.concat(parts, ignore_index=True)
    mean = seed_means(long, ["space", "dataset", "proxy"]).assign(seed=-1)
    return pd.concat([long, mean[KEYS + ["proxy", "value"]]], ignore_index=True)


def proxy_frame(standalone: pd.DataFrame, proxies: pd.DataFrame | None, reference_task: str,
                acc_epoch: str, zero_cost: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every proxy with its ``reference``: the stand-alone ``reference_task`` accuracy averaged over seeds (UnNAS),
    for the architectures trained in every seed."""
    acc = f"eval_acc_{acc_epoch}"
    runs = standalone[standalone.task == reference_task].rename(columns={acc: "value"})
    ref = seed_means(runs, ["space", "dataset"]).set_index(["space", "dataset", "index"])["value"].rename("reference")
    if ref.empty:
        raise ValueError(f"no stand-alone results for the reference task {reference_task!r}")
    long = proxy_values(standalone, proxies, zero_cost, acc_epoch, exclude_task=reference_task)
    return long.join(ref, on=["space", "dataset", "index"]).dropna(subset=["reference"])


def truth_frame(long: pd.DataFrame, truth: pd.DataFrame, truth_metric: str) -> pd.DataFrame:
    """Every proxy with its ``reference``: the published ground truth of the same architecture."""
    ref = truth.set_index("index")[truth_metric].rename("reference")
    return long.join(ref, on="index").dropna(subset=["reference"])


def correlation_table(long: pd.DataFrame, n_resamples: int, seed: int,
                      methods: tuple[str, ...] = METHODS) -> pd.DataFrame:
    """Every proxy against the reference, per (space, dataset), per seed and for seed-mean values.

    An architecture for which a proxy is undefined (NaN, e.g. jacob_cov of a network whose output ignores
    its input) is left out of that proxy's coefficients; ``n`` counts the architectures used.
    """
    rows = []
    long = long.dropna(subset=["value", "reference"])
    for (space, dataset, proxy, proxy_seed), group in long.groupby(["space", "dataset", "proxy", "seed"]):
        seeds = sorted(long[(long.space == space) & (long.dataset == dataset) & (long.proxy == proxy)
                            & (long.seed >= 0)].seed.unique()) if proxy_seed < 0 else [proxy_seed]
        for method in methods:
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

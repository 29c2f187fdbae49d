"""Rank correlations (scipy) with paired-bootstrap confidence intervals (scipy.stats.bootstrap)."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

METHODS = ("spearman", "kendall")
TRUTH_METHODS = ("spearman", "kendall", "kendall_rlnas", "top10_precision")


def rank_list(values: np.ndarray) -> np.ndarray:
    """RLNAS ranks: 1 for the largest value, ties ranked in the order the values come in (first = better).

    Upstream (nas_bench_201/exps/algos/cal_correlation.py, ``cal_kendall_tau``) sorts a dict of
    architecture -> value with Python's stable ``sorted(..., reverse=True)`` and numbers the result
    1, 2, ...; the dict's order is the order the architectures were enumerated in.
    """
    order = np.argsort(-np.asarray(values, dtype=float), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def kendall_rlnas(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall tau as RLNAS computes it: scipy's tau of the two tie-free rank lists of ``rank_list``.

    Every tie is broken by the order of the pairs as given, the same way in ``x`` and in ``y``, so a
    pair tied in both counts as concordant (scipy's tau-b leaves it out). Pairs whose ``x`` is NaN are
    dropped first, as upstream drops architectures whose score is NaN (it never sees a NaN accuracy;
    a NaN ``y`` is dropped too). Returns (tau, p-value).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    result = stats.kendalltau(rank_list(y[keep]), rank_list(x[keep]))
    return float(result.statistic), float(result.pvalue)


def top_precision(x: np.ndarray, y: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the top ``fraction`` of architectures by ``x`` that are also in the top ``fraction`` by ``y``."""
    count = max(1, int(round(fraction * len(x))))
    top_x = set(np.argsort(-np.asarray(x), kind="stable")[:count].tolist())
    top_y = set(np.argsort(-np.asarray(y), kind="stable")[:count].tolist())
    return len(top_x & top_y) / count


def coefficient(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """(coefficient, p-value); NaN when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    if method == "top10_precision":
        return top_precision(x, y), float("nan")
    if method == "spearman":
        result = stats.spearmanr(x, y)
    elif method == "kendall":
        result = stats.kendalltau(x, y)
    elif method == "kendall_rlnas":
        return kendall_rlnas(x, y)
    else:
        raise ValueError(f"unknown correlation method {method!r}; allowed: {', '.join(TRUTH_METHODS)}")
    return float(result.statistic), float(result.pvalue)


def correlate(x: np.ndarray, y: np.ndarray, method: str, n_resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, Any]:
    """Coefficient, p-value and a percentile bootstrap interval over resampled (x, y) pairs."""
    coef, pvalue = coefficient(x, y, method)
    low = high = float("nan")
    if n_resamples > 0 and np.isfinite(coef):
        result = stats.bootstrap(
            (np.asarray(x, dtype=float), np.asarray(y, dtype=float)),
            lambda a, b: coefficient(a, b, method)[0],
            paired=True, vectorized=False, n_resamples=n_resamples, confidence_level=level,
            method="percentile", random_state=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {"method": method, "coef": coef, "p_value": pvalue, "ci_low": low, "ci_high": high, "n": int(len(x))}


def best_of_m(proxy: np.ndarray, target: np.ndarray, seed: int, draws_per_size: int | None = None) -> list[dict[str, Any]]:
    """UnNAS fig. 5: for m = 1, 2, 4, ... draw ceil(N/m) sets of m, pick the best by ``proxy``, record ``target``."""
    proxy, target = np.asarray(proxy, dtype=float), np.asarray(target, dtype=float)
    rng = np.random.RandomState(seed)
    rows, size = [], 1
    while size <= len(proxy):
        draws = draws_per_size or int(np.ceil(len(proxy) / size))
        picks = []
        for _ in range(draws):
            members = rng.choice(len(proxy), size=size, replace=False)
            picks.append(target[members[np.argmax(proxy[members])]])
        rows.append({"m": size, "log2_m": int(np.log2(size)), "mean": float(np.mean(picks)),
                     "sd": float(np.std(picks)), "draws": draws})
        size *= 2
    return rows

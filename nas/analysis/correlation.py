"""Rank correlations (scipy) with paired-bootstrap confidence intervals (scipy.stats.bootstrap)."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

METHODS = ("spearman", "kendall")
TRUTH_METHODS = ("spearman", "kendall", "top10_precision")


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

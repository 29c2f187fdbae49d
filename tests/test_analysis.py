"""Correlation statistics (they must equal scipy's), bootstrap intervals, best-of-m, tidy tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nas.analysis import correlation, tables


@pytest.fixture
def pairs():
    rng = np.random.RandomState(0)
    x = rng.normal(size=40)
    return x, x + rng.normal(scale=0.8, size=40)


def test_coefficients_equal_scipy(pairs):
    x, y = pairs
    spearman = stats.spearmanr(x, y)
    kendall = stats.kendalltau(x, y)
    assert correlation.coefficient(x, y, "spearman") == (pytest.approx(spearman.statistic, abs=0),
                                                         pytest.approx(spearman.pvalue, abs=0))
    assert correlation.coefficient(x, y, "kendall") == (pytest.approx(kendall.statistic, abs=0),
                                                        pytest.approx(kendall.pvalue, abs=0))


def test_ties_and_constants():
    x = np.array([1, 2, 2, 3, 4, 4, 5.0])
    y = np.array([2, 1, 3, 3, 5, 4, 6.0])
    assert correlation.coefficient(x, y, "kendall")[0] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert np.isnan(correlation.coefficient(np.ones(5), np.arange(5.0), "spearman")[0])
    with pytest.raises(ValueError, match="unknown correlation method 'pearsonr'"):
        correlation.coefficient(x, y, "pearsonr")


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded(pairs):
    x, y = pairs
    a = correlation.correlate(x, y, "spearman", n_resamples=300, seed=1)
    b = correlation.correlate(x, y, "spearman", n_resamples=300, seed=1)
    assert a == b
    assert a["ci_low"] < a["coef"] < a["ci_high"] and a["n"] == 40
    perfect = correlation.correlate(x, x, "kendall", n_resamples=100, seed=0)
    assert perfect["coef"] == pytest.approx(1.0) and perfect["ci_low"] == pytest.approx(1.0)


def test_best_of_m_with_a_perfect_proxy_reaches_the_best():
    target = np.arange(16.0)
    rows = correlation.best_of_m(target, target, seed=2)
    assert [r["m"] for r in rows] == [1, 2, 4, 8, 16]
    means = [r["mean"] for r in rows]
    assert means[-1] == 15.0 and rows[-1]["sd"] == 0.0 and means[-1] > means[0]
    assert [r["draws"] for r in rows] == [16, 8, 4, 2, 1]
    anti = correlation.best_of_m(-target, target, seed=2)
    assert anti[-1]["mean"] == 0.0


def test_proxy_frame_and_correlation_table():
    archs = range(8)
    acc = {a: 50 + 3 * a for a in archs}
    standalone = pd.DataFrame(
        [{"space": "nb201", "dataset": "d", "task": task, "seed": seed, "index": a,
          "eval_acc_best": acc[a] + (seed if task == "cls" else -a * (task == "rot")),
          "eval_acc_final": acc[a], "params": 100 + a, "flops": 1000 - a}
         for task in ("cls", "rot") for seed in (0, 1) for a in archs])
    proxies = pd.DataFrame([{"space": "nb201", "dataset": "d", "task": "rand", "seed": seed, "index": a,
                             "angle": 0.1 * a, "supernet_acc": 10.0} for seed in (0, 1) for a in archs])
    long = tables.proxy_frame(standalone, proxies, "cls", "best")
    # reference = cls accuracy averaged over seeds
    assert long[long["index"] == 3].reference.iloc[0] == pytest.approx(acc[3] + 0.5)
    corr = tables.correlation_table(long, n_resamples=0, seed=0)
    mean_rows = corr[(corr.seed == "mean") & (corr.method == "spearman")].set_index("proxy")
    assert mean_rows.loc["params", "coef"] == pytest.approx(1.0)
    assert mean_rows.loc["flops", "coef"] == pytest.approx(-1.0)
    assert mean_rows.loc["angle:rand", "coef"] == pytest.approx(1.0)
    assert np.isnan(mean_rows.loc["supernet_acc:rand", "coef"])  # constant proxy: undefined, not silently 0
    assert mean_rows.loc["params", "seeds"] == "0;1"
    per_seed = corr[(corr.seed == "0") & (corr.proxy == "standalone:rot")]
    assert len(per_seed) == 2 and per_seed.n.tolist() == [8, 8]
    heat = tables.heatmap_table(corr)
    assert set(heat.method) == {"spearman", "kendall"}


def test_seed_means_use_only_architectures_present_in_every_seed():
    """UnNAS figs/fig234.py: the seed-mean is over the architectures every run has (the intersection)."""
    rows = []
    for task in ("cls", "rot"):
        for seed in (1, 2, 3):
            for a in range(6):
                if (task, seed, a) in {("cls", 3, 4), ("rot", 2, 1)}:
                    continue  # a training that did not finish
                rows.append({"space": "nb201", "dataset": "d", "task": task, "seed": seed, "index": a,
                             "eval_acc_best": 10.0 * a + seed + (task == "rot"), "eval_acc_final": 0.0,
                             "params": a, "flops": a})
    standalone = pd.DataFrame(rows)
    standalone.loc[(standalone.task == "rot") & (standalone.seed == 3) & (standalone["index"] == 5),
                   "eval_acc_best"] = np.nan
    long = tables.proxy_frame(standalone, None, "cls", "best")
    mean = long[(long.seed == -1) & (long.proxy == "standalone:rot")].set_index("index")
    # rot: arch 1 lacks seed 2 and arch 5's seed-3 value is undefined; arch 4 has no cls reference (seed 3 missing)
    assert sorted(mean.index) == [0, 2, 3]
    assert mean.loc[2, "value"] == pytest.approx(20 + 2 + 1)  # (21 + 22 + 23) / 3 + 1
    assert mean.loc[3, "reference"] == pytest.approx(32.0)
    # per seed, the architectures of that seed that have a reference
    assert sorted(long[(long.seed == 1) & (long.proxy == "standalone:rot")]["index"]) == [0, 1, 2, 3, 5]
    values = tables.proxy_values(standalone, None, None, "best")
    assert sorted(values[(values.seed == -1) & (values.proxy == "standalone:cls")]["index"]) == [0, 1, 2, 3, 5]


def test_top10_precision_by_hand():
    x = np.arange(20.0)
    y = np.arange(20.0)
    y[[18, 19]] = [0.5, 0.25]  # the two best by x are the worst by y
    assert correlation.top_precision(x, x) == 1.0
    assert correlation.top_precision(x, y) == 0.0
    y2 = np.arange(20.0)
    y2[19] = -1.0  # one of the two best by x stays in the top two by y
    assert correlation.top_precision(x, y2) == 0.5
    assert correlation.coefficient(x, y2, "top10_precision")[0] == 0.5


def test_undefined_proxy_values_are_left_out_and_counted():
    long = pd.DataFrame({"space": "nb201", "dataset": "d", "seed": 0, "index": range(6), "proxy": "jacob_cov",
                         "value": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0], "reference": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    corr = tables.correlation_table(long, n_resamples=0, seed=0)
    spearman = corr[corr.method == "spearman"].iloc[0]
    assert spearman.n == 5 and spearman.coef == pytest.approx(1.0)


# ---- RLNAS's Kendall tau (cal_correlation.py: tie-free rank lists) ---------------------------------
def test_rlnas_rank_list_breaks_ties_in_the_given_order():
    # descending, stable: the first of two equal values gets the better (smaller) rank
    assert correlation.rank_list(np.array([1.0, 1.0, 2.0, 0.0])).tolist() == [2, 3, 1, 4]


@pytest.mark.parametrize("x, y, rlnas, tau_b", [
    # x ties cells 0 and 1; y orders them as the given order does. By hand: ranks x [2,3,1,4], y [2,3,1,4],
    # all 6 pairs concordant -> 1. tau-b leaves the x-tied pair out: 5 / sqrt((6-1)(6-0)) = 5/sqrt(30).
    ([1, 1, 2, 0], [2, 1, 3, 0], 1.0, 5 / np.sqrt(30)),
    # the same tie, y against the given order: ranks y [3,2,1,4], one discordant pair -> (5-1)/6.
    ([1, 1, 2, 0], [1, 2, 3, 0], 4 / 6, 5 / np.sqrt(30)),
    # cells 0 and 1 tied in both: RLNAS counts the pair concordant, ranks x [2,3,1], y [1,2,3] -> (1-2)/3;
    # tau-b: the two other pairs discordant, -2 / sqrt((3-1)(3-1)) = -1.
    ([1, 1, 2], [1, 1, 0], -1 / 3, -1.0),
])
def test_kendall_rlnas_differs_from_tau_b_on_ties(x, y, rlnas, tau_b):
    x, y = np.array(x, dtype=float), np.array(y, dtype=float)
    assert correlation.coefficient(x, y, "kendall_rlnas")[0] == pytest.approx(rlnas, abs=1e-12)
    assert correlation.coefficient(x, y, "kendall")[0] == pytest.approx(tau_b, abs=1e-12)


def test_kendall_rlnas_drops_nan_scores_and_equals_tau_b_without_ties(pairs):
    x, y = pairs
    assert correlation.kendall_rlnas(x, y)[0] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    with_nan = np.append(x, np.nan), np.append(y, 100.0)
    assert correlation.kendall_rlnas(*with_nan) == correlation.kendall_rlnas(x, y)

"""The study figures (seaborn), each saved as PNG and PDF."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .correlation import best_of_m  # noqa: E402


def _save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(path)
    plt.close(fig)
    return paths


def _label(rows: pd.DataFrame) -> str:
    spearman = rows[rows.method == "spearman"]
    if spearman.empty or not np.isfinite(spearman.coef.iloc[0]):
        return "rho = n/a"
    r = spearman.iloc[0]
    return f"rho = {r.coef:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}], n = {r.n}"


def _grid(nrows: int, ncols: int, size: float = 3.2):
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    return fig, axes


def _panels(long: pd.DataFrame, corr: pd.DataFrame, prefix: str, empty: str, draw) -> plt.Figure:
    """One panel per (dataset, proxy starting with ``prefix``) of seed-mean values, titled with its rho."""
    data = long[(long.seed == -1) & long.proxy.str.startswith(prefix)]
    datasets, proxies = sorted(data.dataset.unique()), sorted(data.proxy.unique())
    fig, axes = _grid(max(1, len(datasets)), max(1, len(proxies)))
    for i, dataset in enumerate(datasets):
        for j, proxy in enumerate(proxies):
            rows = corr[(corr.dataset == dataset) & (corr.proxy == proxy) & (corr.seed == "mean")]
            draw(axes[i][j], dataset, proxy.split(":")[1], data[(data.dataset == dataset) & (data.proxy == proxy)],
                 _label(rows))
    if not proxies:
        axes[0][0].text(0.5, 0.5, empty, ha="center")
    fig.tight_layout()
    return fig


def pretext_vs_reference(long: pd.DataFrame, corr: pd.DataFrame, reference: str, out_dir: Path) -> list[Path]:
    """UnNAS fig. 2: each pretext task's stand-alone accuracy against the reference task's, per dataset."""

    def draw(ax, dataset, task, points, label):
        sns.regplot(x=points.reference, y=points.value, ax=ax, ci=None, scatter_kws={"s": 14, "alpha": 0.8})
        ax.set_title(f"{dataset}: {task}\n{label}", fontsize=8)
        ax.set_xlabel(f"{reference} accuracy (%)")
        ax.set_ylabel(f"{task} accuracy (%)")

    return _save(_panels(long, corr, "standalone:", "no pretext tasks in this study", draw), out_dir,
                 "pretext_vs_reference")


def rank_heatmap(heat: pd.DataFrame, reference: str, out_dir: Path) -> list[Path]:
    """Rank correlation of every proxy with the reference accuracy, mean over seeds, per dataset."""
    datasets = sorted(heat.dataset.unique())
    fig, axes = _grid(1, len(datasets), size=4.5)
    for k, dataset in enumerate(datasets):
        table = heat[heat.dataset == dataset].pivot_table(index="proxy", columns="method", values="coef")
        sns.heatmap(table, ax=axes[0][k], annot=True, fmt=".2f", vmin=-1, vmax=1, cmap="vlag", cbar=k == len(datasets) - 1)
        axes[0][k].set_title(f"{dataset}: rank correlation with {reference}", fontsize=9)
        axes[0][k].set_xlabel("")
        axes[0][k].set_ylabel("")
    fig.tight_layout()
    return _save(fig, out_dir, "rank_correlation_heatmap")


def angle_vs_accuracy(long: pd.DataFrame, corr: pd.DataFrame, search: pd.DataFrame, reference: str,
                      out_dir: Path) -> list[Path]:
    """RLNAS style: angle against stand-alone accuracy, the architecture the angle search found highlighted."""

    def draw(ax, dataset, task, points, label):
        ax.scatter(points.value, points.reference, s=14, alpha=0.8, label="sampled")
        found = search[(search.dataset == dataset) & (search.search_task == task) & (search.fitness == "angle")]
        if len(found):
            ax.scatter(found.best_fitness, found.eval_acc_best, marker="*", s=160, color="crimson",
                       edgecolor="black", label="searched (angle)")
        ax.set_title(f"{dataset}: supernet on {task}\n{label}", fontsize=8)
        ax.set_xlabel("angle (rad)")
        ax.set_ylabel(f"{reference} accuracy (%)")
        ax.legend(fontsize=6)

    return _save(_panels(long, corr, "angle:", "no supernet angles in this study", draw), out_dir,
                 "angle_vs_accuracy")


def best_of_m_figure(long: pd.DataFrame, reference: str, seed: int, out_dir: Path) -> tuple[list[Path], pd.DataFrame]:
    """UnNAS fig. 5: reference accuracy of the best of m architectures picked by each proxy (mean +- 2 sd)."""
    data = long[long.seed == -1]
    datasets = sorted(data.dataset.unique())
    fig, axes = _grid(1, len(datasets), size=4.5)
    table = []
    for k, dataset in enumerate(datasets):
        ax = axes[0][k]
        for proxy, group in data[data.dataset == dataset].groupby("proxy"):
            rows = pd.DataFrame(best_of_m(group.value.to_numpy(), group.reference.to_numpy(), seed))
            table.append(rows.assign(dataset=dataset, proxy=proxy))
            line, = ax.plot(rows.log2_m, rows["mean"], marker="o", ms=3, label=proxy)
            ax.fill_between(rows.log2_m, rows["mean"] - 2 * rows.sd, rows["mean"] + 2 * rows.sd,
                            color=line.get_color(), alpha=0.08)
        ax.set_xlabel("log2 m")
        ax.set_ylabel(f"{reference} accuracy of the pick (%), mean +- 2 sd")
        ax.set_title(f"{dataset}: best of m", fontsize=9)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, out_dir, "best_of_m"), pd.concat(table, ignore_index=True)


def search_outcomes_figure(search: pd.DataFrame, long: pd.DataFrame, reference: str, out_dir: Path) -> list[Path]:
    """Reference accuracy after retraining the architecture each (task, fitness) search found."""
    datasets = sorted(search.dataset.unique()) if len(search) else ["(none)"]
    fig, axes = _grid(1, len(datasets), size=4.5)
    for k, dataset in enumerate(datasets):
        ax = axes[0][k]
        rows = search[search.dataset == dataset]
        if len(rows):
            sns.barplot(data=rows, x="search_task", y="eval_acc_best", hue="fitness", ax=ax, errorbar=None, alpha=0.6)
            sns.stripplot(data=rows, x="search_task", y="eval_acc_best", hue="fitness", dodge=True, ax=ax,
                          legend=False, palette="dark:black", size=4)
            sampled = long[(long.dataset == dataset) & (long.seed == -1)].drop_duplicates("index").reference
            ax.axhline(sampled.mean(), ls="--", color="gray", label="mean of sampled")
            ax.axhline(sampled.max(), ls=":", color="gray", label="best of sampled")
            ax.legend(fontsize=6)
        ax.set_xlabel("task the supernet was trained on")
        ax.set_ylabel(f"{reference} accuracy after retraining (%)")
        ax.set_title(f"{dataset}: search outcomes", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_dir, "search_outcomes")


def proxies_vs_truth(long: pd.DataFrame, corr: pd.DataFrame, truth_metric: str, out_dir: Path) -> list[Path]:
    """Each proxy (seed-mean) against the ground truth of the same architectures, one panel per proxy and dataset."""
    data = long[long.seed == -1]
    pairs = sorted({(d, p) for d, p in zip(data.dataset, data.proxy)})
    columns = min(4, max(1, len(pairs)))
    rows = max(1, -(-len(pairs) // columns))
    fig, axes = _grid(rows, columns, size=3.0)
    for k, (dataset, proxy) in enumerate(pairs):
        ax = axes[k // columns][k % columns]
        points = data[(data.dataset == dataset) & (data.proxy == proxy)]
        ax.scatter(points.value, points.reference, s=4, alpha=0.4)
        positive = points.value[points.value > 0]
        if points.value.ge(0).all() and len(positive) and positive.max() / positive.min() > 1e3:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        picked = corr[(corr.dataset == dataset) & (corr.proxy == proxy) & (corr.seed == "mean")]
        tau = picked[picked.method == "kendall"].coef
        ax.set_title(f"{dataset}: {proxy}\n{_label(picked)}, tau = {tau.iloc[0]:.2f}" if len(tau) else proxy,
                     fontsize=7)
        ax.set_xlabel(proxy, fontsize=7)
        ax.set_ylabel(truth_metric, fontsize=7)
    for k in range(len(pairs), rows * columns):
        axes[k // columns][k % columns].axis("off")
    fig.tight_layout()
    return _save(fig, out_dir, "proxies_vs_truth")


def tau_bars(corr: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Kendall tau of every proxy with each ground-truth metric (one per benchmark dataset), seed-mean proxies."""
    rows = corr[(corr.seed == "mean") & (corr.method == "kendall")].assign(
        against=lambda f: f.truth + " (proxies on " + f.dataset + ")")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * rows.proxy.nunique() + 2), 3.6))
    sns.barplot(data=rows, x="proxy", y="coef", hue="against", ax=ax, errorbar=None)
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_ylabel("Kendall tau with the ground truth")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return _save(fig, out_dir, "tau_per_proxy")


def _tau_text(corr: pd.DataFrame, dataset: str, proxy: str, seed: str, metric: str) -> str:
    rows = corr[(corr.dataset == dataset) & (corr.proxy == proxy) & (corr.seed == seed) & (corr.truth == metric)]
    coef = {r.method: r.coef for r in rows.itertuples()}
    return (f"tau-b {coef.get('kendall', float('nan')):.3f}, "
            f"tau (RLNAS ranks) {coef.get('kendall_rlnas', float('nan')):.3f}, n = {rows.n.max() if len(rows) else 0}")


def angle_vs_truth(angles: pd.DataFrame, corr: pd.DataFrame, truth: pd.DataFrame, metrics: list[str],
                   searched: pd.DataFrame, out_dir: Path, zoom_share: float = 0.05) -> list[Path]:
    """RLNAS ``transfer_robustness.py``: the angle of every scored cell against its ground-truth accuracy.

    One figure per supernet (dataset, task, seed), one column per truth metric; the top row shows every
    cell, the bottom row the ``zoom_share`` of cells with the largest angles (the red box above). The cell
    of largest angle is marked (upstream's highlight); so is the best cell of the angle search on the same
    supernet, when the study ran one. Titles give Kendall tau-b and tau by RLNAS's rank lists.
    """
    paths: list[Path] = []
    truth = truth.set_index("index")
    for (dataset, proxy, seed), group in angles.groupby(["dataset", "proxy", "seed"]):
        task = proxy.split(":", 1)[1]
        group = group[group["index"].isin(truth.index)]
        if group.empty:
            continue
        found = searched[(searched.dataset == dataset) & (searched.task == task) & (searched.seed == seed)]
        top = group.loc[group["value"].idxmax()]
        cutoff = group.value.quantile(1 - zoom_share)
        fig, axes = _grid(2, len(metrics), size=3.6)
        for k, metric in enumerate(metrics):
            acc = truth.loc[group["index"], metric].to_numpy()
            zoomed = group.value.to_numpy() >= cutoff
            for row, ax in enumerate((axes[0][k], axes[1][k])):
                ax.scatter(group.value, acc, s=3, alpha=0.35, color="tab:blue", label="scored cells")
                ax.scatter([top["value"]], [truth.loc[int(top["index"]), metric]], s=60, color="tab:orange",
                           edgecolor="black", zorder=3, label="largest angle")
                if len(found):
                    ax.scatter(found.angle, truth.loc[found["index"], metric], marker="*", s=180, color="crimson",
                               edgecolor="black", zorder=4, label="angle search's best")
                ax.set_xlabel("angle (rad)", fontsize=8)
                ax.set_ylabel(f"{metric} (%)", fontsize=8)
            in_zoom = found[found.angle >= cutoff]
            picked = np.concatenate([acc[zoomed], truth.loc[in_zoom["index"], metric].to_numpy()])
            x_low, x_high = cutoff, max(group.value.max(), in_zoom.angle.max() if len(in_zoom) else -np.inf)
            y_low, y_high = picked.min(), picked.max()
            x_pad, y_pad = 0.05 * (x_high - x_low) or 1e-3, 0.05 * (y_high - y_low) or 0.5
            axes[1][k].set_xlim(x_low - x_pad, x_high + x_pad)
            axes[1][k].set_ylim(y_low - y_pad, y_high + y_pad)
            axes[0][k].add_patch(plt.Rectangle((x_low - x_pad, y_low - y_pad), x_high - x_low + 2 * x_pad,
                                               y_high - y_low + 2 * y_pad, edgecolor="red", fill=False))
            axes[0][k].set_title(f"{dataset}, supernet on {task}, seed {seed} vs {metric}\n"
                                 f"{_tau_text(corr, dataset, proxy, str(seed), metric)}", fontsize=7)
            axes[1][k].set_title(f"the {zoom_share:.0%} of cells with the largest angles", fontsize=7)
        axes[0][0].legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        paths += _save(fig, out_dir, f"angle_vs_truth_{dataset}_{task}_seed{seed}")
    return paths

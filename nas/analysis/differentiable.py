"""Tables and figures of a study's differentiable searches (`nas search-differentiable` folders).

The tables are built from each search's own files (summary.json, config.yaml, metrics.csv, derived.csv) and
from the stand-alone retraining of its derived cell (the results.csv of `nas train --archs <search>/topk.json`,
whose ``source`` column names the search's topk.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import yaml

from ..io import read_json
from .figures import _grid, _save, sns

KEYS = ["space", "dataset", "task", "seed", "method"]
# NAS-Bench-201 paper (arXiv 2001.00326) as quoted by TE-NAS (arXiv 2102.11535): CIFAR-10 test accuracy (%,
# 200-epoch benchmark training) of the last-epoch cell of three searches on CIFAR-10, mean. DARTS-V1 and V2
# both end with the all-skip_connect cell.
PUBLISHED_C10 = (("GDAS", 93.61, "tab:green"), ("DARTS-V1/V2", 54.30, "tab:red"))
PUBLISHED_METRIC = "cifar10_test_200ep"


def _search_identity(folder: Path) -> dict:
    """space, dataset, task, seed and method of the search in ``folder``, from the config it ran with."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    return {"space": cfg["space"]["name"], "dataset": cfg["dataset"]["name"], "task": cfg["task"]["name"],
            "seed": int(cfg["seed"]), "method": cfg["differentiable"]["method"]}


def search_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per search: its derived cell, the final epoch's accuracies and truth, and its retraining if any.

    ``paths`` holds the searches' summary.json files and, optionally, the retrainings' results.csv files;
    a retraining is matched to the search whose topk.json it trained.
    """
    paths = [Path(p) for p in paths]
    retrained = {}
    for path in (p for p in paths if p.suffix == ".csv"):
        for row in pd.read_csv(path).to_dict("records"):
            retrained[Path(row["source"]).parent.resolve()] = row
    rows = []
    for path in (p for p in paths if p.name == "summary.json"):
        folder = path.parent
        summary = read_json(path)
        metrics = summary["metrics"]
        row = {**_search_identity(folder), "derive": summary["inputs"]["derive"], "epochs": metrics["epochs"],
               "derived_index": summary["outputs"]["derived_index"], "derived_arch": summary["outputs"]["derived_arch"],
               "skip_share": metrics["skip_share"], "search_acc": metrics.get("search_acc"),
               "eval_acc": metrics.get("eval_acc"),
               **{k: v for k, v in metrics.items() if k.startswith("truth_")},
               "search_run_id": summary["mlflow_run_id"], "alphas": summary["outputs"]["alphas"]}
        done = retrained.get(folder.resolve())
        if done is not None:
            row.update({"retrain_task": done["task"], "eval_acc_best": done["eval_acc_best"],
                        "eval_acc_final": done["eval_acc_final"], "params": done["params"], "flops": done["flops"],
                        "retrain_run_id": done["mlflow_run_id"]})
        rows.append(row)
    if not rows:
        raise ValueError("no search summaries among the inputs")
    return pd.DataFrame(rows).sort_values(KEYS, ignore_index=True)


def epochs_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per search and epoch: the epoch's metrics (entropies, skip share, truth) and its derived cell."""
    frames = []
    for path in (Path(p) for p in paths):
        folder = path.parent
        metrics = pd.read_csv(folder / "metrics.csv")
        derived = pd.read_csv(folder / "derived.csv")[["epoch", "index", "arch"]]
        frame = metrics.merge(derived, on="epoch", how="left")
        for key, value in _search_identity(folder).items():
            frame.insert(0, key, value)
        frames.append(frame)
    if not frames:
        raise ValueError("no search summaries among the inputs")
    table = pd.concat(frames, ignore_index=True)
    return table[KEYS + [c for c in table.columns if c not in KEYS]].sort_values(KEYS + ["epoch"], ignore_index=True)


def _edge_label(space: str, method: str, edge: str) -> str:
    """nb201: node <- node; darts (DARTS's alphas, not UNAS's own parametrisation): cell type, node <- input, with
    the cell's two inputs as 0 and 1 and its four nodes as 2-5."""
    if space == "nb201":
        from ..spaces.nb201 import EDGES

        to, source = EDGES[int(edge)]
        return f"edge {to}<-{source}"
    if space == "darts" and method != "unas":
        from ..spaces.darts_genotype import EDGE_INPUTS

        cell, position = map(int, edge.split("."))
        node, source = EDGE_INPUTS[position]
        return f"{('normal', 'reduce')[cell]} {node + 2}<-{source}"
    return f"edge {edge}"


def alpha_heatmaps(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Softmax weight of each op on each edge over the epochs, one panel per edge; one figure per (space,
    dataset, method, task), of its first seed."""
    paths: list[Path] = []
    firsts = table.sort_values("seed").groupby(["space", "dataset", "method", "task"], as_index=False).first()
    for search in firsts.itertuples():
        alphas = pd.read_csv(search.alphas, dtype={"edge": str})
        edges = list(dict.fromkeys(alphas.edge))
        columns = min(len(edges), 7 if len(edges) > 6 else 3)
        rows = -(-len(edges) // columns)
        fig, axes = _grid(rows, columns, size=2.6)
        fig.set_layout_engine("constrained")  # room for the op names, titles and the shared colour bar
        low, high = alphas.weight.min(), alphas.weight.max()
        for k, edge in enumerate(edges):
            ax = axes[k // columns][k % columns]
            grid = alphas[alphas.edge == edge].pivot(index="op", columns="epoch", values="weight")
            grid = grid.reindex([op for op in dict.fromkeys(alphas.op) if op in grid.index])
            image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=low, vmax=high,
                              interpolation="nearest", extent=(grid.columns.min() - 0.5, grid.columns.max() + 0.5, len(grid) - 0.5, -0.5))
            ax.set_yticks(range(len(grid)), grid.index if k % columns == 0 else [], fontsize=6)
            ax.set_title(_edge_label(search.space, search.method, edge), fontsize=7)
            ax.set_xlabel("epoch", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
        for k in range(len(edges), rows * columns):
            axes[k // columns][k % columns].axis("off")
        fig.colorbar(image, ax=axes, shrink=0.8, label="softmax(alpha)")
        fig.suptitle(f"{search.method} on {search.space}/{search.dataset}, task {search.task}, seed {search.seed}: "
                     f"op weights per edge", fontsize=9)
        paths += _save(fig, out_dir, f"alphas_{search.space}_{search.dataset}_{search.method}_{search.task}"
                                     f"_seed{search.seed}")
    return paths


def _accuracy_column(rows: pd.DataFrame, truth_metric: str) -> tuple[str | None, str]:
    """The accuracy a panel shows: the ground truth where the space has one (nb201), else the retraining's."""
    truth = f"truth_{truth_metric}"
    if truth in rows and rows[truth].notna().any():
        return truth, f"{truth_metric} of the derived cell (%)"
    if "eval_acc_best" in rows and rows.eval_acc_best.notna().any():
        task = rows.retrain_task.dropna().iloc[0]
        return "eval_acc_best", f"{task} accuracy of the derived cell, retrained (%)"
    return None, ""


def _published_lines(ax, column: str, truth_metric: str) -> None:
    if column != f"truth_{PUBLISHED_METRIC}" or truth_metric != PUBLISHED_METRIC:
        return
    for name, value, color in PUBLISHED_C10:
        ax.axhline(value, ls="--", lw=1, color=color)
        ax.annotate(f"{name}, NB201 paper: {value:.2f}", (1.0, value), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=6, color=color)


def derived_accuracy(table: pd.DataFrame, truth_metric: str, out_dir: Path) -> list[Path]:
    """Accuracy of each search's final derived cell per method, search task and seed (points; the mean as a
    marker): NB201's ground truth with the published GDAS and DARTS means, or the retrained accuracy."""
    groups = list(table.groupby(["space", "dataset"]))
    fig, axes = _grid(1, max(1, len(groups)), size=5.0)
    for k, ((space, dataset), rows) in enumerate(groups):
        ax = axes[0][k]
        column, label = _accuracy_column(rows, truth_metric)
        if column is None:
            ax.text(0.5, 0.5, "no ground truth and no retraining\n(study.retrain_derived: false)", ha="center",
                    transform=ax.transAxes, fontsize=8)
        else:
            order, methods = sorted(rows.task.unique()), sorted(rows.method.unique())
            colors = dict(zip(methods, sns.color_palette(n_colors=len(methods))))
            width = 0.8 / len(methods)  # each method's slot within a task's 0.8
            labelled: set[str] = set()
            for (task, method), group in rows.groupby(["task", "method"]):
                center = order.index(task) - 0.4 + width * (methods.index(method) + 0.5)
                spread = np.linspace(-0.25, 0.25, len(group)) * width if len(group) > 1 else np.zeros(1)
                ax.scatter(center + spread, group[column], s=22, alpha=0.8, color=colors[method],
                           label=None if method in labelled else method)
                labelled.add(method)
                ax.hlines(group[column].mean(), center - 0.4 * width, center + 0.4 * width, color="black", lw=1.5)
            ax.set_xticks(range(len(order)), order)
            _published_lines(ax, column, truth_metric)
            ax.set_ylabel(label)
            ax.legend(fontsize=7, title="method, one point per seed\n(black bar: mean)", title_fontsize=7)
        ax.set_xlabel("label source of the search")
        ax.set_title(f"{space}/{dataset}: the derived cells", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_dir, "derived_accuracy")


def _over_epochs(epochs: pd.DataFrame, column: str, label: str, title: str, name: str, out_dir: Path,
                 decorate=None) -> list[Path]:
    """``column`` per epoch and method: the mean over search tasks and seeds, with its 95% bootstrap interval."""
    groups = list(epochs.groupby(["space", "dataset"]))
    fig, axes = _grid(1, max(1, len(groups)), size=4.5)
    for k, ((space, dataset), rows) in enumerate(groups):
        ax = axes[0][k]
        sns.lineplot(data=rows, x="epoch", y=column, hue="method", errorbar=("ci", 95), seed=0, ax=ax, marker="o",
                     markersize=3)
        if decorate is not None:
            decorate(ax)
        ax.set_ylabel(label)
        counts = rows.groupby("method")[["task", "seed"]].nunique()
        ax.set_title(f"{space}/{dataset}: {title}\nmean over {counts.task.max()} tasks x {counts.seed.max()} seeds, "
                     "band: 95% bootstrap CI of the mean", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def skip_share_over_epochs(epochs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Share of skip-connections in each epoch's derived cell, per method: DARTS's collapse shows as it rising."""
    return _over_epochs(epochs, "skip_share", "skip_connect share of the derived cell", "skip-connections",
                        "skip_share_over_epochs", out_dir, lambda ax: ax.set_ylim(-0.05, 1.05))


def truth_over_epochs(epochs: pd.DataFrame, truth_metric: str, out_dir: Path) -> list[Path]:
    """NB201 ground truth of each epoch's derived cell, per method (only where the space has a ground truth)."""
    column = f"truth_{truth_metric}"
    rows = epochs.dropna(subset=[column]) if column in epochs else epochs.iloc[:0]
    if rows.empty:
        return []
    return _over_epochs(rows, column, f"{truth_metric} of the derived cell (%)", "ground truth of the derived cell",
                        "truth_over_epochs", out_dir, lambda ax: _published_lines(ax, column, truth_metric))


def skip_share_summary(epochs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, min and max skip share per (space, dataset, method, epoch) over search tasks and seeds."""
    return (epochs.groupby(["space", "dataset", "method", "epoch"])["skip_share"]
            .agg(["mean", "std", "min", "max", "count"]).reset_index())

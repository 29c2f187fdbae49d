"""Analysis jobs: tidy tables, correlations with the reference task, study figures."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text
from ..registry import ConfigError
from ..tracking import TrackedRun
from .job import _read_optional, begin_job, write_summary


def collect(kind: str, inputs: list[Path], out_file: Path) -> int:
    """Tidy one table from the per-job files: stand-alone results, proxy scores, search outcomes, or the
    differentiable searches (one row per search, or per search and epoch)."""
    from ..analysis import differentiable, tables

    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"collect {kind}: missing input files {missing[:3]}")
    if kind == "search":
        frame = tables.search_outcomes(inputs)
    elif kind == "differentiable":
        frame = differentiable.search_table(inputs)
    elif kind == "differentiable_epochs":
        frame = differentiable.epochs_table(inputs)
    else:
        frame = tables.concat(inputs)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_file, frame.to_csv(index=False))
    return len(frame)


def correlate(cfg: dict[str, Any], out_dir: Path, standalone: Path, proxies: Path | None, zero_cost: Path | None,
              tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    import pandas as pd

    from ..analysis import tables

    started = time.time()
    study = cfg["study"]
    long = tables.proxy_frame(pd.read_csv(standalone), _read_optional(proxies), study["reference_task"],
                              study["acc_epoch"], _read_optional(zero_cost))
    begin_job(out_dir)
    with TrackedRun(cfg, "correlate", {"reference_task": study["reference_task"], **tags}, out_dir, tracking_info) as run:
        corr = tables.correlation_table(long, study["bootstrap"], cfg["seed"])
        atomic_write_text(out_dir / "correlations.csv", corr.to_csv(index=False))
        atomic_write_text(out_dir / "proxies_long.csv", long.to_csv(index=False))
        run.log_artifact(out_dir / "correlations.csv")
        pooled = corr[(corr.seed == "mean") & (corr.method == "spearman")]
        metrics = {f"spearman.{r.dataset}.{r.proxy.replace(':', '.')}": r.coef for r in pooled.itertuples()
                   if np.isfinite(r.coef)}
        run.log_metrics(metrics, step=0)
        return write_summary(out_dir, "correlate", cfg, run, started, {"rows": len(corr)},
                             {"standalone": str(standalone), "proxies": str(proxies) if proxies else None,
                              "zero_cost": str(zero_cost) if zero_cost else None},
                             {"correlations": str(out_dir / "correlations.csv"),
                              "proxies_long": str(out_dir / "proxies_long.csv")})


def figures(cfg: dict[str, Any], out_dir: Path, correlations_dir: Path, search_table: Path | None,
            tracking_info: dict | None, tags: dict[str, str]) -> dict[str, Any]:
    import pandas as pd

    from ..analysis import figures as fig
    from ..analysis import tables

    started = time.time()
    study = cfg["study"]
    reference = study["reference_task"]
    corr = pd.read_csv(correlations_dir / "correlations.csv", dtype={"seed": str})
    long = pd.read_csv(correlations_dir / "proxies_long.csv")
    search_rows = _read_optional(search_table)
    if search_rows is None:
        search_rows = pd.DataFrame(columns=["dataset", "search_task", "fitness", "best_fitness", "eval_acc_best"])
    begin_job(out_dir)
    with TrackedRun(cfg, "figures", {"reference_task": reference, **tags}, out_dir, tracking_info) as run:
        paths = []
        paths += fig.pretext_vs_reference(long, corr, reference, out_dir)
        paths += fig.rank_heatmap(tables.heatmap_table(corr), reference, out_dir)
        paths += fig.angle_vs_accuracy(long, corr, search_rows, reference, out_dir)
        best_paths, best_table = fig.best_of_m_figure(long, reference, study["best_of_draws_seed"], out_dir)
        paths += best_paths
        atomic_write_text(out_dir / "best_of_m.csv", best_table.to_csv(index=False))
        paths += fig.search_outcomes_figure(search_rows, long, reference, out_dir)
        for path in paths:
            run.log_artifact(path)
        return write_summary(out_dir, "figures", cfg, run, started, {"figures": len(paths)},
                             {"correlations": str(correlations_dir), "search": str(search_table)},
                             {"files": [str(p) for p in paths]})


def figures_differentiable(cfg: dict[str, Any], out_dir: Path, table: Path, epochs: Path, tracking_info: dict | None,
                           tags: dict[str, str]) -> dict[str, Any]:
    """The differentiable searches' figures: alphas per edge over the epochs, the derived cells' accuracy,
    the skip share (and, with a ground truth, the derived cell's truth) over the epochs."""
    import pandas as pd

    from ..analysis import differentiable as fig

    started = time.time()
    truth_metric = cfg["ground_truth"]["truth"]
    searches = pd.read_csv(table)
    per_epoch = pd.read_csv(epochs)
    begin_job(out_dir)
    with TrackedRun(cfg, "figures-differentiable", {"truth": truth_metric, **tags}, out_dir, tracking_info) as run:
        paths = []
        paths += fig.alpha_heatmaps(searches, out_dir)
        paths += fig.derived_accuracy(searches, truth_metric, out_dir)
        paths += fig.skip_share_over_epochs(per_epoch, out_dir)
        paths += fig.truth_over_epochs(per_epoch, truth_metric, out_dir)
        skip = fig.skip_share_summary(per_epoch)
        atomic_write_text(out_dir / "skip_share.csv", skip.to_csv(index=False))
        paths.append(out_dir / "skip_share.csv")
        for path in paths:
            run.log_artifact(path)
        return write_summary(out_dir, "figures-differentiable", cfg, run, started,
                             {"figures": sum(p.suffix == ".png" for p in paths), "searches": len(searches)},
                             {"table": str(table), "epochs": str(epochs)}, {"files": [str(p) for p in paths]})

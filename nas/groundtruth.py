"""Ground truth for architectures: the NAS-Bench-201 table shipped with the package, a published table
mapped by config, or the official NATS-Bench file.

Benchmark semantics are the user's explicit choice and are recorded with every result: which split
(``cifar10-valid`` vs ``cifar10``), which training length (``hp`` 12 vs 200 epochs), and seed-mean vs
one random seed (``is_random``); see shared/reference/nb201-gdas-darts.md, sec. 7.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd

from .registry import ConfigError
from .spaces import SearchSpace

# Built by tools/build_nb201_table.py; sources and rounding in nas/resources/README.md.
NB201_TABLE = Path(__file__).resolve().parent / "resources" / "nb201.csv.gz"
# Every metric of the packaged table: NB201 accuracy (%), mean over the benchmark's seeds (is_random=False).
NB201_METRICS = {
    "cifar10_test_200ep": "cifar10 (trained on all 50k images), ori-test, 200 epochs (RLNAS's CIFAR-10 truth)",
    "cifar100_test_200ep": "cifar100, x-test, 200 epochs",
    "imagenet16_test_200ep": "ImageNet16-120, x-test, 200 epochs",
    "cifar10valid_valid_200ep": "cifar10-valid (trained on 25k), x-valid (the other 25k), 200 epochs",
    "cifar10valid_test_200ep": "cifar10-valid (trained on 25k), ori-test, 200 epochs",
    "cifar10_test_12ep": "cifar10, ori-test, 12 epochs",
    "cifar10valid_valid_12ep": "cifar10-valid, x-valid, 12 epochs",
    "cifar100_test_12ep": "cifar100, x-test, 12 epochs",
    "cifar100_valid_12ep": "cifar100, x-valid, 12 epochs",
    "imagenet16_test_12ep": "ImageNet16-120, x-test, 12 epochs",
    "imagenet16_valid_12ep": "ImageNet16-120, x-valid, 12 epochs",
}
# What source nb201 compares with when ground_truth.metrics is empty: the three truths of RLNAS's
# transfer_robustness.py (200-epoch test accuracy on each benchmark dataset).
NB201_DEFAULT_METRICS = ("cifar10_test_200ep", "cifar100_test_200ep", "imagenet16_test_200ep")


@functools.lru_cache(maxsize=1)
def _nb201_table() -> pd.DataFrame:
    if not NB201_TABLE.is_file():
        raise ConfigError(f"ground_truth.source 'nb201': the packaged table {str(NB201_TABLE)!r} is missing; "
                          "reinstall the package or rebuild it with tools/build_nb201_table.py")
    return pd.read_csv(NB201_TABLE)


def nb201_table() -> pd.DataFrame:
    """The packaged NAS-Bench-201 table: index, arch (cell string) and every column of ``NB201_METRICS``."""
    return _nb201_table().copy()


def from_nb201(cfg: dict[str, Any], space: SearchSpace) -> pd.DataFrame:
    if space.name != "nb201":
        raise ConfigError(f"ground_truth.source 'nb201' holds NAS-Bench-201 cells; space {space.name!r} is not nb201")
    if cfg["path"]:
        raise ConfigError(f"ground_truth.path: {cfg['path']!r} is not read by source 'nb201' (the packaged table); "
                          "use source 'table' for a file of your own")
    metrics = cfg["metrics"] or {name: name for name in NB201_DEFAULT_METRICS}
    unknown = sorted(col for col in metrics.values() if col not in NB201_METRICS)
    if unknown:
        raise ConfigError(f"ground_truth.metrics: {', '.join(map(repr, unknown))} not in the packaged NB201 table; "
                          f"its metrics: {', '.join(NB201_METRICS)}")
    table = nb201_table()
    out = table[["index", "arch"]].copy()
    for name, column in metrics.items():
        out[name] = table[column].to_numpy()
    return out


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix in (".pkl", ".pickle"):
        table = pd.read_pickle(path)
    elif path.suffix in (".csv", ".gz"):
        table = pd.read_csv(path)
    else:
        raise ConfigError(f"ground_truth.path: {str(path)!r} must be a .csv or a pandas pickle (.pkl)")
    if not isinstance(table, pd.DataFrame):
        raise ConfigError(f"ground_truth.path: {str(path)!r} does not hold a table")
    return table


def from_table(cfg: dict[str, Any], space: SearchSpace) -> pd.DataFrame:
    path = Path(cfg["path"] or "").expanduser()
    if not cfg["path"] or not path.is_file():
        raise ConfigError(f"ground_truth.path: benchmark table {cfg['path']!r} does not exist")
    if not cfg["metrics"]:
        raise ConfigError("ground_truth.metrics: name at least one metric, e.g. {test_acc: <column>}")
    table = _read_table(path)
    column = cfg["cell_column"]
    if column not in table.columns:
        raise ConfigError(f"ground_truth.cell_column: table {str(path)!r} has no column {column!r}; "
                          f"its columns: {', '.join(map(str, table.columns))}")
    missing = {name: col for name, col in cfg["metrics"].items() if col not in table.columns}
    if missing:
        raise ConfigError(f"ground_truth.metrics: table {str(path)!r} has no column(s) {missing}; "
                          f"its columns: {', '.join(map(str, table.columns))}")
    archs = [space.from_str(text) for text in table[column].astype(str)]
    out = pd.DataFrame({"index": [space.to_index(a) for a in archs], "arch": [space.to_str(a) for a in archs]})
    for name, col in cfg["metrics"].items():
        out[name] = pd.to_numeric(table[col], errors="raise").to_numpy()
    return out


def from_nats_bench(cfg: dict[str, Any], space: SearchSpace) -> pd.DataFrame:
    try:
        from nats_bench import create
    except ImportError:
        raise ConfigError("ground_truth.source: 'nats_bench' needs the optional package nats_bench "
                          "(pip install nats_bench) and the benchmark file") from None
    path = Path(cfg["path"] or "").expanduser()
    if not cfg["path"] or not path.exists():
        raise ConfigError(f"ground_truth.path: NATS-Bench file {cfg['path']!r} does not exist")
    nats = cfg["nats_bench"]
    api = create(str(path), "tss", fast_mode=True, verbose=False)
    name = f"{nats['dataset']}/{nats['metric']}/hp{nats['hp']}"
    rows = []
    for index in range(space.num_archs()):
        info = api.get_more_info(index, nats["dataset"], iepoch=None, hp=nats["hp"], is_random=nats["is_random"])
        if nats["metric"] not in info:
            raise ConfigError(f"ground_truth.nats_bench.metric: {nats['metric']!r} is not reported for dataset "
                              f"{nats['dataset']!r} (it reports {', '.join(sorted(info))})")
        rows.append({"index": index, "arch": api.arch(index), name: info[nats["metric"]]})
    return pd.DataFrame(rows)


def load_ground_truth(cfg: dict[str, Any], space: SearchSpace) -> tuple[pd.DataFrame, str]:
    """(table with columns index, arch and one column per metric, the name of the truth metric)."""
    if cfg["source"] == "none":
        raise ConfigError("ground_truth.source is 'none'; set it to 'nb201', 'table' or 'nats_bench'")
    if cfg["source"] in ("nb201", "table"):
        truth = cfg["truth"]
        named = list(cfg["metrics"]) or (list(NB201_DEFAULT_METRICS) if cfg["source"] == "nb201" else [])
        if truth not in named:
            raise ConfigError(f"ground_truth.truth: {truth!r} is not one of the metrics named in ground_truth.metrics "
                              f"({', '.join(named)})")
        table = from_nb201(cfg, space) if cfg["source"] == "nb201" else from_table(cfg, space)
    else:
        table = from_nats_bench(cfg, space)
        nats = cfg["nats_bench"]
        truth = f"{nats['dataset']}/{nats['metric']}/hp{nats['hp']}"
    if table["index"].duplicated().any():
        raise ConfigError(f"ground_truth: the table lists {int(table['index'].duplicated().sum())} cells twice")
    return table.sort_values("index").reset_index(drop=True), truth

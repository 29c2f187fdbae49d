"""Build nas/resources/nb201.csv.gz, the NAS-Bench-201 ground truth shipped with the package.

Reads the three published tables (see nas/resources/README.md for their sources) and writes one
row per cell: benchmark index, cell string, and the accuracies named in ``nas.groundtruth.NB201_METRICS``.
Before writing it checks that every row's cell string maps to the row's index through
``nas.spaces`` (one table has no index column: its row number is its index), that the three tables
name the same cell at every index, that rounding to ``DECIMALS`` keeps every column's order and ties
as they are at 3 decimals (what rounding drops is the float32 noise of the seed means, below 1e-4),
and the benchmark's known best values.

    python tools/build_nb201_table.py [--tables ../shared/data/nb201] [--out nas/resources/nb201.csv.gz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from nas.groundtruth import NB201_METRICS, NB201_TABLE
from nas.spaces import build_space

DECIMALS = 4
# (file, cell-string column, index column or None for "row number", {packaged metric: source column})
SOURCES = (
    ("nb201_200ep_test.csv", "ArchitectureString", None, {
        "cifar10_test_200ep": "CIFAR10TestAccuracy200Epochs",
        "cifar100_test_200ep": "CIFAR100TestAccuracy200Epochs",
        "imagenet16_test_200ep": "ImageNetTestAccuracy200Epochs",
    }),
    ("nb201_cifar10-valid_200ep.csv", "arch_str", "index", {
        "cifar10valid_valid_200ep": "valid-accuracy",
        "cifar10valid_test_200ep": "test-accuracy",
    }),
    ("nb201_12ep.csv", "cellstr", "arch", {
        "cifar10_test_12ep": "cifar10-test",
        "cifar10valid_valid_12ep": "cifar10-val",
        "cifar100_test_12ep": "cifar100-test",
        "cifar100_valid_12ep": "cifar100-val",
        "imagenet16_test_12ep": "imagenet-test",
        "imagenet16_valid_12ep": "imagenet-val",
    }),
)
# (metric, best value, index of the best cell), from the benchmark's paper and the tables' README
KNOWN_BEST = (("cifar10_test_200ep", 94.37, 6111), ("cifar100_test_200ep", 73.51, 9930),
              ("imagenet16_test_200ep", 47.31, 857), ("cifar10valid_valid_200ep", 91.61, 6111))


def build(tables: Path) -> pd.DataFrame:
    space = build_space({"name": "nb201", "channels": 16, "cells_per_stage": 5,
                         "supernet": {"bn_affine": False, "bn_track_stats": True}})
    out = pd.DataFrame({"index": np.arange(space.num_archs())})
    for filename, cell_column, index_column, metrics in SOURCES:
        source = pd.read_csv(tables / filename)
        strings = source[cell_column].astype(str).tolist()
        indices = [space.to_index(space.from_str(text)) for text in strings]
        rows = source[index_column].tolist() if index_column else list(range(len(source)))
        if indices != rows or sorted(indices) != out["index"].tolist():
            raise SystemExit(f"{filename}: cell strings do not map to the table's index (or not every cell appears)")
        if "arch" in out:
            if out["arch"].tolist() != strings:
                raise SystemExit(f"{filename}: names other cells at some indices than the tables before it")
        else:
            out["arch"] = strings
        for name, column in metrics.items():
            values = pd.to_numeric(source[column], errors="raise").to_numpy(dtype=float)
            if not np.isfinite(values).all():
                raise SystemExit(f"{filename}: column {column!r} holds missing values")
            out[name] = values
    if list(out.columns[2:]) != list(NB201_METRICS):
        raise SystemExit(f"metric columns {list(out.columns[2:])} differ from nas.groundtruth.NB201_METRICS")
    for name in NB201_METRICS:
        rounded = out[name].round(DECIMALS)
        if not (rankdata(rounded, method="dense") == rankdata(out[name].round(3), method="dense")).all():
            raise SystemExit(f"{name}: rounding to {DECIMALS} decimals changes the order or the ties of the values")
        out[name] = rounded
    for name, value, index in KNOWN_BEST:
        best = out.loc[out[name].idxmax()]
        if round(float(best[name]), 2) != value or int(best["index"]) != index:
            raise SystemExit(f"{name}: best {best[name]} at index {best['index']}, expected {value} at {index}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nb201",
                        help="folder of the three published CSV tables")
    parser.add_argument("--out", type=Path, default=NB201_TABLE)
    args = parser.parse_args()
    table = build(args.tables)
    # mtime 0: the same tables give the same bytes
    table.to_csv(args.out, index=False, compression={"method": "gzip", "compresslevel": 9, "mtime": 0})
    print(f"{len(table)} cells, {len(NB201_METRICS)} metrics -> {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()

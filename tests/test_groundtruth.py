"""The NAS-Bench-201 table shipped in the package (nas/resources/nb201.csv.gz) and ground_truth.source nb201."""
from __future__ import annotations

import pytest

from nas.groundtruth import NB201_DEFAULT_METRICS, NB201_METRICS, NB201_TABLE, load_ground_truth, nb201_table
from nas.registry import ConfigError
from nas.spaces import build_space


def test_packaged_table_cells_map_to_their_index(space_cfg):
    space = build_space(space_cfg)
    table = nb201_table()
    assert list(table.columns) == ["index", "arch", *NB201_METRICS]
    assert table["index"].tolist() == list(range(15625))
    assert [space.to_index(space.from_str(text)) for text in table["arch"]] == list(range(15625))
    assert table[list(NB201_METRICS)].notna().all().all()
    assert NB201_TABLE.stat().st_size < 600_000  # stays small: 4 decimals, gzip


@pytest.mark.parametrize("metric, best, index", [
    ("cifar10_test_200ep", 94.37, 6111), ("cifar100_test_200ep", 73.51, 9930),
    ("imagenet16_test_200ep", 47.31, 857), ("cifar10valid_valid_200ep", 91.61, 6111),
])
def test_packaged_table_known_best_values(metric, best, index):
    table = nb201_table()
    row = table.loc[table[metric].idxmax()]
    assert (round(float(row[metric]), 2), int(row["index"])) == (best, index)


def test_packaged_table_rows_as_published():
    table = nb201_table().set_index("index")
    # index 0 and 1 of the three source tables (nats_bench.csv, cifar10_avg.csv, mini-bench), 4 decimals
    assert table.loc[0, "arch"] == (
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")
    assert table.loc[0, ["cifar10_test_200ep", "cifar100_test_200ep", "imagenet16_test_200ep"]].tolist() == [
        85.8633, 52.9133, 26.6333]
    assert table.loc[0, ["cifar10valid_valid_200ep", "cifar10valid_test_200ep"]].tolist() == [81.9827, 81.52]
    assert table.loc[1, ["cifar10_test_12ep", "cifar10valid_valid_12ep", "imagenet16_valid_12ep"]].tolist() == [
        88.22, 82.834, 35.4333]


def test_nb201_is_the_default_ground_truth(cfg):
    config = cfg()
    assert config["ground_truth"]["source"] == "nb201"
    table, truth = load_ground_truth(config["ground_truth"], build_space(config["space"]))
    assert truth == "cifar10_test_200ep"
    assert list(table.columns) == ["index", "arch", *NB201_DEFAULT_METRICS]
    assert NB201_DEFAULT_METRICS == ("cifar10_test_200ep", "cifar100_test_200ep", "imagenet16_test_200ep")
    chosen, truth = load_ground_truth(
        cfg('ground_truth.metrics={"c10v": "cifar10valid_valid_200ep"}', "ground_truth.truth=c10v")["ground_truth"],
        build_space(config["space"]))
    assert truth == "c10v" and chosen.loc[chosen.c10v.idxmax(), "index"] == 6111


@pytest.mark.parametrize("overrides, message", [
    (['ground_truth.metrics={"a": "cifar10_test_300ep"}', "ground_truth.truth=a"],
     "'cifar10_test_300ep' not in the packaged"),
    (["ground_truth.truth=c10"], "'c10' is not one of the metrics"),
    (["ground_truth.path=/data/nb201.csv"], "not read by source 'nb201'"),
])
def test_nb201_source_errors(cfg, overrides, message):
    config = cfg(overrides)
    with pytest.raises(ConfigError, match=message):
        load_ground_truth(config["ground_truth"], build_space(config["space"]))

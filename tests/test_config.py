"""Configuration: every bad value fails early with a ConfigError naming the key and the value; defaults; overrides."""
from __future__ import annotations

import pytest

from nas.config import apply_overrides, load_config, read_yaml, validate
from nas.registry import ConfigError
from nas.tasks import check_task_on_dataset


@pytest.mark.parametrize(
    "override,names",
    [
        ("foo=1", ["foo"]),
        ("train.foo=1", ["train.foo"]),
        ("space.supernet.bn_afine=true", ["space.supernet.bn_afine"]),
        ("train.epochs=abc", ["train.epochs", "'abc'", "integer"]),
        ("train.epochs=true", ["train.epochs", "True", "integer"]),
        ("train.lr=fast", ["train.lr", "'fast'", "number"]),
        ("train=5", ["'train'", "5"]),
        ("space.name=proxyless", ["space.name", "'proxyless'", "nb201", "darts", "nb101"]),
        ("task.name=inpaint", ["task.name", "'inpaint'", "cls", "rot", "col", "jig", "rand"]),
        ("dataset.name=svhn", ["dataset.name", "'svhn'", "mnist5k", "cifar10"]),
        ("study.datasets=[mnist5k,svhn]", ["study.datasets", "'svhn'"]),
        ("study.tasks=[cls,inpaint]", ["study.tasks", "'inpaint'"]),
        ("study.spaces=[proxyless]", ["study.spaces", "'proxyless'"]),
        ("seed=-1", ["'seed'", "-1"]),
        ("study.seeds=[0,-3]", ["study.seeds", "-3"]),
        ("study.seeds=[1,2,1]", ["study.seeds", "[1, 2, 1]", "duplicates"]),
        ("study.seeds=[]", ["study.seeds", "[]", "empty"]),
        ("study.datasets=[]", ["study.datasets", "[]", "empty"]),
        ("study.tasks=[rot,rot]", ["study.tasks", "'rot'", "duplicates"]),
        ("dataset.splits.train=0.9", ["dataset.splits", "0.9", "more than 1"]),
        ("dataset.splits.train=0", ["dataset.splits.train", "0"]),
        ("train.optimizer=rmsprop", ["train.optimizer", "'rmsprop'", "sgd", "adam"]),
        ("search.method=bayes", ["search.method", "'bayes'"]),
        ("task.jig.grid=4", ["task.jig.grid", "4"]),
        ("train.batch_size=0", ["train.batch_size", "0"]),
        ("supernet.foo=1", ["unknown config key 'supernet.foo'", "allowed here:", "sampling", "epochs"]),
        ("train.sampling=shared", ["unknown config key 'train.sampling'", "allowed here:", "epochs"]),
        ("supernet.sampling=both", ["supernet.sampling", "'both'", "per_cell", "shared"]),
        ("train.splits={train: 0.9, valid: 0.1, search: 0.1}", ["train.splits", "more than 1"]),
        ("supernet.splits={train: 0.5, valid: 0.5}", ["supernet.splits", "search"]),
        ("supernet.splits={train: 0.5, valid: 0, search: 0, test: 0.5}", ["supernet.splits.test", "allowed here:"]),
        ("search.candidates=all", ["search.candidates", "'all'", "rlnas", "trainable"]),
    ],
)
def test_bad_override_names_key_and_value(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    for name in names:
        assert name in message, (override, name, message)


def test_splits_summing_above_one_across_keys():
    with pytest.raises(ConfigError, match="dataset.splits") as err:
        load_config(None, ["dataset.splits.train=0.5", "dataset.splits.valid=0.3", "dataset.splits.search=0.3"])
    assert "0.3" in str(err.value) and "more than 1" in str(err.value)
    # exactly one is fine
    cfg = load_config(None, ["dataset.splits.train=0.5", "dataset.splits.valid=0.3", "dataset.splits.search=0.2"])
    assert cfg["dataset"]["splits"] == {"train": 0.5, "valid": 0.3, "search": 0.2}


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("seed: 1\ntrain:\n  epochs: 2\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch'"):
        load_config(path)


def test_unknown_key_in_supernet_and_train_sections_of_a_yaml_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("supernet:\n  epochs: 2\n  sampling: shared\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown config key 'supernet.epoch'; allowed here:" in str(err.value)
    path.write_text("train:\n  epochs: 2\n  sampling: shared\n")  # a supernet-only key
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown config key 'train.sampling'; allowed here:" in str(err.value)
    assert "sampling" not in str(err.value).split("allowed here:")[1]


def test_malformed_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: [1, 2\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "YAML" in str(err.value)


def test_yaml_file_with_a_list_at_top_level(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- seed: 1\n- train: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "list" in str(err.value) and "mapping" in str(err.value)


def test_yaml_file_with_a_scalar_at_top_level(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("42\n")
    with pytest.raises(ConfigError, match="int"):
        load_config(path)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nowhere" / "config.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "does not exist" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path)  # a folder is not a config file


@pytest.mark.parametrize("override", ["seed", "train.epochs", "=3", "train.epochs:3"])
def test_malformed_override(override):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert repr(override) in str(err.value) and "key.sub=value" in str(err.value)


def test_override_with_invalid_yaml_value():
    with pytest.raises(ConfigError, match="study.seeds"):
        load_config(None, ["study.seeds=[1, 2"])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="'seed'"):
        apply_overrides({"seed": 3}, ["seed.x=1"])


def test_validate_refuses_a_non_mapping():
    with pytest.raises(ConfigError, match="list"):
        validate([1, 2])


def test_col_on_gray_dataset_is_refused_early():
    with pytest.raises(ConfigError) as err:
        check_task_on_dataset("col", "mnist5k")
    assert "'col'" in str(err.value) and "'mnist5k'" in str(err.value)
    for task in ("cls", "rot", "jig", "rand"):
        check_task_on_dataset(task, "mnist5k")
    for task in ("cls", "rot", "col", "jig", "rand"):
        check_task_on_dataset(task, "cifar100")
    with pytest.raises(ConfigError, match="'inpaint'"):
        check_task_on_dataset("inpaint", "cifar10")
    with pytest.raises(ConfigError, match="'svhn'"):
        check_task_on_dataset("cls", "svhn")


def test_defaults_are_filled():
    cfg = load_config(None)
    assert cfg["train"]["epochs"] == 1
    assert cfg["supernet"]["epochs"] == 1 and cfg["supernet"] is not cfg["train"]
    assert cfg["seed"] == 0
    nb201 = {k: v for k, v in cfg["space"].items() if k not in ("darts", "nb101")}
    assert nb201 == {"name": "nb201", "channels": 16, "cells_per_stage": 5,
                     "supernet": {"bn_affine": False, "bn_track_stats": True}}
    assert cfg["space"]["darts"]["network"] == {"cells": 20, "channels": 36, "flops_budget": None, "stem": "cifar",
                                                "auxiliary": True, "aux_second_bn": False}
    assert cfg["space"]["nb101"] == {"stacks": 3, "modules_per_stack": 3, "channels": 128}
    assert cfg["dataset"]["splits"] == {"train": 0.6, "valid": 0.2, "search": 0.2}
    assert cfg["task"]["jig"]["num_permutations"] == 1000
    assert cfg["task"]["col"] == {"bins": "zhang313", "grid": 10, "bins_file": None, "crop": False}
    assert cfg["study"]["seeds"] == [0, 1]
    assert cfg["search"]["method"] == "evolution" and cfg["search"]["candidates"] == "rlnas"
    assert cfg["supernet"]["sampling"] == "per_cell" and "sampling" not in cfg["train"]
    assert cfg["supernet"]["splits"] is None and cfg["train"]["splits"] is None
    assert cfg["supernet"]["grad_clip"] == 5.0 and cfg["train"]["amp"] is True  # the $ref'd defaults, in both
    # defaults are copies: changing one config leaves the next one alone
    cfg["study"]["seeds"].append(9)
    cfg["train"]["epochs"] = 50
    fresh = load_config(None)
    assert fresh["study"]["seeds"] == [0, 1] and fresh["train"]["epochs"] == 1


def test_defaults_fill_around_given_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\nspace:\n  channels: 8\n")
    cfg = load_config(path, ["train.lr=0.1"])
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["lr"] == 0.1 and cfg["train"]["batch_size"] == 64
    assert cfg["space"]["channels"] == 8 and cfg["space"]["cells_per_stage"] == 5
    # an empty file is an empty config
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config(None)


def test_overrides_parse_yaml_values(cfg):
    out = cfg("study.seeds=[3,4]", "train.lr=1.0e-2", "train.nesterov=false", "dataset.root=", "task.name=rot",
              "train.grad_clip=null", "study.name=run-1")
    assert out["study"]["seeds"] == [3, 4] and all(type(s) is int for s in out["study"]["seeds"])
    assert out["train"]["lr"] == pytest.approx(0.01) and isinstance(out["train"]["lr"], float)
    assert out["train"]["nesterov"] is False
    assert out["dataset"]["root"] is None
    assert out["task"]["name"] == "rot"
    assert out["train"]["grad_clip"] is None
    assert out["study"]["name"] == "run-1"


def test_later_override_wins_and_overrides_beat_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 5\n")
    assert load_config(path)["seed"] == 5
    assert load_config(path, ["seed=6"])["seed"] == 6
    assert load_config(path, ["seed=6", "seed=8"])["seed"] == 8


# ---- per-stage splits -----------------------------------------------------------------------------------
def test_stage_splits_default_to_the_dataset_splits(cfg):
    from nas.config import stage_dataset

    base = cfg()
    assert stage_dataset(base, "supernet") == base["dataset"] == stage_dataset(base, "train")
    own = cfg("supernet.splits={train: 0.5, valid: 0.0, search: 0.5}", "train.splits={train: 1.0, valid: 0, search: 0}")
    assert stage_dataset(own, "supernet")["splits"] == {"train": 0.5, "valid": 0.0, "search": 0.5}
    assert stage_dataset(own, "train")["splits"] == {"train": 1.0, "valid": 0, "search": 0}
    assert own["dataset"]["splits"] == {"train": 0.6, "valid": 0.2, "search": 0.2}  # left alone
    assert {k: v for k, v in stage_dataset(own, "train").items() if k != "splits"} == \
        {k: v for k, v in own["dataset"].items() if k != "splits"}


def test_each_stage_loads_its_own_splits(cfg):
    import torch

    from nas.stages.job import _data_and_task

    own = cfg("dataset.limit=200", "dataset.image_size=8", "supernet.splits={train: 0.5, valid: 0.0, search: 0.5}",
              "train.splits={train: 1.0, valid: 0.0, search: 0.0}")
    sizes = {}
    for section in ("supernet", "train", None):
        data, _ = _data_and_task(own, torch.device("cpu"), section)
        sizes[section] = {k: len(v) for k, v in data.splits.items() if k != "test"}
    assert sizes["supernet"] == {"train": 100, "valid": 0, "search": 100}
    assert sizes["train"] == {"train": 200, "valid": 0, "search": 0}
    assert sizes[None] == {"train": 120, "valid": 40, "search": 40}


def test_a_supernet_trained_on_other_splits_is_refused(cfg, tmp_path):
    import json

    import torch
    import yaml

    from nas.stages.supernet import _load_supernet

    trained = cfg("supernet.splits={train: 0.5, valid: 0.0, search: 0.5}")
    (tmp_path / "summary.json").write_text(json.dumps({"stage": "train-supernet", "status": "complete"}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(trained))
    for job in (cfg(), cfg("supernet.splits={train: 0.6, valid: 0.0, search: 0.4}")):
        with pytest.raises(ConfigError, match="other splits") as err:
            _load_supernet(job, tmp_path, torch.device("cpu"))
        assert "0.5" in str(err.value)
    # the same splits pass this check (and the job stops later, at the weights this folder lacks)
    with pytest.raises(ConfigError, match="weights"):
        _load_supernet(cfg("supernet.splits={train: 0.5, valid: 0.0, search: 0.5}"), tmp_path, torch.device("cpu"))

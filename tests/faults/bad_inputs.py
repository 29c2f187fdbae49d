"""Malformed inputs, each of which a job must refuse before any training, naming the problem.

One table, used by tests/faults/test_bad_inputs.py (in-process, fast) and benchmarks/faults.py
(through the installed command line, as a user would run it).
"""
from __future__ import annotations

import json
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from jobs import BEST_CELL, tiny_config, write_config

EXIT_BAD_INPUT, EXIT_NO_TRACKING = 2, 3


@dataclass(frozen=True)
class BadInput:
    name: str
    make: Callable[[Path], list[str]]  # prepares files under a fresh folder, returns the `nas` arguments
    message: str  # what stderr must say
    exit_code: int = EXIT_BAD_INPUT


def _train(folder: Path, *extra: str, config: Path | None = None, arch: str | None = BEST_CELL) -> list[str]:
    config = config or write_config(folder)
    args = ["train", "--config", str(config), "--out", str(folder / "job"), *extra]
    return args + (["--arch", arch] if arch and "--arch" not in extra and "--archs" not in extra else [])


def _override(*overrides: str, arch: str | None = BEST_CELL) -> Callable[[Path], list[str]]:
    return lambda folder: _train(folder, *overrides, arch=arch)


def _config_text(text: str) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        path = folder / "bad.yaml"
        path.write_text(text)
        return _train(folder, config=path)
    return make


def _stage(stage: str, *overrides: str) -> Callable[[Path], list[str]]:
    return lambda folder: [stage, "--config", str(write_config(folder)), "--out", str(folder / "job"), *overrides]


def _archs_file(content: str) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        path = folder / "archs.json"
        path.write_text(content)
        return _train(folder, "--archs", str(path), arch=None)
    return make


def _fake_supernet(folder: Path, task: str) -> Path:
    """A folder that looks like a finished train-supernet job on ``task`` (no weights needed to be refused)."""
    supernet = folder / "supernet"
    supernet.mkdir()
    cfg = tiny_config(folder, **{"task.name": task})
    from nas.config import validate

    (supernet / "config.yaml").write_text(yaml.safe_dump(validate(cfg)))
    (supernet / "summary.json").write_text(json.dumps({"stage": "train-supernet", "status": "complete",
                                                       "mlflow_run_id": None}))
    return supernet


def _search_other_task(folder: Path) -> list[str]:
    supernet = _fake_supernet(folder, "rot")
    return ["search", "--config", str(write_config(folder)), "task.name=rand", "--supernet", str(supernet),
            "--out", str(folder / "job")]


def _score_untrained_supernet(folder: Path) -> list[str]:
    (folder / "empty").mkdir()
    archs = folder / "archs.json"
    archs.write_text(json.dumps({"space": "nb201", "archs": [{"arch": BEST_CELL}]}))
    return ["score", "--config", str(write_config(folder)), "--supernet", str(folder / "empty"), "--archs", str(archs),
            "--out", str(folder / "job")]


def _running_job_with(folder: Path, checkpoint: bytes) -> None:
    """Leave ``folder``/job as a killed job would: state running and a checkpoint where the job resumes."""
    from jobs import arch_index

    arch_dir = folder / "job" / f"arch-{arch_index(BEST_CELL):05d}"
    arch_dir.mkdir(parents=True)
    (folder / "job" / ".job_state.json").write_text('{"state": "running"}')
    (arch_dir / "checkpoint.pt").write_bytes(checkpoint)


def _foreign_checkpoint(folder: Path) -> list[str]:
    from nas.io import atomic_torch_save

    atomic_torch_save({"format": 1, "identity": {"stage": "train-supernet", "space": {"name": "nb201"}}, "epoch": 1},
                      folder / "foreign.pt")
    _running_job_with(folder, (folder / "foreign.pt").read_bytes())
    return _train(folder)


def _truncated_checkpoint(folder: Path) -> list[str]:
    from nas.io import atomic_torch_save

    atomic_torch_save({"format": 1, "identity": {}, "epoch": 1, "padding": list(range(5000))}, folder / "whole.pt")
    whole = (folder / "whole.pt").read_bytes()
    _running_job_with(folder, whole[: len(whole) // 2])
    return _train(folder)


def _fake_cifar(folder: Path, truncate: bool) -> list[str]:
    """A cifar-10-batches-py folder whose files exist but do not match the published checksums."""
    root = folder / "cifar"
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for name in names:
        payload = pickle.dumps({"data": [[0] * 3072] * 4, "labels": [0] * 4})
        (batches / name).write_bytes(payload[: len(payload) // 3] if truncate else payload)
    if not truncate:
        (batches / "data_batch_3").unlink()
    return _train(folder, "dataset.name=cifar10", f"dataset.root={root}")


def _truth_table(folder: Path, columns: str, metric_column: str = "acc") -> list[str]:
    table = folder / "truth.csv"
    table.write_text(f"{columns}\n{BEST_CELL},93.1\n")
    return ["ground-truth", "--config", str(write_config(folder)), "--out", str(folder / "job"),
            "ground_truth.source=table", f"ground_truth.path={table}", f"ground_truth.metrics={{c10: {metric_column}}}",
            "ground_truth.truth=c10"]


def _unreachable_server(folder: Path) -> list[str]:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return _train(folder, f"tracking.uri=http://127.0.0.1:{port}")


def _sqlite_store_not_a_database(folder: Path) -> list[str]:
    (folder / "store.db").write_bytes(b"this is not an sqlite database" * 100)
    return _train(folder, f"tracking.uri=sqlite:///{folder / 'store.db'}")


def _imagefolder_truncated(folder: Path) -> list[str]:
    root = folder / "images" / "cat"
    root.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "a.png")
    whole = (root / "a.png").read_bytes()
    (root / "b.png").write_bytes(whole[: len(whole) // 2])
    return _train(folder, "dataset.name=imagefolder", f"dataset.root={folder / 'images'}", "dataset.image_size=16",
                  "dataset.limit=null")


CASES: list[BadInput] = [
    # the config file itself
    BadInput("config file missing", lambda f: _train(f, config=f / "nope.yaml"), "does not exist"),
    BadInput("malformed YAML", _config_text("train: {epochs: 1\n"), "is not valid YAML"),
    BadInput("YAML not a mapping", _config_text("- 1\n- 2\n"), "must hold a mapping at top level"),
    BadInput("unknown top-level key", _config_text("trian: {epochs: 1}\n"), "trian"),
    BadInput("unknown nested key", _override("train.epochz=1"), "unknown config key 'train.epochz'"),
    BadInput("wrong type: text for a number", _override("train.lr=fast"), "train.lr"),
    BadInput("wrong type: text for a boolean", _override("progress=maybe"), "progress"),
    BadInput("wrong type: value for a section", _override("train=3"), "'train'"),
    BadInput("no GPU slots", _override("gpu_slots=0"), "gpu_slots"),
    BadInput("override without '='", _override("train.lr"), "key.sub=value"),
    BadInput("unknown command-line flag", _override("--epochs", "3"), "unrecognized arguments: --epochs"),
    BadInput("malformed --tag", _override("--tag", "rule"), "--tag 'rule' must look like key=value"),
    # names that must be one of a registry
    BadInput("unknown space", _override("space.name=proxyless"), "'space.name': 'proxyless' is not allowed"),
    BadInput("unknown task", _override("task.name=nope"), "'task.name': 'nope' is not allowed"),
    BadInput("unknown dataset", _override("dataset.name=imagenet"), "'dataset.name': 'imagenet' is not allowed"),
    BadInput("unknown fitness", _stage("search", "--supernet", "x", "search.fitness=loss"), "'search.fitness': 'loss'"),
    BadInput("unknown search method", _stage("search", "--supernet", "x", "search.method=bayes"), "'search.method': 'bayes'"),
    BadInput("task the dataset cannot support", _override("task.name=col"), "task 'col' cannot run on dataset 'mnist5k'"),
    # numbers out of range
    BadInput("negative seed", _override("seed=-1"), "'seed'"),
    BadInput("zero batch size", _override("train.batch_size=0"), "train.batch_size"),
    BadInput("negative learning rate", _override("train.lr=-0.1"), "train.lr"),
    BadInput("image size too small", _override("dataset.image_size=4"), "dataset.image_size"),
    BadInput("split fractions above 1", _override("dataset.splits.train=0.9"), "add up to more than 1"),
    BadInput("training split smaller than one batch", _override("dataset.limit=60", "train.batch_size=50"),
             "fewer than one batch of 50"),
    # the study grid
    BadInput("empty seed grid", _override("study.seeds=[]"), "study.seeds"),
    BadInput("empty dataset grid", _override("study.datasets=[]"), "study.datasets"),
    BadInput("duplicate seeds", _override("study.seeds=[0, 0]"), "study.seeds"),
    BadInput("more architectures than the space holds", _stage("sample", "sample.num_archs=20000"),
             "more than the"),
    # architectures
    BadInput("invalid cell string", _override(arch="|bogus~0|"), "invalid nb201 cell string"),
    BadInput("cell with too few edges", _override(arch="|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"),
             "invalid nb201 cell string"),
    BadInput("cell edge from a later node", _override(arch="|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"),
             "invalid nb201 cell string"),
    BadInput("architecture file missing", lambda f: _train(f, "--archs", str(f / "none.json"), arch=None), "does not exist"),
    BadInput("architecture file not JSON", _archs_file("{not json"), "is not valid JSON"),
    BadInput("architecture file of another space", _archs_file(json.dumps({"space": "darts", "archs": []})),
             "is for space 'darts'"),
    BadInput("shard out of range", _override("--shard", "3/2"), "--shard '3/2'"),
    BadInput("--top below 1", _override("--top", "0", "--archs", "x.json", arch=None), "--top"),
    # data on disk
    BadInput("dataset folder missing", _override("dataset.name=cifar10", "dataset.root=/nonexistent/cifar"),
             "not found or corrupted under '/nonexistent/cifar'"),
    BadInput("dataset file missing", lambda f: _fake_cifar(f, truncate=False), "not found or corrupted"),
    BadInput("dataset file truncated", lambda f: _fake_cifar(f, truncate=True), "not found or corrupted"),
    BadInput("image file truncated", _imagefolder_truncated, "b.png' cannot be read"),
    # earlier outputs
    BadInput("supernet not trained yet", _score_untrained_supernet, "the train-supernet stage has not completed"),
    BadInput("supernet trained on another task", _search_other_task, "was trained with other task settings"),
    BadInput("checkpoint of another job", _foreign_checkpoint, "belongs to another job"),
    BadInput("truncated checkpoint", _truncated_checkpoint, "cannot be read"),
    # ground truth
    BadInput("truth table missing", _stage("ground-truth", "ground_truth.source=table", "ground_truth.path=/no/table.csv",
                                           "ground_truth.metrics={c10: acc}", "ground_truth.truth=c10"), "/no/table.csv"),
    BadInput("truth table without the cell column", lambda f: _truth_table(f, "cell,acc"), "arch_str"),
    BadInput("truth table without the metric column", lambda f: _truth_table(f, "arch_str,acc", "top1"), "top1"),
    BadInput("truth metric not configured", _stage("ground-truth", "ground_truth.source=table",
                                                   "ground_truth.path=x.csv", "ground_truth.truth=c10"), "c10"),
    # tracking store
    BadInput("tracking server not listening", _unreachable_server, "is unreachable", EXIT_NO_TRACKING),
    BadInput("tracking store not a database", _sqlite_store_not_a_database, "is unreachable", EXIT_NO_TRACKING),
]

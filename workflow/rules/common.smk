# Grid and path helpers shared by every rule file. Each job calls the `nas` CLI with the study's
# resolved config plus the overrides its wildcards fix.
import hashlib
import itertools
import json
import math
import os
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from nas.config import apply_overrides, validate as validate_job_config
from nas.registry import ConfigError
from nas.tasks import check_task_on_dataset

# The Python that runs Snakemake has `nas` importable (this file imports it), so jobs use the same one.
NAS = f"{shlex.quote(sys.executable)} -m nas"
STUDY = config["study"]
RESULTS = f"{config['results_dir']}/{STUDY['name']}"
TRACKING = f"{RESULTS}/tracking.json"
CONFIG_FILE = f"{RESULTS}/config.yaml"
SPACES = STUDY["spaces"]
DATASETS = STUDY["datasets"]
TASKS = STUDY["tasks"]
SEEDS = STUDY["seeds"]
SUPERNET_TASKS = STUDY["supernet_tasks"]
FITNESSES = STUDY["fitnesses"]
REFERENCE = STUDY["reference_task"]
NUM_SHARDS = math.ceil(config["sample"]["num_archs"] / STUDY["shard_size"])
ZERO_COST = STUDY["zero_cost"]
NUM_PROXY_SHARDS = math.ceil(config["sample"]["num_archs"] / STUDY["proxy_shard_size"])
SCORE_ALL = STUDY["score_archs"] == "all"
SCORE_ARCHS = f"{RESULTS}/archs{'_all' if SCORE_ALL else ''}/{{space}}/archs.json"
GROUND_TRUTH = config["ground_truth"]["source"] != "none"
DIFF_METHODS = STUDY["differentiable_methods"]
DIFF_TASKS = STUDY["differentiable_tasks"]
RETRAIN_DERIVED = STUDY["retrain_derived"]
from nas.spaces import SPACES as _SPACES, build_space as _build_space

_no_supernet = [s for s in SPACES if not _SPACES.get(s).has_supernet]
if SUPERNET_TASKS and _no_supernet:
    raise WorkflowError(
        f"config key 'study.supernet_tasks': space {_no_supernet[0]!r} has no supernet (stand-alone training and "
        "proxies only); set study.supernet_tasks to [] or choose a space with one (nb201, darts)"
    )
_not_listable = [s for s in SPACES if not _SPACES.get(s).enumerable]
if SCORE_ALL and _not_listable:
    raise WorkflowError(
        f"config key 'study.score_archs': 'all' lists every cell of the space; space {_not_listable[0]!r} is too "
        "large to list; use 'sampled'"
    )
if SCORE_ALL:
    NUM_SCORED = _build_space(config["space"]).num_archs()
else:
    NUM_SCORED = config["sample"]["num_archs"]
NUM_SCORE_SHARDS = math.ceil(NUM_SCORED / STUDY["score_shard_size"])

# ---- checks that must fail before any job starts ------------------------------------------------
if not TASKS and not SUPERNET_TASKS and not ZERO_COST and not DIFF_METHODS:
    raise WorkflowError(
        "the study's grid is empty: config keys 'study.tasks', 'study.supernet_tasks' and "
        "'study.differentiable_methods' are empty and 'study.zero_cost' is false, so no job would run"
    )
if bool(DIFF_METHODS) != bool(DIFF_TASKS):
    _set, _empty = ("differentiable_methods", "differentiable_tasks") if DIFF_METHODS else (
        "differentiable_tasks", "differentiable_methods")
    raise WorkflowError(
        f"config key 'study.{_empty}' is empty while 'study.{_set}' is {STUDY[_set]}: a differentiable search needs "
        "a method and a task; set both, or neither"
    )
if TASKS and REFERENCE not in TASKS:
    raise WorkflowError(f"config key 'study.reference_task': {REFERENCE!r} must be one of study.tasks {TASKS}")
if ZERO_COST and not TASKS and not GROUND_TRUTH and not SUPERNET_TASKS:
    raise WorkflowError(
        "config key 'study.tasks' is empty and 'ground_truth.source' is 'none': with no stand-alone accuracy "
        "and no ground truth there is nothing to compare the proxies with"
    )
# every task a job of the study trains on: stand-alone, supernet, differentiable search, retraining of its cell
JOB_TASKS = sorted(
    set(TASKS) | set(SUPERNET_TASKS) | set(DIFF_TASKS) | ({REFERENCE} if DIFF_METHODS and RETRAIN_DERIVED else set())
)
for _dataset in DATASETS:
    for _task in JOB_TASKS:
        try:
            check_task_on_dataset(_task, _dataset)
        except ConfigError as err:
            raise WorkflowError(
                f"config key 'study.tasks', 'study.supernet_tasks' or 'study.differentiable_tasks': {err}"
            )


def extra_overrides(task=None, dataset=None):
    """The study's per-task and per-dataset overrides for one job, as key=value words."""
    pairs = {}
    pairs.update(STUDY["dataset_overrides"].get(dataset, {}))
    pairs.update(STUDY["task_overrides"].get(task, {}))
    return [f"{k}={json.dumps(v)}" for k, v in pairs.items()]


for _dataset in DATASETS:
    for _task in JOB_TASKS:
        _words = extra_overrides(_task, _dataset)
        try:
            validate_job_config(apply_overrides(json.loads(json.dumps(config)), _words))
        except ConfigError as err:
            raise WorkflowError(
                f"config key 'study.task_overrides' or 'study.dataset_overrides' ({_task} on {_dataset}): {err}"
            )

if DIFF_METHODS:
    from nas.search.differentiable import check_differentiable

    # each search's own config (its space, method, task and dataset overrides) must run: a method on a space it
    # cannot search (unas off darts, any method on nb101) stops the study here
    for _space, _method, _dataset, _task in itertools.product(SPACES, DIFF_METHODS, DATASETS, DIFF_TASKS):
        _words = [f"space.name={_space}", f"differentiable.method={_method}", *extra_overrides(_task, _dataset)]
        try:
            _job = validate_job_config(apply_overrides(json.loads(json.dumps(config)), _words))
            check_differentiable(_build_space(_job["space"]), _job["differentiable"])
        except ConfigError as err:
            raise WorkflowError(
                f"config key 'study.differentiable_methods' ({_method!r} on space {_space!r}, task {_task!r}, "
                f"dataset {_dataset!r}): {err}"
            )

if GROUND_TRUTH and config["ground_truth"]["source"] in ("nb201", "table"):
    from nas.groundtruth import load_ground_truth
    from nas.spaces import build_space

    try:  # a missing file, column or metric must stop the study here, not after hours of training
        load_ground_truth(config["ground_truth"], build_space(config["space"]))
    except ConfigError as err:
        raise WorkflowError(str(err))

# The tracking store must be absolute, or jobs started elsewhere would log into a store of their own.
os.environ.setdefault(
    "MLFLOW_TRACKING_URI", f"sqlite:///{Path(config['results_dir']).resolve() / 'mlflow.db'}"
)


# ---- the resolved config every job reads ---------------------------------------------------------
def _write_resolved_config():
    text = yaml.safe_dump(config, sort_keys=True)
    path = Path(CONFIG_FILE)
    if not path.is_file() or path.read_text() != text:  # unchanged content keeps its mtime
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


_write_resolved_config()


def settings(*sections):
    """A digest of the config sections a job depends on; when it changes, exactly the affected jobs re-run."""
    chosen = {s: config[s] for s in sections}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def nas_command(stage, rule_name, **fixed):
    """The `nas <stage>` command line of a job: config, overrides from wildcards, tracking and tags."""

    def build(wildcards):
        values = {k: wildcards[k] for k in ("space", "dataset", "task", "seed") if k in wildcards.keys()}
        values.update(fixed)  # e.g. the reference task for retraining a search's pick
        overrides = []
        names = {"space": "space.name", "dataset": "dataset.name", "task": "task.name", "seed": "seed"}
        for key, value in values.items():
            overrides.append(f"{names.get(key, key)}={value}")
        overrides += [shlex.quote(w) for w in extra_overrides(values.get("task"), values.get("dataset"))]
        tags = [f"--tag rule={rule_name}"] + [f"--tag wildcard.{k}={v}" for k, v in wildcards.items()]
        return " ".join(
            [NAS, stage, f"--config {CONFIG_FILE}", *overrides, f"--tracking-info {TRACKING}", *tags, "progress=false"]
        )

    return build


def final_targets():
    """What `all_figures` builds: the study figures when tasks train stand-alone, the ground-truth panel when one is
    set and something is scored against it; a supernet study with neither ends with the table of its retrained
    picks; differentiable searches end with their own figures."""
    targets = []
    if TASKS:
        targets.append(f"{RESULTS}/figures/summary.json")
    if GROUND_TRUTH and (TASKS or SUPERNET_TASKS or ZERO_COST):
        targets.append(f"{RESULTS}/groundtruth/correlations/summary.json")
    if SUPERNET_TASKS and not targets:  # a search study (RLNAS DARTS): supernet, search, and the retrained picks
        targets.append(f"{RESULTS}/tables/search.csv")
    if DIFF_METHODS:
        targets.append(f"{RESULTS}/figures/differentiable/summary.json")
    return targets


def run_dir(stage, *parts):
    return os.path.join(RESULTS, stage, "{space}", "{dataset}", "{task}", "seed{seed}", *parts)


def expand_grid(pattern, tasks, **extra):
    return expand(pattern, space=SPACES, dataset=DATASETS, task=tasks, seed=SEEDS, **extra)

"""The pipeline stages behind the CLI. Each ends by writing ``summary.json``, the file the next stage reads.

One module per family of stages (``study``, ``supernet``, ``differentiable``, ``standalone``, ``zerocost``,
``analysis``, ``groundtruth``) over ``job``, what every job shares; the names below are the package's interface.
"""
from .analysis import collect, correlate, figures
from .differentiable import search_differentiable
from .groundtruth import correlate_truth, ground_truth
from .job import (JOB_FILES, JOB_STATE, SUMMARY, begin_job, confirm_summary, end_job, read_archs, read_summary,
                  shard_of, write_summary, write_table)
from .standalone import describe, train
from .study import sample, tracking_init
from .supernet import MODEL_SECTIONS, score, search, train_supernet
from .zerocost import first_batch, proxies

__all__ = [
    "JOB_FILES", "JOB_STATE", "MODEL_SECTIONS", "SUMMARY", "begin_job", "collect", "confirm_summary", "correlate",
    "correlate_truth", "describe", "end_job", "figures", "first_batch", "ground_truth", "proxies", "read_archs",
    "read_summary", "sample", "score", "search", "search_differentiable", "shard_of", "tracking_init", "train", "train_supernet",
    "write_summary", "write_table",
]

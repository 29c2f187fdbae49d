"""``nas <stage> --config FILE [key=value ...] --out DIR``: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Sequence

from .registry import ConfigError


def _common(parser: argparse.ArgumentParser, out: bool = True) -> None:
    parser.add_argument("--config", help="YAML config file (defaults come from the schema)")
    if out:
        parser.add_argument("--out", required=True, type=Path, help="output folder of this job")
        parser.add_argument("--tracking-info", type=Path,
                            help="tracking.json written by `nas tracking-init` (experiment and parent run)")
        parser.add_argument("--tag", action="append", default=[], metavar="key=value",
                            help="extra MLflow tag, e.g. rule=train_supernet (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas", description=__doc__,
        epilog="Any argument of the form key.sub=value overrides that config key, e.g. task.name=rot seed=1.")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="stage")

    p = stages.add_parser("tracking-init", help="create the MLflow store, the study's experiment and parent run")
    _common(p, out=False)
    p.add_argument("--out", required=True, type=Path, help="tracking.json to write")

    p = stages.add_parser("sample", help="N distinct architectures of a space, seeded")
    _common(p)

    p = stages.add_parser("train-supernet", help="single-path (SPOS) supernet training on any task")
    _common(p)

    p = stages.add_parser("score", help="supernet accuracy, RLNAS angle, params and FLOPs of listed architectures")
    _common(p)
    p.add_argument("--supernet", required=True, type=Path, help="output folder of train-supernet")
    p.add_argument("--archs", required=True, type=Path, help="archs.json written by `nas sample`")
    p.add_argument("--shard", help="score only shard i of n of the listed architectures, as i/n")

    p = stages.add_parser("search", help="evolution or random search over a trained supernet")
    _common(p)
    p.add_argument("--supernet", required=True, type=Path, help="output folder of train-supernet")

    p = stages.add_parser("search-differentiable",
                          help="a differentiable search (differentiable.method: darts_v1, darts_v2, gdas) in one job")
    _common(p)

    p = stages.add_parser("train", help="stand-alone training of one architecture or a shard of several")
    _common(p)
    p.add_argument("--arch", action="append", help="architecture string (repeatable)")
    p.add_argument("--archs", type=Path, help="archs.json (from sample) or topk.json (from search)")
    p.add_argument("--shard", help="train only shard i of n of the listed architectures, as i/n")
    p.add_argument("--top", type=int, help="train only the first N architectures of --archs (e.g. the best found)")

    p = stages.add_parser("proxies", help="zero-cost proxies of untrained networks from one seeded minibatch")
    _common(p)
    p.add_argument("--archs", required=True, type=Path, help="archs.json written by `nas sample`")
    p.add_argument("--shard", help="score only shard i of n of the listed architectures, as i/n")

    p = stages.add_parser("ground-truth", help="the configured ground truth (published table or NATS-Bench) as a table")
    _common(p)

    p = stages.add_parser("correlate-truth", help="every proxy against the ground truth, with CIs and figures")
    _common(p)
    p.add_argument("--truth", required=True, type=Path, help="output folder of `nas ground-truth`")
    p.add_argument("--standalone", type=Path, help="table from `nas collect --kind standalone`")
    p.add_argument("--proxies", type=Path, help="table from `nas collect --kind proxies` (supernet scores)")
    p.add_argument("--zero-cost", type=Path, help="table from `nas collect --kind zero_cost`")
    p.add_argument("--searches", nargs="+", type=Path, default=[],
                   help="output folders of `nas search` by angle: their best cells are marked in the angle figure")

    p = stages.add_parser("collect", help="tidy one table from per-job result files")
    p.add_argument("--kind", required=True, choices=["standalone", "proxies", "search", "zero_cost", "differentiable",
                                                     "differentiable_epochs"],
                   help="differentiable(_epochs): --inputs are search-differentiable summary.json files (and, for "
                        "differentiable, the results.csv of their retrainings)")
    p.add_argument("--inputs", required=True, nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path, help="CSV to write")

    p = stages.add_parser("correlate", help="rank correlation of every proxy with the reference task, with CIs")
    _common(p)
    p.add_argument("--standalone", required=True, type=Path, help="table from `nas collect --kind standalone`")
    p.add_argument("--proxies", type=Path, help="table from `nas collect --kind proxies`")
    p.add_argument("--zero-cost", type=Path, help="table from `nas collect --kind zero_cost`")

    p = stages.add_parser("figures", help="the study figures (PNG and PDF), logged to MLflow")
    _common(p)
    p.add_argument("--correlations", required=True, type=Path, help="output folder of `nas correlate`")
    p.add_argument("--search", type=Path, help="table from `nas collect --kind search`")

    p = stages.add_parser("figures-differentiable",
                          help="the differentiable searches' figures (alphas, derived cells, skip share), "
                               "logged to MLflow")
    _common(p)
    p.add_argument("--table", required=True, type=Path, help="table from `nas collect --kind differentiable`")
    p.add_argument("--epochs", required=True, type=Path, help="table from `nas collect --kind differentiable_epochs`")

    p = stages.add_parser("tracking-sync", help="send the tracking calls a store missed (jobs that ran offline)")
    p.add_argument("folders", nargs="+", type=Path, help="job output folders or any folder above them, e.g. results/")
    p.add_argument("--uri", help="send to this store instead of the one each run was created in")

    p = stages.add_parser("describe", help="index, string, parameters and FLOPs of architectures, one JSON per line")
    _common(p, out=False)
    p.add_argument("--space", help="space name (overrides space.name)")
    p.add_argument("--arch", action="append", help="architecture string (repeatable)")
    p.add_argument("--all", action="store_true", help="every architecture of the space, in index order")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    return parser


def _parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--tag {item!r} must look like key=value")
        tags[key] = value
    return tags


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if r.startswith("-") or "=" not in r]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides look like key.sub=value)")
    args.overrides = rest
    from .config import load_config
    from .io import read_json

    overrides = list(args.overrides)
    if args.stage == "describe" and args.space:
        overrides.append(f"space.name={args.space}")
    if args.stage == "collect":
        from . import stages

        rows = stages.collect(args.kind, args.inputs, args.out)
        print(f"[nas] collect {args.kind}: {rows} rows -> {args.out}")
        return 0
    if args.stage == "tracking-sync":
        from .tracking import sync

        synced = sync(args.folders, args.uri)
        for row in synced:
            print(f"[nas] synced run {row['run_id']} ({row['folder']}): {row['sent']} calls, "
                  f"{row['metric_points']} metric points -> {row['uri']}")
        print(f"[nas] tracking-sync: {len(synced)} runs completed")
        return 0
    cfg = load_config(args.config, overrides)
    if args.stage == "describe":
        from . import stages

        for line in stages.describe(cfg["space"], args.arch, args.all, args.num_classes, args.in_channels,
                                    args.image_size):
            sys.stdout.write(line + "\n")
        return 0
    from .tracking import probe, start_courier, tracking_uri

    tags = _parse_tags(getattr(args, "tag", []))
    tracking_info = read_json(args.tracking_info) if getattr(args, "tracking_info", None) else None
    # Before any work: a job whose store cannot be reached stops here.
    uri = tracking_info["uri"] if tracking_info else tracking_uri(cfg)
    probe(uri, cfg["tracking"]["connect_timeout_s"])
    if args.stage != "tracking-init":
        start_courier(uri)  # it imports MLflow and opens the store while this process imports torch
    from . import stages

    if args.stage == "tracking-init":
        info = stages.tracking_init(cfg, args.out)
        print(f"[nas] tracking store {info['uri']}, experiment {info['experiment']!r}, parent run {info['parent_run_id']}")
        return 0
    if args.stage == "sample":
        summary = stages.sample(cfg, args.out, tracking_info, tags)
    elif args.stage == "train-supernet":
        summary = stages.train_supernet(cfg, args.out, tracking_info, tags)
    elif args.stage == "score":
        summary = stages.score(cfg, args.out, args.supernet, args.archs, tracking_info, tags, args.shard)
    elif args.stage == "search":
        summary = stages.search(cfg, args.out, args.supernet, tracking_info, tags)
    elif args.stage == "search-differentiable":
        summary = stages.search_differentiable(cfg, args.out, tracking_info, tags)
    elif args.stage == "proxies":
        summary = stages.proxies(cfg, args.out, args.archs, args.shard, tracking_info, tags)
    elif args.stage == "ground-truth":
        summary = stages.ground_truth(cfg, args.out, tracking_info, tags)
    elif args.stage == "correlate-truth":
        summary = stages.correlate_truth(cfg, args.out, args.truth, args.standalone, args.proxies, args.zero_cost,
                                         tracking_info, tags, args.searches)
    elif args.stage == "correlate":
        summary = stages.correlate(cfg, args.out, args.standalone, args.proxies, args.zero_cost, tracking_info, tags)
    elif args.stage == "figures":
        summary = stages.figures(cfg, args.out, args.correlations, args.search, tracking_info, tags)
    elif args.stage == "figures-differentiable":
        from .stages.analysis import figures_differentiable

        summary = figures_differentiable(cfg, args.out, args.table, args.epochs, tracking_info, tags)
    else:
        summary = stages.train(cfg, args.out, args.arch, args.archs, args.shard, args.top, tracking_info, tags)
    print(f"[nas] {args.stage} complete: {args.out / stages.SUMMARY} ({summary['wall_seconds']:.1f} s)")
    return 0


EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NO_TRACKING = 1, 2, 3
# Write errors that mean the disk (or the user's quota, or a size limit) is full, not a bug.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def main(argv: Sequence[str] | None = None) -> None:
    from .tracking import TrackingUnavailable
    from .errors import NonFiniteLoss

    try:
        code = run(argv)
    except ConfigError as err:
        print(f"nas: error: {err}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except TrackingUnavailable as err:
        print(f"nas: error: {err}", file=sys.stderr)
        code = EXIT_NO_TRACKING
    except NonFiniteLoss as err:
        print(f"nas: training failed: {err}", file=sys.stderr)
        code = EXIT_FAILED
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(f"nas: error: cannot write {err.filename or 'an output file'!s}: {err.strerror}; free space on that "
              "disk and re-run (the job resumes from its last checkpoint)", file=sys.stderr)
        code = EXIT_FAILED
    sys.exit(code)


def entry_point() -> None:
    """The ``nas`` command and ``python -m nas``: ``main``, then the process ends without tearing down.

    Every output is written and closed and every tracking call confirmed when ``main`` returns; the
    interpreter's teardown of torch's modules alone would add 0.5-0.8 s to each job. (Tests call
    ``main``, which exits normally.) A crash still goes through Python's own traceback and exit.
    """
    try:
        main()
    except SystemExit as done:
        code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    from .tracking import stop_courier

    stop_courier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry_point()

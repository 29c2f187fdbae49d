"""What a job costs besides its training, and what the scheduler costs besides the jobs.

    python benchmarks/job_overhead.py                 # all rows (about 5 minutes on 2 CPU cores)
    python benchmarks/job_overhead.py --only fixed tracking

Rows:
- per-job fixed cost: wall time of `nas train` and `nas train-supernet` with zero epochs on the default
  study's config (interpreter start-up, imports, config, data, tracking), split into start-up and
  imports, the stage, and the stage's waits on tracking; target at most 4 s. Also the job's imports
  alone, and the tracking courier's start-up and CPU time (it runs beside the job).
- tracking overhead: the share of a default-study job's wall time spent in tracking calls (journal
  writes, hand-over to the courier and every wait on it), for a stand-alone shard of the default
  study and a supernet; target at most 2 %.
- scheduling: `snakemake -n` of the paper-scale UnNAS sample-based study (500 architectures x 4 tasks x
  3 seeds) and the no-op re-run once every output exists; targets under 10 s each.
Each figure is the median of --repeats runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import host_speed, machine_line

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
PAPER_STUDY = REPO / "configs" / "studies" / "unnas_nb201_cifar10.yaml"


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env())
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{result.stderr[-2000:]}")
    return wall, result


def study_config(work: Path) -> Path:
    """The default study's config with results under ``work`` and no progress bars."""
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg.update(results_dir=str(work / "results"), progress=False, threads=1)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "default.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tracked_store(work: Path, config: Path) -> Path:
    info = work / "results" / "tracking.json"
    if not info.exists():
        timed([PYTHON, "-m", "nas", "tracking-init", "--config", str(config), "--out", str(info)])
    return info


def summaries(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def fixed_cost(work: Path, repeats: int) -> list[tuple[str, str, str]]:
    config = study_config(work)
    info = tracked_store(work, config)
    imports = [timed([PYTHON, "-c", "import nas.cli, nas.stages"])[0] for _ in range(repeats)]
    rows = [("the job's imports alone (`import nas.cli, nas.stages`: torch and nas)",
             f"{statistics.median(imports):.2f} s",
             "torch.optim adds torch._dynamo (~1.3 s) when the trainer is built")]
    rows.append(courier_cost(info, repeats))
    jobs = {
        "train": ["train", "--arch", CELL, "train.epochs=0"],
        "train-supernet": ["train-supernet", "supernet.epochs=0", "task.name=rand"],
    }
    for name, args in jobs.items():
        walls, tracking, inside = [], [], []
        for repeat in range(repeats):
            out = work / f"fixed-{name}-{repeat}"
            wall, _ = timed([PYTHON, "-m", "nas", *args[:1], "--config", str(config), "--tracking-info", str(info),
                             *args[1:], "--out", str(out)])
            walls.append(wall)
            found = summaries(out)
            tracking.append(sum(s.get("tracking_seconds", 0.0) for s in found))
            inside.append(max(s["wall_seconds"] for s in found))
        total = statistics.median(walls)
        rows.append((f"per-job fixed cost: `nas {name}`, 0 epochs", f"{total:.2f} s",
                     f"target <= 4 s: {'met' if total <= 4 else 'NOT met'}; in the stage {statistics.median(inside):.2f} s "
                     f"(tracking {statistics.median(tracking):.2f} s), start-up and imports {total - statistics.median(inside):.2f} s"))
    return rows


def courier_cost(info_file: Path, repeats: int) -> tuple[str, str, str]:
    """Wall time from starting a job's tracking courier to its first run being open, and its CPU time.

    The courier runs beside the job (on the other core here), so its time is not the job's; its CPU
    is still spent once per job. Measured on a courier this process starts and ends itself.
    """
    from nas.config import load_config
    from nas.tracking import Courier, params_entry

    info = json.loads(info_file.read_text())
    cfg = load_config(None, [])
    ready, cpu = [], []
    for repeat in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        courier = Courier(info["uri"])
        key = f"bench-{repeat}"
        courier.send({"op": "open", "key": key, "uri": info["uri"], "experiment": info["experiment"],
                      "experiment_id": info["experiment_id"], "artifact_location": None,
                      "tags": {"stage": "benchmark"}, "run_name": key, "stale_run_id": None, "limits": [10, 2]})
        reply = courier.reply(key, "open", 120)
        ready.append(time.perf_counter() - started)
        for index, entry in enumerate([params_entry(cfg), {"op": "end", "status": "FINISHED"}], start=1):
            courier.send({"op": "entry", "key": key, "index": index, "entry": entry})
            reply = courier.reply(key, index, 120)
        if "error" in reply:
            raise RuntimeError(f"courier failed: {reply['error']}")
        courier.close()
        courier.process.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return ("tracking courier: start to first run open (beside the job) / its CPU per job",
            f"{statistics.median(ready):.2f} s / {statistics.median(cpu):.2f} s CPU",
            "MLflow import and store set-up, paid in the courier while the job imports torch")


def tracking_overhead(work: Path, repeats: int) -> list[tuple[str, str, str]]:
    config = study_config(work)
    info = tracked_store(work, config)
    archs = work / "archs"
    if not (archs / "archs.json").exists():
        timed([PYTHON, "-m", "nas", "sample", "--config", str(config), "--tracking-info", str(info), "--out", str(archs)])
    study_cfg = yaml.safe_load(config.read_text())
    sampled, shard_size = json.loads((archs / "archs.json").read_text())["archs"], study_cfg["study"]["shard_size"]
    num_shards = -(-len(sampled) // shard_size)
    jobs = {
        f"default-study train shard ({min(shard_size, len(sampled))} archs x {study_cfg['train']['epochs']} epochs)":
            ["train", "--archs", str(archs / "archs.json"), "--shard", f"0/{num_shards}"],
        "default-study supernet (rand)": ["train-supernet", "task.name=rand"],
    }
    rows = []
    for name, args in jobs.items():
        shares, walls = [], []
        for repeat in range(repeats):
            out = work / f"overhead-{args[0]}-{repeat}"
            wall, _ = timed([PYTHON, "-m", "nas", args[0], "--config", str(config), "--tracking-info", str(info),
                             *args[1:], "--out", str(out)])
            spent = sum(s.get("tracking_seconds", 0.0) for s in summaries(out))
            shares.append(100.0 * spent / wall)
            walls.append(wall)
        share = statistics.median(shares)
        rows.append((f"tracking overhead: {name}", f"{share:.1f} % of {statistics.median(walls):.1f} s",
                     f"target <= 2 %: {'met' if share <= 2 else 'NOT met'}"))
    return rows


def scheduling(work: Path, repeats: int) -> list[tuple[str, str, str]]:
    study = yaml.safe_load(PAPER_STUDY.read_text())
    study["results_dir"] = str(work / "paper")
    (work / "paper").mkdir(parents=True, exist_ok=True)
    config = work / "paper.yaml"
    config.write_text(yaml.safe_dump(study))
    snakemake = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
                 "--configfile", str(config), "--cores", "8", "--resources", "gpu=8"]
    plans = []
    for _ in range(repeats):
        wall, result = timed([*snakemake[:-4], "-n", "--quiet", "rules", *snakemake[-4:]], cwd=work)
        plans.append(wall)
    jobs = _planned_jobs(result.stdout + result.stderr)
    rows = [(f"`snakemake -n`, paper-scale UnNAS study ({jobs} jobs)", f"{statistics.median(plans):.2f} s",
             f"target < 10 s: {'met' if statistics.median(plans) < 10 else 'NOT met'}")]
    # Every output in place, oldest first, then a plain run must find nothing to do.
    _, listing = timed([*snakemake, "--summary"], cwd=work)
    outputs = [line.split("\t")[0] for line in listing.stdout.splitlines()[1:] if line.strip()]
    for output in outputs:
        path = work / output if not os.path.isabs(output) else Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    timed([*snakemake, "--touch", "--quiet"], cwd=work)
    noops = []
    for _ in range(repeats):
        wall, result = timed([*snakemake, "--quiet"], cwd=work)
        noops.append(wall)
        if "Nothing to be done" not in result.stdout + result.stderr:
            raise RuntimeError(f"the re-run was not a no-op:\n{(result.stdout + result.stderr)[-1500:]}")
    rows.append((f"no-op re-run, paper-scale UnNAS study ({len(outputs)} outputs exist)",
                 f"{statistics.median(noops):.2f} s",
                 f"target < 10 s: {'met' if statistics.median(noops) < 10 else 'NOT met'}"))
    return rows


def _planned_jobs(text: str) -> int:
    found = re.search(r"^total\s+(\d+)", text, flags=re.MULTILINE)
    return int(found.group(1)) if found else -1


SECTIONS = {"fixed": fixed_cost, "tracking": tracking_overhead, "scheduling": scheduling}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    speed_at_start = host_speed()
    with tempfile.TemporaryDirectory(prefix="nas-overhead-") as scratch:
        for name in args.only:
            rows += SECTIONS[name](Path(scratch) / name, args.repeats)
    print(f"{machine_line(threads=1)} at the end, {speed_at_start:.0f} at the start; medians of {args.repeats}\n")
    print("| measured | figure | note |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

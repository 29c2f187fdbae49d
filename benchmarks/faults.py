"""The long fault-injection suite: kills through Snakemake, concurrent writers, a lost tracking server,
every malformed input through the command line, a real full disk. Prints what it tried and what held.

    python benchmarks/faults.py                  # everything (about 35 minutes on 2 CPU cores)
    python benchmarks/faults.py --only kills     # one section: kills, concurrency, tracking, inputs, runtime
    python benchmarks/faults.py --table docs/faults_table.md

Needs, besides the package: for the PostgreSQL rows, Debian's `postgresql` (initdb, pg_ctl) and
`pip install -e ".[bench]"` (the server's database driver); for the full-disk row, root (to mount a
tmpfs). A row whose requirement is missing says so and counts as not held. The fast cases of the
same faults run in `pytest` (tests/faults/).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "faults")]

from jobs import BEST_CELL, arch_index, count_runs, job_env, read_rows, tiny_config  # noqa: E402

PYTHON = sys.executable
SECTIONS = ("inputs", "runtime", "tracking", "concurrency", "kills")


@dataclass
class Row:
    section: str
    fault: str
    tried: int
    held: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.tried > 0 and self.held == self.tried


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


def nas_cmd(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "nas", *args], capture_output=True, text=True, cwd=cwd, env=job_env(env),
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


# ---- services: PostgreSQL and an MLflow tracking server on loopback -------------------------------
def _pg_bin(name: str) -> str | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on loopback; yields its SQLAlchemy URI for MLflow's server."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    data = folder / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = free_port()
    subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]), check=True,
                   capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "pg.log"), "-w",
                                      "start"]), check=True, capture_output=True)
    try:
        subprocess.run(_as_postgres_user([_pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port),
                                          "-U", "postgres", "mlflow"]), check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)


class TrackingServer:
    """`mlflow server` on loopback over a given backend store; can be killed and started again."""

    def __init__(self, backend: str, artifacts: Path, workers: int = 2) -> None:
        self.backend, self.artifacts, self.workers = backend, artifacts, workers
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        mlflow = Path(PYTHON).with_name("mlflow")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.log = open(self.artifacts.parent / f"mlflow-server-{self.port}.log", "a")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", self.backend, "--default-artifact-root",
             self.artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.log.name}")
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; see {self.log.name}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "TrackingServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


# ---- section: malformed inputs through the command line -------------------------------------------
def section_inputs(work: Path) -> list[Row]:
    from bad_inputs import CASES

    def try_case(index_case):
        index, case = index_case
        folder = work / f"case{index:02d}"
        folder.mkdir(parents=True)
        args = case.make(folder)
        started = time.time()
        result = nas_cmd(*args, cwd=folder)
        elapsed = time.time() - started
        trained = [p for p in folder.rglob("*") if p.name in ("weights_init.pt", "weights_final.pt", "metrics.csv")]
        runs = count_runs(folder / "results" / "mlflow.db")
        held = (result.returncode == case.exit_code and case.message in result.stderr and not trained and runs == 0)
        message = next((line for line in result.stderr.splitlines() if line.startswith("nas")), result.stderr[-200:])
        return Row("inputs", case.name, 1, int(held), f"exit {result.returncode} in {elapsed:.1f} s: {message[:150]}")

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(try_case, enumerate(CASES)))


# ---- section: faults during a job -------------------------------------------------------------
def _statuses(results: Path, experiment: str = "tiny") -> list[str]:
    client = mlflow_client(f"sqlite:///{results / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return sorted(r.info.status for r in client.search_runs([found.experiment_id])) if found else []


def _failed_job(section: str, fault: str, folder: Path, overrides: list[str], message: str,
                env: dict[str, str] | None = None, out: Path | None = None) -> Row:
    cfg = write_yaml(folder / "cfg.yaml", tiny_config(folder))
    out = out or folder / "job"
    result = nas_cmd("train", "--config", str(cfg), "--arch", BEST_CELL, *overrides, "--out", str(out), env=env)
    statuses = _statuses(folder / "results")
    summaries = list(out.rglob("summary.json"))
    held = result.returncode != 0 and message in result.stderr and statuses == ["FAILED"] and not summaries
    said = next((line for line in result.stderr.splitlines() if line.startswith("nas")), result.stderr[-200:])
    return Row(section, fault, 1, int(held), f"exit {result.returncode}, run {statuses}: {said[:160]}")


def _full_disk(folder: Path) -> Row:
    if os.geteuid() != 0:
        return Row("runtime", "full disk (tmpfs)", 1, 0, "not tried: mounting a tmpfs needs root")
    disk = folder / "disk"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        # Leave 48 KiB free: the job starts, then a checkpoint or log write finds the disk full.
        stat = os.statvfs(disk)
        (disk / "ballast").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 48 * 1024))
        row = _failed_job("runtime", "full disk (2 MiB tmpfs, 48 KiB free)", folder, ["train.epochs=3"],
                          "No space left on device", out=disk / "job")
        partial = [p.name for p in (disk / "job").rglob("*.tmp")]
        if partial:
            row.held, row.detail = 0, f"{row.detail}; partial files left: {partial}"
        return row
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _determinism(folder: Path) -> Row:
    cfg = write_yaml(folder / "cfg.yaml", tiny_config(folder, **{"train.epochs": 3}))
    curves = []
    for name in ("a", "b"):
        result = nas_cmd("train", "--config", str(cfg), "--arch", BEST_CELL, "task.name=rot", "--out", str(folder / name))
        if result.returncode != 0:
            return Row("runtime", "determinism (same config and seed twice)", 1, 0, result.stderr[-200:])
        curves.append(read_rows(next((folder / name).glob("arch-*/metrics.csv"))))
    same = curves[0] == curves[1]
    return Row("runtime", "determinism (same config and seed twice, CPU)", 1, int(same),
               f"{len(curves[0])} epochs x {len(curves[0][0])} figures {'identical' if same else 'DIFFER'}")


def section_runtime(work: Path) -> list[Row]:
    rows = [
        _failed_job("runtime", "NaN loss (lr 1e30)", work / "nan", ["train.lr=1e30", "train.grad_clip=null"],
                    "the loss became"),
        _full_disk(work / "disk"),
        _determinism(work / "determinism"),
    ]
    return rows


# ---- section: the tracking store failing -------------------------------------------------------
def _unreachable_at_start(folder: Path) -> list[Row]:
    rows = []
    cfg = write_yaml(folder / "cfg.yaml", tiny_config(folder))
    closed = f"http://127.0.0.1:{free_port()}"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for what, uri in (("refuses connections", closed), ("accepts, never answers", f"http://127.0.0.1:{silent.getsockname()[1]}")):
            started = time.time()
            result = nas_cmd("train-supernet", "--config", str(cfg), f"tracking.uri={uri}", "--out", str(folder / "job"))
            elapsed = time.time() - started
            held = result.returncode == 3 and uri in result.stderr and elapsed < 10 and not (folder / "job").exists()
            rows.append(Row("tracking", f"store unreachable at start: {what}", 1, int(held),
                            f"exit {result.returncode} after {elapsed:.1f} s (limit 10 s), message names {uri}"))
    return rows


def _lost_mid_run(folder: Path, backend: str) -> Row:
    fault = "server killed mid-run, restarted, `nas tracking-sync`"
    with TrackingServer(backend, folder / "artifacts") as server:
        cfg = write_yaml(folder / "cfg.yaml", tiny_config(folder, **{"train.epochs": 8, "tracking.uri": server.uri}))
        out = folder / "job"
        proc = subprocess.Popen([PYTHON, "-m", "nas", "train", "--config", str(cfg), "--arch", BEST_CELL,
                                 "--out", str(out)], env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        from jobs import wait_for_epoch

        metrics_csv = out / f"arch-{arch_index(BEST_CELL):05d}" / "metrics.csv"
        wait_for_epoch(metrics_csv, proc, epochs=2)
        server.kill()
        stdout, stderr = proc.communicate(timeout=600)
        summary = json.loads((metrics_csv.parent / "summary.json").read_text()) if proc.returncode == 0 else {}
        finished_offline = proc.returncode == 0 and summary.get("tracked") is False
        server.start()
        sync = nas_cmd("tracking-sync", str(out))
        client = mlflow_client(server.uri)
        run = client.get_run(summary.get("mlflow_run_id")) if summary else None
        local = read_rows(metrics_csv)
        keys = [k for k in local[0] if k != "epoch"]
        logged = sum(len(client.get_metric_history(run.info.run_id, k)) for k in keys) if run else 0
        expected = len(local) * len(keys)
        after = json.loads((metrics_csv.parent / "summary.json").read_text())
        held = (finished_offline and sync.returncode == 0 and run is not None and run.info.status == "FINISHED"
                and logged == expected and after.get("tracked") is True)
        return Row("tracking", fault, 1, int(held),
                   f"job exit {proc.returncode}, summary tracked={summary.get('tracked')} -> sync exit "
                   f"{sync.returncode}, run {run.info.status if run else None}, metric points {logged}/{expected}")


def _stale_running_marked_killed(folder: Path) -> Row:
    cfg = write_yaml(folder / "cfg.yaml", tiny_config(folder, **{"train.epochs": 6}))
    out = folder / "job"
    proc = subprocess.Popen([PYTHON, "-m", "nas", "train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(out)],
                            env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from jobs import wait_for_epoch

    wait_for_epoch(out / f"arch-{arch_index(BEST_CELL):05d}" / "metrics.csv", proc)
    proc.kill()
    proc.wait()
    before = _statuses(folder / "results")
    rerun = nas_cmd("train", "--config", str(cfg), "--arch", BEST_CELL, "--out", str(out))
    after = _statuses(folder / "results")
    held = before == ["RUNNING"] and rerun.returncode == 0 and after == ["FINISHED", "KILLED"]
    return Row("tracking", "stale RUNNING run of a SIGKILLed job", 1, int(held), f"runs {before} -> re-run -> {after}")


def section_tracking(work: Path, backend: str | None) -> list[Row]:
    rows = _unreachable_at_start(work / "start")
    rows.append(_stale_running_marked_killed(work / "stale"))
    if backend is None:
        rows.append(Row("tracking", "server killed mid-run", 1, 0, "not tried: no PostgreSQL"))
    else:
        rows.append(_lost_mid_run(work / "lost", backend))
    return rows


# ---- section: concurrent writers -----------------------------------------------------------------
def log_worker(tracking_json: str, out_dir: str, epochs: int) -> None:
    """One concurrent job: a tracked run logging ``epochs`` epochs of four metrics (called in a subprocess)."""
    from nas.config import load_config
    from nas.tracking import TrackedRun

    info = json.loads(Path(tracking_json).read_text())
    cfg = load_config(None, ["study.name=concurrency"])
    with TrackedRun(cfg, "train", {"worker": Path(out_dir).name}, out_dir, info) as run:
        for epoch in range(1, epochs + 1):
            run.log_metrics({"train_loss": 1.0 / epoch, "train_acc": float(epoch), "eval_loss": 2.0 / epoch,
                             "eval_acc": float(epoch) / 2}, step=epoch)
        if not run.complete:
            raise SystemExit(f"tracking went offline: {run.error}")
    Path(out_dir, "run_id").write_text(run.run_id)


def _concurrent(folder: Path, uri: str, label: str, jobs: int, epochs: int) -> Row:
    folder.mkdir(parents=True)
    cfg = write_yaml(folder / "cfg.yaml", {"study": {"name": "concurrency"}, "tracking": {"uri": uri},
                                           "results_dir": str(folder)})
    init = nas_cmd("tracking-init", "--config", str(cfg), "--out", str(folder / "tracking.json"))
    if init.returncode != 0:
        return Row("concurrency", f"{jobs} jobs -> {label}", jobs, 0, f"tracking-init failed: {init.stderr[-300:]}")
    started = time.time()
    procs = [subprocess.Popen([PYTHON, __file__, "--log-worker", str(folder / "tracking.json"), str(folder / f"job{i:02d}"),
                               str(epochs)], env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(jobs)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.time() - started
    crashed = [e[-300:] for p, e in zip(procs, errors) if p.returncode != 0]
    client = mlflow_client(uri)
    expected = epochs * 4
    lost = 0
    for i in range(jobs):
        run_file = folder / f"job{i:02d}" / "run_id"
        if not run_file.exists():
            lost += expected
            continue
        run_id = run_file.read_text()
        logged = sum(len(client.get_metric_history(run_id, k)) for k in ("train_loss", "train_acc", "eval_loss", "eval_acc"))
        lost += expected - logged
    held = jobs - len(crashed) if lost == 0 else 0
    detail = f"{len(crashed)} crashed, {lost} of {jobs * expected} metric points lost, {wall:.0f} s wall"
    if crashed:
        detail += f"; first error: {crashed[0].splitlines()[-1] if crashed[0] else ''}"
    return Row("concurrency", f"{jobs} concurrent jobs -> {label}", jobs, held, detail)


def section_concurrency(work: Path, backend: str | None, epochs: int) -> list[Row]:
    rows = []
    for jobs in (8, 32):
        folder = work / f"sqlite{jobs}"
        rows.append(_concurrent(folder, f"sqlite:///{folder / 'mlflow.db'}", "SQLite store", jobs, epochs))
    if backend is None:
        rows.append(Row("concurrency", "jobs -> MLflow server on PostgreSQL", 1, 0, "not tried: no PostgreSQL"))
        return rows
    with TrackingServer(backend, work / "server-artifacts", workers=4) as server:
        for jobs in (8, 32):
            rows.append(_concurrent(work / f"server{jobs}", server.uri, "MLflow server on PostgreSQL", jobs, epochs))
    return rows


# ---- section: kills at random points, re-run through Snakemake ---------------------------------
KILL_STUDY = {
    "threads": 1,
    "study": {"name": "faults", "tasks": ["cls"], "supernet_tasks": ["rand"], "seeds": [0], "shard_size": 2,
              "fitnesses": ["angle"]},
    "space": {"channels": 4, "cells_per_stage": 1},
    "dataset": {"limit": 400, "image_size": 12},
    "supernet": {"epochs": 16, "batch_size": 50, "lr": 0.05},
    "train": {"epochs": 16, "batch_size": 50, "lr": 0.05},
    "sample": {"num_archs": 2},
}
KILL_TARGETS = {
    "train-supernet": "results/faults/supernet/nb201/mnist5k/rand/seed0",
    "train": "results/faults/train/nb201/mnist5k/cls/seed0/shard0",
}


def _snakemake(work: Path, target: str, unlock: bool = False) -> subprocess.Popen:
    snakemake = Path(PYTHON).with_name("snakemake")
    return subprocess.Popen([str(snakemake), str(work / target / "summary.json"), "--snakefile", str(REPO / "Snakefile"),
                             "--directory", str(work), "--configfile", str(work / "study.yaml"), "--cores", "1",
                             "--rerun-incomplete", "--quiet", *(["--unlock"] if unlock else [])],
                            cwd=work, env=job_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _outcome(job_dir: Path) -> dict[str, Any]:
    """What a finished job leaves: its per-epoch curves and summary metrics (no run ids, no timings)."""
    curves = {str(p.relative_to(job_dir)): read_rows(p) for p in sorted(job_dir.rglob("metrics.csv"))}
    results = job_dir / "results.csv"
    table = [{k: v for k, v in r.items() if k != "mlflow_run_id"} for r in read_rows(results)] if results.exists() else None
    summary = json.loads((job_dir / "summary.json").read_text())
    return {"curves": curves, "results": table, "metrics": summary["metrics"]}


def _check_after_kill(job_dir: Path) -> list[str]:
    """Invariants right after a kill: no partial output taken as complete, every checkpoint readable."""
    import torch

    problems = []
    state_file = job_dir / ".job_state.json"
    state = json.loads(state_file.read_text()).get("state") if state_file.exists() else None
    for summary in job_dir.rglob("summary.json"):
        content = json.loads(summary.read_text())  # a torn write would not parse
        if summary.parent == job_dir and state != "complete":
            problems.append("summary present but the job is not complete")
        if content.get("status") != "complete":
            problems.append(f"{summary} is not a complete summary")
    for checkpoint in job_dir.rglob("checkpoint.pt"):
        try:
            torch.load(checkpoint, weights_only=False)
        except Exception as err:
            problems.append(f"corrupt checkpoint {checkpoint}: {err}")
    return problems


def _job_window(job_dir: Path, proc: subprocess.Popen) -> float:
    """Seconds from the job marking its folder running to its summary: the span a kill may land in."""
    state, summary = job_dir / ".job_state.json", job_dir / "summary.json"
    while not state.exists() and proc.poll() is None:
        time.sleep(0.02)
    opened = time.time()
    while not summary.exists() and proc.poll() is None:
        time.sleep(0.02)
    return time.time() - opened


def section_kills(work: Path, points: int, seed: int) -> list[Row]:
    rows = []
    rng = random.Random(seed)
    work.mkdir(parents=True)
    write_yaml(work / "study.yaml", {**KILL_STUDY, "results_dir": str(work / "results")})
    for stage, target in KILL_TARGETS.items():
        job_dir = work / target
        log(f"kills: uninterrupted reference run of {stage}")
        reference_proc = _snakemake(work, target)
        job_wall = _job_window(job_dir, reference_proc)
        if reference_proc.wait() != 0:
            rows.append(Row("kills", f"{stage}: reference run", 1, 0, reference_proc.stderr.read()[-300:]))
            continue
        reference = _outcome(job_dir)
        for signum in (signal.SIGKILL, signal.SIGTERM):
            held, notes, resumed = 0, [], 0
            for point in range(points):
                shutil.rmtree(job_dir)
                delay = rng.uniform(0.0, job_wall)
                proc = _snakemake(work, target)
                state = job_dir / ".job_state.json"
                while not state.exists() and proc.poll() is None:
                    time.sleep(0.02)
                time.sleep(delay)
                if proc.poll() is None:
                    os.killpg(proc.pid, signum)
                proc.wait()
                problems = _check_after_kill(job_dir)
                checkpoints = len(list(job_dir.rglob("checkpoint.pt")))
                if signum == signal.SIGKILL:  # Snakemake itself died too: its lock stays, as after a power loss
                    _snakemake(work, target, unlock=True).wait()
                rerun = _snakemake(work, target)
                if rerun.wait() != 0:
                    problems.append(f"re-run failed: {rerun.stderr.read()[-300:]}")
                elif _outcome(job_dir) != reference:
                    problems.append("final metrics differ from the uninterrupted run")
                resumed += checkpoints > 0
                if problems:
                    notes.append(f"point {point} (+{delay:.1f} s): {'; '.join(problems)}")
                else:
                    held += 1
                log(f"kills: {stage} {signal.Signals(signum).name} at +{delay:.1f} s: "
                    f"{'held' if not problems else problems}")
            detail = (f"killed at U(0, {job_wall:.1f} s) after the job opened its folder; {resumed} of {points} re-runs "
                      "resumed from a checkpoint; every epoch's figures and the summary equal the uninterrupted run's")
            rows.append(Row("kills", f"{stage}: {signal.Signals(signum).name}, then re-run by Snakemake", points, held,
                            detail + ("" if not notes else f"; FAILED: {notes[:2]}")))
    return rows


# ---- main ----------------------------------------------------------------------------------------
def render(rows: list[Row], started: float) -> str:
    lines = [f"Fault-injection suite, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
             f"{time.time() - started:.0f} s", "",
             "| section | fault injected | tried | held | detail |", "|---|---|---|---|---|"]
    for row in rows:
        mark = "yes" if row.ok else "**NO**"
        lines.append(f"| {row.section} | {row.fault} | {row.tried} | {row.held} ({mark}) | "
                     f"{row.detail.replace('|', '/')} |")
    held = sum(r.ok for r in rows)
    lines += ["", f"{held} of {len(rows)} rows held."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--kill-points", type=int, default=10, help="random kill points per stage and signal")
    parser.add_argument("--epochs", type=int, default=50, help="epochs each concurrent job logs (4 metrics each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one, removed after)")
    parser.add_argument("--table", type=Path, help="also write the table to this file")
    parser.add_argument("--log-worker", nargs=3, metavar=("TRACKING_JSON", "OUT_DIR", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.log_worker:
        log_worker(args.log_worker[0], args.log_worker[1], int(args.log_worker[2]))
        return 0
    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="nas-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(work, 0o755)  # the PostgreSQL server runs as its own user inside it
    rows: list[Row] = []
    try:
        backend_cm = postgres(work / "postgres") if {"tracking", "concurrency"} & set(args.only) else None
        backend = None
        if backend_cm is not None:
            try:
                backend = backend_cm.__enter__()
            except (RuntimeError, subprocess.CalledProcessError) as err:
                log(f"PostgreSQL not available: {err}")
                backend_cm = None
        try:
            for section in SECTIONS:
                if section not in args.only:
                    continue
                log(f"section {section}")
                if section == "inputs":
                    rows += section_inputs(work / "inputs")
                elif section == "runtime":
                    rows += section_runtime(work / "runtime")
                elif section == "tracking":
                    rows += section_tracking(work / "tracking", backend)
                elif section == "concurrency":
                    rows += section_concurrency(work / "concurrency", backend, args.epochs)
                else:
                    rows += section_kills(work / "kills", args.kill_points, args.seed)
                log(f"section {section} done")
        finally:
            if backend_cm is not None:
                backend_cm.__exit__(None, None, None)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table = render(rows, started)
    print(table)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The one place that talks to MLflow.

Every stage is an MLflow run (experiment = study name), a child of the study's parent run when the
workflow created one with ``nas tracking-init``. A run ends FINISHED or FAILED, also on
SIGTERM/SIGINT; the run of a killed attempt (one whose end the job never confirmed) is marked KILLED
when the job is re-run.

The job's own files are the record, MLflow is the view: every call a run makes is first appended
to a journal next to the job's outputs (``.tracking/<run id>.jsonl``), then handed to the job's
tracking courier (``nas.courier``), a child process that holds the MLflow client and delivers the
calls while the job goes on; the job waits for it only to open a run and, at the end, for every
call to be confirmed (a shard of trainings confirms each one while training the next). A store
that cannot be reached when a job starts stops the job before any work; a store that goes away
mid-run only sends the run offline: the job finishes, its summary says it is not fully tracked, and
``nas tracking-sync`` replays the journal's undelivered calls later.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from .config import config_hash, flatten
from .io import atomic_write_json, read_json

# MLflow's usage telemetry: a background thread that phones home. Jobs on offline clusters gain
# nothing from it, and with many concurrent jobs it raced with their logging calls (seen here with
# 32 jobs). Set MLFLOW_DISABLE_TELEMETRY=false to keep it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARAM_VALUE_LIMIT = 6000
BATCH_LIMIT = 100


def tracking_uri(cfg: dict[str, Any]) -> str:
    if cfg["tracking"]["uri"]:
        return cfg["tracking"]["uri"]
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(cfg['results_dir']).resolve() / 'mlflow.db')}"


def experiment_name(cfg: dict[str, Any]) -> str:
    return cfg["tracking"]["experiment"] or cfg["study"]["name"]


def artifact_root(cfg: dict[str, Any]) -> str:
    return (Path(cfg["results_dir"]).resolve() / "mlartifacts").as_uri()


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@functools.lru_cache(maxsize=None)
def store_client(uri: str):
    """One client per store and process (a shard of many trainings opens many runs)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, name: str, artifact_location: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def mark_killed(client, run_id: str) -> None:
    """Mark KILLED the run of an attempt that never confirmed its end; never block a re-run on it.

    Such a run is RUNNING, or FINISHED when the kill came after the store took its end but before
    the job knew (a shard confirms its trainings' ends late); either way the re-run logs the job
    again in a new run. A FAILED run keeps its status. The run may be in another store: a failure
    here is only reported.
    """
    try:
        if client.get_run(run_id).info.status in ("RUNNING", "FINISHED"):
            client.set_terminated(run_id, "KILLED")
    except Exception as err:
        print(f"[nas] could not mark the earlier run {run_id} as KILLED: {err}", file=sys.stderr, flush=True)


def init_store(cfg: dict[str, Any], out_file: str | Path) -> dict[str, Any]:
    """Create the store's schema, the study's experiment and its parent run, once, before any job."""
    uri = tracking_uri(cfg)
    client = store_client(uri)
    experiment_id = ensure_experiment(client, experiment_name(cfg), artifact_root(cfg))
    parent = client.create_run(
        experiment_id,
        run_name=f"study-{cfg['study']['name']}",
        tags={"stage": "study", "study": cfg["study"]["name"], "config_hash": config_hash(cfg), "git_sha": git_sha()},
    )
    replay(client, parent.info.run_id, params_entry(cfg))
    client.set_terminated(parent.info.run_id, "FINISHED")
    info = {"uri": uri, "experiment": experiment_name(cfg), "experiment_id": experiment_id,
            "parent_run_id": parent.info.run_id}
    atomic_write_json(out_file, info)
    return info


def params_entry(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as one journal entry of MLflow params (values cut to MLflow's limit)."""
    return {"op": "params", "params": {k: str(v)[:PARAM_VALUE_LIMIT] for k, v in sorted(flatten(cfg).items())}}


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached (at the start of a job, or by ``nas tracking-sync``)."""


@contextlib.contextmanager
def http_limits(timeout_s: float, retries: int) -> Iterator[None]:
    """Bound MLflow's HTTP calls: its defaults retry for minutes, which would stall a job."""
    names = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout_s))),
             "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def probe(uri: str, timeout_s: float) -> None:
    """Raise TrackingUnavailable unless the store at ``uri`` answers within ``timeout_s`` seconds."""
    if uri.startswith("sqlite:///"):
        _probe_sqlite(uri, timeout_s)
        return
    if uri.startswith(("http://", "https://")):
        _probe_http(uri, timeout_s)
        return
    outcome: dict[str, BaseException | None] = {}
    client = store_client(uri)  # outside the clock: importing MLflow alone can take seconds

    def ask() -> None:
        try:
            with http_limits(timeout_s, 0):
                client.search_experiments(max_results=1)
            outcome["error"] = None
        except BaseException as err:  # reported to the caller below
            outcome["error"] = err

    # A thread, because a silent host (dropped packets, a hung database) may block any client call.
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout_s)
    if "error" not in outcome:
        raise _silent_store(uri, timeout_s)
    if outcome["error"] is not None:
        message = str(outcome["error"]).strip().splitlines()[0][:300] if str(outcome["error"]).strip() else ""
        raise TrackingUnavailable(f"tracking store {uri!r} is unreachable: {type(outcome['error']).__name__}: "
                                  f"{message} (no work was done)")


def _silent_store(uri: str, timeout_s: float) -> TrackingUnavailable:
    return TrackingUnavailable(f"tracking store {uri!r} did not answer within {timeout_s:g} s; start it or set "
                               "tracking.uri / $MLFLOW_TRACKING_URI (no work was done)")


def _probe_http(uri: str, timeout_s: float) -> None:
    """Any HTTP answer means the server is up (its queries may still be slow; they have their own timeout)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered, if not with 200: not an MLflow server's /health, but reachable
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError) or isinstance(err, TimeoutError):
            raise _silent_store(uri, timeout_s) from None
        raise TrackingUnavailable(f"tracking store {uri!r} is unreachable: {reason} (no work was done)") from None


def _probe_sqlite(uri: str, timeout_s: float) -> None:
    """A local file is reachable when its folder can be written and the file, if any, is a database.

    (Not through MLflow: creating a fresh store's tables alone takes longer than the probe may.)
    """
    import sqlite3

    path = Path(uri[len("sqlite:///"):])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"folder {str(path.parent)!r} is not writable")
        if path.exists():
            with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as connection:
                connection.execute("PRAGMA schema_version").fetchone()
    except (OSError, sqlite3.Error) as err:
        raise TrackingUnavailable(f"tracking store {uri!r} is unreachable: {type(err).__name__}: {err} "
                                  "(no work was done)") from None


JOURNAL_DIR = ".tracking"


class Journal:
    """Append-only record of one run's tracking calls, and which of them the store has not received."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path = folder / JOURNAL_DIR / f"{run_id}.jsonl"
        self.pending_path = folder / JOURNAL_DIR / f"{run_id}.pending.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = sum(1 for _ in self.path.open()) if self.path.exists() else 0

    def append(self, entry: dict[str, Any]) -> int:
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
        self.count += 1
        return self.count - 1

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def mark_pending(self, first: int, error: str) -> None:
        atomic_write_json(self.pending_path, {"first_pending": first, "error": error,
                                              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# How long a job waits for its courier: to open a run (its first run also waits for the courier's
# MLflow import, which on a busy shared file system can take a minute) and for its calls at the end.
COURIER_OPEN_TIMEOUT_S = 300.0
COURIER_FLUSH_TIMEOUT_S = 300.0


class Courier:
    """The job's handle on its tracking courier process (``python -m nas.courier``)."""

    def __init__(self, uri: str | None = None) -> None:
        """Start the courier; given the store's ``uri``, it opens that store before the first request."""
        package_root = str(Path(__file__).resolve().parent.parent)
        search_path = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(search_path)}
        self.process = subprocess.Popen([sys.executable, "-m", "nas.courier", *([uri] if uri else [])],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self._replies: dict[tuple[str, Any], dict[str, Any]] = {}
        self._changed = threading.Condition()
        self.exit_reason: str | None = None
        threading.Thread(target=self._read_replies, name="tracking-courier-replies", daemon=True).start()

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self._changed:
                self._replies[(reply["key"], reply.get("index", "open"))] = reply
                self._changed.notify_all()
        code = self.process.wait()
        with self._changed:
            self.exit_reason = f"the tracking courier (pid {self.process.pid}) exited with code {code}"
            self._changed.notify_all()

    @property
    def alive(self) -> bool:
        return self.exit_reason is None and self.process.poll() is None

    def send(self, request: dict[str, Any]) -> bool:
        """Queue one request; False when the courier is gone."""
        try:
            self.process.stdin.write(json.dumps(request, default=str) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def reply(self, key: str, index: Any, timeout: float) -> dict[str, Any] | None:
        """The courier's answer to request (key, index), waiting up to ``timeout`` s; None if none came.

        A courier that died answers every request still open with an error.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while (key, index) not in self._replies:
                if self.exit_reason is not None:
                    return {"key": key, "index": index, "error": self.exit_reason}
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._replies.pop((key, index))

    def close(self) -> None:
        """Let the courier exit (end of input); every run has already waited for its calls to be delivered."""
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()


_courier: Courier | None = None


def start_courier(uri: str | None = None) -> Courier:
    """This process's courier, started now if there is none (or the last one died); see ``Courier``."""
    global _courier
    if _courier is None or not _courier.alive:
        _courier = Courier(uri)
        atexit.register(_courier.close)
    return _courier


def stop_courier() -> None:
    """Let this process's courier exit (its runs have all been flushed by then)."""
    if _courier is not None:
        _courier.close()


def unconfirmed_run_marker(out_dir: str | Path, stage: str) -> Path:
    """Present while a run of ``stage`` in ``out_dir`` is open or its end unconfirmed: a re-run marks that run KILLED."""
    return Path(out_dir) / f".mlflow_run_{stage}.json"


class TrackedRun:
    """One MLflow run; use as a context manager so that it always ends FINISHED or FAILED."""

    def __init__(self, cfg: dict[str, Any], stage: str, tags: dict[str, Any], out_dir: str | Path,
                 tracking_info: dict[str, Any] | None = None, run_name: str | None = None) -> None:
        opened = time.perf_counter()
        self.uri = tracking_info["uri"] if tracking_info else tracking_uri(cfg)
        self.out_dir = Path(out_dir)
        self.marker = unconfirmed_run_marker(self.out_dir, stage)
        self.error: str | None = None
        self.status: str | None = None
        self.confirm_later = False  # set by end(wait=False): leaving the ``with`` block does not wait either
        self._previous_handlers: dict[int, Any] = {}
        self._awaiting: collections.deque[int] = collections.deque()  # journal indices sent, not yet confirmed
        self.key = uuid.uuid4().hex
        all_tags = {"stage": stage, "study": cfg["study"]["name"], "git_sha": git_sha(),
                    "config_hash": config_hash(cfg), **{k: str(v) for k, v in tags.items() if v is not None}}
        if tracking_info and tracking_info.get("parent_run_id"):
            all_tags["mlflow.parentRunId"] = tracking_info["parent_run_id"]
        self.courier = start_courier(self.uri)
        # The run must exist in the store before any work is done; otherwise fail now.
        sent = self.courier.send({
            "op": "open", "key": self.key, "uri": self.uri, "experiment": experiment_name(cfg),
            "experiment_id": tracking_info["experiment_id"] if tracking_info else None,
            "artifact_location": artifact_root(cfg), "tags": all_tags, "run_name": run_name,
            "stale_run_id": self._stale_run_id(),
            "limits": [cfg["tracking"]["request_timeout_s"], cfg["tracking"]["request_retries"]]})
        reply = (self.courier.reply(self.key, "open", COURIER_OPEN_TIMEOUT_S) if sent
                 else {"error": self.courier.exit_reason or "the tracking courier is gone"})
        if reply is None:
            reply = {"error": f"the tracking courier did not answer within {COURIER_OPEN_TIMEOUT_S:g} s"}
        if "error" in reply:
            raise TrackingUnavailable(f"tracking store {self.uri!r} could not create the run of {str(self.out_dir)!r}: "
                                      f"{reply['error']} (no work was done)")
        self.run_id = reply["run_id"]
        atomic_write_json(self.marker, {"run_id": self.run_id, "uri": self.uri})
        self.journal = Journal(self.out_dir, self.run_id)
        self.journal.append({"op": "open", "uri": self.uri, "run_id": self.run_id, "stage": stage})
        # Time this job spent on tracking (waits for its courier included): benchmarks/job_overhead.py reports it.
        self.seconds = time.perf_counter() - opened
        self._call(params_entry(cfg))

    def _stale_run_id(self) -> str | None:
        """The run of this job's earlier, unconfirmed attempt, if one was opened (the courier marks it KILLED)."""
        try:
            return read_json(self.marker)["run_id"] if self.marker.exists() else None
        except (OSError, ValueError, KeyError) as err:
            print(f"[nas] ignoring unreadable run marker {self.marker}: {err}", flush=True)
            return None

    @property
    def complete(self) -> bool:
        """True while every call so far reached the store (waits for the courier to confirm them)."""
        self._collect(wait=True)
        return self.error is None

    def _call(self, entry: dict[str, Any]) -> None:
        """Journal ``entry``, then hand it to the courier unless the run is offline."""
        started = time.perf_counter()
        try:
            self._journal_and_send(entry)
        finally:
            self.seconds += time.perf_counter() - started

    def _journal_and_send(self, entry: dict[str, Any]) -> None:
        try:
            index = self.journal.append(entry)
        except OSError as err:
            if entry["op"] != "end":
                raise
            # Ending the run matters more than its journal line (e.g. on a full disk).
            print(f"[nas] WARNING: could not journal the end of run {self.run_id}: {err}", flush=True)
            index = self.journal.count
        self._collect(wait=False)  # learn of a failure as early as the courier reports it
        if self.error is not None:
            return
        if self.courier.send({"op": "entry", "key": self.key, "index": index, "entry": entry}):
            self._awaiting.append(index)
        else:
            self._go_offline(index, self.courier.exit_reason or "the tracking courier is gone")

    def _collect(self, wait: bool) -> None:
        """Take the courier's confirmations; the first failure sends the run offline from that entry on."""
        deadline = time.monotonic() + (COURIER_FLUSH_TIMEOUT_S if wait else 0.0)
        while self._awaiting and self.error is None:
            reply = self.courier.reply(self.key, self._awaiting[0], max(deadline - time.monotonic(), 0.0))
            if reply is None:
                if wait:
                    self._go_offline(self._awaiting[0], "the tracking courier did not confirm the run's calls "
                                                        f"within {COURIER_FLUSH_TIMEOUT_S:g} s")
                break
            index = self._awaiting.popleft()
            if "error" in reply:
                self._go_offline(index, reply["error"])
        if self.error is not None:
            self._awaiting.clear()

    def _go_offline(self, index: int, error: str) -> None:
        self.error = error
        self.journal.mark_pending(index, error)
        print(f"[nas] WARNING: tracking store {self.uri!r} failed ({error}); the job goes on and journals "
              f"its tracking calls in {self.journal.path} for `nas tracking-sync`", flush=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._call({"op": "metrics", "metrics": [[k, float(v), now, step] for k, v in metrics.items() if v is not None]})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path) -> None:
        self._call({"op": "artifact", "path": str(Path(path).resolve())})

    def end(self, status: str, wait: bool = True) -> None:
        """End the run; with ``wait``, also wait until the courier has delivered (or failed to deliver) every call.

        Without it, ``summary_fields()`` waits later; a kill before then leaves the marker, so the re-run
        marks this run KILLED and logs the job again.
        """
        if self.status is None:
            self.status = status
            self._call({"op": "end", "status": status})
        self.confirm_later = not wait
        if wait:
            self._wait_for_courier()

    def _wait_for_courier(self) -> None:
        started = time.perf_counter()
        self._collect(wait=True)
        self.seconds += time.perf_counter() - started

    def forget_marker(self) -> None:
        """The run's end is confirmed and recorded in the job's summary: a re-run no longer touches this run."""
        self.marker.unlink(missing_ok=True)

    def summary_fields(self, wait: bool = True) -> dict[str, Any]:
        """The summary's tracking fields; without ``wait``, as far as the courier has confirmed so far."""
        if wait:
            self._wait_for_courier()
        else:
            self._collect(wait=False)
        return {"mlflow_run_id": self.run_id, "tracking_uri": self.uri, "tracked": self.error is None,
                "tracking_error": self.error, "tracking_journal": str(self.journal.path),
                "tracking_seconds": round(self.seconds, 4)}

    def __enter__(self) -> "TrackedRun":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, _raise_exit)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.end("FAILED")
            elif not self.confirm_later:
                self.end("FINISHED")
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)


def replay(client, run_id: str, entry: dict[str, Any]) -> None:
    """Send one journal entry to the store."""
    from mlflow.entities import Metric, Param

    op = entry["op"]
    if op == "params":
        params = [Param(k, v) for k, v in entry["params"].items()]
        for start in range(0, len(params), BATCH_LIMIT):
            client.log_batch(run_id, params=params[start:start + BATCH_LIMIT])
    elif op == "metrics":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in entry["metrics"]]
        for start in range(0, len(metrics), BATCH_LIMIT):
            client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT], synchronous=True)
    elif op == "tags":
        for key, value in entry["tags"].items():
            client.set_tag(run_id, key, value)
    elif op == "artifact":
        client.log_artifact(run_id, entry["path"])
    elif op == "end":
        client.set_terminated(run_id, entry["status"])
    elif op != "open":
        raise ValueError(f"unknown journal entry {op!r}")


def sync(folders: list[Path], uri: str | None = None) -> list[dict[str, Any]]:
    """Send every journalled call a store did not receive, for the runs under ``folders``.

    A run whose journal has no end (its job was killed while offline) is ended KILLED. Returns one
    row per journal that had something pending. Run it when no job is writing under ``folders``.
    """
    rows = []
    for folder in folders:
        for pending_path in sorted(Path(folder).rglob(f"{JOURNAL_DIR}/*.pending.json")):
            rows.append(_sync_one(pending_path, uri))
    return rows


def _sync_one(pending_path: Path, uri_override: str | None) -> dict[str, Any]:
    run_id = pending_path.name[:-len(".pending.json")]
    out_dir = pending_path.parent.parent
    journal = Journal(out_dir, run_id)
    entries = journal.entries()
    first = read_json(pending_path)["first_pending"]
    uri = uri_override or entries[0]["uri"]
    todo = entries[first:]
    if not any(e["op"] == "end" for e in entries):
        todo.append({"op": "end", "status": "KILLED"})
    done = 0
    try:
        client = store_client(uri)
        with http_limits(30, 3):
            for done, entry in enumerate(todo):
                replay(client, run_id, entry)
    except Exception as err:
        journal.mark_pending(first + done, f"{type(err).__name__}: {str(err)[:300]}")
        raise TrackingUnavailable(f"tracking store {uri!r}: sync of run {run_id} in {str(out_dir)!r} stopped at "
                                  f"journal entry {first + done}: {type(err).__name__}: {str(err)[:300]}") from None
    pending_path.unlink()
    _mark_summary_tracked(out_dir, run_id)
    return {"run_id": run_id, "folder": str(out_dir), "uri": uri, "sent": len(todo),
            "metric_points": sum(len(e["metrics"]) for e in todo if e["op"] == "metrics")}


def _mark_summary_tracked(out_dir: Path, run_id: str) -> None:
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        return
    summary = read_json(summary_path)
    if summary.get("mlflow_run_id") != run_id:
        return
    summary.update(tracked=True, tracking_error=None, tracking_synced_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(summary_path, summary)
    # A shard of several trainings has no run of its own: it is tracked once all of its runs are.
    shard_path = out_dir.parent / "summary.json"
    if out_dir.name.startswith("arch-") and shard_path.is_file():
        shard = read_json(shard_path)
        if shard.get("mlflow_run_id") is None and not shard.get("tracked", True):
            parts = [read_json(p) for p in sorted(out_dir.parent.glob("arch-*/summary.json"))]
            if all(part.get("tracked", True) for part in parts):
                shard["tracked"] = True
                atomic_write_json(shard_path, shard)


def _raise_exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)

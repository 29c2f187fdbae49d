"""The tracking courier: a child process of each job that delivers its tracking calls to MLflow.

    python -m nas.courier [URI]  (started by ``nas.tracking``; one JSON request per line on stdin)

Importing MLflow and opening its store takes about 2 s of a job's start-up, longer than the training
of a small job. The courier pays it in a second process, in parallel with the job's own imports
and data loading, and sends the calls while the job trains. Only ``nas.tracking`` talks to MLflow:
this module is the loop around it.

Requests (from the job):
- ``{"op": "open", "key", "uri", "experiment", "experiment_id", "artifact_location", "tags",
  "run_name", "stale_run_id", "limits": [timeout_s, retries]}``: create a run (first marking the
  job's earlier, killed attempt's run KILLED; see ``nas.tracking.mark_killed``).
- ``{"op": "entry", "key", "index", "entry"}``: send one journal entry of that run.

Replies: ``{"key", "op": "open", "run_id"}``, ``{"key", "index"}``, or the same with ``"error"``.
A run's entries are delivered in request order, but an ``open`` goes before the entries already
waiting: the job waits for its run to open, and for nothing else until it ends (a shard opens the
next architecture's run right after ending the last one's). After the first failed entry of a run
nothing more is sent for it (the job goes offline and its journal keeps the rest for ``nas
tracking-sync``). SIGINT and SIGTERM are ignored: they reach the whole process group, and the job
still needs its courier to end its run FAILED.
The courier exits when the job closes its stdin or dies.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from . import tracking


def _error_text(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


class _Deliveries:
    """The runs this courier opened, and which of them went offline."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[Any, str, tuple[float, int]]] = {}  # key -> (client, run id, limits)
        self.offline: dict[str, str] = {}  # key -> why

    def open(self, request: dict[str, Any]) -> dict[str, Any]:
        key, limits = request["key"], (float(request["limits"][0]), int(request["limits"][1]))
        try:
            with tracking.http_limits(*limits):
                client = tracking.store_client(request["uri"])
                if request.get("stale_run_id"):
                    tracking.mark_killed(client, request["stale_run_id"])
                experiment_id = request.get("experiment_id") or tracking.ensure_experiment(
                    client, request["experiment"], request["artifact_location"])
                run_id = client.create_run(experiment_id, tags=request["tags"],
                                           run_name=request.get("run_name")).info.run_id
        except Exception as err:
            return {"key": key, "op": "open", "error": _error_text(err)}
        self.runs[key] = (client, run_id, limits)
        return {"key": key, "op": "open", "run_id": run_id}

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        key, index = request["key"], request["index"]
        if key in self.offline:
            return {"key": key, "index": index, "error": self.offline[key]}
        if key not in self.runs:
            return {"key": key, "index": index, "error": "the run was never opened"}
        client, run_id, limits = self.runs[key]
        try:
            with tracking.http_limits(*limits):
                tracking.replay(client, run_id, request["entry"])
        except Exception as err:
            self.offline[key] = _error_text(err)
            return {"key": key, "index": index, "error": self.offline[key]}
        return {"key": key, "index": index}


class RequestQueue:
    """The job's requests as they arrive (read by a thread), taken opens first, then in arrival order."""

    def __init__(self, lines: TextIO) -> None:
        self._waiting: collections.deque[dict[str, Any]] = collections.deque()
        self._ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()

    def _read(self, lines: TextIO) -> None:
        try:
            for line in lines:
                if line.strip():
                    with self._changed:
                        self._waiting.append(json.loads(line))
                        self._changed.notify()
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify()

    @property
    def input_ended(self) -> bool:
        """Every request line has been read."""
        with self._changed:
            return self._ended

    def next(self) -> dict[str, Any] | None:
        """The next request to serve; None once the input has ended and every request was taken."""
        with self._changed:
            self._changed.wait_for(lambda: self._waiting or self._ended)
            if not self._waiting:
                return None
            for position, request in enumerate(self._waiting):
                if request["op"] == "open":
                    del self._waiting[position]
                    return request
            return self._waiting.popleft()


def serve(requests: TextIO, replies: TextIO) -> None:
    """Answer every request line of ``requests`` on ``replies`` until end of input (see the module's text)."""
    deliveries = _Deliveries()
    waiting = RequestQueue(requests)
    while (request := waiting.next()) is not None:
        reply = deliveries.open(request) if request["op"] == "open" else deliveries.send(request)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _warm_up(uri: str) -> None:
    """Import MLflow and open the job's store before the first request: that is the slow part.

    A SQLite store that does not exist yet is left to the first run to create (a job refused as bad
    input must not leave a store behind, and a schema half-created when the job ends would be broken).
    """
    from mlflow.tracking import MlflowClient  # noqa: F401 - the import is the point

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return
    try:
        tracking.store_client(uri)
    except Exception:  # noqa: BLE001 - the same error reaches the job as the answer to its "open"
        pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Replies get their own copy of stdout; whatever MLflow or its libraries print goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if len(sys.argv) > 1:
        _warm_up(sys.argv[1])
    serve(sys.stdin, replies)
    # Every call was delivered and answered: skip the interpreter's teardown of MLflow's modules (about
    # a second), for the job's caller may be waiting on the stderr this process shares with the job.
    replies.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

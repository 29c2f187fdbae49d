"""The tracking courier's loop (nas.courier.serve), run in-process against a real SQLite store."""
from __future__ import annotations

import io
import json
import time

from mlflow.tracking import MlflowClient

import nas.tracking
from nas.courier import RequestQueue, serve


def _open(key: str, uri: str, **extra) -> dict:
    return {"op": "open", "key": key, "uri": uri, "experiment": "courier", "experiment_id": None,
            "artifact_location": None, "tags": {"stage": "test"}, "run_name": key, "stale_run_id": None,
            "limits": [5, 0], **extra}


def _entry(key: str, index: int, entry: dict) -> dict:
    return {"op": "entry", "key": key, "index": index, "entry": entry}


def _serve(requests: list[dict]) -> list[dict]:
    replies = io.StringIO()
    serve(io.StringIO("".join(json.dumps(r) + "\n" for r in requests)), replies)
    return [json.loads(line) for line in replies.getvalue().splitlines()]


def test_a_run_is_opened_logged_and_ended_in_request_order(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    replies = _serve([
        _open("a", uri),
        _entry("a", 1, {"op": "params", "params": {"lr": "0.1"}}),
        _entry("a", 2, {"op": "metrics", "metrics": [["loss", 2.0, 1000, 1], ["loss", 1.0, 2000, 2]]}),
        _entry("a", 3, {"op": "end", "status": "FINISHED"}),
    ])
    assert [r.get("error") for r in replies] == [None] * 4
    assert [r.get("index", "open") for r in replies] == ["open", 1, 2, 3]
    run = MlflowClient(uri).get_run(replies[0]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"} and run.data.tags["stage"] == "test"
    assert [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.info.run_id, "loss")] == [(1, 2.0),
                                                                                                          (2, 1.0)]


def test_after_the_first_failure_nothing_more_is_sent_for_that_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real_replay = nas.tracking.replay
    attempts: list[str] = []

    def replay(client, run_id, entry):
        attempts.append(entry["op"])
        if len(attempts) == 2:
            raise ConnectionError("Connection refused (the store went away)")
        real_replay(client, run_id, entry)

    monkeypatch.setattr(nas.tracking, "replay", replay)
    replies = _serve([
        _open("a", uri),
        _entry("a", 1, {"op": "params", "params": {"lr": "0.1"}}),
        _entry("a", 2, {"op": "metrics", "metrics": [["loss", 2.0, 1000, 1]]}),
        _entry("a", 3, {"op": "metrics", "metrics": [["loss", 1.0, 2000, 2]]}),
        _entry("a", 4, {"op": "end", "status": "FINISHED"}),
        _open("b", uri),  # another run of the same job is not affected
        _entry("b", 1, {"op": "end", "status": "FINISHED"}),
    ])
    assert attempts == ["params", "metrics", "end"]  # entries 3 and 4 of run a were never tried
    by_request = {(r["key"], r.get("index", "open")): r for r in replies}
    assert by_request["a", 1] == {"key": "a", "index": 1}
    for index in (2, 3, 4):
        assert by_request["a", index]["error"] == "ConnectionError: Connection refused (the store went away)"
    assert "error" not in by_request["b", "open"] and "error" not in by_request["b", 1]
    assert MlflowClient(uri).get_run(by_request["b", "open"]["run_id"]).info.status == "FINISHED"


def test_an_open_is_served_before_the_entries_waiting_ahead_of_it():
    lines = [_entry("a", 1, {"op": "metrics", "metrics": []}), _entry("a", 2, {"op": "end", "status": "FINISHED"}),
             _open("b", "sqlite:///unused"), _entry("b", 1, {"op": "end", "status": "FINISHED"})]
    waiting = RequestQueue(io.StringIO("".join(json.dumps(r) + "\n" for r in lines)))
    deadline = time.monotonic() + 10
    while not waiting.input_ended and time.monotonic() < deadline:
        time.sleep(0.01)
    order = []
    while (request := waiting.next()) is not None:
        order.append((request["key"], request.get("index", "open")))
    assert order == [("b", "open"), ("a", 1), ("a", 2), ("b", 1)]


def test_opening_marks_the_earlier_killed_run_and_reports_a_bad_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _serve([_open("a", uri)])[0]["run_id"]  # left RUNNING, as by a SIGKILLed job
    again = _serve([_open("b", uri, stale_run_id=first)])[0]
    client = MlflowClient(uri)
    assert client.get_run(first).info.status == "KILLED"
    assert client.get_run(again["run_id"]).info.status == "RUNNING"
    # Ended in the store, but its job was killed before it knew (so it will log the job again): KILLED too.
    # A run that failed keeps its status.
    ended = _serve([_open("c", uri), _entry("c", 1, {"op": "end", "status": "FINISHED"})])[0]["run_id"]
    failed = _serve([_open("d", uri), _entry("d", 1, {"op": "end", "status": "FAILED"})])[0]["run_id"]
    _serve([_open("e", uri, stale_run_id=ended), _open("f", uri, stale_run_id=failed)])
    assert client.get_run(ended).info.status == "KILLED"
    assert client.get_run(failed).info.status == "FAILED"

    (tmp_path / "not-a-db").write_text("plain text")
    (bad,) = _serve([_open("c", f"sqlite:///{tmp_path / 'not-a-db'}")])
    assert bad["key"] == "c" and bad["error"].startswith(("DatabaseError", "MlflowException", "OperationalError"))
    (lost,) = _serve([_entry("d", 1, {"op": "end", "status": "FINISHED"})])
    assert lost["error"] == "the run was never opened"


def test_the_job_side_tells_a_silent_courier_from_a_dead_one():
    courier = nas.tracking.Courier()
    assert courier.reply("a", 1, timeout=0.05) is None  # nothing asked, nothing answered: not an error yet
    courier.process.kill()
    courier.process.wait()
    answer = courier.reply("a", 1, timeout=10)
    assert answer["error"].startswith("the tracking courier") and "exited" in answer["error"]
    assert not courier.alive and courier.send({"op": "entry"}) is False

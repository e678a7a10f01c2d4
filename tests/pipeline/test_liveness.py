"""RUNNING MLflow runs of flows that died are marked KILLED on the next run, and only
those: a live owner on this host, a fresh heartbeat from another host, or a run without
owner tags is left alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from mobilemoe import lineage as L
from mobilemoe import liveness


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MOBILEMOE_OWNER_PID", raising=False)
    monkeypatch.setattr(liveness, "_reaped", set())
    return L.Tracker(root=tmp_path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run(tracker, name, tags):
    return tracker.client.create_run(tracker.experiment_id, run_name=name, tags=tags).info.run_id


def test_only_runs_of_dead_owners_are_killed(tracker):
    host, now = socket.gethostname(), time.time()
    ids = {
        "dead-here": _run(tracker, "a", {L.HOST: host, L.PID: str(_dead_pid()), L.HEARTBEAT: f"{now:.0f}"}),
        "alive-here": _run(tracker, "b", {L.HOST: host, L.PID: str(os.getpid()), L.HEARTBEAT: f"{now:.0f}"}),
        "teammate": _run(tracker, "c", {L.HOST: "other-host", L.PID: "1", L.HEARTBEAT: f"{now:.0f}"}),
        "stale": _run(tracker, "d", {L.HOST: "other-host", L.PID: "1", L.HEARTBEAT: f"{now - 7200:.0f}"}),
        "untagged": _run(tracker, "e", {}),
    }
    finished = _run(tracker, "f", {L.HOST: host, L.PID: str(_dead_pid()), L.HEARTBEAT: "0"})
    tracker.end_run(finished)

    tracker.start_run("next run", {})  # the first run a process opens checks first

    status = {k: tracker.client.get_run(v).info.status for k, v in ids.items()}
    assert status == {
        "dead-here": "KILLED",
        "alive-here": "RUNNING",
        "teammate": "RUNNING",
        "stale": "KILLED",
        "untagged": "RUNNING",
    }
    assert tracker.client.get_run(finished).info.status == "FINISHED"
    reason = tracker.client.get_run(ids["dead-here"]).data.tags[L.KILLED_REASON]
    assert "is gone" in reason
    assert "no heartbeat" in tracker.client.get_run(ids["stale"]).data.tags[L.KILLED_REASON]


def test_every_run_records_its_owner(tracker, monkeypatch):
    monkeypatch.setenv("MOBILEMOE_OWNER_PID", "4242")
    tags = tracker.client.get_run(tracker.start_run("r", {})).data.tags
    assert tags[L.HOST] == socket.gethostname() and tags[L.PID] == "4242"
    assert abs(float(tags[L.HEARTBEAT]) - time.time()) < 3600


def test_a_run_killed_with_sigkill_is_closed_by_the_next(tracker, tmp_path):
    code = (
        "import sys, time\nfrom mobilemoe.lineage import Tracker\n"
        "t = Tracker(root=sys.argv[1])\nprint(t.start_run('victim', {}), flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MOBILEMOE_OWNER_PID")}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        victim = child.stdout.readline().strip()
        assert tracker.client.get_run(victim).info.status == "RUNNING"
    finally:
        child.kill()
        child.wait()
    tracker.start_run("after", {})
    run = tracker.client.get_run(victim)
    assert run.info.status == "KILLED" and L.KILLED_REASON in run.data.tags

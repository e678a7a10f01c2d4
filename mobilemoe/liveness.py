"""Who owns a RUNNING MLflow run, and closing the runs of flows that died.

A flow killed with ``kill -9`` (or a machine that lost power) never ends its MLflow runs:
they would stay RUNNING forever. So every run records its owner (``mobilemoe.host``,
``mobilemoe.pid``) and a heartbeat (``mobilemoe.heartbeat_s``, refreshed every
HEARTBEAT_S by a daemon thread of the process that works on it), and the first run this
process opens first closes the dead ones (status KILLED, tag ``mobilemoe.killed_reason``).

A run is dead only when its owner process is gone *on this host*, or when its heartbeat is
older than STALE_AFTER_S (any host). A concurrent run here (its owner is alive) or a
teammate's run on a shared server (other host, fresh heartbeat) is never touched.

The owner of a flow's runs is the Metaflow runtime process, not the step process that
happens to open a run: the flow sets MOBILEMOE_OWNER_PID once, in the runtime, and its
steps inherit it. Elsewhere (the CLI) the owner is the process itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Optional

log = logging.getLogger(__name__)

HOST = "mobilemoe.host"
PID = "mobilemoe.pid"
HEARTBEAT = "mobilemoe.heartbeat_s"
KILLED_REASON = "mobilemoe.killed_reason"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 30 * 60.0  # 30 heartbeats missed: the owner is gone (or its host is)

_lock = threading.Lock()
_open: dict[tuple[str, str], Any] = {}  # (tracking uri, run id) -> MlflowClient
_reaped: set[str] = set()  # tracking URIs already checked by this process
_thread: Optional[threading.Thread] = None


def owner_pid() -> int:
    env = os.environ.get("MOBILEMOE_OWNER_PID", "")
    return int(env) if env.isdigit() else os.getpid()


def owner_tags() -> dict[str, str]:
    return {HOST: socket.gethostname(), PID: str(owner_pid()), HEARTBEAT: f"{time.time():.0f}"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def why_dead(tags: dict, now: float, host: str, stale_after_s: float = STALE_AFTER_S) -> Optional[str]:
    """The reason a RUNNING run with these tags is dead, or None if it may be alive (a run
    without owner tags is never judged: it predates them or is not ours)."""
    if HOST not in tags or PID not in tags:
        return None
    try:
        beat = float(tags.get(HEARTBEAT, "0"))
        pid = int(tags[PID])
    except ValueError:
        return None
    if tags[HOST] == host and not _pid_alive(pid):
        return f"owner process {pid} on {host} is gone"
    if now - beat > stale_after_s:
        return f"no heartbeat for {now - beat:.0f} s (> {stale_after_s:.0f} s) from {tags[HOST]} pid {pid}"
    return None


def reap(client, experiment_id: str, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owner is dead; their ids."""
    host, now, killed = socket.gethostname(), time.time(), []
    runs = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in runs:
        why = why_dead(run.data.tags, now, host, stale_after_s)
        if why is None:
            continue
        client.set_tag(run.info.run_id, KILLED_REASON, f"found dead by {host} pid {os.getpid()}: {why}")
        client.set_terminated(run.info.run_id, status="KILLED")
        killed.append(run.info.run_id)
    if killed:
        log.warning("marked %d MLflow run(s) of dead flows KILLED", len(killed))
    return killed


def reap_once(client, uri: str, experiment_id: str) -> None:
    """reap() the first time this process opens a run on ``uri`` (a run or a resume)."""
    with _lock:
        if uri in _reaped:
            return
        _reaped.add(uri)
    try:
        reap(client, experiment_id)
    except Exception as e:  # closing others' dead runs must never stop this run
        log.warning("could not check for MLflow runs of dead flows: %s", e)


def opened(client, uri: str, run_id: str, parent_id: Optional[str] = None) -> None:
    """Keep ``run_id`` (and its parent, which a finished step process no longer beats for)
    heartbeating while this process lives."""
    global _thread
    with _lock:
        _open[(uri, run_id)] = client
        if parent_id:
            _open[(uri, parent_id)] = client
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_beat, name="mlflow-heartbeat", daemon=True)
            _thread.start()


def closed(uri: str, run_id: str) -> None:
    with _lock:
        _open.pop((uri, run_id), None)


def _beat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _lock:
            items = list(_open.items())
        for (_, run_id), client in items:
            try:
                client.set_tag(run_id, HEARTBEAT, f"{time.time():.0f}")
            except Exception:  # a server hiccup: the next beat tries again
                pass

"""A runner killed mid-job: its benchmark dies with it, and after the lease a second
runner runs the job (attempt 2) and delivers the result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
from device_lab_helpers import SMALL_BENCH, make_queue

from device_lab.backends.local_cpu import LocalCpuBackend
from device_lab.runner import Runner
from device_lab.submit import submit_job

LEASE_S = 1.5


def _wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_runner_job_is_finished_by_another_after_the_lease(tmp_path, llm_pte, tokenizer_file):
    uri = f"file://{tmp_path}/queue"
    queue = make_queue(uri, lease_s=LEASE_S)
    job_id = submit_job(queue, llm_pte, tokenizer_file, SMALL_BENCH, backend="local-cpu")
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_lab.runner",
            "--queue",
            uri,
            "--backend",
            "local-cpu",
            "--workdir",
            str(tmp_path / "work1"),
            "--lease-s",
            str(LEASE_S),
            "--poll-s",
            "0.05",
            "--runner-id",
            "doomed",
            "--once",
            "--idle-exit-s",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Mid-job: claimed, lease held, benchmark child started.
        spec = tmp_path / "work1" / "jobs" / job_id / "spec.json"
        _wait_for(spec.exists, 60, "the first runner to start the benchmark")
        children = _wait_for(lambda: psutil.Process(first.pid).children(), 10, "the child")
        assert queue.scan()[0].busy
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the runner's group; the child has its own
        first.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the benchmark child dies with its runner (PR_SET_PDEATHSIG)"
    assert queue.read_result(job_id) is None

    second = Runner(
        make_queue(uri, lease_s=LEASE_S),
        [LocalCpuBackend()],
        tmp_path / "work2",
        runner_id="rescuer",
        poll_s=0.05,
    )
    assert second.serve(once=True, idle_exit_s=60) == 1
    result = queue.read_result(job_id)
    assert result["status"] == "ok" and result["attempt"] == 2
    assert result["runner"]["id"] == "rescuer" and result["decode_tok_per_s"] > 0
    assert queue.scan() == [] and not any((tmp_path / "queue").rglob("claims/**/*.json"))


def test_sigterm_hands_the_job_back_at_once(tmp_path, llm_pte, tokenizer_file):
    uri = f"file://{tmp_path}/queue"
    queue = make_queue(uri, lease_s=60)
    job_id = submit_job(queue, llm_pte, tokenizer_file, SMALL_BENCH, backend="local-cpu")
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_lab.runner",
            "--queue",
            uri,
            "--workdir",
            str(tmp_path / "w"),
            "--lease-s",
            "60",
            "--poll-s",
            "0.05",
            "--once",
            "--idle-exit-s",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for((tmp_path / "w" / "jobs" / job_id / "spec.json").exists, 60, "the benchmark")
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    entry = queue.scan()[0]
    assert not entry.busy and entry.next_epoch == 2, "released: no need to wait 60 s"
    assert queue.read_result(job_id) is None and "handed back" in err

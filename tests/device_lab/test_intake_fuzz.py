"""Job intake treats every queue entry as untrusted: special files, planted symlinks and
arbitrary bytes each end as one rejected result with a reason, and the runner keeps
serving the good jobs. Property-based where it helps (hypothesis)."""

from __future__ import annotations

import json
import os
import threading

from device_lab_helpers import CountingCheck, make_queue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_lab.runner import Runner
from device_lab.submit import submit_job

BENCH = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}


def _drain(q, work):
    counts = {}
    runner = Runner(q, [CountingCheck(counts, threading.Lock())], work, poll_s=0.05)
    runner.serve(idle_exit_s=0)
    counts["handled"] = runner.handled
    return counts


def test_special_files_and_symlinks_are_rejected_and_the_runner_goes_on(tmp_path, fake_pte, small_tokenizer):
    q = make_queue(f"file://{tmp_path}/queue")
    jobs = tmp_path / "queue" / "jobs"
    good = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")
    outside = tmp_path / "outside.json"
    outside.write_text((jobs / f"{good}.json").read_text().replace(good, "j-link-out"))
    os.mkfifo(jobs / "j-fifo.json")  # would block read() forever
    os.symlink(outside, jobs / "j-link-out.json")  # points outside the queue
    os.symlink(jobs / f"{good}.json", jobs / "j-link-in.json")
    os.symlink(tmp_path / "nowhere", jobs / "j-dangling.json")
    (jobs / "j-dir.json").mkdir()
    later = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")

    counts = _drain(q, tmp_path / "work")

    assert counts == {good: 1, later: 1, "handled": 6}  # a folder named x.json is no entry
    for name in ("j-fifo", "j-link-out", "j-link-in", "j-dangling"):
        result = q.read_result(name)
        assert result["status"] == "rejected", name
        assert "not a regular file" in result["reason"] or "symlink" in result["reason"], result
    assert q.read_result(good)["status"] == "ok" and q.read_result(later)["status"] == "ok"
    assert outside.exists(), "the link's target outside the queue is left alone"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    docs=st.lists(
        st.one_of(
            st.binary(max_size=200),
            _json.map(lambda d: json.dumps(d).encode()),
            st.fixed_dictionaries(
                {
                    "kind": st.just("device-lab/job"),
                    "version": st.integers(-2, 3),
                    "job_id": st.text(max_size=12),
                    "backend": st.text(max_size=12),
                }
            ).map(lambda d: json.dumps(d).encode()),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_arbitrary_job_documents_are_each_rejected_with_a_reason(tmp_path_factory, docs):
    root = tmp_path_factory.mktemp("fuzz")
    q = make_queue(f"file://{root}/queue")
    names = [f"j-{i}" for i in range(len(docs))]
    for name, data in zip(names, docs):
        q.transport.put_bytes(f"jobs/{name}.json", data)
    counts = _drain(q, root / "work")
    assert counts == {"handled": len(docs)}, "nothing ran"
    for name in names:
        result = q.read_result(name)
        assert result is not None and result["status"] == "rejected" and result["reason"], name
    assert _drain(q, root / "work") == {"handled": 0}, "a rejected entry is never taken again"


def test_a_fifo_job_neither_blocks_the_runner_nor_its_sigterm(tmp_path, fake_pte, small_tokenizer):
    import signal
    import subprocess
    import sys
    import time

    uri = f"file://{tmp_path}/queue"
    q = make_queue(uri)
    good = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")
    os.mkfifo(tmp_path / "queue" / "jobs" / "a-fifo.json")  # sorts first
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_lab.runner",
            "--queue",
            uri,
            "--workdir",
            str(tmp_path / "w"),
            "--backend",
            "artifact-check",
            "--poll-s",
            "0.05",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):  # wait for both results (the runner keeps serving)
            if q.read_result(good) is not None or runner.poll() is not None:
                break
            time.sleep(0.05)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    assert q.read_result("a-fifo")["status"] == "rejected"
    assert q.read_result(good)["status"] == "ok"

"""The runner on bad input and bad days: rejections, backends it lacks, lost deliveries,
S3 outages. Uses the real artifact-check backend (a child process per job), counted."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import re
import threading
import time

import pytest
from device_lab_helpers import CountingCheck, make_queue

from device_lab.queue import names_for_key
from device_lab.runner import Runner, WorkdirBusy
from device_lab.schema import ProtocolError, format_time, make_job, new_job_id, parse_queue_uri
from device_lab.submit import submit_job
from device_lab.transport import LocalTransport, Retry, S3Transport, TransportError

BENCH = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}


def _runner(queue, work, counts=None, **kw):
    counts = {} if counts is None else counts
    return Runner(queue, [CountingCheck(counts, threading.Lock())], work, poll_s=0.05, **kw), counts


def _drain(runner):
    """Handle every job on the queue, then return."""
    runner.serve(idle_exit_s=0)


def test_bad_jobs_are_rejected_without_running_anything(tmp_path, fake_pte, small_tokenizer):
    q = make_queue(f"file://{tmp_path}/queue")
    t = q.transport
    good = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")
    base = json.loads(t.get_bytes(f"jobs/{good}.json"))

    def put(name, doc):
        t.put_bytes(f"jobs/{name}.json", doc if isinstance(doc, bytes) else json.dumps(doc).encode())

    def variant(name, **changes):
        doc = copy.deepcopy(base)
        doc["job_id"] = name
        for path, value in changes.items():
            node, *keys = path.split("__")
            target = doc if not keys else doc[node]
            target[keys[-1] if keys else node] = value
        put(name, doc)

    variant("j-unknown", extra=1)
    variant("j-type", benchmark__repeats="3")
    variant("j-backend", backend="android-adb")
    variant("j-big", artifact__size_bytes=2**40)
    variant("j-outside", artifact__uri="file:///etc/passwd")
    variant("j-late", deadline=format_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    variant("j-mismatch", job_id="j-other")
    doc = copy.deepcopy(base)
    doc["job_id"] = "../../escape"
    put("j-dots", doc)
    put("j-notjson", b"{not json")
    put("bad..name", dict(base, job_id="bad..name"))
    # Hash mismatch: the stored artifact no longer has the bytes the job declares.
    tampered = copy.deepcopy(base)
    tampered["job_id"] = "j-tampered"
    other = q.put_artifact(small_tokenizer, "model.pte")
    tampered["artifact"] = dict(other, sha256=other["sha256"])
    key = other["uri"].split("/queue/", 1)[1]
    t.put_bytes(key, b"x" * other["size_bytes"])  # same size, other bytes
    put("j-tampered", tampered)

    variant("j-short", artifact__size_bytes=base["artifact"]["size_bytes"] - 1)
    put("j-huge", json.dumps(dict(base, job_id="j-huge", pad="x" * 300_000)).encode())
    failing = submit_job(q, small_tokenizer, small_tokenizer, BENCH, backend="artifact-check")

    runner, counts = _runner(q, tmp_path / "work")
    _drain(runner)
    failed = json.loads(t.get_bytes(f"results/{failing}.json"))  # ran, failed, runner went on
    assert failed["status"] == "error" and "not an ExecuTorch program" in failed["reason"]
    expected = {
        "j-unknown": "job.extra: unknown field",
        "j-type": "job.benchmark.repeats",
        "j-backend": "backend 'android-adb' is not offered",
        "j-big": "over this runner's cap",
        "j-outside": "not in this queue's artifact area",
        "j-late": "has passed",
        "j-mismatch": "does not match its file name",
        "j-dots": "job.job_id",
        "j-notjson": "not valid JSON",
        "bad..name": "is not named <job_id>.json with a safe id",
        "j-tampered": "hash mismatch",
        "j-short": "larger than its declared size_bytes",
        "j-huge": "job document too large",
    }
    for name, why in expected.items():
        result = json.loads(t.get_bytes(f"results/{name}.json"))
        assert result["status"] == "rejected", name
        assert why in result["reason"], (name, result["reason"])
        assert result["decode_tok_per_s"] is None and result["prefill_tok_per_s"] == {}
    assert json.loads(t.get_bytes(f"results/{good}.json"))["status"] == "ok"
    assert counts == {good: 1, failing: 1}, "nothing ran for a rejected job"
    # Nothing written outside the queue and the work folder ("../../escape" included).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "queue", "work"]
    assert not list(tmp_path.parent.glob("escape*"))
    assert q.scan() == []


def test_unusable_job_keys_get_a_result_somewhere_safe():
    assert names_for_key("jobs/j-1.json") == ("j-1", "j-1", True)
    handle, where, usable = names_for_key("jobs/a/../../b.json")  # possible on S3
    assert not usable and handle.startswith("bad-") and where == handle
    handle, where, usable = names_for_key("jobs/..json")
    assert not usable and where == handle
    assert names_for_key("jobs/we ird.json")[1:] == ("we ird", False)


def test_a_job_for_a_backend_another_live_runner_offers_is_left_alone(tmp_path, fake_pte, small_tokenizer):
    q = make_queue(f"file://{tmp_path}/queue")
    phone_job = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="android-adb")
    mine = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")
    q.register("phone-lab-1", {"backends": ["android-adb"]}, ttl_s=60)
    runner, counts = _runner(q, tmp_path / "work")
    _drain(runner)
    assert q.read_result(phone_job) is None and q.read_result(mine)["status"] == "ok"
    assert [e.handle for e in q.scan()] == [phone_job]
    q.register("phone-lab-1", {"backends": ["android-adb"]}, ttl_s=-1)  # that runner went away
    _drain(runner)
    assert q.read_result(phone_job)["status"] == "rejected"


class FlakyResults(LocalTransport):
    """A folder whose result uploads fail while ``failures`` > 0 (or forever if None)."""

    def __init__(self, uri, failures):
        super().__init__(uri)
        self.failures = failures

    def put_bytes(self, key, data):
        if key.startswith("results/") and (self.failures is None or self.failures > 0):
            if self.failures:
                self.failures -= 1
            raise TransportError(f"PUT {key} failed: simulated outage")
        super().put_bytes(key, data)


def test_results_are_never_lost(tmp_path, fake_pte, small_tokenizer, caplog):
    uri = parse_queue_uri(f"file://{tmp_path}/queue")
    flaky = FlakyResults(uri, failures=2)
    q = make_queue(str(uri))
    q.transport = flaky
    first = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")
    runner, counts = _runner(q, tmp_path / "work")
    with caplog.at_level(logging.WARNING, "device_lab.runner"):
        _drain(runner)  # two failed deliveries, retried with backoff
    assert q.read_result(first)["status"] == "ok" and counts == {first: 1}
    assert sum("delivering" in r.message for r in caplog.records) == 2

    # The queue stays down and the runner stops: the result waits in the outbox ...
    flaky.failures = None
    second = submit_job(q, fake_pte, small_tokenizer, BENCH, backend="artifact-check")
    claim = q.claim(q.scan()[0], runner.runner_id)
    backend = runner.backends["artifact-check"]
    measure = backend.run

    def measure_then_stop(ctx):  # the stop comes after the job ran (before, it is handed back)
        out = measure(ctx)
        runner.stop.set()
        return out

    backend.run = measure_then_stop
    runner.handle(claim)
    assert (tmp_path / "work" / "outbox" / f"{second}.json").is_file()
    assert q.read_result(second) is None
    # ... and the next runner on that work folder delivers it, without running it again.
    flaky.failures = 0
    runner2, _ = _runner(q, tmp_path / "work", counts=counts)
    _drain(runner2)
    assert q.read_result(second)["status"] == "ok" and counts == {first: 1, second: 1}
    assert not list((tmp_path / "work" / "outbox").iterdir())


def test_s3_errors_are_retried_with_backoff_then_reported(monkeypatch, caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    t = S3Transport(
        parse_queue_uri("s3://lab/q"),
        endpoint_url="http://127.0.0.1:9",
        retry=Retry(attempts=3, base_s=0.01, cap_s=0.02),
    )
    with caplog.at_level(logging.WARNING, "device_lab.transport"):
        with pytest.raises(TransportError, match="LIST s3://lab/q/jobs/ failed after 3 attempts") as e:
            t.list("jobs/")
    assert sum("retrying" in r.message for r in caplog.records) == 2
    text = str(e.value) + caplog.text
    assert "very-secret-value" not in text and "AKIDEXAMPLE" not in text
    with pytest.raises(ProtocolError, match="credentials"):  # a usage error: exit 2
        S3Transport(parse_queue_uri("s3://lab/q"), endpoint_url="http://user:pw@127.0.0.1:9")


def test_job_documents_are_checked_before_they_go_out(tmp_path, fake_pte, small_tokenizer):
    q = make_queue(f"file://{tmp_path}/queue")
    with pytest.raises(ValueError, match="benchmark.decode_tokens"):
        submit_job(q, fake_pte, small_tokenizer, dict(BENCH, decode_tokens=1))
    job_id = submit_job(q, fake_pte, small_tokenizer, BENCH, job_id="j-fixed")
    with pytest.raises(ValueError, match="already in"):
        submit_job(q, fake_pte, small_tokenizer, BENCH, job_id=job_id)
    ref = q.put_artifact(fake_pte)
    again = make_job(job_id=new_job_id(), artifact=ref, tokenizer=ref, benchmark=BENCH)
    assert again["artifact"]["uri"].startswith(f"file://{tmp_path}/queue/artifacts/")


def test_local_cpu_reports_a_program_it_cannot_load(tmp_path, fake_pte, tokenizer_file):
    from device_lab.backends.local_cpu import LocalCpuBackend

    q = make_queue(f"file://{tmp_path}/queue")
    job_id = submit_job(q, fake_pte, tokenizer_file, BENCH, backend="local-cpu")
    Runner(q, [LocalCpuBackend()], tmp_path / "work", poll_s=0.05).serve(idle_exit_s=0)
    result = q.read_result(job_id)
    # Garbage after the header: probed in a throw-away child first (the runtime may abort
    # on it), so the reason names the file and what the runtime said.
    assert result["status"] == "error"
    assert re.search(r"job.artifact \(model.pte\): not a loadable ExecuTorch program", result["reason"])
    assert result["device"]["runtime"] == "executorch" and result["decode_tok_per_s"] is None
    assert (tmp_path / "work" / "logs" / f"{job_id}.log").is_file()


def test_one_runner_per_work_folder(tmp_path):
    q = make_queue(f"file://{tmp_path}/queue")
    first, _ = _runner(q, tmp_path / "work")
    stop = threading.Event()
    thread = threading.Thread(target=first.serve, args=(stop,))
    thread.start()
    try:
        for _ in range(1000):  # registered = it holds the folder's lock
            if q.transport.list("runners/"):
                break
            time.sleep(0.01)
        second, _ = _runner(q, tmp_path / "work")
        with pytest.raises(WorkdirBusy, match="in use by another runner"):
            second.serve(idle_exit_s=0)
    finally:
        stop.set()
        thread.join()
    second.serve(idle_exit_s=0)  # free again


def test_bench_falls_back_to_runtime_stats_when_a_token_is_not_utf8():
    """ExecuTorch's binding decodes each token strictly; a token that is half of a UTF-8
    character raises before the callback runs. The run is measured from the runtime's stats."""
    import json as _json

    from device_lab.backends.executorch_bench import _one_run

    class Stats:
        def to_json_string(self):
            return _json.dumps(
                {
                    "generated_tokens": 9,
                    "inference_start_ms": 1000,
                    "first_token_ms": 1004,
                    "inference_end_ms": 1020,
                }
            )

    class FakeRunner:
        calls = 0

        def generate(self, prompt, config, token_callback=None, stats_callback=None):
            FakeRunner.calls += 1
            if token_callback is not None:
                b"\xe2\x82".decode("utf-8")  # what pybind11 does with a partial character
            stats_callback(Stats())

        def reset(self):
            pass

    run = _one_run(FakeRunner(), lambda **kw: kw, "<|bos|>x", 9, False)
    assert FakeRunner.calls == 2
    assert run["decode_tokens"] == 8 and run["decode_tok_per_s"] == pytest.approx(8 / 0.016)
    assert run["prefill_s"] == pytest.approx(0.004)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_download_stops_when_asked_and_leaves_nothing(kind, tmp_path, request):
    """The runner's stop flag is checked between 1 MiB chunks of every download, so SIGTERM
    ends a big artifact's download at once (S3: within one read timeout) with no partial
    file left; the interrupted job is handed back, not failed."""
    from device_lab.transport import Interrupted, open_transport

    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        transport = open_transport(f"s3://{bucket}/q")
    else:
        transport = open_transport(f"file://{tmp_path}/q")
    src = tmp_path / "big.bin"
    src.write_bytes(b"\x01" * (5 << 20))
    transport.upload_file("artifacts/big.bin", src)
    calls = []

    def stop_after_two_chunks():
        calls.append(1)
        return len(calls) > 2

    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    with pytest.raises(Interrupted, match="download stopped"):
        transport.download_file("artifacts/big.bin", dest, 10 << 20, should_stop=stop_after_two_chunks)
    assert len(calls) == 3 and list(dest.parent.iterdir()) == []
    sha, size = transport.download_file("artifacts/big.bin", dest, 10 << 20, should_stop=lambda: False)
    assert size == 5 << 20 and dest.read_bytes() == src.read_bytes()


def test_runner_stopped_mid_download_hands_the_job_back(tmp_path, small_tokenizer):
    from device_lab.backends import make_backend
    from device_lab.runner import Runner
    from device_lab.submit import submit_job

    q = make_queue(f"file://{tmp_path}/queue")
    big = tmp_path / "inputs" / "model.pte"
    big.write_bytes(b"\x1c\x00\x00\x00ET12" + b"\x00" * (8 << 20))
    job = submit_job(
        q,
        big,
        small_tokenizer,
        {"prompt_lengths": [4], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1},
        backend="artifact-check",
    )
    runner = Runner(q, [make_backend("artifact-check")], tmp_path / "w", poll_s=0.05)
    real = q.transport.download_file

    def download_then_sigterm(key, dest, max_bytes, should_stop=None):
        runner.stop.set()  # SIGTERM arrives as the download starts
        return real(key, dest, max_bytes, should_stop=should_stop)

    q.transport.download_file = download_then_sigterm
    runner.serve(once=True)
    assert q.read_result(job) is None  # not failed: handed back
    q.transport.download_file = real
    Runner(q, [make_backend("artifact-check")], tmp_path / "w2", poll_s=0.05).serve(idle_exit_s=0)
    assert q.read_result(job)["status"] == "ok"

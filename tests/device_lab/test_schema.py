"""The protocol module: strict job/result documents, names, times and queue URIs."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from device_lab.schema import (
    ProtocolError,
    QueueURI,
    artifact_key_from_uri,
    format_time,
    make_job,
    make_result,
    new_job_id,
    parse_queue_uri,
    parse_time,
    validate_job,
    validate_result,
)

SHA = "ab" * 32
BENCH = {"prompt_lengths": [32, 128], "decode_tokens": 32, "repeats": 3, "warmup": 1, "threads": 1}


def _job(**over):
    q = parse_queue_uri("s3://lab/q")
    ref = {"uri": q.uri_for(f"artifacts/{SHA}/model.pte"), "sha256": SHA, "size_bytes": 10}
    tok = {"uri": q.uri_for(f"artifacts/{SHA}/tokenizer.json"), "sha256": SHA, "size_bytes": 5}
    job = make_job(job_id="j-1", artifact=ref, tokenizer=tok, benchmark=dict(BENCH))
    job.update(over)
    return job


def test_job_round_trip_and_times():
    job = _job()
    assert validate_job(copy.deepcopy(job)) == job
    assert job["kind"] == "device-lab/job" and job["version"] == 1
    created, deadline = parse_time(job["created_at"]), parse_time(job["deadline"])
    assert (deadline - created).total_seconds() == pytest.approx(3600, abs=0.01)
    assert job["created_at"].endswith("Z") and "T" in job["created_at"]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda j: j.update(extra=1), "job.extra: unknown field"),
        (lambda j: j["benchmark"].update(repeats="3"), "job.benchmark.repeats"),
        (lambda j: j["benchmark"].update(prompt_lengths=[]), "job.benchmark.prompt_lengths"),
        (lambda j: j["benchmark"].update(prompt_lengths=[8, 8]), "unique"),
        (lambda j: j["benchmark"].update(threads=True), "job.benchmark.threads"),
        (lambda j: j["artifact"].update(sha256="XYZ"), "job.artifact.sha256"),
        (lambda j: j.pop("deadline"), "job.deadline: missing"),
        (lambda j: j.update(deadline="2025-01-01 00:00:00"), "ISO 8601"),
        (lambda j: j.update(job_id="../etc"), "job.job_id"),
        (lambda j: j.update(job_id="a/b"), "job.job_id"),
        (lambda j: j.update(backend="Local CPU"), "job.backend"),
        (lambda j: j.update(version=2), "job.version: 2 is not supported"),
        (lambda j: j.update(kind="device-lab/other"), "job.kind"),
    ],
)
def test_job_schema_errors_name_the_field(mutate, field):
    job = _job()
    mutate(job)
    with pytest.raises(ProtocolError, match=field.replace("(", r"\(").replace(".", r"\.")):
        validate_job(job)


def test_job_not_an_object():
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        validate_job([1, 2])


@pytest.mark.parametrize(
    "uri, expect",
    [
        ("file:///srv/lab", QueueURI("file", path="/srv/lab")),
        ("file:///srv//lab/", QueueURI("file", path="/srv/lab")),
        ("s3://my-lab", QueueURI("s3", bucket="my-lab")),
        ("s3://my-lab/a/b/", QueueURI("s3", bucket="my-lab", prefix="a/b")),
    ],
)
def test_queue_uris(uri, expect):
    assert parse_queue_uri(uri) == expect
    assert parse_queue_uri(str(expect)) == expect


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("/srv/lab", "not a queue URI"),
        ("file://srv/lab", "three slashes"),
        ("file:///srv/../etc", "without '..'"),
        ("s3://key:secret@bucket/p", "no credentials"),
        ("s3://B/p", "not a valid bucket"),
        ("s3://bucket/a/../b", "not a safe name"),
        ("http://host/x", "unsupported scheme"),
    ],
)
def test_bad_queue_uris(uri, problem):
    with pytest.raises(ProtocolError, match=problem):
        parse_queue_uri(uri)


def test_artifact_uri_must_be_in_the_queue_area_under_its_hash():
    q = parse_queue_uri("s3://lab/q")
    good = f"s3://lab/q/artifacts/{SHA}/model.pte"
    assert artifact_key_from_uri(q, good, SHA, "x") == f"artifacts/{SHA}/model.pte"
    for bad in (
        f"s3://other/q/artifacts/{SHA}/model.pte",
        f"s3://lab/q/artifacts/{'cd' * 32}/m.pte",
        f"s3://lab/q/artifacts/{SHA}/../../jobs/x.json",
        "file:///etc/passwd",
    ):
        with pytest.raises(ProtocolError):
            artifact_key_from_uri(q, bad, SHA, "x")


def test_result_documents():
    job = _job()
    res = make_result(
        "j-1",
        "ok",
        job=job,
        runner={"id": "r"},
        device={"kind": "cpu"},
        attempt=1,
        measurement={
            "prefill_tok_per_s": {"32": 100.0},
            "decode_tok_per_s": 50.0,
            "load_s": 0.1,
            "raw": {"runs": []},
        },
    )
    assert res["artifact_sha256"] == SHA and res["benchmark"] == BENCH
    assert res["prefill_tok_per_s"] == {"32": 100.0} and res["decode_tok_per_s"] == 50.0
    bad = dict(res, prefill_tok_per_s={"032": 1.0})
    with pytest.raises(ProtocolError, match="prompt length"):
        validate_result(bad)
    with pytest.raises(ProtocolError, match="result.status"):
        validate_result(dict(res, status="done"))
    rej = make_result("x", "rejected", "bad", job={"junk": True})  # unvalidated job: nothing copied
    assert rej["artifact_sha256"] is None and rej["decode_tok_per_s"] is None


def test_ids_sort_by_time():
    a = new_job_id(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
    b = new_job_id(dt.datetime(2025, 1, 2, tzinfo=dt.timezone.utc))
    assert a < b and a.startswith("j-20250101T000000Z-")
    assert format_time(0) == "1970-01-01T00:00:00.000Z"

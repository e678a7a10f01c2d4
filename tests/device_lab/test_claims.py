"""The claim protocol: one winner per race, leases, re-claims, and racing runners.

Run on the local folder and on a real S3 server (SeaweedFS, which is reported not to
enforce conditional writes under concurrent PUTs: the protocol does not use them).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from device_lab_helpers import CountingCheck, make_queue

from device_lab.runner import Runner
from device_lab.submit import submit_job

N_JOBS, N_RUNNERS = 20, 3


def _queue_uri(where, request, tmp_path):
    if where == "local":
        return f"file://{tmp_path}/queue", None
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/device-queue", request.getfixturevalue("lab_s3").endpoint


def _simultaneous_claims(uri, endpoint, rounds=8, contenders=4):
    """``contenders`` queues (own clients) claim the same job at one instant, ``rounds`` times."""
    queues = [make_queue(uri, endpoint_url=endpoint) for _ in range(contenders)]
    winners_per_round = []
    for r in range(rounds):
        queues[0].transport.put_bytes(f"jobs/race-{r}.json", b"{}")
        entry = next(e for e in queues[0].scan() if e.handle == f"race-{r}")
        barrier = threading.Barrier(contenders)
        won = []

        def contend(i, barrier=barrier, entry=entry, won=won):
            barrier.wait()
            claim = queues[i].claim(entry, f"runner{i}")
            if claim is not None:
                won.append(claim)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners_per_round.append(len(won))
    return winners_per_round


def _race(uri, endpoint, tmp_path, pte, tokenizer):
    submitter = make_queue(uri, endpoint_url=endpoint)
    bench = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}
    ids = [submit_job(submitter, pte, tokenizer, bench, backend="artifact-check") for _ in range(N_JOBS)]
    counts, lock, stop = {}, threading.Lock(), threading.Event()
    runners = [
        Runner(
            make_queue(uri, endpoint_url=endpoint),
            [CountingCheck(counts, lock)],
            tmp_path / f"runner{i}",
            runner_id=f"racer{i}",
            poll_s=0.05,
        )
        for i in range(N_RUNNERS)
    ]
    threads = [threading.Thread(target=r.serve, args=(stop,)) for r in runners]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(1 for o in submitter.transport.list("results/")) >= N_JOBS:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    results = {i: submitter.read_result(i) for i in ids}
    return ids, counts, results, runners


@pytest.mark.parametrize("where", ["local", "s3"])
def test_one_winner_and_three_runners_race_over_20_jobs(where, request, tmp_path, fake_pte, small_tokenizer):
    uri, endpoint = _queue_uri(where, request, tmp_path)
    assert _simultaneous_claims(uri, endpoint) == [1] * 8

    ids, counts, results, runners = _race(uri, endpoint, tmp_path, fake_pte, small_tokenizer)
    assert counts == {i: 1 for i in ids}, "every job executed exactly once"
    assert all(r is not None and r["status"] == "ok" and r["attempt"] == 1 for r in results.values())
    assert sum(r.handled for r in runners) == N_JOBS
    assert sum(1 for r in runners if r.handled) >= 2, "the work was shared"
    by_runner = {r["runner"]["id"] for r in results.values()}
    assert by_runner <= {f"racer{i}" for i in range(N_RUNNERS)}
    leftovers = make_queue(uri, endpoint_url=endpoint).transport.list("claims/")
    assert [o.key for o in leftovers if not o.key.startswith("claims/race-")] == []


def test_lease_expiry_gives_the_job_to_the_next_epoch(tmp_path):
    uri = f"file://{tmp_path}/q"
    a, b = make_queue(uri, lease_s=0.4), make_queue(uri, lease_s=0.4)
    a.transport.put_bytes("jobs/j-1.json", b"{}")
    entry = a.scan()[0]
    claim_a = a.claim(entry, "a")
    assert claim_a is not None and claim_a.epoch == 1
    seen_by_b = b.scan()[0]
    assert seen_by_b.busy and b.claim(seen_by_b, "b") is None
    assert a.renew(claim_a)  # a live runner keeps it
    time.sleep(0.5)  # ... until it stops renewing
    seen_by_b = b.scan()[0]
    assert not seen_by_b.busy and seen_by_b.next_epoch == 2
    claim_b = b.claim(seen_by_b, "b")
    assert claim_b is not None and claim_b.epoch == 2
    assert not a.renew(claim_a), "the old holder learns it lost the job"
    # a's late cleanup must not remove b's claim
    a.finish(claim_a)
    assert b.scan()[0].busy


def test_a_finished_job_is_never_claimed_again(tmp_path, fake_pte, small_tokenizer):
    uri = f"file://{tmp_path}/q"
    a, b = make_queue(uri), make_queue(uri)
    a.transport.put_bytes("jobs/j-1.json", b"{}")
    stale_entry = b.scan()[0]  # b looked before a finished
    claim = a.claim(a.scan()[0], "a")
    from device_lab.schema import make_result

    assert a.write_result("j-1", make_result("j-1", "ok"))
    a.finish(claim)
    assert a.scan() == []
    assert b.claim(stale_entry, "b") is None, "the result check after winning stops a rerun"
    assert not a.write_result("j-1", make_result("j-1", "error", "late")), "never overwritten"
    assert json.loads(a.transport.get_bytes("results/j-1.json"))["status"] == "ok"


def test_release_frees_the_job_at_once(tmp_path):
    q = make_queue(f"file://{tmp_path}/q", lease_s=60)
    q.transport.put_bytes("jobs/j-1.json", b"{}")
    claim = q.claim(q.scan()[0], "a")
    assert q.scan()[0].busy
    q.release(claim)
    entry = q.scan()[0]
    assert not entry.busy and entry.next_epoch == 2


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_claim_stress(where, request, tmp_path):
    """Many more simultaneous rounds, more contenders: still exactly one winner each."""
    uri, endpoint = _queue_uri(where, request, tmp_path)
    assert _simultaneous_claims(uri, endpoint, rounds=60, contenders=6) == [1] * 60

"""The claim protocol: one winner per race, leases, re-claims, and racing runners.

Run on the local folder and on a real S3 server (SeaweedFS, which is reported not to
enforce conditional writes under concurrent PUTs: the protocol does not use them).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from device_lab_helpers import CountingCheck, make_queue

from device_lab.queue import Queue
from device_lab.runner import Runner
from device_lab.schema import make_result
from device_lab.submit import submit_job
from device_lab.transport import open_transport

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


def _after_reading_folder(monkeypatch, folder, when, action):
    """Run ``action`` once, right after the local transport has read ``folder``'s entries
    (the first time ``when(names)`` holds) and before it looks at any of them: the moment
    another runner's put-then-delete can land in the middle of a listing."""
    real_scandir, fired = os.scandir, []

    class Read:  # what os.scandir returns: an iterator and a context manager
        def __init__(self, entries):
            self.entries = iter(entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def close(self):
            pass

    def scandir(path="."):
        with real_scandir(path) as it:
            entries = list(it)
        if not fired and os.fspath(path) == os.fspath(folder) and when([e.name for e in entries]):
            fired.append(True)
            action()
        return Read(entries)

    monkeypatch.setattr(os, "scandir", scandir)
    return fired


def test_a_contender_handing_its_marker_to_its_ticket_mid_listing_is_still_seen(tmp_path, monkeypatch):
    """Runner o took its ticket time before a did, then wrote the ticket and deleted its
    ``choosing`` marker while a's settle listing (step 5) was half done: a had read the
    folder before o's ticket existed and looked at the marker after it was gone. a must
    still see o (marker or ticket) and lose to o's older ticket. Two winners = a job run
    twice: the occasional failure of test_one_winner_and_three_runners_race_over_20_jobs."""
    uri = f"file://{tmp_path}/q"
    a, o = make_queue(uri), make_queue(uri)
    a.transport.put_bytes("jobs/j-1.json", b"{}")
    entry = a.scan()[0]
    ms = int(time.time() * 1000) - 50
    marker, ticket = (f"claims/j-1/000001/{kind}-{ms}-o.json" for kind in ("choosing", "ticket"))
    a_put = a.transport.put_bytes

    def put(key, data):  # both passed step 1; o's marker lands just after a's (step 2)
        a_put(key, data)
        if key.endswith("-a.json") and "/choosing-" in key:
            o.transport.put_bytes(marker, b"")  # o listed no ticket: its ticket time is ms

    monkeypatch.setattr(a.transport, "put_bytes", put)

    def o_takes_its_ticket():  # o: step 4, while a lists (step 5)
        o.transport.put_bytes(ticket, b"")
        o.transport.delete(marker)

    fired = _after_reading_folder(
        monkeypatch,
        tmp_path / "q" / "claims" / "j-1" / "000001",
        lambda names: any(n.startswith("ticket-") and n.endswith("-a.json") for n in names),
        o_takes_its_ticket,
    )
    assert a.claim(entry, "a") is None, "a must lose to o's older ticket"
    assert fired, "the interleaving happened"
    tickets = sorted(n.order for n in a._names("claims/j-1/000001/") if n.kind == "ticket")
    assert tickets[0] == (ms, "o"), "o's ticket is the smallest: o is the one winner"


def test_a_lease_renewed_mid_listing_still_holds_the_job(tmp_path, monkeypatch):
    """a's ticket is older than lease_s (a long benchmark), so its lease alone keeps the
    job. a renews (puts the new lease, deletes the old) while b's claim lists the epoch:
    b read the folder before the new lease existed and looked at the old one after it
    was gone. b must still see a lease and back off, not take epoch 2 and rerun the job."""
    uri, now = f"file://{tmp_path}/q", [1_000_000.0]
    a, b = (
        Queue(open_transport(uri), lease_s=30.0, settle_poll_s=0.02, clock=lambda: now[0]) for _ in range(2)
    )
    a.transport.put_bytes("jobs/j-1.json", b"{}")
    claim = a.claim(a.scan()[0], "a")
    assert claim is not None
    for _ in range(4):  # 40 s of renewals every lease_s/3: the ticket's grace is long past
        now[0] += 10
        assert a.renew(claim)
    entry = b.scan()[0]
    assert entry.busy
    now[0] += 10
    fired = _after_reading_folder(
        monkeypatch,
        tmp_path / "q" / "claims" / "j-1" / "000001",
        lambda names: any(n.startswith("lease-") for n in names),
        lambda: a.renew(claim),
    )
    assert b.claim(entry, "b") is None, "b must see a's lease, old or new"
    assert fired, "the interleaving happened"


def test_a_put_lands_though_a_delete_drops_its_folder(tmp_path, monkeypatch):
    """``delete`` drops the folders it empties; another runner's put may just have made the
    folder (a claim epoch) and not yet written into it. The put must land all the same."""
    t = open_transport(f"file://{tmp_path}/q")
    real_mkdir, raced = Path.mkdir, []

    def mkdir(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self.name == "000001" and not raced:
            raced.append(True)
            os.rmdir(self)  # what delete() of the folder's last entry does meanwhile

    monkeypatch.setattr(Path, "mkdir", mkdir)
    t.put_bytes("claims/j-1/000001/choosing-1-a.json", b"")
    assert raced and [o.key for o in t.list("claims/")] == ["claims/j-1/000001/choosing-1-a.json"]


def test_a_renewal_racing_the_finish_puts_no_lease_back(tmp_path, monkeypatch):
    """The heartbeat took the claim and began renewing it just as the result went out, and
    ``finish`` removed the claim meanwhile: the renewal must not put a lease back (a claim
    left behind a finished job; after a release, a freed job held for lease_s)."""
    q = make_queue(f"file://{tmp_path}/q", lease_s=0.3)
    runner = Runner(q, [CountingCheck({}, threading.Lock())], tmp_path / "w", runner_id="a")
    q.transport.put_bytes("jobs/j-1.json", b"{}")
    claim = q.claim(q.scan()[0], "a")
    assert claim is not None
    runner._claim = claim  # as handle() does
    entered, go, renew = threading.Event(), threading.Event(), q.renew

    def held_renew(c):
        entered.set()
        go.wait(10)
        return renew(c)

    monkeypatch.setattr(q, "renew", held_renew)
    done = threading.Event()
    beat = threading.Thread(target=runner._heartbeat, args=(done,))
    beat.start()
    try:
        assert entered.wait(10)
        deliver = threading.Thread(target=runner._deliver, args=(claim, make_result("j-1", "ok")))
        deliver.start()
        deliver.join(timeout=1.0)  # finish() may run now, under the renewal in flight
        go.set()
        deliver.join(timeout=10)
        with runner._lock:
            runner._claim = None  # as handle() does at the end
    finally:
        go.set()
        done.set()
        beat.join(timeout=10)
    assert json.loads(q.transport.get_bytes("results/j-1.json"))["status"] == "ok"
    assert [o.key for o in q.transport.list("claims/")] == []

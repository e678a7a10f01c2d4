"""A job queue on a transport: submit, scan, claim with a lease, write results.

The claim protocol needs no conditional writes (some S3 servers, SeaweedFS among them,
do not enforce them under concurrent PUTs). It is the bakery idea on object names,
and relies only on atomic single-object PUTs and lists that see completed PUTs, and
that never miss both sides of a replacement (put the successor, then delete the
predecessor: a ticket after its ``choosing`` marker, a renewed lease after the old one).
S3 lists walk names in order and each successor sorts after its predecessor; the local
folder lists each folder as it was read, an entry deleted since included:

    claims/<job>/<epoch>/choosing-<ms>-<runner>.json   "I am about to take a ticket"
    claims/<job>/<epoch>/ticket-<ms>-<runner>.json     "I contend for this epoch"
    claims/<job>/<epoch>/lease-<expires_ms>-<runner>.json  the winner's renewable lease

To claim a job a runner (1) lists its claims and backs off while the newest epoch is
alive (a live lease, a fresh ticket or marker), else takes the next epoch *e*;
(2) writes its ``choosing`` marker in *e*; (3) lists again and backs off if any ticket
or lease appeared; (4) writes its ticket, then deletes its marker; (5) lists until no
other fresh ``choosing`` marker is left; the smallest ticket name wins. A contender
that never saw my ticket wrote its marker before my ticket existed, so in step 5 I see
its marker or its ticket: all contenders decide on the same set, and exactly one wins.
The only timing assumption is that a live runner gets from step 2 to step 4 within
``choosing_stale_s`` (a dead one's marker is ignored after that).

A lease carries its expiry in its name, so a scan needs only lists, no reads. When the
newest epoch's lease (or, before any lease, its newest ticket + ``lease_s``) is past,
the job is claimable again at epoch *e+1*; the old holder sees the newer epoch when it
renews and abandons the job. After winning, the runner checks for a result, so a job
finished by someone else is never run twice. A result is written before the claim
folder is removed, and an existing result is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .schema import (
    CLAIMS,
    JOBS,
    MAX_JOB_DOC_BYTES,
    MAX_RESULT_DOC_BYTES,
    RESULTS,
    RUNNERS,
    ProtocolError,
    artifact_key,
    check_name,
    is_safe_name,
    validate_job,
    validate_result,
)
from .transport import ObjectInfo, Transport, sha256_file

log = logging.getLogger("device_lab.queue")


class MalformedResult(ProtocolError):
    """A result document on the queue that is not JSON or fails the schema."""


@dataclass(frozen=True)
class ClaimName:
    kind: str  # choosing | ticket | lease
    ms: int  # creation time (choosing, ticket) or expiry (lease), ms since the epoch
    runner: str
    key: str

    @staticmethod
    def parse(key: str) -> Optional["ClaimName"]:
        name = key.rsplit("/", 1)[-1]
        if not name.endswith(".json"):
            return None
        parts = name[:-5].split("-", 2)
        if len(parts) != 3 or parts[0] not in ("choosing", "ticket", "lease") or not parts[1].isdigit():
            return None
        return ClaimName(parts[0], int(parts[1]), parts[2], key)

    @property
    def order(self) -> tuple[int, str]:
        return self.ms, self.runner


@dataclass
class Claim:
    handle: str  # job file stem when it is a safe id, else bad-<hash of the key>
    job_key: str
    result_name: str  # results/<result_name>.json: where the submitter looks
    epoch: int
    runner_id: str
    claimed_at: float
    lease_key: str = ""
    lease_expires: float = 0.0  # local clock, seconds


@dataclass
class JobEntry:
    key: str  # jobs/<stem>.json as listed
    handle: str  # safe name used for claims and local folders
    result_name: str  # the stem whenever it can name a file, so rejections land there
    usable: bool  # the stem is a safe job id
    busy: bool = False  # a live claim holds it
    next_epoch: int = 1


def _can_name_a_file(stem: str) -> bool:
    return (
        0 < len(stem) <= 200
        and stem not in (".", "..")
        and not stem.startswith(".")
        and not any(c in stem for c in "/\\\0")
        and stem.isprintable()
    )


def names_for_key(key: str) -> tuple[str, str, bool]:
    """(handle, result_name, usable) of a listed job key ``jobs/<stem>.json``."""
    rel = key[len(JOBS) :]
    stem = rel[:-5] if rel.endswith(".json") else rel
    if rel.endswith(".json") and is_safe_name(stem):
        return stem, stem, True
    handle = "bad-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return handle, (stem if _can_name_a_file(stem) else handle), False


@dataclass
class Queue:
    transport: Transport
    lease_s: float = 60.0
    choosing_stale_s: Optional[float] = None  # default: lease_s
    settle_poll_s: float = 0.05
    clock: Callable[[], float] = time.time
    _stale_s: float = field(init=False, default=0.0)

    def __post_init__(self):
        self._stale_s = self.choosing_stale_s if self.choosing_stale_s is not None else self.lease_s

    @property
    def uri(self):
        return self.transport.uri

    # -- submitter side ------------------------------------------------------------------
    def put_artifact(self, path: str | Path, file_name: Optional[str] = None) -> dict:
        """Upload a file into the content-addressed artifact area (once per hash); returns
        the job's file reference ``{uri, sha256, size_bytes}``."""
        path = Path(path)
        name = check_name(file_name or path.name, f"artifact file name of {path}")
        sha, size = sha256_file(path), path.stat().st_size
        key = artifact_key(sha, name)
        if not any(o.key == key and o.size_bytes == size for o in self.transport.list(key)):
            self.transport.upload_file(key, path)
        return {"uri": self.uri.uri_for(key), "sha256": sha, "size_bytes": size}

    def submit(self, job: dict) -> str:
        validate_job(job)
        key = f"{JOBS}{job['job_id']}.json"
        if self.transport.exists(key):
            raise ProtocolError(f"job_id {job['job_id']!r} is already in {self.uri}; use a new id")
        self.transport.put_bytes(key, json.dumps(job, indent=1).encode())
        return job["job_id"]

    def read_result(self, handle: str) -> Optional[dict]:
        data = self.transport.get_bytes(
            f"{RESULTS}{check_name(handle, 'job id')}.json", max_bytes=MAX_RESULT_DOC_BYTES
        )
        if data is None:
            return None
        where = self.uri.uri_for(f"{RESULTS}{handle}.json")
        try:
            return validate_result(json.loads(data))
        except ValueError as e:  # ProtocolError is a ValueError too
            raise MalformedResult(f"{where}: malformed result ({e})") from None

    # -- runner side: scan ----------------------------------------------------------------
    def scan(self) -> list[JobEntry]:
        """Jobs without a result, oldest id first, with whether a live claim holds them."""
        jobs = self.transport.list(JOBS)
        if not jobs:
            return []
        done = {
            o.key[len(RESULTS) : -5]
            for o in self.transport.list(RESULTS)
            if o.key.endswith(".json") and "/" not in o.key[len(RESULTS) :]
        }
        claims: dict[str, list[ObjectInfo]] = {}
        for o in self.transport.list(CLAIMS):
            claims.setdefault(o.key[len(CLAIMS) :].split("/", 1)[0], []).append(o)
        out = []
        for o in jobs:
            handle, result_name, usable = names_for_key(o.key)
            if result_name in done:
                continue
            entry = JobEntry(o.key, handle, result_name, usable)
            entry.busy, entry.next_epoch = self._state(claims.get(handle, []), handle)
            out.append(entry)
        return out

    def _epochs(self, objs: list[ObjectInfo], handle: str) -> dict[int, list[ClaimName]]:
        epochs: dict[int, list[ClaimName]] = {}
        base = f"{CLAIMS}{handle}/"
        for o in objs:
            rest = o.key[len(base) :].split("/")
            name = ClaimName.parse(o.key)
            if len(rest) == 2 and rest[0].isdigit() and name is not None:
                epochs.setdefault(int(rest[0]), []).append(name)
        return epochs

    def _state(self, objs: list[ObjectInfo], handle: str) -> tuple[bool, int]:
        """(busy, next epoch) from a listing of claims/<handle>/."""
        epochs = self._epochs(objs, handle)
        if not epochs:
            return False, 1
        e = max(epochs)
        return self._epoch_alive(epochs[e]), e + 1

    def _epoch_alive(self, names: list[ClaimName]) -> bool:
        now_ms = self.clock() * 1000
        leases = [n for n in names if n.kind == "lease"]
        if leases:
            return max(n.ms for n in leases) > now_ms
        tickets = [n for n in names if n.kind == "ticket"]
        if tickets:  # a winner has a lease_s grace to write its first lease
            return max(n.ms for n in tickets) + self.lease_s * 1000 > now_ms
        return any(n.ms + self._stale_s * 1000 > now_ms for n in names if n.kind == "choosing")

    # -- runner side: claim, renew, release ----------------------------------------------
    def claim(self, entry: JobEntry, runner_id: str) -> Optional[Claim]:
        """Try to take ``entry`` at its next epoch; None when another runner has it."""
        check_name(runner_id, "runner id")
        t, handle = self.transport, entry.handle
        # Step 1 on a fresh listing (the scan may be stale): busy, or contended, = back off.
        busy, epoch = self._state(t.list(f"{CLAIMS}{handle}/"), handle)
        if busy:
            return None
        prefix = f"{CLAIMS}{handle}/{epoch:06d}/"

        def contenders(names, kinds):
            return [n for n in names if n.kind in kinds and n.runner != runner_id]

        choose = f"{prefix}choosing-{self._ms()}-{runner_id}.json"
        t.put_bytes(choose, b"")
        try:
            if contenders(self._names(prefix), ("ticket", "lease")):
                return None
            mine = f"{prefix}ticket-{self._ms()}-{runner_id}.json"
            t.put_bytes(mine, b"")
        finally:
            t.delete(choose)  # only after the ticket exists (step 4 order matters)
        give_up = self.clock() + self._stale_s
        while True:
            names = self._names(prefix)
            now_ms = self._ms()
            waiting = [n for n in contenders(names, ("choosing",)) if n.ms + self._stale_s * 1000 > now_ms]
            if waiting and self.clock() < give_up:
                time.sleep(self.settle_poll_s)
                continue
            tickets = sorted((n for n in names if n.kind == "ticket"), key=lambda n: n.order)
            if not tickets or tickets[0].key != mine or contenders(names, ("lease",)):
                return None
            break
        claim = Claim(handle, entry.key, entry.result_name, epoch, runner_id, self.clock())
        if not self.renew(claim):
            return None
        if t.exists(f"{RESULTS}{entry.result_name}.json"):  # finished by someone after our scan
            self.finish(claim)
            return None
        return claim

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when a newer epoch exists (the job was taken over)."""
        epochs = self._epochs(self.transport.list(f"{CLAIMS}{claim.handle}/"), claim.handle)
        if any(e > claim.epoch for e in epochs):
            return False
        expires = self.clock() + self.lease_s
        key = f"{CLAIMS}{claim.handle}/{claim.epoch:06d}/lease-{int(expires * 1000)}-{claim.runner_id}.json"
        self.transport.put_bytes(key, b"")
        old, claim.lease_key, claim.lease_expires = claim.lease_key, key, expires
        if old and old != key:
            self.transport.delete(old)
        return True

    def release(self, claim: Claim) -> None:
        """Give the job back now (e.g. on shutdown): an expired lease frees the epoch."""
        key = f"{CLAIMS}{claim.handle}/{claim.epoch:06d}/lease-{self._ms()}-{claim.runner_id}.json"
        self.transport.put_bytes(key, b"")
        if claim.lease_key and claim.lease_key != key:
            self.transport.delete(claim.lease_key)
        claim.lease_key, claim.lease_expires = key, 0.0

    def finish(self, claim: Claim) -> None:
        """Remove this and older epochs' claim objects (after the result is written); a
        newer epoch (a runner that took over) is left alone."""
        base = f"{CLAIMS}{claim.handle}/"
        for o in self.transport.list(base):
            epoch = o.key[len(base) :].split("/", 1)[0]
            if not epoch.isdigit() or int(epoch) <= claim.epoch:
                self.transport.delete(o.key)

    def write_result(self, result_name: str, doc: dict) -> bool:
        """Write the result unless one exists (never overwrite); True when written now."""
        validate_result(doc)
        key = f"{RESULTS}{result_name}.json"
        if self.transport.exists(key):
            return False
        self.transport.put_bytes(key, json.dumps(doc, indent=1, sort_keys=True).encode())
        return True

    def read_job_bytes(self, key: str) -> Optional[bytes]:
        return self.transport.get_bytes(key, max_bytes=MAX_JOB_DOC_BYTES)

    # -- runner registry --------------------------------------------------------------------
    def register(self, runner_id: str, info: dict, ttl_s: float) -> None:
        doc = dict(info, runner_id=runner_id, expires_at_s=self.clock() + ttl_s)
        self.transport.put_bytes(f"{RUNNERS}{runner_id}.json", json.dumps(doc).encode())

    def unregister(self, runner_id: str) -> None:
        self.transport.delete(f"{RUNNERS}{runner_id}.json")

    def live_backends(self, exclude: str = "") -> set[str]:
        """Backends that other registered, heartbeating runners offer."""
        out: set[str] = set()
        for o in self.transport.list(RUNNERS):
            if o.key == f"{RUNNERS}{exclude}.json":
                continue
            try:
                doc = json.loads(self.transport.get_bytes(o.key, max_bytes=65536) or b"{}")
                if float(doc.get("expires_at_s", 0)) > self.clock():
                    out.update(b for b in doc.get("backends", []) if isinstance(b, str))
            except (ValueError, TypeError, AttributeError):
                continue  # a broken registration offers nothing
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _ms(self) -> int:
        return int(self.clock() * 1000)

    def _names(self, prefix: str) -> list[ClaimName]:
        return [n for o in self.transport.list(prefix) if (n := ClaimName.parse(o.key))]

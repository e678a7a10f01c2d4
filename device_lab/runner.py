"""The runner service: poll a queue, claim a job, verify its files, run it, write the result.

    python -m device_lab.runner --queue s3://lab/queue --backend local-cpu
    python -m device_lab.runner --queue file:///srv/lab --backend local-cpu --once --idle-exit-s 60

In Python (the flow's embedded lab runs one in a thread)::

    runner = Runner(Queue(open_transport(uri)), [make_backend("local-cpu")], workdir)
    runner.serve(stop_event)

Each job: claim (``queue.py``) -> read and validate the job -> download the program and
tokenizer into ``<workdir>/jobs/<id>/`` checking size and sha256 -> run the backend in a
child process (lease renewed meanwhile; a lost lease kills the child) -> write the
result to ``<workdir>/outbox/`` -> deliver it to ``results/<id>.json`` (retried until
delivered; undelivered results are delivered on the next start) -> drop the claim.
Bad jobs get a ``rejected`` result without running anything; failed runs an ``error``
result; the runner keeps going. Files are only written under the work folder.

Exit codes: 0 stopped normally (``--once`` done, idle limit, SIGINT/SIGTERM); 2 bad
arguments, or the work folder is in use by another runner; 3 the queue could not be
reached (after retries).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .backends import Backend, BackendError, RunContext, make_backend, registry
from .queue import Claim, JobEntry, Queue
from .schema import (
    ProtocolError,
    artifact_key_from_uri,
    format_time,
    install_redaction,
    make_result,
    parse_queue_uri,
    parse_time,
    redact,
    utcnow,
    validate_job,
)
from .transport import Interrupted, NotFound, NotRegular, Retry, TooLarge, TransportError, open_transport

log = logging.getLogger("device_lab.runner")
DEFAULT_MAX_ARTIFACT_BYTES = 8 * 2**30
_TOKENIZER_SUFFIXES = (".json", ".model", ".bin", ".tiktoken")


class WorkdirBusy(RuntimeError):
    """Another runner uses this work folder (they would share outbox and downloads)."""


class Rejected(Exception):
    """The job is refused before anything runs; the message is the result's reason."""


def default_runner_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40].strip(".-") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Runner:
    def __init__(
        self,
        queue: Queue,
        backends: list[Backend],
        workdir: str | os.PathLike,
        *,
        runner_id: Optional[str] = None,
        poll_s: float = 2.0,
        job_timeout_s: float = 600.0,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    ):
        if not backends:
            raise ValueError("a runner needs at least one backend")
        self.queue, self.poll_s = queue, poll_s
        self.backends = {b.name: b for b in backends}
        self.workdir = Path(workdir).resolve()
        self.runner_id = runner_id or default_runner_id()
        self.job_timeout_s, self.max_artifact_bytes = job_timeout_s, max_artifact_bytes
        self.stop = threading.Event()
        self.handled = 0
        self._claim: Optional[Claim] = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._peeked: dict[str, Optional[str]] = {}  # job key -> backend (jobs are write-once)
        for sub in ("jobs", "outbox", "results", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)

    # -- service loop ---------------------------------------------------------------------
    def serve(
        self, stop: Optional[threading.Event] = None, once: bool = False, idle_exit_s: Optional[float] = None
    ) -> int:
        """Poll until ``stop`` is set (or after one job with ``once``, or ``idle_exit_s``
        without work). Returns the number of jobs handled."""
        if stop is not None:
            self.stop = stop
        lock = self._lock_workdir()
        try:
            return self._serve(once, idle_exit_s)
        finally:
            lock.close()  # releases the flock

    def _lock_workdir(self):
        import fcntl

        lock = open(self.workdir / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise WorkdirBusy(
                f"work folder {self.workdir} is in use by another runner; give each runner its own --workdir"
            ) from None
        return lock

    def _serve(self, once: bool, idle_exit_s: Optional[float]) -> int:
        self._register()
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(beat_stop,), name=f"lease-{self.runner_id}", daemon=True
        )
        beat.start()
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    self.flush_outbox()
                    worked = self.step()
                except TransportError as e:
                    log.warning("queue %s unavailable: %s", self.queue.uri, e)
                    if once:
                        raise
                    worked = False
                if worked:
                    idle_since = time.monotonic()
                    if once:
                        break
                    continue
                if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
                self.stop.wait(self.poll_s)
        finally:
            beat_stop.set()
            beat.join(timeout=5)
            try:
                self.queue.unregister(self.runner_id)
            except TransportError:
                pass
        return self.handled

    def step(self) -> bool:
        """One scan: claim and handle the first job this runner may take. True if it did."""
        others: Optional[set[str]] = None
        entries = self.queue.scan()
        seen = {e.key for e in entries}
        self._peeked = {k: v for k, v in self._peeked.items() if k in seen}
        for entry in entries:
            if entry.busy or self.stop.is_set():
                continue
            backend = self._peek_backend(entry)
            if backend is not None and backend not in self.backends:
                if others is None:
                    others = self.queue.live_backends(exclude=self.runner_id)
                if backend in others:
                    continue  # another runner on this queue offers it
            claim = self.queue.claim(entry, self.runner_id)
            if claim is None:
                continue
            self.handle(claim)
            return True
        return False

    def _peek_backend(self, entry: JobEntry) -> Optional[str]:
        if entry.key not in self._peeked:
            try:
                doc = json.loads(self.queue.read_job_bytes(entry.key) or b"null")
                backend = doc.get("backend") if isinstance(doc, dict) else None
                self._peeked[entry.key] = backend if isinstance(backend, str) else None
            except (ValueError, TooLarge, NotRegular):
                self._peeked[entry.key] = None  # claim it and reject it
        return self._peeked[entry.key]

    # -- one job ----------------------------------------------------------------------------
    def handle(self, claim: Claim) -> dict:
        """Run one claimed job to a result (ok, error or rejected) and deliver it."""
        claimed_at, started_at, job = format_time(claim.claimed_at), None, None
        self._cancel.clear()
        with self._lock:
            self._claim = claim
        job_dir = self._job_dir(claim.handle)
        log.info("claimed %s (attempt %d)", claim.handle, claim.epoch)
        common: dict[str, Any] = dict(runner=self._runner_info(), attempt=claim.epoch, claimed_at=claimed_at)
        try:
            try:
                job = self._load_job(claim)
                backend = self.backends[job["backend"]]
                program, tokenizer = self._fetch(job, job_dir)
                started_at = format_time(utcnow())
                ctx = RunContext(job, program, tokenizer, job_dir, self._time_left(job), self._cancel)
                measurement = backend.run(ctx)
                result = make_result(
                    claim.result_name,
                    "ok",
                    None,
                    job=job,
                    device=backend.describe(),
                    started_at=started_at,
                    measurement=measurement,
                    **common,
                )
            except Rejected as e:
                log.warning("rejected %s: %s", claim.handle, e)
                result = make_result(claim.result_name, "rejected", str(e), job=job, **common)
            except BackendError as e:
                if self._cancel.is_set() and not self.stop.is_set():
                    log.warning("lost the lease of %s; another runner has it", claim.handle)
                    return {}
                if self.stop.is_set():
                    self._drop_claim()
                    try:
                        self.queue.release(claim)  # let another runner take it at once
                    except TransportError:
                        pass  # then the lease simply expires
                    return {}
                log.warning("job %s failed: %s", claim.handle, e)
                errors = [str(e)] + ([tail] if (tail := self._log_tail(job_dir)) else [])
                result = make_result(
                    claim.result_name,
                    "error",
                    str(e).split("\n")[0][:2000],
                    job=job,
                    device=backend.describe(),
                    started_at=started_at,
                    errors=errors,
                    **common,
                )
            except Interrupted:  # stopping mid-download: hand the job back at once
                self._drop_claim()
                try:
                    self.queue.release(claim)
                except TransportError:
                    pass  # then the lease simply expires
                return {}
            except TransportError as e:
                log.warning("job %s: queue error: %s", claim.handle, e)
                result = make_result(
                    claim.result_name,
                    "error",
                    f"could not fetch the job's files: {e}",
                    job=job,
                    started_at=started_at,
                    **common,
                )
            except Exception as e:  # a bug must not stop the service: report it as the result
                log.exception("internal error on %s", claim.handle)
                result = make_result(
                    claim.result_name,
                    "error",
                    f"internal runner error: {type(e).__name__}: {e}",
                    job=job,
                    started_at=started_at,
                    **common,
                )
            self._deliver(claim, result)
            self.handled += 1
            return result
        finally:
            self._drop_claim()
            self._keep_log(claim.handle, job_dir)
            shutil.rmtree(job_dir, ignore_errors=True)

    def _load_job(self, claim: Claim) -> dict:
        if claim.job_key != f"jobs/{claim.handle}.json":
            raise Rejected(
                f"job file {claim.job_key!r} is not named <job_id>.json with a "
                "safe id (1-128 of A-Z a-z 0-9 . _ -, no '..', no '/')"
            )
        try:
            data = self.queue.read_job_bytes(claim.job_key)
        except TooLarge as e:
            raise Rejected(f"job document too large: {e}") from None
        except NotRegular as e:
            raise Rejected(f"job entry refused: {e}") from None
        if data is None:
            raise Rejected(f"job document {claim.job_key} vanished")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise Rejected(f"job document is not valid JSON ({e})") from None
        try:
            job = validate_job(doc)
        except ProtocolError as e:
            raise Rejected(f"job document fails the schema: {e}") from None
        if job["job_id"] != claim.handle:
            raise Rejected(f"job.job_id {job['job_id']!r} does not match its file name {claim.handle!r}.json")
        if parse_time(job["deadline"]) <= utcnow():
            raise Rejected(f"deadline {job['deadline']} has passed")
        if job["backend"] not in self.backends:
            raise Rejected(
                f"backend {job['backend']!r} is not offered here (this runner: "
                f"{', '.join(sorted(self.backends))}; known kinds: "
                f"{', '.join(sorted(registry()))})"
            )
        for what in ("artifact", "tokenizer"):
            ref = job[what]
            if ref["size_bytes"] > self.max_artifact_bytes:
                raise Rejected(
                    f"job.{what}: {ref['size_bytes']} bytes is over this runner's cap "
                    f"of {self.max_artifact_bytes} bytes"
                )
            try:
                artifact_key_from_uri(self.queue.uri, ref["uri"], ref["sha256"], f"job.{what}.uri")
            except ProtocolError as e:
                raise Rejected(str(e)) from None
        return job

    def _fetch(self, job: dict, job_dir: Path) -> tuple[Path, Path]:
        out = []
        for what, local in (("artifact", "model.pte"), ("tokenizer", None)):
            ref = job[what]
            key = artifact_key_from_uri(self.queue.uri, ref["uri"], ref["sha256"], what)
            if local is None:  # keep the tokenizer's kind: runtimes pick the loader by suffix
                suffix = next((s for s in _TOKENIZER_SUFFIXES if key.endswith(s)), ".bin")
                local = "tokenizer" + suffix
            dest = job_dir / local
            try:
                sha, size = self.queue.transport.download_file(
                    key, dest, ref["size_bytes"], should_stop=self.stop.is_set
                )
            except TooLarge:
                raise Rejected(
                    f"job.{what}: the stored file is larger than its declared size_bytes {ref['size_bytes']}"
                ) from None
            except NotFound:
                raise Rejected(f"job.{what}: {ref['uri']} not found") from None
            except NotRegular as e:
                raise Rejected(f"job.{what}: {e}") from None
            if size != ref["size_bytes"] or sha != ref["sha256"]:
                dest.unlink(missing_ok=True)
                raise Rejected(
                    f"job.{what}: hash mismatch (declared sha256 {ref['sha256'][:16]}... "
                    f"{ref['size_bytes']} bytes; got {sha[:16]}... {size} bytes)"
                )
            out.append(dest)
        return out[0], out[1]

    def _time_left(self, job: dict) -> float:
        left = (parse_time(job["deadline"]) - utcnow()).total_seconds()
        return max(1.0, min(self.job_timeout_s, left))

    # -- results ------------------------------------------------------------------------------
    def _deliver(self, claim: Claim, result: dict) -> None:
        """Outbox first (atomic), then the queue; retried until delivered or stopping."""
        outbox = self.workdir / "outbox" / f"{claim.handle}.json"
        _atomic_write(
            outbox, json.dumps({"result_name": claim.result_name, "result": result}, indent=1, sort_keys=True)
        )
        delay = 0.5
        while True:
            # Delivered even if the lease lapsed meanwhile: the run happened, and an existing
            # result is never overwritten (write_result), so nothing is lost either way.
            try:
                self._deliver_file(outbox)
                log.info("%s: %s", claim.handle, result["status"])
                break
            except TransportError as e:
                if self.stop.is_set():
                    log.warning("stopping with %s undelivered (kept in %s): %s", claim.handle, outbox, e)
                    return
                log.warning("delivering %s failed: %s; retrying in %.1f s", claim.handle, e, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self._drop_claim()
        try:
            self.queue.finish(claim)
        except TransportError as e:  # harmless: the result exists, so nobody reruns the job
            log.warning("could not remove the claim of %s: %s", claim.handle, e)

    def _deliver_file(self, path: Path) -> None:
        try:
            entry = json.loads(path.read_text())
            entry["result_name"], entry["result"]
        except (ValueError, KeyError, TypeError) as e:  # never block the loop on one bad file
            log.error("unreadable outbox file %s (%s); moved to outbox-bad/", path, e)
            (self.workdir / "outbox-bad").mkdir(exist_ok=True)
            os.replace(path, self.workdir / "outbox-bad" / path.name)
            return
        if not self.queue.write_result(entry["result_name"], entry["result"]):
            log.info(
                "%s already had a result; ours is kept in %s", entry["result_name"], self.workdir / "results"
            )
        os.replace(path, self.workdir / "results" / path.name)

    def flush_outbox(self) -> None:
        """Deliver results left by an earlier run of this work folder (queue was down)."""
        for path in sorted((self.workdir / "outbox").glob("*.json")):
            self._deliver_file(path)

    # -- lease and registration ----------------------------------------------------------------
    def _heartbeat(self, done: threading.Event) -> None:
        """Renew the current lease and the registration every lease_s/3; on stop, cancel
        the running job (its child is killed and the job handed back)."""
        every_s = max(0.05, self.queue.lease_s / 3)
        next_beat = time.monotonic() + every_s
        while not done.wait(min(every_s, 0.2)):
            with self._lock:
                claim = self._claim
            if self.stop.is_set() and claim is not None:
                self._cancel.set()
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + every_s
            self._renew_current()
            try:
                self._register()
            except TransportError:
                pass

    def _renew_current(self) -> None:
        """Renew the current claim's lease, holding the claim lock throughout: ``_drop_claim``
        waits for it, so a renewal never puts a lease back after the claim was finished or
        released (a lease left behind a result, or a released job held for lease_s)."""
        with self._lock:
            claim = self._claim
            if claim is None:
                return
            try:
                if not self.queue.renew(claim):
                    self._cancel.set()
            except TransportError as e:
                log.warning("lease renewal of %s failed: %s", claim.handle, e)
                if time.time() > claim.lease_expires:
                    self._cancel.set()  # others may have it now: stop rather than run twice

    def _drop_claim(self) -> None:
        """Stop renewing the current claim (before finishing or releasing it); returns once
        no renewal of it is in flight."""
        with self._lock:
            self._claim = None

    def _register(self) -> None:
        self.queue.register(
            self.runner_id,
            {"host": socket.gethostname(), "version": __version__, "backends": sorted(self.backends)},
            ttl_s=self.queue.lease_s * 3,
        )

    def _runner_info(self) -> dict:
        return {
            "id": self.runner_id,
            "host": socket.gethostname(),
            "version": __version__,
            "backends": ",".join(sorted(self.backends)),
        }

    # -- files ------------------------------------------------------------------------------------
    def _job_dir(self, handle: str) -> Path:
        jobs = self.workdir / "jobs"
        path = (jobs / handle).resolve()
        if path.parent != jobs.resolve():  # handles are safe names; this is the belt and braces
            raise RuntimeError(f"job folder {path} would be outside {jobs}")
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def _log_tail(self, job_dir: Path) -> str:
        path = job_dir / "bench.log"
        try:
            return path.read_bytes()[-2000:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _keep_log(self, handle: str, job_dir: Path) -> None:
        src = job_dir / "bench.log"
        if src.exists():
            try:
                os.replace(src, self.workdir / "logs" / f"{handle}.log")
            except OSError:
                pass


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m device_lab.runner",
        description=__doc__.split("\n")[0],
        epilog="exit codes: 0 stopped normally (--once done, idle limit, SIGINT/SIGTERM); "
        "2 bad arguments or work folder in use; 3 queue unreachable after retries",
    )
    ap.add_argument("--queue", required=True, help="file:///abs/folder or s3://bucket/prefix")
    ap.add_argument(
        "--backend",
        action="append",
        default=None,
        help=f"backend to offer (repeatable; default local-cpu): {', '.join(sorted(registry()))}",
    )
    ap.add_argument("--workdir", default=None, help="work folder (default ~/.cache/device_lab/runner)")
    ap.add_argument("--once", action="store_true", help="handle one job, then exit")
    ap.add_argument(
        "--idle-exit-s",
        type=float,
        default=None,
        help="exit after this long without a job (with --once default 0: one look)",
    )
    ap.add_argument("--poll-s", type=float, default=2.0)
    ap.add_argument("--lease-s", type=float, default=60.0, help="claim lease; renewed every third")
    ap.add_argument("--job-timeout-s", type=float, default=600.0)
    ap.add_argument("--max-artifact-bytes", type=int, default=DEFAULT_MAX_ARTIFACT_BYTES)
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3)")
    ap.add_argument(
        "--retry-attempts",
        type=int,
        default=5,
        help="tries per S3 request before reporting an error (backoff between)",
    )
    ap.add_argument("--runner-id", default=None)
    ap.add_argument("--log-level", default="INFO")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_redaction()
    # Their DEBUG logs print request headers (the access key id among them): never ours.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, value in (
        ("--poll-s", args.poll_s),
        ("--lease-s", args.lease_s),
        ("--job-timeout-s", args.job_timeout_s),
        ("--max-artifact-bytes", args.max_artifact_bytes),
        ("--retry-attempts", args.retry_attempts),
    ):
        if value <= 0:
            print(f"error: {name} must be > 0, got {value}", file=sys.stderr)
            return 2
    try:
        backends = [make_backend(n) for n in (args.backend or ["local-cpu"])]
    except KeyError as e:
        print(f"error: --backend: {e.args[0]}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or Path.home() / ".cache" / "device_lab" / "runner")
    try:
        uri = parse_queue_uri(args.queue, "--queue")
        queue = Queue(
            open_transport(uri, args.endpoint_url, Retry(args.retry_attempts)), lease_s=args.lease_s
        )
        runner = Runner(
            queue,
            backends,
            workdir,
            runner_id=args.runner_id,
            poll_s=args.poll_s,
            job_timeout_s=args.job_timeout_s,
            max_artifact_bytes=args.max_artifact_bytes,
        )
    except ProtocolError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    except TransportError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"error: --workdir {workdir}: {e.strerror or e}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        log.info("signal %d: stopping (the current job is handed back)", signum)
        runner.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    idle = args.idle_exit_s if args.idle_exit_s is not None else (0.0 if args.once else None)
    log.info(
        "runner %s on %s with %s (work folder %s)",
        runner.runner_id,
        queue.uri,
        ", ".join(sorted(runner.backends)),
        runner.workdir,
    )
    try:
        runner.serve(once=args.once, idle_exit_s=idle)
    except WorkdirBusy as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    except TransportError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The device lab's protocol, written down once: documents, names, times, queue URIs.

Everything a submitter and a runner must agree on lives here (docs/device-lab.md mirrors it):

* **Queue URIs**: ``file:///abs/folder`` (a local or shared folder) or
  ``s3://bucket[/prefix]`` (any S3-compatible endpoint; the endpoint comes from
  ``--endpoint-url``/config or ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``; credentials
  only from the environment or the standard AWS config files, never from a URI).
* **Layout** under the queue root (keys use ``/``)::

      jobs/<job_id>.json                     job document (written once by a submitter)
      results/<job_id>.json                  result document (written once by the runner)
      artifacts/<sha256>/<file name>         uploaded .pte / tokenizer (content-addressed)
      claims/<job_id>/<epoch:06d>/<kind>-<ms>-<runner_id>.json   claim protocol (queue.py)
      runners/<runner_id>.json               runner registrations (backends, heartbeat)

* **Times**: ISO 8601 in UTC with a ``Z``, e.g. ``2025-06-01T12:00:00.123Z``.
* **Job** (``kind: device-lab/job``, ``version: 1``) and **result**
  (``kind: device-lab/result``, ``version: 1``): the field tables below
  (:data:`JOB_FIELDS`, :data:`RESULT_FIELDS`). Validation is strict: unknown fields,
  missing fields and wrong types are errors naming the field.

    job = make_job(job_id=new_job_id(), artifact=ref, tokenizer=tok_ref, benchmark=bench,
                   backend="local-cpu", deadline_s=600)
    validate_job(job)            # raises ProtocolError("job.benchmark.repeats: ...")
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Optional

PROTOCOL_VERSION = 1
JOB_KIND = "device-lab/job"
RESULT_KIND = "device-lab/result"
STATUSES = ("ok", "error", "rejected")

JOBS, RESULTS, ARTIFACTS, CLAIMS, RUNNERS = "jobs/", "results/", "artifacts/", "claims/", "runners/"
MAX_JOB_DOC_BYTES = 256 * 1024  # a job is a few hundred bytes; bigger is not a job
MAX_RESULT_DOC_BYTES = 4 * 1024 * 1024

# Ids and file names: one path segment of safe characters, never "." or "..".
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BACKEND_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ProtocolError(ValueError):
    """A document, name or URI that breaks the protocol; the message names the field."""


# -- credentials never leave the process --------------------------------------------------
# userinfo in any URL (s3://KEY:SECRET@..., http://user:pass@host)
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]*@")
# Environment variables whose values are credentials wherever they appear.
_SECRET_ENV_RE = re.compile(r"(?i)(SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL)")


def redact(text: Any) -> str:
    """``text`` with URL userinfo and the values of credential environment variables
    replaced by ``***``. Every message, log line and result document passes through it, so
    a credential planted in any input (a URI, an endpoint, the environment) is never echoed."""
    import os

    out = _USERINFO_RE.sub(r"\1***@", str(text))
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_ENV_RE.search(name) and value in out:
            out = out.replace(value, "***")
    return out


# -- names, times ------------------------------------------------------------------------
def is_safe_name(name: Any) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and ".." not in name


def check_name(name: Any, what: str) -> str:
    if not is_safe_name(name):
        raise ProtocolError(
            f"{what}: {name!r} is not a safe name (1-128 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, no '..', no path separators)"
        )
    return name


def new_job_id(now: Optional[_dt.datetime] = None) -> str:
    """Sortable by submission time: ``j-20250601T120000Z-1a2b3c4d5e``."""
    now = now or utcnow()
    return f"j-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(5)}"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def format_time(t: _dt.datetime | float) -> str:
    if isinstance(t, (int, float)):
        t = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_time(text: Any, what: str = "time") -> _dt.datetime:
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise ProtocolError(
            f"{what}: must be an ISO 8601 UTC time like 2025-06-01T12:00:00.000Z, got {text!r}"
        )
    try:
        return _dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise ProtocolError(f"{what}: {text!r} is not a valid date/time") from None


# -- queue URIs --------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueURI:
    scheme: str  # "file" | "s3"
    path: str = ""  # file: absolute folder
    bucket: str = ""  # s3
    prefix: str = ""  # s3: "" or "a/b" (no leading/trailing slash)

    def __str__(self) -> str:
        if self.scheme == "file":
            return "file://" + urllib.parse.quote(self.path)
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def uri_for(self, key: str) -> str:
        return f"{self}/{key}"


class _RedactFilter:
    def filter(self, record) -> bool:
        text = record.getMessage()
        safe = redact(text)
        if safe != text:
            record.msg, record.args = safe, None
        return True


def install_redaction() -> None:
    """Pass every log record of this process through :func:`redact` (its handlers)."""
    import logging

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactFilter) for f in handler.filters):
            handler.addFilter(_RedactFilter())


def parse_queue_uri(uri: Any, what: str = "queue") -> QueueURI:
    """``file:///abs/path`` or ``s3://bucket[/prefix]``; anything else is an error (whose
    message never repeats credentials written into the URI)."""
    try:
        return _parse_queue_uri(uri, what)
    except ProtocolError as e:
        raise ProtocolError(redact(e)) from None


def _parse_queue_uri(uri: Any, what: str) -> QueueURI:
    if not isinstance(uri, str) or "://" not in uri:
        raise ProtocolError(
            f"{what}: {uri!r} is not a queue URI; use file:///absolute/folder or s3://bucket/prefix"
        )
    parsed = urllib.parse.urlsplit(uri)
    if parsed.query or parsed.fragment:
        raise ProtocolError(f"{what}: {uri!r} must not have a query or fragment")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ProtocolError(
                f"{what}: {uri!r}: a file URI needs three slashes and an "
                "absolute path, e.g. file:///srv/device-lab"
            )
        path = urllib.parse.unquote(parsed.path)
        parts = path.split("/")
        if not path.startswith("/") or ".." in parts or "\0" in path:
            raise ProtocolError(f"{what}: {uri!r}: the folder must be an absolute path without '..'")
        path = "/" + "/".join(p for p in parts if p)
        return QueueURI("file", path=path)
    if parsed.scheme == "s3":
        if "@" in parsed.netloc or ":" in parsed.netloc:
            raise ProtocolError(
                f"{what}: {uri!r}: put no credentials or port in an s3 URI; "
                "credentials come from the environment, the endpoint from "
                "--endpoint-url or AWS_ENDPOINT_URL_S3"
            )
        if not _BUCKET_RE.match(parsed.netloc or ""):
            raise ProtocolError(f"{what}: {uri!r}: {parsed.netloc!r} is not a valid bucket name")
        segs = [s for s in parsed.path.split("/") if s]
        for s in segs:
            check_name(s, f"{what} prefix segment of {uri!r}")
        return QueueURI("s3", bucket=parsed.netloc, prefix="/".join(segs))
    raise ProtocolError(f"{what}: {uri!r}: unsupported scheme {parsed.scheme!r}; use file:// or s3://")


def artifact_key(sha256: str, file_name: str) -> str:
    return f"{ARTIFACTS}{sha256}/{check_name(file_name, 'artifact file name')}"


def artifact_key_from_uri(queue: QueueURI, uri: Any, sha256: str, what: str) -> str:
    """The queue key of an artifact URI, which must lie in this queue's artifact area under
    its own hash: a runner never fetches anything a job names outside the queue."""
    base = f"{queue}/{ARTIFACTS}"
    if not isinstance(uri, str) or not uri.startswith(base):
        raise ProtocolError(
            f"{what}: {uri!r} is not in this queue's artifact area ({base}...); let the submitter upload it"
        )
    rest = uri[len(base) :].split("/")
    if len(rest) != 2 or rest[0] != sha256 or not is_safe_name(rest[1]):
        raise ProtocolError(f"{what}: {uri!r} must be {base}<sha256>/<file name> with the job's sha256")
    return artifact_key(sha256, rest[1])


# -- field tables and strict validation ------------------------------------------------
Check = Callable[[Any, str], None]


def _int(lo: int, hi: int) -> Check:
    def check(v, where):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ProtocolError(f"{where}: must be an integer in [{lo}, {hi}], got {v!r}")

    return check


def _num(v, where):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf")):
        raise ProtocolError(f"{where}: must be a finite number, got {v!r}")


def _str(max_len: int = 4096) -> Check:
    def check(v, where):
        if not isinstance(v, str) or len(v) > max_len:
            raise ProtocolError(
                f"{where}: must be a string of at most {max_len} characters, got {type(v).__name__}"
            )

    return check


def _const(value) -> Check:
    def check(v, where):
        if v != value or type(v) is not type(value):
            raise ProtocolError(f"{where}: must be {value!r}, got {v!r}")

    return check


def _bool(v, where):
    if not isinstance(v, bool):
        raise ProtocolError(f"{where}: must be true or false, got {v!r}")


def _name(v, where):
    check_name(v, where)


def _backend(v, where):
    if not isinstance(v, str) or not _BACKEND_RE.match(v):
        raise ProtocolError(f"{where}: {v!r} is not a backend name (lower-case letters, digits, '-')")


def _sha(v, where):
    if not isinstance(v, str) or not _SHA256_RE.match(v):
        raise ProtocolError(f"{where}: must be 64 lower-case hex digits (sha256), got {v!r}")


def _time(v, where):
    parse_time(v, where)


def _nullable(check: Check) -> Check:
    def inner(v, where):
        if v is not None:
            check(v, where)

    return inner


def _obj(fields: dict[str, tuple[Check, bool]]) -> Check:
    def check(v, where):
        validate_fields(v, fields, where)

    return check


def _map(value_check: Check, max_items: int, key_check: Optional[Check] = None) -> Check:
    def check(v, where):
        if not isinstance(v, dict) or len(v) > max_items:
            raise ProtocolError(f"{where}: must be an object of at most {max_items} entries")
        for k, item in v.items():
            (key_check or _str(128))(k, f"{where} key")
            value_check(item, f"{where}.{k}")

    return check


def _list(item: Check, min_items: int, max_items: int, unique: bool = False) -> Check:
    def check(v, where):
        if not isinstance(v, list) or not min_items <= len(v) <= max_items:
            raise ProtocolError(f"{where}: must be a list of {min_items}-{max_items} items, got {v!r}"[:300])
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
        if unique and len(set(map(repr, v))) != len(v):
            raise ProtocolError(f"{where}: items must be unique, got {v!r}")

    return check


def _scalar(v, where):
    if v is not None and not isinstance(v, (str, int, float, bool)):
        raise ProtocolError(f"{where}: must be a string, number, boolean or null")
    if isinstance(v, str) and len(v) > 1024:
        raise ProtocolError(f"{where}: longer than 1024 characters")


def _any_json(v, where):  # free-form measurement detail (raw numbers, runtime stats)
    if v is None or isinstance(v, (str, int, float, bool)):
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            _any_json(x, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ProtocolError(f"{where}: keys must be strings")
            _any_json(x, f"{where}.{k}")
        return
    raise ProtocolError(f"{where}: not a JSON value")


def _status(v, where):
    if v not in STATUSES or not isinstance(v, str):
        raise ProtocolError(f"{where}: must be one of {', '.join(STATUSES)}, got {v!r}")


def _prompt_key(k, where):
    if not isinstance(k, str) or not k.isdigit() or k.startswith("0"):
        raise ProtocolError(f'{where}: {k!r} must be a prompt length in tokens, e.g. "128"')


def validate_fields(doc: Any, fields: dict[str, tuple[Check, bool]], where: str) -> None:
    """Strict object check: every key known, every required key present, every value typed."""
    if not isinstance(doc, dict):
        raise ProtocolError(f"{where}: must be a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise ProtocolError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(fields))})")
    for name, (check, required) in fields.items():
        if name in doc:
            check(doc[name], f"{where}.{name}")
        elif required:
            raise ProtocolError(f"{where}.{name}: missing")


FILE_REF_FIELDS = {"uri": (_str(2048), True), "sha256": (_sha, True), "size_bytes": (_int(1, 2**50), True)}
BENCHMARK_FIELDS = {
    "prompt_lengths": (_list(_int(1, 1 << 20), 1, 32, unique=True), True),  # tokens, exact
    "decode_tokens": (_int(2, 1 << 20), True),  # new tokens per run (the first ends prefill)
    "repeats": (_int(1, 1000), True),  # measured runs per prompt length
    "warmup": (_int(0, 100), True),  # unrecorded runs per prompt length before measuring
    "threads": (_int(1, 1024), True),  # runtime threadpool size
    # also time one decode step per operator (ExecuTorch ETDump; costs the backend a
    # second program load and ~10 s of tooling import): result raw.decode_op_profile
    "op_profile": (_bool, False),
}
JOB_FIELDS = {
    "kind": (_const(JOB_KIND), True),
    "version": (_const(PROTOCOL_VERSION), True),
    "job_id": (_name, True),
    "created_at": (_time, True),
    "deadline": (_time, True),  # not started by then = rejected; running past it = error
    "backend": (_backend, True),
    "artifact": (_obj(FILE_REF_FIELDS), True),  # the program (.pte)
    "tokenizer": (_obj(FILE_REF_FIELDS), True),  # tokenizer.json the program was trained with
    "benchmark": (_obj(BENCHMARK_FIELDS), True),
    "labels": (_map(_str(512), 32), False),  # free-form, e.g. the producing MLflow run
}
RESULT_FIELDS = {
    "kind": (_const(RESULT_KIND), True),
    "version": (_const(PROTOCOL_VERSION), True),
    "job_id": (_str(256), True),  # the job's file stem (where the submitter looks)
    "status": (_status, True),
    "reason": (_nullable(_str(8192)), True),  # why not ok; null when ok
    "backend": (_nullable(_str(64)), True),
    "runner": (_map(_scalar, 32), True),  # id, host, version of the runner
    "device": (_map(_scalar, 64), True),  # what ran it: cpu model, cores, memory, runtime
    "attempt": (_int(0, 1 << 30), True),  # claim epoch: 2 = re-run after a lost lease
    "claimed_at": (_nullable(_time), True),
    "started_at": (_nullable(_time), True),
    "finished_at": (_time, True),
    "artifact_sha256": (_nullable(_sha), True),
    "benchmark": (_nullable(_obj(BENCHMARK_FIELDS)), True),
    "load_s": (_nullable(_num), True),  # program load (runtime construction + method load)
    "prefill_tok_per_s": (_map(_num, 32, _prompt_key), True),  # median per prompt length
    "decode_tok_per_s": (
        _nullable(_num),
        True,
    ),  # median over all runs (null when ok from a backend without timing, e.g. artifact-check)
    "decode_tok_per_s_by_prompt": (_map(_num, 32, _prompt_key), True),
    "peak_rss_bytes": (_nullable(_int(0, 2**62)), True),  # peak RSS of the benchmark process
    "baseline_rss_bytes": (_nullable(_int(0, 2**62)), True),  # its RSS before loading
    "raw": (_any_json, True),  # per-repeat numbers and the runtime's own stats
    "errors": (_list(_str(8192), 0, 100), True),
    "labels": (_map(_str(512), 32), True),  # copied from the job
}


def validate_job(doc: Any) -> dict:
    if (
        isinstance(doc, dict)
        and doc.get("kind") == JOB_KIND
        and "version" in doc
        and doc["version"] != PROTOCOL_VERSION
    ):
        raise ProtocolError(
            f"job.version: {doc['version']!r} is not supported; this device "
            f"lab speaks version {PROTOCOL_VERSION}"
        )
    validate_fields(doc, JOB_FIELDS, "job")
    return doc


def validate_result(doc: Any) -> dict:
    validate_fields(doc, RESULT_FIELDS, "result")
    return doc


def make_job(
    *,
    job_id: str,
    artifact: dict,
    tokenizer: dict,
    benchmark: dict,
    backend: str = "local-cpu",
    deadline_s: float = 3600.0,
    labels: Optional[dict] = None,
    now: Optional[_dt.datetime] = None,
) -> dict:
    now = now or utcnow()
    doc = {
        "kind": JOB_KIND,
        "version": PROTOCOL_VERSION,
        "job_id": job_id,
        "created_at": format_time(now),
        "deadline": format_time(now + _dt.timedelta(seconds=deadline_s)),
        "backend": backend,
        "artifact": dict(artifact),
        "tokenizer": dict(tokenizer),
        "benchmark": dict(benchmark),
    }
    if labels:
        doc["labels"] = dict(labels)
    return validate_job(doc)


def make_result(
    job_id: str,
    status: str,
    reason: Optional[str] = None,
    *,
    job: Optional[dict] = None,
    runner: Optional[dict] = None,
    device: Optional[dict] = None,
    attempt: int = 0,
    claimed_at: Optional[str] = None,
    started_at: Optional[str] = None,
    measurement: Optional[dict] = None,
    errors: Optional[list] = None,
) -> dict:
    """A complete result document; ``measurement`` holds the backend's numbers."""
    m = measurement or {}
    doc = {
        "kind": RESULT_KIND,
        "version": PROTOCOL_VERSION,
        "job_id": job_id,
        "status": status,
        "reason": None if reason is None else redact(reason),
        "backend": job.get("backend")
        if isinstance(job, dict) and isinstance(job.get("backend"), str)
        else None,
        "runner": dict(runner or {}),
        "device": dict(device or {}),
        "attempt": attempt,
        "claimed_at": claimed_at,
        "started_at": started_at,
        "finished_at": format_time(utcnow()),
        "artifact_sha256": None,
        "benchmark": None,
        "load_s": m.get("load_s"),
        "prefill_tok_per_s": dict(m.get("prefill_tok_per_s") or {}),
        "decode_tok_per_s": m.get("decode_tok_per_s"),
        "decode_tok_per_s_by_prompt": dict(m.get("decode_tok_per_s_by_prompt") or {}),
        "peak_rss_bytes": m.get("peak_rss_bytes"),
        "baseline_rss_bytes": m.get("baseline_rss_bytes"),
        "raw": m.get("raw") or {},
        "errors": [redact(e)[:8192] for e in (errors or [])][:100],
        "labels": {},
    }
    if isinstance(job, dict):  # only fields that passed validation are copied
        try:
            validate_job(job)
            doc["artifact_sha256"] = job["artifact"]["sha256"]
            doc["benchmark"] = dict(job["benchmark"])
            doc["labels"] = dict(job.get("labels") or {})
        except ProtocolError:
            pass
    if not isinstance(doc["backend"], str) or not _BACKEND_RE.match(doc["backend"]):
        doc["backend"] = None
    return validate_result(doc)

"""Submit a profiling job by hand (or from code) and optionally wait for its result.

    python -m device_lab.submit --queue URI --artifact model.pte --tokenizer tokenizer.json
    python -m device_lab.submit --queue URI --artifact model.pte --tokenizer tokenizer.json \\
        --prompt-lengths 32,128 --decode-tokens 32 --repeats 3 --wait 600
    python -m device_lab.submit --queue URI --result JOB_ID [--wait 600]

``--artifact``/``--tokenizer`` take a local file (uploaded once per sha256 to the queue's
``artifacts/`` area) or a URI already in that area. Without ``--wait`` the job id goes
to stdout; with ``--wait`` the id goes to stderr and the result document (JSON) to
stdout.

Exit codes: 0 submitted / result ``ok``; 1 result ``error``; 2 bad arguments or input
files; 3 queue unreachable or a malformed result; 4 result ``rejected``; 5 no result
within ``--wait`` (the job stays queued; fetch it later with ``--result``).

From Python::

    job_id = submit_job(queue, "model.pte", "tokenizer.json", benchmark, backend="local-cpu",
                        deadline_s=600)
    result = wait_for_result(queue, job_id, timeout_s=600)   # None on timeout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from .queue import MalformedResult, Queue
from .schema import (
    BENCHMARK_FIELDS,
    ProtocolError,
    artifact_key_from_uri,
    check_name,
    make_job,
    new_job_id,
    parse_queue_uri,
    redact,
    validate_fields,
)
from .transport import NotFound, Retry, TransportError, open_transport

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_QUEUE, EXIT_REJECTED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
DEFAULT_BENCHMARK = {
    "prompt_lengths": [32, 128],
    "decode_tokens": 32,
    "repeats": 3,
    "warmup": 1,
    "threads": 1,
}


def file_ref(queue: Queue, source: str | os.PathLike, what: str) -> dict:
    """A job file reference for a local file (uploaded) or a URI in the artifact area."""
    text = str(source)
    if "://" in text:
        if not text.startswith(str(queue.uri) + "/"):
            raise ProtocolError(
                f"--{what}: {text} is not in this queue ({queue.uri}); pass a local file to upload it"
            )
        # The hash is the folder name; the size comes from the listing. The runner checks
        # both against the bytes it downloads, so nothing here has to be trusted.
        parts = text[len(str(queue.uri)) + 1 :].split("/")
        sha = parts[1] if len(parts) == 3 else ""
        key = artifact_key_from_uri(queue.uri, text, sha, f"--{what}")
        sizes = [o.size_bytes for o in queue.transport.list(key) if o.key == key]
        if not sizes:
            raise NotFound(f"--{what}: {text} not found")
        return {"uri": text, "sha256": sha, "size_bytes": sizes[0]}
    path = Path(source)
    if not path.is_file():
        raise ProtocolError(f"--{what}: {path} is not a file")
    if path.stat().st_size == 0:
        raise ProtocolError(f"--{what}: {path} is empty")
    name = path.name if what != "artifact" or path.suffix == ".pte" else path.stem + ".pte"
    return queue.put_artifact(path, check_name(name, f"--{what} file name"))


def submit_job(
    queue: Queue,
    artifact: str | os.PathLike,
    tokenizer: str | os.PathLike,
    benchmark: dict,
    *,
    backend: str = "local-cpu",
    deadline_s: float = 3600.0,
    labels: Optional[dict] = None,
    job_id: Optional[str] = None,
) -> str:
    """Upload the files (once per hash), put the job, return its id."""
    validate_fields(benchmark, BENCHMARK_FIELDS, "benchmark")
    job = make_job(
        job_id=job_id or new_job_id(),
        artifact=file_ref(queue, artifact, "artifact"),
        tokenizer=file_ref(queue, tokenizer, "tokenizer"),
        benchmark=benchmark,
        backend=backend,
        deadline_s=deadline_s,
        labels=labels,
    )
    return queue.submit(job)


def wait_for_result(
    queue: Queue, job_id: str, timeout_s: float, poll_s: float = 1.0, should_stop=None
) -> Optional[dict]:
    """The job's result document, or None if none came within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = queue.read_result(job_id)
        if result is not None:
            return result
        if time.monotonic() >= deadline or (should_stop is not None and should_stop()):
            return None
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _parse_lengths(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _label(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k, v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m device_lab.submit",
        description="Submit a device-lab profiling job.",
        epilog="exit codes: 0 submitted / result ok; 1 result error; 2 bad arguments or input "
        "files; 3 queue unreachable or malformed result; 4 result rejected; 5 no result "
        "within --wait",
    )
    ap.add_argument("--queue", required=True, help="file:///abs/folder or s3://bucket/prefix")
    ap.add_argument("--artifact", help=".pte file (or its URI in the queue's artifacts/)")
    ap.add_argument("--tokenizer", help="tokenizer file (or its URI in the queue's artifacts/)")
    ap.add_argument("--result", metavar="JOB_ID", help="fetch (or --wait for) an existing job's result")
    ap.add_argument("--backend", default="local-cpu")
    ap.add_argument(
        "--prompt-lengths",
        type=_parse_lengths,
        default=DEFAULT_BENCHMARK["prompt_lengths"],
        help="prompt lengths in tokens, e.g. 32,128",
    )
    ap.add_argument("--decode-tokens", type=int, default=DEFAULT_BENCHMARK["decode_tokens"])
    ap.add_argument("--repeats", type=int, default=DEFAULT_BENCHMARK["repeats"])
    ap.add_argument("--warmup", type=int, default=DEFAULT_BENCHMARK["warmup"])
    ap.add_argument("--threads", type=int, default=DEFAULT_BENCHMARK["threads"])
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=3600.0,
        help="the job must start within this many seconds (default 3600)",
    )
    ap.add_argument("--label", type=_label, action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait for the result and print it on stdout (the id goes to stderr)",
    )
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3)")
    ap.add_argument(
        "--retry-attempts",
        type=int,
        default=5,
        help="tries per S3 request before reporting an error (backoff between)",
    )
    return ap


def _status_exit(result: dict) -> int:
    return {"ok": EXIT_OK, "error": EXIT_ERROR, "rejected": EXIT_REJECTED}[result["status"]]


def main(argv: Optional[list[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.result is None and (args.artifact is None or args.tokenizer is None):
        ap.print_usage(sys.stderr)
        print("error: --artifact and --tokenizer are required (or --result JOB_ID)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.retry_attempts < 1:
            raise ProtocolError(f"--retry-attempts must be >= 1, got {args.retry_attempts}")
        queue = Queue(
            open_transport(
                parse_queue_uri(args.queue, "--queue"), args.endpoint_url, Retry(args.retry_attempts)
            )
        )
    except ProtocolError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return EXIT_USAGE
    except TransportError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return EXIT_QUEUE
    try:
        if args.result is not None:
            job_id = check_name(args.result, "--result")
        else:
            bench = {
                "prompt_lengths": args.prompt_lengths,
                "decode_tokens": args.decode_tokens,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "threads": args.threads,
            }
            if args.deadline_s <= 0:
                raise ProtocolError(f"--deadline-s must be > 0, got {args.deadline_s}")
            job_id = submit_job(
                queue,
                args.artifact,
                args.tokenizer,
                bench,
                backend=args.backend,
                deadline_s=args.deadline_s,
                labels=dict(args.label) or None,
            )
        if args.wait is None:
            if args.result is not None:
                result = queue.read_result(job_id)
                if result is None:
                    print(f"{job_id}: no result yet", file=sys.stderr)
                    return EXIT_TIMEOUT
                print(json.dumps(result, indent=1, sort_keys=True))
                return _status_exit(result)
            print(job_id)
            return EXIT_OK
        print(job_id, file=sys.stderr)
        result = wait_for_result(queue, job_id, args.wait, args.poll_s)
    except MalformedResult as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return EXIT_QUEUE
    except (ProtocolError, NotFound) as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return EXIT_USAGE
    except TransportError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return EXIT_QUEUE
    if result is None:
        print(
            f"{job_id}: no result within {args.wait:g} s; the job stays queued. Later: "
            f"python -m device_lab.submit --queue {queue.uri} --result {job_id} --wait SECONDS",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    print(json.dumps(result, indent=1, sort_keys=True))
    return _status_exit(result)


if __name__ == "__main__":
    sys.exit(main())

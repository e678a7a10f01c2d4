"""Transports: where a queue's objects live. A local folder, or an S3 bucket via boto3.

Both offer the same small object API on keys relative to the queue root
(``jobs/x.json``): ``put_bytes`` (atomic: the object appears whole or not at all),
``get_bytes`` (None when missing), ``list``, ``delete``, ``upload_file``,
``download_file``. Nothing here needs conditional writes; the claim protocol
(``queue.py``) is built on these operations alone.

    t = open_transport("s3://lab/queue", endpoint_url="http://127.0.0.1:8333")
    t.put_bytes("jobs/j-1.json", b"{...}")

S3 errors that may pass (connection, timeouts, 5xx, throttling) are retried with
exponential backoff and jitter, then raised as :class:`TransportError` naming the
operation and key. Credentials come only from the environment / standard AWS config
and never appear in messages.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from .schema import ProtocolError, QueueURI, parse_queue_uri

log = logging.getLogger("device_lab.transport")
_TMP_PREFIX = ".tmp-"
_FOLDER_TRIES = 5  # a local write whose folder another runner's delete keeps removing


class TransportError(RuntimeError):
    """The queue could not be read or written (after retries); the message says what to do."""


class NotFound(TransportError):
    """The object does not exist."""


class NotRegular(TransportError):
    """The entry is not a regular file (a FIFO, device, socket, folder or symlink): the
    queue is untrusted, so such an entry is rejected, never opened as a file."""


class Interrupted(TransportError):
    """A download was stopped on request (the runner is shutting down)."""


class TooLarge(TransportError):
    """A download was bigger than allowed (declared size or the runner's cap)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the queue root
    size_bytes: int
    mtime: float  # seconds since the epoch (server clock for S3)


@dataclass(frozen=True)
class Retry:
    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 8.0

    def delays(self):
        for i in range(self.attempts - 1):
            yield random.uniform(0, min(self.cap_s, self.base_s * 2**i))  # full jitter


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in key:
        raise TransportError(f"refusing unsafe object key {key!r}")
    return key


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Transport:
    uri: QueueURI

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str, max_bytes: Optional[int] = None) -> Optional[bytes]:
        raise NotImplementedError

    def list(self, prefix: str) -> list[ObjectInfo]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def upload_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def _download(self, key: str, dest: Path, max_bytes: int, should_stop: Callable[[], bool]) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return any(o.key == key for o in self.list(key))

    def check(self) -> None:
        """Fail early, with a clear message, when the queue cannot be used at all."""

    def download_file(
        self, key: str, dest: Path, max_bytes: int, should_stop: Optional[Callable[[], bool]] = None
    ) -> tuple[str, int]:
        """Copy ``key`` to ``dest`` (atomically, via ``dest.part``); returns (sha256, size).
        Raises :class:`TooLarge` past ``max_bytes``, TransportError when missing, and
        :class:`Interrupted` (leaving nothing behind) as soon as ``should_stop()`` is true
        between chunks of 1 MiB."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        try:
            self._download(_check_key(key), part, max_bytes, should_stop or (lambda: False))
            size = part.stat().st_size
            if size > max_bytes:
                raise TooLarge(f"{self.uri.uri_for(key)}: {size} bytes is over the limit of {max_bytes}")
            digest = sha256_file(part)
            os.replace(part, dest)
            return digest, size
        finally:
            part.unlink(missing_ok=True)

    def close(self) -> None:
        pass


class LocalTransport(Transport):
    """A folder; puts are atomic renames within it, so readers never see half a file."""

    def __init__(self, uri: QueueURI):
        self.uri = uri
        self.root = Path(uri.path)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TransportError(
                f"{uri}: cannot create the queue folder ({e.strerror}); check the path and permissions"
            ) from None

    def _path(self, key: str) -> Path:
        path = self.root / _check_key(key)
        # The folders must stay inside the queue; the last component is never followed
        # (reads open it with O_NOFOLLOW, deletes and renames act on the link itself), so
        # one planted symlink is one rejected entry, not an unusable queue.
        root, parent = self.root.resolve(), path.parent.resolve()
        if parent != root and root not in parent.parents:
            raise TransportError(f"{self.uri.uri_for(key)}: resolves outside the queue folder")
        return path

    def _open_regular(self, path: Path, key: str):
        """Open an untrusted entry for reading: regular files only, never blocking on a FIFO,
        never following a symlink. FileNotFoundError passes through."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.ELOOP or path.is_symlink():
                raise NotRegular(f"{self.uri.uri_for(key)}: is a symlink, not a regular file") from None
            if e.errno in (errno.ENXIO, errno.EISDIR, errno.EWOULDBLOCK):
                raise NotRegular(f"{self.uri.uri_for(key)}: is not a regular file") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotRegular(
                f"{self.uri.uri_for(key)}: is not a regular file (mode {stat.filemode(st.st_mode)})"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def _wrap(self, op: str, key: str, fn: Callable):
        try:
            return fn()
        except TransportError:
            raise
        except OSError as e:
            raise TransportError(f"{op} {self.uri.uri_for(key)} failed: {e.strerror or e}") from None

    def _write(self, path: Path, write: Callable[[BinaryIO], object], sync: bool) -> None:
        """Write ``path`` whole or not at all: a temp file beside it, renamed over it. Another
        runner's ``delete`` drops the folders it empties, and can do so between our mkdir
        and our temp file (a claim folder we are about to write into): make it again."""
        for attempt in range(_FOLDER_TRIES):
            tmp = path.with_name(f"{_TMP_PREFIX}{secrets.token_hex(6)}-{path.name}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            except (FileNotFoundError, FileExistsError):  # the folder went away meanwhile
                if attempt + 1 == _FOLDER_TRIES:
                    raise
                continue
            try:  # from here on the temp file keeps the folder (a folder is dropped only empty)
                with f:
                    write(f)
                    if sync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._wrap("PUT", key, lambda: self._write(path, lambda f: f.write(data), sync=True))

    def get_bytes(self, key: str, max_bytes: Optional[int] = None) -> Optional[bytes]:
        path = self._path(key)

        def get():
            try:
                with self._open_regular(path, key) as f:
                    data = f.read(-1 if max_bytes is None else max_bytes + 1)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if max_bytes is not None and len(data) > max_bytes:
                raise TooLarge(f"{self.uri.uri_for(key)}: over the limit of {max_bytes} bytes")
            return data

        return self._wrap("GET", key, get)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Each folder as it was when read. An entry deleted since is still listed (size 0),
        never dropped: the claim protocol replaces objects by putting the successor, then
        deleting the predecessor (a ticket after its ``choosing`` marker, a renewed lease
        after the old one), and a folder read before the successor appeared must still show
        the predecessor; dropping it showed neither, and a held job looked free."""
        # Walk only the deepest folder the prefix names (jobs/, claims/<job>/...).
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        out = []

        def walk():
            if not base.is_dir():
                return
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.startswith(_TMP_PREFIX):
                        continue
                    p = Path(dirpath) / name
                    key = p.relative_to(self.root).as_posix()
                    if not key.startswith(prefix):
                        continue
                    try:
                        st = p.lstat()  # never follow: a planted link is listed, then rejected
                    except FileNotFoundError:  # deleted since the folder was read: see above
                        out.append(ObjectInfo(key, 0, 0.0))
                        continue
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))

        self._wrap("LIST", prefix or ".", walk)
        return out

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)

        def rm():
            path.unlink(missing_ok=True)
            # Drop emptied folders (claims/<job>/<epoch>/) so listings stay small.
            for parent in path.parents:
                if parent == self.root or self.root not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

        self._wrap("DELETE", key, rm)

    def upload_file(self, key: str, path: Path) -> None:
        dest = self._path(key)

        def copy(dst: BinaryIO) -> None:
            with open(path, "rb") as src:
                while block := src.read(1 << 20):
                    dst.write(block)

        self._wrap("UPLOAD", key, lambda: self._write(dest, copy, sync=False))

    def _download(self, key: str, dest: Path, max_bytes: int, should_stop: Callable[[], bool]) -> None:
        src_path = self._path(key)

        def down():
            try:
                src = self._open_regular(src_path, key)
            except FileNotFoundError:
                raise NotFound(f"{self.uri.uri_for(key)}: not found") from None
            with src, open(dest, "wb") as dst:
                n = 0
                while block := src.read(1 << 20):
                    if should_stop():
                        raise Interrupted(f"{self.uri.uri_for(key)}: download stopped")
                    n += len(block)
                    if n > max_bytes:
                        raise TooLarge(f"{self.uri.uri_for(key)}: over the limit of {max_bytes} bytes")
                    dst.write(block)

        self._wrap("GET", key, down)


# S3 error codes that mean "try again"; everything else is reported at once.
_RETRY_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
    "OperationAborted",
}
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "ExpiredToken",
    "InvalidToken",
}


class S3Transport(Transport):
    """An S3 bucket (any S3-compatible endpoint) through boto3, with retries."""

    def __init__(
        self, uri: QueueURI, endpoint_url: Optional[str] = None, retry: Retry = Retry(), client=None
    ):
        import boto3
        from botocore.config import Config

        self.uri, self.retry = uri, retry
        self.bucket = uri.bucket
        self._prefix = f"{uri.prefix}/" if uri.prefix else ""
        endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        if endpoint_url and "@" in endpoint_url.split("//", 1)[-1].split("/", 1)[0]:
            raise ProtocolError(
                "the S3 endpoint URL contains credentials (user:password@); "
                "give them through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        self.endpoint_url = endpoint_url
        # botocore retries once at most: our own loop below does the backoff and reports.
        cfg = Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        )
        self.client = client or boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=cfg)

    def _k(self, key: str) -> str:
        return self._prefix + _check_key(key)

    def _call(self, op: str, key: str, fn: Callable, missing_ok: bool = False):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = self.uri.uri_for(key) if key else str(self.uri)
        delays = self.retry.delays()
        while True:
            try:
                return fn()
            except NoCredentialsError:
                raise TransportError(
                    f"{op} {where}: no S3 credentials; set AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
                ) from None
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if missing_ok and (code in ("NoSuchKey", "404", "NotFound") or status == "404"):
                    return None
                if code == "NoSuchBucket":
                    raise TransportError(
                        f"{op} {where}: bucket {self.bucket!r} does not exist "
                        f"at {self.endpoint_url or 'the default endpoint'}; "
                        "create it first"
                    ) from None
                if code in _AUTH_CODES or status == "403":
                    raise TransportError(
                        f"{op} {where}: access denied ({code}); check the credentials in the environment"
                    ) from None
                if code not in _RETRY_CODES and status not in _RETRY_CODES:
                    raise TransportError(f"{op} {where} failed: {code or status}") from None
                err = f"{code or status}"
            except BotoCoreError as e:  # connection refused/reset, timeouts, bad endpoint
                err = type(e).__name__
            delay = next(delays, None)
            if delay is None:
                raise TransportError(
                    f"{op} {where} failed after {self.retry.attempts} "
                    f"attempts ({err}); is the S3 endpoint "
                    f"{self.endpoint_url or '(default)'} up?"
                )
            log.warning("%s %s: %s; retrying in %.2f s", op, where, err, delay)
            time.sleep(delay)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            "PUT", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        )

    def get_bytes(self, key: str, max_bytes: Optional[int] = None) -> Optional[bytes]:
        def get():
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            if max_bytes is not None and resp.get("ContentLength", 0) > max_bytes:
                resp["Body"].close()
                raise TooLarge(f"{self.uri.uri_for(key)}: over the limit of {max_bytes} bytes")
            return resp["Body"].read()

        return self._call("GET", key, get, missing_ok=True)

    def list(self, prefix: str) -> list[ObjectInfo]:
        def lst():
            out = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self._prefix) :]
                    out.append(ObjectInfo(key, obj.get("Size", 0), obj["LastModified"].timestamp()))
            return sorted(out, key=lambda o: o.key)

        return self._call("LIST", prefix, lst)

    def delete(self, key: str) -> None:
        self._call(
            "DELETE",
            key,
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key)),
            missing_ok=True,
        )

    def upload_file(self, key: str, path: Path) -> None:
        self._call("UPLOAD", key, lambda: self.client.upload_file(str(path), self.bucket, self._k(key)))

    def _download(self, key: str, dest: Path, max_bytes: int, should_stop: Callable[[], bool]) -> None:
        def down():
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            if resp.get("ContentLength", 0) > max_bytes:
                resp["Body"].close()
                raise TooLarge(
                    f"{self.uri.uri_for(key)}: {resp['ContentLength']} bytes is over the limit of {max_bytes}"
                )
            with open(dest, "wb") as f:
                for block in resp["Body"].iter_chunks(1 << 20):
                    if should_stop():  # each read waits at most the client's read timeout
                        resp["Body"].close()
                        raise Interrupted(f"{self.uri.uri_for(key)}: download stopped")
                    f.write(block)
            return True

        if self._call("GET", key, down, missing_ok=True) is None:
            raise NotFound(f"{self.uri.uri_for(key)}: not found")

    def check(self) -> None:
        def head():
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except Exception as e:  # HEAD has no body: a 404 carries no NoSuchBucket code
                from botocore.exceptions import ClientError

                if isinstance(e, ClientError) and str(e.response.get("Error", {}).get("Code")) in (
                    "404",
                    "NoSuchBucket",
                ):
                    e.response["Error"]["Code"] = "NoSuchBucket"
                raise

        self._call("HEAD", "", head)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing is best effort
            pass


def open_transport(
    uri: str | QueueURI, endpoint_url: Optional[str] = None, retry: Retry = Retry()
) -> Transport:
    """A transport for a queue URI (``file:///abs`` or ``s3://bucket/prefix``)."""
    try:
        parsed = uri if isinstance(uri, QueueURI) else parse_queue_uri(uri)
    except ProtocolError as e:
        raise TransportError(str(e)) from None
    transport = (
        LocalTransport(parsed)
        if parsed.scheme == "file"
        else S3Transport(parsed, endpoint_url=endpoint_url, retry=retry)
    )
    transport.check()
    return transport

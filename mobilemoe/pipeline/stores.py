"""The shared stores on object storage and servers: the stage cache on S3, and the checks
``start`` makes before any work (reachable, the bucket exists, Metaflow agrees).

An ``s3://bucket/prefix`` stage cache is mirrored in a local scratch folder of the project
(``artifacts/s3/<bucket>/<prefix>``): a stage writes its folder there as before, and
:func:`push` uploads it when the stage is recorded (``stage.json`` last, so a half-uploaded
entry is never found); a lookup that misses locally :func:`pull` s the entry down (again
``stage.json`` last). A reference's paths then point into this machine's scratch copy
(:func:`mobilemoe.pipeline.cache.rebased`). Trainer work folders (``work/``: intermediate
checkpoints) stay local.

boto3 reads the endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) and credentials
from the environment or the AWS config files only; nothing here prints or records them.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..errors import UserError

REMOTE_MARKER = ".remote"  # in the scratch root: the s3:// URL it mirrors
LOCAL_ONLY = ("work",)  # top-level folders of a stage entry that are not uploaded
TIMEOUT_S = 5.0  # connect timeout of the start checks: unreachable stores fail fast


class StoreError(UserError):
    pass


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


def endpoint() -> str:
    """The S3 endpoint boto3 will use (for messages; no credentials in it)."""
    from device_lab.schema import redact

    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    return redact(url)


def client(connect_timeout: float = TIMEOUT_S, attempts: int = 3):
    import boto3
    from botocore.config import Config

    # A fresh session each time: boto3's default session keeps the credentials it resolved
    # first, so a later change of the environment would be ignored (and a test's planted
    # keys would outlive the test).
    return boto3.session.Session().client(
        "s3",
        config=Config(connect_timeout=connect_timeout, read_timeout=120, retries={"max_attempts": attempts}),
    )


# --- the stage cache's scratch mirror ------------------------------------------------------
def scratch_root(root: Path, url: str) -> Path:
    """The local mirror of the ``s3://`` store ``url`` (made, with its marker)."""
    bucket, prefix = split_s3(url)
    local = Path(root) / "artifacts" / "s3" / bucket / prefix
    marker = local / REMOTE_MARKER
    if not marker.is_file() or marker.read_text() != url:
        local.mkdir(parents=True, exist_ok=True)
        marker.write_text(url)
    return local


def remote_of(folder: Path) -> Optional[str]:
    """The S3 URL of a stage entry's folder (``<store>/stages/<stage>/<key>``), if its store
    is a mirror of one."""
    if len(folder.parents) < 3:
        return None
    marker = folder.parents[2] / REMOTE_MARKER
    if not marker.is_file():
        return None
    return f"{marker.read_text().rstrip('/')}/{folder.relative_to(folder.parents[2]).as_posix()}"


def push(folder: Path, url: str) -> int:
    """Upload a finished stage entry (``stage.json`` last); returns the files sent."""
    bucket, prefix = split_s3(url)
    s3 = client()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] not in LOCAL_ONLY and p.name != "stage.json"
    )
    try:
        for path in files:
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        s3.upload_file(str(folder / "stage.json"), bucket, f"{prefix}/stage.json")
    except Exception as e:
        raise StoreError(f"uploading the stage cache entry to {url} ({endpoint()}): {_why(e)}") from None
    return len(files) + 1


def pull(folder: Path, url: str) -> bool:
    """Download a stage entry if the store has one (``stage.json`` last); False if not."""
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3(url)
    s3 = client()
    try:
        s3.head_object(Bucket=bucket, Key=f"{prefix}/stage.json")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise StoreError(f"reading the stage cache at {url} ({endpoint()}) failed: {_why(e)}") from None
    try:
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        for key in sorted(keys):
            rel = key[len(prefix) + 1 :]
            if not rel or rel == "stage.json" or rel.split("/", 1)[0] in LOCAL_ONLY:
                continue
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(folder / rel))
        folder.mkdir(parents=True, exist_ok=True)  # an entry may be its stage.json alone
        tmp = folder / "stage.json.part"
        s3.download_file(bucket, f"{prefix}/stage.json", str(tmp))
        tmp.replace(folder / "stage.json")
    except Exception as e:
        raise StoreError(f"downloading the stage cache entry {url} ({endpoint()}): {_why(e)}") from None
    return True


def _why(e: BaseException) -> str:
    from device_lab.schema import redact

    return redact(f"{type(e).__name__}: {e}")


# --- the start checks -------------------------------------------------------------------------
def check_bucket(url: str, key: str) -> None:
    """The bucket of ``url`` (named by params ``key``) exists and answers, within seconds."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, _ = split_s3(url)
    try:
        client(connect_timeout=TIMEOUT_S, attempts=1).head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise StoreError(
            f"{key}={url}: no S3 credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(or an AWS profile) in the environment"
        ) from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StoreError(
                f"{key}={url}: bucket {bucket!r} does not exist at {endpoint()}; create it "
                f"(e.g. `aws s3 mb s3://{bucket}`) or fix the URL"
            ) from None
        raise StoreError(
            f"{key}={url}: {endpoint()} refused access to bucket {bucket!r} ({code}); check the "
            "credentials in the environment"
        ) from None
    except BotoCoreError as e:
        raise StoreError(
            f"{key}={url}: cannot reach the S3 endpoint {endpoint()} ({type(e).__name__}); set "
            "AWS_ENDPOINT_URL_S3 to a reachable endpoint"
        ) from None


def check_mlflow_server(uri: str) -> None:
    """An http(s) tracking URI answers ``/health`` within seconds."""
    from device_lab.schema import redact

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        problem = type(getattr(e, "reason", e)).__name__
    raise StoreError(
        f"cannot reach the MLflow tracking server {redact(uri)} ({problem}); start it, or fix "
        "tracking.uri / MLFLOW_TRACKING_URI"
    )


def check_stores(params, tracking_uri: str, datastore: Optional[str]) -> None:
    """Everything the run will write to, checked before any work: the MLflow server, the
    S3 buckets of the stage cache and the DVC remote, and Metaflow's datastore (chosen by
    Metaflow's own settings before params are read) agreeing with params."""
    store = params.tracking.artifact_store
    remote_steps = params.compute.remote_steps()
    check_mlflow_server(tracking_uri)
    if remote_steps and not tracking_uri.startswith(("http://", "https://")):
        raise StoreError(
            f"compute.{remote_steps[0]}.target: remote steps record to MLflow from other machines; set "
            f"tracking.uri (or MLFLOW_TRACKING_URI) to a tracking server, not {tracking_uri.split(':')[0]}"
        )
    if store.startswith("s3://"):
        check_bucket(store, "tracking.artifact_store")
    remote_url = os.environ.get("MOBILEMOE_DVC_REMOTE_URL") or params.data.remote.url or ""
    if remote_url.startswith("s3://"):
        check_bucket(remote_url, "data.remote.url")
    shared = store.startswith("s3://") or bool(remote_steps)
    if shared and datastore is not None and datastore != "s3":
        raise StoreError(
            f"tracking.artifact_store={store} shares this run's outputs, but Metaflow's datastore is "
            f"{datastore!r} (its artifacts stay on this machine). Metaflow chooses it from its own "
            "settings before params are read: set METAFLOW_DEFAULT_DATASTORE=s3, "
            "METAFLOW_DATASTORE_SYSROOT_S3=s3://BUCKET/metaflow and METAFLOW_S3_ENDPOINT_URL (for "
            "an S3-compatible endpoint), or run with --datastore s3"
        )

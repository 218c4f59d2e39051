"""storage/checkpoints.py: background uploads, pruning and remote resume against SeaweedFS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from squadft.config import Config
from squadft.errors import ChecksumError, StorageError
from squadft.storage.checkpoints import (
    CheckpointUploader,
    download_checkpoint,
    find_latest_remote_checkpoint,
    list_remote_checkpoints,
    prune_remote_checkpoints,
    remote_finder,
)
from squadft.storage.manifest import MANIFEST_NAME, verify_manifest, write_manifest
from squadft.storage.s3 import S3Location, list_keys, make_client, upload_directory
from squadft.train.checkpoint import resolve_resume

from tests.storage.conftest import SeaweedServer, fast_settings
from tests.storage.fault_proxy import Fault, FaultProxy
from tests.storage.test_s3 import digests


def make_checkpoint(output_dir: Path, step: int) -> Path:
    directory = output_dir / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(bytes([step % 256]) * (20_000 + step))
    (directory / "trainer_state.json").write_text(f'{{"step": {step}}}')
    (directory / "rng_state_0.pt").write_bytes(os.urandom(300))
    write_manifest(directory, step)
    return directory


def upload(directory: Path, base: S3Location, client: Any, settings: Any) -> None:
    upload_directory(directory, base.child(directory.name), client=client, settings=settings)


def test_uploader_uploads_prunes_and_keeps_foreign_keys(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, admin_client: Any
) -> None:
    base = S3Location(bucket, "run")
    foreign = {"run/notes.txt", "run/checkpoint-0/mine.bin", "run/checkpoint-1/extra.bin",
               "run/checkpoint-x/model.bin"}
    for key in foreign:
        admin_client.put_object(Bucket=bucket, Key=key, Body=b"not squadft's")
    settings = fast_settings(seaweed.endpoint)
    uploader = CheckpointUploader(base, client=make_client(settings), settings=settings, keep=2)
    for step in (1, 2, 3, 4):
        uploader.submit(make_checkpoint(tmp_path, step))
        assert uploader.wait(timeout=30)
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    write_manifest(tmp_path / "final", 4)
    uploader.submit(tmp_path / "final")
    uploader.close(timeout=30)

    assert [r.step for r in uploader.results] == [1, 2, 3, 4, 4]
    assert [c.step for c in list_remote_checkpoints(admin_client, base)] == [4, 3]
    keys = set(list_keys(admin_client, base))
    assert foreign <= keys  # never touched
    assert not any(k.startswith(("run/checkpoint-1/m", "run/checkpoint-2/")) for k in keys)
    assert "run/final/manifest.json" in keys
    # pruning never removes the newest complete checkpoint, whatever `keep` says
    assert prune_remote_checkpoints(admin_client, base, keep=1) == [3]
    assert [c.step for c in list_remote_checkpoints(admin_client, base)] == [4]


def test_newer_checkpoint_supersedes_the_queued_one(
    tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    gate = threading.Event()
    held = proxy.add(Fault("hold", method="PUT", path="checkpoint-1/", gate=gate, times=1))
    settings = fast_settings(proxy.url)
    base = S3Location(bucket, "run")
    uploader = CheckpointUploader(base, client=make_client(settings), settings=settings)
    first, second, third = (make_checkpoint(tmp_path, step) for step in (1, 2, 3))
    uploader.submit(first)
    assert held.matched.wait(30)  # checkpoint-1 is on the wire now
    uploader.submit(second)
    uploader.submit(third)  # replaces checkpoint-2, which has not started
    assert uploader.busy_paths() == {first, third}
    assert not uploader.wait(timeout=0.2)
    gate.set()
    uploader.close(timeout=30)
    assert [r.step for r in uploader.results] == [1, 3]
    assert uploader.superseded == [second]
    assert not any("checkpoint-2" in path for _, path in proxy.requests)


def test_the_best_checkpoint_waiting_for_upload_is_never_superseded(
    tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    """checkpoint-2 is the best by held-out F1 (protected) and waits while checkpoint-1 is
    uploaded: checkpoint-3 queues behind it instead of replacing it, so the bucket has the
    weights final/ is made from (a new node after a crash fetches them there)."""
    gate = threading.Event()
    held = proxy.add(Fault("hold", method="PUT", path="checkpoint-1/", gate=gate, times=1))
    settings = fast_settings(proxy.url)
    base = S3Location(bucket, "run")
    uploader = CheckpointUploader(base, client=make_client(settings), settings=settings, keep=1)
    first, second, third, fourth = (make_checkpoint(tmp_path, step) for step in (1, 2, 3, 4))
    uploader.submit(first)
    assert held.matched.wait(30)  # checkpoint-1 is on the wire now
    uploader.protect(frozenset({2}))
    uploader.submit(second)
    uploader.submit(third)  # checkpoint-2 is the best: it stays queued
    uploader.submit(fourth)  # replaces checkpoint-3 only
    assert uploader.busy_paths() == {first, second, fourth}
    gate.set()
    uploader.close(timeout=30)
    assert [r.step for r in uploader.results] == [1, 2, 4]
    assert uploader.superseded == [third]
    client = make_client(fast_settings(proxy.url))
    assert [c.step for c in list_remote_checkpoints(client, base)] == [4, 2]


def test_failing_upload_surfaces_and_keeps_local_copy(
    tmp_path: Path, proxy: FaultProxy, bucket: str, admin_client: Any
) -> None:
    proxy.add(Fault("status", method="PUT", path="checkpoint-2/", status=500, times=None))
    settings = fast_settings(proxy.url, max_attempts=2)
    base = S3Location(bucket, "run")
    uploader = CheckpointUploader(base, client=make_client(settings), settings=settings)
    uploader.submit(make_checkpoint(tmp_path, 1))
    uploader.wait(30)
    broken = make_checkpoint(tmp_path, 2)
    uploader.submit(broken)
    with pytest.raises(StorageError) as info:
        uploader.close(timeout=60)
    message = str(info.value)
    assert "\n" not in message and "checkpoint-2" in message and "server error 500" in message
    assert f"local copy kept at {broken}" in message
    assert verify_manifest(broken)
    assert "run/checkpoint-2/manifest.json" not in list_keys(admin_client, base)
    cfg = Config(s3_uri=base.uri, s3_endpoint_url=proxy.url)
    latest = find_latest_remote_checkpoint(cfg, client=admin_client)
    assert latest is not None and latest.step == 1


def test_resume_takes_newest_complete_and_verifies(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, admin_client: Any
) -> None:
    settings = fast_settings(seaweed.endpoint)
    base = S3Location(bucket, "run")
    local = tmp_path / "node-a"
    for step in (1, 2, 3, 4):
        upload(make_checkpoint(local, step), base, admin_client, settings)
    # checkpoint-3: an interrupted upload (no manifest); checkpoint-4: a file went missing
    admin_client.delete_object(Bucket=bucket, Key=f"run/checkpoint-3/{MANIFEST_NAME}")
    admin_client.delete_object(Bucket=bucket, Key="run/checkpoint-4/rng_state_0.pt")

    output_dir = tmp_path / "node-b"
    cfg = Config(s3_uri=base.uri, s3_endpoint_url=seaweed.endpoint, output_dir=str(output_dir))
    remote = find_latest_remote_checkpoint(cfg)
    assert remote is not None and remote.step == 2

    # what TRAIN's --resume auto does on an empty output dir
    resumed = resolve_resume("auto", output_dir, remote_finder(cfg))
    assert resumed == output_dir / "checkpoint-2" and verify_manifest(resumed)
    assert digests(resumed) == digests(local / "checkpoint-2")
    assert download_checkpoint(remote, output_dir, client=admin_client,
                               settings=settings) == resumed  # already there: no download

    # same size, different bytes in the bucket: refused, and nothing appears locally
    admin_client.put_object(Bucket=bucket, Key="run/checkpoint-2/trainer_state.json",
                            Body=b'{"step": 9}')
    with pytest.raises(ChecksumError):
        download_checkpoint(remote, tmp_path / "node-c", client=admin_client, settings=settings)
    assert not (tmp_path / "node-c" / "checkpoint-2").exists()
    assert not [p for p in (tmp_path / "node-c").iterdir()]


KILLED_UPLOADER = """
import sys
from squadft.storage.s3 import S3Location, S3Settings, make_client, upload_directory
settings = S3Settings(endpoint_url=sys.argv[1], max_attempts=1)
upload_directory(sys.argv[2], S3Location(sys.argv[3], "run/checkpoint-2"),
                 client=make_client(settings), settings=settings)
"""


def test_run_killed_during_upload_resumes_from_previous(
    tmp_path: Path, proxy: FaultProxy, seaweed: SeaweedServer, bucket: str, admin_client: Any
) -> None:
    settings = fast_settings(seaweed.endpoint)
    base = S3Location(bucket, "run")
    upload(make_checkpoint(tmp_path, 1), base, admin_client, settings)
    gate = threading.Event()
    held = proxy.add(Fault("hold", method="PUT", path="checkpoint-2/trainer_state", gate=gate))
    child = subprocess.Popen([sys.executable, "-c", KILLED_UPLOADER, proxy.url,
                              str(make_checkpoint(tmp_path, 2)), bucket])
    try:
        assert held.matched.wait(60), "the upload never started"
        assert proxy.wait_answered("PUT", "checkpoint-2/model.safetensors", timeout=60)
        os.kill(child.pid, signal.SIGKILL)  # the node dies with the upload in flight
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        gate.set()
    keys = list_keys(admin_client, base)
    assert "run/checkpoint-2/model.safetensors" in keys
    assert "run/checkpoint-2/manifest.json" not in keys
    cfg = Config(s3_uri=base.uri, s3_endpoint_url=seaweed.endpoint,
                 output_dir=str(tmp_path / "new-node"))
    resumed = resolve_resume("auto", cfg.output_dir, remote_finder(cfg))
    assert resumed is not None and resumed.name == "checkpoint-1"

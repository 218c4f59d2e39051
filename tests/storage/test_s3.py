"""storage/s3.py against a real S3 server (SeaweedFS on 127.0.0.1), faults from a local proxy."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from squadft.errors import ChecksumError, ConfigError, DataError, StorageError
from squadft.io import sha256_file
from squadft.storage.manifest import MANIFEST_NAME, parse_manifest, write_manifest
from squadft.storage.s3 import (
    S3Location,
    S3Source,
    _HashingReader,
    check_access,
    download_directory,
    list_keys,
    make_client,
    upload_directory,
)

from tests.storage.conftest import SECRET_KEY, SeaweedServer, fast_settings
from tests.storage.fault_proxy import Fault, FaultProxy

BIG = 6 << 20  # above the 1 MiB test threshold: two parts of 5 MiB + 1 MiB


def make_tree(root: Path, seed: int = 0, big: int = BIG) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    (root / "model.safetensors").write_bytes(rng.randbytes(big))
    (root / "optimizer.pt").write_bytes(rng.randbytes(70_000))
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n")
    return root


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_parse_s3_uri() -> None:
    assert S3Location.parse("s3://my-bucket/a/b/") == S3Location("my-bucket", "a/b")
    assert S3Location.parse("s3://my-bucket").key("x") == "x"
    assert S3Location.parse("s3://my-bucket/p").child("checkpoint-3").key("m.json") == \
        "p/checkpoint-3/m.json"
    for bad in ("http://b/p", "s3://", "s3://AK:secret@bucket/p", "s3://b/p?x=1", "s3://b/a//c"):
        with pytest.raises(ConfigError) as info:
            S3Location.parse(bad)
        assert "secret" not in str(info.value)


def test_round_trip_multipart_verified(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                       admin_client: Any) -> None:
    source = make_tree(tmp_path / "checkpoint-7")
    settings = fast_settings(proxy.url)
    location = S3Location(bucket, "runs/a/checkpoint-7")
    result = upload_directory(source, location, client=make_client(settings), settings=settings)

    assert result.step == 7
    by_name = {f.relpath: f for f in result.files}
    assert by_name["model.safetensors"].multipart and not by_name["config.json"].multipart
    # every file was hashed by the read that sent it (no second pass over the files)
    assert all(f.hashed_while_sent for f in result.files)
    assert {f.relpath: f.sha256 for f in result.files} == {
        k: v for k, v in digests(source).items() if k != MANIFEST_NAME}
    # the multipart protocol really ran, and the manifest was the last object written
    methods = [(m, p) for m, p in proxy.requests]
    # sizes checked with one listing, not a HEAD per object (one HEAD: the manifest's)
    assert sum(m == "GET" and "list-type=2" in p for m, p in methods) == 1
    assert [p for m, p in methods if m == "HEAD"] == [
        f"/{bucket}/{location.key(MANIFEST_NAME)}"]
    assert any(m == "POST" and "uploads" in p and "model.safetensors" in p for m, p in methods)
    assert any(m == "PUT" and "partNumber=2" in p for m, p in methods)
    writes = [p for m, p in methods if m in ("PUT", "POST")]
    assert MANIFEST_NAME in writes[-1]
    assert sum(MANIFEST_NAME in p for p in writes) == 1

    manifest = parse_manifest(admin_client.get_object(
        Bucket=bucket, Key=location.key(MANIFEST_NAME))["Body"].read())
    assert {rel: e.sha256 for rel, e in manifest.files.items()} == digests(source)

    target = download_directory(admin_client, location, tmp_path / "restored", settings)
    restored = digests(target)
    assert restored.pop(MANIFEST_NAME)
    assert restored == digests(source)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restored")]


def test_hashing_reader_hashes_each_byte_once(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(100_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    reader = _HashingReader(path)
    assert reader.seek(0, os.SEEK_END) == len(data) and reader.seek(0) == 0  # size probe
    assert reader.read(30_000) == data[:30_000]
    reader.seek(10_000)  # a retried request reads part of it again
    assert reader.read(40_000) == data[10_000:50_000]
    reader.close()  # reopened where it was when read again
    assert reader.tell() == 50_000 and reader.read() == data[50_000:]
    digest = reader.digest()
    assert digest is not None and (digest.size, digest.sha256) == (len(data), sha256_file(path))

    skipping = _HashingReader(path)
    skipping.read(10)
    skipping.seek(20)
    skipping.read()
    assert skipping.digest() is None  # bytes 10-19 were never read: no digest

    partial = _HashingReader(path)
    partial.read(99_999)
    assert partial.digest() is None
    partial.close()


def test_checkpoint_that_does_not_match_its_manifest_is_not_completed(
        tmp_path: Path, seaweed: SeaweedServer, bucket: str, admin_client: Any) -> None:
    source = make_tree(tmp_path / "checkpoint-4", big=1000)
    write_manifest(source, 4)
    good = make_client(fast_settings(seaweed.endpoint))
    result = upload_directory(source, S3Location(bucket, "ok/checkpoint-4"), client=good,
                              settings=fast_settings(seaweed.endpoint))
    stored = admin_client.get_object(Bucket=bucket, Key="ok/checkpoint-4/manifest.json")
    assert stored["Body"].read() == (source / MANIFEST_NAME).read_bytes()
    assert result.step == 4 and all(f.hashed_while_sent for f in result.files)

    # same size, one byte flipped after the manifest was written: caught, no manifest uploaded
    weights = bytearray((source / "model.safetensors").read_bytes())
    weights[500] ^= 0xFF
    (source / "model.safetensors").write_bytes(bytes(weights))
    location = S3Location(bucket, "bad/checkpoint-4")
    with pytest.raises(StorageError) as info:
        upload_directory(source, location, client=good,
                         settings=fast_settings(seaweed.endpoint))
    assert "model.safetensors does not match its manifest.json" in str(info.value)
    assert "no manifest written" in str(info.value)
    assert location.key(MANIFEST_NAME) not in list_keys(admin_client, location)


def test_wrong_credentials_one_line_without_secret(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_tree(tmp_path / "d", big=1000)
    settings = fast_settings(seaweed.endpoint)
    wrong_secret = "definitely-wrong-secret-" + "x" * 16
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    with pytest.raises(StorageError) as info:
        upload_directory(source, S3Location(bucket, "p"), client=make_client(settings),
                         settings=settings)
    message = str(info.value)
    assert "\n" not in message and wrong_secret not in message and SECRET_KEY not in message
    assert f"s3://{bucket}/p" in message and "secret key does not match" in message

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN12345")
    with pytest.raises(StorageError) as info:
        upload_directory(source, S3Location(bucket, "p"), client=make_client(settings),
                         settings=settings)
    assert "invalid access key" in str(info.value)
    assert wrong_secret not in str(info.value) and "AKIDUNKNOWN12345" not in str(info.value)

    with pytest.raises(StorageError) as info:  # HEAD answers a bare 403
        check_access(make_client(settings), S3Location(bucket, "p"))
    assert "access denied" in str(info.value) and wrong_secret not in str(info.value)


def test_bad_bucket_and_unreachable_endpoint(seaweed: SeaweedServer, aws_env: None) -> None:
    settings = fast_settings(seaweed.endpoint)
    with pytest.raises(StorageError, match="bucket not found"):
        check_access(make_client(settings), S3Location("no-such-bucket-here", "p"))

    closed = FaultProxy(seaweed.s3_port)  # bound but never serving, then closed: a dead port
    dead_url = closed.url
    closed.server.server_close()
    settings = fast_settings(dead_url, max_attempts=2, connect_timeout=1.0)
    with pytest.raises(StorageError) as info:
        check_access(make_client(settings), S3Location("any-bucket", "p"))
    assert f"endpoint unreachable ({dead_url})" in str(info.value)


def test_retries_survive_injected_faults(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                         admin_client: Any) -> None:
    source = make_tree(tmp_path / "checkpoint-3", seed=1)
    faults = [
        proxy.add(Fault("status", method="PUT", status=503, times=2)),
        proxy.add(Fault("status", method="PUT", path=r"optimizer\.pt", status=500, times=1)),
        proxy.add(Fault("drop_request", method="PUT", path=r"partNumber=1", times=1)),
        proxy.add(Fault("corrupt", method="PUT", path=r"vocab\.txt", times=1)),
        proxy.add(Fault("slow", method="HEAD", delay=1.0, times=1)),
        proxy.add(Fault("status", method="POST", path=r"uploads", status=503, times=1)),
    ]
    settings = fast_settings(proxy.url)
    location = S3Location(bucket, "faulty/checkpoint-3")
    result = upload_directory(source, location, client=make_client(settings), settings=settings)
    assert all(f.matched.is_set() for f in faults), [f.action for f in faults]
    assert proxy.injected >= len(faults) + 1

    # the corrupted body was refused by the server and sent again as a whole file
    assert result.attempts == 2
    target = download_directory(admin_client, location, tmp_path / "back", settings)
    assert {k: v for k, v in digests(target).items() if k != MANIFEST_NAME} == digests(source)

    # downloads survive a stream cut mid-body too
    proxy.add(Fault("drop_response", method="GET", path=r"optimizer\.pt", times=1))
    again = download_directory(make_client(settings), location, tmp_path / "again", settings)
    assert digests(again) == digests(target)


def test_upload_that_keeps_failing(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                   admin_client: Any) -> None:
    source = make_tree(tmp_path / "checkpoint-9", seed=2, big=2000)
    before = digests(source)
    proxy.add(Fault("status", method="PUT", path=r"optimizer\.pt", status=503, times=None))
    settings = fast_settings(proxy.url, max_attempts=2)
    location = S3Location(bucket, "dead/checkpoint-9")
    with pytest.raises(StorageError) as info:
        upload_directory(source, location, client=make_client(settings), settings=settings)
    message = str(info.value)
    assert "\n" not in message and "optimizer.pt" in message and "server error 503" in message
    assert "no manifest written" in message
    keys = list_keys(admin_client, location)
    assert location.key(MANIFEST_NAME) not in keys
    assert digests(source) == before


def test_deadline_stops_a_stalled_upload(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                         admin_client: Any) -> None:
    source = make_tree(tmp_path / "checkpoint-1", big=1000)
    proxy.add(Fault("slow", method="PUT", delay=2.0, times=None))
    settings = fast_settings(proxy.url, deadline=0.5)
    location = S3Location(bucket, "slow/checkpoint-1")
    with pytest.raises(StorageError, match="deadline of 0.5s reached; no manifest written"):
        upload_directory(source, location, client=make_client(settings), settings=settings)
    assert location.key(MANIFEST_NAME) not in list_keys(admin_client, location)


def test_s3_source_pull(sample_dir: Path, tmp_path: Path, proxy: FaultProxy, bucket: str,
                        admin_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from squadft.data.pull import fetch

    settings = fast_settings(proxy.url)
    upload_directory(sample_dir, S3Location(bucket, "squad"), client=admin_client,
                     settings=settings)
    name = "dev-v2.0-first12.json.gz"

    # through open_source(): S3 settings come from SQUADFT_* variables
    monkeypatch.setenv("SQUADFT_S3_ENDPOINT_URL", proxy.url)
    dropped = proxy.add(Fault("drop_response", method="GET", path=name, times=1))
    fetched = fetch(f"s3://{bucket}/squad", name, tmp_path / "cache", progress=False,
                    sha256=sha256_file(sample_dir / name))
    assert fetched.sha256 == sha256_file(sample_dir / name) and not fetched.from_cache
    assert dropped.matched.is_set()

    source = S3Source(f"s3://{bucket}/squad", settings=settings)
    assert source.describe(name) == f"s3://{bucket}/squad/{name}"
    with pytest.raises(DataError, match="object not found"):
        source.download("missing.json", tmp_path / "missing.part")

    # a manifest that disagrees with the object is caught
    entry = json.loads(admin_client.get_object(
        Bucket=bucket, Key="squad/manifest.json")["Body"].read())
    entry["files"][name]["sha256"] = "0" * 64
    admin_client.put_object(Bucket=bucket, Key="squad/manifest.json",
                            Body=json.dumps(entry).encode())
    fresh = S3Source(f"s3://{bucket}/squad", settings=settings)
    with pytest.raises(ChecksumError):
        fresh.download(name, tmp_path / "dev.part")


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    # AWS_MAX_ATTEMPTS (boto3's own variable) keeps the dead-endpoint case short
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "2"}
    return subprocess.run([sys.executable, "-m", "squadft", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_upload(tmp_path: Path, seaweed: SeaweedServer, bucket: str,
                    admin_client: Any) -> None:
    source = make_tree(tmp_path / "final", big=1500)
    done = _cli(["upload", str(source), f"s3://{bucket}/models/final",
                 "--s3-endpoint-url", seaweed.endpoint])
    assert done.returncode == 0, done.stderr
    assert "uploaded 4 files" in done.stdout and "manifest written last" in done.stdout
    keys = list_keys(admin_client, S3Location(bucket, "models/final"))
    assert f"models/final/{MANIFEST_NAME}" in keys and len(keys) == 5

    dead = FaultProxy(seaweed.s3_port)
    dead_url = dead.url
    dead.server.server_close()
    failed = _cli(["upload", str(source), f"s3://{bucket}/x", "--s3-endpoint-url", dead_url])
    assert failed.returncode == 5
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "endpoint unreachable" in lines[0], failed.stderr
    assert SECRET_KEY not in failed.stderr

    malformed = _cli(["upload", str(source), "s3://AKID:secret@bucket/x"])
    assert malformed.returncode == 2 and "secret" not in malformed.stderr


def test_s3_cached_copy_is_fetched_again_when_the_object_changes(
        tmp_path: Path, proxy: FaultProxy, bucket: str, admin_client: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from squadft.data.pull import fetch, sidecar_path

    def put(marker: str) -> None:
        body = json.dumps({"version": "v2.0", "data": [], "marker": marker}).encode()
        admin_client.put_object(Bucket=bucket, Key="moving/train.json", Body=body)

    monkeypatch.setenv("SQUADFT_S3_ENDPOINT_URL", proxy.url)
    source, cache = f"s3://{bucket}/moving", tmp_path / "cache"
    put("first")
    first = fetch(source, "train.json", cache, progress=False)
    assert set(json.loads(sidecar_path(first.path).read_text())["fingerprint"]) == {
        "etag", "length"}
    assert fetch(source, "train.json", cache, progress=False).from_cache  # one HEAD, no GET
    put("second, longer")
    again = fetch(source, "train.json", cache, progress=False)
    assert not again.from_cache and b"second, longer" in again.path.read_bytes()
    assert again.note == "downloaded again (the source changed: etag, length)"

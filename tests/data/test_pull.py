"""`squadft pull` against real HTTP servers on 127.0.0.1 serving the bundled SQuAD subsets."""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import pytest
from squadft.config import Config
from squadft.data import pull
from squadft.data.pull import (
    Backoff,
    FetchedFile,
    cache_folder,
    fetch,
    open_source,
    pull_dataset,
    sidecar_path,
)
from squadft.errors import ChecksumError, ConfigError, DataError, DownloadError

TRAIN = "train-v2.0-first10.json.gz"
DEV = "dev-v2.0-first12.json.gz"
# Digests of the bundled .json.gz files as bytes (tests.conftest's *_JSON_SHA256 are of the
# uncompressed JSON).
TRAIN_SAMPLE_SHA256 = "b68b3020d162edd5c63311cecaeb3a0599d59951abaf6ef864453cbfda21c82f"
DEV_SAMPLE_SHA256 = "27a461bec06b401e773e9df60f599ec0a50f638e131897679d1d5beb405b1703"
WRONG_SHA256 = "0" * 64


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Behaviour:
    fail_first: int = 0  # answer 503 to the first N requests
    truncate_first: int = 0  # then send only half the body (full Content-Length) to N more
    hang_first: int = 0  # do not answer the first N requests until the server stops
    honour_range: bool = True
    gate_first: bool = False  # hold the first request until `gate` is set, then serve it
    credentials: tuple[str, str] | None = None  # require HTTP basic auth
    html_first: int = 0  # answer the first N GETs with a login page and HTTP 200
    unsized_short_first: int = 0  # ... with 200, no Content-Length and half the body
    send_etag: bool = True
    send_last_modified: bool = False  # the file's mtime
    head_status: int | None = None  # answer every HEAD with this status


@dataclass
class LocalServer:
    """http.server on 127.0.0.1:<free port> in a thread, recording every request."""

    root: Path
    behaviour: Behaviour = field(default_factory=Behaviour)
    seen: list[Seen] = field(default_factory=list)
    sent_before_close: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.gate = threading.Event()
        self.arrived = threading.Semaphore(0)  # one release per request received
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # client hung up: expected
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/squad/"

    def url_with(self, userinfo: str) -> str:
        return f"http://{userinfo}@127.0.0.1:{self.httpd.server_address[1]}/squad/"

    @property
    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]

    @property
    def heads(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "HEAD"]

    def stop(self) -> None:
        self.release.set()
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


LOGIN_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in - Example SSO</title></head>"
              b"<body><form>user, password</form></body></html>\n")


def _make_handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            with server.lock:
                server.seen.append(Seen("HEAD", self.path, dict(self.headers.items())))
            server.arrived.release()
            path = server.root / self.path.removeprefix("/squad/")
            if server.behaviour.head_status is not None:
                self._empty(server.behaviour.head_status)
            elif not self.path.startswith("/squad/") or not path.is_file():
                self._empty(404)
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self._validators(path, path.read_bytes())
                self.end_headers()

        def _validators(self, path: Path, body: bytes) -> None:
            if server.behaviour.send_etag:
                self.send_header("ETag", _etag(body))
            if server.behaviour.send_last_modified:
                self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            with server.lock:
                server.seen.append(Seen("GET", self.path, dict(self.headers.items())))
                number = len([s for s in server.seen if s.method == "GET"])
            server.arrived.release()
            b = server.behaviour
            if number <= b.html_first:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(LOGIN_PAGE)))
                self.end_headers()
                self.wfile.write(LOGIN_PAGE)
                return
            if b.gate_first and number == 1:
                server.gate.wait(timeout=10)
            if number <= b.hang_first:
                server.release.wait(timeout=10)
                return
            if b.credentials is not None:
                token = base64.b64encode(":".join(b.credentials).encode()).decode()
                if self.headers.get("Authorization") != f"Basic {token}":
                    self._empty(401)
                    return
            if number <= b.hang_first + b.fail_first:
                self._empty(503, {"Retry-After": "0"})
                return
            relative = self.path.removeprefix("/squad/")
            path = server.root / relative
            if not self.path.startswith("/squad/") or not path.is_file():
                self._empty(404)
                return
            body = path.read_bytes()
            status, start = 200, 0
            range_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if b.honour_range and range_header and if_range in (None, _etag(body)):
                start = int(range_header.removeprefix("bytes=").rstrip("-"))
                status = 206
            part = body[start:]
            self.send_response(status)
            if number <= b.html_first + b.unsized_short_first:
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                self.wfile.write(part[:len(part) // 2])
                self.close_connection = True
                return
            self.send_header("Content-Length", str(len(part)))
            self._validators(path, body)
            if b.honour_range:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if number <= b.hang_first + b.fail_first + b.truncate_first:
                half = len(part) // 2
                self.wfile.write(part[:half])
                self.wfile.flush()
                server.sent_before_close.append(start + half)
                self.close_connection = True
                return
            self.wfile.write(part)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def www(tmp_path: Path, sample_dir: Path) -> Path:
    """A private copy of the bundled files (some tests change them under the server)."""
    root = tmp_path / "www"
    root.mkdir()
    for name in (TRAIN, DEV):
        shutil.copyfile(sample_dir / name, root / name)
    return root


@pytest.fixture
def serve(www: Path) -> Iterator:
    servers: list[LocalServer] = []

    def start(**behaviour: object) -> LocalServer:
        server = LocalServer(www, Behaviour(**behaviour))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def backoff(sleeps: list[float]) -> Backoff:
    """Real backoff arithmetic, recorded instead of slept."""
    return Backoff(sleep=sleeps.append, rng=random.Random(0))


def _cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- normal download and the cache -----------------------------------------------------------


def test_download_verifies_sha256_and_writes_sidecar(serve, cache, sample_dir, backoff) -> None:
    server = serve()
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                backoff=backoff)
    assert got == FetchedFile(
        path=cache_folder(cache, server.url) / TRAIN, sha256=TRAIN_SAMPLE_SHA256,
        size=(sample_dir / TRAIN).stat().st_size, from_cache=False)
    assert got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    meta = json.loads(sidecar_path(got.path).read_text())
    assert meta["source"] == server.url and meta["name"] == TRAIN
    assert meta["size"] == got.size and meta["sha256"] == TRAIN_SAMPLE_SHA256
    assert meta["fingerprint"] == {"etag": _etag(got.path.read_bytes()), "length": got.size}
    assert meta["fetched_at"].endswith("+00:00")
    assert [g.path for g in server.gets] == [f"/squad/{TRAIN}"]
    # Plain bytes on the wire, so sizes and ranges refer to the file itself.
    assert server.gets[0].headers["Accept-Encoding"] == "identity"
    assert _cache_entries(cache) == sorted([TRAIN, TRAIN + ".meta.json"])


def test_second_fetch_uses_cache_without_any_request(serve, cache, backoff) -> None:
    server = serve()
    first = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False)
    server.stop()  # even a dead server does not matter now
    second = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                   retries=0, backoff=backoff)
    third = fetch(server.url, TRAIN, cache, progress=False, retries=0, backoff=backoff)
    assert second.from_cache and third.from_cache and not first.from_cache
    assert second.path == first.path and second.sha256 == TRAIN_SAMPLE_SHA256
    assert len(server.seen) == 1


@pytest.mark.parametrize("damage", ["shorter", "same size, one byte flipped", "no sidecar"])
def test_corrupted_cache_is_downloaded_again(serve, cache, sample_dir, damage) -> None:
    server = serve()
    got = fetch(server.url, TRAIN, cache, progress=False)
    data = bytearray(got.path.read_bytes())
    if damage == "shorter":
        got.path.write_bytes(data[:1000])
    elif damage == "no sidecar":
        sidecar_path(got.path).unlink()
    else:
        data[5000] ^= 0xFF
        got.path.write_bytes(bytes(data))
    again = fetch(server.url, TRAIN, cache, progress=False)
    assert not again.from_cache and len(server.gets) == 2
    assert again.sha256 == TRAIN_SAMPLE_SHA256
    assert again.path.read_bytes() == (sample_dir / TRAIN).read_bytes()


def test_concurrent_fetches_of_one_file_download_it_once(serve, cache, sample_dir) -> None:
    server = serve(gate_first=True)
    results: dict[str, FetchedFile] = {}

    def run(key: str) -> None:
        results[key] = fetch(server.url, TRAIN, cache, progress=False)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert server.arrived.acquire(timeout=10)  # first holds the lock, mid-download
    second = threading.Thread(target=run, args=("second",))
    second.start()
    # The second fetch must wait for the first instead of racing it on the same .part file; a
    # request from it would show up here well within the deadline.
    assert not server.arrived.acquire(timeout=0.5)
    server.gate.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert not results["first"].from_cache and results["second"].from_cache
    assert len(server.gets) == 1
    assert results["second"].path.read_bytes() == (sample_dir / TRAIN).read_bytes()


def test_cache_with_other_expected_sha256_is_not_reused(serve, cache) -> None:
    server = serve()
    fetch(server.url, TRAIN, cache, progress=False)
    with pytest.raises(ChecksumError):
        fetch(server.url, TRAIN, cache, sha256=WRONG_SHA256, progress=False)
    assert len(server.gets) == 2  # asked the server again rather than trusting the cache
    assert _cache_entries(cache) == []  # and the copy that does not match is gone


# --- flaky servers ---------------------------------------------------------------------------


def test_503s_are_retried_with_exponential_backoff(serve, cache, sleeps) -> None:
    server = serve(fail_first=3)
    got = fetch(server.url, DEV, cache, sha256=DEV_SAMPLE_SHA256, progress=False,
                backoff=Backoff(base=0.5, jitter=0.0, sleep=sleeps.append))
    assert got.sha256 == DEV_SAMPLE_SHA256 and len(server.gets) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_truncated_body_is_resumed_with_range(serve, cache, sample_dir, backoff) -> None:
    server = serve(truncate_first=1)
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                backoff=backoff)
    assert got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    first, second = server.gets
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={server.sent_before_close[0]}-"
    assert second.headers["If-Range"] == _etag(got.path.read_bytes())
    assert _cache_entries(cache) == sorted([TRAIN, TRAIN + ".meta.json"])


def test_server_ignoring_range_restarts_cleanly(serve, cache, sample_dir, backoff) -> None:
    server = serve(truncate_first=2, honour_range=False)
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                backoff=backoff)
    assert got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    assert len(server.gets) == 3 and "Range" in server.gets[1].headers


def test_changed_file_between_tries_restarts_from_scratch(serve, cache, www, backoff) -> None:
    server = serve(truncate_first=1)
    new_version = (www / DEV).read_bytes()
    original = (www / TRAIN).read_bytes()

    class SwapAfterFirstTry(Backoff):
        def delay(self, attempt: int, retry_after: float | None = None) -> float:
            (www / TRAIN).write_bytes(new_version)  # the server's file changes meanwhile
            return 0.0

    got = fetch(server.url, TRAIN, cache, progress=False, backoff=SwapAfterFirstTry(
        sleep=lambda seconds: None))
    # If-Range carried the old ETag, so the server sent the whole new file: no Frankenstein.
    assert got.path.read_bytes() == new_version != original
    assert got.sha256 == DEV_SAMPLE_SHA256


def test_partial_download_is_resumed_by_a_later_run(serve, cache, sample_dir, backoff) -> None:
    server = serve(truncate_first=1)
    with pytest.raises(DownloadError, match="truncated|broke"):
        fetch(server.url, TRAIN, cache, progress=False, retries=0, backoff=backoff)
    part = cache_folder(cache, server.url) / (TRAIN + ".part")
    assert part.stat().st_size == server.sent_before_close[0] > 0
    assert not (cache_folder(cache, server.url) / TRAIN).exists()
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                backoff=backoff)
    assert server.gets[1].headers["Range"] == f"bytes={server.sent_before_close[0]}-"
    assert got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    assert not part.exists()


def test_a_link_that_keeps_dropping_finishes_while_each_try_gets_further(
    serve, cache, sample_dir, backoff, sleeps
) -> None:
    server = serve(truncate_first=5)
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False, retries=1,
                backoff=backoff)
    assert got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    offsets = [int(g.headers["Range"][6:-1]) for g in server.gets[1:]]
    assert len(server.gets) == 6 and offsets == server.sent_before_close
    assert offsets == sorted(offsets) and len(sleeps) == 5


def test_retries_without_progress_are_limited(serve, cache, backoff, sleeps) -> None:
    server = serve(truncate_first=100, honour_range=False)
    with pytest.raises(DownloadError, match="after 3 attempts"):
        fetch(server.url, TRAIN, cache, progress=False, retries=2, backoff=backoff)
    assert len(server.gets) == 3 and len(sleeps) == 2


def test_read_timeout_is_retried(serve, cache, backoff, sleeps) -> None:
    server = serve(hang_first=1)
    got = fetch(server.url, DEV, cache, sha256=DEV_SAMPLE_SHA256, progress=False,
                read_timeout=0.3, backoff=backoff)
    assert got.sha256 == DEV_SAMPLE_SHA256 and len(server.gets) == 2 and len(sleeps) == 1


# --- failures --------------------------------------------------------------------------------


def test_missing_file_is_a_one_line_data_error_without_retries(serve, cache, sleeps) -> None:
    server = serve()
    with pytest.raises(DataError) as caught:
        fetch(server.url, "nope.json", cache, progress=False,
              backoff=Backoff(sleep=sleeps.append))
    message = str(caught.value)
    assert "\n" not in message and f"{server.url}nope.json" in message and "404" in message
    assert len(server.gets) == 1 and sleeps == []
    assert _cache_entries(cache) == []


def test_unreachable_server_gives_download_error_after_retries(cache, sleeps) -> None:
    url = f"http://127.0.0.1:{_free_port()}/squad/"
    with pytest.raises(DownloadError) as caught:
        fetch(url, TRAIN, cache, progress=False, retries=3,
              backoff=Backoff(base=1.0, jitter=0.0, sleep=sleeps.append))
    message = str(caught.value)
    assert "\n" not in message and f"{url}{TRAIN}" in message and "after 4 attempts" in message
    assert sleeps == [1.0, 2.0, 4.0]


def test_wrong_sha256_deletes_the_download(serve, cache, backoff) -> None:
    server = serve()
    with pytest.raises(ChecksumError) as caught:
        fetch(server.url, TRAIN, cache, sha256=WRONG_SHA256, progress=False, backoff=backoff)
    message = str(caught.value)
    assert TRAIN in message and WRONG_SHA256 in message and TRAIN_SAMPLE_SHA256 in message
    assert "\n" not in message
    assert _cache_entries(cache) == []  # no file, no sidecar, no .part
    # and the next run with the right digest is a normal, complete download
    assert not fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256,
                     progress=False).from_cache


def test_wrong_size_is_a_checksum_error(serve, cache) -> None:
    server = serve()
    with pytest.raises(ChecksumError, match="size mismatch"):
        fetch(server.url, TRAIN, cache, size=123, progress=False)
    assert _cache_entries(cache) == []


def test_credentials_in_url_are_used_but_never_shown(serve, cache, tmp_path, backoff) -> None:
    secret = "s3cr3t-Passw0rd"
    server = serve(credentials=("alice", secret))
    source = server.url_with(f"alice:{secret}")
    got = fetch(source, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False)
    assert server.gets[0].headers["Authorization"].startswith("Basic ")
    for path in tmp_path.rglob("*"):
        assert secret not in str(path)
        if path.is_file() and path.suffix == ".json":
            assert secret not in path.read_text()
    assert secret not in json.dumps(json.loads(sidecar_path(got.path).read_text()))
    with pytest.raises(DataError) as not_found:
        fetch(source, "missing.json", cache, progress=False, backoff=backoff)
    dead = f"http://alice:{secret}@127.0.0.1:{_free_port()}/"
    with pytest.raises(DownloadError) as unreachable:
        fetch(dead, TRAIN, cache, progress=False, retries=1, backoff=backoff)
    for error in (not_found.value, unreachable.value):
        assert secret not in str(error) and "***@127.0.0.1" in str(error)


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(base=1.0, factor=2.0, maximum=10.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.delay(k) for k in range(6)]
    for k, delay in enumerate(delays):
        nominal = min(10.0, 2.0**k)
        assert nominal * 0.5 <= delay <= nominal
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    assert backoff.delay(0, retry_after=7.0) == 7.0
    assert backoff.delay(0, retry_after=3600.0) == 10.0


# --- other sources and pull_dataset ----------------------------------------------------------


def test_file_source_copies_into_cache_with_the_same_checks(sample_dir, cache) -> None:
    source = sample_dir.as_uri()
    got = fetch(source, DEV, cache, sha256=DEV_SAMPLE_SHA256, progress=False)
    assert not got.from_cache and got.path.read_bytes() == (sample_dir / DEV).read_bytes()
    assert got.path.parent == cache_folder(cache, source)
    assert fetch(source, DEV, cache, sha256=DEV_SAMPLE_SHA256, progress=False).from_cache
    with pytest.raises(ChecksumError):
        fetch(source, TRAIN, cache, sha256=DEV_SAMPLE_SHA256, progress=False)
    assert not (got.path.parent / TRAIN).exists()
    with pytest.raises(DataError, match="not found"):
        fetch(source, "absent.json", cache, progress=False)


def test_relative_file_sources_share_the_cache_of_their_absolute_path(
    sample_dir, cache, monkeypatch
) -> None:
    monkeypatch.chdir(sample_dir.parent)
    spellings = ["file://sample", "sample/", str(sample_dir), sample_dir.as_uri()]
    for number, source in enumerate(spellings):
        got = fetch(source, DEV, cache, sha256=DEV_SAMPLE_SHA256, progress=False)
        assert got.path.parent == cache_folder(cache, sample_dir.as_uri())
        assert got.from_cache == (number > 0)
    assert len(list(cache.glob("downloads/*"))) == 1


def test_pull_dataset_fetches_both_splits(serve, cache) -> None:
    server = serve()
    cfg = Config(source=server.url, train_file=TRAIN, dev_file=DEV,
                 train_sha256=TRAIN_SAMPLE_SHA256, dev_sha256=DEV_SAMPLE_SHA256,
                 cache_dir=str(cache))
    files = pull_dataset(cfg, progress=False)
    assert set(files) == {"train", "dev"}
    assert [f.sha256 for f in files["train"]] == [TRAIN_SAMPLE_SHA256]
    assert [f.sha256 for f in files["dev"]] == [DEV_SAMPLE_SHA256]
    assert sorted(g.path for g in server.gets) == [f"/squad/{DEV}", f"/squad/{TRAIN}"]
    again = pull_dataset(cfg, progress=False)
    assert all(f.from_cache for f in sum(again.values(), [])) and len(server.seen) == 2
    assert list(pull_dataset(cfg, splits=("dev",), progress=False)) == ["dev"]
    with pytest.raises(ConfigError):
        pull_dataset(cfg, splits=("test",))


def test_several_training_files_are_each_verified_and_fetched_once(serve, cache) -> None:
    server = serve()
    cfg = Config(source=server.url, train_file=f"{TRAIN},{DEV}[:3]", dev_file=f"{DEV}[3:]",
                 train_sha256=f"{TRAIN_SAMPLE_SHA256},{DEV_SAMPLE_SHA256}",
                 cache_dir=str(cache))
    files = pull_dataset(cfg, progress=False)
    assert [f.sha256 for f in files["train"]] == [TRAIN_SAMPLE_SHA256, DEV_SAMPLE_SHA256]
    assert files["dev"][0].path == files["train"][1].path
    assert sorted(g.path for g in server.gets) == [f"/squad/{DEV}", f"/squad/{TRAIN}"]
    # each file has its own checksum: the second one wrong fails on that file
    wrong = cfg.replace(train_sha256=f"{TRAIN_SAMPLE_SHA256},{'0' * 64}",
                        cache_dir=str(cache / "other"))
    with pytest.raises(ChecksumError, match=DEV):
        pull_dataset(wrong, progress=False)
    with pytest.raises(ConfigError, match="1 checksums for 2 training files"):
        cfg.replace(train_sha256=TRAIN_SAMPLE_SHA256)


def test_progress_bar_counts_bytes_on_a_terminal(serve, cache, capsys, monkeypatch) -> None:
    server = serve()
    fetch(server.url, DEV, cache, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(pull, "_stderr_is_tty", lambda: True)
    fetch(server.url, TRAIN, cache, progress=True)
    err = capsys.readouterr().err
    assert TRAIN in err and "323k/323k" in err and "B/s" in err  # 331227 bytes, binary prefixes
    assert err.count("\r") <= 3  # no empty bar drawn before the size is known


def test_s3_without_the_storage_module_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "squadft.storage.s3", None)  # makes the import fail
    with pytest.raises(ConfigError, match="s3 support is unavailable") as caught:
        open_source("s3://bucket/squad")
    assert "\n" not in str(caught.value)


def test_s3_sources_get_the_s3_settings_of_the_config() -> None:
    from squadft.storage.s3 import S3Source

    cfg = Config(s3_endpoint_url="http://127.0.0.1:9", s3_region="eu-west-3",
                 s3_addressing_style="path")
    source = open_source("s3://bucket/squad", cfg=cfg)
    assert isinstance(source, S3Source) and isinstance(source, pull.Source)
    assert (source.settings.endpoint_url, source.settings.region) == ("http://127.0.0.1:9",
                                                                      "eu-west-3")
    assert source.describe(TRAIN) == f"s3://bucket/squad/{TRAIN}"


@pytest.mark.parametrize("source", ["ftp://example.org/squad/", "gopher://x/"])
def test_unknown_scheme_is_a_config_error(source: str) -> None:
    with pytest.raises(ConfigError, match="unsupported source"):
        open_source(source)


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs/file.json", ""])
def test_names_escaping_the_cache_are_rejected(name: str, cache: Path) -> None:
    with pytest.raises(ConfigError, match="invalid file name"):
        fetch("file:///tmp", name, cache, progress=False)


# --- bad bodies never reach the cache --------------------------------------------------------


def test_html_page_served_with_200_is_rejected_and_not_cached(serve, cache, sample_dir) -> None:
    server = serve(html_first=1)
    with pytest.raises(DataError) as caught:
        fetch(server.url, TRAIN, cache, progress=False)
    message = str(caught.value)
    assert "\n" not in message and f"{server.url}{TRAIN}" in message
    assert "an HTML page titled 'sign in - example sso'" in message
    assert "nothing was cached" in message
    assert _cache_entries(cache) == []  # no file, no sidecar, no .part to resume from
    # the server recovers: the next run downloads the real file instead of trusting a copy
    got = fetch(server.url, TRAIN, cache, progress=False)
    assert not got.from_cache and got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    assert "Range" not in server.gets[1].headers


@pytest.mark.parametrize("name", [TRAIN, "dev-plain.json"])
def test_short_body_without_content_length_is_rejected(serve, cache, www, name) -> None:
    (www / "dev-plain.json").write_bytes(gzip.decompress((www / DEV).read_bytes()))
    server = serve(unsized_short_first=1)
    with pytest.raises(DataError) as caught:
        fetch(server.url, name, cache, progress=False)
    message = str(caught.value)
    assert "\n" not in message and f"{server.url}{name}" in message
    assert ("corrupt or truncated gzip data" if name == TRAIN else "invalid JSON") in message
    assert _cache_entries(cache) == []
    got = fetch(server.url, name, cache, progress=False)
    assert got.path.read_bytes() == (www / name).read_bytes() and len(server.gets) == 2


@pytest.mark.parametrize(("body", "looks"), [
    (b"", "an empty body"),
    (b'{"error": "quota exceeded"}', "a JSON object without a top-level 'data' list"),
    (b"[1, 2]", "JSON list without a top-level 'data' list"),
    (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "an XML or HTML document"),
    (gzip.compress(LOGIN_PAGE), "an HTML page titled"),
])
def test_content_that_is_not_squad_is_rejected(tmp_path, cache, body, looks) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.json").write_bytes(body)
    with pytest.raises(DataError, match="did not return a SQuAD file") as caught:
        fetch((tmp_path / "src").as_uri(), "train.json", cache, progress=False)
    assert looks in str(caught.value) and "\n" not in str(caught.value)
    assert _cache_entries(cache) == []


def test_a_cache_poisoned_by_an_older_version_is_fetched_again(serve, cache, sample_dir) -> None:
    """What the landed code left behind: an HTML page with a valid (fingerprint-less) sidecar."""
    server = serve()
    target = cache_folder(cache, server.url) / TRAIN
    target.parent.mkdir(parents=True)
    target.write_bytes(LOGIN_PAGE)
    sidecar_path(target).write_text(json.dumps({
        "source": server.url, "name": TRAIN, "size": len(LOGIN_PAGE),
        "sha256": hashlib.sha256(LOGIN_PAGE).hexdigest(), "fetched_at": "2026-01-01T00:00:00+00:00",
        "etag": '"login"'}))
    got = fetch(server.url, TRAIN, cache, progress=False)
    assert not got.from_cache and got.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    assert got.note == "downloaded again (the cached copy had no source fingerprint)"


# --- revalidation: a cached copy follows its source ------------------------------------------


def _squad_json(marker: str) -> bytes:
    return json.dumps({"version": "v2.0", "data": [], "marker": marker}).encode()


@pytest.mark.parametrize(("validator", "behaviour"), [
    ("etag", {}),
    ("last_modified", {"send_etag": False, "send_last_modified": True}),
    ("length", {"send_etag": False}),
])
def test_changed_http_source_is_fetched_again(serve, cache, www, validator, behaviour) -> None:
    source_file = www / "train.json"
    source_file.write_bytes(_squad_json("first"))
    os.utime(source_file, (1_700_000_000, 1_700_000_000))
    server = serve(**behaviour)
    first = fetch(server.url, "train.json", cache, progress=False)
    meta = json.loads(sidecar_path(first.path).read_text())
    assert validator in meta["fingerprint"]
    unchanged = fetch(server.url, "train.json", cache, progress=False)
    assert unchanged.from_cache and unchanged.note == ""
    assert (len(server.gets), len(server.heads)) == (1, 1)  # one HEAD, no download

    # same length unless the length is all the server gives; a later mtime in every case
    source_file.write_bytes(_squad_json("second!" if validator == "length" else "other"))
    os.utime(source_file, (1_700_000_100, 1_700_000_100))
    changed = fetch(server.url, "train.json", cache, progress=False)
    assert not changed.from_cache and changed.path.read_bytes() == source_file.read_bytes()
    assert changed.note.startswith("downloaded again (the source changed: ")
    assert validator in changed.note and (len(server.gets), len(server.heads)) == (2, 2)
    assert fetch(server.url, "train.json", cache, progress=False).from_cache


def test_server_giving_no_validators_is_not_asked_again(serve, cache, www) -> None:
    (www / "train.json").write_bytes(_squad_json("x"))
    server = serve()
    # a server sending no ETag, Last-Modified or Content-Length leaves an empty fingerprint
    got = fetch(server.url, "train.json", cache, progress=False)
    meta = json.loads(sidecar_path(got.path).read_text())
    sidecar_path(got.path).write_text(json.dumps({**meta, "fingerprint": {}}))
    again = fetch(server.url, "train.json", cache, progress=False)
    assert again.from_cache and server.heads == []


@pytest.mark.parametrize(("change", "fields"), [
    ("replaced by other data", "mtime_ns, size"), ("fixed in place, same size", "mtime_ns")])
def test_changed_file_source_is_fetched_again(tmp_path, cache, change, fields) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "train.json"
    path.write_bytes(_squad_json("first"))
    first = fetch(src.as_uri(), "train.json", cache, progress=False)
    assert fetch(src.as_uri(), "train.json", cache, progress=False).from_cache
    before = path.stat()
    path.write_bytes(_squad_json("a longer one" if change.startswith("replaced") else "fixed"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    again = fetch(src.as_uri(), "train.json", cache, progress=False)
    assert not again.from_cache and again.path.read_bytes() == path.read_bytes()
    assert again.sha256 != first.sha256
    assert again.note == f"downloaded again (the source changed: {fields})"
    assert fetch(src.as_uri(), "train.json", cache, progress=False).from_cache


def test_pinned_sha256_is_trusted_without_asking_the_source(serve, cache, www) -> None:
    server = serve()
    fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False)
    (www / TRAIN).write_bytes((www / DEV).read_bytes())  # the source changes: irrelevant
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False)
    assert got.from_cache and got.sha256 == TRAIN_SAMPLE_SHA256
    assert [s.method for s in server.seen] == ["GET"]


@pytest.mark.parametrize("outage", ["server gone", "HEAD 503", "HEAD 405", "file gone"])
def test_source_that_cannot_be_checked_leaves_the_cached_copy_in_use(
    serve, cache, www, capsys, outage
) -> None:
    server = serve(head_status={"HEAD 503": 503, "HEAD 405": 405}.get(outage))
    source = www.as_uri() if outage == "file gone" else server.url
    first = fetch(source, DEV, cache, progress=False)
    if outage == "server gone":
        server.stop()
    if outage == "file gone":
        (www / DEV).unlink()
    capsys.readouterr()
    got = fetch(source, DEV, cache, progress=False, retries=0)
    assert got.from_cache and got.path == first.path and got.sha256 == DEV_SAMPLE_SHA256
    assert got.note == "cached, not checked for changes"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("squadft: warning: ")
    assert f"using the cached copy {first.path}" in err
    assert len(server.gets) == (0 if outage == "file gone" else 1)


def test_refresh_downloads_again_ignoring_a_valid_cache(serve, cache, sample_dir) -> None:
    server = serve(truncate_first=1)
    with pytest.raises(DownloadError):
        fetch(server.url, TRAIN, cache, progress=False, retries=0)
    assert (cache_folder(cache, server.url) / (TRAIN + ".part")).stat().st_size > 0
    got = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                refresh=True)
    assert "Range" not in server.gets[1].headers  # the partial download was dropped too
    again = fetch(server.url, TRAIN, cache, sha256=TRAIN_SAMPLE_SHA256, progress=False,
                  refresh=True)
    for fetched in (got, again):
        assert not fetched.from_cache and fetched.note == "downloaded (--refresh)"
        assert fetched.path.read_bytes() == (sample_dir / TRAIN).read_bytes()
    assert len(server.gets) == 3 and server.heads == []


# --- the pipeline and the command line -------------------------------------------------------


def test_parse_error_of_a_cached_file_names_the_way_out(tmp_path, cache) -> None:
    from squadft.flows import preparation

    src = tmp_path / "src"
    src.mkdir()
    bad = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "c"}]}]}
    (src / "train.json").write_text(json.dumps(bad))
    (src / "dev.json").write_text(json.dumps(bad))
    cfg = Config(source=src.as_uri(), train_file="train.json", dev_file="dev.json",
                 cache_dir=str(cache))
    with pytest.raises(DataError) as fresh:
        preparation.prepare(cfg, tokenizer=object(), splits=("dev",), verbose=False)
    assert "--refresh" not in str(fresh.value)  # just downloaded: fetching again won't help
    with pytest.raises(DataError) as cached:
        preparation.prepare(cfg, tokenizer=object(), splits=("dev",), verbose=False)
    message = str(cached.value)
    assert "\n" not in message and "'qas'" in message
    assert "`squadft pull --refresh` fetches it again" in message
    assert str(cache_folder(cache, src.as_uri())) in message


def _squadft(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "squadft", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pull_args(url: str, cache: Path, *more: str) -> list[str]:
    return ["pull", "--source", url, "--train-file", TRAIN, "--dev-file", DEV,
            "--cache-dir", str(cache), *more]


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_cli_pull_says_what_it_did_and_refreshes(serve, cache, www) -> None:
    server = serve()
    code, out, err = _finish(_squadft(*_pull_args(server.url, cache)))
    assert code == 0 and out.count(", downloaded)") == 2, err
    code, out, _ = _finish(_squadft(*_pull_args(server.url, cache)))
    assert code == 0 and out.count(", cached)") == 2 and len(server.gets) == 2
    (www / TRAIN).write_bytes((www / DEV).read_bytes())  # a new version of the training file
    code, out, _ = _finish(_squadft(*_pull_args(server.url, cache)))
    assert code == 0 and len(server.gets) == 3
    assert "downloaded again (the source changed: etag, length))" in out
    assert out.count(", cached)") == 1  # dev only
    code, out, _ = _finish(_squadft(*_pull_args(server.url, cache, "--refresh")))
    assert code == 0 and out.count(", downloaded (--refresh))") == 2
    assert "cached" not in out and len(server.gets) == 5


# --- two processes, one cache ----------------------------------------------------------------


def _stderr_lines(*procs: subprocess.Popen[str]) -> queue.Queue[str]:
    """The stderr lines of `procs`, as they come."""
    lines: queue.Queue[str] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)

    for proc in procs:
        threading.Thread(target=pump, args=(proc.stderr,), daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], text: str) -> str:
    while True:
        line = lines.get(timeout=60)  # a hang fails here instead of blocking the suite
        if text in line:
            return line


def _valid_cache(cache: Path, url: str, www: Path) -> None:
    for name in (TRAIN, DEV):
        path = cache_folder(cache, url) / name
        meta = json.loads(sidecar_path(path).read_text())
        assert path.read_bytes() == (www / name).read_bytes()
        assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(cache.rglob("*.part*"))


def test_two_pulls_at_once_share_one_download_and_leave_a_valid_cache(serve, cache, www) -> None:
    server = serve(gate_first=True)
    procs = [_squadft(*_pull_args(server.url, cache)) for _ in range(2)]
    try:
        lines = _stderr_lines(*procs)
        assert server.arrived.acquire(timeout=60)  # one of them holds the lock, mid-download
        # the other one reaches the same lock, says so, and waits instead of racing it
        waiting = _wait_for_line(lines, "waiting for process")
        assert f"fetching {TRAIN} into {cache_folder(cache, server.url)}" in waiting
        assert len(server.gets) == 1
        server.gate.set()
        codes = [proc.wait(timeout=60) for proc in procs]
        outputs = [proc.stdout.read() for proc in procs]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert codes == [0, 0]
    assert sorted(g.path for g in server.gets) == [f"/squad/{DEV}", f"/squad/{TRAIN}"]
    # each file was downloaded by one of them and found in the cache by the other
    assert sum(out.count(", downloaded)") for out in outputs) == 2
    assert sum(out.count(", cached)") for out in outputs) == 2
    _valid_cache(cache, server.url, www)


def test_a_killed_pull_does_not_block_the_next_one(serve, cache, www) -> None:
    server = serve(gate_first=True)
    killed = _squadft(*_pull_args(server.url, cache))
    try:
        assert server.arrived.acquire(timeout=60)  # it holds the lock, mid-download
        lock = pull.lock_path(cache_folder(cache, server.url) / TRAIN)
        with open(lock, "a+b") as handle:
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=60)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel
    finally:
        killed.kill()
        killed.wait()
    code, out, err = _finish(_squadft(*_pull_args(server.url, cache)))
    assert code == 0 and "waiting" not in err and out.count(", downloaded)") == 2, err
    _valid_cache(cache, server.url, www)

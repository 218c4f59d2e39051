"""Fetch the SQuAD files from a source (https://, file://, s3://) into a verified local cache.

Cache layout, per source::

    <cache_dir>/downloads/<16 hex of sha256(redacted source)>/<name>            the file
    <cache_dir>/downloads/<...>/<name>.meta.json                               written LAST
    <cache_dir>/downloads/<...>/<name>.part (+ .part.json resume state)        while downloading

A cached file counts only when its sidecar exists and the file still matches it (size and
sha256) and the expected digest, so a corrupted or half-written cache is fetched again. A
download lands in `<name>.part`, is verified, then renamed into place: a file that failed its
checksum is deleted, never left looking valid.

Without an expected sha256 nothing pins the content, so two more rules keep a bad download from
poisoning the cache: the content is checked (gzip, JSON, SQuAD's top-level `data` list) before
it is committed, and a cached copy is revalidated against its source's fingerprint (size and
mtime of a local file; ETag, Last-Modified and Content-Length from an HTTP HEAD; ETag and size
of an S3 object) and fetched again when that changed. With an expected sha256 a cached copy
that matches it is used without any network request. `refresh` ignores the cache altogether.

Processes sharing a cache serialise on a per-file flock, which the kernel releases when its
holder dies: a killed download never blocks the next run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
import urllib3
from tqdm import tqdm

from squadft.config import Config, redact_url
from squadft.console import say, warn
from squadft.errors import ChecksumError, ConfigError, DataError, DownloadError, StorageError
from squadft.filespec import FileSpec, parse_file_list, parse_file_spec
from squadft.io import (
    GZIP_MAGIC,
    atomic_write_json,
    describe_os_error,
    fsync_dir,
    read_json_file,
    sha256_file,
)

CHUNK_SIZE = 1 << 20  # big reads keep Python overhead negligible on a 40 MB file
DEFAULT_RETRIES = 5
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0

# Worth another try: the server or the path to it may recover. 404/403 etc. will not.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


# What identifies one version of a file at its source (see each Source's `fingerprint`).
Fingerprint = dict[str, str | int]


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    sha256: str
    size: int
    from_cache: bool
    note: str = ""  # how it was got when plain "cached"/"downloaded" would mislead


@runtime_checkable
class Source(Protocol):
    """Where the SQuAD files live. Implementations: HttpSource, FileSource, storage.s3.S3Source."""

    def describe(self, name: str) -> str:
        """Location of `name` for messages, credentials redacted."""
        ...

    def download(self, name: str, dest: Path, *, progress: bool) -> None:
        """Write the complete remote file `name` to `dest` (a .part path that may already hold a
        prefix from an earlier try: resume where the backend can). Raise DownloadError
        (unreachable after retries), DataError (not found, bad response) or StorageError.
        Record the downloaded version's fingerprint in `self.fingerprints[name]`."""
        ...

    def fingerprint(self, name: str) -> Fingerprint:
        """The current version's fingerprint, cheaply (a stat, a HEAD) and without retries;
        DownloadError, DataError or StorageError when the source cannot tell now."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: try k waits base * factor**k, capped at `maximum`,
    scaled by a random factor in [1 - jitter, 1] so that many ranks or jobs retrying against
    the same server spread out instead of hammering it in lockstep.

    `sleep` and `rng` are injectable so tests run without real waits."""

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        nominal = min(self.maximum, self.base * self.factor**attempt)
        delay = nominal * (1.0 - self.jitter * self.rng.random())
        if retry_after is not None:
            # The server said when it expects to be back; believe it, within our cap.
            delay = max(delay, min(retry_after, self.maximum))
        return delay


# --- opening a source ------------------------------------------------------------------------


def open_source(
    source: str,
    *,
    retries: int = DEFAULT_RETRIES,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    backoff: Backoff | None = None,
    cfg: Config | None = None,
) -> Source:
    """A Source for an http(s):// base URL, a file:// directory (or plain local directory
    path) or s3://bucket/prefix. The retry/timeout options apply to HTTP; `cfg` carries the
    s3_* settings (endpoint, region, addressing style) to S3."""
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("http", "https"):
        return HttpSource(source, retries=retries, connect_timeout=connect_timeout,
                          read_timeout=read_timeout, backoff=backoff)
    if scheme == "file":
        return FileSource(file_url_to_path(source))
    if scheme == "":
        return FileSource(Path(source))
    if scheme == "s3":
        try:
            from squadft.storage.s3 import S3Source
        except ImportError:
            raise ConfigError(
                f"s3 support is unavailable (squadft.storage.s3 cannot be imported) "
                f"for source {redact_url(source)}"
            ) from None
        return S3Source(source, cfg)
    raise ConfigError(
        f"unsupported source {redact_url(source)}: use https://, http://, file:// or s3://"
    )


def file_url_to_path(url: str) -> Path:
    """file:///abs/dir -> /abs/dir; also the common file://relative/dir -> relative/dir."""
    parts = urlsplit(url)
    if parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    return Path(unquote(parts.netloc + parts.path))


def _cache_key(source: str) -> str:
    """One key per place: relative local paths are resolved, credentials are left out."""
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme == "file":
        return file_url_to_path(source).resolve().as_uri()
    if scheme == "":
        return Path(source).resolve().as_uri()
    return redact_url(source).rstrip("/")


# --- fetching into the cache -----------------------------------------------------------------


def fetch(
    source: str,
    name: str,
    cache_dir: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = DEFAULT_RETRIES,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    backoff: Backoff | None = None,
    refresh: bool = False,
) -> FetchedFile:
    """Return the verified local copy of `name` under `source`, downloading it only when the
    cache holds no valid copy of the source's current version (`refresh`: download it anyway).
    `sha256`/`size`, when given, must match or ChecksumError."""

    def opener() -> Source:
        return open_source(source, retries=retries, connect_timeout=connect_timeout,
                           read_timeout=read_timeout, backoff=backoff)

    return _fetch(opener, source, name, cache_dir, sha256=sha256, size=size, progress=progress,
                  refresh=refresh)


def split_files(cfg: Config) -> dict[str, list[tuple[FileSpec, str | None]]]:
    """(file spec, expected sha256) per split: train (one or more files), dev, calibration."""
    train = parse_file_list(cfg.train_file)
    sums = [s.strip() for s in cfg.train_sha256.split(",")] if cfg.train_sha256 else []
    files = {
        "train": [(spec, sums[i] if sums else None) for i, spec in enumerate(train)],
        "dev": [(parse_file_spec(cfg.dev_file), cfg.dev_sha256)],
    }
    if cfg.calibration_file is not None:
        files["calibration"] = [(parse_file_spec(cfg.calibration_file), None)]
    return files


def pull_dataset(
    cfg: Config, splits: tuple[str, ...] = ("train", "dev"), *, progress: bool = True
) -> dict[str, list[FetchedFile]]:
    """Fetch the configured files of `splits` into cfg.cache_dir, each verified and cached on
    its own (a file used by two splits is fetched once; cfg.refresh fetches them again). Prints
    nothing but progress and warnings (on stderr)."""
    wanted = split_files(cfg)
    unknown = [s for s in splits if s not in {"train", "dev", "calibration"}]
    if unknown:
        raise ConfigError(f"unknown split(s) {', '.join(unknown)} (known: train, dev, "
                          "calibration)")

    opened: list[Source] = []

    def shared_source() -> Source:
        # One Source (one HTTP session / S3 client) for all files, and none at all when
        # everything is already cached.
        if not opened:
            opened.append(open_source(cfg.source, cfg=cfg))
        return opened[0]

    fetched: dict[str, FetchedFile] = {}

    def one(name: str, sha256: str | None) -> FetchedFile:
        if name not in fetched:
            fetched[name] = _fetch(shared_source, cfg.source, name, cfg.cache_dir,
                                   sha256=sha256, size=None, progress=progress,
                                   refresh=cfg.refresh)
        return fetched[name]

    return {split: [one(spec.name, sha256) for spec, sha256 in wanted[split]]
            for split in splits if split in wanted}


def cache_folder(cache_dir: str | Path, source: str) -> Path:
    """Per-source folder; keyed on the redacted source so secrets never reach a path."""
    digest = hashlib.sha256(_cache_key(source).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / "downloads" / digest


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def discard_partial(part: Path) -> None:
    """Delete a partial download and its resume state."""
    for leftover in (part, _resume_state_path(part)):
        leftover.unlink(missing_ok=True)


def _fetch(
    open_src: Callable[[], Source],
    source: str,
    name: str,
    cache_dir: str | Path,
    *,
    sha256: str | None,
    size: int | None,
    progress: bool,
    refresh: bool = False,
) -> FetchedFile:
    _check_name(name)
    expected = _check_sha256(sha256)
    target = cache_folder(cache_dir, source) / name
    sidecar = sidecar_path(target)
    _make_dirs(target.parent)
    with _exclusive_lock(target):
        note = "downloaded (--refresh)" if refresh else ""
        found = None if refresh else _valid_cached(target, name, expected, size)
        if found is not None:
            cached, meta = found
            if expected is not None:
                return cached  # pinned by its digest: no newer version can be the right one
            note = _revalidate(open_src, name, target, meta)
            if not note.startswith("downloaded"):
                return FetchedFile(cached.path, cached.sha256, cached.size, True, note)
        # A stale pair must never look valid, not even if we crash or fail before replacing it.
        sidecar.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        part = part_path(target)
        if refresh:
            discard_partial(part)  # a partial download is part of the cache too
        src = open_src()
        actual_size, digest = _download_verified(src, name, part, expected, size, progress)
        _commit_download(part, target)
        meta: dict[str, Any] = {
            "source": redact_url(source),
            "name": name,
            "size": actual_size,
            "sha256": digest,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        fingerprint = getattr(src, "fingerprints", {}).get(name)
        if fingerprint is not None:
            meta["fingerprint"] = fingerprint
        atomic_write_json(sidecar, meta)
        return FetchedFile(path=target, sha256=digest, size=actual_size, from_cache=False,
                           note=note)


def _download_verified(src: Source, name: str, part: Path, expected: str | None,
                       size: int | None, progress: bool) -> tuple[int, str]:
    """Download `name` into `part` and check it (size, sha256, or that it is SQuAD JSON when
    nothing pins it); (size, sha256). A file that fails a check is deleted."""
    src.download(name, part, progress=progress)
    if not part.is_file():
        raise DataError(f"download of {src.describe(name)} produced no file")
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        discard_partial(part)
        raise ChecksumError(
            f"size mismatch for {src.describe(name)}: expected {size} bytes, got "
            f"{actual_size}; the download was deleted"
        )
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        discard_partial(part)
        raise ChecksumError(
            f"sha256 mismatch for {src.describe(name)}: expected {expected}, got {digest}; "
            "the download was deleted"
        )
    if expected is None:
        # Nothing pins the content: an error page served with HTTP 200 or a cut-off body
        # must not become a cached file that every later run trusts.
        try:
            check_squad_file(part, src.describe(name))
        except DataError:
            discard_partial(part)
            raise
    return actual_size, digest


def _commit_download(part: Path, target: Path) -> None:
    try:
        _fsync_file(part)
        os.replace(part, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, target)) from None
    _resume_state_path(part).unlink(missing_ok=True)


def _valid_cached(
    target: Path, name: str, expected: str | None, size: int | None
) -> tuple[FetchedFile, dict[str, Any]] | None:
    """The cached copy and its sidecar, when the copy is intact and matches what is asked."""
    sidecar = sidecar_path(target)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        actual_size = target.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    recorded_sha = meta.get("sha256")
    if (
        meta.get("name") != name  # the folder already stands for the source
        or meta.get("size") != actual_size
        or (size is not None and actual_size != size)
        or not isinstance(recorded_sha, str)
        or (expected is not None and recorded_sha != expected)
    ):
        return None
    # Re-hash: it costs a fraction of a second and catches a file corrupted in place.
    if sha256_file(target) != recorded_sha:
        return None
    return FetchedFile(path=target, sha256=recorded_sha, size=actual_size, from_cache=True), meta


def _revalidate(
    open_src: Callable[[], Source], name: str, target: Path, meta: dict[str, Any]
) -> str:
    """Whether the unpinned cached copy in `target` is still the source's version: "" (yes),
    a note starting with "downloaded" (no: fetch it again) or one starting with "cached"
    (cannot tell now: the copy is used, and a warning says so)."""
    recorded = meta.get("fingerprint")
    if isinstance(recorded, dict) and not recorded:
        return ""  # the source gave nothing to compare (no ETag, no length): keep the copy
    try:
        current = open_src().fingerprint(name)
    except (DataError, DownloadError, StorageError) as exc:
        warn(f"{exc}; using the cached copy {target} (fetched "
             f"{meta.get('fetched_at', 'earlier')}) without checking it for changes")
        return "cached, not checked for changes"
    if not isinstance(recorded, dict):
        # Cached before fingerprints (and content checks) existed: fetch once more.
        return "downloaded again (the cached copy had no source fingerprint)"
    common = recorded.keys() & current.keys()
    if any(recorded[key] != current[key] for key in common):
        changed = ", ".join(sorted(key for key in common if recorded[key] != current[key]))
        return f"downloaded again (the source changed: {changed})"
    return ""


def check_squad_file(path: Path, where: str) -> None:
    """Raise a one-line DataError naming `where` unless `path` holds SQuAD JSON (gzip or not):
    decodable, and a top-level object with a `data` list. Says what the content looked like."""
    try:
        data = read_json_file(path)
    except DataError as exc:
        looks = _looks_like(path) or str(exc).removeprefix(f"{path}: ")
        raise DataError(f"{where} did not return a SQuAD file: {looks}; nothing was cached") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        kind = "a JSON object" if isinstance(data, dict) else f"JSON {type(data).__name__}"
        raise DataError(f"{where} did not return a SQuAD file: {kind} without a top-level "
                        "'data' list; nothing was cached")


def _looks_like(path: Path, limit: int = 4096) -> str | None:
    """What the first bytes (decompressed) look like when that says more than a JSON error:
    'an HTML page titled ...', 'an empty body'; else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(limit)
    except OSError:
        return None
    if head[:2] == GZIP_MAGIC:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, limit)
        except zlib.error:
            return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text:
        return "an empty body"
    if not text.startswith(b"<"):
        return None
    if b"<html" in text or text.startswith(b"<!doctype html"):
        title = re.search(rb"<title[^>]*>([^<]{1,80})", text)
        shown = f" titled {title.group(1).decode('utf-8', 'replace').strip()!r}" if title else ""
        return f"an HTML page{shown}, not JSON"
    return "an XML or HTML document, not JSON"


def _check_name(name: str) -> None:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or name.endswith("/"):
        raise ConfigError(f"invalid file name {name!r}: must be a relative path inside the source")


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not _SHA256_RE.fullmatch(sha256):
        raise ConfigError(f"expected sha256 must be 64 hex digits (got {sha256!r})")
    return sha256.lower()


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from None


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
    """Serialise fetches of one file across processes sharing a cache (two jobs, one PVC).

    A flock: the kernel drops it when its holder exits or is killed, so a lock is never left
    behind. A process that has to wait says for whom, on stderr."""
    path = lock_path(target)
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {_lock_holder(handle)}, which is fetching {target.name} into "
                f"{target.parent}", err=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:  # who holds it, for the message above in other processes; best effort
            handle.truncate(0)
            handle.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
            handle.flush()
        except OSError:
            pass
        yield
    finally:
        handle.close()  # closing releases the lock


def _lock_holder(handle: IO[bytes]) -> str:
    try:
        handle.seek(0)
        pid, host = handle.read(200).decode("utf-8", "replace").split()[:2]
    except (OSError, ValueError):
        return "another process"
    return f"process {pid} on {host}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


class _Progress:
    """A tqdm bar in bytes, drawn only once the size is known and only on a terminal."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled and _stderr_is_tty()
        self.bar: _Progress | None = None

    def start(self, total: int | None, done: int = 0) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(desc=self.name, total=total, initial=done, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=True, dynamic_ncols=True)
        else:  # a retry: same bar, restarted at the resume offset
            self.bar.reset(total=total)
            self.bar.update(done)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _open_for_write(path: Path, mode: str) -> IO[bytes]:
    try:
        return open(path, mode, buffering=CHUNK_SIZE)  # noqa: SIM115 - caller closes
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from None


# --- file:// ---------------------------------------------------------------------------------


class FileSource:
    """A local (or mounted network) directory."""

    def __init__(self, directory: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.directory = Path(directory)
        self.chunk_size = chunk_size
        self.fingerprints: dict[str, Fingerprint] = {}

    def describe(self, name: str) -> str:
        return str(self.directory / name)

    def fingerprint(self, name: str) -> Fingerprint:
        """Size and mtime: a stat, no read (a file fixed or replaced in place changes both, or
        at least its mtime)."""
        path = self.directory / name
        try:
            return _stat_fingerprint(path.stat())
        except FileNotFoundError:
            raise DataError(f"{path} not found") from None
        except OSError as exc:
            raise DataError(f"cannot stat {path}: {exc.strerror or exc}") from None

    def download(self, name: str, dest: Path, *, progress: bool) -> None:
        path = self.directory / name
        try:
            reader = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise DataError(f"{path} not found") from None
        except IsADirectoryError:
            raise DataError(f"{path} is a directory, not a file") from None
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        # Local copies are cheap and fast: always start over rather than trust a prefix.
        discard_partial(dest)
        with reader, _open_for_write(dest, "wb") as writer, _Progress(name, progress) as bar:
            stat = os.fstat(reader.fileno())
            self.fingerprints[name] = _stat_fingerprint(stat)
            bar.start(total=stat.st_size)
            try:
                while chunk := reader.read(self.chunk_size):
                    writer.write(chunk)
                    bar.update(len(chunk))
            except OSError as exc:
                raise StorageError(f"copying {path} to {dest} failed: {exc.strerror or exc}") \
                    from None


def _stat_fingerprint(stat: os.stat_result) -> Fingerprint:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# --- http(s):// ------------------------------------------------------------------------------


class _Retry(Exception):
    """One attempt failed in a way worth retrying; `reason` is safe to show."""

    def __init__(self, reason: str, retry_after: float | None = None, wait: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.wait = wait


@dataclass
class _ResumeState:
    """What the server said about the file when the .part was started, so that a resume
    (in this process or a later run) only appends to bytes of the same version."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    def if_range(self) -> str | None:
        # If-Range needs a strong validator; a weak ETag would make servers send 200 anyway.
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _resume_state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


class HttpSource:
    """An http(s):// base URL; files are <base>/<name>. Streams with retries and resume."""

    def __init__(
        self,
        base_url: str,
        *,
        retries: int = DEFAULT_RETRIES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        backoff: Backoff | None = None,
        chunk_size: int = CHUNK_SIZE,
        session: requests.Session | None = None,
    ) -> None:
        if retries < 0:
            raise ConfigError(f"retries must be >= 0 (got {retries})")
        self.base_url = base_url
        self.retries = retries
        self.timeout = (connect_timeout, read_timeout)
        self.backoff = backoff or Backoff()
        self.chunk_size = chunk_size
        self.session = session or requests.Session()
        # Fingerprint (etag, last_modified, length) of each completed download, for the sidecar.
        self.fingerprints: dict[str, Fingerprint] = {}

    def url(self, name: str) -> str:
        parts = urlsplit(self.base_url)
        path = parts.path.rstrip("/") + "/" + quote(name)
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    def describe(self, name: str) -> str:
        return redact_url(self.url(name))

    def fingerprint(self, name: str) -> Fingerprint:
        """ETag, Last-Modified and Content-Length from one HEAD request (no retries: when the
        server does not answer, the cached copy is used)."""
        url = self.url(name)
        shown = redact_url(url)
        try:
            response = self.session.head(url, headers={"Accept-Encoding": "identity"},
                                         timeout=self.timeout, allow_redirects=True)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            raise ConfigError(f"invalid URL {shown}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise DownloadError(f"cannot reach {shown}: {_scrub(_root_cause(exc), url)}") \
                from None
        with response:
            status = response.status_code
            if status in (404, 410):
                raise DataError(f"{shown} not found (HTTP {status})")
            if status != 200:
                raise DownloadError(f"HEAD {shown} answered HTTP {status}")
            headers = response.headers
            encoded = headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
            return _http_fingerprint(
                headers.get("ETag"), headers.get("Last-Modified"),
                None if encoded else _int_header(headers.get("Content-Length")))

    def download(self, name: str, dest: Path, *, progress: bool) -> None:
        url = self.url(name)
        shown = redact_url(url)
        failures = 0
        best_offset = _existing_size(dest)
        with _Progress(name, progress) as bar:
            while True:
                try:
                    self._attempt(url, dest, bar)
                    break
                except _Retry as retry:
                    offset = _existing_size(dest)
                    if offset > best_offset:
                        # Progress was made (a truncated body we can resume from): a link that
                        # keeps dropping still finishes as long as each try gets further.
                        best_offset = offset
                        failures = 0
                    if failures >= self.retries:
                        raise DownloadError(
                            f"cannot download {shown}: {_scrub(retry.reason, url)} "
                            f"(gave up after {failures + 1} attempts)"
                        ) from None
                    if retry.wait:
                        self.backoff.sleep(self.backoff.delay(failures, retry.retry_after))
                    failures += 1
        state = _load_state(dest, url)
        self.fingerprints[name] = {} if state is None else _http_fingerprint(
            state.etag, state.last_modified, state.size)

    # One request: resume from what `dest` holds if its resume state says the same version.
    def _attempt(self, url: str, dest: Path, bar: _Progress) -> None:
        state = _load_state(dest, url)
        offset = _existing_size(dest) if state is not None else 0
        if state is not None and state.size is not None and offset == state.size:
            return  # a previous run got every byte but stopped before verifying
        headers = {"Accept-Encoding": "identity"}
        if offset > 0 and state is not None:
            headers["Range"] = f"bytes={offset}-"
            validator = state.if_range()
            if validator:
                headers["If-Range"] = validator
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise DownloadError(
                f"cannot download {redact_url(url)}: TLS error ({_scrub(_root_cause(exc), url)})"
            ) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            raise ConfigError(f"invalid URL {redact_url(url)}: {type(exc).__name__}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise _Retry(_root_cause(exc)) from None
        except requests.RequestException as exc:
            raise _Retry(_root_cause(exc)) from None
        with response:
            self._receive(response, url, dest, offset, state, bar)

    def _receive(
        self,
        response: requests.Response,
        url: str,
        dest: Path,
        offset: int,
        state: _ResumeState | None,
        bar: _Progress,
    ) -> None:
        _check_status(response, url, dest)
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in (
            "identity", "")
        offset, mode, size = _resume_or_restart(response, url, dest, offset, state, encoded)
        bar.start(total=size, done=offset)
        received = offset
        with _open_for_write(dest, mode) as writer:
            try:
                for chunk in _body_chunks(response, self.chunk_size, decode=encoded):
                    try:
                        writer.write(chunk)
                    except OSError as exc:
                        raise StorageError(describe_os_error(exc, dest)) from None
                    received += len(chunk)
                    bar.update(len(chunk))
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                raise _Retry(f"connection broke after {received} bytes ({_root_cause(exc)})") \
                    from None
        if size is not None and received != size:
            # Older urllib3 does not enforce Content-Length; check it ourselves.
            raise _Retry(f"response truncated at {received} of {size} bytes")


def _check_status(response: requests.Response, url: str, dest: Path) -> None:
    """Errors and retries by HTTP status; returns for 200 and 206."""
    status = response.status_code
    shown = redact_url(url)
    if status in (404, 410):
        raise DataError(f"{shown} not found (HTTP {status})")
    if status in (401, 403):
        raise DownloadError(f"access to {shown} denied (HTTP {status})")
    if status == 416:
        # Our prefix is not a prefix of what the server has now: start over, at once.
        discard_partial(dest)
        raise _Retry("HTTP 416 for a resumed range; restarting", wait=False)
    if status in _RETRY_STATUSES or 500 <= status < 600:
        raise _Retry(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
    if status not in (200, 206):
        raise DataError(f"unexpected response from {shown}: HTTP {status}")


def _resume_or_restart(response: requests.Response, url: str, dest: Path, offset: int,
                       state: _ResumeState | None, encoded: bool
                       ) -> tuple[int, str, int | None]:
    """(offset, file mode, expected size) for this response: append to the partial file when
    the server continues the same version at our offset, else start over (and record what
    a later resume must match)."""
    length = _int_header(response.headers.get("Content-Length"))
    if response.status_code == 206 and offset > 0:
        start, total = _content_range(response.headers.get("Content-Range"))
        same_version = start == offset and (
            state is None or state.size is None or total is None or total == state.size)
        if not same_version or encoded:
            discard_partial(dest)
            raise _Retry("server sent a different range or version; restarting", wait=False)
        size = total if total is not None else (offset + length if length is not None else None)
        return offset, "ab", size
    # The whole file (200, or 206 for a range we did not ask for). Either we asked for all of
    # it, the server ignores Range, or If-Range found the file changed; every case means
    # starting over.
    size = None if encoded else length
    if response.status_code == 206:
        start, total = _content_range(response.headers.get("Content-Range"))
        if start != 0:
            raise DataError(f"unexpected partial response from {redact_url(url)}")
        size = total
    state = _ResumeState(
        url=redact_url(url), size=size, etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"))
    if encoded:
        # The bytes on the wire are not the file's bytes: resuming is impossible.
        _resume_state_path(dest).unlink(missing_ok=True)
    else:
        atomic_write_json(_resume_state_path(dest), state.__dict__)
    return 0, "wb", size


def _http_fingerprint(etag: str | None, last_modified: str | None,
                      length: int | None) -> Fingerprint:
    found = {"etag": etag, "last_modified": last_modified, "length": length}
    return {key: value for key, value in found.items() if value is not None}


def _body_chunks(response: requests.Response, chunk_size: int, decode: bool) -> Iterator[bytes]:
    raw = response.raw
    # Raw, undecoded reads: requests' iter_content decodes through a buffer that swallows the
    # bytes of a partly received chunk when the connection drops, which would defeat resume.
    # read1 (urllib3 2) also hands data over as it arrives, keeping the progress bar live.
    read = getattr(raw, "read1", None) or raw.read
    while True:
        chunk = read(chunk_size, decode_content=decode)
        if not chunk:
            return
        yield chunk


def _existing_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _load_state(dest: Path, url: str) -> _ResumeState | None:
    try:
        data = json.loads(_resume_state_path(dest).read_text(encoding="utf-8"))
        state = _ResumeState(**data)
    except (OSError, ValueError, TypeError):
        return None
    if state.url != redact_url(url) or not dest.exists():
        return None
    return state


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 1000); unknown parts are None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message, e.g. '[Errno 111] Connection refused'."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        inner = current.__cause__ or current.__context__
        if inner is None and current.args and isinstance(current.args[0], BaseException):
            inner = current.args[0]
        if inner is None:
            reason = getattr(current, "reason", None)
            inner = reason if isinstance(reason, BaseException) else None
        if inner is None:
            break
        current = inner
    text = str(current).strip() or type(current).__name__
    return text.splitlines()[0][:200]


def _scrub(text: str, url: str) -> str:
    """Remove the URL's userinfo (and secret query values) from a library's error text."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        password = userinfo.partition(":")[2]
        text = text.replace(userinfo, "***")
        if password:
            text = text.replace(password, "***")
    if parts.query:
        text = text.replace(url, redact_url(url))
    return text


__all__ = [
    "Backoff",
    "CHUNK_SIZE",
    "FetchedFile",
    "FileSource",
    "HttpSource",
    "Source",
    "cache_folder",
    "check_squad_file",
    "discard_partial",
    "fetch",
    "file_url_to_path",
    "lock_path",
    "open_source",
    "pull_dataset",
    "sidecar_path",
]

"""S3-compatible object storage: one client factory, one-line errors, verified transfers.

Works with AWS S3 and S3-compatible servers (MinIO, Ceph RGW, Cloudflare R2, SeaweedFS).

- Credentials come only from boto3's own chain (environment, shared files, profiles, IAM role /
  IRSA web identity). Nothing here reads, prints or stores a secret; error messages are built
  from error codes (never from request dumps) and scrubbed of credential values.
- Transfers use boto3's managed transfer (s3transfer): multipart above a threshold with parts
  sent concurrently; s3transfer reads an open file's parts into memory one after the other,
  at most 10 parts at a time (80 MiB with the 8 MiB default). Each request is retried by
  botocore (``standard`` or ``adaptive`` mode); files whose transfer still fails are retried
  once more as a whole, and the whole directory upload has a deadline.
- Integrity: every file is read once, by its upload, and hashed (sha256) as it is sent; the
  transport is covered by the checksum botocore sends with every request (CRC32 by default,
  SHA256 with ``send_checksums``), which the server checks, so a body damaged on the way is
  refused and sent again. After the upload one listing of the prefix checks every object's
  size, the sha256 of the bytes sent is compared with the checkpoint's own manifest (or builds
  the manifest), and ``manifest.json`` goes up LAST, so a prefix without it is incomplete and
  never used. Downloads are checked against the manifest's sha256.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squadft.config import redact_url
from squadft.console import warn
from squadft.errors import (
    ChecksumError,
    ConfigError,
    DataError,
    DownloadError,
    SquadftError,
    StorageError,
)
from squadft.io import fsync_dir, make_temp_dir, removed_on_failure, replace_directory
from squadft.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    ManifestError,
    build_manifest_bytes,
    hash_file,
    local_files,
    parse_manifest,
    step_from_dir_name,
)

if TYPE_CHECKING:
    from squadft.config import Config

MiB = 1 << 20
RETRY_MODES = ("standard", "adaptive")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]", re.IGNORECASE)


# --- locations -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix without leading or trailing slashes ('' = bucket root)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ConfigError(f"not an s3:// URI: {redact_url(str(uri))!r}")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if "@" in bucket or "?" in uri or "#" in uri:
            raise ConfigError(
                f"malformed S3 URI {redact_url(uri)!r}: expected s3://bucket/prefix "
                "(credentials go in the environment, never in the URI)"
            )
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ConfigError(f"malformed S3 URI {uri!r}: bad bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if "//" in prefix:
            raise ConfigError(f"malformed S3 URI {uri!r}: empty path segment")
        return cls(bucket=bucket, prefix=prefix)

    def key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name.strip("/")))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def object_uri(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.key(relpath)}"

    def __str__(self) -> str:
        return self.uri


# --- settings and client -------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Settings:
    """Everything that shapes S3 traffic; `from_config` reads the Config's s3_* fields."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    retry_mode: str = "standard"
    max_attempts: int = 5  # per request, first try included
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_concurrency: int = 8
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 8 * MiB  # boto3's default part size
    deadline: float = 1800.0  # seconds for one directory upload or download, retries included
    # ChecksumAlgorithm=SHA256 on every upload request instead of botocore's default (CRC32)
    send_checksums: bool = False

    def __post_init__(self) -> None:
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError(f"S3 retry mode must be one of {', '.join(RETRY_MODES)}")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError("S3 addressing style must be auto, path or virtual")
        if self.max_attempts < 1 or self.max_concurrency < 1 or self.deadline <= 0:
            raise ConfigError("S3 max attempts, concurrency and deadline must be positive")

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> S3Settings:
        # retries follow boto3's own variables (Config has no fields for them)
        mode = os.environ.get("AWS_RETRY_MODE", "")
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "")
        values = {
            "endpoint_url": cfg.s3_endpoint_url,
            "region": cfg.s3_region,
            "addressing_style": cfg.s3_addressing_style,
            "max_concurrency": cfg.s3_max_concurrency,
            "deadline": float(cfg.s3_upload_deadline),
            **({"retry_mode": mode} if mode in RETRY_MODES else {}),
            **({"max_attempts": int(attempts)} if attempts.isdigit() else {}),
        }
        return cls(**{**values, **overrides})

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=True,
            # classic s3transfer: predictable part sizes (composite checksum check) everywhere
            preferred_transfer_client="classic",
        )


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client; credentials resolved lazily by boto3's default chain."""
    import boto3
    from botocore.config import Config as BotoConfig

    # the explicit endpoint, else the one boto3 itself would take from the environment
    endpoint = (settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)
    style = settings.addressing_style
    if style == "auto" and endpoint:
        # MinIO, Ceph, SeaweedFS and IP endpoints serve path-style; virtual-hosted needs a
        # wildcard DNS record most self-hosted setups lack. Say --s3-addressing-style virtual
        # to force it.
        style = "path"
    session = boto3.session.Session(region_name=settings.region)
    region = session.region_name
    if region is None and endpoint:
        region = "us-east-1"  # SigV4 needs a region; S3-compatible servers accept this one
    config = BotoConfig(
        region_name=region,
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.max_concurrency * 2),
        s3={"addressing_style": style},
        user_agent_extra="squadft",
    )
    try:
        return session.client("s3", endpoint_url=endpoint, config=config)
    except ValueError as exc:  # botocore rejects malformed endpoint URLs with ValueError
        raise ConfigError(f"invalid S3 endpoint URL {redact_url(str(endpoint))!r}: {exc}") from None


# --- errors --------------------------------------------------------------------------------------

_TRANSIT_CORRUPTION = ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch")
_CLIENT_ERROR_CAUSES = {
    "InvalidAccessKeyId": "invalid access key",
    "SignatureDoesNotMatch": "secret key does not match the access key (signature mismatch)",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "ExpiredToken": "credentials expired",
    "TokenRefreshRequired": "credentials expired",
    "InvalidToken": "invalid session token",
    "NoSuchBucket": "bucket not found",
    "NoSuchKey": "object not found",
    "InvalidBucketName": "invalid bucket name",
    **dict.fromkeys(_TRANSIT_CORRUPTION, "checksum mismatch in transit"),
    "EntityTooSmall": "multipart part too small for this server",
    "QuotaExceeded": "storage quota exceeded",
}
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                     "AWS_ACCESS_KEY_ID")


def scrub(text: str) -> str:
    """One line, URLs redacted, any credential value from the environment masked."""
    line = " ".join(str(text).split())
    line = re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), line)
    for name in _SECRET_VARIABLES:
        if len(secret := os.environ.get(name, "")) >= 4:
            line = line.replace(secret, "***")
    return line[:300]


def describe_cause(exc: BaseException, client: Any, *, missing: str = "object not found") -> str:
    """A short cause for a botocore/s3transfer exception, safe to print."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ("no usable S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or a web identity token)")
    if isinstance(exc, bx.CredentialRetrievalError | bx.TokenRetrievalError):
        return "credentials could not be retrieved from the configured provider"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        endpoint = getattr(client.meta, "endpoint_url", "") or "default AWS endpoint"
        return f"endpoint unreachable ({redact_url(str(endpoint))})"
    if isinstance(exc, bx.ReadTimeoutError):
        return "read timed out (after retries)"
    if isinstance(exc, bx.ConnectionClosedError | bx.ConnectionError):
        return "connection dropped (after retries)"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code", ""))
        status = meta.get("HTTPStatusCode")
        if code in _CLIENT_ERROR_CAUSES:
            return _CLIENT_ERROR_CAUSES[code]
        if code in ("404", "NotFound") or status == 404:
            return missing
        if code in ("403", "Forbidden") or status == 403:
            return "access denied (wrong credentials or missing permission)"
        if isinstance(status, int) and status >= 500 or code in ("SlowDown", "InternalError"):
            attempts = int(meta.get("RetryAttempts", 0)) + 1
            return f"server error {status} {code} after {attempts} attempts".replace("  ", " ")
        message = scrub(str(error.get("Message", "")))
        return f"{code or status}: {message}" if message else str(code or status)
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(exc, RetriesExceededError):
        return "connection dropped repeatedly (after retries)"
    if isinstance(exc, OSError):
        return scrub(exc.strerror or str(exc))
    return scrub(f"{type(exc).__name__}: {exc}")


def storage_error(exc: BaseException, action: str, target: str, client: Any, *,
                  missing: str = "object not found",
                  kind: type[SquadftError] = StorageError) -> SquadftError:
    cause = describe_cause(exc, client, missing=missing)
    return kind(f"cannot {action} {target}: {cause}")


def _is_permanent(exc: BaseException) -> bool:
    """Errors a repeat cannot fix (credentials, permissions, missing bucket)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return True
    if isinstance(exc, bx.ClientError):
        if exc.response.get("Error", {}).get("Code") in _TRANSIT_CORRUPTION:
            return False  # the body was damaged on the way: sending it again can succeed
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return 400 <= int(status) < 500 and status not in (408, 429)
    return False


# --- start-up check ------------------------------------------------------------------------------

def check_access(client: Any, location: S3Location) -> None:
    """Prove at start-up (before hours of training) that the bucket exists and is writable:
    HEAD the bucket, then put and delete a small probe object under the prefix."""
    try:
        client.head_bucket(Bucket=location.bucket)
    except Exception as exc:
        raise storage_error(exc, "access", f"s3://{location.bucket}", client,
                            missing="bucket not found") from None
    probe = location.key(f".squadft-write-probe-{os.getpid()}-{time.time_ns()}")
    try:
        client.put_object(Bucket=location.bucket, Key=probe, Body=b"probe")
        client.delete_object(Bucket=location.bucket, Key=probe)
    except Exception as exc:
        raise storage_error(exc, "write to", location.uri, client,
                            missing="bucket not found") from None


# --- upload --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UploadedFile:
    relpath: str
    key: str
    size: int
    sha256: str
    multipart: bool
    hashed_while_sent: bool  # sha256 of the bytes read for sending (else: a second read)


@dataclass(frozen=True)
class UploadResult:
    location: S3Location
    step: int
    files: tuple[UploadedFile, ...]
    seconds: float
    attempts: int  # rounds over the file set (1 = every file went up on the first round)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        rate = self.bytes / MiB / self.seconds if self.seconds > 0 else float("inf")
        return (f"uploaded {len(self.files)} files ({self.bytes / MiB:.1f} MiB) to "
                f"{self.location.uri} in {self.seconds:.1f}s ({rate:.1f} MiB/s); sizes verified, "
                f"sha256 of every file in its manifest; manifest written last")


class _HashingReader:
    """A seekable read-only file for s3transfer that computes the sha256 of the bytes it hands
    out, so the upload's own read is the only read and the digest is that of what was sent.

    s3transfer reads an open file sequentially (multipart: one part after the other into
    memory, from one thread; single request: botocore reads it for its checksum, seeks back and
    reads it again to send it, and again on a retry). Bytes already hashed are not hashed twice;
    if a read ever skipped ahead, `digest()` is None and the caller hashes the file itself. The
    file is opened on first use and reopened after `close()` if a retry needs it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None
        self._position = 0
        self._hashed = 0
        self._skipped = False
        self._size: int | None = None
        self._sha256 = hashlib.sha256()
        self._lock = threading.Lock()

    def _file(self) -> Any:
        if self._handle is None:
            self._handle = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            if self._size is None:
                self._size = os.fstat(self._handle.fileno()).st_size
            self._handle.seek(self._position)
        return self._handle

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with self._lock:
            self._position = self._file().seek(offset, whence)
            return self._position

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            data = self._file().read(-1 if size is None else size)
            start, end = self._position, self._position + len(data)
            if start > self._hashed:
                self._skipped = True
            elif end > self._hashed:
                self._sha256.update(memoryview(data)[self._hashed - start:])
                self._hashed = end
            self._position = end
            return data

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def digest(self) -> ManifestEntry | None:
        """Size and sha256 of the whole file as read, None unless every byte went through."""
        with self._lock:
            if self._skipped or self._size is None or self._hashed != self._size:
                return None
            return ManifestEntry(size=self._size, sha256=self._sha256.hexdigest())


@dataclass
class _PlannedFile:
    relpath: str
    path: Path
    size: int
    expected: ManifestEntry | None  # from the directory's own manifest.json, if it has one
    reader: _HashingReader | None = None
    digest: ManifestEntry | None = None
    hashed_while_sent: bool = False


def _plan_upload(directory: Path) -> tuple[list[_PlannedFile], Manifest | None]:
    """The files to upload (those of the directory's manifest.json when it has one)."""
    manifest_path = directory / MANIFEST_NAME
    local_manifest: Manifest | None = None
    if manifest_path.exists():
        try:
            local_manifest = parse_manifest(manifest_path.read_bytes())
        except (OSError, ManifestError) as exc:
            raise StorageError(f"cannot upload {directory}: bad {MANIFEST_NAME} ({exc})") from None
        relpaths = sorted(local_manifest.files)
        extra = set(local_files(directory)) - set(relpaths)
        if extra:
            warn(f"{directory}: {len(extra)} files not listed in {MANIFEST_NAME} are not "
                "uploaded")
    else:
        relpaths = local_files(directory)
    planned = []
    for relpath in relpaths:
        path = directory / relpath
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot upload {directory}: cannot read {relpath} "
                               f"({exc.strerror or exc})") from None
        expected = local_manifest.files[relpath] if local_manifest is not None else None
        if expected is not None and expected.size != size:
            raise StorageError(f"cannot upload {directory}: local {relpath} does not match "
                               f"its {MANIFEST_NAME} (corrupt checkpoint)")
        planned.append(_PlannedFile(relpath, path, size, expected))
    return planned, local_manifest


def _check_sent_content(directory: Path, planned: list[_PlannedFile]) -> None:
    """Take each file's sha256 from its upload (hash it again only where that was
    impossible) and compare it with the directory's own manifest."""
    for item in planned:
        digest = item.reader.digest() if item.reader is not None else None
        item.hashed_while_sent = digest is not None
        if digest is None:
            try:
                digest = hash_file(item.path)
            except OSError as exc:
                raise StorageError(f"cannot upload {directory}: cannot read {item.relpath} "
                                   f"({exc.strerror or exc})") from None
        item.digest = digest
        if digest.size != item.size or (item.expected is not None and item.expected != digest):
            raise StorageError(f"cannot upload {directory}: local {item.relpath} does not match "
                               f"its {MANIFEST_NAME} (corrupt or changed during upload); no "
                               "manifest written")


def _completion_counter() -> Any:
    from s3transfer.subscribers import BaseSubscriber

    class CompletionCounter(BaseSubscriber):  # type: ignore[misc]
        """Counts finished transfers: s3transfer futures have no result(timeout)."""

        def __init__(self) -> None:
            self.done = 0
            self.condition = threading.Condition()

        def on_done(self, future: Any, **kwargs: Any) -> None:
            with self.condition:
                self.done += 1
                self.condition.notify_all()

        def wait_for(self, count: int, timeout: float) -> bool:
            with self.condition:
                return self.condition.wait_for(lambda: self.done >= count, timeout=timeout)

    return CompletionCounter()


def _run_transfers(submit: Callable[[Any, list[Any]], Any], items: list[Any], deadline: float,
                   late: SquadftError) -> dict[int, BaseException]:
    """Submit every item and wait; return failures by index. At the `deadline` (a monotonic
    time) cancel all and raise `late` (in-flight requests end within the read timeout)."""
    counter = _completion_counter()
    futures = [submit(item, [counter]) for item in items]
    if not counter.wait_for(len(futures), deadline - time.monotonic()):
        # (TransferManager.shutdown(cancel=True) is broken in some s3transfer releases; the
        # manager's __exit__ then waits only for requests already on the wire)
        for future in futures:
            future.cancel()
        raise late
    failures: dict[int, BaseException] = {}
    for index, future in enumerate(futures):
        try:
            future.result()
        except Exception as exc:
            failures[index] = exc
    return failures


def upload_directory(directory: str | os.PathLike[str], location: S3Location, *, client: Any,
                     settings: S3Settings) -> UploadResult:
    """Upload every file of `directory` to `location/<relpath>`, verify, then `manifest.json`.

    A directory with a manifest.json (a checkpoint) uploads the files it lists, whose sha256
    must match it, then exactly its bytes; otherwise a manifest is built from the sha256 of the
    bytes sent. Any manifest already at the prefix is deleted first, so a re-upload never looks
    complete with mixed contents. Raises StorageError (one line) on failure; local files are
    never modified.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise StorageError(f"cannot upload {directory}: not a directory")
    started = time.monotonic()
    deadline = started + settings.deadline
    planned, local_manifest = _plan_upload(directory)
    try:  # this also checks the bucket and the credentials before anything is sent
        client.delete_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))
    except Exception as exc:
        raise storage_error(exc, "upload to", location.uri, client,
                            missing="bucket not found") from None
    rounds = _upload_files(directory, location, planned, client=client, settings=settings,
                           deadline=deadline)
    _check_sent_content(directory, planned)
    _verify_sizes(client, location, planned)
    if time.monotonic() >= deadline:
        raise _deadline_error(directory, location, settings)
    if local_manifest is not None:
        step, manifest_bytes = local_manifest.step, local_manifest.raw
    else:  # built from the sha256 of the bytes sent
        step = step_from_dir_name(directory.name) or 0
        manifest_bytes = build_manifest_bytes(
            step, {p.relpath: p.digest for p in planned})
    _put_manifest(client, location, manifest_bytes)
    uploaded = tuple(
        UploadedFile(p.relpath, location.key(p.relpath), p.size, p.digest.sha256,
                     p.size >= settings.multipart_threshold, p.hashed_while_sent)
        for p in planned)
    return UploadResult(location, step, uploaded, time.monotonic() - started, rounds)


def _deadline_error(directory: Path, location: S3Location, settings: S3Settings) -> StorageError:
    return StorageError(f"cannot upload {directory} to {location.uri}: deadline of "
                        f"{settings.deadline:g}s reached; no manifest written")


def _upload_files(directory: Path, location: S3Location, planned: list[_PlannedFile], *,
                  client: Any, settings: S3Settings, deadline: float) -> int:
    """Send every planned file through one transfer manager, each hashed by its _HashingReader
    as it is read; returns the rounds over the file set it took (1 or 2)."""
    from boto3.s3.transfer import create_transfer_manager

    # Without an explicit algorithm botocore sends its default checksum (CRC32) with every
    # request and the server rejects a body damaged on the way; the manifest's sha256 covers
    # the content end to end.
    extra_args = {"ChecksumAlgorithm": "SHA256"} if settings.send_checksums else {}
    remaining = list(planned)

    def submit(item: _PlannedFile, subscribers: list[Any]) -> Any:
        if item.reader is not None:
            item.reader.close()
        item.reader = _HashingReader(item.path)
        return manager.upload(item.reader, location.bucket, location.key(item.relpath),
                              extra_args=dict(extra_args), subscribers=subscribers)

    try:
        with create_transfer_manager(client, settings.transfer_config()) as manager:
            # botocore already retries each request; a second round re-sends whole files whose
            # transfer still failed (e.g. a multipart upload aborted after its part retries ran
            # out)
            for rounds in range(1, 3):
                failures = _run_transfers(submit, remaining, deadline,
                                          _deadline_error(directory, location, settings))
                if not failures:
                    break
                remaining = _files_to_retry(
                    failures, remaining, len(planned), last_round=rounds == 2,
                    deadline=deadline, location=location, client=client)
    finally:
        for item in planned:
            if item.reader is not None:
                item.reader.close()
    return rounds


def _files_to_retry(failures: dict[int, BaseException], remaining: list[_PlannedFile],
                    total: int, *, last_round: bool, deadline: float, location: S3Location,
                    client: Any) -> list[_PlannedFile]:
    """The files of `remaining` whose transfer failed, to send again; StorageError instead
    after the last round, past the deadline or when a failure is permanent."""
    first = next(iter(failures.values()))
    failed = [remaining[i] for i in sorted(failures)]
    if last_round or time.monotonic() >= deadline or any(map(_is_permanent, failures.values())):
        target = location.object_uri(failed[0].relpath)
        cause = describe_cause(first, client, missing="bucket not found")
        raise StorageError(
            f"cannot upload {target}: {cause}"
            f" ({len(failed)} of {total} files failed; no manifest written)"
        )
    warn(f"retrying {len(failed)} files of {location.uri} after: "
         f"{describe_cause(first, client)}")
    return failed


def _put_manifest(client: Any, location: S3Location, manifest_bytes: bytes) -> None:
    """Write manifest.json, the last object of an upload, and check its size in the bucket."""
    manifest_key = location.key(MANIFEST_NAME)
    try:
        client.put_object(Bucket=location.bucket, Key=manifest_key, Body=manifest_bytes,
                          ContentType="application/json")
        head = client.head_object(Bucket=location.bucket, Key=manifest_key)
    except Exception as exc:
        raise storage_error(exc, "upload", location.object_uri(MANIFEST_NAME), client) from None
    if head.get("ContentLength") != len(manifest_bytes):
        raise StorageError(f"cannot upload {location.object_uri(MANIFEST_NAME)}: size differs "
                           "after upload")


def _verify_sizes(client: Any, location: S3Location, planned: list[_PlannedFile]) -> None:
    """Every object must be in the bucket with its local size: one listing of the prefix, and
    a HEAD only for what the listing does not show (a server whose listings lag behind)."""
    listed = list_keys(client, location) if planned else {}
    for item in planned:
        key = location.key(item.relpath)
        size = listed.get(key)
        if size != item.size:
            try:
                size = client.head_object(Bucket=location.bucket, Key=key).get("ContentLength")
            except Exception as exc:
                raise storage_error(exc, "verify", location.object_uri(item.relpath),
                                    client) from None
        if size != item.size:
            raise StorageError(f"cannot verify s3://{location.bucket}/{key}: {size} bytes in "
                               f"the bucket, {item.size} locally")


# --- download ------------------------------------------------------------------------------------

def read_remote_manifest(client: Any, location: S3Location) -> Manifest | None:
    """The manifest at `location`, or None when there is none (or it is not ours)."""
    key = location.key(MANIFEST_NAME)
    try:
        body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise storage_error(exc, "read", location.object_uri(MANIFEST_NAME), client) from None
    try:
        return parse_manifest(body)
    except ManifestError as exc:
        warn(f"ignoring {location.object_uri(MANIFEST_NAME)}: {exc}")
        return None


def _is_not_found(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("NoSuchKey", "404", "NotFound") or status == 404


def list_keys(client: Any, location: S3Location) -> dict[str, int]:
    """Every key under `location/` with its size."""
    prefix = location.key("")
    sizes: dict[str, int] = {}
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                sizes[item["Key"]] = int(item["Size"])
    except Exception as exc:
        raise storage_error(exc, "list", location.uri, client,
                            missing="bucket not found") from None
    return sizes


def missing_objects(manifest: Manifest, location: S3Location,
                    sizes: Mapping[str, int]) -> list[str]:
    """Files of the manifest that are absent from the listing or have another size."""
    return [rel for rel, entry in manifest.files.items()
            if sizes.get(location.key(rel)) != entry.size]


def download_files(client: Any, location: S3Location, files: Mapping[str, ManifestEntry],
                   destination: Path, settings: S3Settings) -> None:
    """Download `files` (relpath -> expected size/sha256) into `destination` and verify each."""
    from boto3.s3.transfer import create_transfer_manager

    deadline = time.monotonic() + settings.deadline
    items = sorted(files.items())
    for relpath, _ in items:
        (destination / relpath).parent.mkdir(parents=True, exist_ok=True)
    with create_transfer_manager(client, settings.transfer_config()) as manager:
        failures = _run_transfers(
            lambda item, subscribers: manager.download(
                location.bucket, location.key(item[0]), str(destination / item[0]),
                subscribers=subscribers),
            items, deadline, StorageError(f"cannot download {location.uri}: deadline of "
                                          f"{settings.deadline:g}s reached"))
    if failures:
        index, exc = next(iter(failures.items()))
        raise storage_error(exc, "download", location.object_uri(items[index][0]),
                            client) from None
    for relpath, entry in items:
        digest = hash_file(destination / relpath)
        if digest != entry:
            raise ChecksumError(f"downloaded {location.object_uri(relpath)} does not match its "
                                f"manifest (size {digest.size} vs {entry.size}, or sha256)")


def download_directory(client: Any, location: S3Location, destination: str | os.PathLike[str],
                       settings: S3Settings, manifest: Manifest | None = None) -> Path:
    """Download the complete prefix `location` into `destination` atomically: files go to a
    temp directory beside it, are verified against the manifest, the manifest is written last,
    then the temp directory is renamed into place (an existing incomplete one is replaced)."""
    destination = Path(destination)
    manifest = manifest or read_remote_manifest(client, location)
    if manifest is None:
        raise StorageError(f"cannot download {location.uri}: no {MANIFEST_NAME} "
                           "(incomplete upload)")
    missing = missing_objects(manifest, location, list_keys(client, location))
    if missing:
        raise StorageError(f"cannot download {location.uri}: {len(missing)} files of the "
                           f"manifest are missing, e.g. {missing[0]}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # squadft's temp names: a later run removes them if this process is killed
    staging = make_temp_dir(destination.parent, f"{destination.name}.download")
    with removed_on_failure(staging, destination):
        download_files(client, location, manifest.files, staging, settings)
        with open(staging / MANIFEST_NAME, "wb") as handle:
            handle.write(manifest.raw)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(staging)
        replace_directory(staging, destination)
    return destination


# --- squadft pull --source s3://... --------------------------------------------------------------

class S3Source:
    """`Source` for data/pull.py: files under s3://bucket/prefix.

    Integrity: the size must match the object's; a full-object ChecksumSHA256 from the server
    and, when the prefix has a manifest.json (e.g. written by `squadft upload`), its sha256 must
    match too. A partial `dest` from an earlier try is not resumed; the file is fetched again
    (s3transfer already retries dropped streams internally).
    """

    def __init__(self, uri: str, cfg: Config | None = None, *, client: Any = None,
                 settings: S3Settings | None = None) -> None:
        from squadft.config import Config

        self.location = S3Location.parse(uri)
        if settings is None:
            # open_source() passes only the URI: the s3_* settings then come from SQUADFT_*
            settings = S3Settings.from_config(cfg if cfg is not None else Config.resolve())
        self.settings = settings
        self.client = client if client is not None else make_client(settings)
        # ETag and size of each downloaded object, for the cache's revalidation.
        self.fingerprints: dict[str, dict[str, str | int]] = {}

    def describe(self, name: str) -> str:
        return self.location.object_uri(name)

    def fingerprint(self, name: str) -> dict[str, str | int]:
        """ETag and size of the object now (one HEAD)."""
        try:
            head = self.client.head_object(Bucket=self.location.bucket,
                                           Key=self.location.key(name))
        except Exception as exc:
            raise _source_error(exc, self.describe(name), self.client) from None
        return _object_fingerprint(head)

    @functools.cached_property
    def _manifest(self) -> Manifest | None:
        try:
            return read_remote_manifest(self.client, self.location)
        except StorageError:
            return None

    def download(self, name: str, dest: Path, *, progress: bool = False) -> None:
        target = self.describe(name)
        key = self.location.key(name)
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key,
                                           ChecksumMode="ENABLED")
        except Exception as exc:
            raise _source_error(exc, target, self.client) from None
        size = int(head["ContentLength"])
        from boto3.s3.transfer import create_transfer_manager

        subscribers = [_progress_subscriber(name, size)] if progress else []
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.settings.deadline
        with create_transfer_manager(self.client, self.settings.transfer_config()) as manager:
            failures = _run_transfers(
                lambda _, extra: manager.download(self.location.bucket, key, str(dest),
                                                  subscribers=subscribers + extra),
                [name], deadline, DownloadError(f"cannot download {target}: deadline of "
                                                f"{self.settings.deadline:g}s reached"))
        if failures:
            raise _source_error(failures[0], target, self.client) from None
        digest = hash_file(dest)
        if digest.size != size:
            raise ChecksumError(f"downloaded {target} has {digest.size} bytes, expected {size}")
        remote = head.get("ChecksumSHA256")  # base64, as S3 sends a full-object checksum
        if (remote and "-" not in remote
                and remote != base64.b64encode(bytes.fromhex(digest.sha256)).decode()):
            raise ChecksumError(f"downloaded {target}: sha256 differs from the server's checksum")
        entry = self._manifest.files.get(name) if self._manifest else None
        if entry is not None and entry != digest:
            raise ChecksumError(f"downloaded {target} does not match {MANIFEST_NAME}")
        self.fingerprints[name] = _object_fingerprint(head)


def _object_fingerprint(head: dict[str, Any]) -> dict[str, str | int]:
    found = {"etag": head.get("ETag"), "length": head.get("ContentLength")}
    return {key: value for key, value in found.items() if value is not None}


def _source_error(exc: BaseException, target: str, client: Any) -> SquadftError:
    from botocore import exceptions as bx

    if _is_not_found(exc):
        return DataError(f"cannot download {target}: object not found")
    network = (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
               bx.ConnectionClosedError)
    kind = DownloadError if isinstance(exc, network) or (
        isinstance(exc, bx.ClientError) and not _is_permanent(exc)) else StorageError
    return storage_error(exc, "download", target, client, kind=kind)


def _progress_subscriber(name: str, size: int) -> Any:
    from s3transfer.subscribers import BaseSubscriber
    from tqdm import tqdm

    class ProgressBar(BaseSubscriber):  # type: ignore[misc]
        def __init__(self) -> None:
            self.bar = tqdm(total=size, unit="B", unit_scale=True, desc=name)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            self.bar.update(bytes_transferred)

        def on_done(self, future: Any, **kwargs: Any) -> None:
            self.bar.close()

    return ProgressBar()


# --- squadft upload DIR s3://... -----------------------------------------------------------------

def upload_command(cfg: Config, directory: str | os.PathLike[str], destination: str) -> str:
    """`squadft upload`: check access, upload with the same guarantees as checkpoints; returns
    the one-line summary to print."""
    location = S3Location.parse(destination)
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")
    settings = S3Settings.from_config(cfg)
    client = make_client(settings)
    check_access(client, location)
    return upload_directory(directory, location, client=client, settings=settings).summary()


def delete_keys(client: Any, bucket: str, keys: Iterable[str]) -> None:
    keys = list(keys)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start:start + 1000]]
        try:
            response = client.delete_objects(Bucket=bucket, Delete={"Objects": batch,
                                                                    "Quiet": True})
        except Exception as exc:
            raise storage_error(exc, "delete from", f"s3://{bucket}", client) from None
        errors = response.get("Errors") or []
        if errors:
            raise StorageError(f"cannot delete s3://{bucket}/{errors[0].get('Key')}: "
                               f"{errors[0].get('Code')}")

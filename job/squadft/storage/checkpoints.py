"""Checkpoints in a bucket: background upload, pruning, and resume from the newest complete one.

Remote layout mirrors the output directory: ``s3://bucket/prefix/checkpoint-<step>/...`` and
``s3://bucket/prefix/final/...``, each complete only once its ``manifest.json`` exists and every
file it lists is present with the listed size.

Only rank 0 uploads. The training loop hands each locally complete checkpoint to
``CheckpointUploader.submit`` and goes on; one background thread uploads them one at a time.

Queue policy: at most one upload in flight and at most ONE waiting. A checkpoint submitted while
another waits replaces (supersedes) the waiting one, which is then never uploaded; except a
protected one (the best by held-out F1, which final/ is made from), which keeps its place, the
new one waiting behind it. Resume only ever needs the newest checkpoint, so uploading an older
one first would delay the moment the bucket holds a usable recent state and would cost
bandwidth for a state that pruning deletes anyway. The upload in flight is never interrupted
(it becomes the fallback if the newer fails).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squadft.console import say, warn
from squadft.errors import ConfigError, StorageError
from squadft.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    step_from_dir_name,
    verify_manifest,
)
from squadft.storage.s3 import (
    S3Location,
    S3Settings,
    UploadResult,
    check_access,
    delete_keys,
    download_directory,
    list_keys,
    make_client,
    missing_objects,
    read_remote_manifest,
    storage_error,
    upload_directory,
)

if TYPE_CHECKING:
    from squadft.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteCheckpoint:
    location: S3Location
    step: int
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.location.prefix.rsplit("/", 1)[-1]


def _checkpoint_candidates(client: Any, base: S3Location) -> list[tuple[int, S3Location]]:
    """`checkpoint-<step>/` prefixes directly under `base`, newest first (no manifest check)."""
    prefix = base.key("")
    found = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=base.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix):].removesuffix("/")
                step = step_from_dir_name(name)
                if step is not None:
                    found.append((step, base.child(name)))
    except Exception as exc:
        raise storage_error(exc, "list", base.uri, client, missing="bucket not found") from None
    return sorted(found, key=lambda item: item[0], reverse=True)


def _complete(client: Any, location: S3Location, step: int) -> RemoteCheckpoint | None:
    manifest = read_remote_manifest(client, location)
    if manifest is None or manifest.step != step:
        return None
    if missing_objects(manifest, location, list_keys(client, location)):
        return None
    return RemoteCheckpoint(location, step, manifest)


def list_remote_checkpoints(client: Any, base: S3Location) -> list[RemoteCheckpoint]:
    """Every complete checkpoint under `base`, newest first."""
    return [ckpt for step, location in _checkpoint_candidates(client, base)
            if (ckpt := _complete(client, location, step)) is not None]


def find_latest_remote_checkpoint(cfg: Config, *, client: Any = None) -> RemoteCheckpoint | None:
    """The newest COMPLETE checkpoint under cfg.s3_uri (manifest present, listing matches it);
    newer prefixes without a manifest (an interrupted upload) are skipped. None without s3_uri."""
    if not cfg.s3_uri:
        return None
    base = S3Location.parse(cfg.s3_uri)
    if client is None:
        client = make_client(S3Settings.from_config(cfg))
    for step, location in _checkpoint_candidates(client, base):
        checkpoint = _complete(client, location, step)
        if checkpoint is not None:
            return checkpoint
        log.info("skipping incomplete remote checkpoint %s", location.uri)
    return None


def remote_checkpoint_at(uri: str, *, client: Any) -> RemoteCheckpoint:
    """The complete checkpoint at an explicit s3:// URI (for `--resume s3://...`)."""
    location = S3Location.parse(uri)
    step = step_from_dir_name(location.prefix.rsplit("/", 1)[-1])
    manifest = read_remote_manifest(client, location)
    if manifest is None or step not in (None, manifest.step):
        raise StorageError(f"cannot resume from {uri}: no complete checkpoint there "
                           f"(missing or foreign {MANIFEST_NAME})")
    if missing_objects(manifest, location, list_keys(client, location)):
        raise StorageError(f"cannot resume from {uri}: files listed in {MANIFEST_NAME} are missing")
    return RemoteCheckpoint(location, manifest.step, manifest)


def download_checkpoint(remote: RemoteCheckpoint, output_dir: str | Path, *, client: Any,
                        settings: S3Settings) -> Path:
    """Download `remote` to ``output_dir/checkpoint-<step>`` atomically, every file verified
    against the manifest (sha256 and size) before the directory appears under its final name.
    A local copy that already verifies is used as it is."""
    destination = Path(output_dir) / remote.name
    local_manifest = destination / MANIFEST_NAME
    if local_manifest.is_file():
        if local_manifest.read_bytes() == remote.manifest.raw and verify_manifest(destination):
            return destination
        warn(f"{destination} differs from the bucket's copy; downloading it again")
    return download_directory(client, remote.location, destination, settings, remote.manifest)


def remote_finder(cfg: Config) -> Callable[[str, int | None], Path | None]:
    """The `remote_finder` for train.checkpoint.resolve_resume (call it on rank 0 only):
    "auto" -> the newest complete checkpoint in cfg.s3_uri, downloaded into cfg.output_dir and
    verified, if its step is above `newer_than` (the newest local step), else None;
    "s3://.../checkpoint-<step>" -> that checkpoint, downloaded and verified."""

    def find(spec: str, newer_than: int | None = None) -> Path | None:
        settings = S3Settings.from_config(cfg)
        client = make_client(settings)
        if spec == "auto":
            remote = find_latest_remote_checkpoint(cfg, client=client)
            if remote is None or (newer_than is not None and remote.step <= newer_than):
                return None
            say(f"downloading {remote.location.uri} (step {remote.step}) to resume from it",
                err=True)
        elif spec.startswith("s3://"):
            remote = remote_checkpoint_at(spec, client=client)
        else:
            raise ConfigError(f"--resume {spec}: only s3:// checkpoints can be fetched remotely")
        return download_checkpoint(remote, cfg.output_dir, client=client, settings=settings)

    return find


def prune_remote_checkpoints(client: Any, base: S3Location, keep: int,
                             protect: frozenset[int] = frozenset()) -> list[int]:
    """Keep the newest `keep` complete checkpoints under `base`, and those at the steps in
    `protect` (the best one so far); delete older complete ones.

    Only `checkpoint-<step>/` prefixes with a valid squadft manifest are touched, and in them only
    the manifest and the files it lists (foreign keys stay). The manifest goes first, so a reader
    never sees a "complete" checkpoint with files missing. The newest complete one always stays;
    incomplete prefixes are left alone. keep <= 0 keeps everything. Returns the pruned steps."""
    if keep <= 0:
        return []
    pruned = []
    for checkpoint in list_remote_checkpoints(client, base)[keep:]:
        if checkpoint.step in protect:
            continue
        location = checkpoint.location
        delete_keys(client, location.bucket, [location.key(MANIFEST_NAME)])
        files = [location.key(relpath) for relpath in checkpoint.manifest.files]
        delete_keys(client, location.bucket, files)
        pruned.append(checkpoint.step)
        log.info("pruned %s", location.uri)
    return pruned


@dataclass(frozen=True)
class UploadFailure:
    directory: Path
    error: StorageError


class CheckpointUploader:
    """Uploads locally complete checkpoint directories in one background thread (rank 0 only).

    ``submit(path)`` never blocks (it is the train loop's ``on_checkpoint`` hook); see the module
    docstring for the queue policy. Failures are logged, kept in ``failures`` and never stop
    training or touch the local checkpoint; ``close()`` raises if the newest checkpoint did not
    make it to the bucket, so the job does not end "successfully" without a remote copy.
    After each successful upload of a checkpoint-<step> directory, remote checkpoints beyond
    ``keep`` are pruned (prune problems are logged only).
    """

    def __init__(self, base: S3Location, *, client: Any, settings: S3Settings,
                 keep: int = 0) -> None:
        self.base = base
        self.client = client
        self.settings = settings
        self.keep = keep
        self.protected: frozenset[int] = frozenset()  # steps pruning keeps (see `protect`)
        self._condition = threading.Condition()
        self._pending: list[Path] = []  # waiting, in order: a protected one, then the newest
        self._in_flight: Path | None = None
        self._closed = False
        self._last_submitted: Path | None = None
        self.results: list[UploadResult] = []
        self.failures: list[UploadFailure] = []
        self.superseded: list[Path] = []
        self._thread = threading.Thread(target=self._run, name="squadft-s3-upload", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: Config, *, check: bool = True) -> CheckpointUploader:
        """An uploader for cfg.s3_uri; `check` proves bucket access now (before training)."""
        if not cfg.s3_uri:
            raise ConfigError("an uploader needs --s3-uri")
        base = S3Location.parse(cfg.s3_uri)
        settings = S3Settings.from_config(cfg)
        client = make_client(settings)
        if check:
            check_access(client, base)
        return cls(base, client=client, settings=settings, keep=cfg.save_total_limit)

    # --- producer side (training thread) ---------------------------------------------------------
    def protect(self, steps: frozenset[int]) -> None:
        """Checkpoints at these steps (the best one by held-out F1) survive the pruning."""
        self.protected = frozenset(steps)

    def submit(self, directory: str | Path) -> None:
        directory = Path(directory)
        with self._condition:
            if self._closed:
                raise StorageError(f"cannot upload {directory}: the uploader is closed")
            kept = [p for p in self._pending if step_from_dir_name(p.name) in self.protected]
            for waiting in (p for p in self._pending if p not in kept):
                say(f"{waiting.name} superseded by {directory.name} before its upload "
                    "started (only the newest waiting checkpoint is uploaded)", err=True)
                self.superseded.append(waiting)
            self._pending = [*kept, directory]
            self._last_submitted = directory
            self._condition.notify_all()

    __call__ = submit

    def busy_paths(self) -> set[Path]:
        """Local directories waiting or being uploaded: local pruning must keep these."""
        with self._condition:
            return {p for p in (*self._pending, self._in_flight) if p is not None}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is waiting or in flight; False if `timeout` ran out first."""
        with self._condition:
            return self._condition.wait_for(
                lambda: not self._pending and self._in_flight is None, timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        """Wait for the last upload (e.g. within the SIGTERM grace period), stop the thread, and
        raise StorageError if the newest submitted checkpoint is not complete in the bucket."""
        finished = self.wait(timeout)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            busy = self._in_flight or next(iter(self._pending), None)
        if not finished:
            raise StorageError(
                f"upload of {busy} to {self.base.uri} still running after {timeout:.0f}s; "
                "it stays incomplete in the bucket (no manifest), local copy kept"
            )
        self._thread.join(timeout=5)
        last = self._last_submitted
        if last is not None and not any(r.location == self._target(last) for r in self.results):
            failure = next((f for f in reversed(self.failures) if f.directory == last), None)
            cause = str(failure.error) if failure else "not uploaded"
            raise StorageError(f"{cause}; local copy kept at {last}")

    # --- consumer side (background thread) --------------------------------------------------------
    def _target(self, directory: Path) -> S3Location:
        return self.base.child(directory.name)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return
                directory = self._pending.pop(0)
                self._in_flight = directory
            try:
                self._upload_one(directory)
            finally:
                with self._condition:
                    self._in_flight = None
                    self._condition.notify_all()

    def _upload_one(self, directory: Path) -> None:
        try:
            result = upload_directory(directory, self._target(directory), client=self.client,
                                  settings=self.settings)
        except Exception as exc:  # never let the thread die silently
            error = exc if isinstance(exc, StorageError) else StorageError(
                f"cannot upload {directory}: {type(exc).__name__}: {exc}")
            warn(f"checkpoint upload failed: {error}")
            self.failures.append(UploadFailure(directory, error))
            return
        self.results.append(result)
        say(result.summary(), err=True)
        if self.keep > 0 and directory.name.startswith("checkpoint-"):
            try:
                prune_remote_checkpoints(self.client, self.base, self.keep, self.protected)
            except StorageError as exc:
                warn(f"pruning {self.base.uri} failed: {exc}")

"""The checkpoint manifest: its one writer, its one parser, and the check of a directory.

``manifest.json`` = ``{"format": "squadft-checkpoint/1", "step": int, "files": {relpath:
{"size", "sha256"}}, "created": ISO-8601}``, written LAST into a checkpoint, final/ or an
uploaded directory: a directory (local, or a prefix in a bucket) is complete only when its
manifest exists and every file it lists matches. This module builds the bytes
(`build_manifest_bytes`; `write_manifest` for a local directory, and uploads of directories
that have none), parses them (`parse_manifest`: local files and bucket objects alike, checked
as untrusted so that a download can never write outside its directory), and checks a local
directory against its manifest (`manifest_problem`, `verify_manifest`). It also hashes files
for uploads and downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from squadft.io import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "squadft-checkpoint/1"
CHECKPOINT_DIR_PATTERN = re.compile(r"checkpoint-(\d+)")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """The bytes are not a squadft manifest (callers turn this into their own error)."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    step: int
    files: dict[str, ManifestEntry]
    created: str
    raw: bytes  # the exact bytes, so a download writes back the manifest it verified against


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_manifest(raw: bytes) -> Manifest:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"format is not {MANIFEST_FORMAT}")
    step = data.get("step")
    files = data.get("files")
    if not _natural(step):
        raise ManifestError("step is not a non-negative integer")
    if not isinstance(files, dict):
        raise ManifestError("files is not an object")
    entries: dict[str, ManifestEntry] = {}
    for relpath, entry in files.items():
        # a path must stay inside its directory: relative, no '..', POSIX separators
        if "\\" in relpath or "\x00" in relpath or {"", ".", ".."} & set(relpath.split("/")):
            raise ManifestError(f"unsafe file name {relpath!r}")
        if relpath == MANIFEST_NAME:
            raise ManifestError("the manifest lists itself")
        if not isinstance(entry, dict):
            raise ManifestError(f"entry for {relpath!r} is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if not _natural(size):
            raise ManifestError(f"size of {relpath!r} is not a non-negative integer")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ManifestError(f"sha256 of {relpath!r} is not 64 lowercase hex digits")
        entries[relpath] = ManifestEntry(size=size, sha256=digest)
    return Manifest(step=step, files=entries, created=str(data.get("created", "")), raw=raw)


def step_from_dir_name(name: str) -> int | None:
    match = CHECKPOINT_DIR_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


def hash_file(path: str | os.PathLike[str]) -> ManifestEntry:
    """Size and sha256 of a file, from one read."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        return ManifestEntry(size=handle.tell(), sha256=digest.hexdigest())


def local_files(directory: Path) -> list[str]:
    """Relative POSIX paths of the regular files under `directory`, manifest and the
    temp files of interrupted atomic writes (".name.xxxx.tmp") left out."""
    return [path.relative_to(directory).as_posix() for path in sorted(directory.rglob("*"))
            if path.is_file() and not path.is_symlink() and path != directory / MANIFEST_NAME
            and not (path.name.startswith(".") and path.name.endswith(".tmp"))]


def build_manifest_bytes(step: int, files: dict[str, ManifestEntry]) -> bytes:
    data = {
        "format": MANIFEST_FORMAT,
        "step": step,
        "files": {rel: {"size": e.size, "sha256": e.sha256} for rel, e in sorted(files.items())},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_manifest(directory: str | os.PathLike[str], step: int) -> Path:
    """List every file under `directory` (size, sha256) in manifest.json; call it LAST."""
    directory = Path(directory)
    files = {relpath: hash_file(directory / relpath) for relpath in local_files(directory)}
    atomic_write_bytes(directory / MANIFEST_NAME, build_manifest_bytes(int(step), files))
    return directory / MANIFEST_NAME


def read_manifest(directory: str | os.PathLike[str]) -> Manifest | None:
    """The manifest of a local directory; None when it has none or it is not a valid one."""
    try:
        return parse_manifest((Path(directory) / MANIFEST_NAME).read_bytes())
    except (OSError, ManifestError):
        return None


def manifest_problem(directory: str | os.PathLike[str], *, hashes: bool = True) -> str | None:
    """Why `directory` is not complete, or None when every file matches its manifest (in
    size only, without `hashes`)."""
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).is_file():
        return f"no {MANIFEST_NAME} (incomplete)"
    manifest = read_manifest(directory)
    if manifest is None:
        return f"unreadable {MANIFEST_NAME}"
    for relpath, expected in manifest.files.items():
        path = directory / relpath
        try:
            size = path.stat().st_size
        except OSError:
            return f"{relpath} is missing"
        if size != expected.size:
            return f"{relpath} has {size} bytes, manifest says {expected.size}"
        if hashes and hash_file(path).sha256 != expected.sha256:
            return f"{relpath} does not match its sha256"
    return None


def verify_manifest(directory: str | os.PathLike[str]) -> bool:
    return manifest_problem(directory) is None

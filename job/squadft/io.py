"""Small filesystem helpers: every write is atomic (temp file, fsync, rename; a directory is
built under a temp name and swapped in by `replace_directory`).

Temporary names. Everything squadft writes under a temporary name carries its writer in the
name, `.<base>.[<random>.]<pid>-<start>@<host>.tmp` (`.old` for a directory moved aside
while its replacement goes in), where <start> is the process start time from /proc (0 when
unknown). A later run removes such leftovers (`remove_stale_temps`) only when the writer is
gone: same host, and no process with that pid and start time. Anything else, including a temp
name of another host on a shared filesystem, is left alone.

Permissions. Files squadft writes get 0666 & ~umask, directories 0777 & ~umask, also where a
library writes through `tempfile` (0600/0700): `apply_umask` fixes a finished directory.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from squadft.console import warn
from squadft.errors import DataError, StorageError

_DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded",
                errno.EPERM: "operation not permitted"}


# Write failures that come without an errno: numpy's "N requested and M written", torch.save's
# "[enforce fail at inline_container.cc] ... file write failed" / "unexpected pos", or the
# Rust "os error 28" of safetensors and tokenizers.
_NO_SPACE_TEXT = re.compile(r"No space left on device|os error 28|StorageFull|ENOSPC|"
                            r"Disk quota exceeded|os error 122", re.IGNORECASE)
_WRITE_FAILED_TEXT = re.compile(r"requested and \d+ written|file write failed|unexpected pos|"
                                r"write failed|failed writing|I/O error", re.IGNORECASE)
# Less than this much free space after a failed write: the disk is full.
_NEARLY_FULL_BYTES = 1 << 20


def describe_os_error(exc: BaseException, path: str | os.PathLike[str]) -> str:
    """`cannot write PATH: REASON` for a failed write (OSError or a library's own wording).

    Call it before deleting what the failed write left behind: a full disk is recognised by
    its free space when the error names no cause."""
    return f"cannot write {path}: {write_failure_reason(exc, path)}"


def write_failure_reason(exc: BaseException, path: str | os.PathLike[str]) -> str:
    """"disk full", "permission denied"... for an exception raised while writing `path`."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in _DISK_ERRNOS:
        return _DISK_ERRNOS[code]
    text = " ".join(str(exc).split())
    if _NO_SPACE_TEXT.search(text):
        return ("disk quota exceeded" if re.search(r"quota|os error 122", text, re.IGNORECASE)
                else "disk full")
    free = free_bytes(path)
    if code is None and free is not None and free < _NEARLY_FULL_BYTES:
        return "disk full"  # an errno-less failure on a disk with (almost) no room left
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else (text or type(exc).__name__)


def is_write_failure(exc: BaseException) -> bool:
    """An OSError, or a library error whose text says a write to disk failed."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return bool(_NO_SPACE_TEXT.search(text) or _WRITE_FAILED_TEXT.search(text))


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged writer may still use on `path`'s filesystem (its nearest
    existing parent), or None when that cannot be told."""
    current = Path(path)
    for candidate in (current, *current.parents):
        try:
            stats = os.statvfs(candidate)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


class ErrorKeepingWriter:
    """A file-like `write` that remembers the OSError it raised: torch.save turns a failed
    write into "[enforce fail at inline_container.cc] ... unexpected pos", and numpy's
    tofile into "N requested and M written", both without the errno; this keeps it. Also
    makes numpy write in chunks through `write` instead of its errno-less tofile."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


# --- temporary names and their cleanup ----------------------------------------------------

_TEMP_NAME = re.compile(r"^\.(?P<base>.+?)(?:\.[A-Za-z0-9_]+)?\.(?P<pid>\d+)-(?P<start>\d+)"
                        r"@(?P<host>[^@/]+)\.(?P<kind>tmp|old)$")
_DETERMINISTIC_NAME = re.compile(r"^\.(?P<base>.+)\.\d+-\d+@[^@/]+\.old$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def process_start(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_tag() -> str:
    """`<pid>-<start>@<host>`: this process, as temporary names record it."""
    pid = os.getpid()
    return f"{pid}-{process_start(pid) or 0}@{_host()}"


def temp_name(base: str, kind: str = "tmp") -> str:
    """`.<base>.<writer tag>.<kind>`: a temporary name that `remove_stale_temps` knows."""
    return f".{base}.{writer_tag()}.{kind}"


def make_temp_dir(parent: str | os.PathLike[str], base: str) -> Path:
    """A new directory `.<base>.<random>.<writer tag>.tmp` in `parent`, mode 0777 & ~umask."""
    path = Path(tempfile.mkdtemp(prefix=f".{base}.", suffix=f".{writer_tag()}.tmp",
                                 dir=parent))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def is_temp_name(name: str) -> bool:
    """`name` is one of squadft's temporary names (whoever wrote it)."""
    return _TEMP_NAME.match(name) is not None


def writer_alive(name: str) -> bool:
    """Whether the writer recorded in temporary name `name` may still be running (True for
    names of other hosts, and for names that are not squadft's)."""
    match = _TEMP_NAME.match(name)
    if match is None or match["host"] != _host():
        return True
    pid, start = int(match["pid"]), int(match["start"])
    if pid == os.getpid():
        return start in (0, process_start(pid) or 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return True
    now = process_start(pid)
    return not (start and now is not None and now != start)  # pid reused: the writer is gone


def remove_stale_temps(directory: str | os.PathLike[str], *,
                       recursive: bool = False) -> list[Path]:
    """Remove the temporary files and directories that dead squadft processes of this host
    left in `directory` (and its subdirectories with `recursive`); returns them. A directory
    moved aside (`.NAME.<tag>.old`) whose replacement never arrived is moved back to NAME
    instead. Two runs sweeping the same directory at once do no harm."""
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    removed: list[Path] = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        path = Path(entry.path)
        if match is None:
            if recursive and entry.is_dir(follow_symlinks=False):
                removed.extend(remove_stale_temps(path, recursive=True))
            continue
        if writer_alive(entry.name):
            continue
        moved_aside = _DETERMINISTIC_NAME.match(entry.name)
        if match["kind"] == "old" and moved_aside is not None:
            original = directory / moved_aside["base"]
            if not original.exists():
                with suppress(OSError):
                    os.rename(path, original)
                    continue
        remove_temp_tree(path)
        if os.path.lexists(path):
            warn(f"cannot remove {path}, left by an interrupted squadft process")
            continue
        removed.append(path)
    return removed


def remove_temp_tree(path: str | os.PathLike[str]) -> None:
    """Delete a temporary file or directory of our own, ignoring what is already gone."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


@contextmanager
def removed_on_failure(temp: str | os.PathLike[str],
                       target: str | os.PathLike[str]) -> Iterator[None]:
    """Remove the temporary file or directory `temp` if the block fails; an OSError becomes a
    one-line StorageError about `target`, worded before the removal frees the space."""
    try:
        yield
    except OSError as exc:
        message = describe_os_error(exc, target)
        remove_temp_tree(temp)
        raise StorageError(message) from None
    except BaseException:
        remove_temp_tree(temp)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file next to `path`; on success fsync and rename over it, else delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{writer_tag()}.tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from None
    with removed_on_failure(tmp, path):
        # mkstemp creates 0600 files; give the final file the usual permissions (0666 - umask)
        # so other users and containers sharing the volume can read predictions and checkpoints.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle  # type: ignore[misc]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    with suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: str | os.PathLike[str]) -> None:
    """Give every file under `root` 0666 & ~umask and every directory (root included)
    0777 & ~umask: libraries that write through `tempfile` (transformers' model.safetensors)
    leave 0600 files a serving container running as another user cannot read."""
    mask = current_umask()
    root = Path(root)
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    with suppress(OSError):  # best effort: not every filesystem syncs directories
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system or
    the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                 _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the finished directory `staging` where `target` is, replacing whatever is there (an
    older or a damaged copy); the one way squadft swaps a directory into place.

    `staging` must be on the same filesystem (a temp name beside `target` or under it). Where
    the filesystem allows it the two swap in one atomic renameat2 exchange, so a reader sees
    the old directory or the new one; elsewhere the old one is renamed aside (a squadft temp
    name) and the new one renamed in, and the old one is put back if that fails. The parent is
    fsynced, then the old copy removed.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):
        remove_temp_tree(staging)  # now holds the old copy
    else:
        aside = target.with_name(temp_name(target.name, "old"))
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- blocks an exception from a signal handler must not cut in half --------------------------

class _Interrupts:
    depth = 0
    pending: BaseException | None = None


@contextmanager
def uninterruptible() -> Iterator[None]:
    """A block (renaming a set of files into place, say) that an exception raised from a signal
    handler must not cut in half: such a handler calls `interrupt(exc)`, and inside this block
    the exception is raised only when the block ends."""
    _Interrupts.depth += 1
    try:
        yield
    except BaseException:
        _Interrupts.depth -= 1
        if _Interrupts.depth == 0:
            _Interrupts.pending = None  # the block's own error wins
        raise
    _Interrupts.depth -= 1
    if _Interrupts.depth == 0 and _Interrupts.pending is not None:
        pending, _Interrupts.pending = _Interrupts.pending, None
        raise pending


def interrupt(exc: BaseException) -> None:
    """Raise `exc` now (from a signal handler), or at the end of the `uninterruptible` block
    that is running."""
    if _Interrupts.depth > 0:
        _Interrupts.pending = _Interrupts.pending or exc
        return
    raise exc


def ensure_writable_dir(path: str | os.PathLike[str], probe_bytes: int = 0) -> Path:
    """Create `path` and prove it is writable now, before hours of work depend on it.

    `probe_bytes` > 0 also writes (and fsyncs) that many bytes: an empty probe file still fits
    on a full disk."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=f".{writer_tag()}.tmp",
                                     dir=path)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from None
    try:
        if probe_bytes > 0:
            block = bytes(min(probe_bytes, 1 << 20))
            left = probe_bytes
            while left > 0:
                left -= os.write(fd, block[:left])
            os.fsync(fd)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from None
    finally:
        os.close(fd)
        remove_temp_tree(probe)
    return path


GZIP_MAGIC = b"\x1f\x8b"


def read_json_file(path: str | os.PathLike[str], what: str = "") -> Any:
    """Decoded JSON of a .json or .json.gz file (by magic bytes), or a one-line DataError."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        return json.loads(raw.decode("utf-8-sig"))  # a BOM (Windows editors) is not content
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None

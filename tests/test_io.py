"""squadft.io: writer-tagged temporary names and their cleanup (real processes), failed
writes named after their cause on a real full filesystem, umask, uninterruptible blocks."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from squadft.errors import StorageError
from squadft.io import (
    ErrorKeepingWriter,
    atomic_write_text,
    describe_os_error,
    ensure_writable_dir,
    interrupt,
    is_temp_name,
    remove_stale_temps,
    temp_name,
    uninterruptible,
    writer_alive,
    writer_tag,
)

from tests.helpers import fill_disk
from tests.train.common import REPO_ROOT, subprocess_env

# What a squadft writer has under temporary names at any moment: a features directory, a
# checkpoint being built, a half-written file, directories moved aside for a replacement.
WRITER = """
import sys
from pathlib import Path
from squadft.io import atomic_open, make_temp_dir, temp_name
directory = Path(sys.argv[1])
make_temp_dir(directory, "0123abcd")
(directory / temp_name("checkpoint-3")).mkdir()
(directory / temp_name("checkpoint-5", "old")).mkdir()
(directory / temp_name("checkpoint-5", "old") / "model.safetensors").write_text("old copy")
(directory / temp_name("checkpoint-6", "old")).mkdir()
writing = atomic_open(directory / "predictions.json")
handle = writing.__enter__()
handle.write(b"{half")
handle.flush()
print("ready", flush=True)
sys.stdin.readline()
"""


def start_writer(directory: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], cwd=REPO_ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=subprocess_env())
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def names(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def test_leftovers_of_a_killed_writer_go_those_of_a_live_one_and_others_stay(
    tmp_path: Path,
) -> None:
    dead_dir, live_dir = tmp_path / "dead", tmp_path / "live"
    dead_dir.mkdir()
    live_dir.mkdir()
    (dead_dir / "checkpoint-6").mkdir()  # the replacement of the moved-aside checkpoint-6 is in
    kept = {".features.1-1@another-host.tmp",  # another host's: cannot tell, keep
            ".checkpoint-9.tmp-12345",  # not a squadft name of this version
            ".something.tmp", "checkpoint-6", "notes.txt"}
    for name in kept - {"checkpoint-6"}:
        (dead_dir / name).write_text("")
    killed = start_writer(dead_dir)
    live = start_writer(live_dir)
    try:
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        tagged = names(dead_dir) - kept
        assert len(tagged) == 5 and all(is_temp_name(name) for name in tagged)
        assert not any(writer_alive(name) for name in tagged)

        removed = remove_stale_temps(dead_dir)
        # 4 removed; .checkpoint-5.<tag>.old had no checkpoint-5 next to it: moved back
        assert len(removed) == 4
        assert names(dead_dir) == kept | {"checkpoint-5"}
        assert (dead_dir / "checkpoint-5" / "model.safetensors").read_text() == "old copy"

        before = names(live_dir)
        assert remove_stale_temps(live_dir) == [] and names(live_dir) == before
    finally:
        live.kill()
        live.wait(timeout=30)
    # once it is gone: 3 removed, 2 moved back (nothing took their place here)
    assert len(remove_stale_temps(live_dir)) == 3
    assert names(live_dir) == {"checkpoint-5", "checkpoint-6"}


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path: Path) -> None:
    host = writer_tag().split("@", 1)[1]
    ours = temp_name("x")
    earlier = f".x.{os.getpid()}-1@{host}.tmp"  # this pid, but a process started long ago
    for name in (ours, earlier):
        (tmp_path / name).mkdir()
    assert writer_alive(ours) and not writer_alive(earlier)
    assert remove_stale_temps(tmp_path) == [tmp_path / earlier]


def test_remove_stale_temps_walks_subdirectories_when_asked(tmp_path: Path) -> None:
    nested = tmp_path / "downloads" / "abc"
    nested.mkdir(parents=True)
    stale = nested / ".train.json.meta.json.x1y2.999999999-1@{}.tmp".format(
        writer_tag().split("@", 1)[1])
    stale.write_text("")
    assert remove_stale_temps(tmp_path) == []
    assert remove_stale_temps(tmp_path, recursive=True) == [stale]


def test_a_full_disk_is_called_one_whatever_the_library_says(small_disk) -> None:
    disk = small_disk(1 << 20)
    big = np.zeros(1 << 18)  # 2 MiB
    # numpy's tofile: "N requested and M written", no errno
    with pytest.raises(OSError) as raw:
        with open(disk / "a.npy", "wb") as handle:
            np.save(handle, big)
    assert raw.value.errno is None
    reason = describe_os_error(raw.value, disk / "a.npy")
    assert reason == f"cannot write {disk / 'a.npy'}: disk full"
    (disk / "a.npy").unlink()
    # through ErrorKeepingWriter numpy writes in chunks and the errno survives
    with pytest.raises(OSError) as kept:
        with open(disk / "b.npy", "wb") as handle:
            np.save(ErrorKeepingWriter(handle), big)
    assert kept.value.errno == 28
    (disk / "b.npy").unlink()
    # torch.save: "[enforce fail at inline_container.cc] ... unexpected pos"; the writer keeps
    # the OSError behind it
    with open(disk / "c.pt", "wb") as handle:
        writer = ErrorKeepingWriter(handle)
        with pytest.raises(RuntimeError, match="enforce fail"):
            torch.save({"x": torch.from_numpy(big)}, writer)  # type: ignore[arg-type]
    assert writer.error is not None and writer.error.errno == 28
    (disk / "c.pt").unlink()
    # safetensors (Rust): "I/O error: No space left on device (os error 28)"
    from safetensors.torch import save_file

    with pytest.raises(Exception) as rust:
        save_file({"x": torch.from_numpy(big)}, str(disk / "d.safetensors"))
    assert describe_os_error(rust.value, disk).endswith(": disk full")


def test_the_writability_probe_writes_bytes_because_an_empty_file_fits_on_a_full_disk(
    small_disk,
) -> None:
    disk = small_disk(256 << 10)
    assert fill_disk(disk, 0) == 0
    ensure_writable_dir(disk)  # an empty probe file still fits: proves nothing about space
    with pytest.raises(StorageError, match=f"cannot write {disk}: disk full"):
        ensure_writable_dir(disk, probe_bytes=4096)
    assert names(disk) == {"filler"}


def test_atomic_writes_use_tagged_names_and_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert names(tmp_path) == {"a.json"}


def test_an_interrupt_waits_for_the_end_of_an_uninterruptible_block() -> None:
    class Stop(Exception):
        pass

    steps = []
    with pytest.raises(Stop):
        with uninterruptible():
            interrupt(Stop())  # what a signal handler does
            steps.append("renamed the rest")
    assert steps == ["renamed the rest"]
    with pytest.raises(Stop):
        interrupt(Stop())  # outside: at once
    with pytest.raises(KeyError):  # the block's own error wins, nothing is left pending
        with uninterruptible():
            interrupt(Stop())
            raise KeyError("disk")
    with uninterruptible():
        pass

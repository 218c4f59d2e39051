from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from squadft.config import Config
from squadft.errors import EXIT_STORAGE, ConfigError, StorageError
from squadft.storage.manifest import (
    MANIFEST_FORMAT,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from squadft.train.checkpoint import (
    TrainerState,
    check_resume_path,
    find_latest_checkpoint,
    resolve_resume,
    rng_state,
    rotate_checkpoints,
    save_checkpoint,
    save_final,
    set_rng_state,
)

from tests.helpers import make_tiny_model


def fake_checkpoint(output_dir: Path, step: int, *, manifest: bool = True) -> Path:
    path = output_dir / f"checkpoint-{step}"
    (path / "sub").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes(range(256)) * step)
    (path / "sub" / "state.json").write_text(json.dumps({"step": step}))
    if manifest:
        write_manifest(path, step)
    return path


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 3)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == MANIFEST_FORMAT and manifest["step"] == 3
    assert set(manifest["files"]) == {"model.safetensors", "sub/state.json"}
    assert manifest["files"]["model.safetensors"]["size"] == 768
    assert len(manifest["files"]["sub/state.json"]["sha256"]) == 64
    assert manifest["created"].endswith("Z")
    parsed = read_manifest(path)  # the one parser reads what the one writer wrote
    assert parsed.step == 3 and parsed.created == manifest["created"]
    assert {k: {"size": e.size, "sha256": e.sha256} for k, e in parsed.files.items()} == (
        manifest["files"])
    assert verify_manifest(path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "bad-manifest"])
def test_verify_detects_damage(tmp_path: Path, damage: str) -> None:
    path = fake_checkpoint(tmp_path, 2)
    model = path / "model.safetensors"
    if damage == "flip":
        data = bytearray(model.read_bytes())
        data[10] ^= 1
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:-1])
    elif damage == "delete":
        model.unlink()
    else:
        (path / "manifest.json").write_text("{not json")
    assert not verify_manifest(path)


def test_latest_complete_checkpoint_skips_incomplete_and_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert find_latest_checkpoint(tmp_path / "missing") is None
    fake_checkpoint(tmp_path, 5)
    good = fake_checkpoint(tmp_path, 10)
    corrupt = fake_checkpoint(tmp_path, 15)
    (corrupt / "sub" / "state.json").write_text("{}")
    fake_checkpoint(tmp_path, 20, manifest=False)
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / ".checkpoint-25.tmp-1").mkdir()
    assert find_latest_checkpoint(tmp_path) == good
    err = capsys.readouterr().err
    assert "checkpoint-20: no manifest.json" in err
    assert "checkpoint-15: sub/state.json" in err


def test_rotation_keeps_newest_complete(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 10, manifest=False)
    deleted = rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-10", "checkpoint-6", "checkpoint-8"]
    assert rotate_checkpoints(tmp_path, keep=0) == []


def test_resolve_resume_modes(tmp_path: Path) -> None:
    good = fake_checkpoint(tmp_path, 4)
    assert resolve_resume("never", tmp_path) is None
    assert resolve_resume("auto", tmp_path) == good
    assert resolve_resume(str(good), tmp_path) == good
    incomplete = fake_checkpoint(tmp_path, 8, manifest=False)
    with pytest.raises(ConfigError, match="no manifest"):
        resolve_resume(str(incomplete), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    asked = []
    remote_copy = fake_checkpoint(tmp_path / "downloaded", 12)

    def remote(spec: str, newer_than: int | None) -> Path | None:
        asked.append((spec, newer_than))
        # the bucket holds step 12: returned only when it is newer than the local one
        return remote_copy if newer_than is None or newer_than < 12 else None

    empty = tmp_path / "empty"
    assert resolve_resume("auto", empty) is None
    assert resolve_resume("auto", empty, remote) == remote_copy  # nothing local
    assert resolve_resume("auto", tmp_path, remote) == remote_copy  # remote 12 beats local 4
    newer_local = fake_checkpoint(tmp_path, 16)
    assert resolve_resume("auto", tmp_path, remote) == newer_local  # local 16 beats remote 12
    assert resolve_resume("s3://bucket/run/checkpoint-4", tmp_path, remote) == remote_copy
    assert asked == [("auto", None), ("auto", 4), ("auto", 16),
                     ("s3://bucket/run/checkpoint-4", None)]
    with pytest.raises(ConfigError, match="no remote storage"):
        resolve_resume("s3://bucket/x", tmp_path)


def test_rng_state_round_trip_through_a_safe_torch_load(tmp_path: Path) -> None:
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def _save(output_dir: Path, step: int) -> Path:
    """A real checkpoint of the tiny model (~4 MB of weights, ~12 MB with Adam's moments)."""
    model = make_tiny_model(vocab_size=30522)
    optimizer = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.ones(1, 4, dtype=torch.long)).start_logits.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return save_checkpoint(output_dir, model=model, tokenizer=None, optimizer=optimizer,
                           scheduler=scheduler, scaler=None, state=TrainerState(step=step),
                           cfg=Config(), rng_states=[rng_state()])


def test_disk_full_during_a_checkpoint_is_exit_5_and_leaves_no_temporary_dir(
    small_disk, tmp_path: Path
) -> None:
    """safetensors, torch.save and json each fail in their own words on a full disk: the
    error is one StorageError naming the checkpoint and "disk full"; the temp dir is gone."""
    disk = small_disk(2 << 20)  # smaller than the tiny model alone
    with pytest.raises(StorageError) as failure:
        _save(disk, 3)
    message = str(failure.value)
    assert failure.value.exit_code == EXIT_STORAGE
    assert message == f"cannot write checkpoint {disk / 'checkpoint-3'}: disk full"
    assert os.listdir(disk) == []  # no .checkpoint-3.<pid>...tmp keeps the disk full

    # torch.save's own wording ("unexpected pos" / "file write failed"), weights already in
    roomy = small_disk(5 << 20)  # the model fits, the optimizer state does not
    with pytest.raises(StorageError, match=r"checkpoint-4: disk full$"):
        _save(roomy, 4)
    assert os.listdir(roomy) == []


def test_a_failed_save_keeps_the_previous_copy(small_disk, tmp_path: Path) -> None:
    disk = small_disk(16 << 20)
    first = _save(disk, 5)
    before = (first / "manifest.json").read_bytes()
    (disk / "filler").write_bytes(bytes(os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                                        - (1 << 20)))
    with pytest.raises(StorageError, match="disk full"):
        _save(disk, 5)  # the same step again: the old copy must survive
    assert (first / "manifest.json").read_bytes() == before and verify_manifest(first)
    assert sorted(os.listdir(disk)) == ["checkpoint-5", "filler"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_and_final_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """transformers writes model.safetensors through tempfile (0600): a serving container
    running as another user could not read it."""
    old = os.umask(umask)
    try:
        checkpoint = _save(tmp_path / "run", 2)
        final = save_final(tmp_path / "run", make_tiny_model(vocab_size=100), None, Config(), 2)
    finally:
        os.umask(old)
    for directory in (checkpoint, final):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~umask
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
        assert (directory / "model.safetensors").is_file()


def test_resume_path_is_checked_without_loading_anything(tmp_path: Path) -> None:
    good = fake_checkpoint(tmp_path, 4)
    assert check_resume_path(str(good)) == good
    assert check_resume_path(f"file://{good}") == good
    for spec in ("auto", "never", "s3://bucket/run/checkpoint-4"):
        assert check_resume_path(spec) is None
    data = bytearray((good / "model.safetensors").read_bytes())
    data[0] ^= 1
    (good / "model.safetensors").write_bytes(bytes(data))
    assert check_resume_path(str(good), hashes=False) == good  # sizes only: fast, before work
    with pytest.raises(ConfigError, match="does not match its sha256"):
        check_resume_path(str(good))
    (tmp_path / "plain").mkdir()
    (tmp_path / "file").write_text("")
    for path, problem in ((tmp_path / "missing", "does not exist"),
                          (tmp_path / "file", "is not a directory"),
                          (tmp_path / "plain", "is not a squadft checkpoint")):
        with pytest.raises(ConfigError, match=problem):
            check_resume_path(str(path))


class _FakeCuda:
    """The few torch.cuda calls the RNG code makes, for a machine with `visible` GPUs."""

    def __init__(self, visible: int, current: int = 0) -> None:
        self.visible, self.current = visible, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(visible)}
        self.set_calls: list[tuple[int, torch.Tensor]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def get_all() -> list[torch.Tensor]:
            return [self.states[i] for i in range(self.visible)]

        def set_all(states: list[torch.Tensor]) -> None:
            for i in range(len(states)):  # what torch does: IndexError beyond the visible GPUs
                if i >= self.visible:
                    raise IndexError(f"device {i} out of range")

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.visible)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=0: self.states[device])
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", get_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, device=0: self.set_calls.append((device, state)))


def test_cuda_rng_state_is_the_ranks_own_and_resumes_on_fewer_gpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eight = _FakeCuda(visible=8, current=3)  # rank 3 of a node with 8 visible GPUs
    eight.install(monkeypatch)
    saved = rng_state()
    assert torch.equal(saved["cuda"], eight.states[3])  # one state, not eight
    torch.save(saved, tmp_path / "rng.pt")

    one = _FakeCuda(visible=1)  # the requeue lands in a 1-GPU pod
    one.install(monkeypatch)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert [(d, s.tolist()) for d, s in one.set_calls] == [(0, eight.states[3].tolist())]

    # a checkpoint of the older layout (a state per visible GPU) still resumes, with a warning
    old_layout = {**rng_state(), "cuda": [eight.states[i] for i in range(8)]}
    one.set_calls.clear()
    set_rng_state(old_layout)
    assert len(one.set_calls) == 1 and "8 visible GPUs" in capsys.readouterr().err

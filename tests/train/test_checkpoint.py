from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from squadft.errors import ConfigError
from squadft.train.checkpoint import (
    MANIFEST_FORMAT,
    find_latest_checkpoint,
    read_manifest,
    resolve_resume,
    rng_state,
    rotate_checkpoints,
    set_rng_state,
    verify_manifest,
    write_manifest,
)


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
    assert read_manifest(path) == manifest and verify_manifest(path)


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

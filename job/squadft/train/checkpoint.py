"""Checkpoints that survive crashes: written to a temp dir, manifest last, renamed into place.

Layout of `<output_dir>/checkpoint-<step>/` (shared with squadft.storage.s3):
model.safetensors + config.json (save_pretrained), tokenizer files, optimizer.pt,
scheduler.pt, scaler.pt (fp16 only), rng_state_<rank>.pt for every rank, trainer_state.json,
squadft_config.json and, written LAST, manifest.json listing every file's size and sha256.
A directory without a manifest, or whose files do not match it, is incomplete and never used.
Only rank 0 writes: the other ranks send it their RNG states.

A checkpoint (and final/) is built in `.<name>.<writer>.tmp` (see squadft.io for the name)
that any failure removes; a process killed mid-save leaves it for the next run's
`remove_stale_temps`. A failed write (disk full, torch.save's "file write failed",
safetensors' "os error 28") is a StorageError naming the directory and the cause. Files get
0666 & ~umask, as everything squadft writes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squadft.config import Config
from squadft.console import warn
from squadft.errors import ConfigError, StorageError
from squadft.io import (
    ErrorKeepingWriter,
    apply_umask,
    atomic_write_json,
    atomic_write_text,
    describe_os_error,
    is_write_failure,
    remove_temp_tree,
    replace_directory,
    temp_name,
)
from squadft.storage.manifest import (
    MANIFEST_NAME,
    manifest_problem,
    step_from_dir_name,
    write_manifest,
)

TRAINER_STATE = "trainer_state.json"

RemoteFinder = Callable[[str, int | None], Path | None]
"""Resolves `--resume` remotely: (spec, newer_than) -> a complete local checkpoint directory
(downloaded) or None. spec is "auto" (the newest complete remote checkpoint above step
`newer_than`, None if there is none) or a non-local spec such as s3://..."""


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    return step_from_dir_name(Path(path).name)


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """checkpoint-<step> directories, newest first (complete or not)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0, reverse=True)


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint; incomplete or corrupt ones are skipped with a warning."""
    for path in list_checkpoints(output_dir):
        problem = manifest_problem(path)
        if problem is None:
            return path
        warn(f"skipping checkpoint {path}: {problem}")
    return None


def check_resume_path(resume: str, *, hashes: bool = True) -> Path | None:
    """A local --resume PATH, checked before any other work: it exists and is a complete
    squadft checkpoint (ConfigError otherwise); `hashes=False` checks the files' sizes, not
    their sha256 (the pipeline's early check: the resume itself verifies them). None for
    never, auto and remote specs."""
    if resume in ("never", "auto") or ("://" in resume and not resume.startswith("file://")):
        return None
    path = Path(resume.removeprefix("file://")).expanduser()
    if not path.is_dir():
        problem = "does not exist" if not path.exists() else "is not a directory"
    elif not (path / MANIFEST_NAME).is_file() and not (path / TRAINER_STATE).is_file():
        problem = f"is not a squadft checkpoint (no {MANIFEST_NAME}, no {TRAINER_STATE})"
    else:
        problem = manifest_problem(path, hashes=hashes)
    if problem:
        raise ConfigError(f"--resume {path}: {problem}")
    return path


def resolve_resume(
    resume: str, output_dir: str | os.PathLike[str], remote_finder: RemoteFinder | None = None
) -> Path | None:
    """--resume: "never", "auto" (the newest complete checkpoint, local or remote) or one."""
    if resume == "never":
        return None
    if resume == "auto":
        local = find_latest_checkpoint(output_dir)
        if remote_finder is None:
            return local
        # a requeued job may land on a node whose disk holds an older checkpoint (or none)
        remote = remote_finder("auto", checkpoint_step(local) if local is not None else None)
        return remote if remote is not None else local
    if "://" in resume and not resume.startswith("file://"):
        if remote_finder is None:
            raise ConfigError(f"--resume {resume}: no remote storage configured for this scheme")
        found = remote_finder(resume, None)
        if found is None:
            raise ConfigError(f"--resume {resume}: no complete checkpoint there")
        return found
    return check_resume_path(resume)


# --- trainer state and RNG -----------------------------------------------------------------

@dataclass
class TrainerState:
    """Where training stands; `epoch`/`position` is the next batch the sampler yields."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    total_steps: int = 0
    world_size: int = 1
    batch_size: int = 0
    grad_accum_steps: int = 1
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient norm
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    # the run ids of the MLflow / W&B runs this training logs to, so that a resume from this
    # checkpoint (also on another machine, from S3) continues the same runs
    trackers: dict[str, str] = field(default_factory=dict)
    # the held-out evaluations so far and the best of them (train.selection.Selection)
    selection: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["loss_history"] = [tuple(x) for x in known.get("loss_history", [])]
        return cls(**known)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as tensors/primitives only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.array(keys)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # Only this rank's own device: a checkpoint written with 8 visible GPUs must resume in a
        # 1-GPU pod (get_rng_state_all would save 8 states and set_rng_state_all want 8 back).
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        _set_cuda_rng_state(state["cuda"])


def _set_cuda_rng_state(saved: Any) -> None:
    """Restore the CUDA generator of this rank's device. Checkpoints of older squadft versions
    hold one state per GPU that was visible then; when that layout does not match this process
    (fewer GPUs visible, one GPU per task), fall back with a warning instead of crashing."""
    device = torch.cuda.current_device()
    if isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved, device)
        return
    states = list(saved)
    if len(states) == torch.cuda.device_count():
        torch.cuda.set_rng_state(states[device], device)
    elif states:
        warn(f"the checkpoint holds CUDA RNG states for {len(states)} visible GPUs, this process "
             f"sees {torch.cuda.device_count()}: using the first; dropout on GPU will differ "
             "from the interrupted run")
        torch.cuda.set_rng_state(states[0], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- writing -------------------------------------------------------------------------------

def _write_error(exc: BaseException, what: str, path: Path) -> StorageError | None:
    """The StorageError for a failed write into `path`, or None when `exc` is no write
    failure (a bug, which should surface as such)."""
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, Exception) or not is_write_failure(exc):
        return None
    return StorageError(describe_os_error(exc, f"{what}{path}"))


def _save_directory(output_dir: Path, name: str, what: str, fill: Callable[[Path], None],
                    step: int) -> Path:
    """Build `output_dir/name` in a temp dir with `fill`, manifest last, rename into place;
    on any failure the temp dir is removed and a write failure becomes a StorageError."""
    target = output_dir / name
    tmp = output_dir / temp_name(name)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fill(tmp)
        apply_umask(tmp)
        write_manifest(tmp, step)
        replace_directory(tmp, target)
    except BaseException as exc:
        # the reason first: the partial files still fill the disk, which is how a full disk
        # is recognised when the library's error does not say so
        error = _write_error(exc, what, target)
        remove_temp_tree(tmp)
        if error is None:
            raise
        raise error from None
    return target


def torch_save(obj: Any, path: Path) -> None:
    """torch.save into `path`; a failed write raises its OSError (errno 28 for a full disk),
    not torch's "[enforce fail at inline_container.cc] ... unexpected pos"."""
    with open(path, "wb") as handle:
        writer = ErrorKeepingWriter(handle)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def save_pretrained_dir(directory: Path, model: Any, tokenizer: Any, cfg: Config) -> None:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    cfg.save(directory)


def save_checkpoint(
    output_dir: str | os.PathLike[str], *, model: Any, tokenizer: Any,
    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler | None,
    state: TrainerState, cfg: Config, rng_states: list[dict[str, Any]],
) -> Path:
    """Write checkpoint-<step>/ atomically (rank 0 only); returns its path."""

    def fill(tmp: Path) -> None:
        save_pretrained_dir(tmp, model, tokenizer, cfg)
        torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None and scaler.is_enabled():
            torch_save(scaler.state_dict(), tmp / "scaler.pt")
        for rank, rng in enumerate(rng_states):
            torch_save(rng, tmp / f"rng_state_{rank}.pt")
        atomic_write_json(tmp / TRAINER_STATE, state.to_dict())

    return _save_directory(Path(output_dir), f"checkpoint-{state.step}", "checkpoint ", fill,
                           state.step)


def save_final(output_dir: str | os.PathLike[str], model: Any, tokenizer: Any, cfg: Config,
               step: int) -> Path:
    """final/: a plain save_pretrained model + tokenizer + squadft_config.json, manifest last."""
    return _save_directory(Path(output_dir), "final", "",
                           lambda tmp: save_pretrained_dir(tmp, model, tokenizer, cfg), step)


def add_to_final(final_dir: str | os.PathLike[str], name: str, content: Any, step: int) -> None:
    """Write one more file into final/ (text as it is, anything else as JSON) and rewrite its
    manifest (still written last)."""
    final_dir = Path(final_dir)
    try:
        if isinstance(content, str):
            atomic_write_text(final_dir / name, content)
        else:
            atomic_write_json(final_dir / name, content)
        write_manifest(final_dir, step)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, final_dir / name)) from None


def rotate_checkpoints(output_dir: str | os.PathLike[str], keep: int,
                       protect: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (0 keeps all); returns deleted.

    `protect`: directories still being uploaded; they survive this rotation (and a later one
    removes them)."""
    if keep <= 0:
        return []
    complete = [p for p in list_checkpoints(output_dir) if (p / MANIFEST_NAME).is_file()]
    protected = {Path(p).resolve() for p in protect}
    deleted = []
    for path in complete[keep:]:
        if path.resolve() in protected:
            continue
        # drop the manifest first: a half-deleted directory must never look complete
        (path / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


# --- reading -------------------------------------------------------------------------------

@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainerState
    model_state: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng_states: dict[int, dict[str, Any]]


def load_model_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    return load_file(directory / "model.safetensors")


def load_checkpoint(directory: str | os.PathLike[str]) -> LoadedCheckpoint:
    directory = Path(directory)

    def load(name: str) -> Any:
        return torch.load(directory / name, map_location="cpu", weights_only=True)

    try:
        state = TrainerState.from_dict(json.loads((directory / TRAINER_STATE).read_text()))
        rng_states = {int(path.stem.rsplit("_", 1)[1]): load(path.name)
                      for path in directory.glob("rng_state_*.pt")}
        return LoadedCheckpoint(
            path=directory,
            state=state,
            model_state=load_model_state(directory),
            optimizer=load("optimizer.pt"),
            scheduler=load("scheduler.pt"),
            scaler=load("scaler.pt") if (directory / "scaler.pt").is_file() else None,
            rng_states=rng_states,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise StorageError(f"cannot read checkpoint {directory}: {exc}") from None

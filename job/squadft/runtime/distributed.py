"""Process-group set-up from torchrun's or Slurm's environment, and small collective helpers.

torchrun (single or multi-node) exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT. `srun python -m squadft train` without torchrun gives only Slurm's variables;
we translate them (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of
SLURM_JOB_NODELIST, a port derived from SLURM_JOB_ID) so both launch styles work.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from squadft.config import DEVICES
from squadft.errors import ConfigError

DEFAULT_MASTER_PORT = 29500
T = TypeVar("T")


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str | None
    master_port: int | None
    launcher: str  # "torchrun", "slurm" or "single"


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when not distributed
    # A gloo group for small host-side agreements (the per-step preemption flag): with NCCL,
    # a CUDA tensor + .item() would be a host<->device sync and an NCCL kernel on the critical
    # path every step. None: use the default group (already on the CPU with gloo).
    cpu_group: Any = None
    # A gloo group with a long timeout for waiting on another process's data preparation.
    wait_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += char == "["
        depth -= char == "]"
        current += char
    parts.append(current)
    return [p for p in parts if p]


def _expand_ranges(spec: str) -> list[str]:
    values = []
    for piece in spec.split(","):
        low, _, high = piece.partition("-")
        if not high:
            values.append(low)
            continue
        width = len(low)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm hostlist syntax: 'gpu[01-03,07],cpu5' -> gpu01, gpu02, gpu03, gpu07, cpu5."""
    hosts = []
    for item in _split_top_level(nodelist.strip()):
        names = [""]
        for literal, ranges in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", item):
            names = [n + literal for n in names]
            if ranges:
                names = [n + value for n in names for value in _expand_ranges(ranges)]
        hosts.extend(names)
    if not hosts:
        raise ConfigError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    return hosts


def first_host(nodelist: str) -> str:
    return expand_nodelist(nodelist)[0]


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Who launched us: torchrun (RANK/WORLD_SIZE), srun without torchrun, or nothing."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        port = env.get("MASTER_PORT")
        return LaunchInfo(
            rank=_int_env(env, "RANK"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            world_size=_int_env(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(port) if port else None,
            launcher="torchrun",
        )
    # SLURM_STEP_ID is set by srun only; a plain `python` in an sbatch script must not wait
    # for SLURM_NTASKS peers that were never started.
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        tasks_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        world_size = _int_env(env, tasks_var) if tasks_var in env else 1
        if world_size > 1:
            if "MASTER_PORT" in env:
                port = _int_env(env, "MASTER_PORT")
            elif "SLURM_JOB_ID" in env:
                # one port per job, so two jobs sharing a node do not collide
                port = 10000 + _int_env(env, "SLURM_JOB_ID") % 20000
            else:
                port = DEFAULT_MASTER_PORT
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
            if not env.get("MASTER_ADDR") and not nodelist:
                raise ConfigError("srun launch without SLURM_JOB_NODELIST or MASTER_ADDR")
            return LaunchInfo(
                rank=_int_env(env, "SLURM_PROCID"),
                local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                world_size=world_size,
                master_addr=env.get("MASTER_ADDR") or first_host(nodelist or ""),
                master_port=port,
                launcher="slurm",
            )
    return LaunchInfo(0, 0, 1, None, None, "single")


# Waits for another process's data preparation (a full SQuAD download and tokenization on a
# slow link or a small CPU share) use their own gloo group with this timeout, not the default
# group's 30 minutes: preparation must never die of a collective timeout.
PREPARE_TIMEOUT = timedelta(hours=6)


def gpu_request(env: Mapping[str, str]) -> str | None:
    """Why the launcher expects this process to have a GPU (a variable it set), or None.

    Slurm sets CUDA_VISIBLE_DEVICES and SLURM_*GPUS* for jobs with GPUs; the Kubernetes GPU
    manifests set SQUADFT_DEVICE=cuda instead (the device plugin's NVIDIA_VISIBLE_DEVICES is
    also "all" in CUDA images run without GPUs, so it proves nothing).
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = env.get(name, "").strip()
        if value and value != "0":
            return f"{name}={value}"
    return None


def resolve_device(requested: str = "auto", env: Mapping[str, str] | None = None,
                   local_rank: int = 0) -> torch.device:
    """The device for --device (auto, cuda, cpu). "auto" is the GPU when torch sees one and
    the CPU otherwise, except that a process its launcher gave GPUs never falls back to the
    CPU silently (a CUDA/driver mismatch would otherwise train for days on the CPU)."""
    if requested not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (got {requested!r})")
    if requested == "cpu":
        return torch.device("cpu")
    env = os.environ if env is None else env
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    why = "--device cuda" if requested == "cuda" else gpu_request(env)
    if why is None:
        return torch.device("cpu")
    build = (f"this torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
             else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU: "
             "driver missing or older than the CUDA runtime, or no /dev/nvidia* in the "
             "container")
    raise ConfigError(f"a GPU was requested ({why}) but {build}; fix the image or node, or "
                      "pass --device cpu (SQUADFT_DEVICE=cpu) to run on the CPU on purpose")


def setup_distributed(env: Mapping[str, str] | None = None, *, device: str = "auto",
                      timeout: timedelta = timedelta(minutes=30),
                      prepare_timeout: timedelta = PREPARE_TIMEOUT) -> DistributedContext:
    """Initialise the process group (NCCL on CUDA, gloo on CPU) when launched with >1 process.

    `timeout` bounds every training collective (a hung peer); waits for data preparation use
    a separate gloo group bounded by `prepare_timeout` (see prepare_in_turn).
    """
    info = detect_launch(env)
    torch_device = resolve_device(device, os.environ if env is None else env, info.local_rank)
    cuda = torch_device.type == "cuda"
    if cuda:
        torch.cuda.set_device(torch_device)
    if info.world_size == 1:
        return DistributedContext(0, 0, 1, torch_device, None)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if info.launcher == "slurm":
            os.environ.setdefault("MASTER_ADDR", str(info.master_addr))
            os.environ.setdefault("MASTER_PORT", str(info.master_port))
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size, timeout=timeout,
                                **({"device_id": torch_device} if cuda else {}))
    cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    wait_group = dist.new_group(backend="gloo", timeout=prepare_timeout)
    return DistributedContext(info.rank, info.local_rank, info.world_size, torch_device,
                              backend, cpu_group, wait_group)


def prepare_in_turn(ctx: DistributedContext, first: Callable[[], T],
                    others: Callable[[], T]) -> T:
    """Data preparation without a stampede and without collective timeouts.

    Rank 0 runs `first` (download, verify, tokenize into the cache). Then the first process
    of every other node runs `others`: a cache hit on a shared filesystem, its own build on a
    node-local cache (nodes build in parallel, one process each). Then every remaining
    process runs `others`, a cache hit on its node. Processes that wait block in a barrier of
    a gloo group with PREPARE_TIMEOUT (host sockets: no GPU spinning, no NCCL timeout); if the
    preparing process fails, the waiting ones see its connection close, or torchrun stops them.
    """
    if not ctx.is_distributed:
        return first()
    result = first() if ctx.is_main else None
    wait_for_peers(ctx)
    if result is None and ctx.local_rank == 0:
        result = others()
    wait_for_peers(ctx)
    return others() if result is None else result


def current_group() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one. For code that
    runs under any command (inference) and is handed no DistributedContext."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wait_for_peers(ctx: DistributedContext) -> None:
    """A barrier for waits that may last long (data preparation): gloo, PREPARE_TIMEOUT."""
    if ctx.is_distributed:
        dist.barrier(group=ctx.wait_group)


def cleanup(ctx: DistributedContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def any_rank(ctx: DistributedContext, flag: bool) -> bool:
    """True on every rank if `flag` is true on at least one (e.g. a preemption signal)."""
    if not ctx.is_distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)  # host memory, always
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=ctx.cpu_group)
    return bool(tensor.item() > 0)


def all_reduce_sum(ctx: DistributedContext, values: list[float]) -> list[float]:
    if not ctx.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# The *_object collectives pickle tensors through torch's legacy storage path, which fails
# for some tensors (e.g. RNG states) in recent torch; sending torch.save bytes avoids it.
def _pack(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    # our own ranks' data, never a file from outside
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def gather_to_main(ctx: DistributedContext, obj: Any) -> list[Any] | None:
    """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, _pack(obj))
    return [_unpack(data) for data in gathered] if ctx.is_main else None


def broadcast_from_main(ctx: DistributedContext | None, obj: Any) -> Any:
    """Rank 0's `obj` on every rank; `ctx` None: of the current process group, if any."""
    rank, world_size = (ctx.rank, ctx.world_size) if ctx is not None else current_group()
    if world_size == 1:
        return obj
    box = [_pack(obj) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return obj if rank == 0 else _unpack(box[0])

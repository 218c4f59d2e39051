from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from squadft.errors import ConfigError
from squadft.runtime.distributed import (
    any_rank,
    detect_launch,
    expand_nodelist,
    first_host,
    gpu_request,
    prepare_in_turn,
    resolve_device,
    setup_distributed,
)


@pytest.mark.parametrize("nodelist, hosts", [
    ("node07", ["node07"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("gpu[9-11],cpu5", ["gpu9", "gpu10", "gpu11", "cpu5"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("a,b[2,4]", ["a", "b2", "b4"]),
])
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


def test_torchrun_environment() -> None:
    info = detect_launch({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4",
                          "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400",
                          "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"})
    assert (info.launcher, info.rank, info.local_rank, info.world_size) == ("torchrun", 3, 1, 4)
    assert (info.master_addr, info.master_port) == ("10.0.0.1", 29400)


def test_srun_without_torchrun() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": "gpu[003-006]", "SLURM_JOB_ID": "123456"}
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.local_rank, info.world_size) == ("slurm", 5, 1, 8)
    assert info.master_addr == "gpu003"
    assert info.master_port == 10000 + 123456 % 20000
    assert detect_launch({**env, "MASTER_PORT": "1234"}).master_port == 1234


def test_sbatch_script_without_srun_is_a_single_process() -> None:
    # sbatch sets SLURM_PROCID/SLURM_NTASKS for the batch script itself; only srun starts peers
    info = detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"})
    assert (info.launcher, info.world_size) == ("single", 1)


def test_bad_rank_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RANK"):
        detect_launch({"RANK": "x", "WORLD_SIZE": "2"})


def test_single_process_context() -> None:
    ctx = setup_distributed({})
    assert ctx.world_size == 1 and ctx.is_main and not ctx.is_distributed
    assert ctx.device == torch.device("cpu") or ctx.device.type == "cuda"
    assert any_rank(ctx, True) and not any_rank(ctx, False)


def test_nccl_runs_get_a_gloo_group_and_the_stop_flag_never_touches_the_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fakes for the few torch.cuda / torch.distributed calls: no GPU here, and the point is
    which device and which group the per-step flag uses."""
    import torch.distributed as dist

    groups: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "new_group", lambda backend=None, timeout=None, **_:
                        groups.append(backend) or f"{backend}-group-{len(groups)}")
    ctx = setup_distributed({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert ctx.backend == "nccl" and ctx.device == torch.device("cuda", 1)
    # created once, at setup: the stop-flag group and the preparation-wait group
    assert groups == ["gloo", "gloo"] and ctx.cpu_group == "gloo-group-1"

    calls: list[tuple[torch.device, object]] = []

    def all_reduce(tensor: torch.Tensor, op: object = None, group: object = None) -> None:
        calls.append((tensor.device, group))
        tensor.fill_(1)  # another rank saw a signal

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert any_rank(ctx, False) is True
    assert calls == [(torch.device("cpu"), "gloo-group-1")]


# --- device choice: no silent CPU fallback ---------------------------------------------------

@pytest.mark.parametrize("env, why", [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": ""}, None),  # hidden on purpose
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),  # Slurm gres without device files
    ({"SLURM_GPUS_ON_NODE": "0"}, None),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
    ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
    ({"SLURM_JOB_GPUS": "2,3"}, "SLURM_JOB_GPUS=2,3"),
    # a CUDA base image says "all" even when run without --gpus: proves nothing
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, None),
])
def test_gpu_request(env: dict[str, str], why: str | None) -> None:
    assert gpu_request(env) == why


def test_a_requested_gpu_torch_cannot_use_is_an_error_not_a_cpu_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"CUDA_VISIBLE_DEVICES=0.*--device cpu"):
        resolve_device("auto", {"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(ConfigError, match="--device cuda"):
        resolve_device("cuda", {})
    with pytest.raises(ConfigError, match="SLURM_GPUS_ON_NODE"):
        setup_distributed({"SLURM_GPUS_ON_NODE": "1"})
    # said on purpose, or nothing asked for a GPU: the CPU
    assert resolve_device("cpu", {"CUDA_VISIBLE_DEVICES": "0"}) == torch.device("cpu")
    assert resolve_device("auto", {}) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device must be one of"):
        resolve_device("gpu", {})


def test_auto_takes_the_local_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto", {}, local_rank=5) == torch.device("cuda", 1)
    assert resolve_device("cpu", {}, local_rank=5) == torch.device("cpu")


def test_cli_refuses_a_requested_gpu_it_cannot_use(tiny_model_dir: Path) -> None:
    """End to end, on this GPU-less machine: one line, exit 2, and --device cpu runs."""
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    command = [sys.executable, "-m", "squadft", "predict", "--model", str(tiny_model_dir),
               "--question", "Who?", "--context", "Ada wrote it."]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "CUDA_VISIBLE_DEVICES=0" in refused.stderr
    assert "Traceback" not in refused.stderr
    allowed = subprocess.run(command + ["--device", "cpu"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout.splitlines()[0])["best_span"] in "Ada wrote it."


# --- data preparation in turn, on gloo with its own timeout ----------------------------------

SLOW_PREPARATION_S = 2.5  # rank 0's "download and tokenize": longer than the group timeout
GROUP_TIMEOUT_S = 1.0


def _prepare_worker(rank: int, port: int, log_dir: str) -> None:
    # 3 processes on 2 "nodes": ranks 0 and 1 on node A (local ranks 0, 1), rank 2 on node B
    local_rank = {0: 0, 1: 1, 2: 0}[rank]
    env = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": "3",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ.update(env)
    ctx = setup_distributed(env, device="cpu", timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    events: list[tuple[str, float, float]] = []

    def work(name: str, seconds: float) -> str:
        start = time.monotonic()
        time.sleep(seconds)  # stands for the work itself, not for synchronisation
        events.append((name, start, time.monotonic()))
        return name

    result = prepare_in_turn(ctx, lambda: work("first", SLOW_PREPARATION_S),
                             lambda: work("others", 0.3))
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps({"result": result,
                                                             "events": events}))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_prepare_in_turn_node_leaders_then_the_rest_without_collective_timeouts(
    tmp_path: Path,
) -> None:
    """Rank 0 prepares for longer than the training collectives' timeout; the waiting ranks
    must not time out (they wait on the long-timeout gloo group), the other node's first
    process goes next, and the remaining process only after it (a cache hit on its node)."""
    import torch.multiprocessing as mp

    mp.start_processes(_prepare_worker, args=(_free_port(), str(tmp_path)), nprocs=3,
                       start_method="spawn", join=True)
    logs = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(3)}
    assert [logs[rank]["result"] for rank in range(3)] == ["first", "others", "others"]
    assert all(len(logs[rank]["events"]) == 1 for rank in range(3))  # nobody prepared twice
    (_, _, first_end), = logs[0]["events"]
    (_, leader_start, leader_end), = logs[2]["events"]
    (_, rest_start, _), = logs[1]["events"]
    assert first_end <= leader_start  # the other node's leader waited for rank 0
    assert leader_end <= rest_start  # rank 1 waited for every node leader

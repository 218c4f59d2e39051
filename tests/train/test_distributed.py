from __future__ import annotations

import pytest
import torch
from squadft.errors import ConfigError
from squadft.train.distributed import (
    any_rank,
    detect_launch,
    expand_nodelist,
    first_host,
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
    monkeypatch.setattr(dist, "new_group", lambda backend=None, **_: groups.append(backend)
                        or f"{backend}-group")
    ctx = setup_distributed({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert ctx.backend == "nccl" and ctx.device == torch.device("cuda", 1)
    assert groups == ["gloo"] and ctx.cpu_group == "gloo-group"  # created once, at setup

    calls: list[tuple[torch.device, object]] = []

    def all_reduce(tensor: torch.Tensor, op: object = None, group: object = None) -> None:
        calls.append((tensor.device, group))
        tensor.fill_(1)  # another rank saw a signal

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert any_rank(ctx, False) is True
    assert calls == [(torch.device("cpu"), "gloo-group")]

"""Driving the real single-node Slurm of the CI machines from tests (see .ci/slurm-up.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLURM_UP = REPO / ".ci" / "slurm-up.sh"
TRAIN_SCRIPT = REPO / "slurm" / "train.sh"
POLL_S = 0.25


def run(argv: list[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def cluster_answers() -> bool:
    try:
        result = run(["sinfo", "-h", "-o", "%T"], timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and any(
        state.rstrip("*") in {"idle", "mixed", "allocated"} for state in result.stdout.split()
    )


def cluster_config() -> dict[str, str]:
    """The running slurmctld's configuration (`scontrol show config`), by parameter name."""
    result = run(["scontrol", "show", "config"], timeout=20)
    config = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def cluster_binds_tasks() -> bool:
    """Whether the running cluster pins tasks to CPUs as .ci/slurm-up.sh configures it (an
    older one, with task/none, would let a test of the CPUs a step gets pass regardless)."""
    return cluster_config().get("TaskPlugin") == "task/affinity"


def ensure_cluster() -> None:
    """Start the local Slurm with .ci/slurm-up.sh unless it already answers with tasks bound to
    CPUs (needs root); slurm-up.sh rewrites an outdated configuration and restarts the daemons."""
    if cluster_answers() and cluster_binds_tasks():
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            f"Slurm is not running, or not as {SLURM_UP} configures it, and that needs root"
        )
    result = run(["bash", str(SLURM_UP)], timeout=300)
    if result.returncode != 0 or not cluster_answers() or not cluster_binds_tasks():
        raise RuntimeError(f"{SLURM_UP} failed:\n{result.stdout}\n{result.stderr}")


def job_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The submitting environment (sbatch exports it): this venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def job_fields(job_id: str) -> dict[str, str]:
    result = run(["scontrol", "show", "job", "-o", job_id], timeout=20)
    assert result.returncode == 0, result.stderr
    fields = {}
    for token in result.stdout.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def wait_until(
    condition: Callable[[], bool], deadline_s: float, describe: Callable[[], str]
) -> None:
    """Poll `condition` until it holds; fail with `describe()` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s: {describe()}")
        time.sleep(POLL_S)


def node_idle() -> bool:
    result = run(["sinfo", "-h", "-o", "%T"], timeout=10)
    return result.stdout.split() == ["idle"]


def submit(args: list[str], env: Mapping[str, str], workdir: Path) -> str:
    result = run(
        ["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *args],
        env=job_environment(env),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]

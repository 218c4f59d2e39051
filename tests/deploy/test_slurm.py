"""slurm/train.sh on a real single-node Slurm: header, launchers, signal forwarding, requeue.

The cluster is the tests' own (tests/deploy/slurm_cluster.py): started for this module with a
private configuration, munged and ports, and stopped when it ends, so a Slurm already on the
machine is left as it was. It needs root; without root these tests are skipped, saying so. The
mechanics tests use SQUADFT_CMD with tests/deploy/standin_trainer.py,
which reacts to signals like squadft but needs no training; the last test runs the real
`squadft train` with a tiny model through the same script, preempts it and lets it resume.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.slurm_cluster import (
    NEEDS_ROOT,
    REPO,
    TRAIN_SCRIPT,
    LocalSlurm,
    cluster_config,
    job_fields,
    node_idle,
    run,
    sbatch_options,
    submit,
    wait_until,
)

STANDIN = Path(__file__).with_name("standin_trainer.py")
STANDIN_CMD = f"{sys.executable} {STANDIN}"
SHELL_SCRIPTS = [TRAIN_SCRIPT, REPO / ".ci" / "run", REPO / ".ci" / "build-image.sh"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
LAUNCHERS = ["torchrun", "srun"]


@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)
    cluster = LocalSlurm()
    with pytest.MonkeyPatch.context() as patch:
        try:
            cluster.start()
            patch.setenv("SLURM_CONF", str(cluster.conf))  # sbatch, scontrol, srun: this one
            yield cluster
        finally:
            cluster.stop()


def finished(job_id: str) -> bool:
    return job_fields(job_id)["JobState"] in FINISHED


def wait_finished(job_id: str, log: Path, deadline_s: float = 120) -> dict[str, str]:
    wait_until(lambda: finished(job_id), deadline_s, lambda: f"{job_fields(job_id)}\n{read(log)}")
    return job_fields(job_id)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else f"<{path} missing>"


def preempt_and_resume(job_id: str, log: Path, ready: Path | str) -> dict[str, str]:
    """USR1 to the batch shell, as --signal=B:USR1@120 does; then release the requeued job.

    `ready`: a file, or a glob pattern, whose appearance means the job is far enough along."""
    pattern = str(ready)

    def appeared() -> bool:
        return bool(glob.glob(pattern))

    wait_until(appeared, 120, lambda: f"{pattern} never appeared\n{read(log)}")
    result = run(["scancel", "--signal=USR1", "--batch", job_id])
    assert result.returncode == 0, result.stderr

    def requeued() -> bool:
        fields = job_fields(job_id)
        return fields["JobState"] == "PENDING" and fields["Restarts"] == "1"

    wait_until(requeued, 90, lambda: f"{job_fields(job_id)}\n{read(log)}")
    requeued_at = math.floor(time.time())
    # A requeued job is held ~120 s; release it once the node has cleaned up after the first
    # run and the clock has passed the second in which the requeue revoked the job's
    # credential (slurmd refuses a credential created in that second or before it).
    wait_until(node_idle, 60, lambda: run(["sinfo"]).stdout)
    wait_until(lambda: time.time() >= requeued_at + 1, 5, lambda: "clock did not advance")
    result = run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
    assert result.returncode == 0, result.stderr
    return wait_finished(job_id, log, deadline_s=180)


# --- static checks ---------------------------------------------------------------------------


def test_shell_scripts_pass_shellcheck() -> None:
    tool = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    result = subprocess.run(
        [tool, "--severity=style", *map(str, SHELL_SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_header_asks_for_the_preemption_contract() -> None:
    header = sbatch_options()
    assert header["--ntasks-per-node"] == "1"  # one torchrun per node
    assert int(header["--gpus-per-node"]) >= 1
    assert int(header["--cpus-per-task"]) >= 1
    assert header["--signal"].startswith("B:USR1@")
    assert int(header["--signal"].split("@")[1]) >= 60
    assert "--requeue" in header and header["--open-mode"] == "append"
    assert "%j" in header["--output"]
    assert header["--time"]


def test_the_cluster_is_the_tests_own_and_binds_tasks(slurm: LocalSlurm) -> None:
    config = cluster_config()
    assert config["SLURM_CONF"] == str(slurm.conf)
    assert config["ClusterName"] == "squadft-test"
    assert str(slurm.root) in config["AuthInfo"]  # its own munged, not the machine's
    # an older cluster with task/none would let the CPU-binding test below pass regardless
    assert config["TaskPlugin"] == "task/affinity"
    assert not str(slurm.conf).startswith("/etc/")


def test_sbatch_test_only_accepts_the_script_as_written(slurm: LocalSlurm) -> None:
    result = run(["sbatch", "--test-only", str(TRAIN_SCRIPT)])
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr


def test_unknown_launcher_is_a_configuration_error(slurm: LocalSlurm, tmp_path: Path) -> None:
    job_id = submit([str(TRAIN_SCRIPT)], {"SQUADFT_LAUNCHER": "mpirun"}, tmp_path)
    log = tmp_path / f"slurm-{job_id}.out"
    fields = wait_finished(job_id, log)
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "2:0"
    assert "SQUADFT_LAUNCHER must be torchrun or srun" in read(log)


# --- the mechanics, with the stand-in trainer ----------------------------------------------


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_job_completes(slurm: LocalSlurm, tmp_path: Path, launcher: str) -> None:
    out = tmp_path / "run"
    env = {"SQUADFT_CMD": STANDIN_CMD, "SQUADFT_LAUNCHER": launcher}
    job_id = submit([str(TRAIN_SCRIPT), "--output-dir", str(out)], env, tmp_path)
    log = tmp_path / f"slurm-{job_id}.out"
    fields = wait_finished(job_id, log)
    text = read(log)
    assert fields["JobState"] == "COMPLETED", text
    assert fields["Restarts"] == "0"
    # Launched through torchrun (or Slurm's own ranks), the program saw a rank and world size.
    assert "standin: start rank=0 world=1 SLURM_RESTART_COUNT=0" in text
    assert f"launcher {launcher}" in text
    assert json.loads((out / "final.json").read_text()) == {"resumed_from": None}


@pytest.mark.parametrize(("launcher", "nproc"), [("torchrun", 1), ("torchrun", 2), ("srun", 1)])
def test_training_processes_may_use_every_cpu_of_the_allocation(
    slurm: LocalSlurm, tmp_path: Path, launcher: str, nproc: int
) -> None:
    """Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task: a step that does not
    ask for the CPUs again runs each task with one, and where tasks are bound to CPUs (the test
    cluster binds them, see slurm_cluster.py) torchrun and all its workers share that one CPU.
    Each training process must be able to run on all the CPUs its task was allocated."""
    # Two CPUs tell "one CPU" from "all of them" and fit any machine with two: the cluster's
    # pretend CPUs fold onto the real ones, so a task can be bound to at most that many.
    cpus = 2
    if (os.cpu_count() or 1) < cpus:
        pytest.skip(f"needs a machine with {cpus} CPUs to see a task bound to fewer")
    out = tmp_path / "run"
    env = {
        "SQUADFT_CMD": STANDIN_CMD,
        "SQUADFT_LAUNCHER": launcher,
        "SQUADFT_NPROC_PER_NODE": str(nproc),
        "OMP_NUM_THREADS": "",  # as if unset (sbatch exports ours): the script picks
    }
    job_id = submit(
        [f"--cpus-per-task={cpus}", str(TRAIN_SCRIPT), "--output-dir", str(out)], env, tmp_path
    )
    log = tmp_path / f"slurm-{job_id}.out"
    fields = wait_finished(job_id, log)
    text = read(log)
    assert fields["JobState"] == "COMPLETED", text
    allocated = int(fields["CPUs/Task"])  # the allocation, as Slurm reports it
    assert allocated == cpus and int(fields["NumCPUs"]) == cpus, fields
    for rank in range(nproc):
        seen = json.loads((out / f"cpus-rank{rank}.json").read_text())
        # every worker of the node's one torchrun (or the task's one process) may run on all of
        # the task's CPUs; the old script's step left each of them a single one
        assert seen["affinity"] == allocated, (rank, seen, text)
        assert seen["SLURM_CPUS_PER_TASK"] == seen["SRUN_CPUS_PER_TASK"] == str(allocated)
        # and uses its share of them for torch's threads (torchrun alone would have set 1)
        assert seen["OMP_NUM_THREADS"] == str(max(1, allocated // nproc)), seen
    assert f"{allocated} CPUs per task" in text


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_usr1_checkpoints_requeues_and_resumes(
    slurm: LocalSlurm, tmp_path: Path, launcher: str
) -> None:
    out = tmp_path / "run"
    env = {"SQUADFT_CMD": STANDIN_CMD, "SQUADFT_LAUNCHER": launcher}
    job_id = submit(
        [str(TRAIN_SCRIPT), "--output-dir", str(out), "--wait-for-signal"], env, tmp_path
    )
    log = tmp_path / f"slurm-{job_id}.out"
    fields = preempt_and_resume(job_id, log, out / "started.json")
    text = read(log)
    assert fields["JobState"] == "COMPLETED", text
    assert fields["Restarts"] == "1"
    # Exactly one signal reached the trainer (a second one would have killed it), it wrote
    # its checkpoint, the script requeued, and the restart (count 1, same appended log)
    # resumed from that checkpoint.
    assert json.loads((out / "checkpoint.json").read_text()) == {"step": 7, "signal": "SIGUSR1"}
    assert "second signal" not in text
    assert "standin: got SIGUSR1, checkpoint at step 7, exiting 75" in text
    assert "requeueing (restart 1)" in text
    assert "standin: start rank=0 world=1 SLURM_RESTART_COUNT=1" in text
    assert "standin: resumed from step 7" in text
    assert json.loads((out / "final.json").read_text()) == {"resumed_from": 7}


def test_requeue_limit_stops_requeueing(slurm: LocalSlurm, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {"SQUADFT_CMD": STANDIN_CMD, "SQUADFT_MAX_REQUEUES": "0", "SQUADFT_LAUNCHER": "srun"}
    job_id = submit(
        [str(TRAIN_SCRIPT), "--output-dir", str(out), "--wait-for-signal"], env, tmp_path
    )
    log = tmp_path / f"slurm-{job_id}.out"
    wait_until((out / "started.json").exists, 120, lambda: read(log))
    assert run(["scancel", "--signal=USR1", "--batch", job_id]).returncode == 0
    fields = wait_finished(job_id, log)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", read(log)
    assert "not requeueing" in read(log)
    assert (out / "checkpoint.json").exists()


# --- the real trainer ----------------------------------------------------------------------


@pytest.mark.slow
def test_real_squadft_is_preempted_requeued_and_resumes(
    slurm: LocalSlurm, tmp_path: Path, tiny_model_dir: Path, sample_dir: Path
) -> None:
    out = tmp_path / "run"
    env = {
        "SQUADFT_SOURCE": sample_dir.as_uri(),
        "SQUADFT_TRAIN_FILE": "train-v2.0-first10.json.gz",
        "SQUADFT_DEV_FILE": "dev-v2.0-first12.json.gz",
        "SQUADFT_MODEL": str(tiny_model_dir),
        "SQUADFT_CACHE_DIR": str(tmp_path / "cache"),
        "SQUADFT_NUM_WORKERS": "0",
        "SQUADFT_PRECISION": "fp32",
        # the cluster's GPU is pretend (/dev/null) but Slurm still sets CUDA_VISIBLE_DEVICES,
        # which squadft refuses to fall back from silently: run on the CPU on purpose
        "SQUADFT_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    args = [
        str(TRAIN_SCRIPT),
        "--output-dir",
        str(out),
        "--max-train-samples",
        "16",
        "--max-eval-samples",
        "8",
        "--max-seq-length",
        "128",
        "--doc-stride",
        "32",
        "--batch-size",
        "4",
        "--max-steps",
        "200",
        "--save-steps",
        "2",
        "--logging-steps",
        "2",
    ]
    job_id = submit(args, env, tmp_path)
    log = tmp_path / f"slurm-{job_id}.out"
    # any complete checkpoint (rotation may already have removed the first one); 200 steps
    # leave the signal ample time to land before the first run could finish on its own
    fields = preempt_and_resume(job_id, log, out / "checkpoint-*" / "manifest.json")
    text = read(log)
    assert fields["JobState"] == "COMPLETED", text
    assert fields["Restarts"] == "1"
    assert "on a preemption signal" in text, text
    assert "second SIGUSR1" not in text
    results = json.loads((out / "train_results.json").read_text())
    assert results["steps"] == 200
    assert results["resumed_from"] and "checkpoint-" in results["resumed_from"], results
    assert (out / "final" / "manifest.json").exists()
    assert "best_f1" in json.loads((out / "eval_results.json").read_text())

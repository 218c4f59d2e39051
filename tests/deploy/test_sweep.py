"""What `squadft sweep plan` writes for the schedulers: the Slurm array script passes
shellcheck, asks for what slurm/train.sh asks per task and, submitted to the tests' own Slurm
(tests/deploy/slurm_cluster.py), trains every trial; the Kubernetes Indexed Job is
schema-valid, self-contained, keeps k8s/train-job.yaml's restart rules, and one index runs
locally through its container command line (the image's ENTRYPOINT squadft + the args, its
volumes mapped to local directories) with JOB_COMPLETION_INDEX set."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from squadft.cli import app
from squadft.flows import sweep
from typer.testing import CliRunner

from tests.deploy.manifests import IMAGE, dangling_references, find
from tests.deploy.slurm_cluster import (
    NEEDS_ROOT,
    TRAIN_SCRIPT,
    LocalSlurm,
    job_environment,
    job_fields,
    run,
    sbatch_options,
    wait_until,
)
from tests.train.common import subprocess_env

K8S_VERSION = "1.34.0"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def plan(directory: Path, *flags: str) -> Path:
    result = CliRunner().invoke(app, ["sweep", "plan", str(directory), *flags])
    assert result.exit_code == 0, result.output
    return directory


def tiny_flags(sample_dir: Path, model_dir: Path, cache_dir: Path) -> list[str]:
    """Base settings of trials that take seconds: a few questions, one optimizer step, and
    still a held-out F1 (calibration) and a dev F1."""
    return ["--source", sample_dir.as_uri(), "--train-file", "train-v2.0-first10.json.gz",
            "--dev-file", "dev-v2.0-first12.json.gz", "--model", str(model_dir),
            "--cache-dir", str(cache_dir), "--max-train-samples", "16",
            "--max-calibration-samples", "12", "--max-eval-samples", "8",
            "--max-seq-length", "128", "--doc-stride", "32", "--max-query-length", "32",
            "--num-workers", "0", "--precision", "fp32", "--batch-size", "8",
            "--max-steps", "1", "--save-steps", "0", "--report-to", "none",
            # the test cluster's GPU is pretend: train on the CPU on purpose
            "--device", "cpu"]


def assert_trained(trial_dir: Path) -> float:
    """The trial ran to its end: state done, final/ with its calibration, dev results; its
    held-out F1."""
    state = json.loads((trial_dir / sweep.STATE_FILE).read_text())
    assert (state["state"], state["exit_code"]) == ("done", 0), state
    inference = json.loads((trial_dir / "final" / "squadft_inference.json").read_text())
    assert "f1" in json.loads((trial_dir / "eval_results.json").read_text())
    assert json.loads((trial_dir / "squadft_config.json").read_text())["output_dir"] == str(
        trial_dir)
    return inference["calibration"]["scores"]["f1"]


# --- Slurm: static checks --------------------------------------------------------------------


def test_array_script_passes_shellcheck(tmp_path: Path) -> None:
    directory = plan(tmp_path / "my sweep", "--grid", "epochs=1,2,3", "--max-parallel", "2")
    tool = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    result = subprocess.run([tool, "--severity=style", str(directory / sweep.SLURM_FILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_array_asks_per_task_what_train_sh_asks_and_delegates_to_it(tmp_path: Path) -> None:
    directory = plan(tmp_path / "lr", "--grid", "epochs=1,2,3", "--max-parallel", "2")
    script = directory / sweep.SLURM_FILE
    options, single = sbatch_options(script), sbatch_options(TRAIN_SCRIPT)
    assert options.pop("--array") == "0-2%2"  # --max-parallel is the array's %N
    assert options.pop("--job-name") == "squadft-sweep-lr"
    assert options.pop("--output") == f"{directory}/slurm-%A_%a.out"  # one log per task
    del single["--job-name"], single["--output"]
    # preemptible and requeued as one run: --signal=B:USR1@120, --requeue, --open-mode=append
    assert options == single
    # requeue and signal handling are train.sh's own, not a copy
    assert script.read_text().splitlines()[-2:] == [
        'export SQUADFT_CMD="${SQUADFT_CMD:-squadft} sweep"', f"exec {TRAIN_SCRIPT} {directory}"]
    assert os.access(script, os.X_OK)


def test_plan_without_train_sh_writes_the_kubernetes_job_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", "plan", str(tmp_path / "s"), "--grid",
                                      "epochs=1,2", "--train-script", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--train-script" in result.output, result.output
    there = plan(tmp_path / "s", "--grid", "epochs=1,2", "--train-script", str(TRAIN_SCRIPT))
    assert (there / sweep.SLURM_FILE).exists()


# --- Kubernetes ------------------------------------------------------------------------------


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))[:2]


def indexed_job_documents(directory: Path) -> list[dict[str, Any]]:
    text = (directory / sweep.K8S_FILE).read_text()
    assert "&id" not in text and "*id" not in text  # no YAML aliases: every object spelt out
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_indexed_job_is_schema_valid_and_self_contained(tmp_path: Path) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions

    directory = plan(tmp_path / "Sweep_A", "--grid", "epochs=1,2,3", "--max-parallel", "2")
    documents = indexed_job_documents(directory)
    # every version from the one the header claims (as k8s/train-job.yaml's) to the newest
    (minimum,) = re.findall(r"Needs Kubernetes (\d+\.\d+) or newer",
                            (directory / sweep.K8S_FILE).read_text())
    versions = sorted({v for v in all_versions() if version_key(v) >= version_key(minimum)},
                      key=version_key)
    assert versions[0] == f"{minimum}.0" and K8S_VERSION in versions
    for version in versions:
        for doc in documents:
            kubernetes_validate.validate(doc, version, strict=True)
    assert dangling_references(documents) == []
    tool = shutil.which("kubernetes-validate") or str(
        Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([tool, "--strict", "-k", K8S_VERSION, str(directory / sweep.K8S_FILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ERROR" not in result.stdout, result.stdout + result.stderr
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert json.loads(config_map["data"][sweep.PLAN_FILE]) == sweep.load_plan(directory)


def test_indexed_job_keeps_train_job_restart_rules_per_index(tmp_path: Path) -> None:
    directory = plan(tmp_path / "lr", "--grid", "epochs=1,2,3", "--max-parallel", "2")
    (job,) = [d for d in indexed_job_documents(directory) if d["kind"] == "Job"]
    single = find("Job", "squadft-train")
    spec, single_spec = job["spec"], single["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
    # the same rules, per trial: exit 75 and disruptions restart the pod; exit 2, 3, 7, 8 end
    # that trial (FailIndex) rather than the whole sweep; other failures retried as often
    expected = json.loads(json.dumps(single_spec["podFailurePolicy"]).replace("FailJob",
                                                                               "FailIndex"))
    assert spec["podFailurePolicy"] == expected
    assert spec["backoffLimitPerIndex"] == single_spec["backoffLimit"]
    for key in ("podReplacementPolicy", "ttlSecondsAfterFinished"):
        assert spec[key] == single_spec[key], key
    pod, single_pod = spec["template"]["spec"], single_spec["template"]["spec"]
    for key in ("restartPolicy", "terminationGracePeriodSeconds", "securityContext"):
        assert pod[key] == single_pod[key], key
    (container,), (single_container,) = pod["containers"], single_pod["containers"]
    for key in ("name", "image", "imagePullPolicy", "resources", "securityContext"):
        assert container[key] == single_container[key], key
    assert container["image"] == IMAGE and "command" not in container  # ENTRYPOINT squadft
    assert container["args"][:3] == ["sweep", "train", "/workspace/sweeps/lr"]


def container_command_line(documents: list[dict[str, Any]], root: Path
                           ) -> tuple[list[str], dict[str, str], dict[str, Path]]:
    """The Indexed Job's container as a local process: ENTRYPOINT squadft + args, its literal
    environment, each volume a local directory (a ConfigMap's keys written as files), every
    mount path in the args and the environment replaced by that directory."""
    (job,) = [d for d in documents if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_maps = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ConfigMap"}
    mounts: dict[str, Path] = {}
    for volume in pod["volumes"]:
        local = root / volume["name"]
        local.mkdir(parents=True)
        if "configMap" in volume:
            for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
                (local / key).write_text(text)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        mounts[mount["mountPath"]] = local

    def local(value: str) -> str:
        for path, directory in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(directory) + value[len(path):]
        return value

    entrypoint = str(Path(sys.executable).parent / "squadft")
    argv = [entrypoint, *map(local, container["args"])]
    env = {e["name"]: local(e["value"]) for e in container["env"] if "value" in e}
    return argv, env, mounts


@pytest.mark.slow  # one real training process: ~9 s of CPU
def test_one_index_runs_through_the_container_command_line(
    tmp_path: Path, sample_dir: Path, tiny_model_dir: Path
) -> None:
    directory = plan(tmp_path / "plan", "--grid", "learning_rate=1e-3,5e-4",
                     *tiny_flags(sample_dir, tiny_model_dir, tmp_path / "cache"))
    argv, env, mounts = container_command_line(indexed_job_documents(directory),
                                               tmp_path / "pod")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=subprocess_env(**env, JOB_COMPLETION_INDEX="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sweep trial trial-001 (2 of 2): learning_rate=0.0005" in proc.stdout
    sweep_dir = mounts["/workspace"] / "sweeps" / "plan"  # the pod's /workspace/sweeps/plan
    assert_trained(sweep_dir / "trial-001")
    assert not (sweep_dir / "trial-000").exists()
    # the plan came from the ConfigMap and was copied next to the trials, for `status`
    assert sweep.load_plan(sweep_dir)["trials"] == sweep.load_plan(directory)["trials"]
    rows = sweep.rank_trials(sweep_dir)
    assert [(r.name, r.state, r.chosen) for r in rows] == [("trial-001", "done", True),
                                                           ("trial-000", "pending", False)]


# --- a real Slurm array ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)
    cluster = LocalSlurm()
    with pytest.MonkeyPatch.context() as patch:
        try:
            cluster.start()
            patch.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
        finally:
            cluster.stop()


@pytest.mark.slow
def test_slurm_array_trains_every_trial_then_status_ranks_them(
    slurm: LocalSlurm, tmp_path: Path, sample_dir: Path, tiny_model_dir: Path
) -> None:
    directory = plan(tmp_path / "sweep", "--grid", "learning_rate=1e-3,5e-4", "--max-parallel",
                     "2", *tiny_flags(sample_dir, tiny_model_dir, tmp_path / "cache"))
    # the cluster has one pretend GPU: without asking for it both tasks run at once
    result = run(["sbatch", "--parsable", f"--chdir={tmp_path}", "--gpus-per-node=0",
                  str(directory / sweep.SLURM_FILE)],
                 env=job_environment({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}))
    assert result.returncode == 0, result.stderr
    array_id = result.stdout.strip().split(";")[0]
    tasks = [f"{array_id}_{index}" for index in range(2)]
    logs = [directory / f"slurm-{array_id}_{index}.out" for index in range(2)]

    def describe() -> str:
        return "\n".join(log.read_text() if log.exists() else f"<{log} missing>" for log in logs)

    def state(task: str) -> str | None:
        found = re.search(r"JobState=(\w+)", run(["scontrol", "show", "job", "-o", task]).stdout)
        return found[1] if found else None  # None: the array not yet split into tasks

    def done() -> bool:
        return all(state(task) in FINISHED for task in tasks)

    wait_until(done, 240, describe)
    for index, task in enumerate(tasks):
        fields = job_fields(task)
        assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), describe()
        assert fields["ArrayTaskId"] == str(index)
        assert f"sweep trial trial-00{index} ({index + 1} of 2)" in logs[index].read_text()
    heldout = [assert_trained(directory / f"trial-00{index}") for index in range(2)]
    status = subprocess.run([str(Path(sys.executable).parent / "squadft"), "sweep", "status",
                             str(directory)], capture_output=True, text=True, timeout=120,
                            env=subprocess_env())
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    best = max(range(2), key=lambda i: (heldout[i], -i))
    assert lines[1].split()[:4] == ["*", "1", f"trial-00{best}", "done"], status.stdout
    assert lines[2].split()[:3] == ["2", f"trial-00{1 - best}", "done"], status.stdout
    assert "the selection never saw dev" in status.stdout

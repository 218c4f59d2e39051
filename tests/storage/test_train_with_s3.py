"""`squadft train --s3-uri` as users run it: a real process, a real SIGTERM, SeaweedFS.

The pipeline's own wiring (no hooks passed in): the uploader checks access before training,
the preemption checkpoint reaches the bucket before the exit with code 75, and a run on an
empty output directory (another node) resumes from the bucket and finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from squadft.errors import EXIT_PREEMPTED, EXIT_STORAGE
from squadft.storage.checkpoints import list_remote_checkpoints
from squadft.storage.s3 import S3Location

from tests.storage.conftest import ACCESS_KEY, SECRET_KEY, SeaweedServer
from tests.train.common import REPO_ROOT, run, run_settings, squadft_command, subprocess_env

pytestmark = pytest.mark.slow


def s3_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, **extra)
    return env


def test_sigterm_uploads_the_preemption_checkpoint_then_another_node_resumes(
    tmp_path: Path, sample_dir: Path, tiny_model_dir: Path, seaweed: SeaweedServer,
    bucket: str, admin_client: Any,
) -> None:
    base = S3Location(bucket, "job")

    def settings(output: str, **changes: Any) -> dict[str, Any]:
        return run_settings(sample_dir, tiny_model_dir, tmp_path / "cache",
                            output_dir=str(tmp_path / output), save_steps=3,
                            save_total_limit=2, s3_uri=f"s3://{bucket}/job",
                            s3_endpoint_url=seaweed.endpoint, **changes)

    log = tmp_path / "node-a.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            squadft_command(settings("node-a", max_steps=100_000)), stdout=handle,
            stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=s3_env())
    try:
        # the first checkpoint complete in the bucket means training is under way
        end = time.monotonic() + 180
        while not list_remote_checkpoints(admin_client, base):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < end, "no checkpoint reached the bucket"
            time.sleep(0.05)  # polling interval, not synchronisation
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert code == EXIT_PREEMPTED, text[-3000:]
    assert SECRET_KEY not in text
    local = sorted((tmp_path / "node-a").glob("checkpoint-*/manifest.json"))
    newest_local = max(int(p.parent.name.split("-")[1]) for p in local)
    remote_steps = [c.step for c in list_remote_checkpoints(admin_client, base)]
    # the checkpoint written on SIGTERM is complete in the bucket before the process exits
    assert remote_steps[0] == newest_local, (remote_steps, newest_local, text[-2000:])

    # another node: empty output dir, same bucket -> resumes from the bucket and finishes
    target = newest_local + 3
    resumed = run(squadft_command(settings("node-b", max_steps=target)), env=s3_env(),
                  timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((tmp_path / "node-b" / "train_results.json").read_text())
    assert results["steps"] == target
    assert results["resumed_from"].endswith(f"checkpoint-{newest_local}")
    assert admin_client.head_object(Bucket=bucket, Key="job/final/manifest.json")


def test_wrong_credentials_fail_before_training(
    tmp_path: Path, sample_dir: Path, tiny_model_dir: Path, seaweed: SeaweedServer, bucket: str,
) -> None:
    settings = run_settings(sample_dir, tiny_model_dir, tmp_path / "cache", max_steps=5,
                            output_dir=str(tmp_path / "out"), s3_uri=f"s3://{bucket}/job",
                            s3_endpoint_url=seaweed.endpoint)
    env = s3_env()
    env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-0123456789"
    done = run(squadft_command(settings), env=env, timeout=180)
    assert done.returncode == EXIT_STORAGE, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "wrong-secret" not in done.stderr + done.stdout
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # no training started

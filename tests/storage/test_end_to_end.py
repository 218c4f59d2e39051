"""A tiny real training run uploads its checkpoints to SeaweedFS; the node is lost after
checkpoint-4; a second run on an EMPTY output directory resumes from the bucket and ends with
the same weights as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from squadft.config import Config
from squadft.flows import training
from squadft.storage.checkpoints import (
    CheckpointUploader,
    list_remote_checkpoints,
    remote_finder,
)
from squadft.storage.s3 import S3Location

from tests.storage.conftest import SeaweedServer
from tests.train.common import load_weights, max_weight_difference, run_settings


class NodeLost(Exception):
    pass


@pytest.mark.slow
def test_resume_from_bucket_on_a_new_node(
    tmp_path: Path, sample_dir: Path, tiny_model_dir: Path, seaweed: SeaweedServer, bucket: str,
    admin_client: Any,
) -> None:
    def settings(output: str, **changes: Any) -> Config:
        values = run_settings(sample_dir, tiny_model_dir, tmp_path / "cache", max_steps=6,
                              save_steps=2, save_total_limit=2, output_dir=str(tmp_path / output),
                              s3_uri=f"s3://{bucket}/run", s3_endpoint_url=seaweed.endpoint)
        return Config(**{**values, **changes})

    reference = settings("reference", s3_uri=None)
    training.train(reference)

    first = settings("node-a")
    uploader = CheckpointUploader.from_config(first)

    def upload_then_die_after_step_4(path: Path) -> None:
        uploader.submit(path)
        if path.name == "checkpoint-4":
            assert uploader.wait(timeout=60)
            raise NodeLost

    with pytest.raises(NodeLost):
        training.train(first, on_checkpoint=upload_then_die_after_step_4,
                       remote_finder=remote_finder(first))
    uploader.close(timeout=60)
    base = S3Location(bucket, "run")
    assert [c.step for c in list_remote_checkpoints(admin_client, base)] == [4, 2]

    second = settings("node-b")
    uploader = CheckpointUploader.from_config(second)
    result = training.train(second, on_checkpoint=uploader.submit,
                            remote_finder=remote_finder(second))
    uploader.close(timeout=60)
    assert result.resumed_from == str(tmp_path / "node-b" / "checkpoint-4")
    assert max_weight_difference(load_weights(tmp_path / "node-b" / "final"),
                                 load_weights(tmp_path / "reference" / "final")) == 0
    assert [c.step for c in list_remote_checkpoints(admin_client, base)] == [6, 4]
    assert admin_client.head_object(Bucket=bucket, Key="run/final/manifest.json")


@pytest.mark.slow
def test_a_new_node_makes_final_from_the_best_checkpoint_kept_in_the_bucket(
    tmp_path: Path, sample_dir: Path, tiny_model_dir: Path, seaweed: SeaweedServer, bucket: str,
    admin_client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held-out F1 peaks at step 4 of 8; the pipeline's own uploader (save_total_limit 1)
    keeps checkpoint-4 in the bucket as the best. The node is lost once checkpoint-6 is
    uploaded; a run on an empty output directory resumes from the bucket with the record of
    the evaluations, evaluates step 8 only, and fetches step 4's weights for final/."""
    from tests.train.test_selection import ScriptedHeldOut

    held_out = ScriptedHeldOut({2: 30.0, 4: 50.0, 6: 40.0, 8: 45.0})
    held_out.install(monkeypatch)
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    submit = CheckpointUploader.submit

    def upload_then_die_after_step_6(self: CheckpointUploader, path: Path) -> None:
        submit(self, path)
        if path == node_a / "checkpoint-6":
            assert self.wait(timeout=60)  # uploaded, and the bucket pruned
            raise NodeLost

    monkeypatch.setattr(CheckpointUploader, "__call__", upload_then_die_after_step_6)

    def settings(output: Path) -> Config:
        return Config(**run_settings(
            sample_dir, tiny_model_dir, tmp_path / "cache", max_steps=8, eval_steps=2,
            save_total_limit=1, output_dir=str(output), s3_uri=f"s3://{bucket}/run",
            s3_endpoint_url=seaweed.endpoint))

    with pytest.raises(NodeLost):
        training.train(settings(node_a))
    base = S3Location(bucket, "run")
    assert [c.step for c in list_remote_checkpoints(admin_client, base)] == [6, 4]

    held_out.calls.clear()
    result = training.train(settings(node_b))
    assert result.resumed_from == str(node_b / "checkpoint-6")
    assert held_out.calls == [8]  # 2, 4 and 6 came with the checkpoint from the bucket
    assert result.selection["chosen_step"] == 4
    assert [p["f1"] for p in result.selection["held_out_curve"]] == [30.0, 50.0, 40.0, 45.0]
    # step 4's weights were never on node-b's disk: fetched from the bucket for final/
    assert max_weight_difference(load_weights(node_b / "final"),
                                 load_weights(node_a / "checkpoint-4")) == 0
    assert max_weight_difference(load_weights(node_b / "final"),
                                 load_weights(node_b / "checkpoint-8")) > 0
    # the best stays in the bucket next to the newest, whatever save_total_limit says
    assert [c.step for c in list_remote_checkpoints(admin_client, base)] == [8, 4]
    assert admin_client.head_object(Bucket=bucket, Key="run/final/manifest.json")

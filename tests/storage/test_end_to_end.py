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

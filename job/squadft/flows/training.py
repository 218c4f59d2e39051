"""`squadft train`: the whole job, read top-down in `train`.

Set up (process group, preemption watcher, output directory, trackers, uploads) -> prepare
(tokenizer, data in turn, a new model) -> work (train, save final/, calibrate) -> outputs (the
last upload, the dev evaluation). Every resource is released by one ExitStack, in reverse
order, whatever happens: the trackers learn how the run ended, the signal handlers are
restored, the process group is torn down.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.console import say, warn
from squadft.errors import StorageError
from squadft.evaluate.calibration import INFERENCE_FILE, Calibration, InferenceSettings
from squadft.flows.evaluation import calibrate_model, evaluate_dev
from squadft.flows.preparation import PreparedData, PreparedSplit, prepare, remove_leftovers
from squadft.io import ensure_writable_dir, uninterruptible
from squadft.modeling import check_window, load_model, load_tokenizer
from squadft.runtime.distributed import (
    DistributedContext,
    barrier,
    cleanup,
    prepare_in_turn,
    setup_distributed,
)
from squadft.runtime.preemption import PreemptionWatcher
from squadft.train.checkpoint import RemoteFinder, add_to_final, check_resume_path, seed_everything
from squadft.train.loop import OnCheckpoint, TrainResult, train_model
from squadft.train.tracking import FINISHED, MetricsLogger


def train(cfg: Config, *, on_checkpoint: OnCheckpoint | None = None,
          remote_finder: RemoteFinder | None = None) -> TrainResult:
    """Prepare, train (DDP when launched so), save final/, calibrate the no-answer threshold on
    held-out questions, evaluate on the dev data. `on_checkpoint`/`remote_finder` replace the
    S3 ones that cfg.s3_uri would create (tests, other storage)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Writing model shards" at every checkpoint
    with ExitStack() as stack:
        ctx = setup_distributed(device=cfg.device)
        stack.callback(cleanup, ctx)
        watcher = PreemptionWatcher()  # installed for training, kept through the evaluation
        stack.callback(watcher.uninstall)
        _check_output(cfg, ctx)
        # rank 0's metrics destinations; a tracker whose package is missing fails now
        metrics = stack.enter_context(MetricsLogger(cfg, enabled=ctx.is_main).closing())
        uploads = Uploads.start(cfg, ctx, on_checkpoint, remote_finder)
        tokenizer, data = _prepare(cfg, ctx)
        model = _new_model(cfg, ctx, data)
        watcher.install()
        with uploads.drained_on_error(watcher):
            result = train_model(cfg, model, tokenizer, data.train.features, ctx,
                                 on_checkpoint=uploads.on_checkpoint,
                                 remote_finder=uploads.remote_finder, watcher=watcher,
                                 metrics=metrics)
            # final/ is on disk before calibration and evaluation start: a crash in either
            # loses no training, and final/ is uploaded (uncalibrated) even then
            watcher.activity = "calibration"
            calibration = finish_model(cfg, model, data.calibration, ctx, result,
                                       uploads.on_checkpoint)
        uploads.finish(watcher, result)
        _say_trained(ctx, result)
        if cfg.do_eval and data.dev is not None:
            watcher.activity = "final evaluation"
            evaluate_dev(cfg, model, data.dev, ctx, result.steps, calibration, metrics)
        metrics.close(FINISHED)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
        return result


def _check_output(cfg: Config, ctx: DistributedContext) -> None:
    """Rank 0: a wrong --resume PATH or an unwritable output directory fails before any work
    (sizes now, sha256 at the resume); the run's config is recorded."""
    if ctx.is_main:
        output_dir = Path(cfg.output_dir)
        check_resume_path(cfg.resume, hashes=False)
        ensure_writable_dir(output_dir)  # fail now, not after hours of training
        remove_leftovers(output_dir, output_dir / "final")
        cfg.save(output_dir)


def _prepare(cfg: Config, ctx: DistributedContext) -> tuple[Any, PreparedData]:
    """The tokenizer, checked against the window settings, and the prepared data. Rank 0
    downloads and tokenizes; then one process per node finds it in the cache (or, without a
    shared filesystem, builds the node's copy); then all the others. --refresh is rank 0's
    to do: the others use what it just fetched."""
    tokenizer = load_tokenizer(cfg.model)
    check_window(cfg.model, tokenizer, max_seq_length=cfg.max_seq_length,
                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    splits = ("train", "dev") if cfg.do_eval else ("train",)
    data = prepare_in_turn(
        ctx, lambda: prepare(cfg, tokenizer, splits=splits, verbose=True),
        lambda: prepare(cfg.replace(refresh=False), tokenizer, splits=splits, verbose=False))
    assert data.train is not None
    return tokenizer, data


def _new_model(cfg: Config, ctx: DistributedContext, data: PreparedData) -> Any:
    seed_everything(cfg.seed)  # the new QA head starts the same on every rank
    model = load_model(cfg.model)
    if ctx.is_main:
        say(f"training {cfg.model} on {len(data.train.features):,} windows, "
            f"{ctx.world_size} process(es) on {ctx.device.type}, output in {cfg.output_dir}")
    return model


@dataclass
class Uploads:
    """Where checkpoints go besides the disk: cfg.s3_uri's bucket (rank 0 uploads in the
    background), or the callbacks a caller passed."""

    cfg: Config
    on_checkpoint: OnCheckpoint | None
    remote_finder: RemoteFinder | None
    uploader: Any = None  # squadft.storage.checkpoints.CheckpointUploader

    @classmethod
    def start(cls, cfg: Config, ctx: DistributedContext, on_checkpoint: OnCheckpoint | None,
              remote_finder: RemoteFinder | None) -> Uploads:
        if not (cfg.s3_uri and ctx.is_main and on_checkpoint is None):
            return cls(cfg, on_checkpoint, remote_finder)
        from squadft.storage.checkpoints import CheckpointUploader
        from squadft.storage.checkpoints import remote_finder as s3_remote_finder

        # checks the bucket and credentials now: a wrong key fails before training, not
        # after the first checkpoint hours later
        uploader = CheckpointUploader.from_config(cfg)
        return cls(cfg, uploader, remote_finder or s3_remote_finder(cfg), uploader)

    @contextmanager
    def drained_on_error(self, watcher: PreemptionWatcher) -> Iterator[None]:
        """Preempted (or failed after saving): the last checkpoint should still reach the
        bucket; if the grace period ends first, SIGKILL leaves it without a manifest, so the
        previous complete checkpoint is used on resume."""
        try:
            yield
        except BaseException:
            if self.uploader is not None:
                try:
                    with watcher.draining(f"upload to {self.cfg.s3_uri}", then_stop=False):
                        self.uploader.close(timeout=self.cfg.s3_upload_deadline)
                except StorageError as exc:
                    warn(str(exc))
            raise

    def finish(self, watcher: PreemptionWatcher, result: TrainResult) -> None:
        if self.uploader is not None:
            say(f"waiting for the upload of {result.final_dir} to {self.cfg.s3_uri}")
            with watcher.draining(f"upload of final/ to {self.cfg.s3_uri}"):
                self.uploader.close(timeout=self.cfg.s3_upload_deadline)


def _say_trained(ctx: DistributedContext, result: TrainResult) -> None:
    if ctx.is_main:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        speed = (f"{result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second
                 else "no step left to train in this process")
        say(f"trained {result.steps} steps ({result.epochs} epochs), final loss {loss}, "
            f"{speed}; model saved to {result.final_dir}")


def finish_model(cfg: Config, model: Any, calibration_split: PreparedSplit | None,
                 ctx: DistributedContext, result: TrainResult,
                 on_checkpoint: OnCheckpoint | None) -> Calibration | None:
    """Calibrate the no-answer threshold on the held-out questions, write it with the
    inference settings into final/, and hand final/ to the uploader (also when calibrating
    fails: the trained weights must reach the bucket either way)."""
    calibration = None
    try:
        if calibration_split is not None:
            calibration = calibrate_model(
                model, calibration_split.examples, calibration_split.features, cfg=cfg,
                device=ctx.device, source=calibration_split.selection)
            if ctx.is_main:
                say(calibration.summary())
    finally:
        if ctx.is_main and result.final_dir is not None:
            settings = InferenceSettings.from_config(cfg, calibration)
            with uninterruptible():  # a SIGTERM now stops the job right after this
                add_to_final(result.final_dir, INFERENCE_FILE, settings.to_json(),
                             result.steps)
                if on_checkpoint is not None:
                    on_checkpoint(Path(result.final_dir))
    return calibration

"""`squadft train`: the whole job, read top-down in `train`.

Set up (process group, preemption watcher, output directory, trackers, uploads) -> prepare
(tokenizer, data in turn, a new model) -> work (train, save final/, calibrate) -> outputs (the
last upload, the dev evaluation). Every resource is released by one ExitStack, in reverse
order, whatever happens: the trackers learn how the run ended, the signal handlers are
restored, the process group is torn down.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.console import say, warn
from squadft.errors import StorageError
from squadft.evaluate.calibration import INFERENCE_FILE, Calibration, InferenceSettings
from squadft.evaluate.card import CARD_FILE, model_card
from squadft.flows.evaluation import calibrate_model, evaluate_dev, evaluate_held_out
from squadft.flows.preparation import PreparedData, PreparedSplit, prepare, remove_leftovers
from squadft.io import atomic_write_json, ensure_writable_dir, uninterruptible
from squadft.modeling import check_window, load_model, load_tokenizer
from squadft.runtime.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    cleanup,
    prepare_in_turn,
    setup_distributed,
)
from squadft.runtime.preemption import PreemptionWatcher
from squadft.storage.manifest import manifest_problem, read_manifest
from squadft.train.checkpoint import (
    RemoteFinder,
    add_to_final,
    check_resume_path,
    list_checkpoints,
    seed_everything,
)
from squadft.train.loop import HeldOutEvaluator, OnCheckpoint, TrainResult, train_model
from squadft.train.tracking import FINISHED, MetricsLogger

# Written last, once a run has trained, saved final/, calibrated and evaluated: its settings
# and result. A run started again with the same settings (--resume auto) then has nothing to do.
FINISHED_FILE = "finished.json"


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
        done = broadcast_from_main(ctx, finished_run(cfg) if ctx.is_main else None)
        if done is not None:  # before any model, data or tracker is loaded
            return done
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
                                 metrics=metrics, held_out=held_out_evaluator(cfg, ctx, data))
            # final/ is on disk before calibration and evaluation start: a crash in either
            # loses no training, and final/ is uploaded (uncalibrated) even then
            watcher.activity = "calibration"
            calibration = finish_model(cfg, model, data.calibration, ctx, result,
                                       uploads.on_checkpoint)
        uploads.finish(watcher, result)
        _say_trained(ctx, result)
        if cfg.do_eval and data.dev is not None:
            watcher.activity = "final evaluation"
            scores = evaluate_dev(cfg, model, data.dev, ctx, result.steps, calibration,
                                  metrics, result.selection)
            write_model_card(cfg, ctx, result, scores, uploads)
        metrics.close(FINISHED)
        _mark_finished(cfg, ctx, result)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
        return result


def held_out_evaluator(cfg: Config, ctx: DistributedContext, data: PreparedData
                       ) -> HeldOutEvaluator | None:
    """Evaluations during training, on the held-out articles (None without them)."""
    split = data.calibration
    if split is None:
        return None
    return lambda model, step: evaluate_held_out(
        model, split.examples, split.features, cfg=cfg, device=ctx.device,
        source=split.selection, overlap_with_train=split.overlap_with_train, step=step)


def _check_output(cfg: Config, ctx: DistributedContext) -> None:
    """Rank 0: a wrong --resume PATH or an unwritable output directory fails before any work
    (sizes now, sha256 at the resume); the run's config is recorded."""
    if ctx.is_main:
        output_dir = Path(cfg.output_dir)
        check_resume_path(cfg.resume, hashes=False)
        ensure_writable_dir(output_dir)  # fail now, not after hours of training
        remove_leftovers(output_dir, output_dir / "final")
        (output_dir / FINISHED_FILE).unlink(missing_ok=True)  # not finished until it is again
        cfg.save(output_dir)


def finished_run(cfg: Config) -> TrainResult | None:
    """Rank 0: the result of the run that finished in cfg.output_dir with these settings (its
    FINISHED_FILE, and final/ complete at its step), said with what to do instead; None when
    there is none, when --resume is not auto, or the settings differ (that run continues)."""
    output_dir = Path(cfg.output_dir)
    try:
        done = json.loads((output_dir / FINISHED_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(TrainResult)}
        result = TrainResult(**{k: v for k, v in done["result"].items() if k in known})
        saved = dict(done["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    manifest = read_manifest(output_dir / "final")
    current = cfg.to_dict(redact=True)
    if (cfg.resume != "auto" or manifest is None or manifest.step != result.steps
            or manifest_problem(output_dir / "final", hashes=False) is not None
            or any(saved[k] != v for k, v in current.items()
                   if k in saved and k not in ("output_dir", "resume"))):
        return None
    evaluated = ", evaluated (eval_results.json)" if cfg.do_eval else ""
    checkpoints = list_checkpoints(output_dir)
    further = (f"; to train longer, raise --epochs or --max-steps (it continues from "
               f"{checkpoints[0].name})" if checkpoints else "")
    say(f"{output_dir} holds this run, finished: final/ at step {result.steps}{evaluated}; "
        f"nothing is trained or evaluated again. To start over, delete {output_dir} or pass "
        f"another --output-dir{further}.")
    return result


def _mark_finished(cfg: Config, ctx: DistributedContext, result: TrainResult) -> None:
    """Rank 0: FINISHED_FILE, and where the model is and what the checkpoints left cost."""
    if not ctx.is_main:
        return
    output_dir = Path(cfg.output_dir)
    atomic_write_json(output_dir / FINISHED_FILE,
                      {"config": cfg.to_dict(redact=True), "result": asdict(result)})
    kept = [p for p in list_checkpoints(output_dir) if p.is_dir()]
    size = sum(f.stat().st_size for p in kept for f in p.rglob("*") if f.is_file()) / 1e6
    names = ", ".join(str(p) for p in reversed(kept))
    one = len(kept) == 1
    left = (f"; {names} ({size:,.0f} MB) {'is' if one else 'are'} kept only to train further "
            f"(with the optimizer state): delete {'it' if one else 'them'} if you will not"
            if kept else "")
    say(f"finished: model in {result.final_dir}{left}")


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

    def send_again(self, directory: Path) -> None:
        """`directory` changed after its upload (final/ with its model card): send it again,
        now (the background uploader is closed by then)."""
        if self.uploader is not None:
            from squadft.storage.s3 import upload_directory

            upload_directory(directory, self.uploader.base.child(directory.name),
                             client=self.uploader.client, settings=self.uploader.settings)
        elif self.on_checkpoint is not None:
            self.on_checkpoint(directory)

    def finish(self, watcher: PreemptionWatcher, result: TrainResult) -> None:
        if self.uploader is not None:
            say(f"waiting for the upload of {result.final_dir} to {self.cfg.s3_uri}")
            with watcher.draining(f"upload of final/ to {self.cfg.s3_uri}"):
                self.uploader.close(timeout=self.cfg.s3_upload_deadline)


def write_model_card(cfg: Config, ctx: DistributedContext, result: TrainResult,
                     scores: dict[str, Any], uploads: Uploads) -> None:
    """Rank 0: the model card (README.md in final/) with the dev scores (they exist only
    now), and final/ sent to the bucket once more with it."""
    if not ctx.is_main or result.final_dir is None:
        return
    selection = {k: v for k, v in (result.selection or {}).items()
                 if k not in ("calibration", "question_f1")}
    card = model_card(cfg.to_dict(redact=True), scores, selection=selection or None,
                      name=Path(cfg.output_dir).resolve().name)
    with uninterruptible():
        add_to_final(result.final_dir, CARD_FILE, card, result.steps)
    uploads.send_again(Path(result.final_dir))


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
    chosen = (result.selection or {}).get("calibration")
    try:
        if chosen is not None:  # evaluated during training: the chosen weights' calibration
            calibration = Calibration(**chosen)
            if ctx.is_main:
                say(calibration.summary())
        elif calibration_split is not None:
            calibration = calibrate_model(
                model, calibration_split.examples, calibration_split.features, cfg=cfg,
                device=ctx.device, source=calibration_split.selection,
                overlap_with_train=calibration_split.overlap_with_train)
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

"""The training loop: a Trainer in named steps, in the shape of torchtitan's Trainer.

Reading order (class Trainer): __init__ (precision and seeds, data order, optimizer and
schedule), resume (checkpoint, metrics, DDP wrap), train_step (accumulate micro-batches, clip,
step; a step with a non-finite loss or gradient norm is skipped and counted), log, checkpoint,
and train, the loop that calls them and stops on preemption or divergence.
Checkpoints, distributed helpers and the metrics destinations (squadft.train.tracking) live in
their own modules.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from squadft.config import Config
from squadft.console import say, warn
from squadft.errors import (
    EXIT_PREEMPTED,
    ConfigError,
    OutOfMemory,
    Preempted,
    StorageError,
    TrainingDiverged,
    is_out_of_memory,
)
from squadft.io import atomic_write_json, ensure_writable_dir, uninterruptible
from squadft.runtime.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_from_main,
    gather_to_main,
)
from squadft.runtime.precision import autocast, resolve_precision
from squadft.runtime.preemption import PreemptionWatcher, signal_name
from squadft.storage.manifest import MANIFEST_NAME
from squadft.train.batching import BatchDataset, BatchSampler, batch_summary
from squadft.train.checkpoint import (
    RemoteFinder,
    TrainerState,
    load_checkpoint,
    load_model_state,
    resolve_resume,
    rng_state,
    rotate_checkpoints,
    save_checkpoint,
    save_final,
    seed_everything,
    set_rng_state,
)
from squadft.train.schedule import make_scheduler, warmup_steps_for
from squadft.train.selection import HELD_OUT_SCORES_FILE, HeldOutResult, Selection, eval_points
from squadft.train.tracking import METRICS_FILE, MetricsLogger

__all__ = ["METRICS_FILE", "PreemptionWatcher", "TrainResult", "Trainer", "train_model"]
TRAIN_RESULTS_FILE = "train_results.json"

# Called on rank 0 when a checkpoint (or final/) is complete on disk. If it also has a
# `busy_paths() -> set[Path]` method (storage.checkpoints.CheckpointUploader does), those
# directories are kept by the local rotation until their upload is done.
OnCheckpoint = Callable[[Path], None]
# Evaluates the weights on the held-out articles (every rank calls it): (model, step) ->
# a squadft.train.selection.HeldOutResult, the same on every rank.
HeldOutEvaluator = Callable[[torch.nn.Module, int], HeldOutResult]


@dataclass
class TrainResult:
    steps: int
    epochs: float
    final_loss: float | None
    runtime_s: float
    tokens_per_second: float
    samples_per_second: float
    precision: str
    world_size: int
    global_batch_size: int
    resumed_from: str | None
    final_dir: str | None
    skipped_steps: int = 0  # skipped for a non-finite loss or gradient norm (as AMP does)
    # the held-out evaluations and the step chosen (train.selection.Selection.summary), with
    # the chosen step's calibration; None without held-out evaluations
    selection: dict[str, Any] | None = None


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """`model` in DistributedDataParallel, which broadcasts rank 0's weights to the others.

    broadcast_buffers=False: the QA transformers' buffers are constants (DistilBERT's and
    BERT's position_ids, BERT's token_type_ids), identical on every rank, and there are no
    running statistics; the default would broadcast them from rank 0 before every forward
    that syncs gradients, a collective per step for nothing.
    """
    # torch 2.13 renamed the forward-time half of broadcast_buffers (and deprecated the old
    # name with a FutureWarning); buffers are then still synced once, at construction.
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                      inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
    )


def takes_token_types(model: torch.nn.Module) -> bool:
    """DistilBERT and RoBERTa-style models have no segment embeddings to feed."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def qa_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor],
            answerability_weight: float = 0.0) -> torch.Tensor:
    """Mean of the start and end cross-entropies over the real tokens of each window.

    Unlike the models' built-in loss, padding positions are excluded from the softmax: with
    dynamic padding their number depends on the other windows in the batch, so including
    them would make a window's loss depend on how batches were formed (DDP vs one process).

    answerability_weight > 0 adds a binary cross-entropy on the very quantity the no-answer
    decision thresholds: [CLS] start + end logit minus the best start + best end logit
    elsewhere in the window, with target 1 for windows labelled at [CLS] (position 0). The
    model stays a plain QA model; only its training signal for abstaining is stronger.
    """
    labels = ("start_positions", "end_positions")
    outputs = model(**{k: v for k, v in batch.items() if k not in labels})
    padding = batch["attention_mask"] == 0
    losses = []
    masked = []
    for logits, positions in ((outputs.start_logits, batch["start_positions"]),
                              (outputs.end_logits, batch["end_positions"])):
        logits = logits.float().masked_fill(padding, torch.finfo(torch.float32).min)
        masked.append(logits)
        losses.append(torch.nn.functional.cross_entropy(logits, positions))
    loss = (losses[0] + losses[1]) / 2
    if answerability_weight > 0:
        start, end = masked
        null_score = start[:, 0] + end[:, 0]
        best_span = start[:, 1:].max(dim=1).values + end[:, 1:].max(dim=1).values
        unanswerable = (batch["start_positions"] == 0).float()
        loss = loss + answerability_weight * torch.nn.functional.binary_cross_entropy_with_logits(
            null_score - best_span, unanswerable)
    return loss


def build_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> Any:
    # Biases and LayerNorm weights are the only 1-D parameters; decaying them towards zero
    # only hurts (as in BERT's original recipe).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused AdamW (one kernel over all parameters) on both devices squadft trains on. CUDA:
    # instead of the default foreach path's chain of kernels per step. CPU: instead of the
    # default per-parameter loop, 2-3x faster (MiniLM's 22M parameters on 2 cores: 0.4-0.6 s
    # against 1.0-1.6 s per step). Same update up to float rounding (compared in
    # tests/bench/test_gpu_train.py). A resumed checkpoint keeps the setting it was saved with.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon, fused=fused or None
    )


def batches_from(
    loader: torch.utils.data.DataLoader, sampler: BatchSampler, epoch: int, position: int
) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """Endless batches from (epoch, position); yields the position of the NEXT batch too."""
    while True:
        sampler.set_epoch(epoch, position)
        for batch in loader:
            position += 1
            if position == len(sampler):
                epoch, position = epoch + 1, 0
            yield epoch, position, batch
        if position:  # the loader ended early (cannot happen with a fixed-length sampler)
            epoch, position = epoch + 1, 0


def _check_resume_config(path: Path, cfg: Config) -> None:
    """Refuse a checkpoint of another model (exit 2), warn about changed training settings."""
    from squadft.config import resume_differences

    try:
        saved = json.loads((path / "squadft_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # an older checkpoint without its config: nothing to compare
    if isinstance(saved, dict):
        changed = resume_differences(saved, cfg, f"checkpoint {path}")
        if changed:
            warn(f"resuming {path} with changed settings: {'; '.join(changed)}")


def build_loader(cfg: Config, features: Any, tokenizer: Any, model: torch.nn.Module,
                 ctx: DistributedContext) -> tuple[BatchSampler, torch.utils.data.DataLoader]:
    """This rank's slice of the data order (length-bucketed global batches) and its loader."""
    sampler = BatchSampler(
        features.lengths, cfg.batch_size, num_replicas=ctx.world_size, rank=ctx.rank,
        seed=cfg.seed, bucketing=cfg.length_bucketing,
    )
    loader = torch.utils.data.DataLoader(
        BatchDataset(features, pad_token_id=tokenizer.pad_token_id or 0,
                     with_token_types=takes_token_types(model)),
        sampler=sampler, batch_size=None, num_workers=cfg.num_workers,
        pin_memory=ctx.device.type == "cuda",
        # Every new iterator draws a worker base seed from this generator. Left to default it
        # would draw from the global torch RNG, and a resumed run (which opens its iterator
        # after restoring the RNG states) would see different dropout masks from then on.
        generator=torch.Generator().manual_seed(cfg.seed + ctx.rank),
    )
    return sampler, loader


class Trainer:
    """One training run in named steps, in the shape of torchtitan's Trainer.

    `__init__` builds the data order, optimizer and schedule; `resume` restores a checkpoint
    and opens the metrics; `train` is the loop, which calls `train_step` (one optimizer step:
    accumulate micro-batches, clip, step), `log` (every logging_steps), `checkpoint` (every
    save_steps, and when a preemption signal came), and at the end `save_final`.
    """

    def __init__(self, cfg: Config, model: torch.nn.Module, tokenizer: Any, features: Any,
                 ctx: DistributedContext, *, metrics: MetricsLogger,
                 on_checkpoint: OnCheckpoint | None = None,
                 remote_finder: RemoteFinder | None = None,
                 held_out: HeldOutEvaluator | None = None) -> None:
        self.cfg, self.model, self.tokenizer, self.ctx = cfg, model, tokenizer, ctx
        self.metrics, self.on_checkpoint, self.remote_finder = (metrics, on_checkpoint,
                                                                remote_finder)
        self.output_dir = Path(cfg.output_dir)
        if ctx.is_main:
            ensure_writable_dir(self.output_dir)
        if cfg.answerability_loss_weight > 0 and bool((features.cls_index != 0).any()):
            raise ConfigError("--answerability-loss-weight needs a tokenizer that puts [CLS] "
                              "first (BERT, DistilBERT, RoBERTa...); this one does not")
        self.device = device = ctx.device
        self.precision = resolve_precision(cfg.precision, device)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls: free speed on Ampere+
        seed_everything(cfg.seed + ctx.rank)  # different dropout masks on each rank

        self.sampler, self.loader = build_loader(cfg, features, tokenizer, model, ctx)
        self.accum = cfg.grad_accum_steps
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * len(self.sampler) / self.accum)
        model.to(device)
        self.optimizer = build_optimizer(model, cfg, device)
        self.scheduler = make_scheduler(
            self.optimizer, warmup_steps_for(self.total_steps, cfg.warmup_ratio), self.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.state = TrainerState(total_steps=self.total_steps, world_size=ctx.world_size,
                                  batch_size=cfg.batch_size, grad_accum_steps=self.accum)
        self.held_out = held_out
        self.selection = Selection()
        self.last_calibration: Any = None  # of the last evaluation in this process
        self.held_out_record: dict[str, Any] | None = None  # logged with the step's record
        self.eval_points = frozenset(eval_points(
            self.total_steps, cfg.eval_steps, len(self.sampler) / self.accum)
            if held_out is not None else ())
        self.forward_model: Any = model  # what the loop calls; `model` stays the one we save
        self.resumed_from: str | None = None
        self.last_saved = 0
        self.lr = 0.0
        self.grad_norm = torch.zeros((), device=device)
        self.step_loss = torch.zeros((), device=device)
        self.window_loss = torch.zeros((), device=device)  # on the device: no sync until a log
        # steps skipped for a non-finite gradient norm: in a row now, the longest such run,
        # in all (also on the device; read by check_skipped)
        self.skips = torch.zeros(3, dtype=torch.int64, device=device)
        self.logged_skips = 0
        self.window = {"steps": 0, "tokens": 0, "samples": 0}
        self.window_start = time.perf_counter()
        self.totals = {"tokens": 0.0, "samples": 0.0}

    # --- resume ---------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the checkpoint --resume names, open the metrics at that step, and
        wrap the model for DDP (which broadcasts rank 0's weights to the others)."""
        payload = self._read_checkpoint()
        if payload:
            self._restore(payload)
        self.state.trackers = self.metrics.start(
            self.state.step, self.total_steps, self.state.trackers,
            fresh=self.cfg.resume == "never")
        self.last_saved = self.state.step
        if self.ctx.is_distributed:
            self.forward_model = wrap_ddp(self.model, self.device)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """Rank 0 reads the checkpoint and shares it (no shared filesystem needed); an error
        on rank 0 is raised on every rank."""
        payload: Any = None
        if self.ctx.is_main:
            try:
                payload = self._load_on_main()
            except Exception as exc:
                broadcast_from_main(self.ctx, {"error": exc})
                raise
        payload = broadcast_from_main(self.ctx, payload)
        if payload and "error" in payload:
            raise payload["error"]
        return payload

    def _load_on_main(self) -> dict[str, Any] | None:
        cfg = self.cfg
        path = resolve_resume(cfg.resume, self.output_dir, self.remote_finder)
        if path is None:
            return None
        _check_resume_config(Path(path), cfg)
        loaded = load_checkpoint(path)
        try:
            self.model.load_state_dict(loaded.model_state)  # DDP broadcasts it to the others
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{path} does not fit model {cfg.model} ({first}); "
                              "resume with the model it was trained from") from None
        return {"path": str(path), "optimizer": loaded.optimizer,
                "scheduler": loaded.scheduler, "scaler": loaded.scaler,
                "state": loaded.state.to_dict(), "rng": loaded.rng_states}

    def _restore(self, payload: dict[str, Any]) -> None:
        cfg, ctx, state = self.cfg, self.ctx, self.state
        self.resumed_from = payload["path"]
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"] is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        saved = TrainerState.from_dict(payload["state"])
        old_global = saved.world_size * saved.batch_size
        new_global = ctx.world_size * cfg.batch_size
        if old_global != new_global:
            warn(f"global batch changed ({old_global} -> {new_global}): the data order after "
                 "resuming differs from the interrupted run")
            saved.position = saved.position * old_global // new_global
        state.step, state.epoch, state.position = saved.step, saved.epoch, saved.position
        state.loss_history, state.trackers = saved.loss_history, saved.trackers
        self.selection = Selection.from_dict(saved.selection)
        state.skipped_steps = self.logged_skips = saved.skipped_steps
        self.skips[2] = saved.skipped_steps
        if ctx.rank in payload["rng"]:
            set_rng_state(payload["rng"][ctx.rank])
        else:
            warn(f"no RNG state for rank {ctx.rank} in {self.resumed_from}; dropout reseeded")
            seed_everything(cfg.seed + ctx.rank + state.step)
        if ctx.is_main:
            say(f"resuming from {self.resumed_from} (step {state.step}/{self.total_steps})",
                err=True)
            if state.step >= self.total_steps:
                say(f"training is already complete at step {state.step}: only final/, "
                    "calibration and evaluation are redone", err=True)

    # --- one optimizer step ---------------------------------------------------------------

    def train_step(self, data: Iterator[tuple[int, int, dict[str, torch.Tensor]]]) -> None:
        """Accumulate `grad_accum_steps` micro-batches, clip, step the optimizer and schedule."""
        self.step_loss.zero_()
        for micro_step in range(self.accum):
            epoch, position, batch = next(data)
            self.step_loss += self.forward_backward(batch, final=micro_step == self.accum - 1)
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        skipped = self.optimizer_step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.epoch, self.state.position = epoch, position
        self.window_loss += torch.where(skipped, 0.0, self.step_loss)
        self.window["steps"] += 1
        self.metrics.advance()

    def forward_backward(self, batch: dict[str, torch.Tensor], final: bool) -> torch.Tensor:
        """One micro-batch; returns its (detached) share of the step's loss."""
        samples, tokens = batch_summary(batch)
        self.window["samples"] += samples
        self.window["tokens"] += tokens
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # Gradients of non-final micro-steps only accumulate locally: all-reducing them across
        # ranks every micro-step would cost `accum` times the traffic for the same averaged
        # result on the last one.
        sync = nullcontext() if final or not self.ctx.is_distributed \
            else self.forward_model.no_sync()
        with sync:
            with autocast(self.precision, self.device):
                loss = qa_loss(self.forward_model, batch,
                               self.cfg.answerability_loss_weight) / self.accum
            # A non-finite loss makes this rank's gradients NaN (x 1 otherwise, exact), and
            # DDP's all-reduce carries them into the norm on which every rank skips the step.
            poisoned = loss * torch.where(torch.isfinite(loss), 1.0, math.nan)
            self.scaler.scale(poisoned).backward()
        return loss.detach()

    def optimizer_step(self) -> torch.Tensor:
        """Update the weights unless the gradient norm is not finite; returns that decision.

        As AMP's loss scaler does: the step is skipped (weights and optimizer state
        untouched) and counted. The decision stays on the device (fused AdamW takes it as
        GradScaler's `found_inf`), so no step waits for the GPU. Under DDP the norm is that of
        the all-reduced gradients, bit for bit the same on every rank, and so is the decision.
        """
        skip = ~torch.isfinite(self.grad_norm)
        if all(group.get("fused") for group in self.optimizer.param_groups):
            self.optimizer.found_inf = skip.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not skip.item():  # an unfused optimizer (from an older checkpoint): one sync
            self.optimizer.step()
        self.scaler.update()  # fp16: a lower loss scale after inf/NaN gradients
        run, longest, total = self.skips.unbind()
        run.add_(1).mul_(skip)
        torch.maximum(longest, run, out=longest)
        total.add_(skip)
        return skip

    def check_skipped(self) -> None:
        """Read the skip counts (one host sync) and stop when --max-skipped-steps steps in a
        row were skipped: every rank reads the same counts and stops at the same step."""
        _, longest, self.state.skipped_steps = self.skips.tolist()
        if longest >= self.cfg.max_skipped_steps:
            raise TrainingDiverged(
                f"training diverged: the loss or gradient norm was not finite for {longest} "
                f"optimizer steps in a row (--max-skipped-steps {self.cfg.max_skipped_steps}), "
                f"by step {self.state.step}; those updates were skipped and final/ was not "
                f"written; lower --learning-rate (now {self.cfg.learning_rate:g})")

    def check_weights(self) -> None:
        """Never save a checkpoint or final/ from weights that are not finite."""
        norm = torch.nn.utils.get_total_norm([p.detach() for p in self.model.parameters()])
        if not bool(torch.isfinite(norm)):
            raise TrainingDiverged(
                f"training diverged: the weights are not finite at step {self.state.step}; "
                "no checkpoint and no final/ written from them; lower --learning-rate (now "
                f"{self.cfg.learning_rate:g})")

    # --- log, checkpoint ------------------------------------------------------------------

    def log(self) -> None:
        """Average the steps since the last log over all ranks; rank 0 records them."""
        loss_sum, tokens, samples = all_reduce_sum(
            self.ctx, [self.window_loss.item(), self.window["tokens"], self.window["samples"]])
        elapsed = time.perf_counter() - self.window_start
        state = self.state
        # the mean over the steps that were not skipped (check_skipped counted them just now)
        updated = self.window["steps"] - (state.skipped_steps - self.logged_skips)
        loss_avg = loss_sum / self.ctx.world_size / updated if updated else math.nan
        record = {
            "step": state.step,
            "epoch": round(state.epoch + state.position / len(self.sampler), 4),
            "loss": loss_avg,
            "lr": self.lr,
            "grad_norm": float(self.grad_norm),
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": samples / elapsed,
        }
        if state.skipped_steps:  # from the first skipped step on (a healthy run: never)
            record["skipped_steps"] = state.skipped_steps
        if self.device.type == "cuda":
            record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.totals["tokens"] += tokens
        self.totals["samples"] += samples
        if updated:
            state.loss_history.append((state.step, loss_avg))
        self.logged_skips = state.skipped_steps
        self.metrics.log(record, self.held_out_record)
        self.held_out_record = None
        self.window = {"steps": 0, "tokens": 0, "samples": 0}
        self.window_loss.zero_()
        self.window_start = time.perf_counter()

    def checkpoint(self) -> Path | None:
        """checkpoint-<step>/ (rank 0 writes it, with every rank's RNG state); all ranks wait
        until it is complete: a rank that exited early on preemption would make torchrun kill
        rank 0 in the middle of writing it."""
        self.check_weights()
        rng_states = gather_to_main(self.ctx, rng_state())
        path = None
        if self.ctx.is_main:
            self.state.selection = self.selection.to_dict()
            protect = self._protect_best()
            path = save_checkpoint(self.output_dir, model=self.model, tokenizer=self.tokenizer,
                                   optimizer=self.optimizer, scheduler=self.scheduler,
                                   scaler=self.scaler, state=self.state, cfg=self.cfg,
                                   rng_states=rng_states or [])
            if self.on_checkpoint is not None:
                self.on_checkpoint(path)
            busy = getattr(self.on_checkpoint, "busy_paths", None)
            rotate_checkpoints(self.output_dir, self.cfg.save_total_limit,
                               protect=protect | (busy() if busy is not None else set()))
            self.metrics.checkpoint()
        barrier(self.ctx)
        self.last_saved = self.state.step
        return path

    def _protect_best(self) -> set[Path]:
        """The best checkpoint so far survives rotation, local and remote (with
        --select-best: final/ is made from it)."""
        best = self.selection.best_step
        if not self.cfg.select_best or best is None:
            return set()
        remote = getattr(self.on_checkpoint, "protect", None)
        if remote is not None:
            remote(frozenset({best}))
        return {self.output_dir / f"checkpoint-{best}"}

    # --- held-out evaluation and the choice of weights -------------------------------------

    def evaluate_held_out(self, watcher: PreemptionWatcher) -> bool:
        """At an evaluation point: the weights on the held-out articles (each rank its share),
        recorded in the selection, metrics.jsonl and the trackers; early stopping decided.
        A signal meanwhile is handled by the loop right after (checkpoint, exit 75)."""
        step, cfg = self.state.step, self.cfg
        if self.held_out is None or step not in self.eval_points:
            return False
        activity, watcher.activity = watcher.activity, "held-out evaluation"
        began = time.perf_counter()
        try:
            result = self.held_out(self.model, step)
        except Exception:
            # a failed evaluation must not cost the steps since the last checkpoint: save them
            # (one process; under DDP the others may wait in a collective), and the resume
            # evaluates this step first
            if not self.ctx.is_distributed and self.last_saved != step:
                if self.window["steps"]:
                    self.log()
                self.checkpoint()
            raise
        self.last_calibration = result.calibration
        self.model.train()
        watcher.activity = activity
        selection = self.selection
        selection.record(result, step, min_delta=cfg.early_stopping_threshold)
        if selection.should_stop(cfg.early_stopping_patience) and step < self.total_steps:
            selection.stopped_early_at = step
        if self.ctx.is_main:
            entry, best = selection.history[-1], selection.best or {}
            seconds = time.perf_counter() - began
            self.held_out_record = {k: v for k, v in entry.items() if k != "step"}
            self.held_out_record["seconds"] = round(seconds, 3)
            say(f"held-out evaluation at step {step}: F1 {entry['f1']:.2f} at its threshold "
                f"{entry['null_threshold']:.4g} (always no answer "
                f"{entry['always_no_answer_f1']:.2f}), {seconds:.0f}s; best F1 "
                f"{best.get('f1', 0.0):.2f} at step {best.get('step')}", err=True)
            if selection.stopped_early_at is not None:
                say(f"early stopping at step {step}/{self.total_steps}: {selection.since_best} "
                    f"held-out evaluations in a row did not beat F1 {best['f1']:.2f} (step "
                    f"{best['step']}) by {cfg.early_stopping_threshold} points "
                    "(--early-stopping-patience)", err=True)
        return True

    def redo_interrupted_evaluation(self, watcher: PreemptionWatcher) -> None:
        """Resumed at an evaluation point whose evaluation failed: evaluate it now."""
        step = self.state.step
        if step > 0 and all(e["step"] != step for e in self.selection.history) \
                and self.evaluate_held_out(watcher):
            self.metrics.log_held_out(step, self.held_out_record or {})
            self.held_out_record = None
            self.checkpoint()

    def use_best_weights(self) -> None:
        """--select-best: load the best evaluated checkpoint's weights (rank 0 reads them,
        from the bucket if the disk no longer has them; every rank gets them)."""
        best, step = self.selection.best_step, self.state.step
        if not self.cfg.select_best or best is None or best == step:
            return
        state_dict, error = None, None
        if self.ctx.is_main:
            try:
                state_dict = self._read_best_weights(best)
            except Exception as exc:  # raised on every rank: none waits for weights, or dies
                error = exc           # of a lost peer with a traceback
            else:
                say(f"final/ gets the weights of step {best}, the best on the held-out "
                    f"articles (F1 {self.selection.best['f1']:.2f}; the last step, {step}: "
                    f"{self.selection.history[-1]['f1']:.2f})")
        state_dict, error = broadcast_from_main(self.ctx, (state_dict, error))
        if error is not None:
            raise error
        self.model.load_state_dict(state_dict)

    def _read_best_weights(self, best: int) -> dict[str, torch.Tensor]:
        """Rank 0: checkpoint-<best>'s weights, from the bucket if the disk lacks them."""
        path = self.output_dir / f"checkpoint-{best}"
        if not (path / MANIFEST_NAME).is_file() and self.remote_finder and self.cfg.s3_uri:
            path = self.remote_finder(f"{self.cfg.s3_uri.rstrip('/')}/checkpoint-{best}",
                                      None) or path
        try:
            return load_model_state(path)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read the best checkpoint {path} (held-out F1 "
                               f"chose step {best}): {exc}") from None

    # --- the loop -------------------------------------------------------------------------

    def train(self, watcher: PreemptionWatcher) -> TrainResult:
        """Steps until total_steps, logging and checkpointing on the way; on a preemption
        signal: checkpoint, then Preempted. Then the last checkpoint and final/."""
        cfg, state = self.cfg, self.state
        data = batches_from(self.loader, self.sampler, state.epoch, state.position)
        start_time = self.window_start = time.perf_counter()
        start_step = state.step
        self.model.train()
        self.redo_interrupted_evaluation(watcher)
        while state.step < self.total_steps and self.selection.stopped_early_at is None:
            try:
                self.train_step(data)
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or cuBLAS's
                if not is_out_of_memory(exc):
                    raise
                raise _out_of_memory(cfg, self.ctx, state, self.last_saved, self.model,
                                     self.optimizer, self.checkpoint) from None
            evaluated = self.evaluate_held_out(watcher)
            stop = any_rank(self.ctx, watcher.received is not None)
            log = (state.step % cfg.logging_steps == 0 or state.step == self.total_steps or stop
                   or evaluated)
            # an evaluated step is a checkpoint: it may be the best, and a resume from it
            # neither repeats nor loses the evaluation
            save = stop or evaluated or (cfg.save_steps and state.step % cfg.save_steps == 0)
            if log or save or state.step % cfg.max_skipped_steps == 0:
                self.check_skipped()
            if log:
                self.log()
            if save:
                path = self.checkpoint()
            if stop:
                self.metrics.close_progress()
                raise watcher.stop(Preempted(
                    f"stopped at step {state.step}/{self.total_steps} on a preemption signal "
                    f"({signal_name(watcher)} on some rank); checkpoint "
                    f"{path if self.ctx.is_main else 'written by rank 0'}; exit "
                    f"{EXIT_PREEMPTED} means requeue: rerun with --resume auto to continue"))
        self.metrics.close_progress()
        if state.skipped_steps and self.ctx.is_main:
            warn(f"{state.skipped_steps} optimizer step(s) skipped for a non-finite loss or "
                 "gradient norm (skipped_steps in metrics.jsonl)" + (
                     "; fp16 loss scaling skips a few while it finds its scale"
                     if self.scaler.is_enabled() else ""))
        if self.last_saved != state.step:
            self.checkpoint()
        # A signal that came while the last checkpoint was written stops the job now (the
        # loop no longer looks); from here on one stops it at once, see PreemptionWatcher.
        if any_rank(self.ctx, watcher.received is not None):
            raise watcher.stop(Preempted(
                f"stopped after the last step ({state.step}/{self.total_steps}) on a preemption "
                f"signal ({signal_name(watcher)} on some rank); checkpoint-{state.step} is "
                f"complete; exit {EXIT_PREEMPTED} means requeue: rerun with --resume auto, "
                "which does not train again"))
        watcher.trained(state.step)
        runtime = time.perf_counter() - start_time
        self.use_best_weights()
        final_dir = self.save_final(watcher)
        return self._result(runtime, trained=state.step > start_step, final_dir=final_dir)

    def save_final(self, watcher: PreemptionWatcher) -> Path | None:
        """final/ (rank 0); not uploaded here: the pipeline adds the calibrated inference
        settings first."""
        self.check_weights()
        final_dir = None
        if self.ctx.is_main:
            with uninterruptible():
                final_dir = save_final(self.output_dir, self.model, self.tokenizer, self.cfg,
                                       self.state.step)
            watcher.final_saved(str(final_dir))
        barrier(self.ctx)
        return final_dir

    def _result(self, runtime: float, trained: bool, final_dir: Path | None) -> TrainResult:
        state = self.state
        return TrainResult(
            steps=state.step,
            epochs=round(state.epoch + state.position / len(self.sampler), 4),
            final_loss=state.loss_history[-1][1] if state.loss_history else None,
            runtime_s=round(runtime, 3),
            tokens_per_second=self.totals["tokens"] / runtime if trained else 0.0,
            samples_per_second=self.totals["samples"] / runtime if trained else 0.0,
            precision=self.precision,
            world_size=self.ctx.world_size,
            global_batch_size=self.cfg.batch_size * self.ctx.world_size * self.accum,
            resumed_from=self.resumed_from,
            final_dir=str(final_dir) if final_dir else None,
            skipped_steps=state.skipped_steps,
            selection=self._selection_summary(),
        )

    def _selection_summary(self) -> dict[str, Any] | None:
        if not self.selection.history:
            return None
        chosen = self.selection.best if self.cfg.select_best else self.selection.history[-1]
        summary = self.selection.summary(self.state.step)
        summary["chosen_step"] = chosen["step"] if chosen else None
        summary["select_best"] = self.cfg.select_best
        if self.cfg.select_best:
            summary["calibration"] = (self.selection.best or {}).get("calibration")
        else:  # the last weights: their evaluation, if it ran in this process
            last = self.last_calibration
            summary["calibration"] = asdict(last) if last is not None and \
                last.step == self.state.step else None
        scores = self.selection.question_f1.get(str(summary["chosen_step"]))
        if scores is not None:  # for sweeps: trials compared question by question
            summary["question_f1"] = {"step": summary["chosen_step"],
                                      "articles": self.selection.articles, "f1": scores}
        return summary


def train_model(
    cfg: Config,
    model: torch.nn.Module,
    tokenizer: Any,
    features: Any,
    ctx: DistributedContext,
    *,
    on_checkpoint: OnCheckpoint | None = None,
    remote_finder: RemoteFinder | None = None,
    watcher: PreemptionWatcher | None = None,
    metrics: MetricsLogger | None = None,
    held_out: HeldOutEvaluator | None = None,
) -> TrainResult:
    """Train `model` on `features` (squadft.data.features.Features), checkpoint, save final/.

    Raises Preempted after writing a checkpoint when SIGTERM/SIGUSR1 arrives, OutOfMemory
    (after saving the last completed step where possible) when a batch does not fit.
    `watcher`: an installed PreemptionWatcher that outlives this call (the pipeline's, which
    keeps handling signals through calibration and evaluation); else one of our own.
    `metrics`: the run's MetricsLogger, kept open for the evaluation (the pipeline's); else
    one of our own, closed on return.
    """
    own_metrics = metrics is None
    if metrics is None:
        metrics = MetricsLogger(cfg, enabled=ctx.is_main)
    with metrics.closing() if own_metrics else nullcontext(metrics):
        trainer = Trainer(cfg, model, tokenizer, features, ctx, metrics=metrics,
                          on_checkpoint=on_checkpoint, remote_finder=remote_finder,
                          held_out=held_out)
        trainer.resume()
        with (nullcontext(watcher) if watcher is not None else PreemptionWatcher()) as watching:
            try:
                result = trainer.train(watching)
            finally:  # closed on an error too, so that the error is the last line on stderr
                metrics.close_progress()
    if ctx.is_main:
        saved = asdict(result)
        scores = (saved.get("selection") or {}).pop("question_f1", None)
        if scores is not None:
            atomic_write_json(Path(cfg.output_dir) / HELD_OUT_SCORES_FILE, scores)
        atomic_write_json(Path(cfg.output_dir) / TRAIN_RESULTS_FILE, saved)
    return result


def _out_of_memory(
    cfg: Config, ctx: DistributedContext, state: TrainerState, last_saved: int,
    model: torch.nn.Module, optimizer: Any, write_checkpoint: Callable[[], Path | None],
) -> OutOfMemory:
    """Free what we can, keep the last completed step on disk, and explain what to change."""
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    saved = ""
    # A lone process can still checkpoint (the state is that of the last completed step);
    # with DDP the other ranks are blocked in a collective, so rely on the last checkpoint.
    if not ctx.is_distributed and state.step > last_saved:
        saved = f"; saved checkpoint-{state.step}"
        write_checkpoint()
    return OutOfMemory(
        f"out of GPU memory at step {state.step + 1} with --batch-size {cfg.batch_size} "
        f"and --max-seq-length {cfg.max_seq_length}{saved}; use a smaller --batch-size "
        f"with a larger --grad-accum-steps (now {cfg.grad_accum_steps}) to keep the "
        "effective batch, or --precision bf16/fp16"
    )

"""The training loop: one function, top to bottom, in the spirit of nanoGPT's train.py.

Reading order: precision and seeds, data order (BatchSampler), optimizer and schedule,
resume, DDP wrap, then the loop: accumulate micro-batches, clip, step, log, checkpoint,
stop on preemption. Checkpoints and distributed helpers live in their own modules.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from squadft.config import Config
from squadft.errors import EXIT_PREEMPTED, ConfigError, OutOfMemory, Preempted
from squadft.io import (
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    interrupt,
    uninterruptible,
)
from squadft.train.batching import BatchDataset, BatchSampler, batch_summary
from squadft.train.checkpoint import (
    RemoteFinder,
    TrainerState,
    load_checkpoint,
    resolve_resume,
    rng_state,
    rotate_checkpoints,
    save_checkpoint,
    save_final,
    seed_everything,
    set_rng_state,
    warn,
)
from squadft.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_from_main,
    gather_to_main,
)
from squadft.train.schedule import make_scheduler, warmup_steps_for

METRICS_FILE = "metrics.jsonl"
TRAIN_RESULTS_FILE = "train_results.json"
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# Called on rank 0 when a checkpoint (or final/) is complete on disk. If it also has a
# `busy_paths() -> set[Path]` method (storage.checkpoints.CheckpointUploader does), those
# directories are kept by the local rotation until their upload is done.
OnCheckpoint = Callable[[Path], None]


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 on GPUs that support it, else fp32."""
    cuda = device.type == "cuda"
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU does not support bfloat16; use fp16")
    return precision


def autocast(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon, fused=device.type == "cuda"
    )


class PreemptionWatcher:
    """What SIGTERM/SIGUSR1 do, from the first training step until the job ends.

    Training (until `trained`): a signal sets `received`, which the loop checks after each
    step: it checkpoints, then raises Preempted (exit 75). A second signal exits at once with
    128 + the signal number (143 for SIGTERM), without a checkpoint, and says so.
    After training (`trained` ... `final_saved`, then calibration and evaluation): the weights
    are in a checkpoint, so a signal raises Preempted at once (at the end of an
    `io.uninterruptible` block such as writing final/ or renaming output files into place):
    exit 75, and a rerun with --resume auto only saves final/ again, calibrates and evaluates.
    Stopping (once Preempted is raised, until the process exits): the process is on its way to
    exit 75 and has said so; another signal exits 75 at once rather than 143. The handlers are
    therefore left installed after a Preempted: restoring the default ones would turn a second
    signal into 143 after an "exit 75" message.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.phase = "training"
        self.activity = "work"  # what runs after training: "calibration", "final evaluation"
        self.final_dir: str | None = None
        self.step = 0
        self._previous: dict[int, Any] = {}

    def _say(self, message: str) -> None:
        # os.write, not print: a handler that prints while the main thread prints to the same
        # buffered stream raises "reentrant call"
        try:
            os.write(2, f"squadft: {message}\n".encode())
        except OSError:
            pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.phase == "stopping":
            self._say(f"{name} again: already stopping after a checkpoint; exit "
                      f"{EXIT_PREEMPTED} now")
            os._exit(EXIT_PREEMPTED)
        if self.phase == "training":
            if self.received is not None:
                self._say(f"second {name}: exiting at once with {128 + signum}, without a "
                          "checkpoint")
                os._exit(128 + signum)
            self.received = signum
            self._say(f"received {name}: finishing the current step, then checkpointing")
            return
        if self.received is not None:  # a second one while final/ is written
            self._say(f"second {name}: exiting at once; the last checkpoint (step "
                      f"{self.step}) is complete, exit {EXIT_PREEMPTED}")
            os._exit(EXIT_PREEMPTED)
        self.received = signum
        saved = (f"final/ ({self.final_dir}) is saved" if self.final_dir is not None
                 else f"checkpoint-{self.step} is complete")
        interrupt(self.stop(Preempted(
            f"stopped by {name} during the {self.activity} after training: {saved} at step "
            f"{self.step}; exit {EXIT_PREEMPTED} means requeue: rerun with --resume auto, which "
            "does not train again (it saves final/, calibrates and evaluates)")))

    def stop(self, exc: Preempted) -> Preempted:
        """`exc`, about to be raised: from now on a signal exits 75 at once."""
        self.phase = "stopping"
        return exc

    def trained(self, step: int) -> None:
        """Training is over and its last step is in a checkpoint."""
        self.phase, self.step = "after training", step

    def final_saved(self, final_dir: str | None) -> None:
        self.final_dir = final_dir

    def install(self) -> PreemptionWatcher:
        if not self._previous:
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the previous handlers, unless the process is stopping with exit 75."""
        if self.phase != "stopping":
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def __enter__(self) -> PreemptionWatcher:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


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


def _restart_metrics(path: Path, step: int) -> None:
    """On resume, forget metrics logged after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


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
) -> TrainResult:
    """Train `model` on `features` (squadft.data.features.Features), checkpoint, save final/.

    Raises Preempted after writing a checkpoint when SIGTERM/SIGUSR1 arrives, OutOfMemory
    (after saving the last completed step where possible) when a batch does not fit.
    `watcher`: an installed PreemptionWatcher that outlives this call (the pipeline's, which
    keeps handling signals through calibration and evaluation); else one of our own.
    """
    output_dir = Path(cfg.output_dir)
    if ctx.is_main:
        ensure_writable_dir(output_dir)
    if cfg.answerability_loss_weight > 0 and bool((features.cls_index != 0).any()):
        raise ConfigError("--answerability-loss-weight needs a tokenizer that puts [CLS] "
                          "first (BERT, DistilBERT, RoBERTa...); this one does not")
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: free speed on Ampere+
    seed_everything(cfg.seed + ctx.rank)  # different dropout masks on each rank

    # --- data order, optimizer, schedule ------------------------------------------------
    sampler = BatchSampler(
        features.lengths, cfg.batch_size, num_replicas=ctx.world_size, rank=ctx.rank,
        seed=cfg.seed, bucketing=cfg.length_bucketing,
    )
    loader = torch.utils.data.DataLoader(
        BatchDataset(features, pad_token_id=tokenizer.pad_token_id or 0,
                     with_token_types=takes_token_types(model)),
        sampler=sampler, batch_size=None, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Every new iterator draws a worker base seed from this generator. Left to default it
        # would draw from the global torch RNG, and a resumed run (which opens its iterator
        # after restoring the RNG states) would see different dropout masks from then on.
        generator=torch.Generator().manual_seed(cfg.seed + ctx.rank),
    )
    accum = cfg.grad_accum_steps
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * len(sampler) / accum)
    model.to(device)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, warmup_steps_for(total_steps, cfg.warmup_ratio),
                               total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = TrainerState(total_steps=total_steps, world_size=ctx.world_size,
                         batch_size=cfg.batch_size, grad_accum_steps=accum)

    # --- resume: rank 0 reads the checkpoint and shares it (no shared filesystem needed) ---
    payload: Any = None
    if ctx.is_main:
        try:
            path = resolve_resume(cfg.resume, output_dir, remote_finder)
            if path is not None:
                _check_resume_config(Path(path), cfg)
                loaded = load_checkpoint(path)
                try:
                    model.load_state_dict(loaded.model_state)  # DDP broadcasts it to the others
                except RuntimeError as exc:
                    first = str(exc).strip().splitlines()[0]
                    raise ConfigError(f"{path} does not fit model {cfg.model} ({first}); "
                                      "resume with the model it was trained from") from None
                payload = {"path": str(path), "optimizer": loaded.optimizer,
                           "scheduler": loaded.scheduler, "scaler": loaded.scaler,
                           "state": loaded.state.to_dict(), "rng": loaded.rng_states}
        except Exception as exc:
            broadcast_from_main(ctx, {"error": exc})
            raise
    payload = broadcast_from_main(ctx, payload)
    if payload and "error" in payload:
        raise payload["error"]
    resumed_from = None
    if payload:
        resumed_from = payload["path"]
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"] is not None and scaler.is_enabled():
            scaler.load_state_dict(payload["scaler"])
        saved = TrainerState.from_dict(payload["state"])
        old_global = saved.world_size * saved.batch_size
        if old_global != ctx.world_size * cfg.batch_size:
            warn(f"global batch changed ({old_global} -> {ctx.world_size * cfg.batch_size}): "
                 "the data order after resuming differs from the interrupted run")
            saved.position = saved.position * old_global // (ctx.world_size * cfg.batch_size)
        state.step, state.epoch, state.position = saved.step, saved.epoch, saved.position
        state.loss_history = saved.loss_history
        if ctx.rank in payload["rng"]:
            set_rng_state(payload["rng"][ctx.rank])
        else:
            warn(f"no RNG state for rank {ctx.rank} in {resumed_from}; dropout reseeded")
            seed_everything(cfg.seed + ctx.rank + state.step)
        if ctx.is_main:
            print(f"squadft: resuming from {resumed_from} (step {state.step}/{total_steps})",
                  file=sys.stderr, flush=True)
            if state.step >= total_steps:
                print(f"squadft: training is already complete at step {state.step}: only "
                      "final/, calibration and evaluation are redone", file=sys.stderr,
                      flush=True)
            _restart_metrics(output_dir / METRICS_FILE, state.step)

    forward_model = model  # what the loop calls; `model` stays the plain module we save
    if ctx.is_distributed:
        forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def write_checkpoint() -> Path | None:
        rng_states = gather_to_main(ctx, rng_state())
        path = None
        if ctx.is_main:
            path = save_checkpoint(output_dir, model=model, tokenizer=tokenizer,
                                   optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                   state=state, cfg=cfg, rng_states=rng_states or [])
            if on_checkpoint is not None:
                on_checkpoint(path)
            busy = getattr(on_checkpoint, "busy_paths", None)
            rotate_checkpoints(output_dir, cfg.save_total_limit,
                               protect=busy() if busy is not None else frozenset())
        # every rank waits until the checkpoint is complete: a rank that exited early on
        # preemption would make torchrun kill rank 0 in the middle of writing it
        barrier(ctx)
        return path

    # --- the loop ------------------------------------------------------------------------
    is_main = ctx.is_main
    progress = tqdm(total=total_steps, initial=state.step, disable=not is_main, desc="train",
                    dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    metrics_path = output_dir / METRICS_FILE
    data = batches_from(loader, sampler, state.epoch, state.position)
    start_time = window_start = time.perf_counter()
    start_step = last_saved = state.step
    window = {"steps": 0, "tokens": 0, "samples": 0}
    window_loss = torch.zeros((), device=device)
    totals = {"tokens": 0.0, "samples": 0.0}
    step_loss = torch.zeros((), device=device)
    grad_norm = torch.zeros((), device=device)
    model.train()
    # `progress` too: closed on an error, so that the error is the last line on stderr
    with (nullcontext(watcher) if watcher is not None else PreemptionWatcher()) as watcher, \
            progress:
        while state.step < total_steps:
            try:
                step_loss.zero_()
                for micro_step in range(accum):
                    epoch, position, batch = next(data)
                    samples, tokens = batch_summary(batch)
                    window["samples"] += samples
                    window["tokens"] += tokens
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    # Gradients of non-final micro-steps only accumulate locally: all-reducing
                    # them across ranks every micro-step would cost `accum` times the traffic
                    # for the same averaged result on the last one.
                    final_micro = micro_step == accum - 1
                    sync = nullcontext() if final_micro or not ctx.is_distributed \
                        else forward_model.no_sync()
                    with sync:
                        with autocast(precision, device):
                            loss = qa_loss(forward_model, batch,
                                           cfg.answerability_loss_weight) / accum
                        scaler.scale(loss).backward()
                    step_loss += loss.detach()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
                )
                lr = scheduler.get_last_lr()[0]  # the rate this step used
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            except torch.cuda.OutOfMemoryError:
                raise _out_of_memory(cfg, ctx, state, last_saved, model, optimizer,
                                     write_checkpoint) from None
            state.step += 1
            state.epoch, state.position = epoch, position
            window_loss += step_loss  # stays on the device: no sync until the next log
            window["steps"] += 1
            progress.update(1)

            stop = any_rank(ctx, watcher.received is not None)
            if state.step % cfg.logging_steps == 0 or state.step == total_steps or stop:
                loss_sum, tokens, samples = all_reduce_sum(
                    ctx, [window_loss.item(), window["tokens"], window["samples"]])
                elapsed = time.perf_counter() - window_start
                loss_avg = loss_sum / ctx.world_size / window["steps"]
                record = {
                    "step": state.step,
                    "epoch": round(epoch + position / len(sampler), 4),
                    "loss": loss_avg,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens / elapsed,
                    "samples_per_s": samples / elapsed,
                }
                if device.type == "cuda":
                    record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                totals["tokens"] += tokens
                totals["samples"] += samples
                state.loss_history.append((state.step, loss_avg))
                if is_main:
                    with open(metrics_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{record['lr']:.2e}",
                                         tok_s=f"{record['tokens_per_s']:.0f}")
                window = {"steps": 0, "tokens": 0, "samples": 0}
                window_loss.zero_()
                window_start = time.perf_counter()

            if stop or (cfg.save_steps and state.step % cfg.save_steps == 0):
                path = write_checkpoint()
                last_saved = state.step
            if stop:
                progress.close()
                signame = signal.Signals(watcher.received or signal.SIGTERM).name
                raise watcher.stop(Preempted(
                    f"stopped at step {state.step}/{total_steps} on a preemption signal "
                    f"({signame} on some rank); checkpoint "
                    f"{path if is_main else 'written by rank 0'}; exit {EXIT_PREEMPTED} means "
                    "requeue: rerun with --resume auto to continue"))
        progress.close()
        if last_saved != state.step:
            write_checkpoint()
        # A signal that came while the last checkpoint was written stops the job now (the
        # loop no longer looks); from here on one stops it at once, see PreemptionWatcher.
        if any_rank(ctx, watcher.received is not None):
            signame = signal.Signals(watcher.received or signal.SIGTERM).name
            raise watcher.stop(Preempted(
                f"stopped after the last step ({state.step}/{total_steps}) on a preemption "
                f"signal ({signame} on some rank); checkpoint-{state.step} is complete; exit "
                f"{EXIT_PREEMPTED} means requeue: rerun with --resume auto, which does not "
                "train again"))
        watcher.trained(state.step)

        runtime = time.perf_counter() - start_time
        final_dir = None
        if is_main:
            # not uploaded here: the pipeline adds the calibrated inference settings first
            with uninterruptible():
                final_dir = save_final(output_dir, model, tokenizer, cfg, state.step)
            watcher.final_saved(str(final_dir))
        barrier(ctx)
    result = TrainResult(
        steps=state.step,
        epochs=round(state.epoch + state.position / len(sampler), 4),
        final_loss=state.loss_history[-1][1] if state.loss_history else None,
        runtime_s=round(runtime, 3),
        tokens_per_second=totals["tokens"] / runtime if state.step > start_step else 0.0,
        samples_per_second=totals["samples"] / runtime if state.step > start_step else 0.0,
        precision=precision,
        world_size=ctx.world_size,
        global_batch_size=cfg.batch_size * ctx.world_size * accum,
        resumed_from=resumed_from,
        final_dir=str(final_dir) if final_dir else None,
    )
    if is_main:
        atomic_write_json(output_dir / TRAIN_RESULTS_FILE, asdict(result))
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

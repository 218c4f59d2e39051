"""CPU training throughput: dynamic padding + length bucketing vs padding every window to 384.

    python bench/train_throughput.py [--repeats 3] [--steps 6] [--warmup 1] [--batch-size 16]
                                     [--no-record]

A small randomly initialised DistilBERT (2 layers, hidden 256, 4 heads, FFN 1024, BERT vocab)
trains on the windows of the shared train subset (squadft build_features, 384/128). Ours: the
batches of squadft.train.batching.BatchSampler (length-bucketed) collated by
squadft.train.batching.collate (pad to the batch's longest window, rounded up to 8). Baseline:
run_qa's data path, random batches of the same size with every window padded to 384
(`padding="max_length"`). Both run the same training step (forward with labels, backward,
AdamW) for the same number of steps after the same warm-up; the metric is real (non-pad)
tokens per second. Runs alternate ours / baseline --repeats times; medians are reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import _benchlib as lib
import numpy as np
import torch


def small_distilbert(vocab_size: int) -> Any:
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    config = DistilBertConfig(vocab_size=vocab_size, dim=256, n_layers=2, n_heads=4,
                              hidden_dim=1024, max_position_embeddings=512)
    torch.manual_seed(0)
    return DistilBertForQuestionAnswering(config)


def pad_to_max_length(features: Any, indices: np.ndarray, width: int,
                      pad_token_id: int) -> dict[str, torch.Tensor]:
    """What run_qa feeds the model: every window padded to max_seq_length."""
    row_splits = np.asarray(features.row_splits)
    input_ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, index in enumerate(indices):
        begin, end = int(row_splits[index]), int(row_splits[index + 1])
        input_ids[row, : end - begin] = features.input_ids[begin:end]
        attention_mask[row, : end - begin] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "start_positions": torch.from_numpy(features.start_positions[indices].astype(np.int64)),
        "end_positions": torch.from_numpy(features.end_positions[indices].astype(np.int64)),
    }


def run_steps(model: Any, optimizer: torch.optim.Optimizer,
              batches: list[dict[str, torch.Tensor]]) -> tuple[float, int, int]:
    """(seconds, real tokens, token cells incl. padding) for one training step per batch."""
    real = cells = 0
    started = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real += int(batch["attention_mask"].sum())
        cells += batch["attention_mask"].numel()
    return time.perf_counter() - started, real, cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lib.add_common_arguments(parser)
    # defaults sized for ~2-3 minutes on 2 busy cores; --steps 20 --warmup 2 for a longer run
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each run")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from squadft.data.features import build_features
    from squadft.data.squad import load_squad
    from squadft.train.batching import BatchSampler, collate

    machine = lib.machine_line()
    tokenizer = lib.load_bert_tokenizer()
    examples, _ = load_squad(lib.squad_dir() / lib.TRAIN_FILE)
    features, _ = build_features(examples, tokenizer, max_seq_length=lib.MAX_SEQ_LENGTH,
                                 doc_stride=lib.DOC_STRIDE, max_query_length=lib.MAX_QUERY_LENGTH)
    pad_id = tokenizer.pad_token_id or 0
    lengths = features.lengths

    # Whole-epoch padding fractions (the timed steps are a sample of these batches).
    ours_order = BatchSampler(lengths, args.batch_size, seed=0, bucketing=True).global_batches(0)
    rng = np.random.default_rng(0)
    permutation = rng.permutation(len(features))
    baseline_order = [permutation[i:i + args.batch_size]
                      for i in range(0, len(permutation), args.batch_size)]
    ours_cells = sum(-(-int(lengths[b].max()) // 8) * 8 * len(b) for b in ours_order)
    epoch_pad = {"ours": 1 - lengths.sum() / ours_cells,
                 "baseline": 1 - lengths.sum() / (lib.MAX_SEQ_LENGTH * len(features))}

    needed = args.warmup + args.steps
    ours_batches = [collate(features, b, pad_token_id=pad_id, with_token_types=False)
                    for b in ours_order[:needed]]
    baseline_batches = [pad_to_max_length(features, b, lib.MAX_SEQ_LENGTH, pad_id)
                        for b in baseline_order[:needed]]

    torch.manual_seed(0)
    results: dict[str, list[tuple[float, int, int]]] = {"ours": [], "baseline": []}
    print(f"{len(features)} windows; torch threads {torch.get_num_threads()}; "
          f"{args.repeats} x ({args.warmup} warm-up + {args.steps} timed steps) per side ...",
          flush=True)
    for repeat in range(args.repeats):
        for name, batches in (("ours", ours_batches), ("baseline", baseline_batches)):
            model = small_distilbert(len(tokenizer))
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
            run_steps(model, optimizer, batches[: args.warmup])
            results[name].append(run_steps(model, optimizer, batches[args.warmup:]))
            seconds, real, _ = results[name][-1]
            print(f"  run {repeat + 1} {name}: {real / seconds:,.0f} real tokens/s", flush=True)

    rows = []
    medians = {}
    for name, label in (("ours", "dynamic padding + length bucketing (squadft)"),
                        ("baseline", "pad to 384 (run_qa)")):
        runs = results[name]
        rates = [real / seconds for seconds, real, _ in runs]
        medians[name] = float(np.median(rates))
        seconds, real, cells = runs[0]
        rows.append([label, args.batch_size, args.steps, f"{medians[name]:,.0f}",
                     f"{min(rates):,.0f}-{max(rates):,.0f}",
                     f"{float(np.median([s for s, _, _ in runs])) / args.steps:.2f}",
                     f"{1 - real / cells:.1%}", f"{epoch_pad[name]:.1%}"])
    ratio = medians["ours"] / medians["baseline"]
    # each round ran ours then the baseline back to back: their ratio shares that round's load
    round_ratios = [(ro / so) / (rb / sb) for (so, ro, _), (sb, rb, _)
                    in zip(results["ours"], results["baseline"], strict=True)]
    table = lib.markdown_table(
        ["data path", "batch", "timed steps", "real tokens/s (median)", "min-max",
         "s/step", "pad share (timed steps)", "pad share (whole epoch)"], rows)
    notes = [
        f"speed-up (real tokens/s, ours / baseline): {lib.goal_text(ratio, 1.8)}; per-round "
        f"ratios {', '.join(f'{r:.2f}' for r in round_ratios)} (median "
        f"{float(np.median(round_ratios)):.2f}x)",
        f"model: DistilBERT 2 layers, hidden 256, 4 heads, FFN 1024, vocab {len(tokenizer)}, "
        f"random init, fp32, AdamW; {len(features)} windows of the train subset; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
    ]
    lib.report("Training throughput on CPU (bench/train_throughput.py)", table, notes,
               record=not args.no_record, machine=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())

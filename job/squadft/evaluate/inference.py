"""Start/end logits for every window: length-sorted batches, dynamic padding, optional DDP shards.

Under torch.distributed each rank runs every world_size-th window of the length-sorted order
(so all ranks get similar work) and rank 0 gathers the pieces back into feature order. The
gathered logits match a single-process run up to floating-point reassociation (batches hold
different windows, so matrix products are blocked differently; differences are ~1e-6).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from squadft.errors import OutOfMemory, is_out_of_memory
from squadft.runtime.distributed import current_group
from squadft.runtime.precision import autocast_dtype as dtype_of
from squadft.runtime.precision import resolve_precision

PAD_MULTIPLE = 8  # tensor-core friendly widths
PADDING_LOGIT = -1e4  # written past each window's end; post-processing ignores those columns


@contextlib.contextmanager
def fp32_qa_head(model: Any, device_type: str) -> Iterator[None]:
    """Run the model's QA head (`qa_outputs`, the Linear that turns the last hidden states
    into start/end logits) in fp32 while inside this context, autocast or not.

    Under bf16 autocast the head would round every logit to bfloat16 (8 significant bits:
    steps of 1/16 at a logit of 10), which ties span scores and coarsens the null score
    difference the no-answer threshold is compared with. The encoder keeps autocast's
    speed; the head is a [hidden x 2] product. Models without a `qa_outputs` Linear run as
    they are.
    """
    head = getattr(model, "qa_outputs", None)
    if not isinstance(head, torch.nn.Linear):
        yield
        return
    had_own_forward = "forward" in vars(head)
    own_forward = vars(head).get("forward")

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device_type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward
    try:
        yield
    finally:
        if had_own_forward:
            head.forward = own_forward
        else:
            del head.forward


def model_input_names(model: Any) -> set[str]:
    """Inputs the model's forward accepts (DistilBERT has no token_type_ids)."""
    return set(inspect.signature(model.forward).parameters)


def pad_windows(
    features: Any, indices: np.ndarray, *, pad_token_id: int = 0, with_token_types: bool = True
) -> dict[str, torch.Tensor]:
    """Windows `indices` right-padded to the longest of them (rounded up to PAD_MULTIPLE)."""
    row_splits = np.asarray(features.row_splits)
    starts = row_splits[indices]
    lengths = row_splits[indices + 1] - starts
    width = -(-int(lengths.max()) // PAD_MULTIPLE) * PAD_MULTIPLE
    columns = np.arange(width)
    inside = columns[None, :] < lengths[:, None]
    # Token position of every cell; cells past a window read token 0 and are overwritten.
    source = np.where(inside, starts[:, None] + columns[None, :], 0)
    input_ids = np.where(inside, np.asarray(features.input_ids)[source], pad_token_id)
    batch = {
        "input_ids": torch.from_numpy(input_ids.astype(np.int64)),
        "attention_mask": torch.from_numpy(inside.astype(np.int64)),
    }
    if with_token_types and features.token_type_ids is not None:
        types = np.where(inside, np.asarray(features.token_type_ids)[source], 0)
        batch["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
    return batch


def progress_bar(desc: str | None, total: int | None, unit: str = "window") -> Any:
    """Rank 0's bar of windows on stderr, like training's (squadft.train.tracking): redrawn
    every second on a terminal, every 30 s in a log file; None without `desc`."""
    if desc is None:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)


@torch.inference_mode()
def _logits_for(
    model: Any,
    features: Any,
    indices: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    width: int,
    bar: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    accepted = model_input_names(model)
    pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    start = np.full((len(indices), width), PADDING_LOGIT, dtype=np.float32)
    end = np.full((len(indices), width), PADDING_LOGIT, dtype=np.float32)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    for first in range(0, len(indices), batch_size):
        chunk = indices[first:first + batch_size]
        batch = pad_windows(features, chunk, pad_token_id=pad_token_id,
                            with_token_types="token_type_ids" in accepted)
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in accepted}
        try:
            with autocast:
                outputs = model(**inputs)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or cuBLAS's
            if not is_out_of_memory(exc):
                raise
            raise OutOfMemory(
                f"evaluation ran out of memory on a batch of {len(chunk)} windows x "
                f"{batch['input_ids'].shape[1]} tokens; lower --eval-batch-size"
            ) from None
        n_columns = min(width, batch["input_ids"].shape[1])
        rows = slice(first, first + len(chunk))
        # Copy each batch to the host right away: nothing accumulates on the accelerator.
        start[rows, :n_columns] = outputs.start_logits[:, :n_columns].float().cpu().numpy()
        end[rows, :n_columns] = outputs.end_logits[:, :n_columns].float().cpu().numpy()
        if bar is not None:
            bar.update(len(chunk))
    # Columns past each window's end hold logits of padding: overwrite them with one constant
    # so that the output does not depend on which windows happened to share a batch.
    lengths = np.diff(np.asarray(features.row_splits))[indices]
    past_end = np.arange(width)[None, :] >= lengths[:, None]
    start[past_end] = PADDING_LOGIT
    end[past_end] = PADDING_LOGIT
    return start, end


def predict_logits(
    model: Any,
    features: Any,
    *,
    batch_size: int,
    device: torch.device | str,
    precision: str = "fp32",
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits, float32 numpy [len(features), longest window], in feature order.

    `progress`: the name of a progress bar on stderr (rank 0, its share of the windows).

    Columns past a window's end hold PADDING_LOGIT. With torch.distributed initialised every
    rank must call this with the same features; each computes its shard and rank 0 returns the
    gathered full arrays while the other ranks return empty (0-row) arrays.
    """
    device = torch.device(device)
    autocast_dtype = dtype_of(resolve_precision(precision, device))  # as for training
    network = getattr(model, "module", model)  # unwrap DDP: no gradient sync needed here
    lengths = np.diff(np.asarray(features.row_splits)).astype(np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    rank, world_size = current_group()
    # Longest first: an out-of-memory error shows up in the first batch, not at the end.
    by_length = np.argsort(-lengths, kind="stable")
    mine = by_length[rank::world_size]

    was_training = network.training
    network.eval()
    # Under autocast the encoder runs in bf16/fp16 but the QA head in fp32 (fp32_qa_head).
    head = (fp32_qa_head(network, device.type) if autocast_dtype is not None
            else contextlib.nullcontext())
    bar = progress_bar(progress if rank == 0 else None, len(mine))
    try:
        with head:
            start, end = _logits_for(network, features, mine, batch_size=batch_size,
                                     device=device, autocast_dtype=autocast_dtype, width=width,
                                     bar=bar)
    finally:
        network.train(was_training)
        if bar is not None:
            bar.close()  # before an error is printed, so that it stays the last line

    if world_size == 1:
        return _in_feature_order(len(lengths), width, [(mine, start, end)])
    pieces: list[Any] | None = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object((mine, start, end), pieces, dst=0)
    if rank != 0:
        empty = np.zeros((0, width), dtype=np.float32)
        return empty, empty.copy()
    assert pieces is not None
    return _in_feature_order(len(lengths), width, pieces)


def _in_feature_order(
    n: int, width: int, pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    start = np.empty((n, width), dtype=np.float32)
    end = np.empty((n, width), dtype=np.float32)
    for indices, piece_start, piece_end in pieces:
        start[indices] = piece_start
        end[indices] = piece_end
    return start, end


def window_loss(start_logits: np.ndarray, end_logits: np.ndarray, features: Any) -> float:
    """The QA loss of `predict_logits`' output against the windows' labels: the mean over
    windows of (cross-entropy of the start token + that of the end token) / 2, as the model's
    own loss; unanswerable windows are labelled at their [CLS] token. Columns past a window's
    end hold PADDING_LOGIT, whose share of the softmax is nil."""
    if len(start_logits) == 0:
        return float("nan")
    rows = np.arange(len(start_logits))
    total = 0.0
    for logits, labels in ((start_logits, features.start_positions),
                           (end_logits, features.end_positions)):
        logits = logits.astype(np.float64)
        peak = logits.max(axis=1)
        log_norm = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        total += float((log_norm - logits[rows, np.asarray(labels)]).mean())
    return total / 2

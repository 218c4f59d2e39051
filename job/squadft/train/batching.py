"""Batches from columnar features: dynamic padding and a DDP-aware, resumable batch sampler.

The sampler works in *global* batches (`batch_size * num_replicas` windows) and gives rank r
the r-th slice of each one. The order therefore depends only on the seed, the epoch and the
global batch size: two ranks with batch 8 see exactly what one process with batch 16 sees,
which is what makes a DDP run comparable to (and resumable like) a single-process run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

PAD_MULTIPLE = 8
MEGA_BATCH_BATCHES = 50


class ColumnarFeatures(Protocol):
    """The parts of squadft.data.features.Features that batching reads."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray | None
    row_splits: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray

    def __len__(self) -> int: ...


def padded_length(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-longest // multiple) * multiple


def collate(
    features: ColumnarFeatures, indices: Sequence[int] | np.ndarray, *, pad_token_id: int = 0,
    multiple: int = PAD_MULTIPLE, with_labels: bool = True, with_token_types: bool = True,
) -> dict[str, torch.Tensor]:
    """Windows `indices` padded to the longest of them, rounded up to `multiple` (tensor cores).

    token_type_ids are included when the features have them and `with_token_types` (False for
    models such as DistilBERT whose forward does not take them).
    """
    indices = np.asarray(indices, dtype=np.int64)
    row_splits = np.asarray(features.row_splits)
    starts = row_splits[indices]
    lengths = row_splits[indices + 1] - starts
    width = padded_length(int(lengths.max()), multiple)
    mask = np.arange(width)[None, :] < lengths[:, None]
    # token position for every cell; padding cells point at token 0 and are overwritten
    source = np.where(mask, starts[:, None] + np.arange(width)[None, :], 0)
    batch = {
        "input_ids": torch.from_numpy(
            np.where(mask, np.asarray(features.input_ids)[source], pad_token_id).astype(np.int64)
        ),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
    }
    if with_token_types and features.token_type_ids is not None:
        types = np.where(mask, np.asarray(features.token_type_ids)[source], 0)
        batch["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
    if with_labels:
        for name in ("start_positions", "end_positions"):
            labels = np.asarray(getattr(features, name))[indices]
            batch[name] = torch.from_numpy(labels.astype(np.int64))
    return batch


class BatchDataset(torch.utils.data.Dataset):
    """Maps a list of window indices to a collated batch (lets DataLoader workers collate)."""

    def __init__(self, features: ColumnarFeatures, *, pad_token_id: int = 0,
                 with_token_types: bool = True) -> None:
        self.features = features
        self.pad_token_id = pad_token_id
        self.with_token_types = with_token_types

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return collate(self.features, indices, pad_token_id=self.pad_token_id,
                       with_token_types=self.with_token_types)


class BatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled (optionally length-bucketed) batches of window indices for one DDP rank.

    Per epoch, from a generator seeded with seed + epoch: shuffle all indices; pad the
    permutation with its own first indices up to a multiple of num_replicas (so every rank
    gets the same number of batches, as DistributedSampler does); with bucketing, cut it
    into mega-batches of ~50 global batches and sort each by length (similar lengths share a
    batch, so little padding) while keeping randomness across mega-batches; cut into global
    batches; with bucketing, shuffle the batch order (so the long batches of a mega-batch
    are not clustered); rank r takes the r-th slice of each global batch.
    `set_epoch(epoch, position)` starts mid-epoch after `position` batches (exact resume).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, *, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, bucketing: bool = True,
                 mega_batch_batches: int = MEGA_BATCH_BATCHES) -> None:
        if batch_size <= 0 or num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"bad sampler geometry: batch {batch_size}, rank {rank} of {num_replicas}"
            )
        if len(lengths) == 0:
            raise ValueError("no training windows to sample from")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.bucketing = bucketing
        self.mega_batch_batches = mega_batch_batches
        self.epoch = 0
        self.position = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch = epoch
        self.position = position

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches (identical on every rank)."""
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.lengths))
        shortfall = -len(order) % self.num_replicas
        if shortfall:
            order = np.concatenate([order, order[:shortfall]])
        size = self.global_batch_size
        if self.bucketing:
            mega = size * self.mega_batch_batches
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            # stable sort: ties keep their shuffled order, so the result is deterministic
            order = np.concatenate(
                [c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks]
            )
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if not self.bucketing:
            # consecutive slices of one permutation: k micro-batches of size b then hold
            # exactly what one batch of size k*b holds (accumulation == a larger batch)
            return batches
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        padded = len(self.lengths) + (-len(self.lengths) % self.num_replicas)
        return -(-padded // self.global_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches(self.epoch)[self.position :]:
            # a short last batch still splits evenly: its size is a multiple of num_replicas
            share = len(batch) // self.num_replicas
            yield batch[self.rank * share : (self.rank + 1) * share].tolist()


def batch_summary(batch: dict[str, Any]) -> tuple[int, int]:
    """(samples, non-pad tokens) of a collated batch."""
    return int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum())

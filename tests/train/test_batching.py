from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from squadft.train.batching import BatchSampler, collate, padded_length


@dataclass
class FakeFeatures:
    """Just the columnar arrays batching reads (the real Features class has the same ones)."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray | None
    row_splits: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.row_splits) - 1


def make_features(lengths: list[int], with_types: bool = True) -> FakeFeatures:
    row_splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(row_splits[-1])
    return FakeFeatures(
        input_ids=np.arange(1, total + 1, dtype=np.int32),
        token_type_ids=(np.arange(total) % 2).astype(np.int8) if with_types else None,
        row_splits=row_splits,
        start_positions=np.arange(len(lengths), dtype=np.int32),
        end_positions=np.arange(len(lengths), dtype=np.int32) + 1,
    )


def test_collate_pads_to_longest_rounded_to_eight() -> None:
    features = make_features([3, 9, 5])
    batch = collate(features, [0, 2], pad_token_id=0)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 0, 0, 0, 0, 0]
    assert batch["input_ids"][1].tolist() == [13, 14, 15, 16, 17, 0, 0, 0]
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 5]
    assert batch["token_type_ids"][1, :5].tolist() == [0, 1, 0, 1, 0]
    assert batch["start_positions"].tolist() == [0, 2]
    assert batch["end_positions"].tolist() == [1, 3]
    wide = collate(features, [1, 0], pad_token_id=99)
    assert wide["input_ids"].shape == (2, 16)
    assert wide["input_ids"][1, 3:].tolist() == [99] * 13
    assert padded_length(16) == 16 and padded_length(17) == 24


def test_collate_drops_token_types_for_models_without_them() -> None:
    assert "token_type_ids" not in collate(make_features([4]), [0], with_token_types=False)
    assert "token_type_ids" not in collate(make_features([4], with_types=False), [0])


LENGTHS = np.random.default_rng(0).integers(10, 385, size=1003)


@pytest.mark.parametrize("bucketing", [True, False])
def test_single_rank_covers_every_index_once_per_epoch(bucketing: bool) -> None:
    sampler = BatchSampler(LENGTHS, 16, seed=3, bucketing=bucketing)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 63
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(LENGTHS)))
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    again = BatchSampler(LENGTHS, 16, seed=3, bucketing=bucketing)
    assert list(again) == first  # ... but deterministic from seed + epoch
    assert list(BatchSampler(LENGTHS, 16, seed=4, bucketing=bucketing)) != first


def test_bucketing_reduces_padding_but_keeps_randomness() -> None:
    def padding(sampler: BatchSampler) -> int:
        return sum(padded_length(int(LENGTHS[b].max())) * len(b) - int(LENGTHS[b].sum())
                   for b in sampler)

    bucketed = BatchSampler(LENGTHS, 16, seed=1, bucketing=True)
    plain = BatchSampler(LENGTHS, 16, seed=1, bucketing=False)
    assert padding(bucketed) < padding(plain) / 3
    longest_first = [int(LENGTHS[b].max()) for b in bucketed]
    assert longest_first != sorted(longest_first, reverse=True)  # batch order is shuffled


@pytest.mark.parametrize("bucketing", [True, False])
def test_ranks_get_equal_batches_that_slice_the_global_batch(bucketing: bool) -> None:
    world = 3
    ranks = [BatchSampler(LENGTHS, 8, num_replicas=world, rank=r, seed=5, bucketing=bucketing)
             for r in range(world)]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    for step, global_batch in enumerate(ranks[0].global_batches(0)):
        pieces = [per_rank[r][step] for r in range(world)]
        assert len({len(p) for p in pieces}) == 1  # same micro-batch size on every rank
        assert sum(pieces, []) == global_batch.tolist()
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(len(LENGTHS)))
    assert len(seen) - len(LENGTHS) == -len(LENGTHS) % world  # padding, as DistributedSampler


def test_resume_mid_epoch_continues_the_same_order() -> None:
    sampler = BatchSampler(LENGTHS, 16, num_replicas=2, rank=1, seed=9)
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = BatchSampler(LENGTHS, 16, num_replicas=2, rank=1, seed=9)
    resumed.set_epoch(2, position=7)
    assert list(resumed) == full[7:]


def test_ranks_see_what_one_process_with_the_global_batch_sees() -> None:
    lengths = LENGTHS[:1002]  # a multiple of the world size: no padding
    single = BatchSampler(lengths, 16, seed=2)
    pair = [BatchSampler(lengths, 8, num_replicas=2, rank=r, seed=2) for r in range(2)]
    for whole, half0, half1 in zip(single, *pair, strict=True):
        assert half0 + half1 == whole

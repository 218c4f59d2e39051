"""Real sliding-window features of the bundled dev subset, shared by the evaluation tests."""

from __future__ import annotations

from typing import Any

from squadft.data.features import Features, build_features
from squadft.data.squad import Example, parse_squad


def dev_examples(dev_json: dict[str, Any], limit: int | None = None) -> list[Example]:
    examples, _ = parse_squad(dev_json, "dev")
    return examples if limit is None else examples[:limit]


def build_windows(
    examples: list[Example], tokenizer: Any, *, max_seq_length: int, doc_stride: int,
    max_query_length: int = 64,
) -> Features:
    features, _ = build_features(
        examples, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
        max_query_length=max_query_length,
    )
    return features

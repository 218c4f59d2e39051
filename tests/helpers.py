"""Helpers importable by tests: `from tests.helpers import make_tiny_model`."""

from __future__ import annotations

from typing import Any

BERT_VOCAB_SIZE = 30522


def make_tiny_model(vocab_size: int = BERT_VOCAB_SIZE, seed: int = 0, dropout: float = 0.0) -> Any:
    """A 2-layer DistilBERT QA model built from a config (random init, deterministic)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
        max_position_embeddings=512, dropout=dropout, attention_dropout=dropout, qa_dropout=dropout,
    )
    return DistilBertForQuestionAnswering(config)

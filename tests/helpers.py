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


def mount_tmpfs(path: Any, size: int) -> str | None:
    """Mount a tmpfs of `size` bytes on directory `path`; None, or why it cannot be done."""
    import subprocess

    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run mount: {exc}"
    if done.returncode != 0:
        return f"mount -t tmpfs failed ({done.stderr.strip() or done.returncode})"
    return None


def fill_disk(directory: Any, leave: int) -> int:
    """Write a filler file into `directory` until `leave` bytes are free; returns that free
    space as the filesystem reports it."""
    import os

    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    with open(os.path.join(directory, "filler"), "ab") as handle:
        handle.write(bytes(max(0, free - leave)))
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize

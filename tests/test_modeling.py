from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from squadft.errors import ConfigError
from squadft.modeling import check_window, max_positions
from transformers import BertConfig, DebertaV2Config, RobertaConfig


def test_max_positions_counts_only_usable_positions() -> None:
    assert max_positions(BertConfig(max_position_embeddings=512)) == 512
    # RoBERTa numbers positions from padding_idx + 1: 514 embeddings, 512 usable
    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    # relative positions only: no absolute limit to enforce
    assert max_positions(DebertaV2Config(position_biased_input=False)) is None


def test_window_longer_than_the_model_fails_naming_both_numbers(
    tiny_model_dir: Path, bert_tokenizer: Any
) -> None:
    with pytest.raises(ConfigError, match=r"max_seq_length 1024 .*\(512 positions\)"):
        check_window(str(tiny_model_dir), bert_tokenizer, max_seq_length=1024, doc_stride=128,
                     max_query_length=64)
    check_window(str(tiny_model_dir), bert_tokenizer, max_seq_length=512, doc_stride=128,
                 max_query_length=64)


def test_stride_that_squeezes_the_question_warns(
    tiny_model_dir: Path, bert_tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    check_window(str(tiny_model_dir), bert_tokenizer, max_seq_length=128, doc_stride=32,
                 max_query_length=64)
    assert capsys.readouterr().err == ""
    # 128 - 3 special - 100 stride - 1 = 24 question tokens fit, fewer than 64
    check_window(str(tiny_model_dir), bert_tokenizer, max_seq_length=128, doc_stride=100,
                 max_query_length=64)
    assert "room for 24 question tokens" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="leaves no room for a question"):
        check_window(str(tiny_model_dir), bert_tokenizer, max_seq_length=128, doc_stride=125,
                     max_query_length=64)

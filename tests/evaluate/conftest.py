"""Session fixtures for the evaluation tests: real dev-subset examples and their windows."""

from __future__ import annotations

from typing import Any

import pytest
from squadft.data.features import Features
from squadft.data.squad import Example

from tests.evaluate.windows import build_windows, dev_examples


@pytest.fixture(scope="session")
def dev_subset_examples(dev_json: dict[str, Any]) -> list[Example]:
    return dev_examples(dev_json)


@pytest.fixture(scope="session")
def dev_subset_features(dev_subset_examples: list[Example], bert_tokenizer: Any) -> Features:
    """All 4,449 dev-subset questions at the default 384/128 windows."""
    return build_windows(dev_subset_examples, bert_tokenizer, max_seq_length=384, doc_stride=128)

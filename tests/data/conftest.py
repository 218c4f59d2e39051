"""Fixtures shared by the tests of squadft.data (parse, features, pull)."""

from __future__ import annotations

from typing import Any

import pytest
from squadft.data.squad import Example, ParseReport, parse_squad


@pytest.fixture(scope="session")
def train_parsed(train_json: dict[str, Any]) -> tuple[list[Example], ParseReport]:
    """The bundled real train subset, parsed (4,719 questions, 348 impossible)."""
    return parse_squad(train_json, source="train-v2.0-first10.json.gz")


@pytest.fixture(scope="session")
def dev_parsed(dev_json: dict[str, Any]) -> tuple[list[Example], ParseReport]:
    """The bundled real dev subset, parsed (4,449 questions, 2,342 impossible)."""
    return parse_squad(dev_json, source="dev-v2.0-first12.json.gz")

from __future__ import annotations

from pathlib import Path

import pytest
from squadft.config import Config

from tests.train.common import run_settings


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path,
                 tiny_model_dir: Path) -> Path:
    """A cache with the tiny-run features already built, so parallel ranks never race."""
    from squadft.flows import preparation

    cache = tmp_path_factory.mktemp("cache")
    settings = run_settings(sample_dir, tiny_model_dir, cache,
                            output_dir=str(cache / "unused-output"))
    preparation.prepare(Config(**settings), verbose=False)
    return cache


@pytest.fixture
def tiny_settings(sample_dir: Path, tiny_model_dir: Path, shared_cache: Path, tmp_path: Path):
    def make(output: str = "run", **overrides):
        overrides.setdefault("output_dir", str(tmp_path / output))
        return run_settings(sample_dir, tiny_model_dir, shared_cache, **overrides)

    return make

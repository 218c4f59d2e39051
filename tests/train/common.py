"""Shared pieces of the training tests: tiny-run configs, subprocess runs, waiting on files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

# a few hundred real questions, short windows: one optimizer step takes milliseconds
TINY_RUN: dict[str, Any] = {
    "train_file": "train-v2.0-first10.json.gz",
    "dev_file": "dev-v2.0-first12.json.gz",
    "max_train_samples": 200,
    "max_eval_samples": 40,
    "max_seq_length": 128,
    "doc_stride": 32,
    "max_query_length": 32,
    "num_workers": 0,
    "precision": "fp32",
    "batch_size": 8,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.1,
    "logging_steps": 1,
    "save_steps": 0,
    "do_eval": False,
    "resume": "auto",
}

# The gradient of qa_outputs.bias is analytically zero (a shift of all logits leaves the
# softmax unchanged), so it is pure rounding noise, which Adam divides by its own magnitude
# and turns into lr-sized updates. A larger epsilon keeps runs that differ only in summation
# order (DDP vs one process, accumulation vs a big batch) comparable to ~1e-6.
ADAM_COMPARABLE: dict[str, Any] = {"adam_epsilon": 1e-4, "learning_rate": 1e-3}


def run_settings(sample_dir: Path, model_dir: Path, cache_dir: Path,
                 **overrides: Any) -> dict[str, Any]:
    return {**TINY_RUN, "source": sample_dir.as_uri(), "model": str(model_dir),
            "cache_dir": str(cache_dir), **overrides}


def cli_flags(settings: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SQUADFT_", "SLURM_")) and k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               # one thread per process: 2 cores are shared, and equal thread counts keep
               # float reductions identical between the runs we compare
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def squadft_command(settings: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "squadft", "train", *cli_flags(settings)]


def run(command: list[str], timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=kwargs.pop("env", None) or subprocess_env(), cwd=REPO_ROOT,
                          **kwargs)


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # training steps only, not the eval line or the held-out evaluations
    return [r for r in records if "eval" not in r and "heldout" not in r]


def step_losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(output_dir)}


def load_weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def max_weight_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             process: subprocess.Popen | None = None) -> None:
    """Poll `condition` until true; fail with `what` after `timeout` or if `process` exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process exited ({process.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # polling interval, not synchronisation


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

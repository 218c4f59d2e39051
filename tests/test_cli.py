from __future__ import annotations

import subprocess
import sys

from squadft import __version__
from squadft.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"squadft {__version__}"


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("pull", "prepare", "train", "demo"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, sub.output
    train_help = runner.invoke(app, ["train", "--help"]).output
    # flags are generated from the config: defaults and env var names are shown
    assert "--max-seq-length" in train_help and "SQUADFT_MAX_SEQ_LENGTH" in train_help
    assert "--doc-stride" in train_help and "default: 128" in train_help


def test_bad_flag_is_one_line_error_with_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "squadft", "train", "--doc-stride", "400"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "squadft: error: invalid configuration: doc_stride (400) must be < max_seq_length (384)"
    ]
    assert "Traceback" not in proc.stderr

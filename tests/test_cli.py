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


COMMANDS = ("pull", "prepare", "train", "demo", "evaluate", "score", "predict", "report",
            "upload")


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
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


def test_every_command_s_help_defaults_are_the_config_s() -> None:
    """Every option that is a Config setting, in every command, names its SQUADFT_ variable
    and shows the default the code uses (Config's), never one typed into a help string."""
    import dataclasses
    import re

    import typer
    from squadft.config import Config

    fields = {f.name: f for f in dataclasses.fields(Config)}
    group = typer.main.get_command(app)
    assert set(group.commands) == set(COMMANDS)
    checked = set()
    for name, command in group.commands.items():
        for param in command.params:
            text = getattr(param, "help", None) or ""
            setting = re.search(r"\[env SQUADFT_(\w+); default: ([^\]]*)\]$", text)
            if setting is None:
                # not a Config setting: then it is none by name either (eval's --batch-size is
                # eval_batch_size, and says so through its variable), except evaluate's and
                # predict's --model (the saved model to load) and --output-dir (checked below)
                own = {"model", "output_dir"} if name in ("evaluate", "predict") else set()
                assert param.name not in fields or param.name in own, (name, param.name)
                continue
            field = fields[setting.group(1).lower()]
            shown = "none" if field.default is None else str(field.default)
            assert setting.group(2).endswith(shown), (name, param.name, setting.group(2))
            assert field.metadata["help"] in text, (name, param.name)
            checked.add((name, field.name))
    for command in ("evaluate", "predict"):
        for field in ("max_seq_length", "doc_stride", "max_query_length", "n_best",
                      "max_answer_length", "null_threshold", "eval_batch_size", "precision",
                      "device"):
            assert (command, field) in checked, (command, field)
    output_dir = next(p for p in group.commands["evaluate"].params if p.name == "output_dir")
    assert f"{Config().output_dir}/evaluate" in output_dir.help
